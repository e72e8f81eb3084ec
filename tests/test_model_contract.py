"""The contract every registered model must pass (shared/spec/style.md): it runs over the whole registry,
so a model added later is checked without touching this file."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from ctrscale.batch import RequestBatch
from ctrscale.data.loader import Loader, LoaderConfig
from ctrscale.models.registry import build_model, default_config, entries
from ctrscale.typed import ConfigError

MODELS = sorted(entries())


def _batch(data, model, n=64, max_len=20, split="train", listwise=False, seed=1):
    """Batches as the recipe loads them for this model (with candidate-specific behaviors if it reads them)."""
    cfg = LoaderConfig(batch_size=n, max_len=max_len, shuffle=True, listwise=listwise,
                       cand_seq=model.needs.cand_seq)
    return next(iter(Loader(data, split, cfg, seed=seed)))


def _model(name, data, seed=0):
    torch.manual_seed(seed)
    return build_model(data.spec, {"name": name}, content=data.content()).eval()


def _no_behaviors(b):
    empty = dict(hist=torch.zeros_like(b.hist), hist_time=torch.zeros_like(b.hist_time))
    if b.cand_hist is not None:
        empty.update(cand_hist=torch.zeros_like(b.cand_hist), cand_hist_time=torch.zeros_like(b.cand_hist_time))
    return dataclasses.replace(b, **empty)


@pytest.mark.parametrize("name", MODELS)
def test_forward_shapes_and_finite(name, tiny):
    model = _model(name, tiny)
    b = _batch(tiny, model)
    out = model(b)
    assert out.shape == (len(b),) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("max_len", [1, 7, 33])
def test_any_history_length_and_batch_of_one(name, tiny, max_len):
    model = _model(name, tiny)
    assert torch.isfinite(model(_batch(tiny, model, n=1, max_len=max_len))).all()


@pytest.mark.parametrize("name", MODELS)
def test_no_nan_on_all_padding(name, tiny):
    model = _model(name, tiny)
    out = model(_no_behaviors(_batch(tiny, model)))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_padding_is_ignored(name, tiny):
    """Whatever ids sit in padded slots (time == 0) of R_u (and of R_c), the output is the same."""
    model = _model(name, tiny)
    b = _batch(tiny, model)
    smallest = min(tiny.spec.vocab_sizes[tiny.spec.field_vocab[f"hist.{h}"]] for h in tiny.spec.hist)

    def noisy(ids, pad):
        assert pad.any()
        out = ids.clone()
        out[pad] = torch.randint(2, smallest, out[pad].shape)
        return out
    changed = dict(hist=noisy(b.hist, ~b.hist_mask))
    if b.cand_hist is not None:
        changed["cand_hist"] = noisy(b.cand_hist, ~b.cand_hist_mask)
    torch.testing.assert_close(model(dataclasses.replace(b, **changed)), model(b))


@pytest.mark.parametrize("name", MODELS)
def test_loss_decreases_on_a_tiny_batch(name, tiny):
    model = _model(name, tiny).train()
    b = _batch(tiny, model, n=64)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits
    first = loss_fn(model(b), b.label).item()
    for _ in range(40):
        opt.zero_grad()
        loss = loss_fn(model(b), b.label)
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first


@pytest.mark.parametrize("name", MODELS)
def test_save_load_round_trip(name, tiny, tmp_path):
    model = _model(name, tiny, seed=0)
    b = _batch(tiny, model)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    other = _model(name, tiny, seed=123)
    other.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    torch.testing.assert_close(other(b), model(b))


@pytest.mark.parametrize("name", MODELS)
def test_request_scoring_equals_pointwise(name, tiny):
    model = _model(name, tiny)
    rb = _batch(tiny, model, n=128, split="valid", listwise=True, seed=3)
    assert isinstance(rb, RequestBatch) and rb.num_candidates > 1
    with torch.no_grad():
        by_request = model.score_request(rb)[rb.mask]
        pointwise = model(rb.flat())
    torch.testing.assert_close(by_request, pointwise, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_misspelled_config_key_is_an_error(name, tiny):
    cfg = default_config(name)
    cfg["definitely_not_a_key"] = 1
    with pytest.raises(ConfigError, match="definitely_not_a_key"):
        build_model(tiny.spec, cfg)
