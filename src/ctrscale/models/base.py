"""What every CTR model offers: request scoring, with the pointwise forward defined once in its terms.

Request scoring = encode_user(context) once per request, then score_candidates(state, ...) for any number of
candidates; forward(batch) is that path with one candidate per request. Models whose user side does not depend on
the candidate (SUAN, HSTU, SparseCTR, EST) override encode_user and score_candidates to reuse it; every other
model implements score_pointwise(batch) and inherits a score_candidates that recomputes everything per
candidate (correct for any model).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from torch import Tensor, nn

from ..batch import Batch, DataNeeds, RequestBatch


@dataclass
class UserState:
    """What encode_user computes once per request and every candidate of the request reads."""
    context: Batch                                   # the R request rows: history, its times and mask, request time
    caches: list = field(default_factory=list)       # per layer: what candidates read of the history (K/V, gates)
    history: Tensor | None = None                    # (R, L, D) final behavior states, for models that pool them
    profile: Tensor | None = None                    # (R, ...) the user features the head reads


class CTRModel(nn.Module):
    cfg: object  # the model's config dataclass, as the registry built it

    @classmethod
    def needs_for(cls, cfg) -> DataNeeds:
        """What the model reads beyond a plain impression under config `cfg` (known before it is built)."""
        return DataNeeds()

    @property
    def needs(self) -> DataNeeds:
        return self.needs_for(self.cfg)

    def forward(self, batch: Batch) -> Tensor:  # (B,) logits
        one = lambda t: None if t is None else t.unsqueeze(1)  # noqa: E731  one candidate per request
        return self.score_candidates(self.encode_user(batch), one(batch.sparse), one(batch.dense),
                                     one(batch.cand_hist), one(batch.cand_hist_time))[:, 0]

    def score_pointwise(self, batch: Batch) -> Tensor:
        """(B,) logits of B impressions; the models that reuse no user work implement this."""
        raise NotImplementedError(f"{type(self).__name__} implements neither score_pointwise nor score_candidates")

    def for_serving(self) -> "CTRModel":
        """Precompute what inference can cache (FAT: its generated matrices); a no-op by default."""
        return self

    def encode_user(self, context: Batch) -> UserState:
        return UserState(context)

    @property
    def reuses_user_state(self) -> bool:
        """encode_user does work the candidates share (serving caches its UserState across requests)."""
        return type(self).encode_user is not CTRModel.encode_user

    def extend_user(self, state: UserState, context: Batch, new: int) -> UserState | None:
        """The state of `context`, whose history is `state`'s followed by `new` more recent behaviors, computed by
        encoding only those; None (the default) when the model's history states cannot be extended exactly (they
        depend on later behaviors), and the caller encodes afresh. encode_user must read only the user fields
        and the history (the serving cache's key)."""
        return None

    def score_candidates(self, state: UserState, cand_sparse: Tensor, cand_dense: Tensor,
                         cand_hist: Tensor | None = None, cand_hist_time: Tensor | None = None) -> Tensor:
        """(R, C, F) candidate rows (and their (R, C, K, F_hist) candidate-specific behaviors) -> (R, C) logits.
        By default every candidate becomes an impression of its own, scored by score_pointwise."""
        ctx = state.context
        r, c = cand_sparse.shape[:2]
        owner = lambda t: t if c == 1 else t.repeat_interleave(c, 0)  # noqa: E731
        flat_c = lambda t: None if t is None else t.reshape(r * c, *t.shape[2:])  # noqa: E731
        flat = dataclasses.replace(ctx, sparse=flat_c(cand_sparse), dense=flat_c(cand_dense),
                                   hist=owner(ctx.hist), hist_time=owner(ctx.hist_time), time=owner(ctx.time),
                                   label=owner(ctx.label), user=owner(ctx.user), request=owner(ctx.request),
                                   cand_hist=flat_c(cand_hist), cand_hist_time=flat_c(cand_hist_time))
        return self.score_pointwise(flat).view(r, c)

    def score_request(self, rb: RequestBatch) -> Tensor:
        return self.score_candidates(self.encode_user(rb.context), rb.cand_sparse, rb.cand_dense,
                                     rb.cand_hist, rb.cand_hist_time)
