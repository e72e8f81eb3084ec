"""Every config key is coerced to its type and range-checked at load time, with the key named (issue 24, item 8):
typed.from_dict / load_yaml, the run config, every registered model's config, and the CLI's one-line errors."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import typing

import pytest
import torch

from ctrscale.data.loader import Loader, LoaderConfig
from ctrscale.models.registry import build_model, entries
from ctrscale.scaling.sweep import load_sweep
from ctrscale.train.config import RunConfig, load_config
from ctrscale.typed import ConfigError, check_fields, checked, coerce, from_dict, load_yaml


# --- coercion --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("t, given, want", [
    (int, 3, 3), (int, "3", 3), (int, 3.0, 3), (int, " 12 ", 12),
    (float, 1, 1.0), (float, "1e-3", 1e-3), (float, 1e-3, 1e-3), (float, "2.5", 2.5),
    (bool, True, True), (bool, False, False), (bool, "true", True), (bool, "no", False), (bool, "On", True),
    (str, "din", "din"), (str, 2024, "2024"),
    (int | None, None, None), (int | None, "7", 7), (float | None, "1e-2", 0.01),
    (tuple[int, ...], [64, "32"], (64, 32)), (tuple[float, float], ["0.9", 1e-3], (0.9, 0.001)),
    (list[int], (1, 2), [1, 2]), (dict, {"a": 1}, {"a": 1}), (dict[str, list], {"x": [1]}, {"x": [1]}),
])
def test_values_are_coerced_to_their_type(t, given, want):
    got = coerce(t, given, "k")
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize("t, given, expected", [
    (int, 3.5, "an integer"), (int, "abc", "an integer"), (int, True, "an integer"), (int, None, "an integer"),
    (int, float("nan"), "an integer"), (float, "fast", "a number"), (float, False, "a number"),
    (bool, 2, "true or false"), (bool, "maybe", "true or false"), (bool, 1, "true or false"),
    (str, 1.5, "a string"), (str, ["a"], "a string"), (int | None, "x", "an integer or null"),
    (tuple[float, float], [0.9], "a list of 2 numbers"), (tuple[int, ...], 64, "a list of integers"),
    (dict, [1], "a mapping"),
])
def test_a_value_of_the_wrong_type_names_key_type_and_value(t, given, expected):
    with pytest.raises(ConfigError) as e:
        coerce(t, given, "sec.key")
    assert str(e.value) == f"sec.key: expected {expected}, got {given!r}"


@dataclasses.dataclass
class Inner:
    widths: tuple[int, ...] = checked((8,), ge=1)


@dataclasses.dataclass
class Outer:
    inner: Inner = dataclasses.field(default_factory=Inner)
    maybe: Inner | None = None


def test_elements_and_nested_sections_are_named_by_their_dotted_key():
    with pytest.raises(ConfigError, match=r"^top\.inner\.widths\[1\]: expected an integer, got 'x'$"):
        from_dict(Outer, {"inner": {"widths": [4, "x"]}}, "top")
    with pytest.raises(ConfigError, match=r"^inner\.widths\[0\]: must be >= 1, got 0$"):
        from_dict(Outer, {"inner": {"widths": [0]}}, "")
    with pytest.raises(ConfigError, match=r"^maybe\.widths\[0\]: must be >= 1, got -2$"):
        from_dict(Outer, {"maybe": {"widths": [-2]}}, "")
    assert from_dict(Outer, {"maybe": {"widths": ["3"]}}, "").maybe == Inner((3,))


def test_yaml_reads_exponents_as_floats():
    assert load_yaml("a: 1e-3\nb: 1E5\nc: -2.5e-3\nd: .5e2\ne: 3\nf: 1.5\ng: 1e\nh: 1_000") == \
        {"a": 1e-3, "b": 1e5, "c": -2.5e-3, "d": 50.0, "e": 3, "f": 1.5, "g": "1e", "h": 1000}
    with pytest.raises(ConfigError, match="x.yaml: not valid YAML"):
        load_yaml("a: [1,", "x.yaml")


def test_config_files_and_overrides_read_1e_minus_3_as_a_float(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim: {lr: 1e-3, emb_lr: 5E-2}\nmodel: {name: din, dropout: 1e-1}\n")
    c = load_config(cfg, ["optim.weight_decay=1e-5"])
    assert (c.optim.lr, c.optim.emb_lr, c.optim.weight_decay) == (1e-3, 5e-2, 1e-5)
    assert isinstance(c.optim.lr, float) and c.model.config.dropout == 0.1   # the model section too
    sweep = tmp_path / "s.yaml"
    sweep.write_text("base: {optim: {lr: 3e-4}}\naxes: {optim.emb_lr: [1e-3, 1e-2]}\nparallel: '2'\n")
    spec = load_sweep(sweep)
    assert spec.base["optim"]["lr"] == 3e-4 and spec.axes["optim.emb_lr"] == [1e-3, 1e-2] and spec.parallel == 2
    sweep.write_text("axes: {data.max_len: [10]}\nparallel: 0\n")
    with pytest.raises(ConfigError, match=r"s\.yaml: parallel: must be >= 1, got 0"):
        load_sweep(sweep)


# --- the run config --------------------------------------------------------------------------------------------------

BAD = [  # override -> the whole message
    ("data.batch_size=-4", "data.batch_size: must be >= 1, got -4"),
    ("data.batch_size=0", "data.batch_size: must be >= 1, got 0"),
    ("data.eval_batch_size=0", "data.eval_batch_size: must be >= 1, got 0"),
    ("data.max_len=0", "data.max_len: must be >= 1, got 0"),
    ("data.max_len=-3", "data.max_len: must be >= 1, got -3"),
    ("data.max_len=2.5", "data.max_len: expected an integer or null, got 2.5"),
    ("data.num_workers=-1", "data.num_workers: must be >= 0, got -1"),
    ("data.length_window=-1", "data.length_window: must be >= 0, got -1"),
    ("data.shuffle_buffer=0", "data.shuffle_buffer: must be >= 1, got 0"),
    ("data.chunk_rows=0", "data.chunk_rows: must be >= 1, got 0"),
    ("data.train_fraction=0", "data.train_fraction: must be in (0, 1], got 0.0"),
    ("data.train_fraction=1.5", "data.train_fraction: must be in (0, 1], got 1.5"),
    ("data.streaming=2", "data.streaming: expected true or false, got 2"),
    ("optim.lr=-1", "optim.lr: must be >= 0, got -1.0"),
    ("optim.lr=.nan", "optim.lr: must be >= 0, got nan"),
    ("optim.lr=.inf", "optim.lr: must be >= 0, got inf"),
    ("optim.lr=fast", "optim.lr: expected a number, got 'fast'"),
    ("optim.emb_lr=-1e-3", "optim.emb_lr: must be >= 0, got -0.001"),
    ("optim.weight_decay=-0.1", "optim.weight_decay: must be >= 0, got -0.1"),
    ("optim.emb_weight_decay=-0.1", "optim.emb_weight_decay: must be >= 0, got -0.1"),
    ("optim.betas=[0.9, 1]", "optim.betas[1]: must be in [0, 1), got 1.0"),
    ("optim.betas=[-0.1, 0.9]", "optim.betas[0]: must be in [0, 1), got -0.1"),
    ("optim.betas=[0.9]", "optim.betas: expected a list of 2 numbers, got [0.9]"),
    ("optim.warmup_steps=-1", "optim.warmup_steps: must be >= 0, got -1"),
    ("optim.grad_clip=-1", "optim.grad_clip: must be >= 0, got -1.0"),
    ("optim.optimizer=sgd", "optim.optimizer: must be one of adam, adamw; got 'sgd'"),
    ("optim.schedule=step", "optim.schedule: must be one of constant, cosine, linear, plateau; got 'step'"),
    ("optim.plateau_factor=1", "optim.plateau_factor: must be in (0, 1), got 1.0"),
    ("train.embedding_init=zeros", "train.embedding_init: must be one of model, normal, xavier_normal, "
                                   "xavier_uniform; got 'zeros'"),
    ("model.activation=gelu", "model din.activation: must be one of relu, dice, prelu, leaky_relu, sigmoid, silu; "
                              "got 'gelu'"),
    ("train.epochs=0", "train.epochs: must be >= 1, got 0"),
    ("train.epochs=1.5", "train.epochs: expected an integer, got 1.5"),
    ("train.seed=-1", "train.seed: must be >= 0, got -1"),
    ("train.patience=0", "train.patience: must be >= 1, got 0"),
    ("train.checkpoint_every=-1", "train.checkpoint_every: must be >= 0, got -1"),
    ("train.max_steps=-1", "train.max_steps: must be >= 0, got -1"),
    ("train.log_every=0", "train.log_every: must be >= 1, got 0"),
    ("train.threads=-1", "train.threads: must be >= 0, got -1"),
    ("train.grad_accum=0", "train.grad_accum: must be >= 1, got 0"),
    ("train.shard_min_rows=-1", "train.shard_min_rows: must be >= 0, got -1"),
    ("train.skip_nonfinite_steps=-1", "train.skip_nonfinite_steps: must be >= 0, got -1"),
    ("train.progress=maybe", "train.progress: expected true or false, got 'maybe'"),
    ("train.device=gpu", "train.device: must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("train.precision=fp16", "train.precision: must be one of auto, fp32, bf16; got 'fp16'"),
    ("train.early_stop_metric=loss", "train.early_stop_metric: must be one of auc, gauc; got 'loss'"),
    ("train.embedding_sharding=column", "train.embedding_sharding: must be one of replicated, row; got 'column'"),
    ("distill.temperature=0", "distill.temperature: must be > 0, got 0.0"),
    ("distill.weight=-1", "distill.weight: must be >= 0, got -1.0"),
    ("distill.teacher_max_len=0", "distill.teacher_max_len: must be >= 1, got 0"),
    ("distill.teacher={name: din, embed_dim: 0}", "distill.teacher din.embed_dim: must be >= 1, got 0"),
    ("model.embed_dim=0", "model din.embed_dim: must be >= 1, got 0"),
    ("model.hidden=[64, -1]", "model din.hidden[1]: must be >= 1, got -1"),
    ("model.dropout=1", "model din.dropout: must be in [0, 1), got 1.0"),
    ("model.name=nope", "model.name: unknown model 'nope'"),
    ("train.epochz=2", "train: unknown key(s) ['epochz']"),
]


@pytest.mark.parametrize("override, message", BAD, ids=[b[0] for b in BAD])
def test_a_bad_value_is_refused_at_load_time_naming_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["model.name=din", "distill.teacher={name: din}", override])
    assert str(e.value).startswith(message), str(e.value)


def test_edge_values_in_range_are_accepted():
    c = load_config(overrides=[
        "data.max_len=1", "data.batch_size=1", "data.num_workers=0", "data.train_fraction=1", "optim.lr=0",
        "optim.betas=[0, 0.999]", "optim.grad_clip=0", "train.checkpoint_every=0", "train.device=cuda:1",
        "train.epochs='2'", "train.skip_nonfinite_steps=3", "distill.teacher={name: mlp}", "distill.weight=0"])
    assert (c.data.max_len, c.train.epochs, c.optim.betas, c.train.skip_nonfinite_steps) == (1, 2, (0.0, 0.999), 3)
    assert load_config().data.max_len is None  # None keeps "the dataset's default"


def test_a_config_built_in_code_is_checked_by_validate():
    cfg = RunConfig()
    cfg.train.log_every = 0
    with pytest.raises(ConfigError, match=r"^train\.log_every: must be >= 1, got 0$"):
        cfg.validate()


def _numeric(t) -> bool:
    args = [a for a in typing.get_args(t) if a is not type(None) and a is not Ellipsis]
    return t in (int, float) or any(_numeric(a) for a in args)


def _config_classes():
    from ctrscale.train.config import DataSection, DistillSection, OptimSection, TrainSection
    return [DataSection, OptimSection, TrainSection, DistillSection, *(e.config for e in entries().values())]


@pytest.mark.parametrize("cls", _config_classes(), ids=lambda c: c.__name__)
def test_every_numeric_key_declares_its_range_and_defaults_satisfy_it(cls):
    hints = typing.get_type_hints(cls)
    unchecked = [f.name for f in dataclasses.fields(cls) if _numeric(hints[f.name]) and "check" not in f.metadata]
    assert not unchecked, f"{cls.__name__}: numeric keys without a declared range (typed.checked): {unchecked}"
    check_fields(cls())


# --- every registered model's config ---------------------------------------------------------------------------------

def _sizes(cls):
    """(key, bad values) for each numeric key: -1 always, 0 too (refused, or a working model)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if f.name == "dropout":
            yield f.name, [-0.1, 1.0]
        elif typing.get_origin(t) is tuple:
            yield f.name, [[0], [-1]]
        elif _numeric(t):
            yield f.name, [0, -1]


