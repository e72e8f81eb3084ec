"""The model zoo: `registry.entries()` lists every model; `registry.build_model(spec, {'name': ..})` builds one.
`index.MODELS` names them without importing torch (what `ctrscale ls` reads)."""

_LAZY = ("build_model", "default_config", "entries", "get")


def __getattr__(name: str):
    # Imported on first use, not with the package: `ctrscale.models.index` must load without torch.
    if name in _LAZY:
        from . import registry
        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
