"""Command line: `ctrscale ls | data prepare | train | distill | eval | export | serve | analyze | compare | scale |
demo`."""
from __future__ import annotations

import argparse
import errno
import json
import os
import re
import sys
from pathlib import Path

from .errors import ConfigError, CtrscaleError, one_line


def cmd_ls(args) -> int:
    from .models.index import MODELS  # plain data: listing names imports no model and no torch
    if args.verbose:
        from .models.registry import default_config
    for name, (_, summary) in sorted(MODELS.items()):
        print(f"{name:12s} {summary}")
        if args.verbose:
            print(f"{'':12s} defaults: {json.dumps({k: v for k, v in default_config(name).items() if k != 'name'})}")
    return 0


def cmd_prepare(args) -> int:
    from .data import catalog
    if args.schema:
        from .data.generic import inputs_by_split, prepare_from_schema_file
        if not args.input or not args.out:
            raise ConfigError("--schema needs --input FILE [FILE ...] (or train=FILE valid=FILE test=FILE) and "
                              "--out DIR")
        report = prepare_from_schema_file(args.schema, inputs_by_split(args.input), Path(args.out),
                                          on_bad_row=args.on_bad_row, split=args.split, force=args.force,
                                          time_unit=args.time_unit or "s")
        out = Path(args.out)
    else:
        if not args.name:
            raise ConfigError(f"name a dataset ({', '.join(catalog.NAMES)}) or give --schema")
        if args.input or args.time_unit or args.split:
            raise ConfigError("--input, --split and --time-unit apply to the generic preparer: give --schema too")
        from .typed import apply_overrides
        options = apply_overrides({}, args.option or [])
        out, report = catalog.prepare(args.name, raw_dir=args.raw_dir, out=args.out, force=args.force, **options)
    if report is None:
        print(f"{out}: already prepared (same inputs and options); nothing to do")
    else:
        print((out / "report.md").read_text())
        print(f"prepared into {out}")
    return 0


def cmd_train(args) -> int:
    from .train.config import load_config
    from .train.distributed import close_world
    from .train.loop import fit
    from .train.result import StoppedRun
    cfg = load_config(args.config, args.overrides)
    try:
        res = fit(cfg, resume=args.resume, overwrite=args.overwrite)
    finally:
        distributed = close_world()  # under torchrun: leave no collective thread running at exit
    if isinstance(res, StoppedRun):
        print(f"stopped at step {res.step}; continue with --resume")
    else:
        t = res.test
        print(f"{cfg.name}: best epoch {res.best_epoch}; test AUC {t['auc']:.4f} GAUC {t.get('gauc', 0):.4f} "
              f"logloss {t['logloss']:.4f}; results in {cfg.run_dir}/results.json")
    if distributed:
        # Everything is written and the group is gone; skip interpreter teardown, where gloo's worker threads
        # can still hold tensors and abort the process ("terminate called without an active exception").
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def cmd_distill(args) -> int:
    """Online distillation: `--teacher` and `--student` are model configs in YAML flow style."""
    args.overrides = [f"model={args.student}", f"distill.teacher={args.teacher}", *args.overrides]
    return cmd_train(args)


def cmd_eval(args) -> int:
    from .train.inference import checked_metrics, load_trained, predict, write_predictions
    if not 0 < args.fraction <= 1:
        raise ConfigError(f"--fraction: the share of the split's requests to score, in (0, 1]; got {args.fraction}")
    cfg, data, model, device = load_trained(args.run, args.checkpoint)
    max_len = cfg.data.max_len or data.spec.max_len
    p = predict(model, data, args.split, max_len, cfg.data.eval_batch_size, device, cfg.train.precision,
                fraction=args.fraction)
    if args.predictions:
        write_predictions(p, args.predictions)
        print(f"predictions of {len(p['row']):,} rows written to {args.predictions}", file=sys.stderr)
    print(json.dumps(checked_metrics(p, args.split), indent=1))
    return 0


