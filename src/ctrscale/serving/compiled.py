"""A model's request path as torch.export programs, AOTInductor-compiled where a C++ compiler is present.

    compiled/user_encoder.pt2           (sparse, dense, hist, hist_time, time) -> the UserState's tensors, flat
    compiled/candidate_scorer.pt2       (state tensors, context tensors, candidate tensors) -> (1, C) logits
    compiled/<part>.aoti.pt2            the same programs compiled by AOTInductor (preferred when they load)
    compiled/programs.json              which files exist and how the state is laid out

R is 1 (a request); the history width (8..max_len, as the feature encoder pads it) and the candidate count
(2..max_candidates; one candidate is scored as two) are dynamic. Both programs are checked equal to the eager
model before the export succeeds; a model that does not export is a BundleError naming the operation.
A model whose encode_user keeps no tensors (it reuses no user-side work) gets no user encoder program.
"""
from __future__ import annotations

import copy
import json
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.export import Dim
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..batch import Batch
from ..models.base import CTRModel, UserState
from .bundle import BundleError
from .features import FeatureEncoder

PARTS = ("user_encoder", "candidate_scorer")
ATOL = 1e-5  # on probabilities, as serving returns them


# ----------------------------------------------------------------------------------------------------------------
# the two programs as modules of plain tensors


def _context(sparse: Tensor, dense: Tensor, hist: Tensor, hist_time: Tensor, time: Tensor) -> Batch:
    zero = time.new_zeros(time.shape)
    return Batch(sparse, dense, hist, hist_time, time, label=zero.float(), user=zero, request=zero)


def _context_tensors(ctx: Batch) -> tuple[Tensor, ...]:
    return ctx.sparse, ctx.dense, ctx.hist, ctx.hist_time, ctx.time


@dataclass(frozen=True)
class StateLayout:
    """Where the tensors of a UserState's (caches, history, profile) sit among its fixed non-tensor leaves
    (None, ints): which caches exist is fixed by the model's config, so one layout serves every request."""
    spec: object        # pytree TreeSpec
    leaves: tuple       # the non-tensor leaves, None at tensor slots
    slots: tuple        # indices of the tensor leaves

    @classmethod
    def of(cls, state: UserState) -> tuple["StateLayout", tuple[Tensor, ...]]:
        leaves, spec = tree_flatten((state.caches, state.history, state.profile))
        slots = tuple(i for i, x in enumerate(leaves) if isinstance(x, Tensor))
        consts = tuple(None if i in slots else x for i, x in enumerate(leaves))
        return cls(spec, consts, slots), tuple(leaves[i] for i in slots)

    def state(self, context: Batch, tensors) -> UserState:
        leaves = list(self.leaves)
        for i, t in zip(self.slots, tensors):
            leaves[i] = t
        caches, history, profile = tree_unflatten(leaves, self.spec)
        return UserState(context, caches, history, profile)


class UserEncoder(nn.Module):
    def __init__(self, model: CTRModel):
        super().__init__()
        self.model = model

    def forward(self, sparse, dense, hist, hist_time, time):
        return StateLayout.of(self.model.encode_user(_context(sparse, dense, hist, hist_time, time)))[1]


class CandidateScorer(nn.Module):
    def __init__(self, model: CTRModel, layout: StateLayout):
        super().__init__()
        self.model, self.layout = model, layout

    def forward(self, state: tuple, context: tuple, cands: tuple):
        return self.model.score_candidates(self.layout.state(_context(*context), state), *cands)


# ----------------------------------------------------------------------------------------------------------------
# export


def example_request(encoder: FeatureEncoder, n_hist: int, n_cand: int, seed: int = 0) -> dict:
    """The encoder's example request with `n_hist` behaviors and `n_cand` candidates of raw values drawn from the
    bundle's vocabularies (and numerics around their train mean): inputs as real requests make them."""
    rng = np.random.default_rng(seed)
    req = copy.deepcopy(encoder.describe()["example_request"])

    def values(f: str, n: int) -> list:
        if f in encoder.numerics:
            mean, std = encoder.numerics[f]
            return (mean + std * rng.standard_normal(n)).tolist()
        keys = list(encoder.lookup[encoder.spec.field_vocab[f]]) or ["?"]
        return [keys[i] for i in rng.integers(0, len(keys), n)]
    req["candidates"] = {f: values(f, n_cand) for f in encoder.item_fields}
    if encoder.hist_fields:
        times = np.sort(rng.integers(req["time"] - 30 * 86400, req["time"], n_hist)).tolist()
        req["history"] = {**{f: values(f"hist.{f}", n_hist) for f in encoder.hist_fields}, "time": times}
    return req


