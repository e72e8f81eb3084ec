"""The GSU data transform: R_c equals a per-row brute-force search, for soft (content) and hard (category) search."""
from __future__ import annotations

import numpy as np
import pytest

from ctrscale.data import gsu
from ctrscale.batch import CandidateSequence
from ctrscale.data.loader import Loader, LoaderConfig


def _rows(data, n=200, split="train"):
    sp = data.split(split)
    idx = np.arange(min(n, len(sp)))
    rows = sp.take(idx)
    return rows["sparse"], rows["hist_start"], rows["hist_end"]


def _brute(data, cfg: CandidateSequence, sparse, start, end):
    """One row at a time: score every behavior of the searched range, keep the best K, in time order."""
    spec = data.spec
    content = data.content().astype(np.float64)
    content /= np.maximum(np.linalg.norm(content, axis=1, keepdims=True), 1e-12)
    field = spec.hist.index(spec.content_key) if cfg.by == "content" else spec.hist.index(cfg.by)
    col = spec.hist_to_sparse[field]
    out = []
    for r in range(len(sparse)):
        lo = max(start[r], end[r] - cfg.source_len) if cfg.source_len else start[r]
        pos = np.arange(lo, end[r])
        keys = data.log_ids[pos, field]
        cand = sparse[r, col]
        if cfg.by == "content":
            score = (content[keys] @ content[cand]).astype(np.float32)
            best = pos[np.lexsort((-pos, -score))[:cfg.length]]  # best cosine first, ties: most recent first
        else:
            best = pos[keys == cand][-cfg.length:]
        out.append(np.sort(best))
    return out


def _check(data, cfg, picked, brute, sparse):
    k = cfg.length
    for r, want in enumerate(brute):
        valid = picked["cand_hist_time"][r] > 0
        assert valid.sum() == len(want), r
        assert not valid[:k - len(want)].any(), "padding sits on the left"
        got_ids = picked["cand_hist"][r][valid]
        np.testing.assert_array_equal(got_ids, data.log_ids[want])
        np.testing.assert_array_equal(picked["cand_hist_time"][r][valid], data.log_time[want])
        assert np.all(np.diff(picked["cand_hist_time"][r][valid]) >= 0), "time order"
        assert (picked["cand_hist"][r][~valid] == 0).all()


@pytest.mark.parametrize("source_len", [0, 30])
def test_soft_search_equals_brute_force(tiny, source_len):
    cfg = CandidateSequence(length=8, by="content", source_len=source_len)
    sparse, start, end = _rows(tiny)
    picked = tiny.searcher(cfg)(sparse, start, end)
    brute = _brute(tiny, cfg, sparse, start, end)
    _check(tiny, cfg, picked, brute, sparse)


def test_hard_search_takes_the_most_recent_same_category(tiny):
    cfg = CandidateSequence(length=6, by="category")
    sparse, start, end = _rows(tiny)
    _check(tiny, cfg, tiny.searcher(cfg)(sparse, start, end), _brute(tiny, cfg, sparse, start, end), sparse)


def test_chunked_cosines_equal_the_item_table(tiny, monkeypatch):
    cfg = CandidateSequence(length=8, source_len=40)
    sparse, start, end = _rows(tiny)
    with_table = tiny.searcher(cfg)(sparse, start, end)
    monkeypatch.setattr(gsu, "TABLE_MAX_ITEMS", 0)
    monkeypatch.setattr(gsu, "CHUNK_FLOATS", 5000)  # several row chunks
    chunked = gsu.Searcher(tiny, cfg)
    assert chunked.table is None
    without = chunked(sparse, start, end)
    for k in with_table:
        np.testing.assert_array_equal(with_table[k], without[k])


def test_short_and_empty_histories_pad(tiny):
    cfg = CandidateSequence(length=8)
    sparse, start, end = _rows(tiny, n=400)
    short = (end - start) < 8
    assert short.any()
    picked = tiny.searcher(cfg)(sparse, start, end)
    np.testing.assert_array_equal((picked["cand_hist_time"] > 0).sum(1), np.minimum(end - start, 8))


def test_searches_beyond_the_recent_window(tiny):
    """R_c comes from the whole history, not only the max_len most recent behaviors R_u holds."""
    cfg = CandidateSequence(length=8)
    loader = Loader(tiny, "test", LoaderConfig(batch_size=256, max_len=10, cand_seq=cfg, shuffle=False))
    b = next(iter(loader))
    oldest_recent = b.hist_time.masked_fill(~b.hist_mask, 2 ** 62).min(1).values
    older = (b.cand_hist_time > 0) & (b.cand_hist_time < oldest_recent[:, None])
    assert older.any()


def test_bad_settings_are_clear_errors(tiny):
    with pytest.raises(ValueError, match="not a behavior field"):
        gsu.Searcher(tiny, CandidateSequence(by="colour"))
    with pytest.raises(ValueError, match="length"):
        CandidateSequence(length=0)


def test_split_search_is_cached_and_equals_the_direct_search(tiny):
    cfg = CandidateSequence(length=5, source_len=25)
    sparse, start, end = _rows(tiny, n=len(tiny.split("valid")), split="valid")
    direct = gsu.Searcher(tiny, cfg)(sparse, start, end)
    idx = np.random.default_rng(0).permutation(len(sparse))[:300]
    first = gsu.Searcher(tiny, cfg)
    taken = first.take("valid", idx)
    cache = tiny.root / "gsu" / f"content-k5-s25-v{gsu.CACHE_VERSION}-{tiny.meta['fingerprint']}" / "valid.npy"
    assert cache.exists()
    again = gsu.Searcher(tiny, cfg).take("valid", idx)  # read back from disk
    for k in direct:
        np.testing.assert_array_equal(taken[k], direct[k][idx])
        np.testing.assert_array_equal(again[k], direct[k][idx])


def test_category_resolves_to_the_coarsest_aligned_behavior_field(tiny, ml1m):
    assert gsu.category_field(tiny.spec) == "category"  # a field of that name wins
    assert gsu.category_field(ml1m.spec) == "genre"     # ml1m: genre (item_id is the content key, rating unaligned)
    cfg = CandidateSequence(length=6, by="category")
    sparse, start, end = _rows(ml1m, n=100)
    want = _brute(ml1m, CandidateSequence(length=6, by="genre"), sparse, start, end)
    _check(ml1m, cfg, ml1m.searcher(cfg)(sparse, start, end), want, sparse)
