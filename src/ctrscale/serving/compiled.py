"""A model's request path as torch.export programs, AOTInductor-compiled where a C++ compiler is present.

    compiled/user_encoder.pt2         (sparse, dense, hist, hist_time, time) -> the UserState's tensors, flat
    compiled/candidate_scorer.pt2     (state tensors, context tensors, candidate tensors) -> (1, C) logits
    compiled/<part>.aoti.pt2          the same programs compiled by AOTInductor (preferred where they load)
    compiled/programs.json            which files exist, and the history widths the programs take

One request (R = 1) at a time; the history width and the candidate count are dynamic. The programs take
histories left-padded to a multiple of 8 of at least 16 and at least 2 candidates: CompiledModel pads its inputs
onto that grid (models ignore left padding; one candidate is scored twice), so that no kernel guard on a small or
odd size cuts the range. Both programs are checked equal to the eager model before the export succeeds; a model
that does not export is a BundleError naming the operation. A model whose encode_user keeps no tensors (it
reuses no user-side work) needs no user encoder program.
"""
from __future__ import annotations

import contextlib
import copy
import json
import linecache
import logging
import re
import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.export import Dim
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..batch import Batch
from ..models.attention import attention_implementation
from ..models.base import CTRModel, UserState
from .bundle import BundleError
from .features import FeatureEncoder

ATOL = 1e-5          # on probabilities, as serving returns them
MIN_WIDTH = 16       # histories narrower than this are padded to it (fast kernels' guards hold from here)
DIM_NAMES = {"history": "history width", "candidates": "candidate count"}  # export Dim name -> what errors say
PACKAGE = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------------------
# the two programs as modules of plain tensors


def _context(sparse: Tensor, dense: Tensor, hist: Tensor, hist_time: Tensor, time: Tensor) -> Batch:
    zero = time.new_zeros(time.shape)
    return Batch(sparse, dense, hist, hist_time, time, label=zero.float(), user=zero, request=zero)


def _context_tensors(ctx: Batch, pad: bool = False) -> tuple[Tensor, ...]:
    """The context as program inputs; pad: its history left-padded onto the programs' width grid."""
    hist, hist_time = ctx.hist, ctx.hist_time
    if pad and hist.shape[2]:
        extra = _width(hist.shape[1]) - hist.shape[1]
        hist, hist_time = F.pad(hist, (0, 0, extra, 0)), F.pad(hist_time, (extra, 0))
    return ctx.sparse, ctx.dense, hist, hist_time, ctx.time


