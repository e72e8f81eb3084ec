"""CAN's co-action units against per-sample references built from the paper's formulas on small inputs."""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
import torch.nn.functional as F

from ctrscale.errors import ConfigError
from ctrscale.models.can import CANConfig, micro_mlp, unit_width, unpack
from model_testkit import batch, build, jitter

SMALL = {"embed_dim": 4, "hidden": [16], "attention_hidden": [8], "coaction_dims": [4, 3, 2]}
VARIANTS = [{}, {"coaction_bias": False, "unit_output": "concat"}, {"orders": 2, "order_independent": True},
            {"orders": 1, "user_coaction": False}, {"coaction_dims": [4, 3, 3, 2], "unit_output": "concat"},
            {"coaction_dims": [4, 2], "orders": 2}]


def loop_mlp(x, p, dims, bias):
    """One candidate's micro-MLP on one feed vector, its weights cut from p with .view: every layer's output."""
    outs, at, h = [], 0, x
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        w = p[at:at + d_in * d_out].view(d_in, d_out)
        at += d_in * d_out
        b = None
        if bias:
            b = p[at:at + d_out]
            at += d_out
        h = F.linear(h, w.t(), b)
        if i < len(dims) - 2:
            h = torch.tanh(h)
        outs.append(h)
    assert at == p.numel()
    return outs


@pytest.mark.parametrize("dims", [(4, 3, 2), (4, 2), (3, 4, 3, 2)])
@pytest.mark.parametrize("bias", [True, False])
def test_batched_micro_mlp_equals_per_sample_loop(bias, dims):
    g = torch.Generator().manual_seed(0)
    r, c, u, o, length = 2, 3, 2, 2, 5
    feed = torch.randn(r, u, o, length, dims[0], generator=g)
    params = torch.randn(r, c, u, o, unit_width(dims, bias), generator=g)
    mask = torch.ones(r, length, dtype=torch.bool)
    mask[0, :2] = False
    mask[1] = False  # a row without behaviors
    got = micro_mlp(feed, unpack(params, dims, bias), mask, pool_all=True)
    for i in range(r):
        for j in range(c):
            for k in range(u):
                for q in range(o):
                    want = [torch.zeros(d) for d in dims[1:]]
                    for t in range(length):
                        if mask[i, t]:
                            for n, h in enumerate(loop_mlp(feed[i, k, q, t], params[i, j, k, q], dims, bias)):
                                want[n] = want[n] + h
                    for n in range(len(dims) - 1):
                        torch.testing.assert_close(got[n][i, j, k, q], want[n], rtol=1e-5, atol=1e-6)
    assert (got[-1][1] == 0).all()
    last = micro_mlp(feed, unpack(params, dims, bias), mask, pool_all=False)
    assert len(last) == 1 and torch.equal(last[0], got[-1])


