"""Shared fixtures. Real data lies in ../shared/data beside the checkout; tests that need it skip without it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CTRSCALE_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(min(2, os.cpu_count() or 1))


def raw_dir(folder: str) -> Path:
    p = SHARED_DATA / folder
    if not p.is_dir():
        pytest.skip(f"real data not found at {p} (set CTRSCALE_DATA to the folder holding ml-100k/)")
    return p


@pytest.fixture(scope="session")
def ml100k(tmp_path_factory):
    from ctrscale.data.dataset import PreparedDataset
    from ctrscale.data.movielens import prepare_movielens
    out = tmp_path_factory.mktemp("prep") / "ml100k-ctr-v1"
    prepare_movielens("ml100k-ctr-v1", raw_dir("ml-100k"), out)
    return PreparedDataset(out)


@pytest.fixture(scope="session")
def ml1m(tmp_path_factory):
    from ctrscale.data.dataset import PreparedDataset
    from ctrscale.data.movielens import prepare_movielens
    out = tmp_path_factory.mktemp("prep") / "ml1m-u2999-ctr-v1"
    prepare_movielens("ml1m-u2999-ctr-v1", raw_dir("ml-1m-u2999"), out)
    return PreparedDataset(out)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A small synthetic dataset: available everywhere, fast to prepare."""
    from ctrscale.data.dataset import PreparedDataset
    from ctrscale.data.synthetic import prepare_synthetic
    out = tmp_path_factory.mktemp("prep") / "synthetic-tiny"
    prepare_synthetic(out, n_users=300, n_items=200, impressions=6000, seed=0)
    return PreparedDataset(out)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Named datasets prepared by a test go to a temporary home, never the user's cache."""
    monkeypatch.setenv("CTRSCALE_HOME", str(tmp_path / "home"))
