"""Serving: a bundle scores raw requests exactly as offline evaluation scores the prepared rows, for every model;
bundles verify their files; the user-state cache's hits and extensions equal a fresh encode."""
from __future__ import annotations

import copy
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ctrscale.cli import main as cli
from ctrscale.models.registry import entries
from ctrscale.serving import BundleError, RequestError, Scorer, export_bundle, load_bundle
from ctrscale.serving.replay import RawDecoder, random_run

REUSING = ["can", "est", "eta", "hstu", "lightsuan", "longer", "mtgr", "sim", "sparsectr", "suan", "twinv2"]


@pytest.fixture(scope="module")
def bundles(ml1m, tmp_path_factory):
    """name -> (run folder, bundle folder), made on first use."""
    root = tmp_path_factory.mktemp("serving")
    made = {}

    def get(name, *overrides):
        key = (name, overrides)
        if key not in made:
            label = name + "".join(f"-{i}" for i in range(len(made)))
            run = random_run(root / "runs", ml1m, name, *overrides, f"name={label}")
            made[key] = (run, export_bundle(run, root / "bundles" / label))
        return made[key]
    return get


def offline_and_requests(ml1m, run, tmp_path, fraction=0.002):
    """`ctrscale eval` predictions for a share of the test requests, and those requests as raw values."""
    out = tmp_path / "pred.parquet"
    assert cli(["eval", str(run), "--fraction", str(fraction), "--predictions", str(out)]) == 0
    p = pq.read_table(out).to_pydict()
    prob = dict(zip(p["row"], p["prob"]))
    return prob, RawDecoder(ml1m).requests("test", np.array(p["row"]))


@pytest.mark.parametrize("name", sorted(entries()))
def test_scorer_equals_offline_eval(name, ml1m, bundles, tmp_path):
    run, bundle = bundles(name)
    prob, requests = offline_and_requests(ml1m, run, tmp_path)
    assert len(requests) >= 30
    scorer = Scorer(bundle)
    unknown = 0
    for req, rows in requests:
        res = scorer.score(req)
        np.testing.assert_allclose(res.scores, [prob[r] for r in rows], atol=1e-5, rtol=0)
        unknown += sum(res.unknown.values())
    assert unknown > 0  # test users and items unseen in train come back as unknown values, counted


def test_bundle_is_self_contained_and_verified(ml1m, bundles, tmp_path):
    run, bundle = bundles("est")  # reads content vectors and candidate-specific behaviors (GSU)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {"config.yaml", "spec.json", "schema.yaml", "weights.pt", "numerics.json", "gsu.json", "content.npy",
            "vocab/item_id.json"} <= set(manifest["files"])
    assert manifest["model"] == "est" and manifest["torch"] == torch.__version__
    torch.load(bundle / "weights.pt", weights_only=True)  # plain tensors: no pickle code runs
    moved = tmp_path / "moved"  # nothing points back to the run or the dataset
    import shutil
    shutil.copytree(bundle, moved)
    req = RawDecoder(ml1m).requests("test", np.arange(3))[0][0]
    assert np.array_equal(Scorer(moved).score(req).scores, Scorer(bundle).score(req).scores)
    with open(moved / "weights.pt", "r+b") as f:  # one flipped byte
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(BundleError, match=r"weights\.pt: checksum mismatch"):
        load_bundle(moved)
    (moved / "vocab" / "genre.json").unlink()
    with pytest.raises(BundleError, match=r"genre\.json: missing"):
        load_bundle(moved)


def test_export_never_replaces_what_it_did_not_write(ml1m, bundles, tmp_path):
    run, bundle = bundles("din")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(BundleError, match="not a ctrscale bundle"):
        export_bundle(run, mine)
    assert (mine / "notes.txt").read_text() == "keep"
    with pytest.raises(BundleError, match="--overwrite"):
        export_bundle(run, bundle)
    assert export_bundle(run, bundle, overwrite=True) == bundle and load_bundle(bundle)


# ---------------------------------------------------------------------------------------------------------------
# the user-state cache


def _later(req, seconds=3600, context=None):
    """The same user and history, asked later with other context fields and other candidates."""
    out = copy.deepcopy(req)
    out["time"] += seconds
    out["context"] = {k: (context or {}).get(k, v) for k, v in out["context"].items()}
    out["candidates"] = {k: v[::-1] for k, v in out["candidates"].items()}
    return out


@pytest.mark.parametrize("name", REUSING)
def test_cache_hit_equals_fresh_encode(name, ml1m, bundles):
    """encode_user reads only the user fields and the history: a hit at another time, with other context fields
    and candidates, scores as a fresh encode does."""
    _, bundle = bundles(name)
    scorer = Scorer(bundle)
    req = RawDecoder(ml1m).requests("test", np.arange(200))[5][0]
    assert scorer.score(req).cache == "miss"
    later = _later(req, context={"hour": "3", "weekday": "6"})
    hit = scorer.score(later)
    assert hit.cache == "hit"
    np.testing.assert_allclose(hit.scores, scorer.score(later, use_cache=False).scores, atol=1e-6, rtol=0)


def _grown(ml1m, max_len):
    """A user's request and the same user's later request whose history only grew (within max_len)."""
    dec = RawDecoder(ml1m)
    sp = ml1m.split("test")
    user, start, end = sp.column("user"), sp.column("hist_start"), sp.column("hist_end")
    for u in np.unique(user):
        rows = np.flatnonzero(user == u)
        lens = end[rows] - start[rows]
        grew = np.flatnonzero((lens > lens.min()) & (lens <= max_len))
        small = np.flatnonzero((lens == lens.min()) & (lens > 0))
        if len(grew) and len(small):
            return dec.requests("test", rows[[small[0]]])[0][0], dec.requests("test", rows[[grew[0]]])[0][0]
    raise AssertionError("no user whose history grew within max_len")


