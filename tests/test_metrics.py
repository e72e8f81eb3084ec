"""Metrics against independent references (scikit-learn, scipy, per-group Python loops)."""

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import log_loss, roc_auc_score

from ctrscale import metrics as M


def _tied_data(rng, n, levels=4):
    """Labels with both classes and scores on a few distinct values, so ties are everywhere."""
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = rng.integers(0, levels, n) / levels + 0.1 * y * rng.integers(0, 2, n)
    return y, s


def _reference_gauc(y, s, g):
    """Per-group sklearn AUC in a plain loop (the DIN definition, written independently)."""
    num = den = 0.0
    aucs, skipped = [], 0
    for key in dict.fromkeys(g.tolist()):
        m = g == key
        if len(set(y[m].tolist())) < 2:
            skipped += 1
            continue
        a = roc_auc_score(y[m], s[m])
        aucs.append(a)
        num += m.sum() * a
        den += m.sum()
    if not aucs:
        return math.nan, math.nan, 0, skipped
    return num / den, float(np.mean(aucs)), len(aucs), skipped


# ---------------------------------------------------------------- AUC


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n", [2, 3, 5, 17, 100, 1000, 5000])
@pytest.mark.parametrize("levels", [1, 2, 5, 50])
def test_auc_matches_sklearn_with_ties(seed, n, levels):
    y, s = _tied_data(np.random.default_rng(seed), n, levels)
    assert M.auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_hand_examples():
    assert M.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert M.auc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts one half
    assert M.auc([1, 0, 1], [0.2, 0.2, 0.9]) == 0.75
    assert M.auc(np.array([False, True]), [0.3, 0.7]) == 1.0
    assert M.auc([1.0, 0.0], [0.3, 0.7]) == 0.0


def test_auc_signed_zeros_tie():
    assert M.auc([0, 1], [0.0, -0.0]) == 0.5
    assert M.gauc([0, 1], [0.0, -0.0], [7, 7]).gauc == 0.5
    assert M.gauc([0, 1], np.array([0.0, -0.0], dtype=np.float32), [7, 7]).gauc == 0.5


def test_auc_exactly_order_invariant():
    rng = np.random.default_rng(1)
    y, s = _tied_data(rng, 20_000, 7)
    p = rng.permutation(y.size)
    assert M.auc(y, s) == M.auc(y[p], s[p])


def test_auc_errors():
    with pytest.raises(ValueError, match="one class"):
        M.auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="length"):
        M.auc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="binary"):
        M.auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        M.auc([0, 1], [0.1, np.nan])


# ---------------------------------------------------------------- weighted AUC (used by the bootstrap)


@pytest.mark.parametrize("seed", range(4))
def test_weighted_auc_equals_auc_on_repeated_rows(seed):
    rng = np.random.default_rng(seed)
    y, s = _tied_data(rng, 300, 6)
    w = rng.integers(0, 4, (3, y.size))
    w[:, :2] = 1  # keep both classes in every weighting
    batched = M.weighted_auc(y, s, w)
    for k in range(3):
        rep = np.repeat(np.arange(y.size), w[k])
        expected = roc_auc_score(y[rep], s[rep])
        assert M.weighted_auc(y, s, w[k]) == pytest.approx(expected, abs=1e-12)
        assert batched[k] == pytest.approx(expected, abs=1e-12)
    assert M.weighted_auc(y, s, np.ones(y.size)) == pytest.approx(M.auc(y, s), abs=1e-12)


def test_weighted_auc_degenerate_weights():
    assert math.isnan(M.weighted_auc([0, 1, 1], [0.1, 0.2, 0.3], [1.0, 0.0, 0.0]))
    with pytest.raises(ValueError):
        M.weighted_auc([0, 1], [0.1, 0.2], [1.0, -1.0])
    with pytest.raises(ValueError):
        M.weighted_auc([0, 1], [0.1, 0.2], [1.0, 1.0, 1.0])


# ---------------------------------------------------------------- GAUC


