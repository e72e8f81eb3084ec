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


def one_line(e: BaseException) -> str:
    """An exception's message on one line (an OSError names its file), for messages that quote another error."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    else:
        text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(text.split()) or type(e).__name__
