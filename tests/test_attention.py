"""The attention dispatch: every kernel equals its reference, and every model run whole on the references (or on
torch's fused SDPA) equals its own path, through forward and request scoring."""
from __future__ import annotations

import math

import pytest
import torch

from ctrscale.batch import RequestBatch
from ctrscale.data.loader import Loader, LoaderConfig
from ctrscale.errors import ConfigError
from ctrscale.models.attention import (
    ATTENTION_FUNCTIONS,
    TargetAttention,
    TimePositionBias,
    attention_function,
    attention_implementation,
    dense_attention,
    masked_softmax,
    merge_heads,
    split_heads,
    table_lookup,
)
from ctrscale.models.attention.pointwise import pointwise_attention
from ctrscale.models.registry import build_model, entries

# The variants that take other attention paths than their model's default
VARIANTS = [{"name": n} for n in sorted(entries())] + [
    {"name": "sparsectr", "attention": "full"}, {"name": "sparsectr", "attention": "dilated"},
    {"name": "sparsectr", "attention": "linear", "encoding": "none"}, {"name": "sparsectr", "encoding": "t5"},
    {"name": "sparsectr", "encoding": "rope"}, {"name": "est", "attention": "lca"},
    {"name": "est", "attention": "full"}, {"name": "suan", "target_aware": False},
    {"name": "suan", "attention_bias": False}, {"name": "lightsuan", "local": 3, "dilation": 3},
    {"name": "onetrans", "candidate_sequence": "full"}, {"name": "din", "attention_softmax": True},
]


def _both(fn, other="reference"):
    """fn() on the call sites' own kernels, and under attention_implementation(other)."""
    with torch.no_grad():
        fast = fn()
        with attention_implementation(other):
            ref = fn()
    return fast, ref


def test_the_context_overrides_each_call_sites_implementation():
    assert all("reference" in table for table in ATTENTION_FUNCTIONS.values())
    dense, causal = ATTENTION_FUNCTIONS["dense"], ATTENTION_FUNCTIONS["causal"]
    assert attention_function("dense") is dense_attention                     # no "fast" dense kernel: the form
    assert attention_function("dense", "sdpa") is dense["sdpa"] and attention_function("causal") is causal["fast"]
    with attention_implementation("reference"):
        assert attention_function("dense", "sdpa") is dense_attention
        assert attention_function("causal") is causal["reference"]
    with attention_implementation("sdpa"):
        assert attention_function("dense") is dense["sdpa"] and attention_function("causal") is causal["fast"]
    assert attention_function("dense") is dense_attention
    with pytest.raises(ConfigError, match="flash"), attention_implementation("flash"):
        pass


@pytest.mark.parametrize("dim", [1, 0, -2])
def test_split_and_merge_heads_are_inverse(dim):
    x = torch.randn(3, 5, 12)
    heads = split_heads(x, 4, dim)
    assert heads.shape[dim] == 4 and heads.shape[-1] == 3
    torch.testing.assert_close(merge_heads(heads, dim), x, rtol=0, atol=0)


def test_dense_fast_path_equals_reference_with_bias_and_rows_without_keys():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g) for _ in range(3))
    allowed = torch.rand(2, 1, 5, 5, generator=g) > 0.4
    allowed[0, 0, 2] = False                                                   # a row with no key: zeros
    bias = torch.randn(2, 1, 5, 5, generator=g)
    fast, ref = _both(lambda: attention_function("dense", "sdpa")(q, k, v, allowed, bias))
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    assert (fast[0, :, 2] == 0).all()
    torch.testing.assert_close(*_both(lambda: attention_function("dense", "sdpa")(q, k, v, scale=1.0)))


def test_small_table_lookup_gradient_equals_autograd():
    torch.manual_seed(0)
    table = torch.randn(7, requires_grad=True)
    idx = torch.randint(0, 7, (4, 5, 6))
    g = torch.randn(4, 5, 6)
    (table_lookup(table, idx) * g).sum().backward()
    ref_table = table.detach().clone().requires_grad_()
    (ref_table[idx] * g).sum().backward()
    torch.testing.assert_close(table.grad, ref_table.grad)
    torch.testing.assert_close(table_lookup(table, idx), ref_table[idx])


def test_pointwise_attention_is_silu_weighted_mean():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 1, 3, 2), torch.randn(1, 1, 3, 2), torch.randn(1, 1, 3, 2)
    allowed = torch.tensor([[True, False, False], [True, True, False], [False, True, True]])
    got = pointwise_attention(q, k, v, allowed, 0.0)
    for i in range(3):
        js = allowed[i].nonzero().squeeze(1)
        w = torch.nn.functional.silu(q[0, 0, i] @ k[0, 0, js].T)
        torch.testing.assert_close(got[0, 0, i], (w[:, None] * v[0, 0, js]).sum(0) / len(js))


def test_masked_softmax_zeroes_rows_without_an_allowed_position():
    torch.manual_seed(0)
    mask = torch.rand(4, 6) > 0.5
    mask[0] = False
    s = masked_softmax(torch.randn(4, 6), mask)
    assert torch.equal(s[0], torch.zeros(6))
    torch.testing.assert_close(s[1:].sum(-1), torch.ones(3))
    assert (s[~mask] == 0).all()