def cmd_export(args) -> int:
    from .serving.bundle import export_bundle
    out = export_bundle(args.run, args.out, args.checkpoint, compile=args.compile, overwrite=args.overwrite)
    man = json.loads((out / "manifest.json").read_text())
    print(f"bundle of {man['model']} ({len(man['files'])} files) written to {out}")
    for part, what in (man.get("compiled") or {}).items():
        print(f"  compiled {part}: {what}")
    return 0


def cmd_serve(args) -> int:
    import logging

    import torch
    import uvicorn

    from .serving.app import Service, create_app
    from .serving.features import Limits
    from .train.device import keep_freed_memory
    keep_freed_memory()
    token = args.token or os.environ.get("CTRSCALE_TOKEN") or None
    if args.threads:
        torch.set_num_threads(args.threads)
    limits = Limits(args.max_candidates, args.max_history, int(args.max_body_mib * 2**20))
    service = Service(args.source, args.cache_mib, limits, token, compiled=args.compiled)
    ok, msg = service.reload()  # load before listening: a bundle that does not load stops here, in one line
    if not ok:
        raise ConfigError(msg)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        print(f"ctrscale serve: warning: listening on {args.host} without a token (set --token or CTRSCALE_TOKEN)",
              file=sys.stderr)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    print(f"serving {msg} on http://{args.host}:{args.port} (POST /v1/score; GET /v1/model, /metrics); "
          f"SIGHUP or POST /v1/admin/reload swaps in a new bundle", file=sys.stderr)
    uvicorn.run(create_app(service, load_on_start=False), host=args.host, port=args.port, log_level="warning",
                access_log=False)
    return 0


def cmd_analyze_attention(args) -> int:
    from .analysis import analyze_attention
    report = analyze_attention(args.run, args.split, args.samples, Path(args.out) if args.out else None)
    print(report["table"])
    print(f"heatmap: {report['heatmap']}")
    return 0


def cmd_analyze_fields(args) -> int:
    from .analysis_fields import analyze_fields
    report = analyze_fields(args.run, Path(args.out) if args.out else None, args.top)
    print(report["table"])
    print(f"heatmap: {report['heatmap']}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    run_demo(out=Path(args.out), models=args.models, full=args.full, overrides=args.overrides,
             data_options={"impressions": args.impressions} if args.impressions else None, overwrite=args.overwrite)
    return 0


