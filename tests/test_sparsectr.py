"""SparseCTR mechanisms: chunking, each EvoAttention branch against a dense masked reference, RelTemporal values,
candidate independence, no (L, L) tensor on the sparse path, listwise training."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ctrscale.data.loader import Loader, LoaderConfig
from ctrscale.models.attention import RelativeEncoding, chunk_ids, dense_attention, make_chunks
from ctrscale.models.attention.chunks import chunk_ids_reference
from ctrscale.models.attention.evo import (
    causal_full_attention,
    causal_linear_attention,
    causal_linear_reference,
    local_window_attention,
    local_window_reference,
)
from ctrscale.models.registry import build_model
from ctrscale.models.sparsectr import ALTERNATIVES, SPARSITY, VARIANTS, SparseCTRConfig, _Sequence
from ctrscale.train.config import load_config
from ctrscale.train.loop import fit

DAY = 86400


def _histories(r=7, n=23, seed=0):
    """Right-aligned histories of lengths 0, 1, 2, n and random, with repeated timestamps and long gaps."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([0, 1, 2, n] + torch.randint(3, n, (r - 4,), generator=g).tolist())
    gaps = torch.randint(0, 4, (r, n), generator=g) ** 3 * torch.randint(1, 5000, (r, n), generator=g)
    times = 1_000_000_000 + torch.cumsum(gaps, 1)
    valid = torch.arange(n) >= (n - lengths)[:, None]
    return times * valid, valid


def test_time_chunking_cuts_at_the_largest_gaps():
    t = torch.tensor([[0, 0, 10, 20, 100, 110, 1000]])
    ids = chunk_ids(t, t > 0, 3)
    assert ids.tolist() == [[0, 0, 1, 1, 2, 2, 3]]
    # Same-second behaviors are never split: only one positive gap, so two chunks whatever P is.
    t = torch.tensor([[5, 5, 5, 9, 9]])
    assert chunk_ids(t, t > 0, 8).tolist() == [[1, 1, 1, 2, 2]]


@pytest.mark.parametrize("p", [1, 2, 4, 16, 40])
def test_time_chunking_equals_loop_reference(p):
    times, valid = _histories()
    ids = chunk_ids(times, valid, p)
    torch.testing.assert_close(ids, chunk_ids_reference(times, valid, p))
    assert (ids[0] == 0).all() and ids[1].max() == 1          # empty and one-behavior histories
    assert (ids.amax(1) <= p).all()


def test_fixed_chunking_gives_equal_counts():
    times, valid = _histories()
    ids = chunk_ids(times, valid, 4, "fixed")
    for u in range(len(ids)):
        sizes = torch.bincount(ids[u][valid[u]])[1:]
        assert len(sizes) == min(4, int(valid[u].sum())) and (sizes.max() - sizes.min() <= 1 if len(sizes) else True)


def test_chunk_summaries_and_transition_positions():
    times, valid = _histories()
    p, m = 5, 2
    ch = make_chunks(chunk_ids(times, valid, p), times, p, m)
    x = torch.randn(*valid.shape, 3)
    for u in range(len(ch.id)):
        for c in range(1, p + 1):
            pos = torch.nonzero(ch.id[u] == c).squeeze(1)
            assert bool(ch.valid[u, c - 1]) == (len(pos) > 0)
            if len(pos):
                torch.testing.assert_close((ch.members[u] @ x[u])[c - 1], x[u, pos].mean(0))
                assert ch.time[u, c - 1].item() == pytest.approx(times[u, pos].double().mean().item())
                got = ch.trans_idx[u, (c - 1) * m:c * m][ch.trans_valid[u, (c - 1) * m:c * m]]
                assert sorted(got.tolist()) == pos[-m:].tolist()
            else:
                assert not ch.trans_valid[u, (c - 1) * m:c * m].any()