@pytest.mark.parametrize("dims", [(4, 3, 2), (3, 4, 3, 2)])
def test_micro_mlp_gradients_equal_the_loop(dims):
    """The batched path works in place (bias folded into the first matmul, tanh_): its gradients still equal the
    per-sample loop's, for the feeds and the induction vectors."""
    g = torch.Generator().manual_seed(1)
    r, c, u, o, length = 2, 2, 2, 2, 4
    feed0 = torch.randn(r, u, o, length, dims[0], generator=g)
    params0 = torch.randn(r, c, u, o, unit_width(dims, True), generator=g)
    mask = torch.tensor([[False, True, True, True], [True, True, True, True]])
    grads = []
    for batched in (True, False):
        feed, params = feed0.clone().requires_grad_(), params0.clone().requires_grad_()
        if batched:
            outs = micro_mlp(feed, unpack(params, dims, True), mask, pool_all=True)
        else:
            outs = [torch.zeros(r, c, u, o, d) for d in dims[1:]]
            for i, j, k, q, t in itertools.product(range(r), range(c), range(u), range(o), range(length)):
                if mask[i, t]:
                    for n, h in enumerate(loop_mlp(feed[i, k, q, t], params[i, j, k, q], dims, True)):
                        outs[n] = outs[n].index_put((torch.tensor(i), torch.tensor(j), torch.tensor(k),
                                                     torch.tensor(q)), h, accumulate=True)
        sum((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum() for out in outs).backward()
        grads.append((feed.grad, params.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def padded(b):
    """Left padding in some rows (their ids stay: padded ids are arbitrary) and one row without behaviors."""
    time = b.hist_time.clone()
    time[0, :4] = 0
    time[1, :] = 0
    time[2, :-1] = 0
    return dataclasses.replace(b, hist_time=time)


def reference_coaction(model, b):
    """Row by row from the paper: for each (candidate field, feature) pair, the candidate's P_induction slice viewed
    as the micro-MLP; H = sum over orders c of MLP(P_feed ** c) (or every layer's output of every order,
    concatenated), sum-pooled over the valid behaviors only."""
    cfg, spec = model.cfg, model.emb.spec
    align = spec.hist_to_sparse
    inducing = sorted({a for a in align if a >= 0})
    users = spec.sparse_of_role("user") if cfg.user_coaction else []
    dims, bias, orders = cfg.coaction_dims, cfg.coaction_bias, cfg.orders
    width = unit_width(dims, bias)
    rows = []
    for i in range(len(b)):
        hist_units, user_units = [], []
        for a in inducing:
            pairs = [("hist", j) for j, x in enumerate(align) if x == a] + [("user", k) for k in users]
            per_order = orders if cfg.order_independent else 1
            p = model.induction[spec.sparse[a]].weight[b.sparse[i, a]].view(len(pairs), per_order, width)
            for n, (kind, f) in enumerate(pairs):
                if kind == "hist":
                    feeds = [model.feed_hist[spec.hist[f]].weight[b.hist[i, t, f]]
                             for t in range(b.hist.shape[1]) if b.hist_time[i, t] > 0]
                else:
                    feeds = [model.feed_user[spec.sparse[f]].weight[b.sparse[i, f]]]
                per_order_out = []
                for order in range(1, orders + 1):
                    layers = [torch.zeros(d) for d in dims[1:]]
                    for x in feeds:
                        for m, h in enumerate(loop_mlp(torch.pow(x, order), p[n, order - 1 if per_order > 1 else 0],
                                                       dims, bias)):
                            layers[m] = layers[m] + h
                    per_order_out.append(layers)
                if cfg.unit_output == "sum":
                    out = sum(layers[-1] for layers in per_order_out)
                else:
                    out = torch.cat([h for layers in per_order_out for h in layers])
                (hist_units if kind == "hist" else user_units).append(out)
        rows.append(torch.cat(hist_units + user_units))
    return torch.stack(rows)


@pytest.mark.parametrize("extra", VARIANTS, ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()) or "default")
def test_coaction_equals_row_by_row_reference(tiny, extra):
    """Pairs, the induction layout, multi-order enhancement (x ** c explicitly), order (in)dependence and the
    masked sum pooling, all against the row-by-row formula."""
    model = jitter(build(tiny, "can", **(SMALL | extra)))
    b = padded(batch(tiny, model, n=6, max_len=9))
    with torch.no_grad():
        got = model.coaction(model.encode_user(b), b.sparse.unsqueeze(1))[:, 0]
        want = reference_coaction(model, b)
    assert got.shape == (len(b), model.coaction_width)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_default_micro_mlp_has_the_released_widths(tiny):
    """16 -> 8 -> 4 (the released widths; with biases, ours), three orders sharing the MLP; per unit the paper's
    sum gives 4 numbers."""
    model = build(tiny, "can")
    cfg = model.cfg
    assert (cfg.coaction_dims, cfg.orders, cfg.order_independent) == ((16, 8, 4), 3, False)
    n_pairs = 1 + len(tiny.spec.sparse_of_role("user"))  # item_id: its behaviors and each user field
    assert model.induction["item_id"].weight.shape[1] == n_pairs * (16 * 8 + 8 + 8 * 4 + 4)
    assert model.coaction_width == 4 * 2 * n_pairs
    indep = build(tiny, "can", order_independent=True)
    assert indep.induction["item_id"].weight.shape[1] == 3 * model.induction["item_id"].weight.shape[1]


def test_sum_pooling_ignores_padding_and_empty_histories_give_zero(tiny):
    model = jitter(build(tiny, "can", **SMALL, unit_output="concat"))
    b = padded(batch(tiny, model, n=16, max_len=12))
    noisy = b.hist.clone()
    noisy[~b.hist_mask] = torch.randint(2, 4, noisy[~b.hist_mask].shape)
    empty = dataclasses.replace(b, hist_time=torch.zeros_like(b.hist_time))
    cand = b.sparse.unsqueeze(1)
    with torch.no_grad():
        clean = model.coaction(model.encode_user(b), cand)
        moved = model.coaction(model.encode_user(dataclasses.replace(b, hist=noisy)), cand)
        none = model.coaction(model.encode_user(empty), cand)
    torch.testing.assert_close(moved, clean)
    n_hist = 2 * model.cfg.orders * sum(model.cfg.coaction_dims[1:])  # item_id and category behavior units first
    assert (none[..., :n_hist] == 0).all() and (none[..., n_hist:] != 0).any()


def test_zero_induction_reduces_to_din_and_head(tiny):
    """With every P_induction at zero the micro-MLPs output zeros (tanh(0) = 0, no bias): the model is DIN's path
    and the head with zeros in the co-action slots, and the co-action feeds then no longer matter; with P_induction
    they do, through the head."""
    model = jitter(build(tiny, "can", **SMALL))
    b = padded(batch(tiny, model, n=16, max_len=12))

    def move_feeds():
        for t in list(model.feed_hist.values()) + list(model.feed_user.values()):
            t.weight.add_(torch.randn_like(t.weight))
    with torch.no_grad():
        before = model(b)
        move_feeds()
        assert not torch.allclose(model(b), before, atol=1e-4)
        for t in model.induction.values():
            t.weight.zero_()
        zeroed = model(b)
        keys = model.emb.hist(b.hist).flatten(-2)
        query = model.emb.candidate_as_behavior(b.sparse).flatten(-2)
        interest = model.attention(query, keys, b.hist_mask)
        din = model.head(torch.cat([model.emb.flat(b.sparse, b.dense), interest,
                                    torch.zeros(len(b), model.coaction_width)], -1)).squeeze(-1)
        torch.testing.assert_close(zeroed, din, rtol=1e-5, atol=1e-6)
        move_feeds()
        torch.testing.assert_close(model(b), zeroed, rtol=1e-5, atol=1e-6)


def test_parallel_candidates_equal_one_by_one(tiny):
    model = jitter(build(tiny, "can", **SMALL))
    b = batch(tiny, model, n=4, max_len=15)
    pool = batch(tiny, model, n=6, max_len=15, split="train").sparse
    cands = pool.unsqueeze(0).expand(4, -1, -1).clone()
    user = torch.tensor([tiny.spec.roles[f] == "user" for f in tiny.spec.sparse])
    cands[..., user] = b.sparse[:, None, user]
    dense = torch.randn(4, 6, b.dense.shape[1])
    with torch.no_grad():
        state = model.encode_user(b)
        together = model.score_candidates(state, cands, dense)
        alone = torch.cat([model.score_candidates(state, cands[:, j:j + 1], dense[:, j:j + 1]) for j in range(6)], 1)
        rows = torch.stack([model(dataclasses.replace(b, sparse=cands[:, j], dense=dense[:, j])) for j in range(6)], 1)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(together, rows, rtol=1e-5, atol=1e-6)


def test_config_checks(tiny):
    with pytest.raises(ConfigError, match="coaction_dims"):
        CANConfig(coaction_dims=(16,))
    with pytest.raises(ConfigError, match="unit_output"):
        CANConfig(unit_output="mean")
    assert CANConfig(orders=1).inactive() == {"order_independent": "with orders > 1"}
    # the co-action tables are embedding tables of their own (parameters independence), not dense parameters
    from ctrscale.models.tables import embedding_params
    model = build(tiny, "can")
    names = set(embedding_params(model))
    assert {"induction.item_id.weight", "feed_hist.item_id.weight", "feed_user.age.weight"} <= names
    assert model.feed_hist["item_id"].weight.data_ptr() != model.emb.tables["item_id"].weight.data_ptr()
