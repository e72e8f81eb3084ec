"""The user-state cache: what `encode_user` computed for a user, reused by their next requests.

Key: (user key, fingerprint of the user fields, fingerprint of the history as cut to max_len). Every reusing
model's encode_user reads only the user fields and the history (never the request time, the context fields or the
candidates; tests/test_serving.py holds each to it), so a hit is exact. LRU under a byte budget measured from
the state's tensors. One cache per Scorer (per bundle and worker process): a swapped-in bundle starts empty.
"""
from __future__ import annotations

import dataclasses
from collections import Counter, OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from ..models.base import UserState


def state_bytes(obj) -> int:
    """Bytes held by the tensors of a UserState (nested lists, tuples, dicts and dataclasses)."""
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(x) for x in obj)
    if isinstance(obj, dict):
        return sum(state_bytes(x) for x in obj.values())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(state_bytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    return 0


@dataclass
class Entry:
    state: UserState
    history_ids: np.ndarray    # the behaviors the state encodes (cut to max_len), oldest first
    history_time: np.ndarray
    nbytes: int


class UserStateCache:
    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self._entries: OrderedDict[tuple, Entry] = OrderedDict()
        self._latest: dict[tuple, tuple] = {}  # (user key, profile fingerprint) -> key of the newest entry
        self.bytes = 0
        self.events: Counter = Counter()   # hit, miss, extend, evict

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple) -> Entry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def latest(self, user: tuple) -> Entry | None:
        """The user's most recently stored entry (the candidate for extension), if still cached."""
        key = self._latest.get(user)
        return None if key is None else self._entries.get(key)

    def put(self, key: tuple, entry: Entry) -> None:
        if entry.nbytes > self.budget:  # larger than the whole budget: not cached
            return
        if key in self._entries:
            self.bytes -= self._entries.pop(key).nbytes
        self._entries[key] = entry
        self._latest[key[:2]] = key
        self.bytes += entry.nbytes
        while self.bytes > self.budget:
            old_key, old = self._entries.popitem(last=False)
            self.bytes -= old.nbytes
            if self._latest.get(old_key[:2]) == old_key:
                del self._latest[old_key[:2]]
            self.events["evict"] += 1
