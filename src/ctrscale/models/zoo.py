"""Every model module, imported so that its @register runs. Add new model files here."""
from . import bst, din, est, hstu, mlp, sparsectr, suan  # noqa: F401
