"""The training recipe: the loop lives here, models only define forward() (and request scoring).

Batches are single impressions, or whole requests for listwise models (BCE over every real candidate).

A run directory holds config.yaml (resolved), data_spec.json, metrics.csv, tb/ (TensorBoard), last.pt (the
resumable state, written atomically every `checkpoint_every` steps and at each epoch end), best.pt (the weights
with the best validation metric) and results.json. `fit(cfg, resume=True)` continues from last.pt and reproduces
an uninterrupted run exactly: the data order is a function of (seed, epoch) and every RNG state is saved.
"""
from __future__ import annotations

import csv
import ctypes
import json
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .. import metrics
from ..accounting import count_params, inference_flops, training_flops_per_impression
from ..data.catalog import open_dataset
from ..data.loader import Loader, LoaderConfig
from ..errors import RunError
from ..models.tables import embedding_params
from ..models.base import CTRModel
from ..models.registry import build_model
from ..typed import ConfigError
from . import sparse
from .config import RunConfig, save_config
from .distributed import World, init_world
from .runs import RunLock, check_run_folder, config_drift, load_checkpoint, run_drift, save_checkpoint
from .sharding import clip_gradients, full_optimizer_state, full_state, load_optimizer_state, shard_tables, shards_of


def resolve_device(name: str, world: World | None = None) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name}: no CUDA device is available to this torch build; use "
                          f"train.device=cpu (or auto)")
    if name == "cuda" and world is not None and world.distributed:
        return torch.device("cuda", world.local_rank)
    return torch.device(name)


