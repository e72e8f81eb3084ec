"""The FAT paper's field tokens: numeric buckets at train quantiles, and the baselines that read them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ctrscale.models.fields import FieldTokens
from ctrscale.models.registry import build_model

from model_testkit import batch


def test_numeric_buckets_are_train_quantiles(tiny):
    """Deciles fall on the stored percentile grid (other counts interpolate between percentiles)."""
    tokens = FieldTokens(tiny.spec, 8, 16, numeric_buckets=10)
    dense = tiny.split("train").column("dense")
    ids = tokens.bucket(torch.as_tensor(dense)).numpy()
    edges = np.percentile(dense.astype(np.float64), np.arange(10, 100, 10), axis=0).astype(np.float32)
    for j in range(dense.shape[1]):
        np.testing.assert_array_equal(ids[:, j], np.searchsorted(edges[:, j], dense[:, j], side="left"))
        counts = np.bincount(ids[:, j], minlength=10)
        assert counts.max() < 2 * len(dense) / 10                            # about equal mass per bucket


@pytest.mark.parametrize("name", ["mlp", "dcnv2", "autoint", "hiformer", "rankmixer"])
def test_baselines_read_field_tokens_without_content(tiny, name):
    model = build_model(tiny.spec, {"name": name, "inputs": "fields"})           # no content table given
    b = batch(tiny, model, split="train")
    assert not model.needs.content and model.needs.cand_seq is None and b.cand_hist is None
    assert model.inputs.n_tokens == len(tiny.spec.sparse) + len(tiny.spec.dense) + 1
    assert torch.isfinite(model(b)).all()
