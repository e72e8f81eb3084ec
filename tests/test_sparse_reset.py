"""Multi-epoch asynchronous training: the reset touches exactly the sparse parameters and their optimizer state;
a warm start fills the snapshot; an interrupted run with resets resumes to the uninterrupted result."""
from __future__ import annotations

import torch
from conftest import raw_dir

from ctrscale.data.loader import Loader, LoaderConfig
from ctrscale.models.registry import build_model
from ctrscale.train import sparse
from ctrscale.train.config import load_config
from ctrscale.train.loop import fit
from ctrscale.train.optim import make_optimizer


def test_reset_restores_exactly_the_sparse_parameters_and_their_state(tiny):
    torch.manual_seed(0)
    model = build_model(tiny.spec, {"name": "din"})
    opt = make_optimizer(model, load_config().optim)
    saved = sparse.snapshot(model)
    batch = next(iter(Loader(tiny, "train", LoaderConfig(batch_size=128, max_len=20))))
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.label).backward()
        opt.step()
    tables = sparse.sparse_parameters(model)
    dense_before = {n: p.detach().clone() for n, p in model.named_parameters() if n not in tables}
    dense_state = {n: {k: v.clone() for k, v in opt.state[p].items()}
                   for n, p in model.named_parameters() if n not in tables and p in opt.state}
    moved = [n for n, p in sparse.sparse_parameters(model).items() if not torch.equal(p, saved[n])]
    assert moved and dense_state

    assert sparse.reset(model, opt, saved) == len(saved)
    for n, p in model.named_parameters():
        if n in tables:
            assert torch.equal(p, saved[n]) and p not in opt.state, n
        else:
            assert torch.equal(p, dense_before[n]), n
            if n in dense_state:
                for k, v in dense_state[n].items():
                    assert torch.equal(opt.state[p][k], v), (n, k)
    opt.zero_grad()  # the optimizer carries on: the reset tables get fresh Adam state at the next step
    torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.label).backward()
    opt.step()
    assert all(p in opt.state for p in sparse.sparse_parameters(model).values() if p.grad is not None)


def _cfg(tmp_path, name, *extra):
    return load_config(overrides=[f"name={name}", f"out_dir={tmp_path}", "data.name=ml100k-ctr-v1",
                                  f"data.raw_dir={raw_dir('ml-100k')}", "model.name=mlp", "train.patience=5",
                                  "train.progress=false", "train.threads=2", "train.checkpoint_every=10",
                                  "data.batch_size=4096", *extra])


def test_async_run_warm_starts_and_resumes_exactly(tmp_path):
    fit(_cfg(tmp_path, "earlier", "train.epochs=1"))
    earlier = torch.load(tmp_path / "earlier" / "best.pt", weights_only=True)
    opts = ("train.epochs=3", "train.sparse_reset=true", f"train.sparse_init={tmp_path / 'earlier'}")
    ref = fit(_cfg(tmp_path, "ref", *opts))
    snap = torch.load(tmp_path / "ref" / "sparse_snapshot.pt", weights_only=True)
    assert snap and all(torch.equal(v, earlier[k]) for k, v in snap.items())  # the warm start is the snapshot
    # stopped in the middle of the second epoch (20 steps per epoch), then resumed
    assert fit(_cfg(tmp_path, "cut", *opts, "train.max_steps=27")).step == 27
    res = fit(_cfg(tmp_path, "cut", *opts), resume=True)
    assert res.test == ref.test
    last_ref = torch.load(tmp_path / "ref" / "last.pt", weights_only=False)["model"]
    last_cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(v, last_cut[k]) for k, v in last_ref.items())
    plain = fit(_cfg(tmp_path, "plain", "train.epochs=3", f"train.sparse_init={tmp_path / 'earlier'}"))
    assert plain.test != ref.test  # the resets change the training
