"""Model name -> (config dataclass, class). `ctrscale ls` prints it; the contract tests run over all of it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..data.dataset import DataSpec
from ..typed import from_dict

_REGISTRY: dict[str, "Entry"] = {}


@dataclass(frozen=True)
class Entry:
    name: str
    config: type
    model: type
    summary: str


def register(name: str, config: type, summary: str):
    def deco(cls):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = Entry(name, config, cls, summary)
        return cls
    return deco


def entries() -> dict[str, Entry]:
    from . import zoo  # noqa: F401  (importing the zoo registers every model)
    return dict(_REGISTRY)


def get(name: str) -> Entry:
    all_ = entries()
    if name not in all_:
        raise KeyError(f"unknown model {name!r}; registered: {sorted(all_)}")
    return all_[name]


def build_model(spec: DataSpec, model: dict):
    """Build from {'name': ..., **config}; a misspelled config key is an error naming the model."""
    model = dict(model)
    name = model.pop("name", None)
    if name is None:
        raise KeyError("model config needs a 'name'")
    entry = get(name)
    cfg = from_dict(entry.config, model, f"model {name}")
    return entry.model(spec, cfg)


def default_config(name: str) -> dict:
    return {"name": name, **dataclasses.asdict(get(name).config())}
