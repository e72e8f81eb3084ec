"""Row-wise sharded embedding tables (train/sharding.py) under torchrun (gloo, 2 CPU processes)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from ctrscale.cli import main
from ctrscale.train.inference import load_trained, predict

WORKER = textwrap.dedent('''
    import sys
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch import nn
    from ctrscale.models.tables import EmbeddingTable
    from ctrscale.train.sharding import RowShardedEmbedding, clip_gradients, full_state, shard_tables

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    out = sys.argv[1]
    torch.manual_seed(0)
    full = EmbeddingTable(11, 4, padding_idx=0)               # the same table on every rank
    model = nn.ModuleDict({"t": full, "small": EmbeddingTable(3, 4), "other": nn.Embedding(11, 4)})
    shards = shard_tables(model, rank, world, min_rows=5)
    sharded = model["t"]
    assert isinstance(sharded, RowShardedEmbedding) and isinstance(model["small"], EmbeddingTable)
    assert type(model["other"]) is nn.Embedding  # not a table (a position embedding, say): never sharded
    # each rank looks up its own ids (different counts, repeats, padding), weighted differently
    gen = torch.Generator().manual_seed(rank)
    ids = torch.randint(0, 11, (3 + 2 * rank, 5), generator=gen)
    weights = torch.randn(3 + 2 * rank, 5, 4, generator=gen)
    got = sharded(ids)
    (got * weights).sum().backward()
    np.save(f"{out}/ids{rank}.npy", ids.numpy())
    np.save(f"{out}/weights{rank}.npy", weights.numpy())
    np.save(f"{out}/out{rank}.npy", got.detach().numpy())
    np.save(f"{out}/grad{rank}.npy", sharded.gather_rows(sharded.weight.grad).numpy())
    np.save(f"{out}/full{rank}.npy", full_state(model)["t.weight"].numpy())
    clip_gradients(list(model.parameters()), 0.5, shards)
    np.save(f"{out}/clipped{rank}.npy", sharded.gather_rows(sharded.weight.grad).numpy())
    dist.destroy_process_group()
''')


def _torchrun(args: list[str], nproc: int = 2) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def test_sharded_lookup_and_gradient_equal_a_whole_table(tmp_path):
    """Against nn.Embedding in this process: every rank's outputs; the gathered gradient (scaled by 1/W, as
    DDP scales the dense ones) equals the whole table's gradient of the ranks' summed losses; the gathered
    weight equals the table; the row of padding id 0 stays zero; clipping uses the global norm."""
    (tmp_path / "worker.py").write_text(WORKER)
    _torchrun([str(tmp_path / "worker.py"), str(tmp_path)])
    torch.manual_seed(0)
    table = torch.nn.Embedding(11, 4, padding_idx=0)
    loss = 0.0
    for r in range(2):
        ids = torch.from_numpy(np.load(tmp_path / f"ids{r}.npy"))
        out = table(ids)
        np.testing.assert_allclose(np.load(tmp_path / f"out{r}.npy"), out.detach().numpy(), rtol=1e-6, atol=1e-7)
        loss = loss + (out * torch.from_numpy(np.load(tmp_path / f"weights{r}.npy"))).sum()
    loss.backward()
    want = table.weight.grad / 2
    for r in range(2):
        np.testing.assert_allclose(np.load(tmp_path / f"grad{r}.npy"), want.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.load(tmp_path / f"full{r}.npy"), table.weight.detach().numpy())
        assert not np.load(tmp_path / f"grad{r}.npy")[0].any()
    clipped = want * min(1.0, 0.5 / (want.norm().item() + 1e-6))      # the small table had no gradient
    np.testing.assert_allclose(np.load(tmp_path / "clipped0.npy"), clipped.numpy(), rtol=1e-5, atol=1e-7)


OPTIONS = "{impressions: 20000, n_users: 1500, n_items: 400}"
COMMON = ["data.name=synthetic", f"data.options={OPTIONS}", "data.max_len=20", "data.batch_size=512",
          "train.epochs=2", "train.patience=2", "train.progress=false", "train.threads=1", "model.name=din",
          "train.checkpoint_every=10"]
ROW = ["train.embedding_sharding=row", "train.shard_min_rows=64"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process; two with row-sharded tables; two sharded stopped mid-run then resumed in one process."""
    import os
    os.environ["CTRSCALE_HOME"] = str(tmp_path_factory.mktemp("home"))
    out = tmp_path_factory.mktemp("runs")
    _torchrun(["-m", "ctrscale.cli", "train", "name=rows", f"out_dir={out}", *COMMON, *ROW])
    assert main(["train", "name=one", f"out_dir={out}", *COMMON]) == 0
    _torchrun(["-m", "ctrscale.cli", "train", "name=moved", f"out_dir={out}", *COMMON, *ROW, "train.max_steps=25"])
    assert main(["train", "--resume", "name=moved", f"out_dir={out}", *COMMON]) == 0
    return {k: json.loads((out / k / "results.json").read_text()) | {"dir": out / k} for k in ("one", "rows", "moved")}


def test_row_sharded_training_equals_one_process(runs):
    one, rows = runs["one"], runs["rows"]
    assert rows["row_sharded"] == {"world": 2, "tables": ["emb.tables.item_id", "emb.tables.user_id"]}
    assert rows["epochs_run"] == one["epochs_run"] and rows["params"] == one["params"]     # tables count whole
    for k in ("auc", "gauc", "logloss"):
        assert abs(rows["test"][k] - one["test"][k]) < 1e-4, (k, one["test"][k], rows["test"][k])
    w1 = torch.load(one["dir"] / "best.pt", weights_only=True)
    w2 = torch.load(rows["dir"] / "best.pt", weights_only=True)                          # whole tables
    assert {k: v.shape for k, v in w1.items()} == {k: v.shape for k, v in w2.items()}
    assert max((w1[k].float() - w2[k].float()).abs().max().item() for k in w1) < 5e-3


def test_a_sharded_run_serves_and_resumes_in_one_process(runs):
    cfg, data, model, device = load_trained(runs["rows"]["dir"])
    alone = predict(model, data, "test", 20, cfg.data.eval_batch_size, device)
    gathered = np.load(runs["rows"]["dir"] / "test_predictions.npz")
    np.testing.assert_allclose(gathered["prob"], alone["prob"], rtol=1e-5, atol=1e-6)
    one, moved = runs["one"], runs["moved"]
    for k in ("auc", "gauc"):
        assert abs(moved["test"][k] - one["test"][k]) < 1e-4, (k, one["test"][k], moved["test"][k])