def test_hstu_extends_a_grown_history_exactly(ml1m, bundles):
    _, bundle = bundles("hstu", "data.max_len=200")
    scorer = Scorer(bundle)
    first, second = _grown(ml1m, 200)
    assert len(second["history"]["time"]) > len(first["history"]["time"])
    assert scorer.score(first).cache == "miss"
    ext = scorer.score(second)
    assert ext.cache == "extend" and scorer.cache.events["extend"] == 1
    np.testing.assert_allclose(ext.scores, scorer.score(second, use_cache=False).scores, atol=1e-5, rtol=0)
    assert scorer.score(second).cache == "hit"


@pytest.mark.parametrize("name", ["suan", "sparsectr", "est"])
def test_models_that_cannot_extend_reencode(name, ml1m, bundles):
    """SUAN's gate pools the whole history, SparseCTR's chunks move, EST's content top-k depends on every
    behavior: a grown history is encoded afresh."""
    _, bundle = bundles(name, "data.max_len=200")
    scorer = Scorer(bundle)
    first, second = _grown(ml1m, 200)
    scorer.score(first)
    res = scorer.score(second)
    assert res.cache == "miss"
    np.testing.assert_allclose(res.scores, scorer.score(second, use_cache=False).scores, atol=1e-6, rtol=0)


def test_cache_evicts_least_recent_under_its_budget(ml1m, bundles):
    _, bundle = bundles("suan")
    requests = [r for r, _ in RawDecoder(ml1m).requests("test", np.arange(400))][:6]
    probe = Scorer(bundle)
    probe.score(requests[0])
    one = probe.cache.bytes
    scorer = Scorer(bundle, cache_mib=2.5 * one / 2**20)  # room for about two states
    for r in requests[:3]:
        scorer.score(r)
    assert scorer.cache.bytes <= scorer.cache.budget and scorer.cache.events["evict"] >= 1
    assert scorer.score(requests[2]).cache == "hit"   # the most recent stays
    assert scorer.score(requests[0]).cache == "miss"  # the least recent went first


# ---------------------------------------------------------------------------------------------------------------
# bad requests: the status and a message naming the JSON path


def _bad(req):
    r = copy.deepcopy(req)
    yield "unknown top-level field", {**r, "usr": {}}, 422, "usr: unknown field"
    no_age = {k: v for k, v in r["user"].items() if k != "age"}
    yield "missing user field", {**r, "user": no_age}, 422, "user.age: missing"
    yield "unknown user field", {**r, "user": {**r["user"], "agee": "1"}}, 422, "user.agee: unknown field"
    yield "wrong type", {**r, "user": {**r["user"], "age": [1]}}, 422, "user.age: expected a string or a number"
    yield "time as text", {**r, "time": "soon"}, 422, "time: expected an integer"
    yield "time in ms", {**r, "time": r["time"] * 1000}, 422, "time: .* not unix seconds"
    c = copy.deepcopy(r["candidates"])
    c["genre"] = c["genre"] + ["1"]
    yield "unequal columns", {**r, "candidates": c}, 422, r"candidates.genre: \d+ values, item_id has \d+"
    h = copy.deepcopy(r["history"])
    h["time"][-1] = r["time"]
    yield "behavior not before the request", {**r, "history": h}, 422, r"history.time\[\d+\]: .* not before"
    h = copy.deepcopy(r["history"])
    h["time"][0] = "x"
    yield "behavior time as text", {**r, "history": h}, 422, r"history.time\[0\]: expected an integer"
    yield "null candidate value", {**r, "candidates": {**c, "genre": [None] * len(c["item_id"])}}, 422, \
        r"candidates.genre\[0\]: expected a string or a number, got null"
    h = copy.deepcopy(r["history"])
    h["time"][0] = 10**30
    yield "behavior time beyond int64", {**r, "history": h}, 422, r"history.time\[0\]: .* not unix seconds"
    yield "no candidates", {**r, "candidates": {k: [] for k in c}}, 422, "candidates: at least 1"


def test_bad_requests_are_refused_naming_the_field(ml1m, bundles):
    _, bundle = bundles("sparsectr")
    scorer = Scorer(bundle)
    req = RawDecoder(ml1m).requests("test", np.arange(50))[0][0]
    good = scorer.score(req).scores
    for what, bad, status, message in _bad(req):
        with pytest.raises(RequestError, match=message) as e:
            scorer.score(bad)
        assert e.value.status == status, what
        assert np.array_equal(scorer.score(req).scores, good), f"{what} harmed the next request"


def test_list_of_objects_equals_columns(ml1m, bundles):
    _, bundle = bundles("din")
    scorer = Scorer(bundle)
    req = RawDecoder(ml1m).requests("test", np.arange(50))[0][0]
    rows = lambda cols: [dict(zip(cols, vals)) for vals in zip(*cols.values())]  # noqa: E731
    as_rows = {**req, "candidates": rows(req["candidates"]), "history": rows(req["history"])}
    assert np.array_equal(scorer.score(as_rows).scores, scorer.score(req).scores)


def test_eval_refuses_a_fraction_outside_0_1(ml1m, bundles, capsys):
    run, _ = bundles("din")
    assert cli(["eval", str(run), "--fraction", "2"]) == 2
    assert "--fraction: the share of the split's requests to score, in (0, 1]; got 2.0" in capsys.readouterr().err