def cmd_compare(args) -> int:
    from .compare import run_compare
    run_compare(args.data, args.models, args.seeds, Path(args.out), args.overrides, args.config,
                overwrite=args.overwrite, embed_dim=args.embed_dim)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ctrscale", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show Python tracebacks for every error")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("ls", help="list registered models")
    s.add_argument("-v", "--verbose", action="store_true", help="also print each model's default config (imports "
                   "the models and torch, so it takes seconds)")
    s.set_defaults(fn=cmd_ls)

    d = sub.add_parser("data", help="data preparation").add_subparsers(dest="data_cmd", required=True)
    s = d.add_parser("prepare", help="prepare a named dataset, or any CSV/Parquet described by a schema")
    s.add_argument("name", nargs="?", help="synthetic | ml100k-ctr-v1 | ml1m-u2999-ctr-v1 | ml1m-ctr-v1 | "
                   "ml20m-ctr-v1 | taobao-ctr-v1 | amazon-ctr-v1 | eleme-ctr-v1")
    s.add_argument("--raw-dir")
    s.add_argument("--out")
    s.add_argument("--force", action="store_true", help="prepare again even if up to date")
    s.add_argument("--option", action="append", help="preparer option key=value: synthetic sizes (impressions, "
                   "n_users, n_items), taobao log_days, amazon negatives and seed, eleme timediff_seconds")
    s.add_argument("--schema", help="feature schema YAML for the generic preparer")
    s.add_argument("--input", nargs="+", help="CSV/Parquet files (generic preparer), read one after the other and "
                   "split by --split; or pre-split files, each named by its split: train=FILE valid=FILE test=FILE "
                   "(each split needs a file, as a run picks its epoch on valid and scores test; a split may take "
                   "several; no --split then)")
    s.add_argument("--on-bad-row", choices=["error", "skip"], default="error",
                   help="skip: drop bad rows and count them by reason in the report (an unclosed quote, or a "
                   "quoted value spanning lines, is refused even then)")
    s.add_argument("--split", help="'time' (the default: 80/10/10 by time) or a column of train/valid/test; not "
                   "with split=FILE inputs")
    s.add_argument("--time-unit", choices=["s", "ms", "us", "ns"], help="unit of the impression and behavior times "
                   "(generic preparer; default s); stored as unix seconds, which must fall in 1980..2100")
    s.set_defaults(fn=cmd_prepare)

    s = sub.add_parser("train", help="train a model: --config X.yaml key=value ...")
    s.add_argument("--config")
    s.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    s.add_argument("--overwrite", action="store_true", help="train into a run folder that already holds a run, "
                   "replacing its checkpoints and results (without it such a folder is refused)")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.name=din train.epochs=2")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("distill", help="train a student with a teacher (online distillation)")
    s.add_argument("--teacher", required=True, help="e.g. '{name: suan, size: size-3}'")
    s.add_argument("--student", required=True, help="e.g. '{name: lightsuan}'")
    s.add_argument("--config")
    s.add_argument("--resume", action="store_true")
    s.add_argument("--overwrite", action="store_true", help="replace the run already in the run folder")
    s.add_argument("overrides", nargs="*", help="e.g. distill.teacher_max_len=200 data.max_len=50")
    s.set_defaults(fn=cmd_distill)

    s = sub.add_parser("eval", help="evaluate a run's checkpoint on a split")
    s.add_argument("run", help="run folder (holds config.yaml and best.pt)")
    s.add_argument("--split", default="test", choices=["train", "valid", "test"])
    s.add_argument("--checkpoint", default="best", choices=["best", "last"])
    s.add_argument("--predictions", help="also write each row's prediction (row, request, user, label, prob) "
                   "to this Parquet file")
    s.add_argument("--fraction", type=float, default=1.0, help="< 1: only this fixed random share of the "
                   "split's requests (whole requests; the same share every time)")
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("export", help="write a run's servable bundle (weights, vocabularies, statistics, schema)")
    s.add_argument("run", help="run folder (holds config.yaml and best.pt)")
    s.add_argument("--out", required=True, help="bundle folder to write")
    s.add_argument("--checkpoint", default="best", choices=["best", "last"])
    s.add_argument("--compile", action="store_true", help="also write the user encoder and candidate scorer as "
                   "torch.export programs (AOTInductor-compiled where a C++ compiler is present)")
    s.add_argument("--overwrite", action="store_true", help="replace the bundle already in --out")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("serve", help="serve a bundle (or a run folder) over HTTP: POST /v1/score")
    s.add_argument("source", help="bundle folder (`ctrscale export`) or run folder")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--token", help="require 'Authorization: Bearer TOKEN' (default: $CTRSCALE_TOKEN, else none)")
    s.add_argument("--cache-mib", type=float, default=256, help="user-state cache budget (MiB)")
    s.add_argument("--max-candidates", type=int, default=10_000)
    s.add_argument("--max-history", type=int, default=10_000)
    s.add_argument("--max-body-mib", type=float, default=16)
    s.add_argument("--threads", type=int, help="torch threads per request (default: torch's)")
    s.add_argument("--compiled", action="store_true", help="score with the bundle's exported programs "
                   "(`ctrscale export --compile`) instead of the eager model")
    s.set_defaults(fn=cmd_serve)

    a = sub.add_parser("analyze", help="analyses of trained runs").add_subparsers(dest="analyze_cmd", required=True)
    s = a.add_parser("attention", help="Full-Attention EST run: per-block effective rank heatmap and the AUC "
                                       "when each block (N->N, N->S, S->N, S->S) is masked")
    s.add_argument("run", help="run folder of an `est` model trained with model.attention=full")
    s.add_argument("--split", default="test", choices=["train", "valid", "test"])
    s.add_argument("--samples", type=int, default=1000, help="impressions whose attention maps are measured")
    s.add_argument("--out", help="output folder (default: <run>/analysis)")
    s.set_defaults(fn=cmd_analyze_attention)
    s = a.add_parser("fields", help="FAT run: the field-pair modulation alpha as a heatmap, and the most "
                                    "asymmetric, strongest and weakest field pairs")
    s.add_argument("run", help="run folder of a `fat` model (alpha shared or per_head)")
    s.add_argument("--top", type=int, default=10, help="pairs listed per table")
    s.add_argument("--out", help="output folder (default: <run>/analysis)")
    s.set_defaults(fn=cmd_analyze_fields)

    s = sub.add_parser("compare", help="models x seeds on one dataset, with paired tests")
    s.add_argument("--data", required=True, help="dataset name (see `data prepare`)")
    s.add_argument("--models", nargs="+", required=True,
                   help="the first one is the baseline; LABEL:k=v;k=v for a variant")
    s.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    s.add_argument("--out", default="runs/compare")
    s.add_argument("--config", help="base run config YAML")
    s.add_argument("--overwrite", action="store_true", help="retrain runs in --out whose config differs from the "
                   "one asked for (without it they are refused)")
    s.add_argument("--embed-dim", type=int, metavar="N", help="one embedding width for every model: "
                   "model.embed_dim=N after each entry's own overrides (registry defaults range from 8 to 32)")
    s.add_argument("overrides", nargs="*", help="dotted overrides for every run")
    s.set_defaults(fn=cmd_compare)

    from .scaling.cli import add_parser as add_scale
    add_scale(sub)

    s = sub.add_parser("demo", help="the main job: a curated comparison on the embedded synthetic data, a scaling "
                       "law, the best model served; summary.md and report.html")
    s.add_argument("--out", default="reports/demo")
    s.add_argument("--full", action="store_true", help="every registered model at its defaults instead of the "
                   "curated set (much longer)")
    s.add_argument("--models", nargs="+", help="labels of the curated set (src/ctrscale/configs/demo.yaml) or "
                   "registered model names (at their defaults)")
    s.add_argument("--impressions", type=int, help="synthetic data size (default: the demo config's)")
    s.add_argument("--overwrite", action="store_true", help="retrain runs in --out made under other settings")
    s.add_argument("overrides", nargs="*", help="dotted overrides for every run, e.g. train.epochs=2")
    s.set_defaults(fn=cmd_demo)
    return p


