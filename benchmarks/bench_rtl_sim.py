"""Simulated clock cycles per second of the PE-array RTL under cocotb (Icarus and Verilator).

A long stream of back-to-back output-stationary tiles (m = rows, n = cols, k = buffer depth, clear
and writeback on) on an 8x8 and a 16x16 MAC array; every tile's start->done cycle count is still
checked against hw_models' tile_cycles. Python wakes three times per tile, never per cycle, and
the rate counts only the tile stream (not the build or simulator start-up).

    .venv/bin/python benchmarks/bench_rtl_sim.py            # prints a Markdown table
    .venv/bin/python benchmarks/bench_rtl_sim.py --quick    # fewer tiles

Verilator models are built with -O2 here (the tests use -O1, which compiles twice as fast).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rtl" / "tests"))

from rtl_sim import HdlConfig, read_results, run_cocotb, simulator_missing  # noqa: E402

SIZES = ((8, 8), (16, 16))
TILES = {("icarus", 8): 40, ("icarus", 16): 12, ("verilator", 8): 5000, ("verilator", 16): 3000}


def bench(sim: str, rows: int, cols: int, tiles: int) -> dict:
    hdl = HdlConfig("mac", rows, cols, pipe=2, acc_w=32, depth=32)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        t0 = time.perf_counter()
        xml = run_cocotb(sim, hdl, ["throughput"], {"bench_tiles": tiles, "bench_out": str(out)},
                         opt="-O2", quiet=True)
        total = time.perf_counter() - t0
        failed = {k: v for k, v in read_results(xml).items() if v}
        if failed:
            raise RuntimeError(f"{sim} {rows}x{cols}: {failed}")
        res = json.loads(out.read_text())
    res["total_s"] = total
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tenth of the tiles")
    args = ap.parse_args()
    rows = []
    for sim in ("icarus", "verilator"):
        missing = simulator_missing(sim)
        for r, c in SIZES:
            if missing:
                rows.append(f"| {sim} | {r}x{c} | - | - | - | skipped: {missing} |")
                continue
            tiles = max(4, TILES[sim, r] // (10 if args.quick else 1))
            res = bench(sim, r, c, tiles)
            rate = res["cycles"] / res["wall_s"]
            rows.append(f"| {sim} | {r}x{c} | {res['tiles']} | {int(res['cycles'])} | "
                        f"{res['wall_s']:.2f} | {rate:,.0f} |")
            print(f"{sim} {r}x{c}: {rate:,.0f} cycles/s (build + run {res['total_s']:.1f} s)",
                  file=sys.stderr)
    print("| simulator | array | tiles | simulated cycles | wall s | cycles/s |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
