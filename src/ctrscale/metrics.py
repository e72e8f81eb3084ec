"""Evaluation metrics: AUC, GAUC/uAUC, logloss, RelaImpr and significance tests.

One definition each, as in spec/metrics.md. Everything is numpy, vectorised (sorts and segment sums,
never a Python loop over groups or impressions), and independent of the order of the input rows, so a
prediction set gathered from several processes gives the same figures as one process.

AUC counts ties one half. Rather than average ranks we count, for each positive, the negatives strictly
below it plus half the negatives tied with it; this is the same number (Mann-Whitney U), works unchanged
with weights, and in integer arithmetic is exact (hence order-independent) for any data size that fits
in memory. GAUC sorts one packed int64 key (group | score | label) per row, see
_sorted_group_score_label_keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "GroupAUC",
    "auc",
    "weighted_auc",
    "gauc",
    "logloss",
    "rela_impr",
    "relative_gain",
    "evaluate",
    "paired_seed_test",
    "paired_bootstrap",
]

LOGLOSS_EPS = 1e-7
# Bootstrap working set: elements per (tie blocks x replicates) float64 array. A few such arrays are
# alive at once, so ~5M elements keeps the bootstrap's peak memory in the low hundreds of MB.
_CHUNK_ELEMS = 5_000_000


# --------------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------------


def _as_labels(labels) -> np.ndarray:
    """0/1 labels as int8 (1 byte per row at 10M+ rows; every sum over them is taken in int64)."""
    y = np.asarray(labels).reshape(-1)
    if y.dtype == bool:
        return y.view(np.int8)
    # Labels are clicks: anything but 0/1 is a bug upstream (e.g. probabilities passed as labels).
    if y.size and np.any((y != 0) & (y != 1)):
        raise ValueError("labels must be binary (0/1)")
    return y.astype(np.int8, copy=False)


def _as_scores(scores, name: str = "scores") -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if np.isnan(s).any():
        raise ValueError(f"{name} contain NaN")
    return s


def _check_lengths(**arrays: np.ndarray) -> int:
    sizes = {k: v.shape[0] for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"length mismatch: {sizes}")
    return next(iter(sizes.values()))


def _block_starts(sorted_values: np.ndarray) -> np.ndarray:
    """Start index of each run of equal values (the tie blocks of a sorted array)."""
    n = sorted_values.shape[0]
    new = np.empty(n, dtype=bool)
    if n:
        new[0] = True
        np.not_equal(sorted_values[1:], sorted_values[:-1], out=new[1:])
    return np.flatnonzero(new)


# --------------------------------------------------------------------------------------------------
# AUC
# --------------------------------------------------------------------------------------------------


def auc(labels, scores) -> float:
    """ROC AUC with ties counted one half; equals sklearn's roc_auc_score. O(N log N).

    Raises ValueError if the lengths differ or only one class is present.
    """
    y, s = _as_labels(labels), _as_scores(scores)
    _check_lengths(labels=y, scores=s)
    is_pos = y.astype(bool)
    # Two value sorts (no argsort: ~3x faster), then for each positive the negatives strictly below it
    # and tied with it. Sorted needles make searchsorted a near-linear merge.
    pos, neg = np.sort(s[is_pos]), np.sort(s[~is_pos])
    p, q = pos.shape[0], neg.shape[0]
    if p == 0 or q == 0:
        raise ValueError(f"AUC is undefined with one class only ({p} positives, {q} negatives)")
    below = np.searchsorted(neg, pos, side="left")
    upto = np.searchsorted(neg, pos, side="right")
    # Twice the U statistic keeps the half-credit for ties integral: exact, so the result does not
    # depend on the order of the rows.
    u2 = int(below.sum()) + int(upto.sum())
    return u2 / (2.0 * p * q)


def _auc_from_block_sums(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Weighted AUC per column from (blocks, k) positive/negative weight per tie block, blocks in score order.

    nan where a class has zero total weight.
    """
    below_half = np.cumsum(neg, axis=0)
    below_half -= 0.5 * neg  # negatives strictly below the block, plus half of those tied with it
    num = np.einsum("ij,ij->j", pos, below_half)
    den = pos.sum(axis=0) * neg.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def weighted_auc(labels, scores, weights):
    """AUC where each impression counts `weights` times (ties one half).

    weights: shape (n,) -> float, or (k, n) -> array of k AUCs (k weightings share one sort).
    With integer weights this equals auc() on rows repeated that many times. Returns nan where
    one class has zero total weight.
    """
    y, s = _as_labels(labels), _as_scores(scores)
    w = np.asarray(weights, dtype=np.float64)
    n = _check_lengths(labels=y, scores=s)
    if w.ndim not in (1, 2) or w.shape[-1] != n:
        raise ValueError(f"weights must have shape (n,) or (k, n) with n = {n}, got {w.shape}")
    if np.any(w < 0):
        raise ValueError("weights must be non-negative")
    order = np.argsort(s)
    w_sorted = np.ascontiguousarray(np.atleast_2d(w)[:, order].T)
    starts = _block_starts(s[order])
    pos = np.add.reduceat(w_sorted * y[order][:, None], starts, axis=0)
    out = _auc_from_block_sums(pos, np.add.reduceat(w_sorted, starts, axis=0) - pos)
    return float(out[0]) if w.ndim == 1 else out


