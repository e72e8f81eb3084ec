"""Compiled serving programs: the user encoder and candidate scorer exported with torch.export (and AOTInductor)
equal the eager model at history widths and candidate counts other than the traced ones, serve in place of the
model inside Scorer, and a model that does not export is refused with the operation that stops it."""
from __future__ import annotations

import json

import pytest
import torch

from ctrscale.data.gsu import Searcher
from ctrscale.models.registry import build_model
from ctrscale.serving import BundleError, Scorer
from ctrscale.serving.bundle import Bundle
from ctrscale.serving.compiled import example_request, export_programs, has_compiler, load_programs
from ctrscale.serving.features import FeatureEncoder

MAX_LEN = 100  # not a multiple of 8: the widest history (100) is padded to 104 for the programs
SMALL = {"din": {}, "suan": {"embed_dim": 4, "head_hidden": [16]},
         "hstu": {"embed_dim": 4, "head_hidden": [16]}, "sparsectr": {"embed_dim": 8, "dim": 16, "heads": 2},
         "fat": {"dim": 16, "heads": 2}, "est": {"attention": "full", "dim": 16, "heads": 2}, "wukong": {}}
STATEFUL = {"hstu", "sparsectr", "suan"}  # the rest keep no user state (EST full attention too)
SIZES = [(0, 2), (3, 1), (40, 7), (200, 300)]  # (behaviors, candidates); 200 is cut to MAX_LEN


def _model(tiny, name, **cfg):
    torch.manual_seed(0)
    return build_model(tiny.spec, {"name": name, **cfg}, content=tiny.content()).eval().for_serving()


def _encoder(tiny, model, max_len=MAX_LEN) -> FeatureEncoder:
    """The feature encoder a bundle of `model` on `tiny` has (bundle._encoder, from the dataset's files)."""
    spec = tiny.spec
    vocabs = {name: tiny.vocab(name).values.tolist() for name in set(spec.field_vocab.values())}
    cand_seq = model.needs.cand_seq
    searcher = None if cand_seq is None else Searcher.standalone(spec, cand_seq, tiny.content())
    return FeatureEncoder(spec, {}, vocabs, tiny.report["numeric_standardisation"], max_len, searcher)


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    """name -> (eager model, encoder, compiled dir, export report), exported (no AOTI) on first use."""
    made = {}

    def get(name):
        if name not in made:
            model = _model(tiny, name, **SMALL[name])
            encoder = _encoder(tiny, model)
            out = tmp_path_factory.mktemp(name) / "compiled"
            made[name] = (model, encoder, out, export_programs(model, encoder, out, aoti=False))
        return made[name]
    return get


def _scores(model, enc):
    with torch.inference_mode():
        cands = [enc.cand_sparse, enc.cand_dense, enc.cand_hist, enc.cand_hist_time]
        return model.score_candidates(model.encode_user(enc.context), *cands)


def _assert_equal_to_eager(model, compiled, encoder, seed=0):
    for i, (n_hist, n_cand) in enumerate(SIZES):
        enc = encoder.encode(example_request(encoder, n_hist, n_cand, seed=seed + i))
        want, got = _scores(model, enc), _scores(compiled, enc)
        assert got.shape == want.shape == (1, n_cand)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=lambda m: f"{n_hist}/{n_cand}: {m}")
        torch.testing.assert_close(torch.sigmoid(got), torch.sigmoid(want), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_exported_programs_equal_eager_at_any_size(name, exported):
    model, encoder, out, report = exported(name)
    meta = json.loads((out / "programs.json").read_text())
    assert report["candidate_scorer"].startswith("exported")
    if name in STATEFUL:
        assert report["user_encoder"].startswith("exported") and "user_encoder" in meta["files"]
    else:  # nothing to encode ahead of the candidates
        assert report["user_encoder"].startswith("not needed") and "user_encoder" not in meta["files"]
    json.dumps(report)  # the manifest stores it
    compiled = load_programs(out, model)
    assert set(compiled.kind.values()) == {"exported"}
    assert (compiled.needs, compiled.reuses_user_state) == (model.needs, model.reuses_user_state)
    _assert_equal_to_eager(model, compiled, encoder)


def test_fast_kernel_that_fixes_the_width_falls_back_to_reference_attention(exported):
    """SUAN's blocked causal kernel loops over query blocks in Python: the dense reference kernel stands in."""
    report = exported("suan")[3]["user_encoder"]
    assert "with the reference attention kernels" in report
    assert "history width is fixed to the traced size by models/attention/causal.py" in report


@pytest.mark.parametrize("name", ["hstu", "suan"])
def test_compiled_model_serves_inside_scorer(name, exported, tmp_path):
    """Scorer with the programs in place of the model: the same scores through its cache (miss, hit, grown
    history: the programs do not extend a state, so that is a miss) as with the eager model."""
    model, encoder, out, _ = exported(name)
    bundle = Bundle(tmp_path, {"model": name}, "0" * 64, model, encoder, {})
    eager, compiled = Scorer(bundle), Scorer(bundle)
    compiled.model = load_programs(out, model)
    first = example_request(encoder, 30, 9, seed=7)
    grown = json.loads(json.dumps(first))
    for k, v in grown["history"].items():  # two more behaviors, at the time of the latest
        v += [v[-1]] * 2 if k == "time" else v[:2]
    for req, want_event, got_event in [(first, "miss", "miss"), (first, "hit", "hit"),
                                       (grown, "extend" if name == "hstu" else "miss", "miss")]:
        want, got = eager.score(req), compiled.score(req)
        assert (want.cache, got.cache) == (want_event, got_event)
        torch.testing.assert_close(torch.from_numpy(got.scores), torch.from_numpy(want.scores), atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.skipif(not has_compiler(), reason="AOTInductor needs a C++ compiler")
def test_aoti_programs_equal_eager(tiny, tmp_path):
    """AOTInductor packages where they compile (SUAN's user encoder); a part Inductor cannot lower keeps its
    exported program, and says so."""
    model = _model(tiny, "suan", **SMALL["suan"])
    encoder = _encoder(tiny, model)
    report = export_programs(model, encoder, tmp_path / "compiled", aoti=True)
    assert "aoti-compiled" in report["user_encoder"]
    compiled = load_programs(tmp_path / "compiled", model)
    assert compiled.kind["user_encoder"] == "aoti"
    scorer = report["candidate_scorer"]
    assert ("aoti-compiled" in scorer) == (compiled.kind["candidate_scorer"] == "aoti")
    assert "aoti-compiled" in scorer or "aoti failed, the exported program serves: " in scorer
    _assert_equal_to_eager(model, compiled, encoder, seed=10)


@pytest.mark.parametrize("name, cfg, operation", [
    ("est", {"dim": 16, "heads": 2}, "models/content.py:87 in csa_apply: `a = torch.sparse_csr_tensor("),
])
def test_model_that_does_not_export_is_refused_naming_the_operation(tiny, tmp_path, name, cfg, operation):
    model = _model(tiny, name, **cfg)
    try:
        report = export_programs(model, _encoder(tiny, model), tmp_path / "compiled", aoti=False)
    except BundleError as e:
        message = str(e)
        assert message.startswith(f"model {name} does not export: ") and operation in message
        assert message.endswith("; export without --compile") and "\n" not in message
    else:
        pytest.skip(f"{name} exports now ({report}); pick another model that does not")