def test_reltemporal_values():
    enc = RelativeEncoding("reltemporal", heads=4, head_dim=2)
    sat = 2 * DAY  # 1970-01-03 was a Saturday
    tq = torch.tensor([[[sat + 5 * 3600 + 3 * DAY]]])   # Tuesday, 3 days 5 hours later
    tk = torch.tensor([[[sat]]])
    got = enc(tq, tk, torch.zeros(1), torch.zeros(1))[0, :, 0, 0]
    slope = torch.tensor([(2 ** (-8 / 4)) ** h for h in range(4)])
    dt = 3 * DAY + 5 * 3600
    want = -(math.floor(math.log2(dt)) + math.sin(math.pi * 5 / 24) + 1.0) * slope
    torch.testing.assert_close(got, want)
    # dt < 1 s is bucket 0; same weekday half, same hour: no bias
    assert enc(tk, tk, torch.zeros(1), torch.zeros(1)).abs().max() == 0


@pytest.mark.parametrize("kind", ["reltemporal", "no-time", "no-hour", "weekend-only", "alibi", "t5", "hstu", "none"])
def test_bias_lookup_equals_the_formula(kind):
    """bias_mask (codes gathered from a per-head table: the fast path) equals forward()'s formula where a key is
    allowed and is NEG elsewhere; query times are integer seconds, key times also chunk means (float)."""
    parts = {"no-time": (False, True, True), "no-hour": (True, False, True), "weekend-only": (False, False, True)}
    enc = RelativeEncoding("reltemporal" if kind in parts else kind, 3, 4, *parts.get(kind, (True, True, True)))
    for p in enc.parameters():
        torch.nn.init.normal_(p)
    times, valid = _histories(r=6, n=40)
    tq, pq = times[:, :, None], torch.arange(40.0)[:, None]
    for tk, pk in [(times[:, None, :], torch.arange(40.0)[None, :]),
                   (times[:, None, ::3].double() + 0.5, torch.arange(0.0, 40.0, 3.0)[None, :] + 0.5)]:
        allowed = torch.rand(6, 40, tk.shape[-1]) > 0.3
        got = enc.bias_mask(tq, tk, pq, pk, allowed)
        want = enc(tq, tk, pq, pk)
        want = torch.zeros(1, 6, 40, tk.shape[-1]) if want is None else want.transpose(0, 1)
        torch.testing.assert_close(got[:, allowed], want.expand(got.shape)[:, allowed])
        assert (got[:, ~allowed] == torch.finfo(torch.float32).min / 2).all()