# --------------------------------------------------------------------------------------------------
# GAUC
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupAUC:
    """GAUC (impression-weighted mean of per-group AUC, DIN), uAUC (plain mean) and group counts."""

    gauc: float
    uauc: float
    groups_used: int
    groups_skipped: int


@dataclass(frozen=True)
class _GroupTable:
    """Per-group statistics, groups in ascending order of their id."""

    size: np.ndarray  # impressions per group
    pos: np.ndarray
    neg: np.ndarray
    auc: np.ndarray  # nan for single-class groups

    @property
    def usable(self) -> np.ndarray:
        return (self.pos > 0) & (self.neg > 0)


def _score_codes(s: np.ndarray) -> tuple[np.ndarray, int]:
    """Non-negative int64 codes with the order and ties of the scores, and their bit width.

    Model outputs are usually fp32 (or bf16) cast up: then the float32 bit pattern, made monotone,
    is the code and no sort is needed. Otherwise the code is the dense rank, from one argsort.
    """
    with np.errstate(over="ignore"):  # huge float64 become inf here and simply fail the test below
        s32 = s.astype(np.float32)
    if np.array_equal(s32, s):
        s32 += np.float32(0.0)  # -0.0 -> +0.0, so that the two zeros tie
        b = s32.view(np.uint32).astype(np.int64)
        # Sign-magnitude to monotone: positives above 2^31, negatives' bits reversed below it.
        return np.where(b >= 2**31, (2**32 - 1) - b, b + 2**31), 32
    order = np.argsort(s)
    ss = s[order]
    new = np.empty(s.shape[0], dtype=np.int64)
    new[0] = 0
    np.not_equal(ss[1:], ss[:-1], out=new[1:])
    rank = np.empty_like(new)
    rank[order] = np.cumsum(new)
    return rank, max(1, int(rank[order[-1]]).bit_length())


def _sorted_group_score_label_keys(y: np.ndarray, s: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, int]:
    """Sorted int64 keys (group code | score code | label) and the score code's bit width.

    np.lexsort by (group, score) runs two stable merge sorts (3.8 s at 10M rows here) and every
    array must then be gathered through the permutation. Packing all three fields into one int64
    lets a single value sort (SIMD quicksort, no permutation) do it all; equal keys are equal rows,
    so stability does not matter.
    """
    scode, sbits = _score_codes(s)
    gcode = None
    if np.issubdtype(g.dtype, np.integer):
        gmin, gmax = int(g.min()), int(g.max())
        if (gmax - gmin).bit_length() + sbits + 1 <= 63:  # fits as is: skip the cost of np.unique
            # Unsigned ids may exceed int64: offset them in their own dtype first (no overflow there).
            gcode = (g - g.min()).astype(np.int64) if g.dtype.kind == "u" else g.astype(np.int64) - gmin
    if gcode is None:
        uniq, gcode = np.unique(g, return_inverse=True)
        gcode = gcode.reshape(-1).astype(np.int64)
        if (uniq.shape[0] - 1).bit_length() + sbits + 1 > 63:
            raise ValueError("too many groups and distinct scores to pack in 63 bits (> ~2e9 rows)")
    key = gcode << (sbits + 1)
    key |= scode << 1
    key |= y
    key.sort()
    return key, sbits


