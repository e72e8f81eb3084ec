"""Model name -> (config dataclass, class). `ctrscale ls` prints it; the contract tests run over all of it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from ..batch import DataSpec
from ..typed import ConfigError, from_dict

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
        raise ConfigError(f"model.name: unknown model {name!r}; registered: {sorted(all_)} (see `ctrscale ls`)")
    return all_[name]


def build_model(spec: DataSpec, model: dict, content: np.ndarray | None = None):
    """Build from {'name': ..., **config}; a misspelled config key is an error naming the model.
    content: the dataset's frozen item content table (rows = item ids), for the models that read it
    (`needs.content`); it becomes a buffer of the model, so a checkpoint serves without the dataset."""
    model = dict(model)
    name = model.pop("name", None)
    if name is None:
        raise ConfigError("model config needs a 'name'")
    entry = get(name)
    cfg = from_dict(entry.config, model, f"model {name}")
    try:
        built = entry.model(spec, cfg)
    except ValueError as e:  # a setting that does not fit this dataset (heads not dividing its token width, ...)
        raise ConfigError(f"model {name} on dataset {spec.name!r}: {e}") from e
    if built.needs.content:
        if content is None:
            raise ConfigError(f"model {name} reads item content vectors: the dataset {spec.name!r} has no content "
                             f"table (declare `content:` in its schema)")
        built.set_content(torch.as_tensor(np.asarray(content), dtype=torch.float32))
    return built


def default_config(name: str) -> dict:
    return {"name": name, **dataclasses.asdict(get(name).config())}