@pytest.mark.parametrize("name", sorted(entries()))
def test_model_sizes_of_zero_or_below_are_config_errors_naming_the_key(name, tiny):
    cls = entries()[name].config
    for key, values in _sizes(cls):
        for v in values:
            where = f"model {name}.{key}"
            try:
                torch.manual_seed(0)
                model = build_model(tiny.spec, {"name": name, key: v}, content=tiny.content()).eval()
            except ConfigError as e:
                assert str(e).startswith(where + ":") or str(e).startswith(where + "["), str(e)
                continue
            assert v == 0 and key != "dropout", f"{where}={v!r} was accepted"
            b = next(iter(Loader(tiny, "train", LoaderConfig(batch_size=8, max_len=10, shuffle=True,
                                                             cand_seq=model.needs.cand_seq))))
            with torch.no_grad():
                assert torch.isfinite(model(b)).all(), f"{where}={v!r}: an accepted 0 must give a working model"


# --- the command line ------------------------------------------------------------------------------------------------

def _cli(tmp_path, tiny, *overrides):
    cmd = [sys.executable, "-m", "ctrscale.cli", "train", "name=t", f"out_dir={tmp_path}", f"data.path={tiny.root}",
           "model.name=din", "model.embed_dim=4", "data.max_len=10", "data.batch_size=512", "train.epochs=1",
           "train.progress=false", "train.threads=2", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ})


def test_cli_trains_with_lr_written_as_1e_minus_3(tmp_path, tiny):
    proc = _cli(tmp_path, tiny, "optim.lr=1e-3", "optim.emb_lr=2E-3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test AUC" in proc.stdout
    saved = json.loads((tmp_path / "t" / "results.json").read_text())["config"]["optim"]
    assert (saved["lr"], saved["emb_lr"]) == (1e-3, 2e-3)


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=-4", "data.batch_size: must be >= 1, got -4"),
    ("data.max_len=0", "data.max_len: must be >= 1, got 0"),
    ("optim.lr=-1", "optim.lr: must be >= 0, got -1.0"),
    ("train.epochs=0", "train.epochs: must be >= 1, got 0"),
    ("model.embed_dim=0", "model din.embed_dim: must be >= 1, got 0"),
])
def test_cli_refuses_a_bad_value_in_one_line_and_exits_2(tmp_path, tiny, override, message):
    proc = _cli(tmp_path, tiny, override)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr == f"ctrscale train: error: {message}\n"
    assert not (tmp_path / "t").exists()  # refused before anything was written