OVERRIDE = re.compile(r"[A-Za-z_]\w*(\.\w+)*=.*", re.S)  # key=value or section.key=value


def overrides_last(argv: list[str]) -> list[str]:
    """compare's and demo's overrides may stand anywhere (`compare --seeds 0 1 train.epochs=1`): moved after a `--`
    so that --models and --seeds, which take several values, do not swallow them. (compare's model entries use
    `label:k=v`.)"""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in ("compare", "demo") or "--" in argv:
        return argv
    found = [a for a in argv if OVERRIDE.fullmatch(a)]
    return [a for a in argv if not OVERRIDE.fullmatch(a)] + (["--", *found] if found else [])


def main(argv: list[str] | None = None) -> int:
    """Run a command. ctrscale's own errors (bad input, a refused action) and the OS's file errors are printed as
    one line and exit 2; any other exception is a bug and keeps its traceback. `--debug` shows every traceback."""
    args = parser().parse_args(overrides_last(sys.argv[1:] if argv is None else list(argv)))
    if args.debug:
        return args.fn(args)
    try:
        return args.fn(args)
    except (CtrscaleError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
            NotADirectoryError) as e:
        print(f"ctrscale {args.cmd}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno == errno.ENOSPC:  # the disk is full: nothing to debug, but say where
            print(f"ctrscale {args.cmd}: error: no space left on the device ({e.filename or 'while writing'}); "
                  f"free some space and run the command again", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print(f"ctrscale {args.cmd}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
