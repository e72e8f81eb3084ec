"""Raw request values -> the tensors a model reads, exactly as preparation and the loader make them offline.

A request (shared/spec/serving.md) is one user at one moment, their history (oldest first) and N candidates, all
as raw values before vocabularies. The encoder validates it (every error a `RequestError` naming the JSON path),
maps values through the bundle's vocabularies (unknown values -> OOV, counted per field), standardises numerics
with the train statistics, keeps the history's most recent max_len behaviors right-aligned (padded as the loader
pads a batch: to a multiple of 8, at least 8), and runs the GSU over the whole history for models that read
candidate-specific behaviors.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..batch import Batch, DataSpec
from ..data.gsu import Searcher
from ..data.store import OOV, TIME_MAX, TIME_MIN
from ..errors import CtrscaleError


class RequestError(CtrscaleError):
    """A request the service refuses: `status` is its HTTP status (413 over a limit, 422 anything malformed)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    max_candidates: int = 10_000
    max_history: int = 10_000
    max_body_bytes: int = 16 << 20


def value_key(v) -> str:
    """The canonical text of a raw categorical value: what vocabularies and requests are compared by, so that a
    client's "1193", 1193 and 1193.0 all meet the vocabulary's 1193."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


@dataclass
class EncodedRequest:
    """One request as model inputs (R = 1) and what the response reports about it."""
    context: Batch                      # the request row: user and context fields, history, time
    cand_sparse: torch.Tensor           # (1, N, F_sparse)
    cand_dense: torch.Tensor            # (1, N, F_dense)
    cand_hist: torch.Tensor | None      # (1, N, K, F_hist) the GSU's pick, when the model reads it
    cand_hist_time: torch.Tensor | None
    user_key: str | None                # the schema's user key value, when the request gives it
    profile_fingerprint: str            # sha256 of the user fields' encoded values
    history_ids: np.ndarray             # (n, F_hist) the behaviors kept (the cut to max_len), oldest first
    history_time: np.ndarray            # (n,)
    unknown: dict[str, int] = field(default_factory=dict)

    @property
    def num_candidates(self) -> int:
        return self.cand_sparse.shape[1]

    @property
    def history_fingerprint(self) -> str:
        return hashlib.sha256(self.history_ids.tobytes() + b"|" + self.history_time.tobytes()).hexdigest()


def _is_value(v) -> bool:
    return isinstance(v, (str, int, float)) and not isinstance(v, bool) and not (isinstance(v, float)
                                                                                 and not math.isfinite(v))


class FeatureEncoder:
    """Built once per bundle from its spec, vocabularies, numeric statistics and GSU setting."""

    def __init__(self, spec: DataSpec, schema: dict, vocabs: dict[str, list], numerics: dict[str, list[float]],
                 max_len: int, searcher: Searcher | None = None, limits: Limits = Limits()):
        self.spec, self.schema, self.max_len, self.searcher, self.limits = spec, schema, max_len, searcher, limits
        self.lookup = {name: {value_key(v): i + 2 for i, v in enumerate(values)} for name, values in vocabs.items()}
        self.examples = {name: values[:3] for name, values in vocabs.items()}
        self.numerics = numerics
        roles = spec.roles
        self.user_fields = [f for f in (*spec.sparse, *spec.dense) if roles[f] == "user"]
        self.context_fields = [f for f in (*spec.sparse, *spec.dense) if roles[f] == "context"]
        self.item_fields = [f for f in (*spec.sparse, *spec.dense) if roles[f] == "item"]
        if not self.item_fields:
            raise CtrscaleError(f"{spec.name}: the schema has no item-role field, so a request has no candidates "
                                f"to score; give the item fields role: item")
        self.user_key = schema.get("user_key")
        self.hist_fields = list(spec.hist)
        # Fields of the prepared schema this run did not train on (data.fields / drop_fields): a request built for
        # the full schema may still send them, in their own section; they are accepted and not read.
        section = {"user": "user", "context": "context", "item": "candidates"}
        self.ignored: dict[str, set[str]] = {"user": set(), "context": set(), "candidates": set(), "history": set()}
        for f in schema.get("fields", []):
            if f["name"] not in spec.roles and f.get("role") in section:
                self.ignored[section[f["role"]]].add(f["name"])
        for seq in schema.get("sequences", []):
            self.ignored["history"] |= {f["name"] for f in seq.get("fields", [])} - set(spec.hist)
        self.user_sparse_cols = spec.sparse_of_role("user")

    # ------------------------------------------------------------------------------------------------------------
    def describe(self) -> dict:
        """Every field with its role and the example request `GET /v1/model` shows."""
        fields = [{"name": f, "role": self.spec.roles[f], "kind": "categorical" if f in self.spec.sparse
                   else "numeric"} for f in (*self.spec.sparse, *self.spec.dense)]
        fields += [{"name": f"history.{f}", "role": "behavior", "kind": "categorical"} for f in self.hist_fields]
        if self.hist_fields:
            fields.append({"name": "history.time", "role": "behavior", "kind": "unix seconds"})
        ex = lambda f, i=0: self._example(f, i)  # noqa: E731
        example = {"request_id": "example-1", "user": {f: ex(f) for f in self.user_fields},
                   "context": {f: ex(f) for f in self.context_fields}, "time": 978300760,
                   "history": ({**{f: [ex(f"hist.{f}", i) for i in range(2)] for f in self.hist_fields},
                                "time": [978300019, 978300055]} if self.hist_fields else {}),
                   "candidates": {f: [ex(f, i) for i in range(2)] for f in self.item_fields}}
        return {"fields": fields, "max_len": self.max_len, "user_key": self.user_key,
                "gsu": None if self.searcher is None else vars(self.searcher.cfg), "example_request": example}

    def _example(self, name: str, i: int):
        if name in self.numerics:
            return round(self.numerics[name][0], 3)
        vocab = self.spec.field_vocab.get(name, name)
        values = self.examples.get(vocab) or ["x"]
        return values[i % len(values)]

    # ------------------------------------------------------------------------------------------------------------
    def encode(self, req) -> EncodedRequest:
        if not isinstance(req, dict):
            raise RequestError(f"body: expected a JSON object, got {type(req).__name__}")
        known = {"request_id", "user", "context", "time", "history", "candidates"}
        for k in req:
            if k not in known:
                raise RequestError(f"{k}: unknown field; a request has {sorted(known)}")
        unknown: dict[str, int] = {}
        user = self._section(req, "user", self.user_fields, optional={self.user_key} - set(self.user_fields))
        context = self._section(req, "context", self.context_fields)
        t = req.get("time")
        if t is None:
            raise RequestError("time: missing (unix seconds of the request)")
        if not isinstance(t, int) or isinstance(t, bool):
            raise RequestError(f"time: expected an integer (unix seconds), got {type(t).__name__}")
        if not TIME_MIN <= t < TIME_MAX:
            raise RequestError(f"time: {t} is not unix seconds within 1980..2100; check the unit")
        cands = self._columns(req, "candidates", self.item_fields, self.limits.max_candidates, min_rows=1)
        n = len(next(iter(cands.values())))
        hist_ids, hist_time = self._history(req, t, unknown)

        row = {**user, **context}
        one = {f: self._encode_values(f, [row[f]], unknown, f"{self._where(f)}.{f}")[0] for f in row
               if f in self.spec.sparse or f in self.spec.dense}
        per_cand = {f: self._encode_values(f, cands[f], unknown, f"candidates.{f}") for f in cands}
        sparse = np.empty((n, len(self.spec.sparse)), np.int64)
        dense = np.empty((n, len(self.spec.dense)), np.float32)
        for j, f in enumerate(self.spec.sparse):
            sparse[:, j] = per_cand[f] if f in per_cand else one[f]
        for j, f in enumerate(self.spec.dense):
            dense[:, j] = per_cand[f] if f in per_cand else one[f]

        kept = hist_ids[-self.max_len:] if self.max_len else hist_ids[:0]
        kept_time = hist_time[-self.max_len:] if self.max_len else hist_time[:0]
        width = min(self.max_len, max(8, -(-len(kept) // 8) * 8)) if self.max_len else 0
        hist = np.zeros((1, width, len(self.hist_fields)), np.int64)
        times = np.zeros((1, width), np.int64)
        if len(kept):
            hist[0, width - len(kept):] = kept
            times[0, width - len(kept):] = kept_time
        sp, de = torch.from_numpy(sparse), torch.from_numpy(dense)
        key_raw = user.get(self.user_key) if self.user_key else None
        ctx = Batch(sparse=sp[:1].clone(), dense=de[:1].clone(), hist=torch.from_numpy(hist),
                    hist_time=torch.from_numpy(times), time=torch.tensor([t]), label=torch.zeros(1),
                    user=torch.tensor([_user_number(key_raw)]), request=torch.zeros(1, dtype=torch.long))
        cand_hist = cand_hist_time = None
        if self.searcher is not None:
            picked = self.searcher.on_log(hist_ids, hist_time)(
                sparse, np.zeros(n, np.int64), np.full(n, len(hist_ids), np.int64))
            cand_hist = torch.from_numpy(picked["cand_hist"].astype(np.int64)).unsqueeze(0)
            cand_hist_time = torch.from_numpy(picked["cand_hist_time"]).unsqueeze(0)
        user_dense = [self.spec.dense.index(f) for f in self.user_fields if f in self.spec.dense]
        profile = hashlib.sha256(sparse[0, self.user_sparse_cols].tobytes() + b"|" + dense[0, user_dense].tobytes())
        return EncodedRequest(ctx, sp.unsqueeze(0), de.unsqueeze(0), cand_hist, cand_hist_time,
                              None if key_raw is None else value_key(key_raw), profile.hexdigest(),
                              np.ascontiguousarray(kept), np.ascontiguousarray(kept_time), unknown)

    # ------------------------------------------------------------------------------------------------------------
    def _where(self, f: str) -> str:
        return "user" if self.spec.roles.get(f) == "user" else "context"

    def _section(self, req: dict, name: str, wanted: list[str], optional: set = frozenset()) -> dict:
        sec = req.get(name, {} if not wanted else None)
        if sec is None:
            raise RequestError(f"{name}: missing (an object with {wanted})")
        if not isinstance(sec, dict):
            raise RequestError(f"{name}: expected an object, got {type(sec).__name__}")
        sec = {k: v for k, v in sec.items() if k not in self.ignored[name]}
        for k, v in sec.items():
            if k not in wanted and k not in optional:
                raise RequestError(f"{name}.{k}: unknown field; {name} fields are {wanted}")
            if not _is_value(v):
                raise RequestError(f"{name}.{k}: expected a string or a number, got {_type(v)}")
        for k in wanted:
            if k not in sec:
                raise RequestError(f"{name}.{k}: missing")
        return sec

    def _columns(self, req: dict, name: str, wanted: list[str], limit: int, min_rows: int = 0,
                 ints: frozenset = frozenset()) -> dict[str, list]:
        """A columnar section ({field: [values]}, or a list of objects) as equal-length columns."""
        sec = req.get(name)
        if sec is None:
            if min_rows == 0:
                return {k: [] for k in wanted}
            raise RequestError(f"{name}: missing (columns {wanted})")
        if isinstance(sec, list):  # a list of objects: turn it into columns
            if len(sec) > limit:
                raise RequestError(f"{name}: {len(sec)} rows exceed the limit of {limit}", status=413)
            cols: dict[str, list] = {k: [] for k in wanted}
            for i, obj in enumerate(sec):
                if not isinstance(obj, dict):
                    raise RequestError(f"{name}[{i}]: expected an object, got {_type(obj)}")
                for k in obj:
                    if k not in cols and k not in self.ignored[name]:
                        raise RequestError(f"{name}[{i}].{k}: unknown field; {name} fields are {wanted}")
                for k in wanted:
                    if k not in obj:
                        raise RequestError(f"{name}[{i}].{k}: missing")
                    cols[k].append(obj[k])
            sec = cols
        if not isinstance(sec, dict):
            raise RequestError(f"{name}: expected an object of columns or a list of objects, got {_type(sec)}")
        for k in sec:
            if k not in wanted and k not in self.ignored[name]:
                raise RequestError(f"{name}.{k}: unknown field; {name} fields are {wanted}")
        first = None
        for k in wanted:
            col = sec.get(k)
            if col is None:
                raise RequestError(f"{name}.{k}: missing")
            if not isinstance(col, list):
                raise RequestError(f"{name}.{k}: expected a list, got {_type(col)}")
            if len(col) > limit:
                raise RequestError(f"{name}.{k}: {len(col)} values exceed the limit of {limit}", status=413)
            if first is None:
                first = k
            elif len(col) != len(sec[first]):
                raise RequestError(f"{name}.{k}: {len(col)} values, {first} has {len(sec[first])}")
            check = _is_int if k in ints else _is_value
            bad = next((i for i, v in enumerate(col) if not check(v)), None)
            if bad is not None:
                kind = "an integer" if k in ints else "a string or a number"
                raise RequestError(f"{name}.{k}[{bad}]: expected {kind}, got {_type(col[bad])}")
        if first is not None and len(sec[first]) < min_rows:
            raise RequestError(f"{name}: at least {min_rows} needed, got 0")
        return {k: sec[k] for k in wanted}

    def _history(self, req: dict, t: int, unknown: dict) -> tuple[np.ndarray, np.ndarray]:
        if not self.hist_fields:
            if req.get("history"):
                raise RequestError("history: this model's schema has no behavior sequence; leave it out")
            return np.zeros((0, 0), np.int64), np.zeros(0, np.int64)
        cols = self._columns(req, "history", [*self.hist_fields, "time"], self.limits.max_history,
                             ints=frozenset({"time"}))
        try:
            times = np.asarray(cols["time"], np.int64)
        except OverflowError:
            bad = next(i for i, v in enumerate(cols["time"]) if not TIME_MIN <= v < TIME_MAX)
            raise RequestError(f"history.time[{bad}]: {cols['time'][bad]} is not unix seconds within 1980..2100") \
                from None
        if len(times):
            bad = np.flatnonzero((times < TIME_MIN) | (times >= TIME_MAX))
            if len(bad):
                raise RequestError(f"history.time[{bad[0]}]: {times[bad[0]]} is not unix seconds within 1980..2100")
            late = np.flatnonzero(times >= t)
            if len(late):
                raise RequestError(f"history.time[{late[0]}]: {times[late[0]]} is not before the request time {t}; "
                                   f"a history holds only earlier behaviors")
            back = np.flatnonzero(np.diff(times) < 0)
            if len(back):
                raise RequestError(f"history.time[{back[0] + 1}]: earlier than the behavior before it; send the "
                                   f"history oldest first")
        ids = np.stack([self._encode_values(f"hist.{f}", cols[f], unknown, f"history.{f}", count_as=f)
                        for f in self.hist_fields], 1) if len(times) else \
            np.zeros((0, len(self.hist_fields)), np.int64)
        return ids.astype(np.int64), times

    def _encode_values(self, f: str, values: list, unknown: dict, where: str, count_as: str | None = None):
        if f in self.numerics:
            mean, std = self.numerics[f]
            try:
                x = np.asarray([float(v) for v in values], np.float64)
            except ValueError:
                bad = next(i for i, v in enumerate(values) if not _floatable(v))
                raise RequestError(f"{where}[{bad}]: {values[bad]!r} is not a number") from None
            if not np.isfinite(x).all():
                raise RequestError(f"{where}: values must be finite numbers")
            return ((x - mean) / std).astype(np.float32)
        table = self.lookup[self.spec.field_vocab[f]]
        ids = np.fromiter((table.get(value_key(v), OOV) for v in values), np.int64, len(values))
        misses = int((ids == OOV).sum())
        if misses:
            name = count_as or f
            unknown[name] = unknown.get(name, 0) + misses
        return ids


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _floatable(v) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _type(v) -> str:
    return {dict: "an object", list: "a list", type(None): "null", bool: "a boolean"}.get(type(v), type(v).__name__)


def _user_number(raw) -> int:
    """Batch.user is an int64 key (offline: the raw user key); a non-integer key is hashed into one."""
    if raw is None:
        return 0
    try:
        return int(raw)
    except (TypeError, ValueError):
        return int.from_bytes(hashlib.sha256(str(raw).encode()).digest()[:7], "little")
