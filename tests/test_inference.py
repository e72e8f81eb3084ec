"""Scoring a whole split: batches planned by history length, predictions back in the split's stored order."""
from __future__ import annotations

import torch

from ctrscale.data.loader import Loader, LoaderConfig
from ctrscale.models.registry import build_model
from ctrscale.train.inference import predict


def test_predict_in_length_order_returns_rows_in_stored_order(tiny):
    torch.manual_seed(0)
    model = build_model(tiny.spec, {"name": "din"}).eval()
    got = predict(model, tiny, "valid", max_len=30, batch_size=64, device=torch.device("cpu"))
    plain = Loader(tiny, "valid", LoaderConfig(batch_size=64, max_len=30, shuffle=False, trim=False))
    with torch.no_grad():
        batches = list(plain.epoch(0))
        ref = torch.sigmoid(torch.cat([model(b) for b in batches])).numpy()
    torch.testing.assert_close(torch.from_numpy(got["prob"]), torch.from_numpy(ref), rtol=1e-5, atol=1e-6)
    assert (got["user"] == torch.cat([b.user for b in batches]).numpy()).all()
    assert (got["label"] == torch.cat([b.label for b in batches]).numpy()).all()
