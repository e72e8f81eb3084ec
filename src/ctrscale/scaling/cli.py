"""`ctrscale scale run | fit | report | predict`: sweeps, fitted laws, the report, and what a target costs."""
from __future__ import annotations

import json
from pathlib import Path

import yaml


def _requests(sweep_dir: Path) -> list[dict]:
    """The sweep file's fits, then those added with `scale fit` (kept in fits.json; a name given twice: the last)."""
    spec = yaml.safe_load((sweep_dir / "sweep.yaml").read_text()) or {}
    extra = json.loads((sweep_dir / "fits.json").read_text()) if (sweep_dir / "fits.json").exists() else []
    by_name = {r["name"]: r for r in [*(spec.get("fits") or []), *extra]}
    return list(by_name.values())


def cmd_run(args) -> int:
    from .report import write_report
    from .sweep import load_sweep, run_sweep
    spec = load_sweep(args.sweep)
    out = Path(args.out or Path("runs") / "scale" / spec.name)
    path = run_sweep(spec, out, args.parallel, progress=not args.quiet)
    print(f"results: {path}")
    if spec.fits:
        print(f"report: {write_report(out, _requests(out), spec.name)}")
    return 0


def _pairs(items: list[str] | None) -> dict:
    out = {}
    for item in items or []:
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def cmd_fit(args) -> int:
    from .report import write_report
    sweep_dir = Path(args.sweep_dir)
    req = {"name": args.name or f"{args.metric}-vs-{args.x}-{args.form}", "x": args.x, "form": args.form,
           "metric": args.metric, "where": _pairs(args.where), "holdout": args.holdout}
    if args.baseline_value is not None:
        req["baseline"] = args.baseline_value
    elif args.baseline:
        req["baseline"] = _pairs(args.baseline)
    if args.target is not None:
        req["target"] = args.target
    saved = json.loads((sweep_dir / "fits.json").read_text()) if (sweep_dir / "fits.json").exists() else []
    saved = [r for r in saved if r["name"] != req["name"]] + [req]
    (sweep_dir / "fits.json").write_text(json.dumps(saved, indent=1))
    report = write_report(sweep_dir, _requests(sweep_dir))
    print((sweep_dir / "fits" / f"{req['name']}.json").read_text())
    print(f"report: {report}")
    return 0


def cmd_report(args) -> int:
    from .report import write_report
    print(f"report: {write_report(Path(args.sweep_dir), _requests(Path(args.sweep_dir)))}")
    return 0


def cmd_predict(args) -> int:
    from .laws import Fit, required_x
    draws = json.loads((Path(args.sweep_dir) / "fits" / f"{args.fit}.draws.json").read_text())
    if draws is None:
        raise SystemExit(f"fit {args.fit} was refused: see fits/{args.fit}.json")
    meta = json.loads((Path(args.sweep_dir) / "fits" / f"{args.fit}.json").read_text())
    base = meta.get("baseline_value") or 0.0
    out = required_x(Fit.from_dict(draws), args.target - base)
    print(json.dumps({**out, "target": args.target, "x_axis": meta["request"]["x"]}, indent=1))
    return 0


def add_parser(sub) -> None:
    s = sub.add_parser("scale", help="scaling laws: sweeps, fits, reports, predictions")
    sc = s.add_subparsers(dest="scale_cmd", required=True)
    p = sc.add_parser("run", help="run a sweep file's missing points, then its fits and report")
    p.add_argument("sweep", help="sweep YAML (see src/ctrscale/configs/sweeps/)")
    p.add_argument("--out", help="sweep folder (default runs/scale/<name>)")
    p.add_argument("--parallel", type=int, help="processes running points at once (default: the file's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_run)

    p = sc.add_parser("fit", help="fit a law to a sweep's results and add it to the report")
    p.add_argument("sweep_dir")
    p.add_argument("--x", required=True, help="axis column: dense_params, max_len, train_impressions, "
                                              "gflops_per_60, train_flops, or a sweep axis")
    p.add_argument("--form", required=True, choices=["ceiling", "ceiling_offset", "power"])
    p.add_argument("--metric", default="auc", help="auc | gauc | valid_auc | ...")
    p.add_argument("--where", nargs="*", help="rows to fit: column=value ...")
    p.add_argument("--baseline", nargs="*", help="fit the gain over the mean of the rows column=value ...")
    p.add_argument("--baseline-value", type=float, help="fit the gain over this value")
    p.add_argument("--holdout", action="store_true", help="also fit without the largest x and predict it")
    p.add_argument("--target", type=float, help="report the x needed to reach this metric value")
    p.add_argument("--name")
    p.set_defaults(fn=cmd_fit)

    p = sc.add_parser("report", help="refit every fit of a sweep folder and rewrite report.md")
    p.add_argument("sweep_dir")
    p.set_defaults(fn=cmd_report)

    p = sc.add_parser("predict", help="the axis value a fitted law needs for a target, with its interval")
    p.add_argument("sweep_dir")
    p.add_argument("--fit", required=True, help="fit name (fits/<name>.json)")
    p.add_argument("--target", type=float, required=True)
    p.set_defaults(fn=cmd_predict)

