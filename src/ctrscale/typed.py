"""Typed configs from plain dicts: unknown keys are errors, nested dataclasses are built recursively, every value is
coerced to its annotated type and checked against its field's range (`checked`), with the dotted key named.

    @dataclass
    class Section:
        batch_size: int = checked(1024, ge=1)
        lr: float = checked(1e-3, ge=0)
        schedule: str = checked("constant", choices=("constant", "cosine"))

    from_dict(Section, {"batch_size": "-4"}, "data")  # ConfigError: data.batch_size: must be >= 1, got -4
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import re
import types
import typing
from typing import Any

import yaml

from .errors import ConfigError  # noqa: F401 - re-exported: `from ctrscale.typed import ConfigError`


# --- YAML ----------------------------------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader (YAML 1.1), except that 1e-3, 1E5 and 2.5e3 are floats, as in YAML 1.2 and JSON
    (YAML 1.1 wants a dot and a signed exponent, so PyYAML reads `lr: 1e-3` as the string '1e-3')."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(text: str, where: str | None = None) -> Any:
    """YAML text -> Python values, 1e-3 being a float. where: names the source in a ConfigError when the text is not
    valid YAML (without it the yaml.YAMLError propagates)."""
    if where is None:
        return yaml.load(text, Loader=_Loader)
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {' '.join(str(e).split())}") from None


# --- declared ranges -----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Check:
    """What a field's value must satisfy, beyond its type. Bounds apply to a number, or to each element of a tuple
    or list; None values are not checked (`int | None` keeps None for "default")."""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | None = None

    def __call__(self, value: Any, key: str) -> None:
        if isinstance(value, (tuple, list)):
            for i, v in enumerate(value):
                self(v, f"{key}[{i}]")
            return
        if value is None:
            return
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join("''" if c == "" else str(c) for c in self.choices)
            raise ConfigError(f"{key}: must be one of {allowed}; got {_show(value)}")
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and self.bounds():
            ok = (math.isfinite(value)
                  and (self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                  and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))
            if not ok:
                raise ConfigError(f"{key}: must be {self.bounds()}, got {_show(value)}")

    def bounds(self) -> str:
        """"in [0, 1)", ">= 1", "> 0", or "" when unbounded."""
        lo = (self.ge, ">=", "[") if self.ge is not None else (self.gt, ">", "(") if self.gt is not None else None
        hi = (self.le, "<=", "]") if self.le is not None else (self.lt, "<", ")") if self.lt is not None else None
        if lo and hi:
            return f"in {lo[2]}{lo[0]:g}, {hi[0]:g}{hi[2]}"
        if lo or hi:
            value, op, _ = lo or hi
            return f"{op} {value:g}"
        return ""


def checked(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, ge=None, gt=None,
            le=None, lt=None, choices=None) -> Any:
    """A dataclass field whose value `from_dict` checks: ge/gt/le/lt bounds (a finite number within them; for a
    tuple or list, each element) and/or choices (the allowed values)."""
    check = Check(ge, gt, le, lt, tuple(choices) if choices is not None else None)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"check": check})


def check(value: Any, key: str, *, ge=None, gt=None, le=None, lt=None, choices=None) -> None:
    """The checks of `checked` for a value outside a field (a __post_init__ check): ConfigError naming key."""
    Check(ge, gt, le, lt, tuple(choices) if choices is not None else None)(value, key)


def check_heads(dim: int, heads: int) -> None:
    """Attention heads must split the width evenly."""
    if heads >= 1 and dim % heads:
        raise ConfigError(f"heads: must divide dim ({dim}), got {heads}")


def check_fields(obj: Any, where: str = "") -> None:
    """Run the declared checks of every field of dataclass instance obj (and of the dataclasses it holds): for a
    config built in code rather than by `from_dict`, which checks each key as it reads it."""
    for f in dataclasses.fields(obj):
        key = f"{where}.{f.name}" if where else f.name
        value = getattr(obj, f.name)
        if "check" in f.metadata:
            f.metadata["check"](value, key)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_fields(value, key)


# --- from_dict -----------------------------------------------------------------------------------------------------

def from_dict(cls, raw: Any, where: str):
    """An instance of dataclass `cls` from a mapping. where: the dotted prefix of its keys in messages ("data",
    "model din"); "" for the top level (keys read "data.batch_size")."""
    if isinstance(raw, cls):
        return raw
    label = where or "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{label}: expected a mapping, got {_show(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = set(raw) - set(fields)
    if unknown:
        raise ConfigError(f"{label}: unknown key(s) {sorted(map(str, unknown))}; allowed: {sorted(fields)}")
    required = {n for n, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = required - set(raw)
    if missing:
        raise ConfigError(f"{label}: missing key(s) {sorted(missing)}")
    hints = typing.get_type_hints(cls)
    out = {}
    for k, v in raw.items():
        key = f"{where}.{k}" if where else k
        v = coerce(hints.get(k, Any), v, key)
        check = fields[k].metadata.get("check")
        if check is not None:
            check(v, key)
        out[k] = v
    try:
        return cls(**out)
    except ConfigError as e:  # a check across keys in __post_init__: say whose config ("heads: ..." -> "x.heads: ...")
        if not where:
            raise
        msg = str(e)
        named = msg.split(":", 1)[0].split("[", 1)[0] in fields
        raise ConfigError(f"{where}.{msg}" if named else f"{where}: {msg}") from None


def coerce(t: Any, v: Any, key: str) -> Any:
    """v as a value of type t (int, float, bool, str, X | None, tuple[...], list[...], dict[...], a dataclass), or a
    ConfigError naming the key, the type and the value. Lossless only: 3.0 and "3" are the int 3, 3.5 is not."""
    if t is Any or t is object:
        return v
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1 and options[0] not in _SCALARS:
            return coerce(options[0], v, key)  # a section or a list: its own error names the inner key
        for a in sorted(options, key=lambda a: not (dataclasses.is_dataclass(a) and isinstance(v, dict))):
            try:
                return coerce(a, v, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(t)}, got {_show(v)}")
    if isinstance(t, type) and hasattr(t, "from_raw"):  # a section typed through its own resolver (the model's)
        return t.from_raw(v, key)
    if dataclasses.is_dataclass(t):
        return from_dict(t, v, key)
    if origin in (tuple, list) or t in (tuple, list):
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{key}: expected {_type_name(t)}, got {_show(v)}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(v) != len(args):
                raise ConfigError(f"{key}: expected {_type_name(t)}, got {_show(v)}")
            items = [coerce(a, x, f"{key}[{i}]") for i, (a, x) in enumerate(zip(args, v))]
        else:
            elem = args[0] if args else Any
            items = [coerce(elem, x, f"{key}[{i}]") for i, x in enumerate(v)]
        return tuple(items) if (origin or t) is tuple else items
    if origin is dict or t is dict:
        if not isinstance(v, dict):
            raise ConfigError(f"{key}: expected {_type_name(t)}, got {_show(v)}")
        if len(args) == 2:
            return {coerce(args[0], k, f"{key} key {k!r}"): coerce(args[1], x, f"{key}.{k}") for k, x in v.items()}
        return v
    if t in _SCALARS:
        out = _SCALARS[t](v)
        if out is _BAD:
            raise ConfigError(f"{key}: expected {_type_name(t)}, got {_show(v)}")
        return out
    return v  # any other annotation: taken as given


_BAD = object()
_TRUE = {"true", "yes", "on"}     # YAML 1.1's boolean words (any case), for values that arrive as strings
_FALSE = {"false", "no", "off"}


def _to_int(v):
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return int(v)
    if isinstance(v, str):
        try:
            return int(v.strip().replace("_", ""))
        except ValueError:
            pass
    f = _to_float(v)  # 3.0, "1e3": whole numbers written as floats
    return int(f) if f is not _BAD and math.isfinite(f) and f.is_integer() else _BAD


def _to_float(v):
    if isinstance(v, bool):
        return _BAD
    if isinstance(v, numbers.Real):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip().replace("_", ""))
        except ValueError:
            return _BAD
    return _BAD


def _to_bool(v):
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    return _BAD


def _to_str(v):
    if isinstance(v, str):
        return v
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return str(v)  # `name=2024`; a float or a bool is refused (quote it: name="1.10")
    return _BAD


_SCALARS = {int: _to_int, float: _to_float, bool: _to_bool, str: _to_str}


def _type_name(t: Any) -> str:
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names + (["null"] if type(None) in args else []))
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(set(args)) == 1:
            return f"a list of {len(args)} {_plural(args[0])}"
        return f"a list ({', '.join(_type_name(a) for a in args)})"
    if origin in (tuple, list) or t in (tuple, list):
        return f"a list of {_plural(args[0])}" if args and args[0] is not Any else "a list"
    if origin is dict or t is dict or dataclasses.is_dataclass(t):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(t, str(t))


def _plural(t: Any) -> str:
    return {int: "integers", float: "numbers", bool: "booleans", str: "strings"}.get(t, _type_name(t))


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


# --- overrides and back to dicts -----------------------------------------------------------------------------------

def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides (value parsed as YAML: 3, 1e-3, true, [64, 32], din) to a nested dict."""
    raw = dict(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        node, parts = raw, key.split(".")
        for p in parts[:-1]:
            child = node.get(p)
            node[p] = dict(child) if isinstance(child, dict) else {}
            node = node[p]
        node[parts[-1]] = load_yaml(value, f"override {item!r}")
    return raw


def to_dict(obj) -> dict:
    """A dataclass as plain YAML-able data; a nested section with its own `to_dict` (a model choice) writes itself."""
    def conv(x, top=False):
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            if not top and hasattr(x, "to_dict"):
                return x.to_dict()
            return {f.name: conv(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, (tuple, list)):
            return [conv(v) for v in x]
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        return x
    return conv(obj, top=True)
