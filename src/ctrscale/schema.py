"""Feature schema: which columns a dataset has and what each one is.

A schema is a YAML file validated on load. Every later stage (preparation, the loader, the models' embedding
tables) reads the same object, so a typo is caught once, here, with the file and the key named.

    name: my-ctr-data
    label: clicked                # 0/1 column
    user_key: user_id             # groups for GAUC
    request_key: request_id       # optional: impressions of one request share it
    time: ts                      # unix seconds of the impression
    fields:                       # non-behavioral fields
      - {name: user_id, kind: categorical, role: user}
      - {name: price, kind: numeric, role: item}
      - {name: item_id, kind: categorical, role: item}
    sequences:
      - name: hist
        max_len: 50
        time: hist_ts             # column of '|'-separated unix seconds
        sep: "|"
        fields:
          - {name: item_id, vocab: item_id}   # shares the vocabulary (and embedding table) of field item_id
          - {name: rating}                    # a vocabulary of its own
    content: {path: item_content.npy, dim: 384, key: item_id}

The label column may not also be an input: a field, a behavior field, the behavior times, the impression time, the
user or request key reading the label's column is a target leak and is refused on load.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, DataError
from .typed import from_dict

KINDS = ("categorical", "numeric")
ROLES = ("user", "item", "context")


class SchemaError(DataError):
    """A schema file that does not describe a usable dataset."""


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: str = "categorical"
    role: str = "context"
    column: str | None = None  # raw column; defaults to name
    min_freq: int = 1  # values seen fewer times in train become OOV

    @property
    def source(self) -> str:
        return self.column or self.name


@dataclass(frozen=True)
class SeqFieldSpec:
    name: str
    vocab: str | None = None  # name of a non-behavioral field whose vocabulary this field shares
    column: str | None = None

    @property
    def source(self) -> str:
        return self.column or self.name


@dataclass(frozen=True)
class SequenceSpec:
    name: str
    fields: tuple[SeqFieldSpec, ...]
    time: str  # column of behavior timestamps
    max_len: int = 50
    sep: str = "|"


@dataclass(frozen=True)
class ContentSpec:
    path: str
    dim: int
    key: str = "item_id"  # the field whose raw values index the content table's rows


@dataclass(frozen=True)
class Schema:
    name: str
    label: str
    user_key: str  # raw column grouping impressions by user (GAUC); kept apart from the vocabularies
    time: str
    fields: tuple[FieldSpec, ...]
    sequences: tuple[SequenceSpec, ...] = ()
    request_key: str | None = None
    content: ContentSpec | None = None

    @property
    def categorical(self) -> tuple[FieldSpec, ...]:
        return tuple(f for f in self.fields if f.kind == "categorical")

    @property
    def numeric(self) -> tuple[FieldSpec, ...]:
        return tuple(f for f in self.fields if f.kind == "numeric")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def dump(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(_strip_none(self.to_dict()), sort_keys=False))


def _strip_none(x):
    if isinstance(x, dict):
        return {k: _strip_none(v) for k, v in x.items() if v is not None}
    if isinstance(x, (list, tuple)):
        return [_strip_none(v) for v in x]
    return x


def _build(cls, raw: Any, where: str):
    try:
        return from_dict(cls, raw, where)
    except ConfigError as e:
        raise SchemaError(str(e)) from None


def schema_from_dict(raw: dict, where: str = "schema") -> Schema:
    if not isinstance(raw, dict):
        raise SchemaError(f"{where}: expected a mapping at the top level")
    raw = dict(raw)
    fields = tuple(_build(FieldSpec, f, f"{where}: fields[{i}]") for i, f in enumerate(raw.pop("fields", []) or []))
    seqs = []
    for i, s in enumerate(raw.pop("sequences", []) or []):
        s = dict(s) if isinstance(s, dict) else s
        if isinstance(s, dict):
            s["fields"] = tuple(_build(SeqFieldSpec, f, f"{where}: sequences[{i}].fields[{j}]")
                                for j, f in enumerate(s.get("fields", []) or []))
        seqs.append(_build(SequenceSpec, s, f"{where}: sequences[{i}]"))
    content = raw.pop("content", None)
    content = _build(ContentSpec, content, f"{where}: content") if content is not None else None
    schema = _build(Schema, {**raw, "fields": fields, "sequences": tuple(seqs), "content": content}, where)
    validate(schema, where)
    return schema


def load_schema(path: str | Path) -> Schema:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SchemaError(f"{path}: not valid YAML: {e}") from e
    return schema_from_dict(raw, str(path))


def validate(s: Schema, where: str = "schema") -> None:
    if not s.fields:
        raise SchemaError(f"{where}: no fields declared")
    names = [f.name for f in s.fields]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise SchemaError(f"{where}: duplicate field name(s) {sorted(dup)}")
    for f in s.fields:
        if f.kind not in KINDS:
            raise SchemaError(f"{where}: field {f.name!r}: kind must be one of {KINDS}, got {f.kind!r}")
        if f.role not in ROLES:
            raise SchemaError(f"{where}: field {f.name!r}: role must be one of {ROLES}, got {f.role!r}")
        if f.min_freq < 1:
            raise SchemaError(f"{where}: field {f.name!r}: min_freq must be >= 1")
    cat = {f.name for f in s.categorical}
    if len(s.sequences) > 1:
        raise SchemaError(f"{where}: one behavior sequence is supported per dataset, got {len(s.sequences)}")
    for seq in s.sequences:
        if seq.max_len < 1:
            raise SchemaError(f"{where}: sequence {seq.name!r}: max_len must be >= 1")
        if not seq.fields:
            raise SchemaError(f"{where}: sequence {seq.name!r}: no fields")
        for sf in seq.fields:
            if sf.vocab is not None and sf.vocab not in cat:
                raise SchemaError(f"{where}: sequence {seq.name!r} field {sf.name!r}: vocab {sf.vocab!r} "
                                  f"is not a categorical field (have {sorted(cat)})")
    _check_leaks(s, where)
    if s.content is not None:
        if s.content.key not in cat:
            raise SchemaError(f"{where}: content.key {s.content.key!r} is not a categorical field")
        if s.content.dim < 1:
            raise SchemaError(f"{where}: content.dim must be >= 1")


def _check_leaks(s: Schema, where: str) -> None:
    """The label's column read as an input would hand the model the answer."""
    uses = [(f"field {f.name!r}", f.source) for f in s.fields]
    for seq in s.sequences:
        uses += [(f"sequence {seq.name!r} field {f.name!r}", f.source) for f in seq.fields]
        uses.append((f"sequence {seq.name!r} time", seq.time))
    uses += [("time", s.time), ("user_key", s.user_key)] + ([("request_key", s.request_key)] if s.request_key else [])
    for what, column in uses:
        if column == s.label:
            raise SchemaError(f"{where}: {what} reads column {column!r}, which is the label: a target leak (the "
                              f"model would see the answer); remove it or point it at another column")
