"""The embedded default dataset `synthetic-v1`: a synthetic CTR log with planted structure (shared/spec/data.md).

The world (fixed by the seed):
- items have a category (category sizes Zipf-like), a brand within the category, a log-normal price and a latent
  factor v = unit(category vector + brand vector + item noise); popularity is Zipf (exponent 0.9) over a random
  order of the items;
- content vectors (dimension from the schema, 32) are a noisy random projection of v, L2-normalised, so content
  cosine carries signal without being the latent factor itself. Row = raw item id (row 0 = zeros);
- cross tables age x category, gender x category and region x category shape both what users browse and what they
  click.

Users (generated in chunks of CHUNK_USERS, each from a seed derived from (seed, chunk index)):
- profile: age bucket, gender, region (Zipf-like), an activity level (log-normal), and for a quarter of them a
  join time inside the generated span (so valid/test hold users never seen in train);
- sessions: each day has a daytime and an evening slot; a user opens a session in a slot with probability equal
  to its activity level. A session holds 1..20 behaviors 30 s..10 min apart (minutes to about an hour), sessions
  are hours to days apart, so time-based chunking of a history finds the sessions;
- interests: 3 slots, each a category and a latent direction near that category; at every session slot 0 (the
  core interest) is replaced with probability 0.03 and slots 1-2 with probability 0.2 (drift); slot weights are
  re-drawn around per-user base weights every session;
- behaviors (the history): a behavior picks an interest slot by weight, draws 8 items of its category by
  popularity and keeps the best latent match (Gumbel-max over 5 * v.z); 10% are exploration draws from global
  popularity. Each is a "click", or a "purchase" (more often for cheap items).

Impressions: behaviors inside the impression period host an ad request with probability q (set from
`impressions`); the request comes 1..10 s after the behavior and shows 3..10 distinct candidates (40% from the
user's current interests, 15% from the category of one of the last 5 behaviors, 45% from global popularity).
The click logit is

    -4.1 + 0.8 A[age, cat] + 0.4 G[gender, cat] + 0.4 R[region, cat]      profile x category crosses
         + 1.5 sum_k w_k (v . z_k)                                         current (drifting) interests
         + 1.5 sim(v, last 10 behaviors, weights exp(-dt / 1 day), purchases count double)
         + 1.0 max over the last 10 behaviors of [same category] exp(-dt / 3 h)   recency
         + 0.3 z(log popularity) - s[age] z(log price) + hour effect + N(0, 0.5^2) noise

Clicked ads join the user's behavior log a few seconds after the request (action "click").
The history of an impression is the user's behaviors strictly before the request time, stored once per user in
the behavior log (ordered per user by time) and referenced by [hist_start, hist_end).

Times: behaviors from 2024-01-01 00:00 UTC (WARMUP_DAYS of history before any impression), impressions during the
following PERIOD_DAYS. Split by time: a request at time t goes to train if t < T80, to valid if t < T90, else to
test, where T80 and T90 are the 80% and 90% points of the impression period. Vocabularies are fitted on the train
split only and the price is standardised with train statistics (prepare.write_chunks: pass 1 fits on the chunks,
pass 2 regenerates the same chunks, encodes and writes). Within a chunk rows are stored by (request time,
user); chunks follow each other, so a split is time-ordered within each chunk of users, not globally.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..schema import Schema, load_schema
from .movielens import schema_path
from .prepare import Chunk, write_chunks
from .store import fingerprint, is_prepared

NAME = "synthetic-v1"
VERSION = 1
DAY = 86_400
T_START = 1_704_067_200  # 2024-01-01 00:00 UTC
WARMUP_DAYS, PERIOD_DAYS = 30, 60
T_IMP0 = T_START + WARMUP_DAYS * DAY  # first possible impression
T_END = T_IMP0 + PERIOD_DAYS * DAY
T80 = T_IMP0 + int(0.8 * PERIOD_DAYS * DAY)
T90 = T_IMP0 + int(0.9 * PERIOD_DAYS * DAY)
N_SLOTS = 2 * (WARMUP_DAYS + PERIOD_DAYS)  # a daytime and an evening session slot per day
CHUNK_USERS = 2048
LATENT_DIM = 16
N_INTERESTS = 3
RECENT = 10  # behaviors the click model looks at
AGES = np.array(["<18", "18-24", "25-34", "35-44", "45-54", "55-64", "65+"])
AGE_P = np.array([0.06, 0.20, 0.27, 0.20, 0.13, 0.09, 0.05])
PRICE_SENS = np.array([0.6, 0.5, 0.35, 0.25, 0.2, 0.2, 0.3])
GENDERS = np.array(["F", "M"])
ACTIONS = np.array(["click", "purchase"])
N_REGIONS = 30
LATE_JOIN = 0.25
SESSION_P = 1 / 6  # geometric number of behaviors per session, capped at MAX_SESSION
MAX_SESSION = 20
MEAN_CANDIDATES = 6.5  # uniform 3..10


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _zipf(n: int, a: float) -> np.ndarray:
    w = np.arange(1, n + 1, dtype=np.float64) ** -a
    return w / w.sum()


def _segment_cumsum(x: np.ndarray, seg_start: np.ndarray) -> np.ndarray:
    """Cumulative sum restarting at each segment; seg_start[i] = index where row i's segment begins."""
    c = np.cumsum(x)
    return c - c[seg_start] + x[seg_start]


