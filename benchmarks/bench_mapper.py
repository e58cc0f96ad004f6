"""Benchmark the auto-mapper: evaluator speed, whole-network mapping time and quality, and the
distance to the exhaustive optimum on layers whose mapping grid can be enumerated.

    .venv/bin/python benchmarks/bench_mapper.py            # full run (a few minutes)
    .venv/bin/python benchmarks/bench_mapper.py --quick    # smaller exhaustive layers, fewer repeats

Prints Markdown tables. Times are wall-clock (``time.perf_counter``) and, for the evaluator, also
CPU time of this process (``time.process_time``), which is less sensitive to other load on the
machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from codesign.mapper import map_workload_detailed  # noqa: E402
from codesign.mapper.search import FULL, _unique_rows, score_raw  # noqa: E402
from codesign.mapper.space import GemmSpace  # noqa: E402
from codesign.mapper.vectorised import GemmContext  # noqa: E402
from hw_models.accelerator import load_accelerator  # noqa: E402
from hw_models.cost import op_cost  # noqa: E402
from hw_models.errors import MappingError  # noqa: E402
from hw_models.schedule import LOOP_ORDERS, OpMapping  # noqa: E402
from hw_models.simulator import default_mapping, default_schedule, simulate  # noqa: E402
from hw_models.workload import Workload  # noqa: E402
from hw_models.zoo import get_builtin  # noqa: E402

EVAL_CASES = [("resnet18", "layer2.0.conv1", "eyeriss-like"), ("resnet20-hybrid", "layer2.1.conv1", "nasa-chunked"),
              ("deit-tiny", "block0.attn.qk", "tpu-like"), ("mobilenetv2-cifar", "block5.dw", "eyeriss-like")]
MAP_CASES = [("resnet18", "eyeriss-like", "latency"), ("resnet20-hybrid", "nasa-chunked", "latency"),
             ("resnet20-hybrid", "nasa-chunked", "throughput"), ("mobilenetv2-cifar", "eyeriss-like", "latency"),
             ("deit-tiny", "tpu-like", "latency"), ("deit-small", "nasa-chunked", "latency")]


def table(headers, rows) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def valid_grid_sample(space: GemmSpace, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    raw = space.decode(space.random_indices(rng, n * 4))
    ctx = space.ctx
    keep = np.zeros(raw["pb"].shape, bool)
    for code, df in enumerate(("os", "ws")):
        sel = raw["df"] == code
        keep[sel] = ctx.valid(df, *(raw[k][sel] for k in ("pb", "kb", "mb", "am", "an", "ak")))
    return {k: v[keep][:n] for k, v in raw.items()}


def bench_evaluator(repeats: int) -> str:
    rows = []
    rng = np.random.default_rng(0)
    for wl_name, op_name, acc_name in EVAL_CASES:
        wl, acc = get_builtin(wl_name), load_accelerator(acc_name)
        op = wl.op(op_name)
        chunk = acc.chunks_for(op.kind)[0]
        ctx = GemmContext.build(op, chunk, acc)
        space = GemmSpace(ctx)
        raw = valid_grid_sample(space, 8192, rng)
        n = raw["pb"].size
        # vectorised: one dataflow per call, as the search does
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(repeats):
            score_raw(ctx, raw)
        wall, cpu = (time.perf_counter() - t0) / repeats, (time.process_time() - c0) / repeats
        # op_cost on a subset of the same candidates (the scalar reference)
        sub = np.arange(min(n, 150))
        t1 = time.perf_counter()
        for i in sub:
            mp = OpMapping(op.name, chunk.name, ("os", "ws")[int(raw["df"][i])],
                           (int(raw["pb"][i]), int(raw["kb"][i]), int(raw["mb"][i])),
                           (int(raw["am"][i]), int(raw["an"][i]), int(raw["ak"][i])), LOOP_ORDERS[int(raw["order"][i])])
            op_cost(op, acc, mp)
        ref = (time.perf_counter() - t1) / sub.size
        rows.append([f"{wl_name}/{op_name}", acc_name, str(op.gemm), n, f"{n / wall:,.0f}", f"{n / cpu:,.0f}",
                     f"{1 / ref:,.0f}", f"{ref * n / wall:,.0f}x"])
    return table(["op", "accelerator", "GEMM (G,P,K,M)", "batch", "vectorised cand/s (wall)",
                  "vectorised cand/s (CPU)", "op_cost cand/s", "speed-up"], rows)


def bench_mapping(budget: float, seed: int) -> str:
    rows = []
    for wl_name, acc_name, mode in MAP_CASES:
        wl, acc = get_builtin(wl_name), load_accelerator(acc_name)
        t0, c0 = time.perf_counter(), time.process_time()
        res = map_workload_detailed(wl, acc, objective="edp", budget_s=budget, mode=mode, seed=seed, progress=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        ours = simulate(wl, acc, res.schedule)
        base = simulate(wl, acc, default_schedule(wl, acc))
        d_ours = ours.cycles if mode == "latency" else ours.throughput_interval_cycles
        d_base = base.cycles if mode == "latency" else base.throughput_interval_cycles
        st = res.stats
        rows.append([wl_name, acc_name, mode, len(wl), f"{wall:.2f}", f"{cpu:.2f}", f"{st.evaluated:,}",
                     f"{st.evaluated / max(st.search_seconds, 1e-9):,.0f}", f"{st.searches} ({st.exhaustive})",
                     f"{d_ours / d_base:.3f}", f"{ours.energy_total_pj / base.energy_total_pj:.3f}",
                     f"{(d_ours * ours.energy_total_pj) / (d_base * base.energy_total_pj):.3f}"])
    return table(["workload", "accelerator", "mode", "ops", "map time s (wall)", "CPU s", "candidates scored",
                  "cand/s in search", "searches (exhaustive)", "latency vs default", "energy vs default",
                  "EDP vs default"], rows)


def feasible_layers(limit: int, count: int) -> list[tuple[str, str, object]]:
    """Distinct GEMM layers whose grid is too big for the mapper's exhaustive mode but <= limit."""
    out, seen = [], set()
    for wl_name, acc_name in (("resnet20-hybrid", "nasa-chunked"), ("mobilenetv2-cifar", "eyeriss-like"),
                              ("resnet18", "eyeriss-like"), ("deit-tiny", "tpu-like"), ("mobilenetv2-cifar", "nasa-chunked"),
                              ("resnet20-conv", "eyeriss-like")):
        wl, acc = get_builtin(wl_name), load_accelerator(acc_name)
        for op in wl.ops():
            if not op.is_gemm or (op.kind, op.shape, acc_name) in seen:
                continue
            chunk = acc.chunks_for(op.kind)[0]
            size = GemmSpace(GemmContext.build(op, chunk, acc)).size
            if FULL.exhaustive_limit < size <= limit:
                seen.add((op.kind, op.shape, acc_name))
                out.append((wl_name, acc_name, op))
    # spread over workloads: round-robin
    picked, by_wl = [], {}
    for item in out:
        by_wl.setdefault((item[0], item[1]), []).append(item)
    while len(picked) < count and any(by_wl.values()):
        for key in list(by_wl):
            if by_wl[key] and len(picked) < count:
                picked.append(by_wl[key].pop(0))
    return picked