@pytest.mark.parametrize("encoding", ["reltemporal", "alibi", "t5", "hstu", "none"])
@pytest.mark.parametrize("w", [1, 3, 5])
def test_local_window_equals_dense_reference(encoding, w):
    times, valid = _histories()
    r, n = valid.shape
    enc = RelativeEncoding(encoding, heads=2, head_dim=4)
    for p in enc.parameters():
        torch.nn.init.normal_(p)
    q, k, v = (torch.randn(2, r, n, 4, requires_grad=True) for _ in range(3))    # heads first
    ku, vu = torch.randn(2, r, 4), torch.randn(2, r, 4)
    for user in [(None, None), (ku, vu)]:
        fast = local_window_attention(q, k, v, times, valid, w, enc, *user)
        ref = local_window_reference(q, k, v, times, valid, w, enc, *user)
        rows = valid[None, :, :, None].expand_as(fast)            # padded query rows are never read
        torch.testing.assert_close(fast[rows], ref[rows])
        g1 = torch.autograd.grad((fast * rows).sum(), (q, k, v))
        g2 = torch.autograd.grad((ref * rows).sum(), (q, k, v))
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("block", [1, 4, 64])
def test_blocked_full_attention_equals_dense_reference(block):
    """A1's query blocks (each reading keys up to its own end) equal causal attention over the whole square."""
    times, valid = _histories()
    r, n = valid.shape
    enc = RelativeEncoding("reltemporal", heads=2, head_dim=4)
    torch.nn.init.normal_(enc.slopes)
    q, k, v = (torch.randn(2, r, n, 4, requires_grad=True) for _ in range(3))
    pos = torch.arange(n)
    allowed = (pos[:, None] >= pos[None, :]) & (valid[:, None, :] | torch.eye(n, dtype=torch.bool))
    bias = enc(times[:, :, None], times[:, None, :], pos[:, None].float(), pos[None, :].float()).transpose(0, 1)
    fast = causal_full_attention(q, k, v, times, valid, enc, block)
    ref = dense_attention(q, k, v, allowed, bias)
    torch.testing.assert_close(fast, ref)
    for a, b in zip(torch.autograd.grad(fast.sum(), (q, k, v, enc.slopes)),
                    torch.autograd.grad(ref.sum(), (q, k, v, enc.slopes))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_linear_attention_equals_dense_kernel_reference():
    times, valid = _histories()
    r, n = valid.shape
    q, k, v = (torch.randn(2, r, n, 4) for _ in range(3))
    torch.testing.assert_close(causal_linear_attention(q, k, v, valid), causal_linear_reference(q, k, v, valid))


def _layer_and_inputs(cfg: SparseCTRConfig, seed=0):
    """One EvoAttention layer with random weights and a _Sequence over the test histories."""
    from ctrscale.models.sparsectr import EvoAttention
    torch.manual_seed(seed)
    times, valid = _histories(seed=seed)
    r, n = valid.shape
    attn = EvoAttention(8, 2, cfg)
    for p in attn.enc.parameters():
        torch.nn.init.normal_(p)
    p, m, _ = cfg.resolved()
    ch = make_chunks(chunk_ids(times, valid, p), times, p, m)
    seq = _Sequence(valid, times, torch.arange(n), ch, ch.trans_idx, ch.trans_valid)
    if cfg.attention == "dilated":
        idx = torch.arange(n - 1, -1, -cfg.dilation).flip(0).expand(r, -1)
        seq = dataclasses.replace(seq, trans_idx=idx, trans_valid=valid.gather(1, idx))
    return attn, torch.randn(r, n, 8), torch.randn(r, 8), seq


def _dense(attn, x, user, seq, cfg, cand=None, t_cand=None):
    """Every branch over all L keys with an explicit (Lq, L) or (Lq, P) mask, chunks from the loop reference,
    bias from enc.forward, heads second (R, H, ..) and moved first for _fuse. Queries are the behaviors, or with
    `cand` (R, C, D) candidates at position L and the request time t_cand (R,)."""
    r, n = seq.valid.shape
    p, m, w = cfg.resolved()
    heads = lambda t: t.unflatten(-1, (2, -1)).transpose(1, 2)  # noqa: E731
    k, v = (heads(t) for t in attn.kv(x).chunk(2, -1))
    ku, vu = (t.unflatten(-1, (2, -1)) for t in attn.kv(user).chunk(2, -1))
    pos = torch.arange(n)
    if cand is None:
        q, qpos, tq = heads(attn.q(x)), pos, seq.times
    else:
        q, qpos = heads(attn.q(cand)), torch.full((cand.shape[1],), n)
        tq = t_cand[:, None].expand(r, cand.shape[1])
    before = qpos[:, None] > pos[None, :]                                 # (Lq, L) key strictly before query
    pair_bias = attn.enc(tq[:, :, None], seq.times[:, None, :], qpos[:, None].float(), pos[None, :].float())
    pair_bias = torch.zeros(1, 1, 1, 1) if pair_bias is None else pair_bias
    ids = chunk_ids_reference(seq.times, seq.valid, p)
    outs = []
    for name in attn.branches:
        if name == "global":
            kp, vp = torch.zeros(r, p, 8), torch.zeros(r, p, 8)
            ct, cp, cv = torch.zeros(r, p, dtype=torch.float64), torch.zeros(r, p), torch.zeros(r, p, dtype=torch.bool)
            for u in range(r):
                for c in range(1, int(ids[u].max()) + 1):
                    mem = ids[u] == c
                    kp[u, c - 1] = k.transpose(1, 2).flatten(-2)[u, mem].mean(0)
                    vp[u, c - 1] = v.transpose(1, 2).flatten(-2)[u, mem].mean(0)
                    ct[u, c - 1], cp[u, c - 1] = seq.times[u, mem].double().mean(), pos[mem].float().mean()
                    cv[u, c - 1] = True
            own = ids if cand is None else torch.full((r, len(qpos)), p + 1)  # a candidate comes after every chunk
            allowed = (torch.arange(1, p + 1) < own[:, :, None]) & cv[:, None, :]
            bias = attn.enc(tq[:, :, None], ct[:, None, :], qpos[:, None].float(), cp[:, None, :])
            bias = 0.0 if bias is None else bias
            outs.append(dense_attention(q, heads(attn.agg_k(kp)), heads(attn.agg_v(vp)), allowed[:, None], bias))
        elif name == "transition":
            keys = torch.zeros(r, n, dtype=torch.bool)
            if cfg.attention == "dilated":
                keys[:, torch.arange(n - 1, -1, -cfg.dilation)] = True
                keys &= seq.valid
            else:
                for u in range(r):
                    for c in range(1, int(ids[u].max()) + 1):
                        keys[u, torch.nonzero(ids[u] == c).squeeze(1)[-m:]] = True
            outs.append(dense_attention(q, k, v, (keys[:, None, :] & before)[:, None], pair_bias))
        elif name == "local":
            reach = w if cand is not None else w - 1  # a behavior's window holds itself, a candidate's does not
            window = (qpos[:, None] - pos[None, :] <= reach) & (qpos[:, None] >= pos[None, :])
            allowed = torch.cat([window & seq.valid[:, None, :], torch.ones(r, len(qpos), 1, dtype=torch.bool)], -1)
            kk, vv = torch.cat([k, ku.unsqueeze(2)], 2), torch.cat([v, vu.unsqueeze(2)], 2)
            bias = torch.nn.functional.pad(pair_bias.expand(r, 2, len(qpos), n), (0, 1))
            outs.append(dense_attention(q, kk, vv, allowed[:, None], bias))
        elif name == "full":
            allowed = (qpos[:, None] >= pos[None, :]) & (seq.valid[:, None, :] | (qpos[:, None] == pos[None, :]))
            outs.append(dense_attention(q, k, v, allowed[:, None], pair_bias))
    return attn._fuse([o.transpose(0, 1) for o in outs])


CASES = {"S1": {"sparsity": "S1"}, "S2": {}, "S3-t5": {"sparsity": "S3", "encoding": "t5"},
         "alibi": {"encoding": "alibi"}, "hstu": {"encoding": "hstu"}, "A1": VARIANTS["A1"], "A2": VARIANTS["A2"],
         "A3": VARIANTS["A3"], "A4": VARIANTS["A4"], "B1": VARIANTS["B1"], "B3": VARIANTS["B3"],
         "dilated": {"attention": "dilated", "dilation": 3}}


@pytest.mark.parametrize("case", sorted(CASES))
def test_evo_attention_equals_dense_reference(case):
    """Behaviors and candidates, each branch against its explicit mask (global: earlier chunks, all for a
    candidate; transition: chunk ends strictly before; local: the last w up to the query + the user token)."""
    cfg = SparseCTRConfig(**CASES[case])
    attn, x, user, seq = _layer_and_inputs(cfg)
    fast, cache = attn.behaviors(x, user, seq)
    ref = _dense(attn, x, user, seq, cfg)
    rows = seq.valid.unsqueeze(-1).expand_as(fast)
    torch.testing.assert_close(fast[rows], ref[rows], rtol=1e-4, atol=1e-5)
    cand, t_cand = torch.randn(x.shape[0], 3, 8), seq.times.amax(1) + 60
    torch.testing.assert_close(attn.candidates(cand, cache, seq.valid.shape[1], t_cand),
                               _dense(attn, x, user, seq, cfg, cand, t_cand), rtol=1e-4, atol=1e-5)


def _sample(tiny, n=128, max_len=20):
    loader = Loader(tiny, "valid", LoaderConfig(batch_size=n, max_len=max_len, listwise=True, shuffle=True), seed=3)
    return next(iter(loader))


@pytest.mark.parametrize("extra", [{}, VARIANTS["A1"], {"attention": "dilated"}, {"attention": "linear"}])
def test_candidates_do_not_influence_each_other(tiny, extra):
    torch.manual_seed(0)
    model = build_model(tiny.spec, {"name": "sparsectr", **extra}).eval()
    rb = _sample(tiny)
    with torch.no_grad():
        state = model.encode_user(rb.context)
        base = model.score_candidates(state, rb.cand_sparse, rb.cand_dense)
        perm = torch.randperm(rb.num_candidates)
        permuted = model.score_candidates(state, rb.cand_sparse[:, perm], rb.cand_dense[:, perm])
        alone = model.score_candidates(state, rb.cand_sparse[:, :1], rb.cand_dense[:, :1])
    torch.testing.assert_close(permuted, base[:, perm])
    torch.testing.assert_close(alone[:, 0], base[:, 0])


class _Allocations(TorchDispatchMode):
    """The largest tensor any op returns, and the elements all ops return together."""
    def __init__(self):
        super().__init__()
        self.largest = self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
                self.total += t.numel()
        return out


@pytest.mark.parametrize("extra", [{}, {"sparsity": "S4"}, {"attention": "linear"}, {"chunking": "similarity"}])
def test_sparse_path_memory_grows_linearly_in_length(tiny, extra):
    """Forward + backward with full histories of L = 256 and 512: the sparse path's largest tensor doubles and
    all its allocations together at most double (O(L (|P| + m|P| + w)) plus constants); A1's allocations grow
    ~3x (its query blocks hold half of the (L, L) scores) while its largest tensor, one block's, doubles."""
    rb = _sample(tiny, n=16)
    r, f = rb.context.hist.shape[0], rb.context.hist.shape[2]

    def largest(cfg, n):
        full = dataclasses.replace(rb.context, hist=torch.full((r, n, f), 3),
                                   hist_time=(torch.arange(1, n + 1) * 1000).expand(r, n))
        torch.manual_seed(0)
        model = build_model(tiny.spec, {"name": "sparsectr", **cfg})
        with _Allocations() as probe:
            logits = model.score_request(dataclasses.replace(rb, context=full))
            logits[rb.mask].sum().backward()
        return probe.largest, probe.total

    (a_big, a_all), (a_small, a_all_small) = largest(VARIANTS["A1"], 512), largest(VARIANTS["A1"], 256)
    assert a_big / a_small == pytest.approx(2, rel=0.05) and a_all / a_all_small > 2.7
    (s_big, s_all), (s_small, s_all_small) = largest(extra, 512), largest(extra, 256)
    assert s_big / s_small == pytest.approx(2, rel=0.05) and s_all / s_all_small < 2.05


@pytest.mark.parametrize("name", sorted({**VARIANTS, **ALTERNATIVES, **{k: {"sparsity": k} for k in SPARSITY}}))
def test_every_variant_runs_and_learns(tiny, name):
    extra = {**VARIANTS, **ALTERNATIVES}.get(name, {"sparsity": name})
    torch.manual_seed(0)
    model = build_model(tiny.spec, {"name": "sparsectr", "embed_dim": 8, "dim": 16, "heads": 2, **extra})
    rb = _sample(tiny, n=32, max_len=12)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = bce(model.score_request(rb)[rb.mask], rb.label[rb.mask])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses) and losses[-1] < 0.8 * losses[0]


