"""Run folders kept trustworthy: one writer at a time, checkpoints that prove they are intact, and no record that
mixes two experiments.

- `RunLock`: an exclusive lock on <run>/.lock for the whole training; a second training into the same folder is
  refused with the holder's pid.
- `check_run_folder`: a folder that already holds a run (last.pt, best.pt or results.json) is trained into only
  with --resume (continue it; a finished run is returned as it is when the config matches) or --overwrite (replace
  ctrscale's files in it, only when ctrscale wrote the run: its config.yaml loads as a run config; nothing else is
  touched).
- `save_checkpoint` / `load_checkpoint`: written atomically (a unique temporary file, then a rename) with the
  SHA-256 of the file in <name>.sha256; loading verifies it, and every failure names the file. The sidecar lists
  the new digest and the one of the file it replaces, so a crash between writing the sidecar and the rename still
  leaves a verifiable pair. A checkpoint without a sidecar (written before checksums) gets the zip records' CRC32s
  checked instead.
- `config_drift`: the settings in which two run configs differ, ignoring those that do not change the experiment
  (threads, logging, device, ...); a resume, a reused comparison run and a sweep point are refused on any drift.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import torch
import yaml

from ..data.store import atomic_write_text
from ..errors import ConfigError, RunError
from .result import RunResult

CHECKSUM_SUFFIX = ".sha256"
# what `ctrscale train` writes into a run folder; --overwrite removes these (and tb/'s event files), nothing else
RUN_FILES = ("config.yaml", "data_spec.json", "metrics.csv", "last.pt", "best.pt", "teacher.pt",
             "sparse_snapshot.pt", "results.json", "test_predictions.npz")
HOLDS_A_RUN = ("results.json", "last.pt", "best.pt")
# settings that may differ between a run's start and its resume (or reuse) without changing its results
# (a run sharded over ranks resumes in one process and ends where the uninterrupted run does: tests/test_sharding)
NOT_THE_EXPERIMENT = {"name", "out_dir", "train.threads", "train.progress", "train.device", "train.log_every",
                      "train.checkpoint_every", "train.max_steps", "train.embedding_sharding", "train.shard_min_rows",
                      "train.skip_nonfinite_steps", "data.num_workers", "data.eval_batch_size"}


class RunLock:
    """An exclusive, non-blocking lock on <run_dir>/.lock (POSIX flock: released by the OS if the process dies).
    A run that fails before writing anything into the folder the lock created leaves no folder behind."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.file = None
        self.created = False

    def __enter__(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # no flock (Windows): no lock
            return self
        self.created = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise RunError(f"{self.path.parent}: another training (pid {holder}) is writing this run folder; wait "
                           f"for it to end, or train into another folder (name=... or out_dir=...)") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self.file = f
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.file is not None:
            if exc_type is not None and self.created and os.listdir(self.path.parent) == [".lock"]:
                try:  # unlinked while held: whoever opened it was refused; a later comer starts a new folder
                    self.path.unlink()
                    self.path.parent.rmdir()
                except OSError:  # someone else's files arrived meanwhile: leave the folder as it is
                    pass
            self.file.close()  # closing releases the lock; the file stays (removing it would race a new holder)
            self.file = None


def check_run_folder(run_dir: Path, cfg: dict, resume: bool, overwrite: bool) -> RunResult | None:
    """Refuse to train over a run without --resume or --overwrite; with --overwrite remove ctrscale's run files.
    Returns the results of a finished run that --resume asks for under its own config (nothing left to train)."""
    if resume and overwrite:
        raise ConfigError("--resume continues the run in the folder and --overwrite replaces it: give one of them")
    held = [f for f in HOLDS_A_RUN if (run_dir / f).exists()]
    if not held:
        return None
    if resume:
        if (run_dir / "last.pt").exists():
            return None  # the resume checks the checkpoint's config
        return finished_results(run_dir, cfg)
    if not overwrite:
        state = "a finished run" if "results.json" in held else "a started run"
        raise RunError(f"{run_dir}: holds {state} ({', '.join(held)}); continue it with --resume, train into "
                       f"another folder (name=... or out_dir=...), or replace it with --overwrite")
    if saved_config(run_dir) is None:
        raise RunError(f"{run_dir}: holds {', '.join(held)} but no run config written by `ctrscale train` "
                       f"(config.yaml); refusing to replace files ctrscale may not have written: train into another "
                       f"folder, or remove them yourself")
    for name in RUN_FILES:
        for q in (run_dir / name, run_dir / (name + CHECKSUM_SUFFIX)):
            q.unlink(missing_ok=True)
    for event in (run_dir / "tb").glob("events.out.tfevents.*"):  # TensorBoard's files; the folder may hold more
        event.unlink()
    return None


def saved_config(run_dir: Path) -> dict | None:
    """The run config a training saved in the folder, or None when there is none that loads as one."""
    try:
        raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return raw if isinstance(raw, dict) and {"model", "data", "optim", "train"} <= raw.keys() else None


def run_drift(run_dir: Path, cfg: dict) -> list[str]:
    """How the run saved in `run_dir` (its config.yaml) differs from `cfg`; [] when there is none or no difference."""
    started = saved_config(run_dir)
    return config_drift(started, cfg) if started is not None else []


def finished_results(run_dir: Path, cfg: dict) -> RunResult:
    """The results.json of a finished run, when it ran under `cfg` (else a RunError naming what differs)."""
    path = run_dir / "results.json"
    if not path.exists():
        raise RunError(f"{run_dir}: holds best.pt but no last.pt to resume from; train into another folder, or "
                       f"replace the run with --overwrite")
    res = RunResult.read(path)
    drift = config_drift(res.config, cfg)
    if drift:
        raise RunError(f"{run_dir}: holds a finished run under another config than asked for now "
                       f"({'; '.join(drift)}); train into another folder (another name or out_dir), or replace it "
                       f"with --overwrite")
    return res


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


_SAVED: dict[str, tuple] = {}  # path -> (size, mtime_ns, sha256) of the checkpoint this process last wrote there


def _current_digest(path: Path) -> str | None:
    """The SHA-256 of the intact checkpoint now at `path` (None when there is none, or it does not verify)."""
    if not path.exists():
        return None
    st = path.stat()
    known = _SAVED.get(str(path))
    if known and known[:2] == (st.st_size, st.st_mtime_ns):
        return known[2]  # written by this process and unchanged: no need to read it again
    try:
        return verify_checkpoint(path) or sha256_of(path)
    except RunError:
        return None


def save_checkpoint(obj, path: str | Path) -> None:
    """torch.save to a temporary file of this process, its digest into the sidecar (with the digest of the intact
    file still in place, should the rename never happen), then rename into place."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        new = sha256_of(tmp)
        current = _current_digest(path)
        atomic_write_text(_sidecar(path), "\n".join([new] + ([current] if current else [])) + "\n")
        os.replace(tmp, path)
        st = path.stat()
        _SAVED[str(path)] = (st.st_size, st.st_mtime_ns, new)
    finally:
        tmp.unlink(missing_ok=True)


def verify_checkpoint(path: Path) -> str | None:
    """Raise RunError naming the file unless it matches its recorded SHA-256 (or, without one, its zip CRCs);
    returns the SHA-256 when it was computed (a checkpoint with a sidecar)."""
    if not path.exists():
        raise RunError(f"{path}: checkpoint not found")
    side = _sidecar(path)
    damaged = (f"{path}: the checkpoint is damaged ({{}}); restore it from a copy, or train the run again "
               f"(--overwrite)")
    if side.exists():
        digest = sha256_of(path)
        if digest not in side.read_text().split():
            raise RunError(damaged.format(f"its SHA-256 differs from the one recorded in {side.name}"))
        return digest
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise RunError(damaged.format(f"not a readable torch checkpoint: {e}")) from None
    if bad is not None:
        raise RunError(damaged.format(f"record {bad!r} fails its CRC check"))
    return None


def load_checkpoint(path: str | Path, map_location=None, weights_only: bool = False):
    """torch.load of a verified checkpoint; a failure to read it is a RunError naming the file."""
    path = Path(path)
    verify_checkpoint(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as e:  # noqa: BLE001 - verified yet unreadable: say which file and why
        raise RunError(f"{path}: cannot load the checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from e


def resolved(cfg: dict) -> dict:
    """A run config dict with the model's (and a distillation teacher's) section resolved through the registry
    (defaults and presets filled in), so a config saved before every key was written compares equal to today's."""
    from ..models.config import resolve
    out = dict(cfg)

    def complete(model):
        try:
            return resolve(model).to_dict()
        except ConfigError:  # a section today's code refuses: compared as written
            return model
    out["model"] = complete(out.get("model"))
    if isinstance(out.get("distill"), dict):
        out["distill"] = {**out["distill"], "teacher": complete(out["distill"].get("teacher"))}
    return out


_SECTIONS = {"data", "optim", "train", "distill", "model", "distill.teacher"}  # flattened; other dicts stay whole


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and f"{prefix}{k}" in _SECTIONS:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def config_drift(started: dict, now: dict) -> list[str]:
    """'key: old -> new' for every setting that differs between a run's saved config and the one asked for now.
    A key of a typed section only one side has is skipped (a setting added to the code later ran as its default);
    model keys are compared after completing both sides with the model's defaults."""
    a, b = _flat(resolved(started)), _flat(resolved(now))
    drift = [f"{k}: {a[k]!r} -> {b[k]!r}" for k in sorted(a.keys() & b.keys())
             if k not in NOT_THE_EXPERIMENT and a[k] != b[k]]
    model_keys = {k for k in a.keys() ^ b.keys() if k.startswith(("model.", "distill.teacher."))}
    drift += [f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in sorted(model_keys)]
    # an optional section (distill) switched on or off
    drift += [f"{k}: {'set' if started.get(k) else 'none'} -> {'set' if now.get(k) else 'none'}"
              for k in sorted(started.keys() & now.keys()) if (started[k] is None) != (now[k] is None)]
    return drift