def _width(n: int) -> int:
    return max(MIN_WIDTH, -(-n // 8) * 8)


@dataclass(frozen=True)
class StateLayout:
    """Where the tensors of a UserState's (caches, history, profile) sit among its non-tensor leaves (None, ints):
    which caches exist is fixed by the model's config, so one layout serves every request."""
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
# why an export failed


class _TraceLog(logging.Handler):
    """What torch logs while tracing and its errors leave out: where a guard fixed a dimension to a constant (the
    error names only the dimension; the guard's source line is logged at INFO) and the operator whose meta
    function failed. Recorded here, shown nowhere."""
    LOGGERS = ("torch.fx.experimental.symbolic_shapes", "torch._subclasses.fake_tensor")
    FIXED = re.compile(r"eval Eq\((\w+), (\d+)\) \[guard added\].*?\(([^()]*?):(\d+) in (\w+)\)")
    META = re.compile(r"failed while attempting to run meta for (\S+)")

    def __init__(self):
        super().__init__(logging.INFO)
        self.fixed: list[tuple[str, int, str]] = []   # (file, line, function) of each guard fixing a size
        self.ops: list[str] = []                      # operators whose meta function failed

    def emit(self, record):
        text = record.getMessage()
        if m := self.FIXED.search(text):
            self.fixed.append((m[3], int(m[4]), m[5]))
        elif m := self.META.search(text):
            self.ops.append(m[1])

    def __enter__(self):
        self.saved = []
        for name in self.LOGGERS:
            log = logging.getLogger(name)
            self.saved.append((log, log.level, log.propagate, log.handlers))
            log.setLevel(min(log.getEffectiveLevel(), logging.INFO))
            log.propagate, log.handlers = False, [self]
        return self

    def __exit__(self, *exc):
        for log, level, propagate, handlers in self.saved:
            log.setLevel(level)
            log.propagate, log.handlers = propagate, handlers


def _where(file: str, line: int, fn: str | None = None) -> str:
    """file:line in fn: `code`, the file relative to the package (torch logs it relative to the working dir)."""
    rel = file.split("ctrscale/", 1)[-1]
    code = linecache.getline(str(PACKAGE / rel) if "ctrscale/" in file else file, line).strip()
    return f"{rel}:{line}{f' in {fn}' if fn else ''}" + (f": `{code}`" if code else "")


def _dim_names(raw: list[str]) -> str:
    return " and ".join(sorted({label for r in raw for key, label in DIM_NAMES.items() if key in r}))


def cause(e: BaseException, log: _TraceLog | None = None) -> str:
    """One line naming what stopped an export: the operation or guard, and the model source line behind it."""
    text = str(e)
    if "specialized it to be a constant" in text:
        dims = _dim_names(re.findall(r"You marked (\S+) as dynamic", text))
        fixed = log.fixed if log else []
        ours = [g for g in fixed if "/ctrscale/" in g[0]] or fixed
        return f"the {dims} is fixed to the traced size" + (f" by {_where(*ours[0])}" if ours else "")
    guard = re.search(r"Not all values of (\S+) .*? satisfy the generated guard (.*)\.$", text, re.M)
    first = f"the {_dim_names([guard[1]])} must satisfy {guard[2]}" if guard else \
        next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
    first = first if len(first) <= 200 else first[:197] + "..."
    op = re.search(r"^\s*target: (\S+)$", text, re.M)  # the operation Inductor was lowering
    op = op[1] if op else log.ops[-1] if log and log.ops else None
    first = f"{op}: {first}" if op else first
    while e is not None:  # the innermost model frame, in the error or the ones it wraps
        frames = [f for f in traceback.extract_tb(e.__traceback__) if "/ctrscale/models/" in f.filename]
        if frames:
            return f"{first} (at {_where(frames[-1].filename, frames[-1].lineno, frames[-1].name)})"
        e = e.__cause__ or e.__context__
    inside = re.search(r"^Caused by: \((.+)\)$", text, re.M)  # a guard inside torch
    return f"{first} (at torch/{inside[1]})" if inside else first


# ----------------------------------------------------------------------------------------------------------------
# export


def example_request(encoder: FeatureEncoder, n_hist: int, n_cand: int, seed: int = 0) -> dict:
    """The encoder's example request with `n_hist` behaviors and `n_cand` candidates of raw values drawn from the
    bundle's vocabularies (numerics around their train mean): inputs as real requests make them."""
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


def _cand_tensors(enc) -> tuple[Tensor, ...]:
    cands = (enc.cand_sparse, enc.cand_dense)
    return cands if enc.cand_hist is None else (*cands, enc.cand_hist, enc.cand_hist_time)


def _model_name(model: CTRModel) -> str:
    from ..models.registry import entries
    return next((n for n, e in entries().items() if type(model.cfg) is e.config), type(model).__name__)


def _export(module: nn.Module, args: tuple, dynamic_shapes, kernels: str | None) -> torch.export.ExportedProgram:
    with torch.no_grad(), _TraceLog() as log, \
            attention_implementation(kernels) if kernels else contextlib.nullcontext():
        try:
            return torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)
        except Exception as e:  # noqa: BLE001 - any tracing failure: name the operation
            raise BundleError(cause(e, log)) from e


def _write_part(part: str, module: nn.Module, args: tuple, dims, out_dir: Path, aoti: bool) -> str:
    """Export one part into out_dir (and AOTI-compile it) with the model's own attention kernels, else, where those
    do not trace, with the reference kernels (dense forms that trace for any size where a fast kernel's Python
    schedule fixes one). Not where only AOTI fails: SUAN's dense candidate reference compiled is slower than its
    own kernel run as an exported program. Returns how, for the manifest; a BundleError if it does not export."""
    errors = []
    for kernels in (None, "reference"):
        try:
            ep = _export(module, args, dims, kernels)
            break
        except BundleError as e:
            errors.append(str(e))
    else:
        raise BundleError(errors[0] if errors[0] == errors[1] else f"{errors[0]}; with reference attention: "
                          f"{errors[1]}")
    torch.export.save(ep, out_dir / f"{part}.pt2")
    done = "exported" + (f" with the reference attention kernels (own kernels: {errors[0]})" if errors else "")
    if aoti:
        t0 = perf_counter()
        try:
            torch._inductor.aoti_compile_and_package(ep, package_path=str(out_dir / f"{part}.aoti.pt2"))
            done += f"; aoti-compiled in {perf_counter() - t0:.0f} s"
        except Exception as e:  # noqa: BLE001 - the exported program serves
            (out_dir / f"{part}.aoti.pt2").unlink(missing_ok=True)
            done += f"; aoti failed, the exported program serves: {cause(e)}"
    return done


def export_programs(model: CTRModel, encoder: FeatureEncoder, out_dir: Path, aoti: bool | None = None) -> dict:
    """Write the model's user encoder and candidate scorer into `out_dir` (see the module doc); return what was
    written, part by part, for the manifest. aoti: also compile with AOTInductor (None: where a C++ compiler is)."""
    model, name, out_dir = model.eval(), _model_name(model), Path(out_dir)
    aoti = has_compiler() if aoti is None else aoti
    widest = _width(encoder.max_len)
    hist_dim = 8 * Dim("history_8", min=MIN_WIDTH // 8, max=widest // 8) \
        if encoder.hist_fields and widest > MIN_WIDTH else None
    cand_dim = Dim("candidates", min=2)  # no maximum: Scorer's chunk decides
    ctx_dims = (None, None, {1: hist_dim}, {1: hist_dim}, None)

    trace = encoder.encode(example_request(encoder, 61, 37, seed=1))  # sizes no dimension specialises to
    context, cands = _context_tensors(trace.context, pad=True), _cand_tensors(trace)
    with torch.no_grad():
        layout, state = StateLayout.of(model.encode_user(_context(*context)))
    parts = {"candidate_scorer": (CandidateScorer(model, layout), (state, context, cands),
                                  (_state_dims(model, encoder, state, hist_dim), ctx_dims,
                                   tuple({1: cand_dim} for _ in cands)))}
    if state:  # else the model keeps no user state: nothing to encode ahead of the candidates
        parts = {"user_encoder": (UserEncoder(model), context, ctx_dims), **parts}
    report = {"user_encoder": f"not needed: {name} keeps no user state (candidates are scored whole)"}
    out_dir.mkdir(parents=True, exist_ok=True)
    failed: dict[str, list[str]] = {}  # cause -> the parts it stops
    for part, (module, args, dims) in parts.items():
        try:
            report[part] = _write_part(part, module, args, dims, out_dir, aoti)
        except BundleError as e:
            failed.setdefault(str(e), []).append(part)
    if failed:
        why = "; ".join(f"{' and '.join(p)}: {e}" for e, p in failed.items())
        raise BundleError(f"model {name} does not export: {why}; export without --compile")
    meta = {"files": {p: f"{p}.pt2" for p in parts},
            "aoti": {p: f"{p}.aoti.pt2" for p in parts if (out_dir / f"{p}.aoti.pt2").exists()},
            "widths": [MIN_WIDTH, widest]}
    (out_dir / "programs.json").write_text(json.dumps(meta, indent=1))
    _validate(model, encoder, out_dir, report, name)
    return report


def _state_dims(model: CTRModel, encoder: FeatureEncoder, state: tuple[Tensor, ...], hist_dim):
    """Per state tensor, its dimensions that follow the history width, found by encoding a shorter history: one
    equal to the width is the history dimension; any other that moves is left to export to relate (Dim.AUTO)."""
    if hist_dim is None or not state:
        return tuple(None for _ in state)
    short = _context_tensors(encoder.encode(example_request(encoder, 13, 3, seed=2)).context, pad=True)
    with torch.no_grad():
        other = StateLayout.of(model.encode_user(_context(*short)))[1]
    width = short[2].shape[1]
    return tuple({i: hist_dim if b == width else Dim.AUTO for i, (a, b) in enumerate(zip(s.shape, o.shape))
                  if a != b} or None for s, o in zip(state, other))


def has_compiler() -> bool:
    from torch._inductor.cpp_builder import get_cpp_compiler
    try:
        return shutil.which(get_cpp_compiler()) is not None
    except Exception:  # noqa: BLE001 - it raises when it finds none
        return False


# ----------------------------------------------------------------------------------------------------------------
# validation


def _validate(model: CTRModel, encoder: FeatureEncoder, out_dir: Path, report: dict, name: str) -> None:
    """Hold the written programs, as load_programs serves them, equal to eager on requests of other sizes than the
    traced one; AOTI packages that differ are dropped for their exported programs, which must match."""
    sizes = [(2, 1), (29, 5), (min(encoder.max_len, 200), 130)]
    checks = [encoder.encode(encoder.describe()["example_request"])]
    checks += [encoder.encode(example_request(encoder, n, c, seed=3 + i)) for i, (n, c) in enumerate(sizes)]
    while True:
        compiled = load_programs(out_dir, model)
        worst = max(_max_diff(model, compiled, enc) for enc in checks)
        if worst <= ATOL:
            return
        meta = json.loads((out_dir / "programs.json").read_text())
        if not meta["aoti"]:
            raise BundleError(f"model {name}: the exported programs differ from eager by {worst:.1e} in "
                              f"probability (> {ATOL}); export without --compile")
        for part, file in meta["aoti"].items():
            (out_dir / file).unlink()
            report[part] += f"; aoti dropped (differs from eager by {worst:.1e})"
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


class CompiledModel:
    """The programs in place of the eager model inside Scorer (R = 1): its inputs padded onto their grid."""

    def __init__(self, compiled_dir: Path, model: CTRModel):
        meta = json.loads((compiled_dir / "programs.json").read_text())
        self.programs, self.kind = {}, {}
        for part, file in meta["files"].items():
            self.programs[part] = _load_aoti(compiled_dir, meta["aoti"].get(part))
            self.kind[part] = "exported" if self.programs[part] is None else "aoti"
            if self.programs[part] is None:
                self.programs[part] = torch.export.load(compiled_dir / file).module()
        self.needs, self.reuses_user_state = model.needs, model.reuses_user_state

    def encode_user(self, context: Batch) -> UserState:
        encoder = self.programs.get("user_encoder")
        return UserState(context, [] if encoder is None else list(encoder(*_context_tensors(context, pad=True))))

    def score_candidates(self, state: UserState, cand_sparse: Tensor, cand_dense: Tensor,
                         cand_hist: Tensor | None = None, cand_hist_time: Tensor | None = None) -> Tensor:
        cands = tuple(t for t in (cand_sparse, cand_dense, cand_hist, cand_hist_time) if t is not None)
        one = cand_sparse.shape[1] == 1
        if one:  # the programs take two or more
            cands = tuple(torch.cat([t, t], 1) for t in cands)
        logits = self.programs["candidate_scorer"](tuple(state.caches), _context_tensors(state.context, pad=True),
                                                   cands)
        return logits[:, :1] if one else logits

    def extend_user(self, state: UserState, context: Batch, new: int) -> None:
        return None  # the programs encode whole histories only


def _load_aoti(compiled_dir: Path, file: str | None):
    """The AOTI package, None where there is none or it does not load here (built for another platform)."""
    try:
        return None if file is None else torch._inductor.aoti_load_package(str(compiled_dir / file))
    except Exception:  # noqa: BLE001 - the portable exported program serves instead
        return None


def load_programs(compiled_dir: Path, model: CTRModel) -> CompiledModel:
    """The compiled programs of a bundle (Bundle.compiled_dir) for its eager `model` (needs, reuse flag)."""
    return CompiledModel(Path(compiled_dir), model)
