"""The training loop: models only define forward() (and request scoring); a run is built, resumed from last.pt,
trained epoch by epoch with early stopping on a validation metric, and finished by evaluating its best weights on
test. Batches are single impressions, or whole requests for listwise models (BCE over every real candidate).

A run directory holds config.yaml (resolved), data_spec.json, metrics.csv, tb/ (TensorBoard), last.pt (the
resumable state, written atomically every `checkpoint_every` steps and at each epoch end), best.pt (the weights
with the best validation metric) and results.json. `fit(cfg, resume=True)` continues from last.pt and reproduces
an uninterrupted run exactly: the data order is a function of (seed, epoch) and every RNG state is saved.
"""
from __future__ import annotations

import json
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..accounting import count_params, inference_flops, training_flops_per_impression
from ..data.catalog import open_run_data
from ..data.loader import Loader, LoaderConfig
from ..errors import ConfigError, RunError
from ..models.registry import build_model
from ..models.tables import embedding_params, init_tables
from . import sparse
from .config import RunConfig, save_config
from .device import autocast_for, keep_freed_memory, precision_used, resolve_device
from .distributed import World, init_world
from .inference import checked_metrics, evaluate, predict
from .objective import Objective, accumulate_gradients
from .optim import make_optimizer, make_schedule
from .progress import MetricLog, NullLog, progress_bar, say
from .result import RunResult, StoppedRun
from .runs import RunLock, check_run_folder, config_drift, load_checkpoint, run_drift, save_checkpoint
from .sharding import clip_gradients, full_optimizer_state, full_state, load_optimizer_state, shard_tables
from .state import RunState, check_same_data_and_precision, refuse_nonfinite, rng_state, set_rng_state


