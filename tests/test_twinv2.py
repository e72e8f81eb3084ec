"""TWIN-V2: the vectorised clustering against a plain recursive bisection, the virtual items, the consistency of GSU
and ESU logits, cluster-aware attention, and the size-1 limit (plain multi-head target attention)."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ctrscale.models.attention import time_bucket
from ctrscale.models.twinv2 import (
    cluster_aware_attention,
    cluster_behaviors,
    projections,
    summarise_clusters,
    tree_levels,
)
from model_testkit import batch, build, jitter


def _histories(r=5, length=37, d=6, seed=0):
    """Embeddings with left padding, an empty row, a full row, and repeated behaviors (projection ties)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(r, length, d, generator=g)
    n = torch.tensor([length, 0, 1, 20, 29][:r])
    valid = torch.arange(length)[None, :] >= (length - n)[:, None]
    x[3, -8:-4] = x[3, -1]                        # four copies of one behavior
    x[4, -10:] = x[4, -11]                        # ten copies
    x[~valid] = 1e3 * torch.randn(int((~valid).sum()), d, generator=g)   # padding holds anything
    times = torch.cumsum(torch.randint(1, 10_000, (r, length), generator=g), 1) + 1_600_000_000
    return x, valid, times * valid


def _directions(d, seed=1):
    return torch.randn(40, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _reference_partition(x, valid, directions, max_size):
    """One row at a time: recursively sort a cluster along the level's direction (ties: lower index) and split
    it at ceil(n / 2) while it has more than max_size members."""
    levels = tree_levels(x.shape[1], max_size)
    out = []
    for row in range(x.shape[0]):
        proj = projections(x[row], directions[:levels])                            # (L, levels)
        found = []

        def split(members, level):
            if len(members) <= max_size:
                if members:
                    found.append(frozenset(members))
                return
            ordered = sorted(members, key=lambda b: (proj[b, level].item(), b))
            half = (len(ordered) + 1) // 2
            split(ordered[:half], level + 1)
            split(ordered[half:], level + 1)
        split([b for b in range(x.shape[1]) if valid[row, b]], 0)
        out.append(set(found))
    return out


def _partition(member, n):
    return [{frozenset((row == c).nonzero().squeeze(1).tolist()) for c in range(n) if (row == c).any()}
            for row in member]


def test_projections_are_exact_integer_dot_products():
    """Rounded to the grid, a projection is an exact integer: the same in any batch and for any summation order."""
    x, valid, _ = _histories()
    dirs = _directions(x.shape[-1])[:6]
    got = projections(x, dirs)
    xq = torch.round(x.clamp(-1024, 1024) * 2.0 ** 20).long()
    dq = torch.round(dirs.clamp(-16, 16) * 2.0 ** 8).long()
    want = (xq.unsqueeze(-2) * dq).sum(-1)                                          # int64, exact
    assert torch.equal(got, want.double())
    assert torch.equal(projections(x[3:4], dirs)[0], got[3])
    assert torch.equal(got[3, -8], got[3, -1])                                      # identical behaviors tie


@pytest.mark.parametrize("max_size", [1, 3, 4, 8, 40])
def test_clustering_equals_recursive_reference(max_size):
    x, valid, _ = _histories()
    dirs = _directions(x.shape[-1])
    member, n = cluster_behaviors(x, valid, dirs, max_size)
    assert n == min(x.shape[1], 2 ** tree_levels(x.shape[1], max_size))
    assert _partition(member, n) == _reference_partition(x, valid, dirs, max_size)


@pytest.mark.parametrize("max_size", [1, 2, 5, 8])
def test_every_valid_behavior_in_exactly_one_cluster_padding_in_none(max_size):
    x, valid, _ = _histories(length=50, seed=3)
    member, n = cluster_behaviors(x, valid, _directions(x.shape[-1]), max_size)
    assert ((member >= 0) & (member < n))[valid].all()        # one cluster id per valid behavior
    assert (member[~valid] == n).all()                         # padding: the dummy id, in no cluster
    sizes = torch.zeros(x.shape[0], n + 1, dtype=torch.long).scatter_add_(1, member, torch.ones_like(member))
    assert (sizes[:, :n] <= max_size).all()
    assert (sizes[:, :n].sum(1) == valid.sum(1)).all()
    # cluster ids are dense: the used ones are 0..k-1
    used = sizes[:, :n] > 0
    assert (used.cumsum(1) == torch.arange(1, n + 1)).logical_or(~used).all()


def test_clusters_of_a_row_do_not_depend_on_its_batch():
    x, valid, _ = _histories(seed=4)
    dirs = _directions(x.shape[-1])
    member, n = cluster_behaviors(x, valid, dirs, 4)
    for row in range(x.shape[0]):
        alone, _ = cluster_behaviors(x[row:row + 1], valid[row:row + 1], dirs, 4)
        assert _partition(alone, n) == _partition(member[row:row + 1], n)


def test_representative_is_the_member_nearest_the_mean_and_times_average():
    x, valid, times = _histories(length=40, seed=5)
    member, n = cluster_behaviors(x, valid, _directions(x.shape[-1]), 5)
    rep, size, mean_time = summarise_clusters(x, valid, times, member, n)
    for row in range(x.shape[0]):
        for c in range(n):
            members = (member[row] == c).nonzero().squeeze(1)
            assert size[row, c] == len(members)
            if not len(members):
                continue
            pts = x[row, members].double()
            dist = (pts - pts.mean(0)).pow(2).sum(-1)
            assert int(rep[row, c]) in members.tolist()
            got = (x[row, rep[row, c]].double() - pts.mean(0)).pow(2).sum()
            assert got <= dist.min() * (1 + 1e-7) + 1e-12
            ties = members[dist <= dist.min() * (1 + 1e-7) + 1e-12]
            assert int(rep[row, c]) == int(ties.min())          # the oldest among equally near members
            assert math.isclose(float(mean_time[row, c]), float(times[row, members].double().mean()), rel_tol=1e-12)


def test_cluster_aware_attention_equals_repeating_each_cluster_n_times():
    g = torch.Generator().manual_seed(0)
    logits, values = torch.randn(3, 2, 5, generator=g), torch.randn(3, 2, 5, 4, generator=g)
    size = torch.randint(1, 5, (3, 1, 5), generator=g)
    valid = torch.ones(3, 1, 5, dtype=torch.bool)
    valid[1, :, 3:] = False
    valid[2] = False                                         # nothing valid: zeros
    got = cluster_aware_attention(logits, values, size, valid)
    for r in range(3):
        for h in range(2):
            keep = [j for j in range(5) if valid[r, 0, j]]
            if not keep:
                assert (got[r, h] == 0).all()
                continue
            rep = [j for j in keep for _ in range(int(size[r, 0, j]))]  # each member its own key, same value
            w = torch.softmax(logits[r, h, rep], 0)
            torch.testing.assert_close(got[r, h], w @ values[r, h, rep])


def _model(tiny, **cfg):
    return jitter(build(tiny, "twinv2", **{"embed_dim": 4, "attn_dim": 8, "heads": 2, "hidden": [16],
                                           "short_hidden": [8], **cfg}))


def _parts(model, b):
    state = model.encode_user(b)
    cache = state.caches[0]
    target = model.emb.candidate_as_behavior(b.sparse[:, None]).flatten(-2)        # (R, 1, D)
    q = model.w_q(target).unflatten(-1, (model.cfg.heads, -1))                       # (R, 1, H, dh)
    bias, values = model.cross(cache, b.time)
    return state, cache, q, bias, values


def _esu_output(model, b):
    """The ESU's interest (R, 1, A) for each row's own candidate, its queries (R, 1, H, dh), the behaviors (R, L, D)."""
    _, cache, q, bias, values = _parts(model, b)
    _, pick = model.gsu(q, cache, bias)
    got, _ = model.esu(q, cache, pick, bias, values)
    return got, q, model.emb.hist(b.hist).flatten(-2)


def test_gsu_logits_equal_esu_logits_and_pick_the_top_k(tiny):
    model = _model(tiny, max_cluster_size=3, top_k=4)
    b = batch(tiny, model, n=24, max_len=30)
    with torch.no_grad():
        _, cache, q, bias, values = _parts(model, b)
        gsu_logits, pick = model.gsu(q, cache, bias)                   # (R, H, 1, N), (R, 1, k)
        _, esu_logits = model.esu(q, cache, pick, bias, values)        # (R, 1, H, 1, k)
    n = gsu_logits.shape[-1]
    assert pick.shape[-1] == 4 < n
    picked = gsu_logits[:, :, 0].gather(2, pick[:, 0][:, None].expand(-1, model.cfg.heads, -1))  # (R, H, k)
    torch.testing.assert_close(esu_logits[:, 0, :, 0], picked, rtol=1e-6, atol=1e-6)
    # the GSU's pick: the k non-empty clusters of largest head-averaged logit (as many as there are)
    score = gsu_logits[:, :, 0].mean(1)
    for r in range(len(b)):
        full = (cache["size"][r] > 0).nonzero().squeeze(1)
        best = score[r, full].sort(descending=True).values[:4]
        got = pick[r, 0][:len(best)]
        assert (cache["size"][r, got] > 0).all()
        torch.testing.assert_close(score[r, got].sort(descending=True).values, best)  # equal up to exact ties
    # the logits are the TWIN formula: (q W_q)_h (x_rep W_h)_h / sqrt(dh) + cross bias_h
    dh = q.shape[-1]
    keys = cache["keys"].unflatten(-1, (model.cfg.heads, dh))                       # (R, N, H, dh)
    want = torch.einsum("rhd,rnhd->rhn", q[:, 0], keys) / math.sqrt(dh) + bias.transpose(1, 2)
    torch.testing.assert_close(gsu_logits[:, :, 0], want, rtol=1e-5, atol=1e-6)


def test_size_one_clusters_give_plain_multihead_target_attention(tiny):
    """max_cluster_size = 1, top_k >= L: the ESU is multi-head target attention over every behavior, with the
    behavior's own time interval as the cross feature."""
    model = _model(tiny, max_cluster_size=1, top_k=64)
    b = batch(tiny, model, n=16, max_len=20)
    h = model.cfg.heads
    with torch.no_grad():
        got, q, x = _esu_output(model, b)
        bucket = time_bucket(b.time[:, None] - b.hist_time)
        k_c = torch.cat([model.time_emb(bucket), model.size_emb(torch.ones_like(bucket))], -1)
        for r in range(len(b)):
            keep = b.hist_mask[r]
            qr = q[r, 0]                                                            # (H, dh)
            k = model.w_h(x[r, keep]).unflatten(-1, (h, -1))                        # (n, H, dh)
            v = (model.v_h(x[r, keep]) + model.v_c(k_c[r, keep])).unflatten(-1, (h, -1))
            logit = torch.einsum("hd,nhd->hn", qr, k) / math.sqrt(qr.shape[-1]) + model.cross_bias(k_c[r, keep]).t()
            out = torch.einsum("hn,nhd->hd", torch.softmax(logit, -1), v) if keep.any() else torch.zeros(h, 4)
            want = model.w_o(out.flatten())
            torch.testing.assert_close(got[r, 0], want, rtol=1e-5, atol=1e-6)


def test_encode_user_never_reads_the_request_time(tiny):
    model = _model(tiny)
    b = batch(tiny, model, n=16, max_len=30)
    later = dataclasses.replace(b, time=b.time + 86_400 * 30)
    with torch.no_grad():
        s1, s2 = model.encode_user(b), model.encode_user(later)
        for k, v in s1.caches[0].items():
            torch.testing.assert_close(v, s2.caches[0][k])
        # a state cached at one time, read with another request time, scores as a fresh encode
        cached = dataclasses.replace(s1, context=later)
        one = lambda t: t.unsqueeze(1)  # noqa: E731
        torch.testing.assert_close(model.score_candidates(cached, one(b.sparse), one(b.dense)), model(later)[:, None])


def test_parallel_candidates_equal_one_by_one(tiny):
    model = _model(tiny, max_cluster_size=4, top_k=3)
    b = batch(tiny, model, n=4, max_len=40)
    pool = batch(tiny, model, n=6, max_len=5).sparse
    cands = pool.unsqueeze(0).expand(4, -1, -1).clone()
    user = torch.tensor([model.emb.spec.roles[f] == "user" for f in model.emb.spec.sparse])
    cands[..., user] = b.sparse[:, None, user]
    dense = torch.zeros(4, 6, b.dense.shape[1])
    with torch.no_grad():
        state = model.encode_user(b)
        together = model.score_candidates(state, cands, dense)
        alone = torch.cat([model.score_candidates(state, cands[:, j:j + 1], dense[:, j:j + 1]) for j in range(6)], 1)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_gradients_reach_the_representatives_and_every_projection(tiny):
    model = _model(tiny, max_cluster_size=4, top_k=3).train()
    b = batch(tiny, model, n=16, max_len=30)
    model(b).sum().backward()
    for name in ("w_q", "w_h", "v_h", "v_c", "cross_bias", "w_o", "time_emb", "size_emb"):
        grad = getattr(model, name).weight.grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.directions.grad is None and not model.directions.requires_grad


def test_multi_member_clusters_end_to_end_against_a_per_row_reference(tiny):
    """From the clustering on (itself held to the recursive reference above), row by row and cluster by cluster in
    plain loops: the representative (the member nearest the mean, oldest among ties), size and mean time; the
    cross features at request time; TWIN's logits; the GSU's top-k by head-averaged logit; the ESU's n * exp(logit)
    weights over the picked clusters, merged by W_o."""
    model = _model(tiny, max_cluster_size=3, top_k=4)
    b = batch(tiny, model, n=12, max_len=30)
    h = model.cfg.heads
    with torch.no_grad():
        got, q, x = _esu_output(model, b)
        member, _ = cluster_behaviors(x, b.hist_mask, model.directions, 3)
        for r in range(len(b)):
            clusters = {}
            for pos in b.hist_mask[r].nonzero().squeeze(1).tolist():
                clusters.setdefault(int(member[r, pos]), []).append(pos)
            if not clusters:
                torch.testing.assert_close(got[r, 0], model.w_o(torch.zeros(model.cfg.attn_dim)))
                continue
            keys, vals, logits, sizes = [], [], [], []
            for members in clusters.values():
                xs = x[r, members].double()
                dist = ((xs - xs.mean(0)) ** 2).sum(-1)
                rep = members[min(range(len(members)), key=lambda i: (dist[i].item(), members[i]))]
                t = b.hist_time[r, members].double().mean()
                k_c = torch.cat([model.time_emb(time_bucket(b.time[r].double() - t)),
                                 model.size_emb(torch.tensor(len(members)))])
                key = model.w_h(x[r, rep]).view(h, -1)
                keys.append(key)
                vals.append((model.v_h(x[r, rep]) + model.v_c(k_c)).view(h, -1))
                logits.append((q[r, 0] * key).sum(-1) / math.sqrt(key.shape[-1]) + model.cross_bias(k_c))
                sizes.append(len(members))
            logits = torch.stack(logits, 1)                                         # (H, n_clusters)
            top = logits.mean(0).topk(min(4, logits.shape[1])).indices
            w = torch.softmax(logits[:, top] + torch.tensor(sizes, dtype=torch.float)[top].log(), -1)   # (H, k)
            out = torch.einsum("hk,khd->hd", w, torch.stack(vals)[top])
            torch.testing.assert_close(got[r, 0], model.w_o(out.flatten()), rtol=1e-5, atol=1e-6)
