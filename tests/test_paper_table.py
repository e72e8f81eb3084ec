"""benchmarks/paper_table.py on a compare-style folder built here: seed means, the paired test (checked against
scipy's ttest_rel), RelaImpr and the distance from a peer's published figure."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]


def write_run(folder: Path, label: str, seed: int, auc: float, gauc: float) -> None:
    run = folder / f"{label}-s{seed}"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({
        "test": {"auc": auc, "gauc": gauc}, "params": {"dense": 100}, "train_seconds": 60.0, "max_len": 50,
        "config": {"data": {}}}))


def run_table(tmp_path, *args):
    out = tmp_path / "table.md"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paper_table.py"), str(tmp_path), "--no-flops",
                    "--out", str(out), *args], check=True, capture_output=True, text=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, cwd=ROOT / "benchmarks")
    return out.read_text(), json.loads(out.with_suffix(".json").read_text())


def test_seed_means_paired_test_and_reference(tmp_path):
    base = {0: (0.770, 0.740), 1: (0.772, 0.741), 2: (0.768, 0.739)}
    better = {0: (0.781, 0.745), 1: (0.779, 0.744), 2: (0.780, 0.748)}
    for seed in range(3):
        write_run(tmp_path, "mlp", seed, *base[seed])
        write_run(tmp_path, "din", seed, *better[seed])
    md, record = run_table(tmp_path, "--order", "mlp", "din", "--base", "mlp", "--against", "mlp",
                           "--reference", "FuxiCTR DNN", "0.7720", "0.0031", "0.7434")
    a = [better[s][0] for s in range(3)]
    b = [base[s][0] for s in range(3)]
    p = stats.ttest_rel(a, b).pvalue
    assert f"+{np.mean(a) - np.mean(b):.4f} (p={p:.2g})" in md
    assert record["din"]["rela_impr_pct"] == pytest.approx((0.78 - 0.5) / (0.77 - 0.5) * 100 - 100)
    assert record["din"]["auc_vs_FuxiCTR DNN"] == pytest.approx(0.78 - 0.7720)
    assert record["din"]["gauc_vs_FuxiCTR DNN"] == pytest.approx(np.mean([0.745, 0.744, 0.748]) - 0.7434)
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in md.splitlines()[2:]}
    assert rows["din"][5] == "+0.0080 (beyond its std)"  # 0.0080 > 0.0031
    assert rows["mlp"][5] == "-0.0020"  # within FuxiCTR's std: no claim
    assert "ΔAUC vs FuxiCTR DNN (0.7720 ± 0.0031)" in md.splitlines()[0]


def test_bad_reference_is_one_line(tmp_path):
    write_run(tmp_path, "mlp", 0, 0.77, 0.74)
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paper_table.py"), str(tmp_path), "--no-flops",
                        "--order", "mlp", "--base", "mlp", "--reference", "peer", "high", "0.1", "0.7"],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                       cwd=ROOT / "benchmarks")
    assert r.returncode != 0
    assert r.stderr.strip() == "--reference peer high 0.1 0.7: AUC, AUC_STD and GAUC must be numbers"