def _scores(kind, rng, y):
    """Score kinds that take different code paths in gauc (fp32 bit-pattern keys vs float64 ranks)."""
    n = y.size
    if kind == "float32":  # model outputs: exactly representable in float32
        return (rng.integers(0, 4, n) / 4.0 + 0.25 * y * rng.integers(0, 2, n)).astype(np.float32)
    if kind == "float64":  # not float32-exact: ranked by argsort
        return np.round(rng.random(n), 1) + 0.1 * y * rng.integers(0, 2, n)
    if kind == "logits":  # negative, -0.0 tied with +0.0, infinities
        s = rng.integers(-3, 4, n).astype(np.float32) + 0.5 * y * rng.integers(0, 2, n)
        s[rng.random(n) < 0.1] = -0.0
        s[rng.random(n) < 0.05] = np.inf
        s[rng.random(n) < 0.05] = -np.inf
        return s
    assert kind == "huge"  # beyond float32's range: must not be squeezed into float32 codes
    return np.round(rng.random(n), 1) * 1e300 * rng.choice([-1.0, 1.0], n) + 1e299 * y


@pytest.mark.parametrize("kind", ["float32", "float64", "logits", "huge"])
@pytest.mark.parametrize("seed", range(3))
def test_gauc_matches_per_group_reference(seed, kind):
    rng = np.random.default_rng(seed)
    n = 800
    # Many small groups: plenty of size-1 and single-class groups, ties inside groups.
    g = rng.integers(0, 200, n)
    y = (rng.random(n) < rng.choice([0.05, 0.3, 0.7], n)).astype(int)
    s = _scores(kind, rng, y)
    # sklearn rejects infinities; for it, replace them by finite values that keep the same order.
    s_ref = np.clip(s.astype(np.float64), -1e30, 1e30) if kind == "logits" else s
    fp32_path = M._score_codes(np.asarray(s, dtype=np.float64))[1] == 32
    assert fp32_path == (kind in ("float32", "logits"))  # both code paths are exercised
    assert M.auc(y, s) == pytest.approx(roc_auc_score(y, s_ref), abs=1e-12)
    ref = _reference_gauc(y, s_ref, g)
    r = M.gauc(y, s, g)
    assert isinstance(r, M.GroupAUC)
    assert r.gauc == pytest.approx(ref[0], abs=1e-12)
    assert r.uauc == pytest.approx(ref[1], abs=1e-12)
    assert (r.groups_used, r.groups_skipped) == ref[2:]
    assert r.groups_skipped > 0 and r.groups_used > 0


def test_gauc_group_id_kinds_agree():
    """Dense, offset, sparse/huge int64, beyond-int64 unsigned, int8 and string ids take different paths."""
    rng = np.random.default_rng(7)
    n = 1000
    g = rng.integers(0, 120, n)
    y = rng.integers(0, 2, n)
    s = np.round(rng.random(n), 1)
    base = M.gauc(y, s, g)
    ref = _reference_gauc(y, s, g)
    assert (base.gauc, base.uauc) == pytest.approx(ref[:2], abs=1e-12)
    assert (base.groups_used, base.groups_skipped) == ref[2:]
    kinds = {
        "offset": g * 1_000_003 - 17,
        "sparse": np.array([-(2**62), 5, 2**62])[g % 3] + g,  # too wide to pack: np.unique path
        "uint64": g.astype(np.uint64) + np.uint64(2**63 + 5),
        "int8": g.astype(np.int8),
        "str": np.array([f"user{v}" for v in g]),
    }
    for name, ids in kinds.items():  # each is a bijection of g: the same partition of the rows
        r = M.gauc(y, s, ids)
        assert (r.gauc, r.uauc) == pytest.approx((base.gauc, base.uauc), abs=1e-12), name
        assert (r.groups_used, r.groups_skipped) == (base.groups_used, base.groups_skipped), name


