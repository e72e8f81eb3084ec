"""HiFormer: the heterogeneous attention against a per-token loop, the pre-norm residual layer."""
from __future__ import annotations

import math

import torch

from ctrscale.models.hiformer import HeterogeneousAttention

from model_testkit import build, jitter


def test_heterogeneous_attention_equals_a_per_token_loop():
    torch.manual_seed(5)
    t, d, heads = 4, 6, 2
    e = d // heads
    att = HeterogeneousAttention(t, d, heads)
    x = torch.randn(2, t, d)
    got = att(x)
    for n in range(2):
        # token i projects with its own matrices: W_Q^i, W_K^i, W_V^i (d, d) each, and W_O^i
        q = [x[n, i] @ att.qkv.weight[i][:, :d] for i in range(t)]
        k = [x[n, i] @ att.qkv.weight[i][:, d:2 * d] for i in range(t)]
        v = [x[n, i] @ att.qkv.weight[i][:, 2 * d:] for i in range(t)]
        for i in range(t):
            heads_out = []
            for h in range(heads):
                sl = slice(h * e, (h + 1) * e)
                w = torch.softmax(torch.stack([q[i][sl] @ k[j][sl] for j in range(t)]) / math.sqrt(e), 0)
                heads_out.append(sum(w[j] * v[j][sl] for j in range(t)))
            torch.testing.assert_close(got[n, i], torch.cat(heads_out) @ att.o.weight[i])


def test_hiformer_layer_is_pre_norm_residual(tiny):
    model = build(tiny, "hiformer", layers=1)
    jitter(model.layers[0])
    layer = model.layers[0]
    x = torch.randn(3, model.inputs.n_tokens, model.cfg.dim)

    def rms(v, norm):
        return v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight
    y = x + layer.att(rms(x, layer.norm_att))
    torch.testing.assert_close(layer(x), y + layer.ffn(rms(y, layer.norm_ffn)))