class World:
    """Everything shared by all users: items, their factors, content, cross tables, the request rate."""

    def __init__(self, n_users: int, n_items: int, impressions: int, seed: int, content_dim: int):
        if n_users < 1 or n_items < 20 or impressions < 1:
            raise ConfigError(f"synthetic: need n_users >= 1, n_items >= 20, impressions >= 1; "
                             f"got {n_users}, {n_items}, {impressions}")
        self.n_users, self.n_items, self.impressions, self.seed = n_users, n_items, impressions, seed
        rng = np.random.default_rng([seed, 0])
        d = LATENT_DIM
        C = self.n_cats = int(np.clip(n_items // 100, 4, 64))
        self.cat_w = _zipf(C, 0.7)[rng.permutation(C)]
        cat = np.concatenate([np.arange(C), rng.choice(C, n_items - C, p=self.cat_w)])
        self.item_cat = cat = cat[rng.permutation(n_items)]
        size = np.bincount(cat, minlength=C)
        n_brands = 2 + size // 20
        brand_off = np.cumsum(n_brands) - n_brands
        brand = brand_off[cat] + (rng.random(n_items) * n_brands[cat]).astype(np.int64)
        self.item_brand = brand
        pop = _zipf(n_items, 0.9)[rng.permutation(n_items)]
        self.pop_z = (np.log(pop) - np.log(pop).mean()) / np.log(pop).std()
        self.cat_vec = _unit(rng.standard_normal((C, d)))
        brand_vec = _unit(rng.standard_normal((int(n_brands.sum()), d)))
        self.v = _unit(self.cat_vec[cat] + 0.5 * brand_vec[brand]
                       + 0.5 * _unit(rng.standard_normal((n_items, d)))).astype(np.float32)
        logp = rng.normal(3.0, 0.7, C)[cat] + rng.normal(0, 0.3, len(brand_vec))[brand] \
            + rng.normal(0, 0.35, n_items)
        self.price = np.maximum(np.round(np.exp(logp), 2), 0.01)
        self.logp_z = (logp - logp.mean()) / logp.std()
        proj = rng.standard_normal((d, content_dim)) / np.sqrt(d)
        content = _unit(self.v @ proj + 0.7 / np.sqrt(d) * rng.standard_normal((n_items, content_dim)))
        self.content_raw = np.vstack([np.zeros((1, content_dim)), content]).astype(np.float32)  # row = raw id
        self.cross_age = rng.normal(0, 1.0, (len(AGES), C))
        self.cross_gender = rng.normal(0, 0.5, (len(GENDERS), C))
        self.cross_region = rng.normal(0, 0.5, (N_REGIONS, C))
        self.region_p = _zipf(N_REGIONS, 1.0)
        hours = np.arange(24)
        self.hour_bias = 0.2 * np.cos(2 * np.pi * (hours - 21) / 24)
        # Sampling tables: items by category (popularity-weighted) and over the whole catalogue.
        self._order = np.argsort(cat, kind="stable")
        self._cdf = np.cumsum(pop[self._order])
        first = np.searchsorted(cat[self._order], np.arange(C), "left")
        self._first, self._last = first, first + size - 1
        self._lo = np.where(first > 0, self._cdf[np.maximum(first - 1, 0)], 0.0)
        self._hi = self._cdf[self._last]
        self._gcdf = np.cumsum(pop)
        # Request rate: expected in-period behaviors per user from the activity and session-size distributions.
        act = self._activity(np.random.default_rng([seed, 2]), 200_000).mean()
        mean_session = (1 - (1 - SESSION_P) ** MAX_SESSION) / SESSION_P
        total = WARMUP_DAYS + PERIOD_DAYS
        coverage = (1 - LATE_JOIN) + LATE_JOIN * (WARMUP_DAYS / total + PERIOD_DAYS / total / 2)
        per_user = act * coverage * 2 * PERIOD_DAYS * mean_session
        self.q = impressions / (n_users * per_user * MEAN_CANDIDATES)
        if self.q > 1:
            raise ConfigError(f"synthetic: {impressions:,} impressions need more than one request per behavior for "
                             f"{n_users:,} users (at most ~{int(n_users * per_user * MEAN_CANDIDATES):,}); "
                             f"raise n_users")

    @staticmethod
    def _activity(rng, n: int) -> np.ndarray:
        return np.clip(np.exp(rng.normal(np.log(0.08), 1.0, n)), 0.005, 0.95)

    def in_category(self, rng, cats: np.ndarray) -> np.ndarray:
        """One item per entry of cats, drawn by popularity within that category."""
        u = self._lo[cats] + rng.random(cats.shape) * (self._hi[cats] - self._lo[cats])
        pos = np.clip(np.searchsorted(self._cdf, u, "right"), self._first[cats], self._last[cats])
        return self._order[pos]

    def popular(self, rng, n: int) -> np.ndarray:
        return np.minimum(np.searchsorted(self._gcdf, rng.random(n) * self._gcdf[-1], "right"), self.n_items - 1)

    @property
    def n_chunks(self) -> int:
        return -(-self.n_users // CHUNK_USERS)

    def chunk(self, c: int) -> dict:
        """Raw columns of chunk c: rows (impressions, stored order), log (behaviors by user, time)."""
        rng = np.random.default_rng([self.seed, 1, c])
        u0 = c * CHUNK_USERS
        U = min(CHUNK_USERS, self.n_users - u0)
        age = rng.choice(len(AGES), U, p=AGE_P)
        gender = (rng.random(U) < 0.5).astype(np.int64)
        region = rng.choice(N_REGIONS, U, p=self.region_p)
        act = self._activity(rng, U)
        join = np.where(rng.random(U) < LATE_JOIN, rng.integers(0, N_SLOTS, U), 0)
        active = (rng.random((U, N_SLOTS)) < act[:, None]) & (np.arange(N_SLOTS)[None] >= join[:, None])
        su, ss = np.nonzero(active)  # sessions by (user, slot)
        S = len(su)
        half = ss % 2
        sec = np.where(half == 0, 7 * 3600 + rng.beta(2, 2, S) * 6 * 3600,
                       17 * 3600 + rng.beta(2.5, 1.5, S) * 6.5 * 3600)
        s_start = T_START + (ss // 2) * DAY + sec.astype(np.int64)
        first = np.r_[True, su[1:] != su[:-1]] if S else np.zeros(0, bool)

        # Interests: 3 slots, replaced at a session with a per-slot probability (always at a user's first one).
        K, C = N_INTERESTS, self.n_cats
        prior = np.log(self.cat_w)[None] + 0.8 * (self.cross_age[age] + self.cross_gender[gender]
                                                  + self.cross_region[region])  # (U, C)
        prior = np.exp(prior - prior.max(1, keepdims=True))
        cdf = np.cumsum(prior / prior.sum(1, keepdims=True), 1)
        cdf[:, -1] = 1.0
        rows = np.repeat(su, K)
        flat = (cdf + np.arange(U)[:, None]).ravel()
        new_cat = np.clip(np.searchsorted(flat, rows + rng.random(len(rows)), "right") - rows * C, 0, C - 1)
        new_cat = new_cat.reshape(S, K)
        new_z = _unit(self.cat_vec[new_cat] + 0.6 * _unit(rng.standard_normal((S, K, LATENT_DIM))))
        repl = rng.random((S, K)) < np.array([0.03, 0.2, 0.2])
        repl[first] = True
        idx = np.maximum.accumulate(np.where(repl, np.arange(S)[:, None], 0), axis=0)
        icat = np.take_along_axis(new_cat, idx, 0)
        iz = new_z[idx, np.arange(K)[None]].astype(np.float32)  # (S, K, d)
        base = rng.gamma(2.0, size=(U, K)) * np.array([2.0, 1.0, 1.0])
        w = base[su] * rng.gamma(4.0, size=(S, K))
        w /= w.sum(1, keepdims=True)
        cw = np.cumsum(w, 1)

        # Behaviors: sessions of 1..20, 30 s..10 min apart; nothing after the end of the period.
        nb = np.minimum(rng.geometric(SESSION_P, S), MAX_SESSION)
        bs = np.repeat(np.arange(S), nb)
        seg = np.repeat(np.cumsum(nb) - nb, nb)
        gaps = np.minimum(30 + rng.lognormal(np.log(60), 0.9, len(bs)), 600).astype(np.int64)
        gaps[np.arange(len(bs)) == seg] = 0
        t = s_start[bs] + _segment_cumsum(gaps, seg)
        keep = t < T_END
        bs, t = bs[keep], t[keep]
        E = len(bs)
        bu = su[bs]
        k = (rng.random(E)[:, None] > cw[bs, :-1]).sum(1)
        z = iz[bs, k]  # (E, d)
        draws = self.in_category(rng, np.repeat(icat[bs, k], 8).reshape(E, 8))
        score = rng.gumbel(size=(E, 8))
        for j in range(8):
            score[:, j] += 5 * (self.v[draws[:, j]] * z).sum(1)
        item = draws[np.arange(E), score.argmax(1)] if E else np.zeros(0, np.int64)
        explore = rng.random(E) < 0.1
        item[explore] = self.popular(rng, int(explore.sum()))
        purchase = rng.random(E) < np.clip(0.10 - 0.04 * self.logp_z[item], 0.02, 0.25)

        # Requests: some in-period behaviors host one, 1..10 s later, with 3..10 candidates.
        host = np.nonzero((t >= T_IMP0) & (rng.random(E) < self.q))[0]
        R = len(host)
        rt = t[host] + rng.integers(1, 11, R)
        ru, rs = bu[host], bs[host]
        ufirst = np.searchsorted(bu, ru, "left")  # first behavior of the request's user
        nc = rng.integers(3, 11, R)
        N = int(nc.sum())
        cr = np.repeat(np.arange(R), nc)
        src = rng.random(N)
        kk = (rng.random(N)[:, None] > cw[rs[cr], :-1]).sum(1)
        from_interest = self.in_category(rng, icat[rs[cr], kk])
        back = np.maximum(host[cr] - rng.integers(0, 5, N), ufirst[cr])
        from_recent = self.in_category(rng, self.item_cat[item[back]])
        cand = np.where(src < 0.40, from_interest, np.where(src < 0.55, from_recent, self.popular(rng, N)))
        # An item is shown at most once per request: redraw repeats from global popularity, drop what remains.
        for _ in range(3):
            dup = _repeats(cr, cand)
            if not dup.any():
                break
            cand[dup] = self.popular(rng, int(dup.sum()))
        keep = ~_repeats(cr, cand)
        cand, cr = cand[keep], cr[keep]
        N = len(cand)
        nc = np.bincount(cr, minlength=R)
        cc = self.item_cat[cand]
        cv = self.v[cand]

        # Click model.
        rpos = host[:, None] - np.arange(RECENT)[::-1]  # (R, M), most recent last
        rvalid = rpos >= ufirst[:, None]
        rpos = np.where(rvalid, rpos, 0)
        dt = (rt[:, None] - t[rpos]).astype(np.float64) if E else np.zeros((R, RECENT))
        wgt = np.exp(-dt / DAY) * (1.0 + purchase[rpos]) * rvalid
        rec = np.exp(-dt / (3 * 3600)) * rvalid
        rv, rcat = self.v[item[rpos]], self.item_cat[item[rpos]]  # (R, M, d), (R, M)
        sim = np.zeros(N)
        cat_rec = np.zeros(N)
        for m in range(RECENT):
            sim += wgt[cr, m] * (cv * rv[cr, m]).sum(1)
            cat_rec = np.maximum(cat_rec, rec[cr, m] * (rcat[cr, m] == cc))
        sim /= wgt[cr].sum(1) + 0.1
        interest = np.zeros(N)
        for j in range(K):
            interest += w[rs[cr], j] * (cv * iz[rs[cr], j]).sum(1)
        ua = age[ru[cr]]
        hour = (rt // 3600) % 24
        logit = (-4.1 + 0.8 * self.cross_age[ua, cc] + 0.4 * self.cross_gender[gender[ru[cr]], cc]
                 + 0.4 * self.cross_region[region[ru[cr]], cc] + 1.5 * interest + 1.5 * sim + 1.0 * cat_rec
                 + 0.3 * self.pop_z[cand] - PRICE_SENS[ua] * self.logp_z[cand] + self.hour_bias[hour[cr]]
                 + rng.normal(0, 0.5, N))
        label = rng.random(N) < 1 / (1 + np.exp(-logit))

        # Clicked ads join the log 1..10 s after their request (before the next behavior, >= 30 s later).
        starts = np.cumsum(nc) - nc
        rank = _segment_cumsum(label.astype(np.int64), np.repeat(starts, nc))
        lu = np.concatenate([bu, ru[cr][label]])
        lt = np.concatenate([t, rt[cr][label] + rank[label]])
        li = np.concatenate([item, cand[label]])
        la = np.concatenate([purchase.astype(np.int64), np.zeros(int(label.sum()), np.int64)])
        lo = np.lexsort((lt, lu))
        lu, lt, li, la = lu[lo], lt[lo], li[lo], la[lo]
        key = lu * (1 << 32) + (lt - T_START)
        hs = np.searchsorted(lu, ru, "left")
        he = np.searchsorted(key, ru * (1 << 32) + (rt - T_START), "left")

        # Stored order: requests by (time, user), candidates of a request together.
        ro = np.lexsort((ru, rt))
        ridx = np.repeat(starts[ro] - np.cumsum(nc[ro]) + nc[ro], nc[ro]) + np.arange(N)
        r_of = np.repeat(np.arange(R), nc[ro])  # request rank in stored order
        req = ro[r_of]
        cand, label, user = cand[ridx], label[ridx], ru[req]
        time = rt[req]
        split = np.where(time < T80, 0, np.where(time < T90, 1, 2)).astype(np.int8)
        rows = {
            "user_id": u0 + 1 + user, "age": AGES[age[user]], "gender": GENDERS[gender[user]],
            "region": region[user] + 1, "item_id": cand + 1, "category": self.item_cat[cand] + 1,
            "brand": self.item_brand[cand] + 1, "price": self.price[cand],
            "hour": (time // 3600) % 24, "weekday": (time // DAY + 3) % 7,  # 1970-01-01 was a Thursday
            "label": label.astype(np.float32), "time": time, "user": u0 + 1 + user, "request": r_of,
            "hist_start": hs[req], "hist_end": he[req], "split": split,
        }
        log = {"user": u0 + 1 + lu, "time": lt, "item_id": li + 1, "category": self.item_cat[li] + 1,
               "action": ACTIONS[la]}
        return {"rows": rows, "log": log, "n_requests": R}


def _repeats(group: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Mask of entries whose (group, value) pair already occurred earlier in the arrays."""
    o = np.lexsort((np.arange(len(value)), value, group))
    same = (group[o][1:] == group[o][:-1]) & (value[o][1:] == value[o][:-1])
    out = np.zeros(len(value), bool)
    out[o[1:][same]] = True
    return out


def prepare_synthetic(out: str | Path, n_users: int = 20_000, n_items: int = 5_000, impressions: int = 400_000,
                      seed: int = 0, shard_rows: int = 1_000_000, force: bool = False) -> dict | None:
    """Generate and prepare `synthetic-v1` into `out`; returns the report, or None when already prepared.

    About `impressions` impressions (the request rate is set from it; the realised count varies by a fraction of a
    percent). Split by time: request time t < T80 -> train, t < T90 -> valid, else test, T80/T90 being the 80%
    and 90% points of the impression period. Memory is bounded by one chunk of CHUNK_USERS users.
    """
    out = Path(out)
    schema = load_schema(schema_path(NAME))
    params = {"n_users": n_users, "n_items": n_items, "impressions": impressions, "seed": seed,
              "shard_rows": shard_rows}
    fp = fingerprint(NAME, VERSION, schema.to_dict(), params)
    if not force and is_prepared(out, fp):
        return None
    world = World(n_users, n_items, impressions, seed, schema.content.dim if schema.content else 32)
    generator = {**params, "version": VERSION, "n_categories": world.n_cats, "request_rate": float(world.q),
                 "requests": 0, "behaviors": 0, "t80": T80, "t90": T90}

    def chunks():
        """Each chunk of users, generated anew on every pass (same seed, same chunk)."""
        n_req = n_behaviors = 0
        for c in range(world.n_chunks):
            ch = world.chunk(c)
            r = ch["rows"]
            yield Chunk(rows={**r, "request": r["request"] + n_req}, split=r["split"], log=ch["log"],
                        hist_start=r["hist_start"], hist_end=r["hist_end"])
            n_req += ch["n_requests"]
            n_behaviors += len(ch["log"]["time"])
        generator.update(requests=n_req, behaviors=n_behaviors)  # the report is written after both passes

    return write_chunks(out, schema=schema, fp=fp, chunks=chunks, content_raw=world.content_raw,
                        shard_rows=shard_rows, extra={"generator": generator})


def synthetic_schema() -> Schema:
    return load_schema(schema_path(NAME))
