"""LONGER: token merge, the hybrid (cross then self) attention and the KV-cached candidate path, each against a
plain reference: per-group loops, masks built pair by pair, dense attention over the full token set."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ctrscale.batch import RequestBatch
from ctrscale.models.attention import dense_attention
from model_testkit import batch, build, jitter

SMALL = dict(embed_dim=4, dim=8, heads=2, head_hidden=[16])


def _model(tiny, **cfg):
    torch.manual_seed(0)
    return jitter(build(tiny, "longer", **{**SMALL, **cfg}))


def _ragged(tiny, b, lengths):
    """b with the histories cut to the given numbers of most recent behaviors (0: none); the rest padding whose ids
    are random (they must not matter)."""
    n = b.hist.shape[1]
    high = min(tiny.spec.vocab_sizes[tiny.spec.field_vocab[f"hist.{h}"]] for h in tiny.spec.hist)
    keep = torch.arange(n)[None, :] >= n - torch.as_tensor(lengths)[:, None]
    hist = torch.where(keep[..., None], b.hist, torch.randint(2, high, b.hist.shape))
    return dataclasses.replace(b, hist=hist, hist_time=b.hist_time * keep)


def _rows(tiny, model, n, max_len, lengths):
    b = batch(tiny, model, n=n, max_len=max_len)
    full = b.hist_time[:, 0] > 0  # rows whose history fills the window
    b = b.select(torch.nonzero(full).squeeze(1)[:len(lengths)])
    assert len(b) == len(lengths)
    return _ragged(tiny, b, lengths)


# --- token merge ---------------------------------------------------------------------------------------------------

def _inner_reference(block, toks):
    """One InnerTrans block over the real members of a group only, (n, D) -> (n, D), attention written out."""
    q, k, v = block.qkv(block.norm1(toks)).chunk(3, -1)
    h = block.heads
    dh = q.shape[-1] // h
    heads = []
    for i in range(h):
        sl = slice(i * dh, (i + 1) * dh)
        w = torch.softmax(q[:, sl] @ k[:, sl].T / math.sqrt(dh), -1)
        heads.append(w @ v[:, sl])
    x = toks + block.out(torch.cat(heads, -1))
    return x + block.ffn(block.norm2(x))


@pytest.mark.parametrize("merger", ["innertrans", "concat"])
@pytest.mark.parametrize("merge", [1, 3, 4])
def test_token_merge_equals_a_per_group_loop(tiny, merger, merge):
    model = _model(tiny, merger=merger, merge=merge)
    b = _rows(tiny, model, 64, 11, [11, 6, 5, 1, 0])
    with torch.no_grad():
        x = model.behavior_tokens(b.hist, b.hist_time)
        got, valid = model.merge_tokens(x, b.hist_mask)
        n, d = x.shape[1], x.shape[2]
        m = -(-n // merge)
        assert got.shape == (len(b), m, d)
        for r in range(len(b)):
            for g in range(m):  # group g holds positions n - (m - g) * merge .. n - (m - g - 1) * merge - 1
                slots = [n - (m - g) * merge + j for j in range(merge)]
                real = [j for j, p in enumerate(slots) if p >= 0 and b.hist_time[r, p] > 0]
                assert bool(valid[r, g]) == bool(real)
                if not real:
                    continue
                members = torch.zeros(merge, d)
                toks = torch.stack([x[r, slots[j]] for j in real])
                if merger == "innertrans":
                    toks = _inner_reference(model.inner, toks)
                for t, j in zip(toks, real):
                    members[j] = t
                torch.testing.assert_close(got[r, g], model.merge_proj(members.flatten()), rtol=1e-5, atol=1e-6)


def test_merged_groups_of_padding_are_ignored(tiny):
    """Ids in padded slots of partly padded and wholly padded groups change nothing; such groups are masked."""
    model = _model(tiny, merge=4, recent=2)
    b = _rows(tiny, model, 64, 13, [13, 9, 5, 2, 0])
    with torch.no_grad():
        _, valid = model.merge_tokens(model.behavior_tokens(b.hist, b.hist_time), b.hist_mask)
        assert valid.tolist() == [[True] * 4, [False, True, True, True], [False, False, True, True],
                                  [False, False, False, True], [False] * 4]
        out = model(b)
        for seed in range(3):
            torch.manual_seed(seed)
            again = _ragged(tiny, b, [13, 9, 5, 2, 0])
            torch.testing.assert_close(model(again), out)
        assert torch.isfinite(out).all()


# --- the full token set, with every mask entry written out -----------------------------------------------------------

def _kinds(model, b):
    """Merged tokens and validity, user-side global tokens, the sampled merged indices."""
    merged, valid = model.merge_tokens(model.behavior_tokens(b.hist, b.hist_time), b.hist_mask)
    user = model.global_user_tokens(b.sparse)
    m = merged.shape[1]
    return merged, valid, user, list(range(m - min(model.cfg.recent, m), m))


def _allowed(queries, keys, valid):
    """(R, Q, N) by the rules, pair by pair. Tokens: ("cand",), ("glob",) or ("seq", merged index)."""
    def real(r, key):
        return key[0] != "seq" or bool(valid[r, key[1]])

    def sees(q, key):
        if q[0] == "cand":
            return True                       # the candidate sees every real token
        if key[0] == "cand":
            return False                      # nothing on the user side sees the candidate
        if q[0] == "glob" or key[0] == "glob":
            return True                       # user-side globals see and are seen by all
        return key[1] <= q[1]                 # merged tokens: causal
    return torch.tensor([[[real(r, k) and sees(q, k) for k in keys] for q in queries] for r in range(len(valid))])


def _full_reference(model, b, cand_sparse):
    """Dense attention over [candidate; profile; CLS; merged] with the mask built above, per candidate.
    -> (R, C) logits, (C, R, Q_user, D) final user-side states."""
    merged, valid, user, sampled = _kinds(model, b)
    g = user.shape[1]
    tokens = [("cand",)] + [("glob",)] * g + [("seq", j) for j in range(merged.shape[1])]
    queries = [("cand",)] + [("glob",)] * g + [("seq", j) for j in sampled]
    rows = list(range(1 + g)) + [1 + g + j for j in sampled]
    first, later = _allowed(queries, tokens, valid), _allowed(queries, queries, valid)
    logits, states = [], []
    for c in range(cand_sparse.shape[1]):
        cand = model.candidate_tokens(cand_sparse[:, c:c + 1], b)
        x = torch.cat([cand, user, merged], 1)
        for i, block in enumerate(model.blocks):
            q, k, v = block.project(x)
            if i == 0:
                q, x, allowed = q[:, :, rows], x[:, rows], first
            else:
                allowed = later
            x = block.finish(x, dense_attention(q, k, v, allowed.unsqueeze(1)))
        other = model.emb.other_flat(cand_sparse[:, c], b.dense)
        feats = [model.final_norm(x[:, 0]), model.emb.profile(b.sparse).flatten(-2), other]
        logits.append(model.head(torch.cat(feats, -1)).squeeze(-1))
        states.append(x[:, 1:])
    return torch.stack(logits, 1), torch.stack(states)


def _candidates(tiny, b, c, seed=0):
    """(R, C, F) candidates of each row's request: its own user/context fields, the item fields of other rows."""
    g = torch.Generator().manual_seed(seed)
    items = tiny.spec.sparse_of_role("item")
    cand = b.sparse.unsqueeze(1).repeat(1, c, 1)
    for j in range(c):
        cand[:, j, items] = b.sparse[torch.randperm(len(b), generator=g)][:, items]
    return cand


