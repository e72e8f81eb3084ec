"""ETA: SimHash codes, Hamming top-k retrieval (fast matmul vs bit-by-bit, recency ties, padding), the long-term
attention against a dense reference, gradients through the picked behaviors, request scoring with real top-k."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ctrscale.models.eta import hamming_matmul, hamming_reference, nearest, simhash
from model_testkit import batch, build, jitter


def _model(tiny, **cfg):
    return jitter(build(tiny, "eta", **{"embed_dim": 4, "hidden": [16], "heads": 2, **cfg}))


def _padded(b):
    """b with left padding added (right-aligned histories): row r keeps its L - 3 r most recent behaviors, so some
    rows have fewer than k, and the last row none."""
    n = b.hist.shape[1]
    keep = torch.arange(n)[None, :] >= (3 * torch.arange(len(b)))[:, None]
    keep[-1] = False
    return dataclasses.replace(b, hist_time=b.hist_time * keep)


def _noisy_padding(tiny, b):
    """b with random non-padding ids in its padded slots (hist_time == 0)."""
    b = _padded(b)
    smallest = min(tiny.spec.vocab_sizes[tiny.spec.field_vocab[f"hist.{h}"]] for h in tiny.spec.hist)
    hist = b.hist.clone()
    pad = ~b.hist_mask
    hist[pad] = torch.randint(2, smallest, hist[pad].shape, generator=torch.Generator().manual_seed(5))
    return dataclasses.replace(b, hist=hist)


def test_simhash_is_the_sign_of_the_projection_per_row():
    g = torch.Generator().manual_seed(0)
    x, planes = torch.randn(3, 5, 6, generator=g), torch.randn(6, 7, generator=g)
    x[0, 0] = 0.0  # a zero projection: sign +1
    got = simhash(x, planes)
    for i in range(3):
        for j in range(5):
            for bit in range(7):
                dot = sum(float(x[i, j, t]) * float(planes[t, bit]) for t in range(6))
                assert got[i, j, bit] == (1.0 if dot >= 0 else -1.0)


def test_hash_planes_are_a_fixed_seeded_buffer_in_the_state_dict(tiny):
    a, b = build(tiny, "eta", seed=0), build(tiny, "eta", seed=123)
    assert "hash_planes" in a.state_dict()
    torch.testing.assert_close(a.hash_planes, b.hash_planes)             # drawn from hash_seed, not the torch seed
    assert a.hash_planes.shape == (2 * a.cfg.embed_dim, a.cfg.hash_bits)  # item id and category; not the action
    assert not torch.equal(build(tiny, "eta", hash_seed=1).hash_planes, a.hash_planes)


def test_codes_hash_only_the_fields_the_candidate_shares(tiny):
    """The action (a behavior-only field) does not enter the code; item id and category do."""
    model = _model(tiny)
    b = batch(tiny, model, n=8, max_len=9)
    fields = model.emb.hist(b.hist)
    codes = model.codes(fields)
    manual = simhash(fields[..., :2, :].flatten(-2), model.hash_planes)     # hist fields: item_id, category, action
    torch.testing.assert_close(codes, manual)
    other = fields.clone()
    other[..., 2, :] = torch.randn_like(other[..., 2, :])
    torch.testing.assert_close(model.codes(other), codes)


@pytest.mark.parametrize("m", [1, 4, 33])
def test_hamming_matmul_equals_bit_by_bit_reference(m):
    g = torch.Generator().manual_seed(m)
    cand = torch.randint(0, 2, (3, 5, m), generator=g).float() * 2 - 1
    beh = torch.randint(0, 2, (3, 11, m), generator=g).float() * 2 - 1
    fast = hamming_matmul(cand, beh)
    assert fast.dtype == torch.long
    assert torch.equal(fast, hamming_reference(cand > 0, beh > 0))
    assert torch.equal(fast, hamming_reference(cand, beh))


def _brute_force_top_k(dist, valid, k):
    """Per row: valid positions sorted by (distance, most recent first), the first k."""
    out = []
    for r in range(dist.shape[0]):
        rows = []
        for c in range(dist.shape[1]):
            order = sorted((int(dist[r, c, p]), -p) for p in range(dist.shape[2]) if valid[r, p])
            rows.append([-p for _, p in order[:k]])
        out.append(rows)
    return out


@pytest.mark.parametrize("k", [1, 3, 6, 20])
def test_top_k_by_hamming_equals_a_brute_force_sort_with_recency_ties(k):
    g = torch.Generator().manual_seed(k)
    m, n = 4, 12
    dist = torch.randint(0, m + 1, (4, 6, n), generator=g)  # five distances over twelve behaviors: many ties
    valid = torch.ones(4, n, dtype=torch.bool)
    valid[1, :7] = False     # right-aligned history with 5 behaviors
    valid[2, :] = False      # no behaviors at all
    valid[3, :11] = False    # one behavior
    idx, picked = nearest(dist, valid, k, m)
    assert idx.shape == (4, 6, min(k, n))
    ref = _brute_force_top_k(dist, valid, k)
    for r in range(4):
        for c in range(6):
            assert idx[r, c][picked[r, c]].tolist() == ref[r][c]          # same picks, in rank order
            assert int(picked[r, c].sum()) == min(k, int(valid[r].sum()))
            assert valid[r, idx[r, c][picked[r, c]]].all()                # padding never picked as real


def test_model_retrieval_equals_the_bitwise_reference_including_ties(tiny):
    """The model's top-k (matmul distances) equals a top-k over bit-by-bit distances of per-row sign codes."""
    model = _model(tiny, top_k=5)
    b = _padded(batch(tiny, model, n=16, max_len=33))
    with torch.no_grad():
        state = model.encode_user(b)
        cand = model.emb.candidate_as_behavior(b.sparse.unsqueeze(1))            # (B, 1, F_hist, d)
        idx, picked = model.retrieve(state, cand)
        hashed = lambda f: (f[..., :2, :].flatten(-2) @ model.hash_planes) >= 0  # noqa: E731  bits, fields item/cat
        dist = hamming_reference(hashed(cand), hashed(model.emb.hist(b.hist)))
    valid = b.hist_mask
    assert any(len(set(dist[r, 0][valid[r]].tolist())) < int(valid[r].sum()) for r in range(len(b)))  # ties exist
    ref = _brute_force_top_k(dist, b.hist_mask, 5)
    for r in range(len(b)):
        assert idx[r, 0][picked[r, 0]].tolist() == ref[r][0]


