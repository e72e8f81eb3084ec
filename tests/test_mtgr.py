"""MTGR: the dynamic mask and the whole request against a dense [user ; history ; candidates] reference, group
layer norm, R_c as a cross feature of the candidate token, history extension."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from ctrscale.batch import CandidateSequence, RequestBatch
from ctrscale.models.mtgr import GROUPS, visibility

from model_testkit import batch, build, jitter


def _mtgr(tiny, **cfg):
    model = build(tiny, "mtgr", embed_dim=4, dim=16, heads=2, head_hidden=[16], **cfg)
    jitter(model, 0.3)  # norms, biases and the rab tables off their initial values
    return model


def _requests(tiny, model, n=40, max_len=12):
    rb = batch(tiny, model, n=n, max_len=max_len, listwise=True)
    assert isinstance(rb, RequestBatch) and rb.num_candidates > 1
    return rb


def explicit_mask(n_user: int, valid: torch.Tensor, realtime: int, n_cand: int) -> torch.Tensor:
    """(n, n) bool over [user ; history ; candidates] of one request, one (query, key) pair at a time."""
    n_hist = len(valid)
    n = n_user + n_hist + n_cand
    kind = ["user"] * n_user + ["static" if p < n_hist - realtime else "realtime" for p in range(n_hist)] \
        + ["cand"] * n_cand
    key_ok = [True] * n_user + [bool(v) for v in valid] + [True] * n_cand
    m = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            if not key_ok[j]:
                continue
            if kind[i] in ("user", "static"):       # static tokens see each other, nothing later
                m[i, j] = kind[j] in ("user", "static")
            elif kind[i] == "realtime":             # every static token, and the real-time ones up to itself
                m[i, j] = kind[j] in ("user", "static") or (kind[j] == "realtime" and j <= i)
            else:                                   # a candidate: user, the whole history, itself
                m[i, j] = kind[j] != "cand" or j == i
    return m


@pytest.mark.parametrize("n_user,realtime", [(3, 0), (3, 4), (0, 2), (2, 9), (1, 20)])
def test_visibility_equals_the_explicit_mask(n_user, realtime):
    valid = torch.tensor([[False, False, True, True, True, True, True, True, True],
                          [False] * 9,
                          [True] * 9])
    got = visibility(n_user, valid, realtime)
    n = n_user + 9
    for r in range(3):
        assert torch.equal(got[r], explicit_mask(n_user, valid[r], realtime, 0)[:n, :n])
    rows = torch.tensor([n - 2, n - 1])  # a slice of query rows (history extension) is the same rows
    assert torch.equal(visibility(n_user, valid, realtime, rows), got[:, rows])


def dense_reference(model, rb: RequestBatch, r: int) -> torch.Tensor:
    """Request r's real candidates scored in ONE forward over [user ; history ; candidates] with the explicit
    mask: each token normalised by its own group's LayerNorms, SiLU weights over the allowed keys / their count,
    rab from the (time, position) of history and candidate tokens, 0 where a user token is involved."""
    ctx = rb.context.select(torch.tensor([r]))
    real = rb.mask[r]
    cs, cd = rb.cand_sparse[r:r + 1, real], rb.cand_dense[r:r + 1, real]
    ch = None if rb.cand_hist is None else rb.cand_hist[r:r + 1, real]
    cht = None if rb.cand_hist_time is None else rb.cand_hist_time[r:r + 1, real]
    xu = model.user_token_states(ctx)[0]
    xh = model.hist_tokens(model.emb.hist(ctx.hist).flatten(-2))[0]
    xc = model.candidate_token_states(cs, cd, ch, cht)[0]
    n_u, n_h, n_c = len(xu), len(xh), len(xc)
    groups = [("user", slice(0, n_u)), ("history", slice(n_u, n_u + n_h)), ("candidate", slice(n_u + n_h, None))]
    x = torch.cat([xu, xh, xc])
    allowed = explicit_mask(n_u, ctx.hist_mask[0], model.cfg.realtime, n_c)
    times = torch.cat([torch.zeros(n_u, dtype=torch.long), ctx.hist_time[0], ctx.time.repeat(n_c)])
    pos = torch.cat([torch.zeros(n_u, dtype=torch.long), torch.arange(n_h), torch.full((n_c,), n_h)])
    is_user = torch.arange(len(x)) < n_u
    for layer in model.layers:
        h, dh = layer.heads, x.shape[-1] // layer.heads
        normed = torch.cat([layer.norm_in.norms[g](x[s]) for g, s in groups])
        u, v, q, k = F.silu(layer.uvqk(normed)).chunk(4, -1)
        bias = layer.bias(times[:, None], times[None, :], pos[:, None] - pos[None, :])
        bias = bias.masked_fill(is_user[:, None] | is_user[None, :], 0.0)
        out = []
        for head in range(h):
            cols = slice(head * dh, (head + 1) * dh)
            w = F.silu(q[:, cols] @ k[:, cols].T + bias) * allowed
            out.append(w @ v[:, cols] / allowed.sum(-1, keepdim=True))
        att = torch.cat(out, -1)
        x = x + layer.out(torch.cat([layer.norm_att.norms[g](att[s]) for g, s in groups]) * u)
    return model.head(model.final_norm(x[n_u + n_h:])).squeeze(-1)


@pytest.mark.parametrize("realtime", [0, 5, 100])
def test_request_scoring_equals_the_dense_masked_reference(tiny, realtime):
    model = _mtgr(tiny, realtime=realtime)
    rb = _requests(tiny, model)
    with torch.no_grad():
        by_request = model.score_request(rb)
        alone = model(rb.flat())       # every candidate scored as an impression of its own
        ref = torch.cat([dense_reference(model, rb, r) for r in range(len(rb.mask))])
    torch.testing.assert_close(by_request[rb.mask], ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(alone, ref, rtol=1e-4, atol=1e-5)


def test_candidates_never_see_each_other(tiny):
    model = _mtgr(tiny)
    rb = _requests(tiny, model)
    r = int(rb.mask.sum(1).argmax())
    c = int(rb.mask[r].sum())
    assert c >= 2
    with torch.no_grad():
        state = model.encode_user(rb.context.select(torch.tensor([r])))
        together = model.score_candidates(state, rb.cand_sparse[r:r + 1, :c], rb.cand_dense[r:r + 1, :c])
        each = torch.cat([model.score_candidates(state, rb.cand_sparse[r:r + 1, i:i + 1],
                                                 rb.cand_dense[r:r + 1, i:i + 1]) for i in range(c)], 1)
        other = rb.cand_sparse[r:r + 1, :c].clone()
        other[0, 1:] = torch.flip(other[0, 1:], [0]) + 1  # every other candidate changed
        changed = model.score_candidates(state, other, rb.cand_dense[r:r + 1, :c])
    torch.testing.assert_close(together, each, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(changed[0, 0], together[0, 0], rtol=1e-5, atol=1e-6)


def test_static_history_is_fully_visible_and_the_realtime_part_causal(tiny):
    """The oldest behavior's keys depend on the newest with realtime = 0 (full visibility), not with realtime
    covering the history (causal); user tokens see the static history only."""
    for realtime, newest_reaches_oldest in [(0, True), (12, False)]:
        model = _mtgr(tiny, realtime=realtime)
        b = batch(tiny, model, n=16, max_len=12)
        b = b.select(torch.nonzero(b.hist_mask.all(1)).squeeze(1))   # full histories
        assert len(b)
        changed = dataclasses.replace(b, hist=b.hist.clone())
        changed.hist[:, -1, 0] = (changed.hist[:, -1, 0] + 1) % tiny.spec.vocab_sizes["item_id"]
        changed.hist[:, -1, 0].clamp_(min=2)
        with torch.no_grad():
            k0, k1 = model.encode_user(b).caches[-1][0], model.encode_user(changed).caches[-1][0]
        n_u = model.n_user
        oldest = slice(n_u, n_u + 1)
        assert (not torch.allclose(k0[:, :, oldest], k1[:, :, oldest])) == newest_reaches_oldest
        assert (not torch.allclose(k0[:, :, :n_u], k1[:, :, :n_u])) == newest_reaches_oldest


def test_group_layer_norm_uses_each_groups_own_parameters(tiny):
    model = _mtgr(tiny)
    layer = model.layers[0]
    assert len({id(layer.norm_in.norms[g].weight) for g in GROUPS} | {id(layer.norm_att.norms[g].weight)
                                                                       for g in GROUPS}) == 6
    torch.manual_seed(3)
    x = {g: torch.randn(2, 5, 16) for g in GROUPS}
    att = torch.randn(2, 2, 5, 8)
    gate = torch.randn(2, 5, 16)
    with torch.no_grad():
        before = {g: (layer.project(x[g], g), layer.finish(x[g], att, gate, g)) for g in GROUPS}
        for changed in GROUPS:
            saved = [layer.norm_in.norms[changed].weight.clone(), layer.norm_att.norms[changed].bias.clone()]
            layer.norm_in.norms[changed].weight.mul_(1.7)
            layer.norm_att.norms[changed].bias.add_(0.5)
            for g in GROUPS:
                proj, fin = layer.project(x[g], g), layer.finish(x[g], att, gate, g)
                same_proj = all(torch.equal(a, b) for a, b in zip(proj, before[g][0]))
                assert same_proj == (g != changed) and torch.equal(fin, before[g][1]) == (g != changed)
            layer.norm_in.norms[changed].weight.copy_(saved[0])
            layer.norm_att.norms[changed].bias.copy_(saved[1])
    # in the whole model: the candidates' norms never touch the user side's cache, the history's do
    rb = _requests(tiny, model)
    with torch.no_grad():
        cache, scores = model.encode_user(rb.context).caches, model.score_request(rb)
        for layer in model.layers:
            layer.norm_in.norms["candidate"].weight.mul_(1.5)
        cache_c, scores_c = model.encode_user(rb.context).caches, model.score_request(rb)
        model.layers[0].norm_in.norms["history"].weight.mul_(1.5)
        cache_h = model.encode_user(rb.context).caches
    assert all(torch.equal(a[0], b[0]) for a, b in zip(cache, cache_c))
    assert not torch.allclose(scores[rb.mask], scores_c[rb.mask])
    assert not torch.allclose(cache[0][0], cache_h[0][0])


def test_needs_and_candidate_sequence_reading(tiny):
    default = _mtgr(tiny)
    assert default.needs.listwise and default.needs.cand_seq is None and not default.needs.content
    model = _mtgr(tiny, cand_seq_len=5)
    assert model.needs.cand_seq == CandidateSequence(5, "content", 0) and model.needs.listwise
    b = batch(tiny, model, n=48, max_len=20)
    assert b.cand_hist is not None and (~b.cand_hist_mask).any() and b.cand_hist_mask.any()
    with pytest.raises(ValueError, match="candidate-specific behaviors"):
        model(dataclasses.replace(b, cand_hist=None, cand_hist_time=None))
    with torch.no_grad():
        out = model(b)
        # the candidate token reads the mean of the valid R_c behaviors (a per-row loop)
        tok = model.candidate_token_states(b.sparse[:, None], b.dense[:, None], b.cand_hist[:, None],
                                           b.cand_hist_time[:, None])[:, 0]
        emb = model.emb
        want = []
        for i in range(len(b)):
            own = torch.cat([emb.sparse(b.sparse[i], model.cand_fields).flatten(),
                             emb.numeric(b.dense[i:i + 1])[0, model.cand_dense].flatten()])
            rows = [emb.hist(b.cand_hist[i, j][None, None])[0, 0].flatten() for j in range(b.cand_hist.shape[1])
                    if b.cand_hist_time[i, j] > 0]
            rc = torch.stack(rows).mean(0) if rows else torch.zeros(len(tiny.spec.hist) * 4)
            want.append(model.cand_tokens(torch.cat([own, rc])))
        torch.testing.assert_close(tok, torch.stack(want), rtol=1e-5, atol=1e-6)
        # padding in R_c is ignored; a real R_c behavior is read
        pad = ~b.cand_hist_mask
        noisy = b.cand_hist.clone()
        smallest = min(tiny.spec.vocab_sizes[tiny.spec.field_vocab[f"hist.{h}"]] for h in tiny.spec.hist)
        noisy[pad] = torch.randint(2, smallest, noisy[pad].shape)
        torch.testing.assert_close(model(dataclasses.replace(b, cand_hist=noisy)), out)
        row = int(torch.nonzero(b.cand_hist_mask.any(1))[0])
        real = b.cand_hist.clone()
        real[row, b.cand_hist_mask[row], 0] = (real[row, b.cand_hist_mask[row], 0] + 7) % 200 + 2
        assert not torch.allclose(model(dataclasses.replace(b, cand_hist=real))[row], out[row])
    rb = _requests(tiny, model)       # request scoring with R_c: still the pointwise scores
    assert rb.cand_hist is not None
    with torch.no_grad():
        torch.testing.assert_close(model.score_request(rb)[rb.mask], model(rb.flat()), rtol=1e-5, atol=1e-5)


def test_extend_user_equals_a_fresh_encoding_when_the_history_is_causal(tiny):
    model = _mtgr(tiny, realtime=64)
    rb = _requests(tiny, model, max_len=14)
    ctx = rb.context
    new = 3
    old = dataclasses.replace(ctx, hist=ctx.hist[:, :-new], hist_time=ctx.hist_time[:, :-new])
    with torch.no_grad():
        state = model.extend_user(model.encode_user(old), ctx, new)
        assert state is not None
        fresh = model.encode_user(ctx)
        for (k, v), (k2, v2) in zip(state.caches, fresh.caches):
            torch.testing.assert_close(k, k2, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(v, v2, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.score_candidates(state, rb.cand_sparse, rb.cand_dense),
                                   model.score_request(rb), rtol=1e-5, atol=1e-6)
        static = _mtgr(tiny)  # realtime 0: earlier states depend on later behaviors, no extension
        assert static.extend_user(static.encode_user(old), ctx, new) is None
