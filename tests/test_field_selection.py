"""Per-run field selection (data.fields / data.drop_fields): a selected dataset's rows are the full rows' kept
columns, names are checked against the dataset, the GSU and the models follow the selection, a run records it,
and evaluation and serving see the same fields the run trained on."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ctrscale.batch import CandidateSequence
from ctrscale.cli import main as cli
from ctrscale.data.dataset import PreparedDataset
from ctrscale.data.loader import Loader, LoaderConfig
from ctrscale.errors import ConfigError
from ctrscale.models.registry import build_model, entries

DROP = ["hour", "price", "hist.action", "region"]


def selected(tiny, keep=None, drop=()):
    return PreparedDataset(tiny.root).select_fields(keep, drop)


def test_selected_rows_are_the_kept_columns_of_the_full_rows(tiny):
    full, sel = PreparedDataset(tiny.root), selected(tiny, drop=DROP)
    spec = sel.spec
    assert spec.sparse == ("user_id", "age", "gender", "item_id", "category", "brand", "weekday")
    assert spec.dense == () and spec.hist == ("item_id", "category")
    assert set(spec.roles) == {*spec.sparse} and "hist.action" not in spec.field_vocab
    assert set(spec.vocab_sizes) == set(spec.field_vocab.values())
    assert spec.hist_to_sparse == [3, 4]                       # the candidate still aligns with its behaviors
    idx = np.arange(3, 4000, 37)
    a, b = full.gather("train", idx, 20), sel.gather("train", idx, 20)
    for key, names, kept in (("sparse", full.spec.sparse, spec.sparse), ("dense", full.spec.dense, spec.dense)):
        np.testing.assert_array_equal(b[key], a[key][:, [names.index(f) for f in kept]])
    np.testing.assert_array_equal(b["hist"], a["hist"][..., [full.spec.hist.index(h) for h in spec.hist]])
    for key in ("hist_time", "label", "user", "request", "time"):
        np.testing.assert_array_equal(b[key], a[key])
    col = sel.split("train").column("sparse")
    np.testing.assert_array_equal(col, full.split("train").column("sparse")[:, [0, 1, 2, 4, 5, 6, 8]])


def test_keep_list_and_drop_list_combine(tiny):
    spec = selected(tiny, keep=["item_id", "user_id", "hist.item_id", "hist.action", "price"], drop=["price"]).spec
    assert (spec.sparse, spec.dense, spec.hist) == (("user_id", "item_id"), (), ("item_id", "action"))
    assert selected(tiny).spec == tiny.spec                    # nothing selected: the dataset as prepared


@pytest.mark.parametrize("key,kw", [("data.fields", {"keep": ["item_id", "colour"]}),
                                    ("data.drop_fields", {"drop": ["action"]})])
def test_an_unknown_name_is_refused_listing_the_fields(tiny, key, kw):
    with pytest.raises(ConfigError, match=rf"{key}: no field .*; its fields are user_id, .*hist.action"):
        selected(tiny, **kw)


def test_content_and_the_gsu_follow_the_selection(tiny):
    no_item = selected(tiny, drop=["item_id"])
    assert no_item.spec.content_key is None and no_item.content() is None
    with pytest.raises(ConfigError, match="soft search"):
        no_item.searcher(CandidateSequence(5, "content"))
    # hard search by category reads the kept behavior field at its new column
    full, sel = PreparedDataset(tiny.root), selected(tiny, drop=["hist.item_id", "region"])
    cfg = CandidateSequence(5, "category")
    idx = np.arange(0, 600, 11)
    a, b = full.searcher(cfg).take("train", idx), sel.searcher(cfg).take("train", idx)
    np.testing.assert_array_equal(b["cand_hist_time"], a["cand_hist_time"])
    np.testing.assert_array_equal(b["cand_hist"], a["cand_hist"][..., [1, 2]])


@pytest.mark.parametrize("name", sorted(entries()))
def test_every_model_builds_and_scores_on_a_selection(tiny, name):
    """No model assumes a field: without a user field, a context field, the numeric field and a behavior field,
    every registered model trains a step and scores requests as it scores impressions."""
    sel = selected(tiny, drop=DROP)
    torch.manual_seed(0)
    model = build_model(sel.spec, {"name": name}, content=sel.content())
    cfg = LoaderConfig(batch_size=32, max_len=12, shuffle=False, cand_seq=model.needs.cand_seq)
    batch = next(iter(Loader(sel, "valid", cfg)))
    assert batch.sparse.shape[1] == 7 and batch.hist.shape[2] == 2 and batch.dense.shape[1] == 0
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.label)
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        one = lambda t: None if t is None else t.unsqueeze(1)  # noqa: E731
        by_request = model.score_candidates(model.encode_user(batch), one(batch.sparse), one(batch.dense),
                                            one(batch.cand_hist), one(batch.cand_hist_time))[:, 0]
        torch.testing.assert_close(by_request, model(batch), rtol=1e-4, atol=1e-5)


def test_a_run_records_its_selection_and_eval_reads_the_same_fields(tiny, tmp_path):
    args = ["train", "name=sel", f"out_dir={tmp_path}", f"data.path={tiny.root}", "model.name=din",
            "model.embed_dim=4", "train.epochs=1", "train.progress=false", "data.max_len=10",
            "data.drop_fields=[hour,price,hist.action,region]"]
    assert cli(args) == 0
    res = json.loads((tmp_path / "sel" / "results.json").read_text())
    assert res["config"]["data"]["drop_fields"] == DROP
    assert res["fields"] == ["user_id", "age", "gender", "item_id", "category", "brand", "weekday",
                             "hist.item_id", "hist.category"]
    spec = json.loads((tmp_path / "sel" / "data_spec.json").read_text())
    assert spec["hist"] == ["item_id", "category"]
    out = tmp_path / "pred.parquet"
    assert cli(["eval", str(tmp_path / "sel"), "--predictions", str(out)]) == 0  # loads with the run's fields
    import pyarrow.parquet as pq
    pred = pq.read_table(out).to_pydict()
    from ctrscale.metrics import auc
    assert abs(auc(np.array(pred["label"]), np.array(pred["prob"])) - res["test"]["auc"]) < 1e-9


def test_a_bundle_serves_the_selection_as_offline_eval_scores_it(tiny, tmp_path):
    """Requests carry every prepared field (as a client built for the full schema sends them): the bundle reads
    the fields its run trained on, and scores equal `ctrscale eval` of that run."""
    import pyarrow.parquet as pq
    from ctrscale.serving import RequestError, Scorer, export_bundle
    from ctrscale.serving.replay import RawDecoder, random_run
    run = random_run(tmp_path / "runs", tiny, "din", "data.drop_fields=[hour,price,hist.action,region]",
                     "data.max_len=10", "model.embed_dim=4")
    scorer = Scorer(export_bundle(run, tmp_path / "bundle"))
    out = tmp_path / "pred.parquet"
    assert cli(["eval", str(run), "--fraction", "0.05", "--predictions", str(out)]) == 0
    p = pq.read_table(out).to_pydict()
    prob = dict(zip(p["row"], p["prob"]))
    requests = RawDecoder(PreparedDataset(tiny.root)).requests("test", np.array(p["row"]))
    assert len(requests) >= 5
    for req, rows in requests:
        assert "hour" in req["context"] and "action" in req["history"]  # sent, not read
        np.testing.assert_allclose(scorer.score(req).scores, [prob[r] for r in rows], atol=1e-5, rtol=0)
    req["context"]["colour"] = "red"                                  # a name the schema does not have
    with pytest.raises(RequestError, match="context.colour: unknown field"):
        scorer.score(req)


def test_shipped_fuxictr_config_gives_fuxictrs_movielens_features(ml100k):
    """`--config fuxictr-features` names a config shipped with ctrscale; on MovieLens it leaves exactly the
    features of FuxiCTR's set-up."""
    from ctrscale.train.config import load_config
    cfg = load_config("fuxictr-features", ["model.name=din", "data.name=ml100k-ctr-v1"])
    assert (cfg.data.batch_size, cfg.optim.schedule, cfg.train.patience, cfg.train.epochs) == (256, "plateau", 2, 10)
    sel = PreparedDataset(ml100k.root).select_fields(cfg.data.fields, cfg.data.drop_fields)
    assert sel.fields == ["user_id", "age", "gender", "occupation", "zip_prefix", "item_id", "genre",
                          "release_decade", "hist.item_id", "hist.genre"]
    with pytest.raises(ConfigError, match="no config of that name ships with ctrscale .*fuxictr-features"):
        load_config("fuxictr-feature")