def keep_freed_memory() -> None:
    """Ask glibc to keep freed blocks for reuse instead of returning them to the OS. CPU training frees and
    re-allocates the same large activations every step; returned to the OS, each comes back as page faults
    (measured: 3.3x fewer faults, 15-20% less wall time for SUAN at L = 500). Linux/glibc only; else a no-op."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 2 ** 30)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 2 ** 30)  # M_MMAP_THRESHOLD: large blocks from the reusable heap, not fresh mmaps
    except OSError:
        pass


def autocast_for(device: torch.device, precision: str):
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def make_optimizer(model: nn.Module, o) -> torch.optim.Optimizer:
    """Embedding tables and dense parameters in separate groups with their own lr and weight decay."""
    tables = {id(p) for p in embedding_params(model).values()}
    emb = [p for p in model.parameters() if p.requires_grad and id(p) in tables]
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in tables]
    groups = [{"params": dense, "lr": o.lr, "weight_decay": o.weight_decay, "name": "dense"},
              {"params": emb, "lr": o.emb_lr, "weight_decay": o.emb_weight_decay, "name": "embedding"}]
    cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
    return cls([g for g in groups if g["params"]], betas=tuple(o.betas))


def make_schedule(opt, o, total_steps: int):
    def factor(step: int) -> float:
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        frac = min(1.0, (step - o.warmup_steps) / max(1, total_steps - o.warmup_steps))
        if o.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * frac))
        if o.schedule == "linear":
            return 1.0 - frac
        return 1.0
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@torch.no_grad()
def predict(model: nn.Module, data, split: str, max_len: int, batch_size: int, device: torch.device,
            precision: str = "auto", num_workers: int = 0, world: World | None = None) -> dict[str, np.ndarray]:
    """Probabilities for a whole split, in its stored order, with labels and user keys. Rows are scored in
    batches of similar history length (cheaper with trimmed padding) and put back in order; a batch holds at most
    `batch_size` rows and batch_size x 64 behavior tokens, so long histories come in smaller batches.
    Distributed: each rank scores every world.size-th batch and all ranks receive the whole split."""
    world = world or World()
    was = model.training
    model.eval()
    listwise = trains_listwise(model)  # a request's history encoded once for all its candidates
    loader = Loader(data, split, LoaderConfig(batch_size=batch_size, max_len=max_len, shuffle=False,
                                              num_workers=num_workers, length_window=16, listwise=listwise,
                                              max_tokens=batch_size * 64, cand_seq=model.needs.cand_seq))
    everything = loader.plan(0)
    plan = everything[world.rank::world.size]
    # sharded tables look rows up with collectives: every rank scores as many batches (extras discarded)
    extra = -(-len(everything) // world.size) - len(plan) if world.distributed and shards_of(model) else 0
    rows = np.concatenate(plan) if plan else np.zeros(0, np.int64)
    probs, labels, users = [], [], []
    for i, batch in enumerate(loader.batches(plan + everything[:1] * extra)):
        batch = batch.to(device)
        with autocast_for(device, precision):
            logits = model.score_request(batch)[batch.mask] if listwise else model(batch)
        if i >= len(plan):
            continue
        if listwise:
            batch = batch.flat()
        probs.append(torch.sigmoid(logits.float()).cpu())
        labels.append(batch.label.cpu())
        users.append(batch.user.cpu())
    model.train(was)
    cat = lambda xs: torch.cat(xs).numpy() if xs else np.zeros(0)  # noqa: E731
    parts = world.gather((rows, cat(probs), cat(labels), cat(users)))
    rows = np.concatenate([p[0] for p in parts])

    def in_order(k):
        out = np.concatenate([p[k] for p in parts])
        placed = np.empty_like(out)
        placed[rows] = out
        return placed
    return {"prob": in_order(1), "label": in_order(2), "user": in_order(3)}


def load_trained(run: str | Path, checkpoint: str = "best"):
    """A finished (or stopped) run's config, dataset, and model with its best.pt / last.pt weights loaded."""
    from .config import load_config
    run = Path(run)
    if not (run / "config.yaml").exists():
        raise RunError(f"{run}: not a run folder (no config.yaml); give the folder a `ctrscale train` wrote")
    if not (run / f"{checkpoint}.pt").exists():
        hint = ("the run stopped before its first validation; use --checkpoint last for its latest weights, or "
                "finish it with `ctrscale train --config {0}/config.yaml --resume`" if checkpoint == "best" else
                "the run has not saved a checkpoint yet").format(run)
        raise RunError(f"{run}: no {checkpoint}.pt ({hint})")
    cfg = load_config(run / "config.yaml")
    data = open_dataset(cfg.data.name, cfg.data.path, cfg.data.raw_dir, cfg.data.options)
    device = resolve_device(cfg.train.device)
    model = build_model(data.spec, cfg.model, content=data.content()).to(device)
    state = load_checkpoint(run / f"{checkpoint}.pt", map_location=device)
    state = state["model"] if "model" in state else state
    if cfg.distill is not None and checkpoint == "last":  # last.pt holds student and teacher together
        state = {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")}
    model.load_state_dict(state)
    return cfg, data, model.eval().for_serving(), device


def trains_listwise(model: CTRModel, setting: bool | None = None) -> bool:
    """data.listwise when set, else the model's own preference (listwise models score whole requests)."""
    return model.needs.listwise if setting is None else setting


def evaluate(model, data, split, max_len, batch_size, device, precision="auto", world: World | None = None) -> dict:
    p = predict(model, data, split, max_len, batch_size, device, precision, world=world)
    return checked_metrics(p, split)


def checked_metrics(p: dict, split: str) -> dict:
    """metrics.evaluate, refusing non-finite predictions (a diverged model) with a clear error."""
    bad = int((~np.isfinite(p["prob"])).sum())
    if bad:
        raise RunError(f"{bad} of {len(p['prob'])} predictions on the {split} split are not finite: the model's "
                       f"weights have diverged; train again with a lower optim.lr")
    return metrics.evaluate(p["label"], p["prob"], p["user"])


class NullLog:
    """The metric log of ranks other than 0."""

    def log(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


class MetricLog:
    """metrics.csv + TensorBoard; on resume, rows past the checkpoint's step are dropped from both."""

    FIELDS = ["step", "epoch", "split", "loss", "auc", "gauc", "uauc", "logloss", "lr", "impressions_per_s"]

    def __init__(self, run_dir: Path, resume_step: int):
        self.path = run_dir / "metrics.csv"
        rows = []
        if resume_step and self.path.exists():
            with open(self.path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, self.FIELDS)
            w.writeheader()
            w.writerows(rows)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step or None)
        except ImportError:  # tensorboard is a declared dependency; stay usable without it
            pass

    def log(self, step: int, epoch: int, split: str, **values) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.FIELDS).writerow({"step": step, "epoch": epoch, "split": split, **values})
        if self.tb:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                    self.tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        if self.tb:
            self.tb.close()


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def fit(cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Train, early-stop on a validation metric, evaluate the best weights on test; returns results.json.
    The run folder is locked for the whole run. A folder that already holds a run is continued only with
    `resume` (and only under the config it started with) and replaced only with `overwrite`."""
    world = init_world(cfg.train.device)
    with RunLock(cfg.run_dir) if world.is_main else nullcontext():
        finished = check_run_folder(cfg.run_dir, cfg.to_dict(), resume, overwrite) if world.is_main else None
        if world.is_main:
            for tmp in [*cfg.run_dir.glob("*.pt.tmp-*"), *cfg.run_dir.glob("*.pt.sha256.tmp")]:
                tmp.unlink()  # left by a process killed mid-write (we hold the lock now)
        if world.distributed:
            finished = world.gather(finished)[0]
        return finished if finished is not None else _fit(cfg, resume, world)


def reuse_or_fit(cfg: RunConfig, overwrite: bool = False) -> dict:
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


def _fit(cfg: RunConfig, resume: bool, world: World) -> dict:
    run_dir = cfg.run_dir
    main = world.is_main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    world.barrier()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device, world)
    if device.type == "cpu":
        keep_freed_memory()
    if not main:
        world.barrier()  # rank 0 prepares the dataset (if it must) before the others open it
    data = open_dataset(cfg.data.name, cfg.data.path, cfg.data.raw_dir, cfg.data.options)
    if main:
        world.barrier()
    check_labels(data)
    max_len = cfg.data.max_len or data.spec.max_len
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    model = build_model(data.spec, cfg.model, content=data.content()).to(device)
    step_loss = Objective(model, cfg, data.spec, max_len, device, data.content())
    trainable = step_loss.trainable  # the model, or the student and its teacher together
    shards = _shard_embeddings(cfg, step_loss, world)
    engine = step_loss
    if world.distributed:  # gradients averaged over ranks; find_unused: not every model touches every parameter
        engine = nn.parallel.DistributedDataParallel(step_loss, device_ids=[device.index] if device.type == "cuda"
                                                     else None, find_unused_parameters=True)
    if cfg.train.sparse_init:
        copied = sparse.warm_start(model, cfg.train.sparse_init)
        _say(cfg if main else None, f"warm start: {len(copied)} embedding tables from {cfg.train.sparse_init}")
    opt = make_optimizer(trainable, cfg.optim)
    train_cfg = LoaderConfig(cfg.data.batch_size, step_loss.load_len, cfg.data.num_workers, shuffle=True,
                             length_window=cfg.data.length_window, listwise=step_loss.listwise,
                             cand_seq=model.needs.cand_seq, fraction=cfg.data.train_fraction,
                             subsample_seed=cfg.data.subsample_seed)
    if cfg.data.streaming:
        from ..data.stream import StreamLoader
        train_loader = StreamLoader(data, "train", train_cfg, cfg.train.seed, cfg.data.shuffle_buffer,
                                    cfg.data.chunk_rows)
    else:
        train_loader = Loader(data, "train", train_cfg, seed=cfg.train.seed)
    steps_per_epoch = train_loader.steps_per_epoch()
    sched = make_schedule(opt, cfg.optim, steps_per_epoch * cfg.train.epochs)
    st = {"epoch": 0, "step_in_epoch": 0, "step": 0, "best": -1.0, "best_epoch": -1, "bad_epochs": 0,
          "epochs": [], "train_seconds": 0.0, "impressions": 0, "done": False, "skipped_steps": 0,
          "data_fingerprint": data.meta.get("fingerprint"), "precision": _precision_used(device, cfg.train.precision)}
    last = run_dir / "last.pt"
    if resume and last.exists():
        ck = load_checkpoint(last)
        drift = config_drift(ck["config"], cfg.to_dict())
        if drift:
            raise RunError(f"{last}: the run there started under another config than asked for now "
                           f"({'; '.join(drift)}); resume it with its own settings ({run_dir / 'config.yaml'}), "
                           f"or train into another folder (another name or out_dir), or replace it with --overwrite")
        _check_same_data_and_precision(last, ck["state"], st)
        trainable.load_state_dict(ck["model"])
        load_optimizer_state(opt, ck["optim"], shards)
        sched.load_state_dict(ck["sched"])
        _set_rng_state(ck["rng"])
        st = {**st, **ck["state"]}  # keys added since the checkpoint was written start at their defaults
        if st["done"] and (run_dir / "results.json").exists():
            return json.loads((run_dir / "results.json").read_text())
    saved_sparse = None
    if cfg.train.sparse_reset:  # the snapshot is taken once, before any checkpoint, and kept for resumes
        snap = run_dir / "sparse_snapshot.pt"
        if last.exists() and resume:
            saved_sparse = load_checkpoint(snap, weights_only=True)
        else:
            saved_sparse = sparse.snapshot(trainable)
            if main:
                save_checkpoint(saved_sparse, snap)
    if main:
        save_config(cfg, run_dir / "config.yaml")
        (run_dir / "data_spec.json").write_text(json.dumps({**data.spec.to_dict(), "max_len_used": max_len},
                                                           indent=1))
    log = MetricLog(run_dir, st["step"]) if main else NullLog()

    saved_step = st["step"] if last.exists() and resume else None

    def checkpoint():  # called on every rank: gathering sharded tables is collective
        nonlocal saved_step
        saved_step = st["step"]
        model_state = full_state(trainable) if shards else trainable.state_dict()
        optim_state = full_optimizer_state(opt, shards) if shards else opt.state_dict()
        refuse_nonfinite(model_state, f"{last} at step {st['step']}")
        if main:
            save_checkpoint({"model": model_state, "optim": optim_state, "sched": sched.state_dict(),
                             "rng": _rng_state(), "state": st, "config": cfg.to_dict()}, last)

    steps_this_process = 0
    trainable.train()
    while st["epoch"] < cfg.train.epochs and not st["done"]:
        epoch = st["epoch"]
        if saved_sparse is not None and epoch > 0 and st["step_in_epoch"] == 0:
            sparse.reset(trainable, opt, saved_sparse)
        batches = train_loader.epoch(epoch, start_step=st["step_in_epoch"], world=world)
        bar = _progress(cfg, steps_per_epoch, st["step_in_epoch"], f"epoch {epoch + 1}/{cfg.train.epochs}") \
            if main else None
        t0, seen, loss_sum, loss_n = time.perf_counter(), 0, 0.0, 0
        for batch in batches:
            batch = None if batch is None else batch.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            autocast = autocast_for(device, cfg.train.precision)
            n_local = 0 if batch is None else len(batch)
            # this rank's share of the global batch: DDP's mean over ranks then equals the whole batch's mean
            share = n_local * world.size / world.sum(n_local) if world.distributed else 1.0
            loss = accumulate_gradients(engine, batch, cfg.train.grad_accum, autocast, share)
            max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf  # inf: measure, don't clip
            norm = clip_gradients(trainable.parameters(), max_norm, shards) if shards else \
                nn.utils.clip_grad_norm_(trainable.parameters(), max_norm)
            loss_value, norm_value = torch.stack([loss.detach().float(), norm.float().to(loss.device)]).tolist()
            # Under DDP the gradient norm is global (a rank's NaN loss makes every rank's norm NaN), so deciding on
            # it alone keeps all ranks taking, or skipping, the same step without another collective.
            finite = math.isfinite(norm_value) and (world.distributed or math.isfinite(loss_value))
            if finite:
                opt.step()
            else:  # never step (or later checkpoint) on a non-finite loss or gradient
                opt.zero_grad(set_to_none=True)
                st["skipped_steps"] += 1
                lr = sched.get_last_lr()[0]
                what = (f"non-finite training step {st['step'] + 1} (epoch {epoch + 1}): loss {loss_value:.4g}, "
                        f"gradient norm {norm_value:.4g}, learning rate {lr:.3g}")
                if st["skipped_steps"] > cfg.train.skip_nonfinite_steps:
                    kept = (f"{last} keeps the state of step {saved_step}" if saved_step is not None else
                            "no checkpoint was written")
                    raise RunError(f"{run_dir}: training diverged: {what}; {kept}. Lower optim.lr, keep "
                                   f"optim.grad_clip > 0, use train.precision=fp32, or allow a few such steps "
                                   f"with train.skip_nonfinite_steps=N")
                _say(cfg if main else None, f"skipped {what} ({st['skipped_steps']} of at most "
                                            f"{cfg.train.skip_nonfinite_steps})")
            sched.step()
            st["step"] += 1
            st["step_in_epoch"] += 1
            steps_this_process += 1
            seen += n_local
            if finite:
                loss_sum, loss_n = loss_sum + loss_value, loss_n + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}")
            if st["step"] % cfg.train.log_every == 0 and loss_n:
                log.log(st["step"], epoch, "train", loss=loss_sum / loss_n, lr=sched.get_last_lr()[0])
                loss_sum, loss_n = 0.0, 0
            if cfg.train.checkpoint_every and st["step"] % cfg.train.checkpoint_every == 0:
                checkpoint()
            if cfg.train.max_steps and steps_this_process >= cfg.train.max_steps:
                break
        dt = time.perf_counter() - t0
        seen = int(world.sum(seen))
        st["train_seconds"] += dt
        st["impressions"] += seen
        if bar is not None:
            bar.close()
        if cfg.train.max_steps and steps_this_process >= cfg.train.max_steps and \
                st["step_in_epoch"] < steps_per_epoch:
            checkpoint()
            log.close()
            return {"stopped_at_step": st["step"], "run_dir": str(run_dir)}
        m = evaluate(model, data, "valid", max_len, cfg.data.eval_batch_size, device, cfg.train.precision, world)
        log.log(st["step"], epoch, "valid", auc=m["auc"], gauc=m.get("gauc"), uauc=m.get("uauc"),
                logloss=m["logloss"], impressions_per_s=seen / dt if dt else None)
        st["epochs"].append({"epoch": epoch + 1, "step": st["step"], **{f"valid_{k}": v for k, v in m.items()}})
        score = m[cfg.train.early_stop_metric]
        if score > st["best"]:
            st.update(best=score, best_epoch=epoch + 1, bad_epochs=0)
            best_state = full_state(model) if shards else model.state_dict()
            refuse_nonfinite(best_state, f"{run_dir / 'best.pt'} at epoch {epoch + 1}")
            if main:
                save_checkpoint(best_state, run_dir / "best.pt")
        else:
            st["bad_epochs"] += 1
        st["epoch"] += 1
        st["step_in_epoch"] = 0
        if st["bad_epochs"] >= cfg.train.patience or st["epoch"] >= cfg.train.epochs:
            st["done"] = True
        checkpoint()
        _say(cfg if main else None, f"epoch {epoch + 1}: valid AUC {m['auc']:.4f} "
                                    f"GAUC {m.get('gauc', float('nan')):.4f} "
                  f"logloss {m['logloss']:.4f}")
    log.close()
    world.barrier()  # best.pt is written by rank 0
    results = finish(cfg, model, data, max_len, device, st, train_loader, world)
    if shards:
        mine = {id(s.weight) for s in shards}
        results["row_sharded"] = {"world": world.size, "tables": [n.removesuffix(".weight") for n, p in
                                                                  trainable.named_parameters() if id(p) in mine]}
    if step_loss.teacher is not None:  # kept for inspection; the student in best.pt serves alone
        teacher_state = full_state(step_loss.teacher) if shards else step_loss.teacher.state_dict()
        if main:
            save_checkpoint(teacher_state, run_dir / "teacher.pt")
        results["teacher_test"] = evaluate(step_loss.teacher, data, "test", step_loss.load_len,
                                           cfg.data.eval_batch_size, device, cfg.train.precision, world)
    if main:
        (run_dir / "results.json").write_text(json.dumps(results, indent=1))
    world.barrier()
    return results


def _precision_used(device: torch.device, precision: str) -> str:
    return "bf16" if precision == "bf16" or (precision == "auto" and device.type == "cuda") else "fp32"


def _check_same_data_and_precision(last: Path, saved: dict, now: dict) -> None:
    """A resume must see the data and arithmetic the run started with: the same preparation (its fingerprint; a
    folder prepared again from other inputs differs) and the same precision (`auto` follows the device)."""
    for key, what in (("data_fingerprint", "the prepared data (fingerprint in its meta.json)"),
                      ("precision", "the precision (train.precision=auto is bf16 on a GPU, fp32 on a CPU)")):
        if saved.get(key) is not None and saved[key] != now[key]:
            raise RunError(f"{last}: the run started with other {what}: {saved[key]!r} -> {now[key]!r}; resume "
                           f"with the run's own data and device (or train.precision), or start a new run")


def refuse_nonfinite(state: dict, where: str) -> None:
    """Never write a checkpoint holding NaN or infinite weights (the divergence check should stop a run first)."""
    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise RunError(f"{where}: not saved: the weights {bad[:3]} hold non-finite values (the model diverged); "
                       f"train again with a lower optim.lr")


def _shard_embeddings(cfg: RunConfig, step_loss: "Objective", world: World) -> list:
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
    shards = shard_tables(step_loss.trainable, world.rank, world.size, cfg.train.shard_min_rows)
    mine = {id(s.weight) for s in shards}
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        step_loss, [n for n, p in step_loss.named_parameters() if id(p) in mine])
    step_loss.sharded = bool(shards)
    return shards


def accumulate_gradients(engine, batch, parts: int, autocast, share: float = 1.0) -> Tensor:
    """Backward of the batch's mean loss (times `share`, this rank's weight in a distributed step) in `parts`
    micro-batches (rows, or whole requests), each weighted by its share of the impressions: the gradient of one big
    batch at a fraction of its activation memory. Returns the batch's mean loss (unweighted by `share`).
    Under DDP every rank runs the same number of backward passes (an empty part still runs, adding zeros) and
    gradients are reduced once, on the last."""
    distributed = isinstance(engine, nn.parallel.DistributedDataParallel)
    if parts <= 1 or batch is None:
        with autocast:
            loss = engine(batch)
        (loss * share if share != 1.0 else loss).backward()
        return loss.detach()
    total, n = 0.0, len(batch)
    pieces = torch.arange(batch.label.shape[0], device=batch.label.device).tensor_split(parts)
    for i, idx in enumerate(pieces):
        micro = batch.select(idx)
        if len(micro) == 0 and not distributed:
            continue
        sync = engine.no_sync() if distributed and i < len(pieces) - 1 else nullcontext()
        with sync:
            with autocast:
                loss = engine(micro if len(micro) else None) * (len(micro) / n)
            (loss * share if share != 1.0 else loss).backward()
        total = total + loss.detach()
    return total


def distill_loss(z_student: Tensor, z_teacher: Tensor, label: Tensor, temperature: float,
                 weight: float) -> Tensor:
    """loss1 + loss2 + weight * loss3 (SUAN eq. 17): both models fit the labels, and the student's softened
    probability fits the teacher's, whose soft label is detached (the teacher learns from labels only)."""
    bce = nn.functional.binary_cross_entropy_with_logits
    soft = torch.sigmoid(z_teacher.detach() / temperature)
    return bce(z_student, label) + bce(z_teacher, label) + weight * bce(z_student / temperature, soft)


