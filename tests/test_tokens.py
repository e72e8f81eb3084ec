"""The pooled unified inputs every hierarchical baseline reads: the content table and R_c arrive and matter."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from ctrscale.batch import CandidateSequence
from ctrscale.models.registry import build_model

from model_testkit import batch, build


POOLED = [("dcnv2", {}), ("autoint", {}), ("rankmixer", {}), ("hiformer", {}), ("mlp", {"inputs": "pooled"})]


@pytest.mark.parametrize("name,cfg", POOLED)
def test_pooled_baselines_load_content_and_candidate_behaviors(tiny, name, cfg):
    model = build(tiny, name, cand_seq_len=5, cand_seq_by="category", cand_seq_source_len=40, **cfg)
    assert model.needs.content and model.needs.cand_seq == CandidateSequence(5, "category", 40)
    table = model.inputs.unified.content.content
    assert table.abs().sum() > 0                     # the registry handed over the content table
    b = batch(tiny, model)
    assert b.cand_hist.shape[1] == 5
    with pytest.raises(ValueError, match="candidate-specific behaviors"):
        model(dataclasses.replace(b, cand_hist=None, cand_hist_time=None))
    with pytest.raises(ValueError, match="content"):
        build_model(tiny.spec, {"name": name, **cfg})


@pytest.mark.parametrize("name,cfg", POOLED)
def test_pooled_baselines_see_r_c(tiny, name, cfg):
    """The output depends on the candidate-specific behaviors (through DIN pooling and SimTier)."""
    model = build(tiny, name, **cfg)
    b = batch(tiny, model)
    without = dataclasses.replace(b, cand_hist=torch.zeros_like(b.cand_hist),
                                  cand_hist_time=torch.zeros_like(b.cand_hist_time))
    with torch.no_grad():
        assert not torch.allclose(model(b), model(without))
