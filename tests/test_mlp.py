"""The MLP baseline: plain inputs against the written formula, pooled inputs flattened into the head."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from ctrscale.batch import CandidateSequence
from ctrscale.data.loader import Loader, LoaderConfig
from ctrscale.models.layers import MLP
from ctrscale.models.registry import build_model
from ctrscale.models.tables import FeatureEmbedding

from model_testkit import batch, build


def test_plain_mlp_is_unchanged(tiny):
    """inputs='plain' needs no content and no R_c, and computes MLP([field embeddings, mean history])."""
    torch.manual_seed(6)
    model = build_model(tiny.spec, {"name": "mlp"}).eval()
    assert model.needs.content is False and model.needs.cand_seq is None
    assert sorted({k.split(".")[0] for k in model.state_dict()}) == ["emb", "head"]
    b = next(iter(Loader(tiny, "valid", LoaderConfig(batch_size=16, max_len=12))))
    emb: FeatureEmbedding = model.emb
    rows = []
    for n in range(len(b)):
        hist = [emb.hist(b.hist[n, j][None, None])[0, 0].flatten() for j in range(b.hist.shape[1]) if b.hist_mask[n, j]]
        mean = torch.stack(hist).mean(0) if hist else torch.zeros(len(tiny.spec.hist) * emb.dim)
        rows.append(torch.cat([emb.flat(b.sparse[n:n + 1], b.dense[n:n + 1])[0], mean]))
    head: MLP = model.head
    with torch.no_grad():
        torch.testing.assert_close(model(b), head(torch.stack(rows)).squeeze(-1))


def test_pooled_mlp_reads_the_flattened_pooled_tokens(tiny):
    model = build(tiny, "mlp", inputs="pooled", cand_seq_len=7)
    assert model.needs.content is True and model.needs.cand_seq == CandidateSequence(7, "content", 0)
    b = batch(tiny, model)
    assert b.cand_hist.shape[1] == 7
    with torch.no_grad():
        x = model.inputs(b)
        assert x.shape == (len(b), len(tiny.spec.sparse) + len(tiny.spec.dense) + 3, model.cfg.dim)
        torch.testing.assert_close(model(b), model.head(x.flatten(1)).squeeze(-1))


def test_mlp_rejects_unknown_inputs(tiny):
    with pytest.raises(ValueError, match="inputs.*must be one of"):
        build_model(tiny.spec, {"name": "mlp", "inputs": "fancy"})


def test_pooled_mlp_request_scoring_and_padding(tiny):
    """The contract tests run the default (plain) MLP; the pooled one gets the two checks its inputs could break."""
    model = build(tiny, "mlp", inputs="pooled")
    rb = batch(tiny, model, n=64, listwise=True)
    assert rb.num_candidates > 1
    with torch.no_grad():
        torch.testing.assert_close(model.score_request(rb)[rb.mask], model(rb.flat()), rtol=1e-5, atol=1e-5)
        b = batch(tiny, model, n=64, max_len=200, split="train")   # long enough that some histories are short
        assert (~b.hist_mask).any() and (~b.cand_hist_mask).any()
        noisy = dataclasses.replace(b, hist=b.hist.masked_fill(~b.hist_mask[..., None], 2),
                                    cand_hist=b.cand_hist.masked_fill(~b.cand_hist_mask[..., None], 2))
        torch.testing.assert_close(model(noisy), model(b))
