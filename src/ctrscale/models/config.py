"""A model section resolved once, completely: presets applied, inactive keys refused, every key written out.

Every model config dataclass derives from `ModelConfig`, which gives two declarations one meaning everywhere:
- `PRESETS`: a key whose value names a preset of other keys (SUAN's `size`, SparseCTR's `sparsity`). The one
  precedence rule: a key set explicitly wins over the preset, the preset wins over the key's default. The keys a
  preset sets default to None ("from the preset") and are filled in `__post_init__`, so a config built in code
  resolves the same way as one loaded from YAML.
- `checked(...)` fields: their ranges and choices are checked whenever a config is made (from YAML or in code);
  a check across keys goes in the config's `__post_init__` after `super().__post_init__()`.
- `inactive()`: the keys that have no effect under the config's modes (LightSUAN's dilation when local = 0). Such a
  key given in a config is refused unless it holds the value it would have anyway, so a setting never silently
  does nothing, and a saved config (which writes every key) loads back.

`resolve` turns a raw section {name: ..., **keys} into a `ModelChoice` (the registered name and its typed config);
`RunConfig.model` and `distill.teacher` hold one, and a run's config.yaml saves it with every key.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..typed import ConfigError, check_fields, from_dict, to_dict


@dataclass
class ModelConfig:
    # preset key -> preset value -> {key: value}; the value "" may hold the defaults used without a preset
    PRESETS: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {}

    def __post_init__(self):
        check_fields(self)  # each key's declared type range and choices, also for a config built in code
        for key, table in self.PRESETS.items():
            chosen = getattr(self, key)
            if chosen not in table and chosen != "":
                raise ConfigError(f"{key}: must be one of {', '.join(sorted(k for k in table if k))}, got {chosen!r}")
            for k, v in table.get(chosen, {}).items():
                if getattr(self, k) is None:
                    setattr(self, k, v)

    def inactive(self) -> dict[str, str]:
        """key -> when it takes effect, for every key without effect under this config's modes."""
        return {}


@dataclass(frozen=True)
class ModelChoice:
    """A registered model's name and its fully resolved config."""
    name: str
    config: ModelConfig

    @classmethod
    def from_raw(cls, raw: Any, where: str) -> "ModelChoice":
        return resolve(raw, where)

    def to_dict(self) -> dict:
        return {"name": self.name, **to_dict(self.config)}


def resolve(raw: Any, where: str = "model") -> ModelChoice:
    """{name: ..., **keys} (or a ModelChoice) -> ModelChoice: names, types, ranges, presets and modes checked."""
    from .registry import get
    if isinstance(raw, ModelChoice):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping {{name: ..., ...}}, got {raw!r}")
    keys = dict(raw)
    name = keys.pop("name", None)
    if name is None:
        raise ConfigError(f"{where}.name is required (see `ctrscale ls`)")
    entry = get(name, where)
    label = f"{where} {name}"
    cfg = from_dict(entry.config, keys, label)
    for key, applies in cfg.inactive().items():
        if key in keys and getattr(from_dict(entry.config, _without(keys, key), label), key) != getattr(cfg, key):
            raise ConfigError(f"{label}.{key}: has no effect here (it applies only {applies}); remove it")
    return ModelChoice(name, cfg)


def _without(keys: dict, key: str) -> dict:
    return {k: v for k, v in keys.items() if k != key}

