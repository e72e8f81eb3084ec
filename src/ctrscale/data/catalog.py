"""Datasets known by name, prepared on first use into $CTRSCALE_HOME/prepared/<name> (default ~/.cache/ctrscale).

Raw files (MovieLens, Taobao, Amazon, Ele.me) are looked up in `raw_dir`, else $CTRSCALE_DATA/<folder>, else
../shared/data/<folder> relative to the working directory (where the project's shared data lies beside a checkout)."""
from __future__ import annotations

import inspect
import os
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigError
from .dataset import PreparedDataset

RAW_FOLDERS = {"ml100k-ctr-v1": "ml-100k", "ml1m-u2999-ctr-v1": "ml-1m-u2999", "ml1m-ctr-v1": "ml-1m",
               "ml20m-ctr-v1": "ml-20m", "taobao-ctr-v1": "taobao", "amazon-ctr-v1": "amazon",
               "eleme-ctr-v1": "eleme"}
NAMES = ("synthetic", *RAW_FOLDERS)


def home() -> Path:
    return Path(os.environ.get("CTRSCALE_HOME", Path.home() / ".cache" / "ctrscale"))


def find_raw(name: str, raw_dir: str | None = None) -> Path:
    """The folder of `name`'s raw files; every preparer of raw files (MovieLens, Taobao, Amazon, Ele.me) uses it."""
    folder = RAW_FOLDERS[name]
    if raw_dir:  # asked for by name: a typo must not quietly fall back to another copy
        if not Path(raw_dir).is_dir():
            raise FileNotFoundError(f"raw data for {name}: --raw-dir (data.raw_dir in a run config) {raw_dir} is "
                                    f"not a folder; point it at the folder holding the {folder} files")
        return Path(raw_dir)
    candidates = [Path(os.environ["CTRSCALE_DATA"]) / folder] if os.environ.get("CTRSCALE_DATA") else []
    candidates.append(Path.cwd().parent / "shared" / "data" / folder)
    candidates.append(Path(__file__).resolve().parents[4] / "shared" / "data" / folder)  # beside a checkout
    candidates = list(dict.fromkeys(c.resolve() for c in candidates))  # from a checkout, the last two are one
    for c in candidates:
        if c.is_dir():
            return c
    raise FileNotFoundError(f"raw data for {name} not found; looked in {', '.join(map(str, candidates))}. Give "
                            f"--raw-dir (data.raw_dir in a run config), or set CTRSCALE_DATA to a folder holding "
                            f"{folder}/")


def prepare(name: str, raw_dir: str | None = None, out: str | Path | None = None, force: bool = False,
            **options) -> tuple[Path, dict | None]:
    """Prepare a named dataset (a no-op when already prepared); returns (prepared folder, report or None).
    Processes preparing the same folder at once (a parallel sweep's first points) take turns: the first prepares,
    the others then find it prepared."""
    if name == "synthetic":
        from .synthetic import prepare_synthetic
        options = checked_options(name, prepare_synthetic, options)
        suffix = "-".join(f"{k}{v}" for k, v in sorted(options.items()))
        out = Path(out) if out else home() / "prepared" / ("synthetic" + (f"-{suffix}" if suffix else ""))
        with _preparing(out):
            return out, prepare_synthetic(out, force=force, **options)
    if name in ("taobao-ctr-v1", "amazon-ctr-v1", "eleme-ctr-v1"):
        from .amazon import prepare_amazon
        from .eleme import prepare_eleme
        from .taobao import prepare_taobao
        suffix = "".join(f"-{k}{v}" for k, v in sorted(options.items()))
        out = Path(out) if out else home() / "prepared" / (name + suffix)
        preparer = {"taobao-ctr-v1": prepare_taobao, "amazon-ctr-v1": prepare_amazon,
                    "eleme-ctr-v1": prepare_eleme}[name]
        options = checked_options(name, preparer, options)
        with _preparing(out):
            return out, preparer(find_raw(name, raw_dir), out, force=force, **options)
    if name in RAW_FOLDERS:
        if options:
            raise ConfigError(f"{name} takes no options, got {sorted(options)}")
        from .movielens import prepare_movielens
        out = Path(out) if out else home() / "prepared" / name
        with _preparing(out):
            return out, prepare_movielens(name, find_raw(name, raw_dir), out, force=force)
    raise ConfigError(f"data.name: unknown dataset {name!r}; known: {NAMES} (or give a prepared folder as data.path)")


def checked_options(name: str, preparer, options: dict) -> dict:
    """A preparer's options by name, each coerced to the type of its default (`impressions=1e5` is an int)."""
    from ..typed import coerce
    params = {k: p for k, p in inspect.signature(preparer).parameters.items()
              if k not in ("out", "raw_dir", "force") and p.default is not inspect.Parameter.empty}
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ConfigError(f"{name}: unknown option(s) {unknown}; it takes {sorted(params)}")
    return {k: coerce(type(params[k].default), v, f"{name} option {k}") for k, v in options.items()}


@contextmanager
def _preparing(out: Path):
    """An exclusive lock on <out>.lock for the preparation (POSIX; elsewhere, no lock)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(out.name + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_dataset(name: str | None = None, path: str | None = None, raw_dir: str | None = None,
                 options: dict | None = None) -> PreparedDataset:
    if path:
        return PreparedDataset(path)
    out, _ = prepare(name, raw_dir=raw_dir, **(options or {}))
    return PreparedDataset(out)


def open_run_data(section) -> PreparedDataset:
    """A run's dataset (its config's data section), prepared if needed, showing only the run's fields."""
    data = open_dataset(section.name, section.path, section.raw_dir, section.options)
    return data.select_fields(section.fields, section.drop_fields)