#: Larger layers (all three GEMM dims tiled; grids of 10-25 M points) for the full run.
HARD_LAYERS = [("deit-tiny", "block0.attn.qk", "tpu-like"), ("deit-tiny", "block0.attn.proj", "tpu-like"),
               ("resnet20-hybrid", "layer3.0.downsample", "nasa-chunked"),
               ("resnet20-hybrid", "layer3.0.conv1", "nasa-chunked"), ("mobilenetv2-cifar", "block6.project", "eyeriss-like")]


def exhaustive_edp(op, acc) -> tuple[float, int, float]:
    """min over the whole grid (all chunks) of cycles x energy, the grid size, and seconds."""
    best, total, t0 = np.inf, 0, time.perf_counter()
    for chunk in acc.chunks_for(op.kind):
        ctx = GemmContext.build(op, chunk, acc)
        space = GemmSpace(ctx)
        total += space.size
        radices = (2, ctx.P + 1, ctx.K + 1, ctx.M + 1, ctx.P + 1, ctx.M + 1, ctx.K + 1, len(LOOP_ORDERS))
        for start in range(0, space.size, 200_000):
            flat = np.arange(start, min(space.size, start + 200_000))
            raw = space.decode(np.stack(np.unravel_index(flat, space.shape), axis=1))
            first = _unique_rows(raw, radices)              # grid points that decode to the same mapping
            _, cyc, en = score_raw(ctx, {k: v[first] for k, v in raw.items()})
            best = min(best, float(np.min(cyc * en)))
    return best, total, time.perf_counter() - t0


