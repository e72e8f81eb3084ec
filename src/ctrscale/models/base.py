"""What every CTR model offers beyond forward(): request scoring.

Request scoring = encode_user(context) once per request, then score_candidates(state, ...) for any number of
candidates. The default here recomputes everything per candidate (correct for any model); models whose user
side does not depend on the candidate override both to reuse it.
"""
from __future__ import annotations

import dataclasses

from torch import Tensor, nn

from ..batch import Batch, DataNeeds, RequestBatch


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
        raise NotImplementedError

    def for_serving(self) -> "CTRModel":
        """Precompute what inference can cache (FAT: its generated matrices); a no-op by default."""
        return self

    def encode_user(self, context: Batch):
        return context

    def score_candidates(self, state, cand_sparse: Tensor, cand_dense: Tensor, cand_hist: Tensor | None = None,
                         cand_hist_time: Tensor | None = None) -> Tensor:
        """(R, C, F) candidate rows (and their (R, C, K, F_hist) candidate-specific behaviors) -> (R, C) logits."""
        ctx: Batch = state
        r, c = cand_sparse.shape[:2]
        owner = lambda t: t.repeat_interleave(c, 0)  # noqa: E731
        flat_c = lambda t: None if t is None else t.reshape(r * c, *t.shape[2:])  # noqa: E731
        flat = dataclasses.replace(ctx, sparse=flat_c(cand_sparse), dense=flat_c(cand_dense),
                                   hist=owner(ctx.hist), hist_time=owner(ctx.hist_time), time=owner(ctx.time),
                                   label=owner(ctx.label), user=owner(ctx.user), request=owner(ctx.request),
                                   cand_hist=flat_c(cand_hist), cand_hist_time=flat_c(cand_hist_time))
        return self(flat).view(r, c)

    def score_request(self, rb: RequestBatch) -> Tensor:
        return self.score_candidates(self.encode_user(rb.context), rb.cand_sparse, rb.cand_dense,
                                     rb.cand_hist, rb.cand_hist_time)