def test_padding_is_never_selected_and_padded_ids_are_ignored(tiny):
    model = _model(tiny, top_k=8)
    b = _padded(batch(tiny, model, n=12, max_len=33))
    noisy = _noisy_padding(tiny, b)
    with torch.no_grad():
        outs = []
        for x in (b, noisy):
            state = model.encode_user(x)
            cand = model.emb.candidate_as_behavior(x.sparse.unsqueeze(1))
            idx, picked = model.retrieve(state, cand)
            assert torch.gather(x.hist_mask, 1, idx[:, 0])[picked[:, 0]].all()
            assert torch.equal(picked[:, 0].sum(-1), x.hist_mask.sum(-1).clamp(max=8))
            outs.append((model.long_interest(state, cand), model(x)))
    for a, c in zip(*outs):
        torch.testing.assert_close(a, c)


def _dense_target_attention(att, query, behaviors, valid):
    """softmax over valid behaviors of (W_q q) . (W_k b) / sqrt(Dh) per head, times W_v b, then W_o: the plain
    formula, per row and head with explicit sums."""
    h = att.heads
    q, (k, v) = att.q(query), att.kv(behaviors).chunk(2, -1)                   # (B, D), (B, L, D)
    dh = q.shape[-1] // h
    out = torch.zeros_like(q)
    for r in range(q.shape[0]):
        keep = valid[r].nonzero().flatten()
        for head in range(h):
            s = slice(head * dh, (head + 1) * dh)
            if len(keep):
                w = torch.softmax(k[r, keep, s] @ q[r, s] / math.sqrt(dh), 0)
                out[r, s] = w @ v[r, keep, s]
    return att.out(out)


def test_long_term_with_k_covering_the_history_equals_dense_attention_over_it(tiny):
    model = _model(tiny, top_k=64, short_len=64)
    b = _padded(batch(tiny, model, n=12, max_len=33))
    with torch.no_grad():
        state = model.encode_user(b)
        cand = model.emb.candidate_as_behavior(b.sparse.unsqueeze(1))
        beh = model.emb.hist(b.hist).flatten(-2)
        query = cand.flatten(-2)[:, 0]
        long_ref = _dense_target_attention(model.long_attention, query, beh, b.hist_mask)
        torch.testing.assert_close(model.long_interest(state, cand)[:, 0], long_ref, rtol=1e-5, atol=1e-6)
        short_ref = _dense_target_attention(model.short_attention, query, beh, b.hist_mask)
        torch.testing.assert_close(model.short_interest(state, cand)[:, 0], short_ref, rtol=1e-5, atol=1e-6)


def test_short_term_reads_only_the_most_recent_behaviors(tiny):
    model = _model(tiny, short_len=4)
    b = _padded(batch(tiny, model, n=12, max_len=20))
    with torch.no_grad():
        state = model.encode_user(b)
        cand = model.emb.candidate_as_behavior(b.sparse.unsqueeze(1))
        beh = model.emb.hist(b.hist).flatten(-2)
        ref = _dense_target_attention(model.short_attention, cand.flatten(-2)[:, 0], beh[:, -4:], b.hist_mask[:, -4:])
        torch.testing.assert_close(model.short_interest(state, cand)[:, 0], ref, rtol=1e-5, atol=1e-6)


