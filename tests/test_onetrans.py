"""OneTrans: the mixed-parameter causal layer against a per-token loop, behaviors blind to the candidate, and the
three ways R_c enters (pooled, DIN-pooled, full)."""
from __future__ import annotations

import math

import pytest
import torch

from ctrscale.data.loader import Loader, LoaderConfig
from ctrscale.models.onetrans import MixedLayer, OneTransConfig
from ctrscale.models.registry import build_model


def _layer(n_ns=3, seed=0):
    torch.manual_seed(seed)
    layer = MixedLayer(n_ns, OneTransConfig(dim=8, heads=2))
    for p in layer.parameters():  # non-trivial norms too
        p.data += 0.1 * torch.randn_like(p)
    return layer


def test_mixed_layer_equals_a_per_token_loop():
    layer = _layer()
    b, length, n, d, h = 2, 5, 3, 8, 2
    s, ns = torch.randn(b, length, d), torch.randn(b, n, d)
    mask = torch.rand(b, length) > 0.3
    got_s, got_ns = layer(s, ns, mask)
    e = d // h
    for i in range(b):
        toks = [("s", j, s[i, j]) for j in range(length)] + [("ns", j, ns[i, j]) for j in range(n)]
        qkv = []
        for kind, j, x in toks:
            if kind == "s":
                qkv.append(layer.qkv_s(layer.norm_s(x)))
            else:
                qkv.append(layer.norm_ns(x) @ layer.qkv_ns.weight[j])
        qkv = torch.stack(qkv)                                                  # (T, 3d)
        q, k, v = qkv.split(d, -1)
        valid = torch.cat([mask[i], torch.ones(n, dtype=torch.bool)])
        for t, (kind, j, x) in enumerate(toks):
            heads = []
            for hh in range(h):
                sl = slice(hh * e, (hh + 1) * e)
                keys = [u for u in range(t + 1) if valid[u]]
                if not keys:
                    heads.append(torch.zeros(e))
                    continue
                w = torch.softmax(torch.stack([q[t, sl] @ k[u, sl] for u in keys]) / math.sqrt(e), 0)
                heads.append(sum(wi * v[u, sl] for wi, u in zip(w, keys)))
            att = torch.cat(heads)
            if kind == "s":
                y = x + layer.o_s(att)
                y = y + layer.ffn_s(layer.ffn_norm_s(y))
                torch.testing.assert_close(got_s[i, j], y, rtol=1e-4, atol=1e-5)
            else:
                y = x + att @ layer.o_ns.weight[j]
                z = layer.ffn_norm_ns(y)
                a, g = (z @ layer.ffn_ns.w12.weight[j]).chunk(2)
                y = y + (torch.nn.functional.silu(a) * g) @ layer.ffn_ns.w3.weight[j]
                torch.testing.assert_close(got_ns[i, j], y, rtol=1e-4, atol=1e-5)


def test_behaviors_never_read_the_candidate_tokens():
    layer = _layer()
    s, mask = torch.randn(2, 6, 8), torch.ones(2, 6, dtype=torch.bool)
    out_a, _ = layer(s, torch.randn(2, 3, 8), mask)
    out_b, _ = layer(s, torch.randn(2, 3, 8), mask)
    torch.testing.assert_close(out_a, out_b)


@pytest.mark.parametrize("mode, extra", [("pool", 1), ("din", 1), ("full", 0)])
def test_candidate_sequence_modes(tiny, mode, extra):
    torch.manual_seed(0)
    model = build_model(tiny.spec, {"name": "onetrans", "dim": 16, "heads": 2, "candidate_sequence": mode},
                        content=tiny.content()).eval()
    assert model.layers[0].o_ns.weight.shape[0] == model.inputs.n_tokens + extra
    b = next(iter(Loader(tiny, "valid", LoaderConfig(batch_size=32, max_len=20, cand_seq=model.needs.cand_seq))))
    base = model(b)
    # R_c matters in every mode: dropping it changes the scores
    empty = torch.zeros_like(b.cand_hist_time)
    assert not torch.allclose(model(type(b)(**{**b.__dict__, "cand_hist_time": empty})), base)
