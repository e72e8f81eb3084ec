"""SUAN / LightSUAN mechanisms against dense references on small inputs."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from ctrscale.data.loader import Loader, LoaderConfig
from ctrscale.models.attention import TimePositionBias, dense_attention, merge_heads, split_heads
from ctrscale.models.attention.causal import (
    causal_attention,
    causal_reference,
    local_dilated_attention,
    sparse_pattern,
)
from ctrscale.models.layers import masked_mean
from ctrscale.models.registry import build_model
from ctrscale.models.suan import SIZES, VARIANTS


def _inputs(b=3, h=2, n=11, dh=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, dh, generator=g) for _ in range(3))
    times = torch.cumsum(torch.randint(1, 5000, (b, n), generator=g), 1) + 1_000_000
    valid = torch.ones(b, n, dtype=torch.bool)
    valid[0, :4] = False          # left padding, as histories are right-aligned
    valid[1, :] = False           # an empty history
    times = times * valid
    return q, k, v, times, valid


@pytest.mark.parametrize("n,local,dilation", [(11, 4, 2), (11, 2, 3), (12, 3, 4), (7, 1, 2), (9, 5, 1), (16, 4, 8)])
def test_local_dilated_equals_dense_masked_reference(n, local, dilation):
    q, k, v, times, valid = _inputs(n=n)
    bias = TimePositionBias(max_pos=64)
    with torch.no_grad():
        for t in (bias.time_table, bias.pos_table):
            t.normal_()
    got = local_dilated_attention(q, k, v, times, valid, bias, local, dilation)
    ref = causal_reference(q, k, v, times, valid, bias, local, dilation if dilation > 1 else 1)
    if dilation == 1:  # r = 1: the union is plain causal attention
        ref = causal_reference(q, k, v, times, valid, bias)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("block", [1, 4, 64])
@pytest.mark.parametrize("with_bias", [True, False])
def test_blocked_causal_attention_equals_dense_reference(block, with_bias):
    """SUAN's causal attention in query blocks equals the (L, L) reference: values and gradients (bias tables
    included), left padding and an empty history among the rows."""
    q, k, v, times, valid = _inputs(n=13)
    bias = TimePositionBias(max_pos=64)
    with torch.no_grad():
        bias.time_table.normal_()
        bias.pos_table.normal_()
    grads = []
    for fn in (lambda *a: causal_attention(*a, block=block), causal_reference):
        xs = [t.clone().requires_grad_() for t in (q, k, v)]
        bias.zero_grad()
        out = fn(*xs, times, valid, bias if with_bias else None)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append([out] + [x.grad for x in xs] + ([bias.time_table.grad.clone(), bias.pos_table.grad.clone()]
                                                     if with_bias else []))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_sparse_pattern_counts_each_key_once():
    p = sparse_pattern(10, 3, 4)
    assert p[9].nonzero().squeeze(1).tolist() == [1, 5, 7, 8, 9]
    assert not p.triu(1).any()


def _pair(tiny, **overrides):
    torch.manual_seed(0)
    a = build_model(tiny.spec, {"name": "suan", "embed_dim": 4, "head_hidden": [16], **overrides}).eval()
    return a


def _batch(tiny, n=32, max_len=13):
    return next(iter(Loader(tiny, "valid", LoaderConfig(batch_size=n, max_len=max_len), seed=5)))


def test_lightsuan_with_r1_equals_suan(tiny):
    suan = _pair(tiny)
    light = build_model(tiny.spec, {"name": "lightsuan", "embed_dim": 4, "head_hidden": [16], "local": 3,
                                    "dilation": 1}).eval()
    light.load_state_dict(suan.state_dict())
    b = _batch(tiny)
    with torch.no_grad():
        torch.testing.assert_close(light(b), suan(b), rtol=1e-5, atol=1e-5)


def reference_forward(model, batch):
    """SUAN over the full (L + 1)-token target-aware sequence with a dense (L+1)x(L+1) mask, written from the
    paper's equations; returns logits and each layer's AFNet gate."""
    cfg, emb = model.cfg, model.emb
    hist = emb.hist(batch.hist).flatten(-2)
    cand = emb.candidate_as_behavior(batch.sparse).flatten(-2)
    e = torch.cat([hist, cand.unsqueeze(1)], 1)                                   # (B, L+1, D)
    times = torch.cat([batch.hist_time, batch.time[:, None]], 1)
    valid = torch.cat([batch.hist_mask, torch.ones_like(batch.time[:, None], dtype=torch.bool)], 1)
    n = e.shape[1]
    pos = torch.arange(n)
    pattern = sparse_pattern(n, cfg.local, cfg.dilation) if cfg.local else pos[:, None] >= pos[None, :]
    allowed = pattern & (valid[:, None, None, :] | torch.eye(n, dtype=torch.bool))
    profile = emb.sparse(batch.sparse, emb.spec.sparse_of_role("user"))
    gates = []
    for blk in model.blocks:
        x = blk.norm1(e)
        q, k, v = (split_heads(t, blk.heads) for t in blk.qkv(x).chunk(3, -1))
        bias = blk.bias(times[:, :, None], times[:, None, :], pos[:, None] - pos[None, :]).unsqueeze(1)
        e_self = blk.out(merge_heads(dense_attention(q, k, v, allowed, bias)))
        e_cross = blk._cross(e_self, profile)
        behaviors = valid.clone()
        behaviors[:, -1] = False  # the gate's mean runs over behaviors only (spec decision)
        g = torch.relu(blk.gate_in(masked_mean(e_self + e_cross, behaviors, dim=1)))
        w = torch.softmax(torch.stack([blk.gate_self(g), blk.gate_cross(g)], 1), 1)
        gates.append(w)
        e = e + w[:, 0, None] * e_self + w[:, 1, None] * e_cross
        e = e + blk.ffn(blk.norm2(e))
    rep = model.final_norm(e[:, -1])
    item_ctx = emb.spec.sparse_of_role("item", "context")
    other = torch.cat([emb.sparse(batch.sparse, item_ctx).flatten(-2), emb.numeric(batch.dense).flatten(-2)], -1)
    return model.head(torch.cat([rep, profile.flatten(-2), other], -1)).squeeze(-1), gates


@pytest.mark.parametrize("name,extra", [("suan", {}), ("lightsuan", {"local": 3, "dilation": 2}),
                                        ("lightsuan", {"local": 2, "dilation": 4})])
def test_cached_split_equals_full_sequence_reference(tiny, name, extra):
    torch.manual_seed(0)
    model = build_model(tiny.spec, {"name": name, "embed_dim": 4, "head_hidden": [16], **extra}).eval()
    for blk in model.blocks:  # non-trivial biases so they matter
        with torch.no_grad():
            blk.bias.time_table.normal_()
            blk.bias.pos_table.normal_()
    b = _batch(tiny)
    with torch.no_grad():
        ref, _ = reference_forward(model, b)
        torch.testing.assert_close(model(b), ref, rtol=1e-4, atol=1e-5)


def test_afnet_gate_does_not_depend_on_the_candidate(tiny):
    model = _pair(tiny)
    b = _batch(tiny)
    other = dataclasses.replace(b, sparse=b.sparse.roll(1, 0))  # every row gets another candidate
    other = dataclasses.replace(other, sparse=torch.where(torch.tensor(
        [model.emb.spec.roles[f] == "item" for f in model.emb.spec.sparse]), other.sparse, b.sparse))
    with torch.no_grad():
        _, g1 = reference_forward(model, b)
        _, g2 = reference_forward(model, other)
    for a, c in zip(g1, g2):
        torch.testing.assert_close(a, c)


@pytest.mark.parametrize("name", ["suan", "lightsuan"])
def test_parallel_candidates_equal_one_by_one(tiny, name):
    torch.manual_seed(0)
    model = build_model(tiny.spec, {"name": name, "embed_dim": 4, "head_hidden": [16]}).eval()
    b = _batch(tiny, n=4, max_len=20)
    pool = _batch(tiny, n=6, max_len=20).sparse                                  # 6 candidates for everyone
    cands = pool.unsqueeze(0).expand(4, -1, -1).clone()
    user_fields = torch.tensor([model.emb.spec.roles[f] == "user" for f in model.emb.spec.sparse])
    cands[..., user_fields] = b.sparse[:, None, user_fields]
    dense = torch.zeros(4, 6, b.dense.shape[1])
    with torch.no_grad():
        state = model.encode_user(b)
        together = model.score_candidates(state, cands, dense)
        alone = torch.cat([model.score_candidates(state, cands[:, j:j + 1], dense[:, j:j + 1]) for j in range(6)], 1)
        reversed_ = model.score_candidates(state, cands.flip(1), dense.flip(1)).flip(1)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(together, reversed_, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_ablation_variants_build_and_run(tiny, variant):
    model = build_model(tiny.spec, {"name": "suan", "embed_dim": 4, "head_hidden": [16], **VARIANTS[variant]})
    out = model(_batch(tiny))
    assert torch.isfinite(out).all()


def test_size_presets_grow_the_dense_parameters(tiny):
    from ctrscale.accounting import count_params
    dense = [count_params(build_model(tiny.spec, {"name": "suan", "size": s}))["dense"] for s in sorted(SIZES)[:4]]
    assert dense == sorted(dense) and len(set(dense)) == 4
    with pytest.raises(ValueError, match="size"):
        build_model(tiny.spec, {"name": "suan", "size": "size-9"})


@pytest.mark.parametrize("n,local,dilation", [(10, 4, 2), (10, 3, 4), (11, 4, 2), (16, 4, 8)])
def test_local_dilated_gradients_equal_reference(n, local, dilation):
    q, k, v, times, valid = _inputs(n=n, seed=3)
    bias = TimePositionBias(max_pos=64)
    with torch.no_grad():
        bias.time_table.normal_()
        bias.pos_table.normal_()
    grads = []
    for fn in (local_dilated_attention, causal_reference):
        xs = [t.clone().requires_grad_() for t in (q, k, v)]
        bias.zero_grad()
        out = fn(*xs, times, valid, bias, local, dilation)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append([x.grad for x in xs] + [bias.time_table.grad.clone(), bias.pos_table.grad.clone()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