def test_gauc_hand_example():
    # user 0: AUC 1 over 3 impressions; user 1: AUC 0.5 (tie) over 2; user 2: one class, skipped.
    y = [1, 0, 0, 1, 0, 1, 1]
    s = [0.9, 0.1, 0.2, 0.5, 0.5, 0.3, 0.4]
    g = [0, 0, 0, 1, 1, 2, 2]
    r = M.gauc(y, s, g)
    assert r.gauc == pytest.approx((3 * 1.0 + 2 * 0.5) / 5)
    assert r.uauc == pytest.approx(0.75)
    assert (r.groups_used, r.groups_skipped) == (2, 1)


def test_gauc_no_usable_group_is_nan():
    r = M.gauc([1, 0, 1], [0.2, 0.3, 0.4], [0, 1, 2])
    assert math.isnan(r.gauc) and math.isnan(r.uauc)
    assert (r.groups_used, r.groups_skipped) == (0, 3)
    with pytest.raises(ValueError, match="length"):
        M.gauc([0, 1], [0.1, 0.2], [0])


def test_gauc_order_invariant():
    rng = np.random.default_rng(3)
    n = 5000
    g, y, s = rng.integers(0, 500, n), rng.integers(0, 2, n), np.round(rng.random(n), 2)
    p = rng.permutation(n)
    assert M.gauc(y, s, g) == M.gauc(y[p], s[p], g[p])


# ---------------------------------------------------------------- logloss, relative figures, evaluate


@pytest.mark.parametrize("seed", range(3))
def test_logloss_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 500)
    p = rng.random(500)
    p[:4] = [0.0, 1.0, 1e-12, 1 - 1e-12]  # extremes are clipped
    clipped = np.clip(p, 1e-7, 1 - 1e-7)
    assert M.logloss(y, p) == pytest.approx(log_loss(y, clipped, labels=[0, 1]), rel=1e-12)


def test_logloss_hand_example():
    assert M.logloss([1, 0], [0.5, 0.5]) == pytest.approx(math.log(2))
    assert M.logloss([1], [0.0]) == pytest.approx(-math.log(1e-7))


def test_rela_impr_and_relative_gain():
    assert M.rela_impr(0.75, 0.70) == pytest.approx(25.0)
    assert M.rela_impr(0.70, 0.70) == 0.0
    assert M.rela_impr(0.65, 0.70) == pytest.approx(-25.0)
    assert M.relative_gain(0.11, 0.10) == pytest.approx(10.0)
    assert M.relative_gain(0.45, 0.50) == pytest.approx(-10.0)
    with pytest.raises(ValueError):
        M.rela_impr(0.7, 0.5)