def test_listwise_training_run_resumes_exactly(tiny, tmp_path):
    """fit() trains SparseCTR on whole requests; stopping after 3 steps and resuming gives the same result."""
    common = [f"out_dir={tmp_path}", "data.name=null", f"data.path={tiny.root}", "model.name=sparsectr",
              "model.dim=16", "model.embed_dim=8", "model.heads=2", "train.epochs=1", "data.batch_size=256",
              "train.progress=false", "data.max_len=20", "train.checkpoint_every=0", "data.length_window=2"]
    whole = fit(load_config(None, [*common, "name=whole"]))
    part = fit(load_config(None, [*common, "name=part", "train.max_steps=3"]))
    assert part.step == 3
    resumed = fit(load_config(None, [*common, "name=part"]), resume=True)
    assert resumed.test["auc"] == pytest.approx(whole.test["auc"], abs=1e-6)
    assert whole.config["data"]["listwise"] is None and whole.test["auc"] > 0.55


def test_rope_scores_depend_on_relative_position_only():
    enc = RelativeEncoding("rope", heads=2, head_dim=6)
    q, k = torch.randn(1, 2, 5, 6), torch.randn(1, 2, 5, 6)
    pos = torch.arange(5)
    scores = lambda shift: enc.rotate(q, pos + shift) @ enc.rotate(k, pos + shift).transpose(-1, -2)  # noqa: E731
    torch.testing.assert_close(scores(0), scores(37), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(scores(0), q @ k.transpose(-1, -2))
