"""The model zoo: `registry.entries()` lists every model; `registry.build_model(spec, {'name': ..})` builds one."""
from .registry import build_model, default_config, entries, get  # noqa: F401