def _dims(encoder: FeatureEncoder):
    """The history width and candidate count as export dimensions (None: static). The encoder pads a history to
    min(max_len, a multiple of 8 >= 8), so it is dynamic only when max_len > 8."""
    hist = Dim("history", min=8, max=encoder.max_len) if encoder.hist_fields and encoder.max_len > 8 else None
    return hist, Dim("candidates", min=2, max=max(2, encoder.limits.max_candidates))


def _cand_tensors(enc) -> tuple[Tensor, ...]:
    cands = (enc.cand_sparse, enc.cand_dense)
    return cands if enc.cand_hist is None else (*cands, enc.cand_hist, enc.cand_hist_time)


def _model_name(model: CTRModel) -> str:
    from ..models.registry import entries
    return next((n for n, e in entries().items() if type(model.cfg) is e.config), type(model).__name__)


def cause(e: BaseException) -> str:
    """One line naming what stopped an export: torch's message and the model source line that ran into it."""
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
    first = first if len(first) <= 240 else first[:237] + "..."
    where = None
    while e is not None and where is None:  # the innermost model frame, in the error or the ones it wraps
        frames = [f for f in traceback.extract_tb(e.__traceback__) if "/ctrscale/models/" in f.filename]
        if frames:
            f = frames[-1]
            where = f"{f.filename.split('/ctrscale/')[-1]}:{f.lineno} `{(f.line or '').strip()}`"
        e = e.__cause__ or e.__context__
    return f"{first} (at {where})" if where else first


def _export(module: nn.Module, args: tuple, dynamic_shapes) -> torch.export.ExportedProgram:
    with torch.no_grad():
        return torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)


def export_programs(model: CTRModel, encoder: FeatureEncoder, out_dir: Path, aoti: bool | None = None) -> dict:
    """Write the model's user encoder and candidate scorer into `out_dir` (see the module doc) and return what was
    written, part by part, for the manifest. aoti: compile with AOTInductor (None: where a C++ compiler is)."""
    model, name, out_dir = model.eval(), _model_name(model), Path(out_dir)
    aoti = has_compiler() if aoti is None else aoti
    hist_dim, cand_dim = _dims(encoder)
    trace = encoder.encode(example_request(encoder, 61, 37, seed=1))  # sizes no dimension specialises to
    with torch.no_grad():
        layout, state = StateLayout.of(model.encode_user(trace.context))
    try:
        programs = {}
        if state:
            programs["user_encoder"] = _export(UserEncoder(model), _context_tensors(trace.context),
                                               (None, None, {1: hist_dim}, {1: hist_dim}, None))
        state_dims = _state_dims(model, encoder, state, hist_dim)
        ctx_dims = (None, None, {1: hist_dim}, {1: hist_dim}, None)
        cands = _cand_tensors(trace)
        programs["candidate_scorer"] = _export(
            CandidateScorer(model, layout), (state, _context_tensors(trace.context), cands),
            (state_dims, ctx_dims, tuple({1: cand_dim} for _ in cands)))
    except Exception as e:  # noqa: BLE001 - any tracing failure: name the operation
        raise BundleError(f"model {name} does not export: {cause(e)}; export without --compile") from e
    out_dir.mkdir(parents=True, exist_ok=True)
    report, files = {}, {}
    for part, ep in programs.items():
        torch.export.save(ep, out_dir / f"{part}.pt2")
        files[part] = f"{part}.pt2"
        report[part] = "exported"
    meta = {"files": files, "aoti": {}, "cand_hist": trace.cand_hist is not None}
    if aoti:
        for part, ep in programs.items():
            t0 = time.perf_counter()
            try:
                torch._inductor.aoti_compile_and_package(ep, package_path=str(out_dir / f"{part}.aoti.pt2"))
                meta["aoti"][part] = f"{part}.aoti.pt2"
                report[part] = f"exported (aoti, compiled in {time.perf_counter() - t0:.0f} s)"
            except Exception as e:  # noqa: BLE001 - the exported program still serves
                report[part] = f"exported (aoti failed: {cause(e)})"
    for part in PARTS:
        report.setdefault(part, f"not needed: {name} keeps no user state (every candidate is scored whole)")
    (out_dir / "programs.json").write_text(json.dumps(meta, indent=1))
    _validate(model, encoder, out_dir, report, name)
    return report