def test_target_attention_fast_path_equals_reference_and_loop():
    torch.manual_seed(0)
    att = TargetAttention(8, (6, 4)).eval()
    q, keys, mask = torch.randn(3, 8), torch.randn(3, 5, 8), torch.rand(3, 5) > 0.4
    got = att(q, keys, mask)
    with attention_implementation("reference"):
        torch.testing.assert_close(att(q, keys, mask), att.reference(q, keys, mask), rtol=0, atol=0)
    torch.testing.assert_close(got, att.reference(q, keys, mask), rtol=1e-5, atol=1e-6)
    soft = TargetAttention(8, (6, 4), softmax=True).eval()
    torch.testing.assert_close(soft(q, keys, mask), soft.reference(q, keys, mask), rtol=1e-5, atol=1e-6)
    for b in range(3):
        acc = torch.zeros(8)
        for j in range(5):
            if mask[b, j]:
                k = keys[b, j]
                w = att.mlp(torch.cat([q[b], k, q[b] - k, q[b] * k])).squeeze()
                acc = acc + w * k
        torch.testing.assert_close(got[b], acc, rtol=1e-5, atol=1e-6)


def _history(b=3, h=2, n=9, dh=4, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    qc, kc, vc = (torch.randn(b, h, c, dh, generator=g) for _ in range(3))
    kh, vh = (torch.randn(b, h, n, dh, generator=g) for _ in range(2))
    times = torch.cumsum(torch.randint(1, 5000, (b, n), generator=g), 1) + 1_000_000
    valid = torch.ones(b, n, dtype=torch.bool)
    valid[0, :4] = False
    valid[1] = False                                                           # an empty history
    bias = TimePositionBias(max_pos=6)
    with torch.no_grad():
        bias.time_table.normal_(generator=g)
        bias.pos_table.normal_(generator=g)
    return qc, kc, vc, kh, vh, times.max(1).values + 30, times * valid, valid, bias


@pytest.mark.parametrize("local,dilation", [(0, 1), (3, 2), (2, 4)])
def test_candidates_over_a_cached_history_equal_their_dense_reference(local, dilation):
    args = _history()
    fast, ref = _both(lambda: attention_function("candidate")(*args, local, dilation))
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    fast, ref = _both(lambda: attention_function("pointwise_candidates")(*args))
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


def test_lca_equals_per_candidate_dense_attention():
    """Shared R_u keys + per-candidate R_c keys under one softmax = dense masked attention, candidate by candidate."""
    torch.manual_seed(3)
    r, c, n, h, e, lu, k = 2, 3, 4, 2, 5, 6, 3
    q = torch.randn(r, c, n, h, e)
    k_u, v_u, k_c, v_c = torch.randn(r, lu, h, e), torch.randn(r, lu, h, e), torch.randn(r, c, k, h, e), \
        torch.randn(r, c, k, h, e)
    mask_u, mask_c = torch.rand(r, lu) > 0.3, torch.rand(r, c, k) > 0.3
    mask_u[1], mask_c[1, 2] = False, False                 # one candidate with no behaviors at all
    out, ref = _both(lambda: attention_function("lca")(q, k_u, v_u, mask_u, k_c, v_c, mask_c))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for i in range(r):
        for j in range(c):
            keys, vals = torch.cat([k_u[i], k_c[i, j]]), torch.cat([v_u[i], v_c[i, j]])   # (L, h, e)
            valid = torch.cat([mask_u[i], mask_c[i, j]])
            for head in range(h):
                s = q[i, j, :, head] @ keys[:, head].T / math.sqrt(e)
                p = torch.softmax(s.masked_fill(~valid, -math.inf), -1).nan_to_num(0.0)
                torch.testing.assert_close(out[i, j, :, head], p @ vals[:, head])


def _batch(data, model, n=48, max_len=12, listwise=False):
    cfg = LoaderConfig(batch_size=n, max_len=max_len, shuffle=True, listwise=listwise,
                       cand_seq=model.needs.cand_seq)
    return next(iter(Loader(data, "valid" if listwise else "train", cfg, seed=2)))


@pytest.mark.parametrize("cfg", VARIANTS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_whole_model_on_the_reference_or_sdpa_kernels_equals_its_own_path(cfg, tiny):
    torch.manual_seed(0)
    model = build_model(tiny.spec, dict(cfg), content=tiny.content()).eval()
    for p in model.parameters():  # zero-initialised biases and tables would hide a wrong bias path
        if p.dim() == 1 and (p == 0).all():
            torch.nn.init.normal_(p, std=0.5)
    b = _batch(tiny, model)
    rb = _batch(tiny, model, listwise=True)
    assert isinstance(rb, RequestBatch)
    for other in ("reference", "sdpa"):
        torch.testing.assert_close(*_both(lambda: model(b), other), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(*_both(lambda: model.score_request(rb)[rb.mask], other), rtol=1e-5, atol=1e-5)
