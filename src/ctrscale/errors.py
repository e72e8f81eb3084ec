"""Errors a user can act on. The CLI prints them as one line (what, where, what to do) and exits 2; anything
else that escapes is a bug and keeps its traceback (`ctrscale --debug` shows tracebacks for these too)."""
from __future__ import annotations


class CtrscaleError(Exception):
    """Base of every error ctrscale raises on purpose: bad input, a refused action, a stopped run."""


class ConfigError(CtrscaleError, ValueError):
    """A config key that does not exist, is missing, has the wrong type or is out of range."""


class DataError(CtrscaleError, ValueError):
    """Input data that cannot be prepared as given: names the file, row and field where it can."""


class RunError(CtrscaleError, RuntimeError):
    """A run that must not go on: a finished or busy run folder, a resume under another config, a diverging loss,
    a missing or damaged checkpoint."""