def bench_optimality(layers: list, seed: int) -> str:
    rows = []
    for wl_name, acc_name, op in layers:
        acc = load_accelerator(acc_name)
        opt, size, secs = exhaustive_edp(op, acc)
        try:
            dflt = op_cost(op, acc, default_mapping(op, acc))
            opt = min(opt, dflt.cycles * dflt.total_energy_pj)     # the default is a candidate too
        except MappingError:
            pass
        one = Workload(f"{wl_name}:{op.name}")
        one.add(op)
        t0 = time.perf_counter()
        res = map_workload_detailed(one, acc, objective="edp", budget_s=10.0, seed=seed, progress=False)
        t_map = time.perf_counter() - t0
        mp = res.schedule[op.name]
        got = mp.predicted_cycles * mp.predicted_energy_pj
        rows.append([f"{wl_name}/{op.name}", acc_name, op.kind, str(op.gemm), f"{size:,}", f"{secs:.1f}",
                     f"{res.stats.evaluated:,}", f"{t_map:.2f}", f"{got / opt:.5f}"])
    return table(["layer", "accelerator", "kind", "GEMM (G,P,K,M)", "grid size (exhaustive)", "exhaustive s",
                  "mapper candidates", "mapper s", "mapper EDP / optimum"], rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller exhaustive layers and fewer repeats")
    ap.add_argument("--budget", type=float, default=10.0, help="mapping budget per workload in seconds (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=None, help="number of exhaustively checked layers")
    ap.add_argument("--limit", type=int, default=None, help="largest grid enumerated exhaustively")
    ap.add_argument("--no-hard", action="store_true", help="skip the larger layers (10-25 M grid points each)")
    ap.add_argument("--only", choices=("evaluator", "mapping", "optimality"), help="run one section only")
    args = ap.parse_args(argv)
    limit = args.limit or (1_500_000 if args.quick else 6_000_000)
    layers = args.layers or (4 if args.quick else 6)
    print(f"# Mapper benchmark\n\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}, numpy {np.__version__}; load average at start "
          f"{os.getloadavg()[0]:.1f}\n")
    want = (lambda section: args.only in (None, section))
    if want("evaluator"):
        print("## Vectorised evaluator (exact closed form of op_cost) vs op_cost\n")
        print(bench_evaluator(2 if args.quick else 5))
    if want("mapping"):
        print(f"\n## Whole-network mapping (objective EDP, budget {args.budget:g} s, full effort)\n")
        print(bench_mapping(args.budget, args.seed))
    if want("optimality"):
        print(f"\n## Mapper vs exhaustive optimum (layers with {FULL.exhaustive_limit:,} < grid <= {limit:,}; "
              "single-layer workload, objective EDP)\n")
        print(bench_optimality(feasible_layers(limit, layers), args.seed))
    if want("optimality") and not (args.quick or args.no_hard):
        print("\n## Mapper vs exhaustive optimum on larger layers (every GEMM dim tiled)\n")
        hard = [(w, a, get_builtin(w).op(o)) for w, o, a in HARD_LAYERS]
        print(bench_optimality(hard, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
