"""Every model module, imported so that its @register runs. Add new model files here."""
from . import autoint, bst, dcnv2, din, est, hiformer, hstu, mlp, onetrans, rankmixer, sparsectr, suan  # noqa: F401
