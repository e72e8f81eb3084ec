"""DeepFM: the FM pairwise term against its double sum, beside the linear and deep parts."""
from __future__ import annotations

import torch

from model_testkit import batch, build


def test_deepfm_pairwise_term_equals_its_double_sum(tiny):
    deepfm = build(tiny, "deepfm")
    b = batch(tiny, deepfm, n=6, split="train")
    with torch.no_grad():
        e = deepfm.inputs(b)
        pairs = sum((e[:, i] * e[:, j]).sum(-1) for i in range(e.shape[1]) for j in range(i + 1, e.shape[1]))
        torch.testing.assert_close(deepfm(b), deepfm.linear(b) + pairs + deepfm.deep(e.flatten(1)).squeeze(-1))
