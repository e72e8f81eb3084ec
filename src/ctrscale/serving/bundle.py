"""The servable bundle: a trained run as a self-contained folder that loads with ctrscale alone.

    <bundle>/manifest.json     format, ctrscale and torch versions, model, run, created, sha256 of every file
    <bundle>/config.yaml       the run's fully resolved config
    <bundle>/spec.json         the data spec the model was built on (fields, roles, vocabulary sizes, max_len)
    <bundle>/schema.yaml       the dataset's schema (what the raw fields are)
    <bundle>/weights.pt        the model's state dict, read with torch.load(weights_only=True): no pickle code runs
    <bundle>/vocab/<name>.json raw values by id (0 pad, 1 OOV), for every vocabulary the model reads
    <bundle>/numerics.json     train mean and std of each numeric field (the standardisation preparation applied)
    <bundle>/gsu.json          the candidate-sequence (GSU) setting, or null
    <bundle>/content.npy       the item content table, when the model or its GSU reads it
    <bundle>/compiled/         with --compile: the user encoder and candidate scorer as torch.export programs

Loading verifies every file against the manifest's digests (a missing, extra-checksummed or altered file is an
error naming it). The bundle's checksum (sha256 of the manifest's file list) names the model in responses and
keys the user-state cache, so a new bundle never reads an old bundle's cached states.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import secrets
import time
import warnings
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
import yaml

from ..batch import DataSpec
from ..data.gsu import Searcher
from ..data.store import atomic_write_text
from ..errors import CtrscaleError
from ..models.base import CTRModel
from ..models.registry import build_model
from ..train.runs import sha256_of
from .features import FeatureEncoder, Limits

FORMAT = "ctrscale-bundle"
FORMAT_VERSION = 1


class BundleError(CtrscaleError):
    """A bundle that cannot be written or loaded as given (names the file and what to do)."""


def ctrscale_version() -> str:
    try:
        return version("ctrscale")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "unknown"


def is_bundle(path: str | Path) -> bool:
    try:
        return json.loads((Path(path) / "manifest.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


# ----------------------------------------------------------------------------------------------------------------
# export


def export_bundle(run: str | Path, out: str | Path, checkpoint: str = "best", compile: bool = False,
                  overwrite: bool = False) -> Path:
    """Write the run's servable bundle into `out` (written beside it and renamed in when complete). An existing
    `out` is replaced only when it is a bundle and `overwrite` is set; any other existing folder is refused."""
    from ..train.config import save_config
    from ..train.inference import load_trained
    out = Path(os.path.abspath(out))
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not is_bundle(out):
            raise BundleError(f"{out}: exists and is not a ctrscale bundle; choose another --out")
        if not overwrite:
            raise BundleError(f"{out}: already holds a bundle; give --overwrite to replace it, or another --out")
    cfg, data, model, _ = load_trained(run, checkpoint, serving=False)
    model = model.cpu()
    spec = data.spec
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.ctrscale-partial-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        save_config(cfg, tmp / "config.yaml")
        atomic_write_text(tmp / "spec.json", json.dumps(spec.to_dict(), indent=1))
        atomic_write_text(tmp / "schema.yaml", yaml.safe_dump(data.meta.get("schema") or {}, sort_keys=False))
        torch.save(model.state_dict(), tmp / "weights.pt")
        (tmp / "vocab").mkdir()
        for name in sorted(set(spec.field_vocab.values())):
            shutil.copyfile(data.root / "vocab" / f"{name}.json", tmp / "vocab" / f"{name}.json")
        stats = data.report.get("numeric_standardisation", {})
        missing = [f for f in spec.dense if f not in stats]
        if missing:
            raise BundleError(f"{data.root}/report.json: no train statistics for the numeric field(s) {missing} "
                              f"(prepared by an older ctrscale); prepare the dataset again with --force")
        atomic_write_text(tmp / "numerics.json", json.dumps({f: stats[f] for f in spec.dense}, indent=1))
        cand_seq = model.needs.cand_seq
        atomic_write_text(tmp / "gsu.json", json.dumps(None if cand_seq is None else vars(cand_seq)))
        if model.needs.content or (cand_seq is not None and cand_seq.by == "content"):
            np.save(tmp / "content.npy", data.content().astype(np.float32))
        max_len = cfg.data.max_len or spec.max_len
        compiled = {}
        if compile:
            from .compiled import export_programs
            with warnings.catch_warnings():  # torch's deprecation notices about its own internals
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                compiled = export_programs(model.for_serving(), _bundle_encoder(tmp, spec, max_len, cand_seq),
                                           tmp / "compiled")
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "ctrscale": ctrscale_version(),
                    "torch": torch.__version__, "model": cfg.model_name, "run": Path(run).resolve().name,
                    "run_path": str(Path(run).resolve()), "checkpoint": checkpoint,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "max_len": max_len,
                    "compiled": compiled, "files": {f: sha256_of(tmp / f) for f in files}}
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=1))
        if out.exists():
            old = out.with_name(f".{out.name}.ctrscale-old-{os.getpid()}-{secrets.token_hex(4)}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def _bundle_encoder(root: Path, spec: DataSpec, max_len: int, cand_seq) -> FeatureEncoder:
    """The feature encoder of a bundle folder being written (compile needs example inputs)."""
    return _encoder(root, spec, yaml.safe_load((root / "schema.yaml").read_text()) or {}, max_len, cand_seq,
                    Limits())


# ----------------------------------------------------------------------------------------------------------------
# load


@dataclass
class Bundle:
    path: Path
    manifest: dict
    checksum: str              # sha256 over the manifest's file digests
    model: CTRModel            # eval mode, serving caches precomputed
    encoder: FeatureEncoder
    config: dict               # the run config as saved

    @property
    def name(self) -> str:
        return f"{self.manifest['model']}@{self.checksum[:12]}"

    @property
    def compiled_dir(self) -> Path | None:
        return self.path / "compiled" if self.manifest.get("compiled") else None


def load_bundle(path: str | Path, limits: Limits = Limits()) -> Bundle:
    """Load and verify a bundle folder (every file against its digest); errors name the file."""
    path = Path(path)
    man_path = path / "manifest.json"
    try:
        manifest = json.loads(man_path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path}: not a bundle (no manifest.json); make one with `ctrscale export RUN --out "
                          f"{path}`") from None
    except ValueError as e:
        raise BundleError(f"{man_path}: not valid JSON ({e}); export the bundle again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{man_path}: not a ctrscale bundle manifest; export the bundle again")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise BundleError(f"{man_path}: bundle format {manifest['format_version']} is newer than this ctrscale "
                          f"reads ({FORMAT_VERSION}); upgrade ctrscale")
    files = manifest.get("files") or {}
    for rel, digest in sorted(files.items()):
        f = path / rel
        if not f.is_file():
            raise BundleError(f"{f}: missing from the bundle; export it again")
        if sha256_of(f) != digest:
            raise BundleError(f"{f}: checksum mismatch (the file was altered or damaged); export the bundle again")
    for required in ("config.yaml", "spec.json", "weights.pt", "numerics.json", "gsu.json"):
        if required not in files:
            raise BundleError(f"{path}/{required}: not listed in the manifest; export the bundle again")
    checksum = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    config = yaml.safe_load((path / "config.yaml").read_text())
    spec = DataSpec(**{k: tuple(v) if k in ("sparse", "dense", "hist") else v
                       for k, v in json.loads((path / "spec.json").read_text()).items()})
    content = np.load(path / "content.npy") if "content.npy" in files else None
    try:
        model = build_model(spec, config["model"], content=content)
        state = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except CtrscaleError:
        raise
    except Exception as e:  # noqa: BLE001 - weights that do not fit the config: name the file
        raise BundleError(f"{path / 'weights.pt'}: cannot load the weights into {config['model'].get('name')} "
                          f"({type(e).__name__}: {str(e).splitlines()[0]}); export the bundle again") from None
    model = model.eval().for_serving()
    gsu = json.loads((path / "gsu.json").read_text())
    schema = yaml.safe_load((path / "schema.yaml").read_text()) if "schema.yaml" in files else {}
    encoder = _encoder(path, spec, schema or {}, manifest["max_len"], gsu, limits)
    return Bundle(path, manifest, checksum, model, encoder, config)


def _encoder(root: Path, spec: DataSpec, schema: dict, max_len: int, cand_seq, limits: Limits) -> FeatureEncoder:
    from ..batch import CandidateSequence
    vocabs = {name: json.loads((root / "vocab" / f"{name}.json").read_text())[2:]
              for name in sorted(set(spec.field_vocab.values()))}
    numerics = json.loads((root / "numerics.json").read_text())
    searcher = None
    if cand_seq is not None:
        cfg = cand_seq if isinstance(cand_seq, CandidateSequence) else CandidateSequence(**cand_seq)
        content = np.load(root / "content.npy") if cfg.by == "content" else None
        searcher = Searcher.standalone(spec, cfg, content)
    return FeatureEncoder(spec, schema, vocabs, numerics, max_len, searcher, limits)