class Objective(nn.Module):
    """The training loss of a run: plain BCE, or online distillation when the config has a `distill` section.
    `load_len` is the history length batches are loaded with (the longer of student and teacher). A module, so
    DDP can wrap it whichever of the model's methods the loss calls; its parameters are `trainable`'s."""

    def __init__(self, model: nn.Module, cfg: RunConfig, spec, max_len: int, device, content=None):
        super().__init__()
        self.max_len, self.dist = max_len, cfg.distill
        self.load_len, self.teacher = max_len, None
        object.__setattr__(self, "model", model)     # not a submodule: `trainable` holds it
        self.listwise = trains_listwise(model, cfg.data.listwise)
        if self.dist is not None and self.listwise:
            raise ConfigError("online distillation trains pointwise: set data.listwise=false")
        if self.dist is not None:
            object.__setattr__(self, "teacher", build_model(spec, self.dist.teacher, content=content).to(device))
            self.load_len = max(max_len, self.dist.teacher_max_len or max_len)
        self.trainable = nn.ModuleDict({"student": model, "teacher": self.teacher}) if self.teacher is not None \
            else model
        self.sharded, self.standin = False, None   # row-sharded tables; a batch to run when a rank has none

    def forward(self, batch) -> Tensor:
        if batch is None and self.sharded:  # sharded lookups are collectives: run them on a stand-in, weight 0
            if self.standin is None:
                raise RuntimeError("a rank got no rows in its first step; use fewer ranks or a larger batch")
            return self.forward(self.standin) * 0.0
        if batch is None:  # a rank with nothing in this step: zero gradients, still part of the reduction
            return sum(p.sum() for p in self.parameters()) * 0.0
        if self.sharded and self.standin is None:
            self.standin = batch
        if self.listwise:  # BCE over every real candidate of every request
            logits = self.model.score_request(batch)
            return nn.functional.binary_cross_entropy_with_logits(logits[batch.mask].float(), batch.label[batch.mask])
        if self.teacher is None:
            return nn.functional.binary_cross_entropy_with_logits(self.model(batch).float(), batch.label)
        d = self.dist
        z_s = self.model(batch.with_max_len(self.max_len)).float()
        z_t = self.teacher(batch.with_max_len(d.teacher_max_len or self.max_len)).float()
        weight = d.weight if d.weight is not None else d.temperature
        return distill_loss(z_s, z_t, batch.label, d.temperature, weight)


