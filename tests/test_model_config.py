"""models/config.py: a model section resolved once and completely (presets, inactive keys, every key saved)."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
import yaml

from ctrscale.data.loader import Loader, LoaderConfig
from ctrscale.models.config import ModelChoice, resolve
from ctrscale.models.registry import build_model, entries
from ctrscale.models.sparsectr import SparseCTRConfig
from ctrscale.models.suan import SUANConfig
from ctrscale.train.config import load_config, save_config
from ctrscale.train.runs import config_drift
from ctrscale.typed import ConfigError

REPO = Path(__file__).resolve().parents[1]
# sections that switch modes, so that every inactive() branch is exercised
SECTIONS = [{"name": n} for n in sorted(entries())] + [
    {"name": "sparsectr", "attention": a} for a in ("full", "dilated", "linear")] + [
    {"name": "sparsectr", "encoding": "t5"}, {"name": "sparsectr", "local_branch": False},
    {"name": "fat", "projections": "pair"}, {"name": "est", "attention": "lca"},
    {"name": "onetrans", "candidate_sequence": "din"}, {"name": "mlp", "inputs": "fields"},
    {"name": "autoint", "inputs": "fields"}, {"name": "suan", "afnet": False}]


def test_a_saved_config_holds_every_model_key_and_loads_back(tmp_path):
    cfg = load_config(overrides=["model.name=suan", "model.size=size-3"])
    saved = cfg.to_dict()["model"]
    assert saved == {"name": "suan", **{f.name: getattr(cfg.model.config, f.name)
                                        for f in dataclasses.fields(SUANConfig)} | {"head_hidden": [1024, 512, 256]}}
    assert (saved["embed_dim"], saved["layers"], saved["heads"]) == (16, 4, 4)
    save_config(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["model"] == saved
    assert load_config(tmp_path / "config.yaml").to_dict() == cfg.to_dict()


@pytest.mark.parametrize("section", SECTIONS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_every_section_resolves_to_itself(section):
    """Written out with every key (inactive ones included), a section loads back to the same config."""
    full = resolve(section).to_dict()
    assert set(full) == {"name", *(f.name for f in dataclasses.fields(entries()[section["name"]].config))}
    assert resolve(full) == resolve(section)


def test_one_precedence_rule_for_presets():
    """A key given explicitly wins over the preset; the preset wins over the default; in YAML and in code."""
    c = resolve({"name": "suan", "size": "size-3", "layers": 6}).config
    assert (c.embed_dim, c.layers, c.heads) == (16, 6, 4)
    assert (SUANConfig(size="size-3").embed_dim, SUANConfig().embed_dim) == (16, 8)
    s = resolve({"name": "sparsectr", "sparsity": "S3", "window": 7}).config
    assert s.resolved() == (16, 3, 7)
    assert SparseCTRConfig(sparsity="S1").resolved() == (8, 1, 2)
    with pytest.raises(ConfigError, match="set all three"):
        SparseCTRConfig(sparsity="", chunks=4)


@pytest.mark.parametrize("section, message", [
    ({"name": "suan", "dilation": 3}, "model suan.dilation: has no effect here (it applies only with local > 0"),
    ({"name": "sparsectr", "attention": "full", "window": 7}, "model sparsectr.window: has no effect here"),
    ({"name": "sparsectr", "encoding": "none", "rel_hour": False}, "rel_hour: has no effect here"),
    ({"name": "fat", "projections": "full", "bases": 8}, "model fat.bases: has no effect here"),
    ({"name": "est", "attention": "lca", "csa_k": 4}, "model est.csa_k"),
    ({"name": "mlp", "numeric_buckets": 8}, "model mlp.numeric_buckets: has no effect here (it applies only with "
                                            "inputs fields)"),
])
def test_a_key_of_an_inactive_mode_is_refused(section, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve(section)


def test_an_inactive_key_at_the_value_it_would_have_anyway_is_accepted():
    assert resolve({"name": "lightsuan", "dilation": 3}).config.dilation == 3            # active there
    assert resolve({"name": "sparsectr", "attention": "full", "window": 5}).config.window == 5   # the S2 value


def _other_value(cls, field: dataclasses.Field, value):
    check = field.metadata.get("check")
    if check is not None and check.choices:
        return next((c for c in check.choices if c != value), None)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2
    if isinstance(value, tuple) and value:
        return (value[0] + 1, *value[1:])
    return None


def _outputs(section: dict, cfg, data):
    torch.manual_seed(0)
    model = build_model(data.spec, ModelChoice(section["name"], cfg), content=data.content()).eval()
    batch = next(iter(Loader(data, "valid", LoaderConfig(batch_size=16, max_len=12, cand_seq=model.needs.cand_seq),
                             seed=0)))
    with torch.no_grad():
        return {k: v.shape for k, v in model.state_dict().items()}, model(batch)


@pytest.mark.parametrize("section", SECTIONS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_inactive_keys_have_no_effect(section, tiny):
    """What inactive() declares is true: changing such a key changes neither the parameters nor the outputs."""
    cfg = resolve(section).config
    shapes, out = _outputs(section, cfg, tiny)
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for key in cfg.inactive():
        other = _other_value(type(cfg), fields[key], getattr(cfg, key))
        if other is None:
            continue
        changed = dataclasses.replace(cfg, **{key: other})
        shapes2, out2 = _outputs(section, changed, tiny)
        assert shapes2 == shapes, key
        torch.testing.assert_close(out2, out, rtol=0, atol=0, msg=f"{key}={other!r} changed the outputs")


def test_the_runs_in_results_resolve_without_drift():
    """Every published run's config.yaml (most saved before every key was written) loads, and compares equal
    to itself completed, so a resume or reuse of those runs is not refused."""
    paths = sorted(REPO.glob("results/**/config.yaml"))
    assert paths
    for p in paths:
        saved = yaml.safe_load(p.read_text())
        assert config_drift(saved, load_config(p).to_dict()) == [], p
