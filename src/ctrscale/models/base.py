"""What every CTR model offers beyond forward(): request scoring.

Request scoring = encode_user(context) once per request, then score_candidates(state, ...) for any number of
candidates. The default here recomputes everything per candidate (correct for any model); models whose user
side does not depend on the candidate override both to reuse it.
"""
from __future__ import annotations

import dataclasses

from torch import Tensor, nn

from ..batch import Batch, RequestBatch


class CTRModel(nn.Module):
    def forward(self, batch: Batch) -> Tensor:  # (B,) logits
        raise NotImplementedError

    def encode_user(self, context: Batch):
        return context

    def score_candidates(self, state, cand_sparse: Tensor, cand_dense: Tensor) -> Tensor:
        """(R, C, F) candidate rows -> (R, C) logits."""
        ctx: Batch = state
        r, c = cand_sparse.shape[:2]
        owner = lambda t: t.repeat_interleave(c, 0)  # noqa: E731
        flat = dataclasses.replace(ctx, sparse=cand_sparse.reshape(r * c, -1), dense=cand_dense.reshape(r * c, -1),
                                   hist=owner(ctx.hist), hist_time=owner(ctx.hist_time), time=owner(ctx.time),
                                   label=owner(ctx.label), user=owner(ctx.user), request=owner(ctx.request))
        return self(flat).view(r, c)

    def score_request(self, rb: RequestBatch) -> Tensor:
        return self.score_candidates(self.encode_user(rb.context), rb.cand_sparse, rb.cand_dense)
