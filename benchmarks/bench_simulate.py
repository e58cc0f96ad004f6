"""Issue-2 benchmarks: simulate time per built-in network, tile model vs per-cycle stepper speed.

    .venv/bin/python benchmarks/bench_simulate.py
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from hw_models.accelerator import load_accelerator
from hw_models.engines.pe_array import ArrayGeometry, PEArrayStepper, tile_cycles
from hw_models.errors import MappingError
from hw_models.simulator import simulate
from hw_models.zoo import builtin_names, get_builtin


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_networks(repeat: int) -> None:
    print("| workload | accelerator | ops | simulate time (s, best of %d) | cycles | energy (uJ) |" % repeat)
    print("|---|---|---|---|---|---|")
    for hw in ("eyeriss-like", "nasa-chunked", "tpu-like"):
        acc = load_accelerator(hw)
        for name in builtin_names():
            wl = get_builtin(name)
            try:
                result = simulate(wl, acc)
            except MappingError as err:
                print(f"| {name} | {hw} | {len(wl)} | not runnable: {err} | | |")
                continue
            # a fresh workload object each time so no per-op cache of an earlier run is reused
            from hw_models import cost
            def run():
                cost._block_model.cache_clear()
                simulate(get_builtin(name), acc)
            t = best_of(run, repeat)
            print(f"| {name} | {hw} | {len(wl)} | {t:.4f} | {result.cycles:,.0f} | {result.energy_total_pj / 1e6:.1f} |")


def bench_tile_model(repeat: int) -> None:
    geom = ArrayGeometry(32, 32, 2)
    rng = np.random.default_rng(0)
    print("\n| dataflow | tile (m x n, K) | stepper (s) | tile_cycles (s) | speed-up | cycles |")
    print("|---|---|---|---|---|---|")
    for df, (m, k) in (("os", (32, 256)), ("ws", (256, 32))):
        aa = rng.integers(-128, 128, (m, k))
        ww = rng.integers(-128, 128, (k, 32))
        stepper = PEArrayStepper(geom, "mac")
        t_step = best_of(lambda: stepper.run(df, aa, ww), 3)
        n = 20000
        t_fn = best_of(lambda: [tile_cycles(geom, df, m, 32, k) for _ in range(n)], repeat) / n
        cyc = tile_cycles(geom, df, m, 32, k)
        assert stepper.run(df, aa, ww).cycles == cyc
        print(f"| {df} | {m}x32, K={k} | {t_step:.3f} | {t_fn * 1e6:.2f} us | {t_step / t_fn:,.0f}x | {cyc} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    bench_networks(args.repeat)
    bench_tile_model(args.repeat)


if __name__ == "__main__":
    main()
