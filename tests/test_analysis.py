"""The attention analysis: effective ranks against closed forms, and the CLI end to end on a trained model."""
from __future__ import annotations

import json

import numpy as np
import torch

from ctrscale.analysis import _ranks
from ctrscale.cli import main


def test_effective_ranks_against_closed_forms():
    eye = torch.eye(5)[None]
    rank1 = torch.outer(torch.rand(4) + 0.1, torch.rand(6) + 0.1)[None]
    diag = torch.diag(torch.tensor([3.0, 1.0, 1.0]))[None]
    stable, erank = _ranks(torch.cat([torch.nn.functional.pad(eye, (0, 1, 0, 1)),
                                      torch.nn.functional.pad(rank1, (0, 0, 0, 2)),
                                      torch.nn.functional.pad(diag, (0, 3, 0, 3))]))
    np.testing.assert_allclose(stable.numpy(), [5.0, 1.0, 11 / 9], rtol=1e-6)
    p = np.array([3, 1, 1]) / 5
    np.testing.assert_allclose(erank.numpy(), [5.0, 1.0, np.exp(-(p * np.log(p)).sum())], rtol=1e-6)
    assert torch.isnan(_ranks(torch.zeros(1, 3, 3))[0]).all()  # an empty block has no rank


def test_analyze_attention_cli_on_a_trained_full_attention_model(tmp_path, capsys):
    assert main(["train", "name=fa", f"out_dir={tmp_path}", "model.name=est", "model.attention=full",
                 "model.dim=16", "model.heads=2", "data.name=synthetic", "data.options={impressions: 20000}",
                 "train.epochs=1", "train.progress=false", "data.max_len=20", "train.threads=2"]) == 0
    assert main(["analyze", "attention", str(tmp_path / "fa"), "--samples", "100"]) == 0
    out = tmp_path / "fa" / "analysis"
    assert (out / "block_rank.png").stat().st_size > 1000
    report = json.loads((out / "attention.json").read_text())
    assert [r["masked"] for r in report["masking"]] == ["none", "N->N", "N->S", "S->N", "S->S"]
    assert report["masking"][0]["auc_rel"] == 0.0
    for layer in report["ranks"].values():
        assert set(layer) == {"N->N", "N->S", "S->N", "S->S"}
        assert all(v["stable"] >= 1.0 - 1e-9 and v["erank"] >= v["stable"] - 1e-6 for v in layer.values())
    assert "| N->S |" in capsys.readouterr().out