def finish(cfg, model, data, max_len, device, st, train_loader, world: World | None = None) -> dict:
    world = world or World()
    model.load_state_dict(load_checkpoint(cfg.run_dir / "best.pt", map_location=device, weights_only=True))
    pred = predict(model, data, "test", max_len, cfg.data.eval_batch_size, device, cfg.train.precision, world=world)
    test = checked_metrics(pred, "test")
    if world.is_main:
        np.savez_compressed(cfg.run_dir / "test_predictions.npz", **pred)  # for paired tests between models
    valid = st["epochs"][st["best_epoch"] - 1]
    sample = next(iter(Loader(data, "valid", LoaderConfig(batch_size=60, max_len=max_len, shuffle=False,
                                                          cand_seq=model.needs.cand_seq))))
    sample = sample.to(device)
    return {"name": cfg.name, "model": cfg.model_name, "dataset": data.spec.name, "max_len": max_len,
            "seed": cfg.train.seed, "best_epoch": st["best_epoch"], "epochs_run": len(st["epochs"]),
            "valid": {k[6:]: v for k, v in valid.items() if k.startswith("valid_")},
            "test": test, "epochs": st["epochs"], "params": count_params(model),
            "inference_gflops_per_60": inference_flops(model, sample) / 1e9,
            "train_flops_per_impression": training_flops_per_impression(model, sample),
            "train_impressions": int(train_loader.n),  # the training set used (after data.train_fraction)
            "train_impressions_per_s": st["impressions"] / st["train_seconds"] if st["train_seconds"] else None,
            "train_seconds": st["train_seconds"], "peak_rss_mib": world.gather(peak_rss_mib()),  # per rank
            "embedding_params_held": world.gather(sum(p.numel() for p in embedding_params(model).values())),  # per rank: less when sharded
            "config": cfg.to_dict(),
            "distilled_from": cfg.distill.teacher if cfg.distill else None}


def peak_rss_mib() -> float | None:
    """This process's peak resident memory (VmHWM; Linux), None elsewhere."""
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) / 1024


def _progress(cfg, total, initial, desc):
    if not cfg.train.progress:
        return None
    from tqdm.auto import tqdm
    # disable=None: a bar on a terminal, none in a log file (where each redraw would add a line)
    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True, disable=None)


def _say(cfg, msg: str) -> None:
    if cfg is not None and cfg.train.progress:
        print(msg, flush=True)