def test_gradients_reach_the_embeddings_through_the_selected_behaviors_only(tiny):
    """Sign and top-k pass no gradient: the item table's rows with a gradient are exactly the candidates' items
    and the picked behaviors' items (padding slots, even with real ids, get none)."""
    model = _model(tiny, top_k=3)
    b = _noisy_padding(tiny, batch(tiny, model, n=6, max_len=25))
    state = model.encode_user(b)
    cand = model.emb.candidate_as_behavior(b.sparse.unsqueeze(1))
    model.long_interest(state, cand).pow(2).sum().backward()
    idx, picked = model.retrieve(state, cand)
    chosen = torch.gather(b.hist[..., 0], 1, idx[:, 0])[picked[:, 0]]
    expect = set(chosen.tolist()) | set(b.sparse[:, tiny.spec.sparse.index("item_id")].tolist())
    grad = model.emb.tables["item_id"].weight.grad
    assert set(grad.abs().sum(-1).nonzero().flatten().tolist()) == expect - {0}
    assert model.long_attention.kv.weight.grad.abs().sum() > 0 and model.hash_planes.grad is None


def test_request_scoring_with_real_top_k_equals_pointwise(tiny):
    """The contract test runs at max_len 20 < top_k 50 (retrieval keeps everything); here k < L, with ties."""
    model = _model(tiny, top_k=4, short_len=5)
    rb = batch(tiny, model, n=128, max_len=40, listwise=True)
    with torch.no_grad():
        by_request = model.score_request(rb)[rb.mask]
        pointwise = model(rb.flat())
    torch.testing.assert_close(by_request, pointwise, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("max_len", [1, 7])
def test_all_padding_and_short_histories_stay_finite(tiny, max_len):
    model = _model(tiny)
    b = batch(tiny, model, n=8, max_len=max_len)
    empty = dataclasses.replace(b, hist_time=torch.zeros_like(b.hist_time))
    for x in (b, empty):
        assert torch.isfinite(model(x)).all()


def test_projecting_all_then_gathering_equals_projecting_the_picked(tiny):
    model = _model(tiny, top_k=5)
    b = _padded(batch(tiny, model, n=8, max_len=30))
    with torch.no_grad():
        state = model.encode_user(b)
        idx, _ = model.retrieve(state, model.emb.candidate_as_behavior(b.sparse.unsqueeze(1)))
        for x, y in zip(model.picked_keys_values(state.history, idx, project_all=True),
                        model.picked_keys_values(state.history, idx, project_all=False)):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("top_k,short_len", [(3, 5), (7, 64)])
def test_whole_model_equals_a_per_row_reference(tiny, top_k, short_len):
    """Row by row from the formulas: SimHash codes of the aligned fields (signs of the projections), Hamming
    distances counted bit by bit, the k nearest valid behaviors (most recent first among ties), dense target
    attention over them and over the short_len most recent valid behaviors, the head over [profile, the other
    candidate and context fields, short-term, long-term]."""
    model = _model(tiny, top_k=top_k, short_len=short_len, hash_bits=6)
    b = _noisy_padding(tiny, batch(tiny, model, n=10, max_len=24))
    spec = tiny.spec
    aligned = [j for j, a in enumerate(spec.hist_to_sparse) if a >= 0]
    with torch.no_grad():
        got = model(b)
        beh = model.emb.hist(b.hist)                                                # (R, L, F, d)
        cand = model.emb.candidate_as_behavior(b.sparse)                            # (R, F, d)
        code = lambda f: (f[..., aligned, :].flatten(-2) @ model.hash_planes >= 0)  # noqa: E731  bits
        n = b.hist.shape[1]
        for r in range(len(b)):
            bits_c, bits_b = code(cand[r]), code(beh[r])                            # (m,), (L, m)
            dist = [int((bits_b[p] != bits_c).sum()) for p in range(n)]
            valid = [p for p in range(n) if b.hist_time[r, p] > 0]
            picked = sorted(valid, key=lambda p: (dist[p], -p))[:top_k]
            keep_long = torch.zeros(1, n, dtype=torch.bool)
            keep_long[0, picked] = True
            keep_short = torch.zeros(1, n, dtype=torch.bool)
            keep_short[0, [p for p in valid if p >= n - short_len]] = True
            q, hist = cand[r].flatten()[None], beh[r].flatten(-2)[None]
            long = _dense_target_attention(model.long_attention, q, hist, keep_long)[0]
            short = _dense_target_attention(model.short_attention, q, hist, keep_short)[0]
            feats = [model.emb.profile(b.sparse[r]).flatten(), model.emb.other_flat(b.sparse[r], b.dense[r]),
                     short, long]
            torch.testing.assert_close(got[r], model.head(torch.cat(feats)).squeeze(-1), rtol=1e-5, atol=1e-6)
