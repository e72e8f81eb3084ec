"""Model name -> (config dataclass, class). `ctrscale ls` prints it; the contract tests run over all of it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..batch import DataSpec
from ..typed import ConfigError
from .config import ModelChoice, resolve

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


def get(name: str, where: str = "model") -> Entry:
    all_ = entries()
    if name not in all_:
        raise ConfigError(f"{where}.name: unknown model {name!r}; registered: {sorted(all_)} (see `ctrscale ls`)")
    return all_[name]


def build_model(spec: DataSpec, model: dict | ModelChoice, content: np.ndarray | None = None):
    """Build from a resolved model section or {'name': ..., **config} (a misspelled key is an error naming it).
    content: the dataset's frozen item content table (rows = item ids), for the models that read it
    (`needs.content`); it becomes a buffer of the model, so a checkpoint serves without the dataset."""
    choice = resolve(model)
    name = choice.name
    if get(name).model.needs_for(choice.config).content and (content is None or not spec.content_dim):
        raise ConfigError(no_content_table(name, spec))
    try:
        built = get(name).model(spec, choice.config)
    except ValueError as e:  # a setting that does not fit this dataset (heads not dividing its token width, ...)
        raise ConfigError(f"model {name} on dataset {spec.name!r}: {e}") from e
    if built.needs.content:
        built.set_content(torch.as_tensor(np.asarray(content), dtype=torch.float32))
    return built


def no_content_table(name: str, spec: DataSpec) -> str:
    """Why `name` cannot run on `spec`'s dataset, how to give it a content table, and which models run without."""
    without = sorted(n for n, e in entries().items() if not e.model.needs_for(resolve({"name": n}).config).content)
    return (f"model {name} reads item content vectors: the dataset {spec.name!r} has no content table. Declare one "
            f"in its schema, `content: {{path: vectors.npy, dim: D, key: item_id}}`: a float .npy of shape (rows, D) "
            f"whose row r is the vector of the item whose raw key value is r; or pick a model that runs without "
            f"one: {', '.join(without)}")


def default_config(name: str) -> dict:
    """Every key of the model's config at its default, presets resolved (what a run's config.yaml saves)."""
    return resolve({"name": name}).to_dict()