def _group_table(y: np.ndarray, s: np.ndarray, g: np.ndarray) -> _GroupTable:
    """Per-group AUCs in O(N log N): one sort by (group, score), then segment sums over tie blocks."""
    n = y.shape[0]
    key, sbits = _sorted_group_score_label_keys(y, s, g)
    ys = key & 1
    gkey = key >> (sbits + 1)
    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    np.not_equal(gkey[1:], gkey[:-1], out=new_group[1:])
    del gkey
    key >>= 1  # drop the label: equal keys now mean same group and same score (a tie block)
    starts = _block_starts(key)
    del key
    pos_b = np.add.reduceat(ys, starts)
    neg_b = np.diff(np.append(starts, n)) - pos_b
    block_opens_group = new_group[starts]
    first_block = np.flatnonzero(block_opens_group)  # index (among blocks) of each group's first block
    gid_b = np.cumsum(block_opens_group) - 1
    # Negatives below a block within its own group: global running count minus the count at group start.
    cum = np.cumsum(neg_b) - neg_b
    below = cum - cum[first_block][gid_b]
    # Twice U per group: integral, hence exact and independent of the row order.
    u2 = np.add.reduceat(pos_b * (2 * below + neg_b), first_block)
    pos_g = np.add.reduceat(pos_b, first_block)
    neg_g = np.add.reduceat(neg_b, first_block)
    den = 2.0 * pos_g * neg_g
    with np.errstate(invalid="ignore", divide="ignore"):
        auc_g = np.where(den > 0, u2 / np.where(den > 0, den, 1.0), np.nan)
    return _GroupTable(size=pos_g + neg_g, pos=pos_g, neg=neg_g, auc=auc_g)


def _summarise(table: _GroupTable) -> GroupAUC:
    used = table.usable
    n_used = int(used.sum())
    if n_used == 0:
        return GroupAUC(math.nan, math.nan, 0, int(used.size))
    a, w = table.auc[used], table.size[used].astype(np.float64)
    return GroupAUC(
        gauc=float(np.dot(w, a) / w.sum()),
        uauc=float(a.mean()),
        groups_used=n_used,
        groups_skipped=int(used.size - n_used),
    )


def gauc(labels, scores, groups) -> GroupAUC:
    """Group AUC (DIN): sum_u n_u AUC_u / sum_u n_u over groups holding both classes, plus uAUC.

    Single-class groups are skipped and counted; if none is usable gauc and uauc are nan.
    One sort by (group, score) and segment sums: O(N log N), no loop over groups.
    """
    y, s = _as_labels(labels), _as_scores(scores)
    g = np.asarray(groups).reshape(-1)
    n = _check_lengths(labels=y, scores=s, groups=g)
    if n == 0:
        return GroupAUC(math.nan, math.nan, 0, 0)
    return _summarise(_group_table(y, s, g))


# --------------------------------------------------------------------------------------------------
# Logloss, relative improvements, evaluate
# --------------------------------------------------------------------------------------------------


def logloss(labels, probs) -> float:
    """Mean binary cross-entropy, probabilities clipped to [1e-7, 1 - 1e-7]."""
    y, p = _as_labels(labels), _as_scores(probs, "probs")
    n = _check_lengths(labels=y, probs=p)
    if n == 0:
        raise ValueError("logloss of an empty set")
    p = np.clip(p, LOGLOSS_EPS, 1.0 - LOGLOSS_EPS)
    return float(-np.mean(np.where(y == 1, np.log(p), np.log1p(-p))))


def rela_impr(auc_model: float, auc_base: float) -> float:
    """RelaImpr in percent: ((AUC_model - 0.5) / (AUC_base - 0.5) - 1) * 100."""
    if auc_base == 0.5:
        raise ValueError("RelaImpr is undefined for a base AUC of 0.5")
    return ((auc_model - 0.5) / (auc_base - 0.5) - 1.0) * 100.0


def relative_gain(metric_model: float, metric_base: float) -> float:
    """Relative gain in percent, as EST reports it: (model - base) / base * 100."""
    if metric_base == 0:
        raise ValueError("relative gain is undefined for a base metric of 0")
    return (metric_model - metric_base) / metric_base * 100.0


