"""AutoInt: the interacting layer against a per-head loop, and the layer widths."""
from __future__ import annotations

import torch

from ctrscale.models.autoint import InteractingLayer

from model_testkit import build


def test_interacting_layer_equals_a_per_head_loop():
    torch.manual_seed(2)
    heads, e, d_in, t = 2, 3, 5, 4
    layer = InteractingLayer(d_in, heads, e)
    x = torch.randn(2, t, d_in)
    got = layer(x)
    for n in range(2):
        for i in range(t):
            outs = []
            for h in range(heads):
                rows = slice(h * e, (h + 1) * e)
                wq, wk, wv = layer.q.weight[rows], layer.k.weight[rows], layer.v.weight[rows]  # (e, d_in)
                scores = torch.stack([(wq @ x[n, i]) @ (wk @ x[n, j]) for j in range(t)])     # no scaling
                alpha = torch.softmax(scores, 0)
                outs.append(sum(alpha[j] * (wv @ x[n, j]) for j in range(t)))
            want = torch.relu(torch.cat(outs) + layer.res.weight @ x[n, i])
            torch.testing.assert_close(got[n, i], want)


def test_autoint_layer_widths(tiny):
    model = build(tiny, "autoint", heads=3, head_dim=5, layers=3)
    assert [layer.q.in_features for layer in model.layers] == [model.cfg.dim, 15, 15]
    assert model.head[0].in_features == model.inputs.n_tokens * 15
