"""Sweeps: a grid (or list) of run configs over the scaling axes, each with one or more seeds.

A sweep file (YAML):

    name: suan-ml100k
    data: ml100k-ctr-v1            # dataset name (data.name of every point)
    seeds: [0, 1]
    base: {model: {name: suan}, train: {epochs: 5, patience: 2}}   # run config shared by all points
    axes:                          # the grid: every combination of these dotted overrides
      model.size: [size-1, size-2, size-3, size-4]
      data.max_len: [25, 50, 100, 200]
    points: []                     # and/or explicit points: a list of {dotted key: value}
    parallel: 1                    # processes running points at once
    fits: [{name: auc-vs-length, x: max_len, form: ceiling, where: {model.size: size-2}}]

Each point trains in <out>/points/<id>-s<seed>/ (a normal run folder: resumable from last.pt) and, when it
finishes, leaves point.json beside results.json; <out>/results.csv is rewritten from all finished points after
each one. Running the sweep again runs only the missing points (an interrupted one resumes its checkpoint);
a started point whose saved config differs from what the sweep gives now is refused, not reused.
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import re
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import yaml

from ..train.result import RunResult
from ..train.runs import config_drift
from ..typed import ConfigError, checked, from_dict, load_yaml

# results.csv columns after the point id, seed and the sweep's own axes
METRIC_COLUMNS = ["auc", "gauc", "logloss", "valid_auc", "valid_gauc", "dense_params", "embedding_params",
                  "params", "max_len", "train_impressions", "gflops_per_60", "train_flops_per_impression",
                  "train_flops", "epochs_run", "best_epoch", "train_seconds", "wall_seconds"]


@dataclass
class SweepSpec:
    name: str = "sweep"
    data: str = "synthetic"
    seeds: list[int] = checked(default_factory=lambda: [0], ge=0)
    base: dict = field(default_factory=dict)
    axes: dict[str, list] = field(default_factory=dict)  # dotted key -> the values it takes
    points: list[dict] = field(default_factory=list)
    parallel: int = checked(1, ge=1)
    threads: int = checked(0, ge=0)   # torch threads per point; 0: the cores divided among the parallel points
    fits: list[dict] = field(default_factory=list)

    def __post_init__(self):
        if not self.axes and not self.points:
            raise ConfigError(f"sweep {self.name}: give `axes` (a grid) and/or `points` (a list)")
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed")
        from .laws import FORMS
        for i, f in enumerate(self.fits):  # checked now, not after every point has trained
            missing = [k for k in ("name", "x", "form") if k not in f]
            if missing:
                raise ConfigError(f"fits[{i}]: missing {missing}; a fit needs name, x and form")
            if f["form"] not in FORMS:
                raise ConfigError(f"fits[{i}].form: one of {sorted(FORMS)}, got {f['form']!r}")


@dataclass(frozen=True)
class Point:
    id: str
    overrides: dict
    seed: int

    @property
    def folder(self) -> str:
        return f"{self.id}-s{self.seed}"


def load_sweep(path: str | Path) -> SweepSpec:
    raw = load_yaml(Path(path).read_text(), str(path)) or {}
    try:
        return from_dict(SweepSpec, raw, "")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def point_id(overrides: dict) -> str:
    """Readable and filesystem-safe: key tails and values ("size=size-2_max_len=100"); hashed when too long."""
    def val(v):
        if isinstance(v, dict):
            return "-".join(f"{k}-{val(x)}" for k, x in sorted(v.items()))
        if isinstance(v, (list, tuple)):
            return "-".join(map(val, v))
        return str(v)
    text = "_".join(f"{k.rsplit('.', 1)[-1]}={val(v)}" for k, v in overrides.items()) or "base"
    text = re.sub(r"[^A-Za-z0-9._=-]+", "", text)
    if len(text) > 80:
        text = text[:60] + "_" + hashlib.sha1(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:10]
    return text


def expand(spec: SweepSpec) -> list[Point]:
    keys = list(spec.axes)
    grid = [dict(zip(keys, combo)) for combo in itertools.product(*(spec.axes[k] for k in keys))] if keys else []
    seen, points = set(), []
    for ov in grid + list(spec.points):
        pid = point_id(ov)
        if pid in seen:
            continue
        seen.add(pid)
        points.extend(Point(pid, ov, s) for s in spec.seeds)
    return points


def run_config(spec: SweepSpec, point: Point, out: Path):
    from ..train.config import load_config
    threads = spec.threads or max(1, (os.cpu_count() or 1) // spec.parallel)
    overrides = [f"name={point.folder}", f"out_dir={out / 'points'}", f"data.name={spec.data}",
                 f"train.seed={point.seed}", f"train.threads={threads}", "train.progress=false"]
    overrides += [f"{k}={json.dumps(v)}" for k, v in point.overrides.items()]
    return load_config(None, overrides, base=spec.base)


def _run_point(cfg_dict: dict, folder: str) -> tuple[str, float]:
    """One point in this process (also the worker function of parallel sweeps)."""
    from ..train.config import RunConfig
    from ..train.loop import fit
    cfg = from_dict(RunConfig, cfg_dict, folder).validate()
    t0 = time.perf_counter()
    fit(cfg, resume=True)
    return folder, time.perf_counter() - t0


def run_sweep(spec: SweepSpec, out: Path, parallel: int | None = None, progress: bool = True) -> Path:
    """Run the missing points; returns results.csv. The spec is saved as <out>/sweep.yaml."""
    out = Path(out)
    (out / "points").mkdir(parents=True, exist_ok=True)
    (out / "sweep.yaml").write_text(yaml.safe_dump(spec.__dict__, sort_keys=False))
    points = expand(spec)
    check_unchanged(spec, points, out)
    todo = [p for p in points if not (out / "points" / p.folder / "point.json").exists()]
    # validate every config before the first run starts: a typo fails now, not hours later
    configs = {p.folder: (p, run_config(spec, p, out).to_dict()) for p in todo}
    parallel = parallel or spec.parallel
    bar = _bar(len(points), len(points) - len(todo), progress)

    def finished(folder: str, wall: float) -> None:
        point = configs[folder][0]
        (out / "points" / folder / "point.json").write_text(json.dumps(
            {"id": point.id, "seed": point.seed, "overrides": point.overrides, "wall_seconds": wall}))
        write_results(spec, out)
        if bar is not None:
            bar.update(1)

    if parallel == 1:
        for folder, (_, cfg) in configs.items():
            if bar is not None:
                bar.set_postfix_str(f"running {folder}; left {bar.total - bar.n - 1}")
            finished(*_run_point(cfg, folder))
    else:
        with ProcessPoolExecutor(parallel, mp_context=get_context("spawn")) as pool:
            pending = {pool.submit(_run_point, cfg, folder) for folder, (_, cfg) in configs.items()}
            while pending:
                if bar is not None:
                    bar.set_postfix_str(f"running {min(parallel, len(pending))}; left {len(pending)}")
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    finished(*f.result())
    if bar is not None:
        bar.close()
    return write_results(spec, out)


def check_unchanged(spec: SweepSpec, points: list[Point], out: Path) -> None:
    """Refuse to mix experiments: a started or finished point whose saved config differs from the sweep's now
    (an edited `base`, say) would otherwise be reused or resumed silently."""
    changed = []
    for p in points:
        saved = out / "points" / p.folder / "config.yaml"
        if saved.exists():
            drift = config_drift(yaml.safe_load(saved.read_text()) or {}, run_config(spec, p, out).to_dict())
            if drift:
                changed.append(f"{p.folder} ({'; '.join(drift)})")
    if changed:
        raise ConfigError(f"sweep {spec.name}: {len(changed)} point(s) in {out / 'points'} ran under another "
                          f"config than the sweep gives now, e.g. {changed[0]}. Run the changed sweep into a new "
                          f"--out, or remove those point folders to run them again.")


def _bar(total: int, done: int, progress: bool):
    if not progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=done, desc="sweep points", unit="point", dynamic_ncols=True)


def point_row(spec: SweepSpec, run_dir: Path) -> dict:
    res = RunResult.read(run_dir / "results.json")
    meta = json.loads((run_dir / "point.json").read_text())
    p, test, valid = res.params, res.test, res.valid
    impressions = res.train_impressions
    row = {"point": meta["id"], "seed": meta["seed"]}
    row.update({k: meta["overrides"].get(k) for k in spec.axes})
    row.update(auc=test["auc"], gauc=test.get("gauc"), logloss=test["logloss"], valid_auc=valid.get("auc"),
               valid_gauc=valid.get("gauc"), dense_params=p["dense"], embedding_params=p["embedding"],
               params=p["dense"] + p["embedding"], max_len=res.max_len, train_impressions=impressions,
               gflops_per_60=res.inference_gflops_per_60, train_flops_per_impression=res.train_flops_per_impression,
               train_flops=res.train_flops_per_impression * impressions * res.epochs_run if impressions else None,
               epochs_run=res.epochs_run, best_epoch=res.best_epoch, train_seconds=res.train_seconds,
               wall_seconds=meta["wall_seconds"])
    return row


def write_results(spec: SweepSpec, out: Path) -> Path:
    rows = [point_row(spec, d) for d in sorted((out / "points").iterdir()) if (d / "point.json").exists()]
    path = out / "results.csv"
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, ["point", "seed", *spec.axes, *METRIC_COLUMNS])
        w.writeheader()
        w.writerows({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()} for r in rows)
    os.replace(tmp, path)
    return path


def read_results(path: Path) -> list[dict]:
    """results.csv rows with numbers as floats (other cells as text)."""
    def num(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return v
    with open(path) as f:
        return [{k: num(v) for k, v in r.items()} for r in csv.DictReader(f)]
