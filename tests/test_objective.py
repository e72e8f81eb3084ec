"""The training loss's backward pass in micro-batches equals the whole batch's."""
from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from ctrscale.data.loader import Loader, LoaderConfig
from ctrscale.models.registry import build_model
from ctrscale.train.objective import accumulate_gradients


@pytest.mark.parametrize("listwise", [False, True])
def test_gradient_accumulation_equals_one_batch(tiny, listwise):
    """train.grad_accum splits a batch into micro-batches (whole requests when listwise) weighted by their share
    of impressions: the same loss and gradients as the whole batch."""
    torch.manual_seed(0)
    model = build_model(tiny.spec, {"name": "sparsectr" if listwise else "din"})
    batch = next(iter(Loader(tiny, "train", LoaderConfig(batch_size=96, max_len=20, listwise=listwise), seed=1)))
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    if listwise:
        step = lambda b: bce(model.score_request(b)[b.mask], b.label[b.mask])  # noqa: E731
    else:
        step = lambda b: bce(model(b), b.label)  # noqa: E731
    grads = []
    for parts in (1, 3):
        model.zero_grad()
        loss = accumulate_gradients(step, batch, parts, nullcontext())
        grads.append((loss, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
