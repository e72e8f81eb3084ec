"""benchmarks/plot_width_sweep.py on a compare-style folder built here: gains, glob families, the power law."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def write_run(folder: Path, label: str, seed: int, dense: int, auc: float, gauc: float) -> None:
    run = folder / f"{label}-s{seed}"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"test": {"auc": auc, "gauc": gauc}, "params": {"dense": dense}}))


def test_gains_and_power_law(tmp_path):
    widths = np.array([1e4, 1e5, 1e6, 1e7])
    gain = 0.002 * (widths / 1e4) ** 0.25  # an exact power law: a = 0.002 * 1e4^-0.25, b = 0.25
    write_run(tmp_path, "base", 0, 1000, 0.78, 0.74)
    write_run(tmp_path, "base", 1, 1000, 0.76, 0.72)  # seed mean 0.77 / 0.73
    for i, (n, g) in enumerate(zip(widths, gain)):
        write_run(tmp_path, f"wide-w{i}", 0, int(n), 0.77 + g, 0.73 - g)
    out = tmp_path / "plot" / "width"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plot_width_sweep.py"), str(tmp_path),
                    "--baseline", "base", "--family", "wide=wide-w*", "--out", str(out)], check=True,
                   capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.with_suffix(".png").stat().st_size > 0
    text = out.with_suffix(".md").read_text()
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| wide |")]
    assert [r[1] for r in rows] == [f"wide-w{i}" for i in range(4)]  # sorted by dense params
    assert [float(r[5]) for r in rows] == pytest.approx(gain, abs=1e-4)  # AUC gain over the seed mean
    assert [float(r[7].rstrip(" |")) for r in rows] == pytest.approx(-gain, abs=1e-4)
    fit = next(line for line in text.splitlines() if line.startswith("- wide, AUC"))
    a, b = (float(x) for x in fit.split("= ")[1].split(" * N^"))
    assert b == pytest.approx(0.25, rel=1e-3) and a == pytest.approx(0.002 * 1e4 ** -0.25, rel=1e-2)
    assert "GAUC: fewer than 3 positive gains" in text  # negative gains are not fitted in log-log