def test_evaluate():
    rng = np.random.default_rng(0)
    y, p, g = rng.integers(0, 2, 400), rng.random(400), rng.integers(0, 40, 400)
    out = M.evaluate(y, p)
    assert set(out) == {"auc", "logloss", "n"}
    out = M.evaluate(y, p, g)
    assert set(out) == {"auc", "gauc", "uauc", "logloss", "groups_used", "groups_skipped", "n"}
    assert out["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert out["logloss"] == pytest.approx(log_loss(y, p), rel=1e-12)
    assert out["gauc"] == pytest.approx(_reference_gauc(y, p, g)[0], abs=1e-12)
    assert out["n"] == 400


# ---------------------------------------------------------------- significance


def test_paired_seed_test_matches_scipy():
    a = np.array([0.801, 0.803, 0.799, 0.804, 0.802])
    b = np.array([0.800, 0.801, 0.799, 0.801, 0.800])
    r = M.paired_seed_test(a, b)
    d = a - b
    assert r["mean_diff"] == pytest.approx(d.mean())
    assert r["std_a"] == pytest.approx(np.std(a, ddof=1))
    assert r["p_value"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    half = stats.t.ppf(0.975, 4) * np.std(d, ddof=1) / np.sqrt(5)
    assert r["ci95"] == pytest.approx((d.mean() - half, d.mean() + half))
    assert r["ci95"][0] < r["mean_diff"] < r["ci95"][1]


def test_paired_seed_test_degenerate():
    r = M.paired_seed_test([0.8], [0.7])
    assert math.isnan(r["p_value"]) and "2" in r["note"]
    r = M.paired_seed_test([0.8, 0.9], [0.7, 0.8])  # constant difference
    assert math.isnan(r["p_value"]) and "variance" in r["note"]
    assert r["mean_diff"] == pytest.approx(0.1)


def _bootstrap_data(seed, n=20_000, n_groups=2_000):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, n_groups, n)
    y = (rng.random(n) < 0.3).astype(int)
    b = np.round(rng.random(n), 2)
    return y, b, g


def test_paired_bootstrap_identical_models():
    y, b, g = _bootstrap_data(0)
    r = M.paired_bootstrap(y, b, b.copy(), g, n_boot=200, seed=1)
    for k in ("auc", "gauc", "uauc"):
        assert r[k]["diff"] == 0.0
        lo, hi = r[k]["ci95"]
        assert lo <= 0.0 <= hi
        assert r[k]["p_one_sided"] == 1.0  # a <= b in every replicate


def test_paired_bootstrap_detects_strong_signal():
    y, b, g = _bootstrap_data(1)
    a = b + 0.3 * y  # a separates classes much better than b
    r = M.paired_bootstrap(y, a, b, g, n_boot=200, seed=2)
    for k in ("auc", "gauc", "uauc"):
        lo, hi = r[k]["ci95"]
        assert 0.0 < lo <= r[k]["diff"] <= hi
        assert r[k]["p_one_sided"] == 0.0
    assert r["auc"]["diff"] == pytest.approx(M.auc(y, a) - M.auc(y, b))
    assert r["gauc"]["diff"] == pytest.approx(M.gauc(y, a, g).gauc - M.gauc(y, b, g).gauc)


def test_paired_bootstrap_replicates_equal_materialised_resamples():
    """Each replicate equals AUC/GAUC/uAUC recomputed on the explicitly resampled users."""
    rng = np.random.default_rng(5)
    n, n_groups = 120, 15
    g = rng.integers(0, n_groups, n) * 10  # sparse ids: codes must be dense
    y = rng.integers(0, 2, n)
    sa = np.round(rng.random(n), 1) + 0.2 * y
    sb = np.round(rng.random(n), 1)
    n_boot, chunk, seed = 5, 2, 11
    r = M.paired_bootstrap(y, sa, sb, g, n_boot=n_boot, seed=seed, chunk=chunk, return_replicates=True)

    uniq, codes = np.unique(g, return_inverse=True)
    gen = np.random.default_rng(seed)
    chunks = [M._bootstrap_counts(gen, uniq.size, min(chunk, n_boot - i)) for i in range(0, n_boot, chunk)]
    counts = np.concatenate(chunks, axis=1).T  # (replicate, group)
    assert counts.shape == (n_boot, uniq.size) and np.all(counts.sum(1) == uniq.size)
    for k in range(n_boot):
        rows, ids = [], []
        for j in range(uniq.size):  # each draw of a user becomes a distinct copy of that user
            for c in range(int(counts[k, j])):
                m = np.flatnonzero(codes == j)
                rows.append(m)
                ids.append(np.full(m.size, j * 1000 + c))
        rows, ids = np.concatenate(rows), np.concatenate(ids)
        ga, gb = M.gauc(y[rows], sa[rows], ids), M.gauc(y[rows], sb[rows], ids)
        auc_diff = M.auc(y[rows], sa[rows]) - M.auc(y[rows], sb[rows])
        assert r["replicates"]["auc"][k] == pytest.approx(auc_diff, abs=1e-12)
        assert r["replicates"]["gauc"][k] == pytest.approx(ga.gauc - gb.gauc, abs=1e-12)
        assert r["replicates"]["uauc"][k] == pytest.approx(ga.uauc - gb.uauc, abs=1e-12)
