"""Typed configs from plain dicts: unknown keys are errors, nested dataclasses are built recursively."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config that names a key the dataclass does not have, or lacks a required one."""


def from_dict(cls, raw: Any, where: str):
    if dataclasses.is_dataclass(raw) and isinstance(raw, cls):
        return raw
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(fields)}")
    required = {n for n, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = required - set(raw)
    if missing:
        raise ConfigError(f"{where}: missing key(s) {sorted(missing)}")
    hints = typing.get_type_hints(cls)
    out = {}
    for k, v in raw.items():
        t = hints.get(k)
        options = [a for a in typing.get_args(t) if dataclasses.is_dataclass(a)]
        if options and isinstance(v, dict):  # an optional section, `X | None`
            t = options[0]
        if dataclasses.is_dataclass(t):
            v = from_dict(t, v, f"{where}.{k}")
        elif isinstance(v, list) and typing.get_origin(t) is tuple:
            v = tuple(v)
        out[k] = v
    return cls(**out)


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
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def to_dict(obj) -> dict:
    def conv(x):
        if isinstance(x, tuple):
            return [conv(v) for v in x]
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        return x
    return conv(dataclasses.asdict(obj))
