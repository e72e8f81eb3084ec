"""FFM: the field-aware pairwise term against its double sum."""
from __future__ import annotations

import torch

from model_testkit import batch, build


def test_ffm_pairwise_term_equals_its_double_sum(tiny):
    ffm = build(tiny, "ffm", latent_dim=3)
    b = batch(tiny, ffm, n=6, split="train")
    v = ffm.latent(b)                                                         # (B, T, T * k)
    t = v.shape[1]
    v = v.view(len(b), t, t, 3)
    by_hand = sum((v[:, i, j] * v[:, j, i]).sum(-1) for i in range(t) for j in range(i + 1, t))
    with torch.no_grad():
        torch.testing.assert_close(ffm(b), ffm.linear(b) + by_hand)