def test_cross_attention_layer_equals_dense_attention_with_an_explicit_mask(tiny):
    """layers = 1: the user-side states are dense attention of [globals; sampled] over [globals; all merged]."""
    model = _model(tiny, layers=1, merge=3, recent=3)
    b = _rows(tiny, model, 64, 20, [20, 14, 8, 3, 1, 0])
    with torch.no_grad():
        merged, valid, user, sampled = _kinds(model, b)
        g = user.shape[1]
        keys = [("glob",)] * g + [("seq", j) for j in range(merged.shape[1])]
        queries = [("glob",)] * g + [("seq", j) for j in sampled]
        x = torch.cat([user, merged], 1)
        block = model.blocks[0]
        q, k, v = block.project(x)
        rows = list(range(g)) + [g + j for j in sampled]
        want = block.finish(x[:, rows], dense_attention(q[:, :, rows], k, v, _allowed(queries, keys, valid)[:, None]))
        state = model.encode_user(b)
        torch.testing.assert_close(state.history, want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(state.caches[0][0], k)
        assert len(sampled) == 3 and state.history.shape[1] == g + 3


@pytest.mark.parametrize("cfg", [dict(merge=4, recent=3), dict(merge=3, recent=50, cls_tokens=2),
                                 dict(merger="concat", merge=2, recent=0, layers=3)])
def test_cached_candidates_equal_the_full_token_set(tiny, cfg):
    model = _model(tiny, **cfg)
    b = _rows(tiny, model, 64, 11, [11, 7, 4, 1, 0])
    with torch.no_grad():
        want, _ = _full_reference(model, b, b.sparse[:, None])
        torch.testing.assert_close(model(b), want[:, 0], rtol=1e-4, atol=1e-5)


def test_request_scoring_at_length_100_with_5_candidates(tiny):
    """score_request (encode_user once, 5 candidates vectorised) == pointwise == the full-token-set reference."""
    model = _model(tiny, merge=4, recent=8)
    b = _rows(tiny, model, 128, 100, [100, 77, 40, 13, 1, 0])
    cand = _candidates(tiny, b, 5)
    rb = RequestBatch(context=b, cand_sparse=cand, cand_dense=b.dense[:, None].repeat(1, 5, 1),
                      label=torch.zeros(len(b), 5), mask=torch.ones(len(b), 5, dtype=torch.bool))
    with torch.no_grad():
        by_request = model.score_request(rb)
        pointwise = model(rb.flat()).view(len(b), 5)
        want, _ = _full_reference(model, b, cand)
    torch.testing.assert_close(by_request, pointwise, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(by_request, want, rtol=1e-4, atol=1e-5)
    assert by_request.std() > 0


def test_user_side_states_do_not_depend_on_the_candidate(tiny):
    """In the full token set, the profile, CLS and sampled states are the same whatever the candidate, and equal
    what encode_user caches once per request."""
    model = _model(tiny, merge=4, recent=4, cls_tokens=2)
    b = _rows(tiny, model, 64, 19, [19, 10, 3, 0])
    with torch.no_grad():
        logits, states = _full_reference(model, b, _candidates(tiny, b, 4, seed=1))
        assert (logits[:, :1] - logits[:, 1:]).abs().max() > 1e-4       # the candidates do matter
        for c in range(1, 4):
            torch.testing.assert_close(states[c], states[0], rtol=0, atol=0)
        torch.testing.assert_close(model.encode_user(b).history, states[0], rtol=1e-5, atol=1e-6)


def test_queries_are_the_most_recent_merged_tokens(tiny):
    """recent = s: s merged queries at any length; fewer merged tokens than s: all of them; 0: globals only."""
    for recent, n, want in [(3, 20, 3), (50, 20, 5), (0, 20, 0)]:
        model = _model(tiny, merge=4, recent=recent, cls_tokens=1)
        b = _rows(tiny, model, 64, n, [n, 2])
        with torch.no_grad():
            state = model.encode_user(b)
        assert state.history.shape[1] == 2 + want                          # profile + CLS + sampled
        assert state.caches[0][0].shape[2] == 2 + 5                        # layer 1 keys: globals + all merged
        assert state.caches[1][0].shape[2] == 2 + want                     # later layers: the queries


def test_reference_kernels_give_the_same_scores(tiny):
    """The whole model on the attention references (dense masked softmax, dense candidate attention) equals its own
    path, pointwise and by request."""
    from ctrscale.models.attention import attention_implementation
    model = _model(tiny, merge=3, recent=2)
    b = _rows(tiny, model, 64, 10, [10, 4, 0])
    rb = batch(tiny, model, n=64, max_len=10, listwise=True)
    with torch.no_grad():
        own = model(b), model.score_request(rb)[rb.mask]
        with attention_implementation("reference"):
            ref = model(b), model.score_request(rb)[rb.mask]
    for a, r in zip(own, ref):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


def test_an_empty_history_gives_the_candidate_its_own_gap_row(tiny):
    """With no behavior there is no latest one to measure the request's gap from: the candidate token reads the
    reserved row (129), so the request time cannot move the score, and with a behavior it does."""
    model = _model(tiny)
    b = batch(tiny, model, n=8, max_len=12)
    empty = _ragged(tiny, b, [0] * 8)
    later = dataclasses.replace(empty, time=empty.time + 86_400 * 365)
    with torch.no_grad():
        torch.testing.assert_close(model(later), model(empty))
        with_history = _ragged(tiny, b, [3] * 8)
        moved = dataclasses.replace(with_history, time=with_history.time + 86_400 * 365)
        assert not torch.allclose(model(moved), model(with_history))
        before = model(empty)
        model.gap_emb.weight[129].add_(1.0)                  # the reserved row is the one read
        assert not torch.allclose(model(empty), before)
