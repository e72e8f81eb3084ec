"""Every model module, imported so that its @register runs. Add new model files here."""
from . import (  # noqa: F401
    autoint,
    bst,
    dcnv2,
    deepfm,
    din,
    est,
    fat,
    ffm,
    hiformer,
    hstu,
    mlp,
    onetrans,
    rankmixer,
    sparsectr,
    suan,
    wukong,
)