def evaluate(labels, probs, groups=None) -> dict:
    """All evaluation figures in one call: auc, logloss, n and, with groups, gauc/uauc/groups_used/skipped.

    Raises ValueError (from auc) when the set holds one class only: such an evaluation set is a data bug.
    """
    y, p = _as_labels(labels), _as_scores(probs, "probs")
    out = {"auc": auc(y, p), "logloss": logloss(y, p), "n": int(y.shape[0])}
    if groups is not None:
        r = gauc(y, p, groups)
        out.update(gauc=r.gauc, uauc=r.uauc, groups_used=r.groups_used, groups_skipped=r.groups_skipped)
    return out


# --------------------------------------------------------------------------------------------------
# Significance
# --------------------------------------------------------------------------------------------------


def paired_seed_test(a, b) -> dict:
    """Paired comparison of per-seed metrics of two models (a[i], b[i] from the same seed).

    Returns mean/std (ddof=1) of each, the mean difference a - b with its std, the paired t-test
    p-value (two-sided) and a 95% t-interval of the difference. With fewer than two seeds, or
    differences of zero variance, the test is undefined: p and the interval are nan and `note` says why.
    """
    from scipy import stats  # scipy is only needed here; keep importing metrics cheap

    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    n = _check_lengths(a=a, b=b)
    if n == 0:
        raise ValueError("no seeds given")
    d = a - b
    ddof_std = (lambda x: float(np.std(x, ddof=1))) if n >= 2 else (lambda x: math.nan)
    out = {
        "n": n,
        "mean_a": float(a.mean()),
        "std_a": ddof_std(a),
        "mean_b": float(b.mean()),
        "std_b": ddof_std(b),
        "mean_diff": float(d.mean()),
        "std_diff": ddof_std(d),
        "t": math.nan,
        "p_value": math.nan,
        "ci95": (math.nan, math.nan),
        "note": "",
    }
    if n < 2:
        out["note"] = "fewer than 2 paired seeds: no test possible"
        return out
    # Zero variance up to the rounding of a - b (0.8 - 0.7 != 0.9 - 0.8 in floating point).
    if np.ptp(d) <= 8 * np.finfo(np.float64).eps * max(np.abs(a).max(), np.abs(b).max()):
        # A zero-width interval would "prove" any nonzero difference; refuse instead.
        out["note"] = "differences have zero variance across seeds: t-test undefined"
        return out
    t, p = stats.ttest_rel(a, b)
    half = stats.t.ppf(0.975, df=n - 1) * out["std_diff"] / math.sqrt(n)
    out.update(t=float(t), p_value=float(p), ci95=(out["mean_diff"] - half, out["mean_diff"] + half))
    return out


def _block_group_matrices(y: np.ndarray, scores: np.ndarray, codes: np.ndarray, n_groups: int):
    """Sparse (tie blocks x groups) counts of positives and negatives, blocks in score order.

    With group draw counts C (groups x k), the per-block weights of k replicates are A @ C: one sparse
    matmul instead of gathering an (impressions x k) weight array and segment-summing it.
    """
    from scipy import sparse

    order = np.argsort(scores)
    n = order.shape[0]
    starts = _block_starts(scores[order])
    block = np.zeros(n, dtype=np.int64)
    block[starts[1:]] = 1
    block = np.cumsum(block)  # tie-block index of each impression in score order
    ys, cs = y[order].astype(np.float64), codes[order]
    shape = (starts.shape[0], n_groups)
    a_pos = sparse.csr_matrix((ys, (block, cs)), shape=shape)  # duplicates are summed
    a_neg = sparse.csr_matrix((1.0 - ys, (block, cs)), shape=shape)
    return a_pos, a_neg


def _bootstrap_counts(rng: np.random.Generator, n_groups: int, size: int) -> np.ndarray:
    """(n_groups, size): how often each group is drawn in each of `size` resamples of n_groups groups."""
    draws = rng.integers(0, n_groups, size=(size, n_groups), dtype=np.int64)
    # One bincount for all replicates, laid out group-major so that counts[codes] is a cheap row gather.
    draws *= size
    draws += np.arange(size, dtype=np.int64)[:, None]
    return np.bincount(draws.ravel(), minlength=size * n_groups).reshape(n_groups, size).astype(np.float64)


