"""``codesign report``: the subcommand's parser (wired into codesign.cli by ``add_report_parser``)."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path



def _int_list(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return vals


def cmd_report(args: argparse.Namespace) -> int:
    from codesign.report.build import ReportOptions, write_report
    from codesign.report.resolve import parse_shape

    out = Path(args.out) if args.out else Path("reports") / _default_name(args.model, args.hw)
    opts = ReportOptions(
        model=args.model, hw=list(args.hw), out=out, search=args.search, ref_gpus=list(args.ref_gpu or []),
        batches=args.batches, warmup=args.warmup, reps=args.reps, threads=args.threads, time_cap_s=args.time_cap,
        mapper=args.mapper, map_budget_s=args.map_budget, objective=args.objective,
        input_shape=parse_shape(args.input_shape), cpu=not args.no_cpu, gpu=not args.no_gpu, title=args.title,
        notes=list(args.note or []), variants=not args.no_variant, plots=not args.no_plots,
        command="codesign report " + " ".join(shlex.quote(a) for a in (args.argv_for_record or [])))
    log = (lambda *a, **k: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    path = write_report(opts, log)
    print(f"wrote {path / 'index.html'}, {path / 'report.md'}, {path / 'data.json'}")
    return 0


def _default_name(model: str, hw: list[str]) -> str:
    base = Path(model).stem if model.endswith(".json") else model.replace(":", "-").replace("/", "-").replace("@", "-")
    return "-".join([base, *(Path(h).stem for h in hw)])


def add_report_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``report`` on ``subparsers``; the parsed namespace carries ``func(args) -> int``."""
    p = subparsers.add_parser(
        "report", help="report: a network on accelerators vs this machine's CPU/GPU (HTML, Markdown, JSON, plots)",
        description="Map and simulate a network on each accelerator, run the same network in PyTorch on this "
                    "machine's CPU (and CUDA GPU when present), and write index.html, report.md, data.json and "
                    "PNG plots under --out.")
    p.add_argument("--model", required=True,
                   help="built-in name (codesign workloads), workload JSON (simulated only: it cannot run on a CPU), "
                        "pkg.module:factory (needs --input-shape), an architecture record (its JSON file or its "
                        "string SPACE@CxHxW/N:op,...), or runs/NAME@K (the K-th record of a search's front.json)")
    p.add_argument("--hw", action="append", required=True, metavar="HW",
                   help="accelerator preset or YAML (repeat for several)")
    p.add_argument("--search", metavar="RUN_DIR", help="search run directory (runs/NAME): plot its Pareto front")
    p.add_argument("--out", metavar="DIR", help="output directory (default reports/MODEL-HW...)")
    p.add_argument("--ref-gpu", action="append", metavar="GPU",
                   help="add a reference GPU as a labelled roofline estimate: a100, h100, jetson-orin or all (repeatable)")
    p.add_argument("--batches", type=_int_list, default=[1, 8, 32], metavar="B1,B2",
                   help="batch sizes measured on CPU/GPU; 1 is always included (default 1,8,32)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per batch size (default 3)")
    p.add_argument("--reps", type=int, default=20, help="timed runs per batch size (default 20)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's default)")
    p.add_argument("--time-cap", type=float, default=20.0, metavar="S",
                   help="stop timing a batch size after S seconds (at least 3 runs; default 20)")
    p.add_argument("--mapper", choices=("auto", "default", "search"), default="auto",
                   help="auto: codesign.mapper when available, else the default schedule; default: the simulator's "
                        "default schedule; search: require the mapper")
    p.add_argument("--map-budget", type=float, default=20.0, metavar="S", help="mapper budget per accelerator (s)")
    p.add_argument("--objective", default="edp", help="mapper objective (default edp)")
    p.add_argument("--input-shape", metavar="N,C,H,W", help="input shape of a pkg.module:factory model (e.g. 1,3,32,32)")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU measurement")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU measurement even if CUDA is present")
    p.add_argument("--no-variant", action="store_true",
                   help="do not simulate a MAC-only variant where the network's shift/adder layers cannot map")
    p.add_argument("--no-plots", action="store_true", help="write the report without PNG plots (faster)")
    p.add_argument("--title", help="report title")
    p.add_argument("--note", action="append", metavar="TEXT", help="a note printed at the top of the report (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=_record_argv(cmd_report), argv_for_record=None)
    return p


def _record_argv(fn):
    def wrapped(args: argparse.Namespace) -> int:
        if args.argv_for_record is None:
            args.argv_for_record = _reconstruct(args)
        return fn(args)
    return wrapped


def _reconstruct(args: argparse.Namespace) -> list[str]:
    """The report's own arguments, for the provenance line (reconstructed from the namespace)."""
    out = ["--model", args.model]
    for h in args.hw:
        out += ["--hw", h]
    for flag, val in (("--search", args.search), ("--out", args.out), ("--threads", args.threads),
                      ("--input-shape", args.input_shape), ("--title", args.title)):
        if val is not None:
            out += [flag, str(val)]
    for g in args.ref_gpu or []:
        out += ["--ref-gpu", g]
    out += ["--batches", ",".join(map(str, args.batches)), "--warmup", str(args.warmup), "--reps", str(args.reps)]
    if args.time_cap != 20.0:
        out += ["--time-cap", f"{args.time_cap:g}"]
    if args.mapper != "auto":
        out += ["--mapper", args.mapper]
    if args.map_budget != 20.0:
        out += ["--map-budget", f"{args.map_budget:g}"]
    for n in args.note or []:
        out += ["--note", n]
    for flag, on in (("--no-cpu", args.no_cpu), ("--no-gpu", args.no_gpu), ("--no-variant", args.no_variant),
                     ("--no-plots", args.no_plots)):
        if on:
            out.append(flag)
    return out