def fit(cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> RunResult | StoppedRun:
    """Train, early-stop on a validation metric, evaluate the best weights on test; returns the results (also in
    results.json), or where the run stopped (train.max_steps). The run folder is locked for the whole run. A folder
    that already holds a run is continued only with `resume` (and only under the config it started with) and
    replaced only with `overwrite`."""
    world = init_world(cfg.train.device)
    with RunLock(cfg.run_dir) if world.is_main else nullcontext():
        finished = check_run_folder(cfg.run_dir, cfg.to_dict(), resume, overwrite) if world.is_main else None
        if world.is_main:
            for tmp in [*cfg.run_dir.glob("*.pt.tmp-*"), *cfg.run_dir.glob("*.pt.sha256.tmp")]:
                tmp.unlink()  # left by a process killed mid-write (we hold the lock now)
        if world.distributed:
            finished = world.gather(finished)[0]
        return finished if finished is not None else Training(cfg, world).run(resume)


def reuse_or_fit(cfg: RunConfig, overwrite: bool = False) -> RunResult | StoppedRun:
    """For commands that own many run folders (compare, demo): the run in cfg.run_dir when it ran under `cfg`
    (finished: its results; stopped: continued), a fresh run where there is none; a run under another config is
    refused, naming the settings, or retrained with `overwrite`."""
    drift = run_drift(cfg.run_dir, cfg.to_dict())
    if drift and not overwrite:
        raise RunError(f"{cfg.run_dir} holds a run under another config than asked for now ({'; '.join(drift)}); "
                       f"use another --out, or retrain such runs with --overwrite")
    return fit(cfg, overwrite=True) if drift else fit(cfg, resume=True)


def check_labels(data, splits=("valid", "test")) -> None:
    """Refuse a dataset whose validation or test labels are all one class: its AUC is undefined, and early
    stopping (valid) and the results (test) need it, so the run would fail only after a full epoch."""
    for split in splits:
        label = data.split(split).column("label")
        classes = np.unique(label)
        if len(classes) < 2:
            what = "no rows" if len(label) == 0 else f"only label {classes[0]:g} ({len(label):,} rows)"
            raise RunError(f"{data.root}: the {split} split has {what}, so its AUC is undefined; early stopping and "
                           f"the test metrics need both classes: prepare the data with another split")


class Training:
    """One run's parts, built once (dataset, model, objective, optimizer, schedule, loader, progress); `run` takes
    the steps: resume, train an epoch, end it (validate, checkpoint), finish."""

    def __init__(self, cfg: RunConfig, world: World):
        self.cfg, self.world, self.main = cfg, world, world.is_main
        self.run_dir, self.last = cfg.run_dir, cfg.run_dir / "last.pt"
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        world.barrier()
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.device = resolve_device(cfg.train.device, world)
        if self.device.type == "cpu":
            keep_freed_memory()
        if not self.main:
            world.barrier()  # rank 0 prepares the dataset (if it must) before the others open it
        self.data = open_run_data(cfg.data)
        if self.main:
            world.barrier()
        check_labels(self.data)
        self.max_len = cfg.data.max_len or self.data.spec.max_len
        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        self.model = build_model(self.data.spec, cfg.model, content=self.data.content()).to(self.device)
        self.objective = Objective(self.model, cfg, self.data.spec, self.max_len, self.device, self.data.content())
        self.trainable = self.objective.trainable  # the model, or the student and its teacher together
        init_tables(self.trainable, cfg.train.embedding_init, cfg.train.embedding_init_std)
        self.shards = shard_embeddings(cfg, self.objective, world)
        self.engine = self.objective
        if world.distributed:  # gradients averaged over ranks; find_unused: not every model touches every parameter
            self.engine = nn.parallel.DistributedDataParallel(
                self.objective, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        if cfg.train.compile:  # shapes vary with each batch's history width: dynamic after the first recompile
            self.engine = torch.compile(self.engine)
        if cfg.train.sparse_init:
            copied = sparse.warm_start(self.model, cfg.train.sparse_init)
            say(cfg if self.main else None, f"warm start: {len(copied)} embedding tables from {cfg.train.sparse_init}")
        self.opt = make_optimizer(self.trainable, cfg.optim)
        self.train_loader = training_loader(cfg, self.data, self.objective)
        self.steps_per_epoch = self.train_loader.steps_per_epoch()
        self.state = RunState(data_fingerprint=self.data.meta.get("fingerprint"),
                              precision=precision_used(self.device, cfg.train.precision))
        self.sched = make_schedule(self.opt, cfg.optim, self.steps_per_epoch * cfg.train.epochs,
                                   plateau_scale=lambda: self.state.lr_scale)
        self.saved_step: int | None = None  # the step last.pt holds (named when a diverged run stops)
        self.steps_this_process = 0          # train.max_steps counts these
        self.log: MetricLog | NullLog = NullLog()

    def run(self, resume: bool) -> RunResult | StoppedRun:
        resumed = resume and self.last.exists()
        if resumed:
            finished = self.resume()
            if finished is not None:
                return finished
        sparse_snapshot = self.sparse_snapshot(resumed)
        self.write_run_files()
        if self.main:
            self.log = MetricLog(self.run_dir, self.state.step)
        self.trainable.train()
        while self.state.epoch < self.cfg.train.epochs and not self.state.done:
            if sparse_snapshot is not None and self.state.epoch > 0 and self.state.step_in_epoch == 0:
                sparse.reset(self.trainable, self.opt, sparse_snapshot)
            seen, seconds = self.train_epoch()
            if self.out_of_steps() and self.state.step_in_epoch < self.steps_per_epoch:
                self.checkpoint()
                self.log.close()
                return StoppedRun(self.state.step, self.run_dir)
            self.end_epoch(seen, seconds)
        self.log.close()
        self.world.barrier()  # best.pt is written by rank 0
        return self.finish()

    def resume(self) -> RunResult | None:
        """Continue from last.pt, only under the config the run started with; a run it records as finished returns
        its results."""
        ck = load_checkpoint(self.last)
        drift = config_drift(ck["config"], self.cfg.to_dict())
        if drift:
            raise RunError(f"{self.last}: the run there started under another config than asked for now "
                           f"({'; '.join(drift)}); resume it with its own settings ({self.run_dir / 'config.yaml'}), "
                           f"or train into another folder (another name or out_dir), or replace it with --overwrite")
        saved = RunState.from_dict(ck["state"], self.state)
        check_same_data_and_precision(self.last, saved, self.state)
        self.trainable.load_state_dict(ck["model"])
        load_optimizer_state(self.opt, ck["optim"], self.shards)
        self.sched.load_state_dict(ck["sched"])
        set_rng_state(ck["rng"])
        self.state, self.saved_step = saved, saved.step
        results = self.run_dir / "results.json"
        return RunResult.read(results) if saved.done and results.exists() else None

    def sparse_snapshot(self, resumed: bool) -> dict | None:
        """train.sparse_reset: the embedding tables before training, taken once (before any checkpoint) and kept
        in the run folder for resumes."""
        if not self.cfg.train.sparse_reset:
            return None
        path = self.run_dir / "sparse_snapshot.pt"
        if resumed:
            return load_checkpoint(path, weights_only=True)
        snapshot = sparse.snapshot(self.trainable)
        if self.main:
            save_checkpoint(snapshot, path)
        return snapshot

    def write_run_files(self) -> None:
        if self.main:
            save_config(self.cfg, self.run_dir / "config.yaml")
            (self.run_dir / "data_spec.json").write_text(
                json.dumps({**self.data.spec.to_dict(), "max_len_used": self.max_len}, indent=1))

    def out_of_steps(self) -> bool:
        return bool(self.cfg.train.max_steps) and self.steps_this_process >= self.cfg.train.max_steps

    def train_epoch(self) -> tuple[int, float]:
        """The current epoch's remaining steps, or as many as train.max_steps leaves; returns the impressions
        trained on (all ranks) and the seconds taken."""
        cfg, st, epoch = self.cfg, self.state, self.state.epoch
        batches = self.train_loader.epoch(epoch, start_step=st.step_in_epoch, world=self.world)
        bar = progress_bar(cfg, self.steps_per_epoch, st.step_in_epoch, f"epoch {epoch + 1}/{cfg.train.epochs}") \
            if self.main else None
        t0, seen, loss_sum, loss_n = time.perf_counter(), 0, 0.0, 0
        for batch in batches:
            batch = None if batch is None else batch.to(self.device, non_blocking=True)
            loss_value, stepped = self.train_step(batch)
            seen += 0 if batch is None else len(batch)
            if stepped:
                loss_sum, loss_n = loss_sum + loss_value, loss_n + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}")
            if st.step % cfg.train.log_every == 0 and loss_n:
                self.log.log(st.step, epoch, "train", loss=loss_sum / loss_n, lr=self.sched.get_last_lr()[0])
                loss_sum, loss_n = 0.0, 0
            if cfg.train.checkpoint_every and st.step % cfg.train.checkpoint_every == 0:
                self.checkpoint()
            if self.out_of_steps():
                break
        seconds = time.perf_counter() - t0
        seen = int(self.world.sum(seen))
        st.train_seconds += seconds
        st.impressions += seen
        if bar is not None:
            bar.close()
        return seen, seconds

    def train_step(self, batch) -> tuple[float, bool]:
        """One optimizer step on `batch` (None: this rank has no rows in it). A non-finite loss or gradient norm
        skips the step instead (see skip_step). Returns the batch's loss and whether the step was taken."""
        cfg, world = self.cfg, self.world
        self.opt.zero_grad(set_to_none=True)
        autocast = autocast_for(self.device, cfg.train.precision)
        n_local = 0 if batch is None else len(batch)
        # this rank's share of the global batch: DDP's mean over ranks then equals the whole batch's mean
        share = n_local * world.size / world.sum(n_local) if world.distributed else 1.0
        loss = accumulate_gradients(self.engine, batch, cfg.train.grad_accum, autocast, share)
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf  # inf: measure, don't clip
        norm = clip_gradients(self.trainable.parameters(), max_norm, self.shards) if self.shards else \
            nn.utils.clip_grad_norm_(self.trainable.parameters(), max_norm)
        loss_value, norm_value = torch.stack([loss.detach().float(), norm.float().to(loss.device)]).tolist()
        # Under DDP the gradient norm is global (a rank's NaN loss makes every rank's norm NaN), so deciding on
        # it alone keeps all ranks taking, or skipping, the same step without another collective.
        finite = math.isfinite(norm_value) and (world.distributed or math.isfinite(loss_value))
        if finite:
            self.opt.step()
        else:  # never step (or later checkpoint) on a non-finite loss or gradient
            self.opt.zero_grad(set_to_none=True)
            self.skip_step(loss_value, norm_value)
        self.sched.step()
        self.state.step += 1
        self.state.step_in_epoch += 1
        self.steps_this_process += 1
        return loss_value, finite

    def skip_step(self, loss_value: float, norm_value: float) -> None:
        """Count a non-finite step; past train.skip_nonfinite_steps such steps the run stops (a RunError naming the
        step last.pt keeps)."""
        cfg, st = self.cfg, self.state
        st.skipped_steps += 1
        lr = self.sched.get_last_lr()[0]
        what = (f"non-finite training step {st.step + 1} (epoch {st.epoch + 1}): loss {loss_value:.4g}, "
                f"gradient norm {norm_value:.4g}, learning rate {lr:.3g}")
        if st.skipped_steps > cfg.train.skip_nonfinite_steps:
            kept = (f"{self.last} keeps the state of step {self.saved_step}" if self.saved_step is not None else
                    "no checkpoint was written")
            raise RunError(f"{self.run_dir}: training diverged: {what}; {kept}. Lower optim.lr, keep "
                           f"optim.grad_clip > 0, use train.precision=fp32, or allow a few such steps "
                           f"with train.skip_nonfinite_steps=N")
        say(cfg if self.main else None, f"skipped {what} ({st.skipped_steps} of at most "
                                        f"{cfg.train.skip_nonfinite_steps})")

    def end_epoch(self, seen: int, seconds: float) -> None:
        """Validate; keep the weights in best.pt when the metric improved; stop early after train.patience epochs
        without improvement (or after the last epoch); checkpoint."""
        cfg, st, epoch = self.cfg, self.state, self.state.epoch
        m = evaluate(self.model, self.data, "valid", self.max_len, cfg.data.eval_batch_size, self.device,
                     cfg.train.precision, self.world)
        self.log.log(st.step, epoch, "valid", auc=m["auc"], gauc=m.get("gauc"), uauc=m.get("uauc"),
                     logloss=m["logloss"], impressions_per_s=seen / seconds if seconds else None)
        st.epochs.append({"epoch": epoch + 1, "step": st.step, **{f"valid_{k}": v for k, v in m.items()}})
        score = m[cfg.train.early_stop_metric]
        if score > st.best:
            st.best, st.best_epoch, st.bad_epochs = score, epoch + 1, 0
            best_state = full_state(self.model) if self.shards else self.model.state_dict()
            refuse_nonfinite(best_state, f"{self.run_dir / 'best.pt'} at epoch {epoch + 1}")
            if self.main:
                save_checkpoint(best_state, self.run_dir / "best.pt")
        else:
            st.bad_epochs += 1
            if cfg.optim.schedule == "plateau" and st.bad_epochs % cfg.optim.plateau_patience == 0:
                st.lr_scale *= cfg.optim.plateau_factor  # takes effect from the next step
        st.epoch += 1
        st.step_in_epoch = 0
        if st.bad_epochs >= cfg.train.patience or st.epoch >= cfg.train.epochs:
            st.done = True
        self.checkpoint()
        say(cfg if self.main else None, f"epoch {epoch + 1}: valid AUC {m['auc']:.4f} "
                                        f"GAUC {m.get('gauc', float('nan')):.4f} logloss {m['logloss']:.4f}")

    def checkpoint(self) -> None:
        """last.pt. Called on every rank (gathering sharded tables is collective); rank 0 writes it."""
        st = self.state
        self.saved_step = st.step
        model_state = full_state(self.trainable) if self.shards else self.trainable.state_dict()
        optim_state = full_optimizer_state(self.opt, self.shards) if self.shards else self.opt.state_dict()
        refuse_nonfinite(model_state, f"{self.last} at step {st.step}")
        if self.main:
            save_checkpoint({"model": model_state, "optim": optim_state, "sched": self.sched.state_dict(),
                             "rng": rng_state(), "state": st.to_dict(), "config": self.cfg.to_dict()}, self.last)

    def finish(self) -> RunResult:
        """The best weights' test metrics and predictions, the model's size and cost; results.json (rank 0)."""
        cfg, world, model, data, st = self.cfg, self.world, self.model, self.data, self.state
        model.load_state_dict(load_checkpoint(self.run_dir / "best.pt", map_location=self.device, weights_only=True))
        pred = predict(model, data, "test", self.max_len, cfg.data.eval_batch_size, self.device, cfg.train.precision,
                       world=world)
        test = checked_metrics(pred, "test")
        if self.main:
            np.savez_compressed(self.run_dir / "test_predictions.npz", **pred)  # for paired tests between models
        valid = st.epochs[st.best_epoch - 1]
        sample = next(iter(Loader(data, "valid", LoaderConfig(batch_size=60, max_len=self.max_len, shuffle=False,
                                                              cand_seq=model.needs.cand_seq))))
        sample = sample.to(self.device)
        config = cfg.to_dict()
        # keyword arguments are evaluated in order: the FLOP counts run the model (dropout draws random numbers)
        result = RunResult(
            name=cfg.name, model=cfg.model_name, dataset=data.spec.name, max_len=self.max_len, seed=cfg.train.seed,
            best_epoch=st.best_epoch, epochs_run=len(st.epochs),
            valid={k[6:]: v for k, v in valid.items() if k.startswith("valid_")}, test=test, epochs=st.epochs,
            params=count_params(model), inference_gflops_per_60=inference_flops(model, sample) / 1e9,
            train_flops_per_impression=training_flops_per_impression(model, sample),
            train_impressions=int(self.train_loader.n),  # the training set used (after data.train_fraction)
            train_impressions_per_s=st.impressions / st.train_seconds if st.train_seconds else None,
            train_seconds=st.train_seconds, peak_rss_mib=world.gather(peak_rss_mib()),
            embedding_params_held=world.gather(sum(p.numel() for p in embedding_params(model).values())),
            config=config, distilled_from=config["distill"]["teacher"] if cfg.distill else None,
            fields=data.fields if cfg.data.fields is not None or cfg.data.drop_fields else None)
        if self.shards:
            mine = {id(s.weight) for s in self.shards}
            result.row_sharded = {"world": world.size, "tables": [n.removesuffix(".weight") for n, p in
                                                                  self.trainable.named_parameters() if id(p) in mine]}
        teacher = self.objective.teacher
        if teacher is not None:  # kept for inspection; the student in best.pt serves alone
            teacher_state = full_state(teacher) if self.shards else teacher.state_dict()
            if self.main:
                save_checkpoint(teacher_state, self.run_dir / "teacher.pt")
            result.teacher_test = evaluate(teacher, data, "test", self.objective.load_len, cfg.data.eval_batch_size,
                                           self.device, cfg.train.precision, world)
        if self.main:
            result.write(self.run_dir / "results.json")
        world.barrier()
        return result


def training_loader(cfg: RunConfig, data, objective: Objective):
    """The shuffled training batches: from memory, or streamed from shard chunks (data.streaming)."""
    train_cfg = LoaderConfig(cfg.data.batch_size, objective.load_len, cfg.data.num_workers, shuffle=True,
                             length_window=cfg.data.length_window, listwise=objective.listwise,
                             cand_seq=objective.model.needs.cand_seq, fraction=cfg.data.train_fraction,
                             subsample_seed=cfg.data.subsample_seed)
    if cfg.data.streaming:
        from ..data.stream import StreamLoader
        return StreamLoader(data, "train", train_cfg, cfg.train.seed, cfg.data.shuffle_buffer, cfg.data.chunk_rows)
    return Loader(data, "train", train_cfg, seed=cfg.train.seed)


def shard_embeddings(cfg: RunConfig, objective: Objective, world: World) -> list:
    """train.embedding_sharding=row under torchrun: the large tables row-sharded over the ranks, kept out of DDP's
    gradient averaging (their exchange delivers the gradients); [] when tables stay replicated."""
    mode = cfg.train.embedding_sharding
    if mode not in ("replicated", "row"):
        raise ConfigError(f"train.embedding_sharding: {mode!r} is not one of replicated, row")
    if mode == "replicated" or not world.distributed:
        return []
    if cfg.train.sparse_reset or cfg.train.sparse_init:
        raise ConfigError("train.sparse_reset and train.sparse_init work on whole tables: use "
                          "train.embedding_sharding=replicated with them")
    shards = shard_tables(objective.trainable, world.rank, world.size, cfg.train.shard_min_rows)
    mine = {id(s.weight) for s in shards}
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        objective, [n for n, p in objective.named_parameters() if id(p) in mine])
    objective.sharded = bool(shards)
    return shards


def peak_rss_mib() -> float | None:
    """This process's peak resident memory (VmHWM; Linux), None elsewhere."""
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) / 1024