def _interval(x: np.ndarray) -> dict:
    """95% percentile interval and P(diff <= 0) over the replicates where the metric is defined."""
    ok = x[np.isfinite(x)]  # a replicate may draw only single-class users: its AUC is undefined
    if ok.size == 0:
        return {"ci95": (math.nan, math.nan), "p_one_sided": math.nan, "valid_replicates": 0}
    lo, hi = np.percentile(ok, [2.5, 97.5])
    return {"ci95": (float(lo), float(hi)), "p_one_sided": float(np.mean(ok <= 0)),
            "valid_replicates": int(ok.size)}


def paired_bootstrap(
    labels,
    scores_a,
    scores_b,
    groups,
    n_boot: int = 1000,
    seed: int = 0,
    *,
    chunk: int | None = None,
    return_replicates: bool = False,
) -> dict:
    """Paired bootstrap over groups (users) of the AUC, GAUC and uAUC differences a - b.

    Each replicate draws len(unique groups) groups with replacement; the draw counts act as
    impression weights, identically for both models (paired). Returns, per metric, the observed
    difference, the 95% percentile interval and p_one_sided = fraction of replicates with a <= b.

    AUC per replicate is a weighted AUC from one sort per model: draw counts become tie-block weights
    through one sparse (blocks x groups) matmul, `chunk` replicates at a time (default: as many as fit
    ~5M elements, at most 50) to bound memory. GAUC/uAUC per replicate need no re-sorting at all:
    per-group AUCs do not change under group resampling, only group weights do.

    return_replicates=True adds the per-replicate differences under "replicates".
    """
    y = _as_labels(labels)
    sa, sb = _as_scores(scores_a, "scores_a"), _as_scores(scores_b, "scores_b")
    g = np.asarray(groups).reshape(-1)
    n = _check_lengths(labels=y, scores_a=sa, scores_b=sb, groups=g)
    if n == 0 or n_boot < 1:
        raise ValueError("paired_bootstrap needs a non-empty set and n_boot >= 1")

    # Dense group codes, shared by both tables so that table row j is group j for both models.
    _, codes = np.unique(g, return_inverse=True)
    codes = codes.reshape(-1).astype(np.int64)
    ta, tb = _group_table(y, sa, codes), _group_table(y, sb, codes)
    n_groups = ta.size.shape[0]
    used = ta.usable  # depends on labels only: the same for both models
    d_g = (ta.auc - tb.auc)[used]
    n_u = ta.size[used].astype(np.float64)

    ra, rb = _summarise(ta), _summarise(tb)
    observed = {"auc": auc(y, sa) - auc(y, sb), "gauc": ra.gauc - rb.gauc, "uauc": ra.uauc - rb.uauc}

    # One sort per model for the whole bootstrap; replicates only change the weights.
    pa, na = _block_group_matrices(y, sa, codes, n_groups)
    pb, nb = _block_group_matrices(y, sb, codes, n_groups)

    if chunk is None:
        chunk = max(1, min(50, _CHUNK_ELEMS // max(n, n_groups)))
    rng = np.random.default_rng(seed)
    reps = {k: np.empty(n_boot) for k in observed}
    for lo in range(0, n_boot, chunk):  # loop over replicate chunks only
        m = min(chunk, n_boot - lo)
        c = _bootstrap_counts(rng, n_groups, m)
        reps["auc"][lo : lo + m] = _auc_from_block_sums(pa @ c, na @ c) - _auc_from_block_sums(pb @ c, nb @ c)
        cu = c[used]
        with np.errstate(invalid="ignore", divide="ignore"):
            reps["gauc"][lo : lo + m] = ((n_u * d_g) @ cu) / (n_u @ cu)
            reps["uauc"][lo : lo + m] = (d_g @ cu) / cu.sum(axis=0)

    out: dict = {"n_boot": n_boot, "seed": seed, "groups": n_groups, "groups_used": int(used.sum())}
    for k, obs in observed.items():
        out[k] = {"diff": float(obs), **_interval(reps[k])}
    if return_replicates:
        out["replicates"] = reps
    return out