def _state_dims(model: CTRModel, encoder: FeatureEncoder, state: tuple[Tensor, ...], hist_dim):
    """Per state tensor, its dimensions that follow the history width: found by encoding a shorter history.
    A dimension equal to the width is the history Dim; any other that moves is left to export (Dim.AUTO)."""
    if hist_dim is None or not state:
        return tuple(None for _ in state)
    short = encoder.encode(example_request(encoder, 13, 3, seed=2)).context
    with torch.no_grad():
        other = StateLayout.of(model.encode_user(short))[1]
    short_width = short.hist.shape[1]
    return tuple({i: hist_dim if b == short_width else Dim.AUTO for i, (a, b) in enumerate(zip(s.shape, o.shape))
                  if a != b} or None for s, o in zip(state, other))


def has_compiler() -> bool:
    from torch._inductor.cpp_builder import get_cpp_compiler
    try:
        return shutil.which(get_cpp_compiler()) is not None
    except Exception:  # noqa: BLE001 - no compiler found
        return False


# ----------------------------------------------------------------------------------------------------------------
# validation


def _validate(model: CTRModel, encoder: FeatureEncoder, out_dir: Path, report: dict, name: str) -> None:
    """Hold the written programs (as load_programs serves them) equal to eager on requests of other sizes than
    the traced one; an AOTI package that differs is dropped for its exported program, which must match."""
    checks = [encoder.encode(example_request(encoder, n, c, seed=3 + i))
              for i, (n, c) in enumerate([(2, 1), (29, 5), (min(encoder.max_len, 200), 130)])]
    checks.insert(0, encoder.encode(encoder.describe()["example_request"]))
    for attempt in ("aoti", "exported"):
        compiled = load_programs(out_dir, model)
        worst = max(_max_diff(model, compiled, enc) for enc in checks)
        if worst <= ATOL:
            return
        meta = json.loads((out_dir / "programs.json").read_text())
        if attempt == "exported" or not meta["aoti"]:
            raise BundleError(f"model {name}: the exported programs differ from eager by {worst:.2e} in "
                              f"probability (> {ATOL}); export without --compile")
        for part, file in meta["aoti"].items():  # fall back to the exported programs
            (out_dir / file).unlink()
            report[part] = f"exported (aoti dropped: differs from eager by {worst:.2e})"
        meta["aoti"] = {}
        (out_dir / "programs.json").write_text(json.dumps(meta, indent=1))


def _max_diff(model: CTRModel, compiled: "CompiledModel", enc) -> float:
    with torch.inference_mode():
        cands = _cand_tensors(enc)
        want = torch.sigmoid(model.score_candidates(model.encode_user(enc.context), *cands))
        got = torch.sigmoid(compiled.score_candidates(compiled.encode_user(enc.context), *cands))
    return float((want - got).abs().max()) if want.shape == got.shape else float("inf")


# ----------------------------------------------------------------------------------------------------------------
# load


def _load(path: Path, aoti: bool):
    if aoti:
        return torch._inductor.aoti_load_package(str(path))
    return torch.export.load(path).module()


class CompiledModel:
    """The programs in place of the eager model inside Scorer: encode_user / score_candidates on R = 1."""

    def __init__(self, compiled_dir: Path, model: CTRModel):
        meta = json.loads((Path(compiled_dir) / "programs.json").read_text())
        self.programs, self.kind = {}, {}
        for part, file in meta["files"].items():
            aoti_file = meta["aoti"].get(part)
            try:
                self.programs[part], self.kind[part] = _load(compiled_dir / aoti_file, True), "aoti"
            except Exception:  # noqa: BLE001 - none given, or built for another platform: the portable program
                self.programs[part], self.kind[part] = _load(compiled_dir / file, False), "exported"
        self.needs, self.reuses_user_state = model.needs, model.reuses_user_state

    def encode_user(self, context: Batch) -> UserState:
        encoder = self.programs.get("user_encoder")
        return UserState(context, [] if encoder is None else list(encoder(*_context_tensors(context))))

    def score_candidates(self, state: UserState, cand_sparse: Tensor, cand_dense: Tensor,
                         cand_hist: Tensor | None = None, cand_hist_time: Tensor | None = None) -> Tensor:
        cands = tuple(t for t in (cand_sparse, cand_dense, cand_hist, cand_hist_time) if t is not None)
        one = cand_sparse.shape[1] == 1
        if one:  # traced for 2.. candidates: score the one twice
            cands = tuple(torch.cat([t, t], 1) for t in cands)
        logits = self.programs["candidate_scorer"](tuple(state.caches), _context_tensors(state.context), cands)
        return logits[:, :1] if one else logits

    def extend_user(self, state: UserState, context: Batch, new: int) -> None:
        return None  # the programs encode whole histories only


def load_programs(compiled_dir: Path, model: CTRModel) -> CompiledModel:
    return CompiledModel(Path(compiled_dir), model)
