"""The ``codesign`` command line. Every user error is one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from hw_models.accelerator import load_accelerator, preset_names
from hw_models.errors import CodesignError
from hw_models.schedule import Schedule
from hw_models.simulator import SimResult, simulate
from hw_models.zoo import BUILTIN, builtin_names, get_builtin, load_workload


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:          # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _fmt_energy(pj: float) -> str:
    return f"{pj / 1e6:.3f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


# ---------------------------------------------------------------------------------------------


def cmd_workloads(args: argparse.Namespace) -> int:
    rows = []
    for name in builtin_names():
        wl = get_builtin(name)
        rows.append([name, len(wl), f"{wl.macs / 1e6:.2f}", ",".join(sorted(k for k in wl.kinds() if "conv" in k or "linear" in k or "matmul" in k)), BUILTIN[name][1]])
    print(_table(["workload", "ops", "MMACs", "GEMM kinds", "description"], rows))
    return 0


def cmd_hw_list(args: argparse.Namespace) -> int:
    rows = []
    for name in preset_names():
        acc = load_accelerator(name)
        chunks = ", ".join(f"{c.name}:{c.pe_type} {c.rows}x{c.cols}" for c in acc.chunks)
        rows.append([name, f"{acc.clock_mhz:g}", f"{acc.global_buffer.size_kb:g}", f"{acc.dram.bandwidth_gbs:g}", chunks])
    print(_table(["preset", "MHz", "GB KB", "DRAM GB/s", "chunks"], rows))
    return 0


def cmd_hw_show(args: argparse.Namespace) -> int:
    import yaml
    acc = load_accelerator(args.name)
    print(yaml.safe_dump(acc.to_dict(), sort_keys=False).rstrip())
    return 0


def print_sim(result: SimResult, top: int | None) -> None:
    ops = result.ops
    if top:
        ops = sorted(ops, key=lambda o: o.cycles, reverse=True)[:top]
    rows = [[o.name, o.kind, o.chunk, o.dataflow, f"{o.cycles:,.0f}", f"{o.utilization:.2f}", o.bound,
             _fmt_energy(o.energy_total_pj)] for o in ops]
    print(_table(["op", "kind", "chunk", "flow", "cycles", "util", "bound", "energy uJ"], rows))
    print()
    print(f"workload {result.workload} on {result.accelerator} ({result.clock_mhz:g} MHz, schedule: {result.schedule_producer})")
    print(f"  cycles        {result.cycles:,.0f}   ({result.seconds * 1e3:.4f} ms)")
    print(f"  energy        {_fmt_energy(result.energy_total_pj)} uJ   ({result.energy_total_pj / max(result.macs, 1):.3f} pJ/MAC)")
    print(f"  EDP           {result.edp_pj_s * 1e-6:.4g} uJ*s")
    print(f"  MACs          {result.macs:,}   utilization {result.utilization:.3f}   stall cycles {result.stall_cycles:,.0f}")
    print(f"  pipelined frame interval {result.throughput_interval_cycles:,.0f} cycles")
    attn = result.attention
    if attn is not None:
        print(f"  attention only ({attn['ops']} QK^T / softmax / A.V ops): {attn['cycles']:,.0f} cycles "
              f"({100 * attn['cycles'] / max(result.cycles, 1):.1f}%), {_fmt_energy(attn['energy_pj'])} uJ "
              f"({100 * attn['energy_pj'] / max(result.energy_total_pj, 1e-12):.1f}%)")
    total = result.energy_total_pj or 1.0
    for title, parts in (("by level ", result.energy_by_level_pj), ("by action", result.energy_by_action_pj),
                         ("by chunk ", result.energy_by_chunk_pj)):
        shown = ", ".join(f"{k} {_fmt_energy(v)} ({100 * v / total:.1f}%)" for k, v in parts.items() if v)
        print(f"  energy {title} (uJ): {shown}")


def cmd_simulate(args: argparse.Namespace) -> int:
    workload = load_workload(args.workload)
    accel = load_accelerator(args.hw)
    schedule = Schedule.from_json(args.schedule) if args.schedule else None
    result = simulate(workload, accel, schedule)
    print_sim(result, args.top)
    if args.json:
        result.to_json(args.json)
        print(f"wrote {args.json}")
    return 0


def cmd_map(args: argparse.Namespace) -> int:
    import yaml
    from codesign.lower import load_model_spec        # torch is imported only for commands that need it
    from codesign.mapper import CoSearchResult, map_workload

    workload = load_model_spec(args.model, args.input_shape)
    accel = load_accelerator(args.hw)
    out = map_workload(workload, accel, objective=args.objective, budget_s=args.budget, mode=args.mode,
                       co_search=args.co_search, seed=args.seed, progress=not args.quiet, effort=args.effort)
    if isinstance(out, CoSearchResult):
        accel, schedule = out.accelerator, out.schedule
        hw_path = args.output.with_suffix(".hw.yaml")
        hw_path.write_text(yaml.safe_dump(accel.to_dict(), sort_keys=False))
        print(f"co-search: {out.configs_evaluated} configurations, {args.objective} improved "
              f"{out.improvement:.3f}x over {args.hw}; accelerator written to {hw_path}")
    else:
        schedule = out
    schedule.to_json(args.output)
    print_sim(simulate(workload, accel, schedule), args.top)
    print(f"wrote {args.output}  (reproduce: codesign simulate --workload ... --hw ... --schedule {args.output})")
    return 0


def cmd_rtl(args: argparse.Namespace) -> int:
    from codesign import rtl_tools

    if args.rtl_command == "test":
        return rtl_tools.run_tests(args.sim, args.k, args.waves)
    if args.rtl_command == "lint":
        return rtl_tools.lint()
    out = args.out or rtl_tools.AREA_JSON
    rtl_tools.area(out)
    print(f"wrote {out}")
    return 0


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,3,224,224, got {text!r}") from None
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"dimensions must be positive, got {text!r}")
    return dims


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="codesign", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("workloads", help="list the built-in workloads")
    p.set_defaults(func=cmd_workloads)

    hw = sub.add_parser("hw", help="accelerator presets")
    hw_sub = hw.add_subparsers(dest="hw_command", required=True, parser_class=_Parser)
    p = hw_sub.add_parser("list", help="list the shipped presets")
    p.set_defaults(func=cmd_hw_list)
    p = hw_sub.add_parser("show", help="print a preset or YAML file, validated")
    p.add_argument("name", help="preset name or path to a YAML file")
    p.set_defaults(func=cmd_hw_show)

    p = sub.add_parser("simulate", help="simulate a workload on an accelerator")
    p.add_argument("--workload", required=True, help="built-in name (codesign workloads) or workload JSON")
    p.add_argument("--hw", required=True, help="preset name (codesign hw list) or accelerator YAML")
    p.add_argument("--schedule", help="schedule JSON (from codesign map); default: deterministic default schedule")
    p.add_argument("--json", metavar="OUT", help="write the SimResult JSON here")
    p.add_argument("--top", type=int, metavar="N", help="show only the N slowest ops")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("map", help="map a network onto an accelerator (tiling, loop order, dataflow, chunk)")
    p.add_argument("--model", required=True,
                   help="built-in workload, workload JSON, or package.module:factory returning an nn.Module")
    p.add_argument("--input-shape", type=_shape, metavar="N,C,H,W", help="example input shape for a module factory")
    p.add_argument("--hw", required=True, help="preset name or accelerator YAML")
    p.add_argument("--objective", choices=("edp", "latency", "energy"), default="edp")
    p.add_argument("--mode", choices=("latency", "throughput"), default="latency",
                   help="latency: one frame; throughput: frames pipelined across chunks")
    p.add_argument("--budget", type=float, default=10.0, metavar="SECONDS", help="search time budget (default 10)")
    p.add_argument("--co-search", action="store_true", help="also search PEs and buffers per chunk under the same totals")
    p.add_argument("--effort", choices=("full", "quick"), default="full",
                   help="per-op search effort; quick stops on evaluation caps, so results do not depend on load")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", type=Path, default=Path("schedule.json"), help="schedule JSON to write")
    p.add_argument("--top", type=int, metavar="N", help="show only the N slowest ops")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_map)

    rtl = sub.add_parser("rtl", help="RTL ground truth: cocotb tests, lint, Yosys area")
    rtl_sub = rtl.add_subparsers(dest="rtl_command", required=True, parser_class=_Parser)
    p = rtl_sub.add_parser("test", help="run the cocotb testbenches (timing asserted against hw_models)")
    p.add_argument("--sim", choices=("icarus", "verilator"), help="one simulator (default: both)")
    p.add_argument("-k", metavar="PATTERN", help="pytest -k expression selecting tests")
    p.add_argument("--waves", action="store_true", help="dump waveforms into the build directories")
    p.set_defaults(func=cmd_rtl)
    p = rtl_sub.add_parser("lint", help="verilator --lint-only -Wall on every top")
    p.set_defaults(func=cmd_rtl)
    p = rtl_sub.add_parser("area", help="synthesise PEs and arrays with Yosys, write the area data file")
    p.add_argument("--out", type=Path, help="JSON to write (default: hw_models/data/rtl_area.json)")
    p.set_defaults(func=cmd_rtl)

    from codesign.nas.cli import add_search_parser
    from codesign.report.cli import add_report_parser
    add_search_parser(sub)
    add_report_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CodesignError as err:
        print(f"codesign: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("codesign: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:                     # `codesign ... | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no second error at exit
        return 0
    except OSError as err:                      # unwritable --json path and the like
        print(f"codesign: error: {err.strerror or err}: {err.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
