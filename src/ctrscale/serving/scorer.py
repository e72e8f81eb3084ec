"""The in-process scorer: one request of raw values -> N probabilities, the user side encoded once.

    scorer = Scorer(load_bundle("bundles/suan"))
    result = scorer.score({"user": {...}, "context": {...}, "time": ..., "history": {...}, "candidates": {...}})
    result.scores        # N probabilities, candidate order

Per request: FeatureEncoder (vocabularies, numerics, history cut, GSU), then the user-state cache (a hit skips
encode_user; a grown history extends the cached state where the model can do so exactly), then score_candidates
in chunks of `chunk` candidates. Usable without HTTP (a batch job, a notebook); the HTTP app is a thin layer.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .bundle import Bundle, BundleError, load_bundle
from .cache import Entry, UserStateCache, state_bytes
from .features import EncodedRequest, Limits


@dataclass
class ScoreResult:
    scores: np.ndarray                # (N,) probabilities
    cache: str                        # hit | miss | extend | none (a model with no user-side work to reuse)
    unknown: dict[str, int]           # values mapped to OOV, per field
    timing_ms: dict[str, float] = field(default_factory=dict)


class Scorer:
    def __init__(self, bundle: Bundle | str | Path, cache_mib: float = 256, chunk: int = 1024,
                 limits: Limits = Limits(), compiled: bool = False):
        """compiled: score with the bundle's exported programs (`ctrscale export --compile`) instead of eager."""
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, limits)
        self.model, self.encoder = self.bundle.model, self.bundle.encoder
        if compiled:
            if self.bundle.compiled_dir is None:
                raise BundleError(f"{self.bundle.path}: exported without --compile; export it again with --compile")
            from .compiled import load_programs
            self.model = load_programs(self.bundle.compiled_dir, self.bundle.model)
        self.chunk = chunk
        self.cache = UserStateCache(int(cache_mib * 2**20)) if self.model.reuses_user_state else None

    @property
    def name(self) -> str:
        return self.bundle.name

    @torch.inference_mode()
    def score(self, request: dict, use_cache: bool = True) -> ScoreResult:
        t0 = time.perf_counter()
        enc = self.encoder.encode(request)
        t1 = time.perf_counter()
        state, event = self._user_state(enc, use_cache)
        t2 = time.perf_counter()
        logits = []
        for a in range(0, enc.num_candidates, self.chunk):
            part = slice(a, a + self.chunk)
            per = lambda x: None if x is None else x[:, part]  # noqa: E731
            logits.append(self.model.score_candidates(state, per(enc.cand_sparse), per(enc.cand_dense),
                                                      per(enc.cand_hist), per(enc.cand_hist_time)))
        scores = torch.sigmoid(torch.cat(logits, 1)[0].float()).numpy()
        t3 = time.perf_counter()
        ms = lambda a, b: round((b - a) * 1e3, 3)  # noqa: E731
        return ScoreResult(scores, event, enc.unknown,
                           {"features": ms(t0, t1), "user": ms(t1, t2), "candidates": ms(t2, t3),
                            "total": ms(t0, t3)})

    def _user_state(self, enc: EncodedRequest, use_cache: bool):
        if self.cache is None or not use_cache:
            return self.model.encode_user(enc.context), "none" if self.cache is None else "miss"
        user = (enc.user_key, enc.profile_fingerprint)
        key = (*user, enc.history_fingerprint)
        entry = self.cache.get(key)
        if entry is not None:
            self.cache.events["hit"] += 1
            # the same user fields and history: the cached state, read with this request's time and context
            return _with_context(entry.state, enc.context), "hit"
        state, event = None, "miss"
        prior = self.cache.latest(user)
        new = len(enc.history_ids) - (len(prior.history_ids) if prior is not None else 0)
        if prior is not None and len(prior.history_ids) and new > 0 \
                and np.array_equal(enc.history_ids[:len(prior.history_ids)], prior.history_ids) \
                and np.array_equal(enc.history_time[:len(prior.history_time)], prior.history_time):
            state = self.model.extend_user(prior.state, enc.context, new)
            event = "extend" if state is not None else "miss"
        if state is None:
            state = self.model.encode_user(enc.context)
        self.cache.events[event] += 1
        self.cache.put(key, Entry(state, enc.history_ids, enc.history_time, state_bytes(state)))
        return state, event


def _with_context(state, context):
    """A cached state read with another request's context (same user fields and history, other time/context)."""
    old = state.context
    return dataclasses.replace(state, context=dataclasses.replace(context, hist=old.hist, hist_time=old.hist_time))
