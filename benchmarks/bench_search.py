"""Search benchmark: a Pareto search on the CIFAR-10 subset, the best all-conv network vs the hybrids on the front.

    .venv/bin/python benchmarks/bench_search.py --data-dir ../shared/data --out runs/bench-cifar10

Runs ``codesign search`` (strategy ``sample``: NSGA-II over the NASA space, the all-conv networks
``conv_k3_e6`` and ``conv_k3_e3`` evaluated first as references) within ``--minutes`` of wall time,
then prints a Markdown table of the best all-conv network and every hybrid (shift/adder-using)
network on the front: validation and test accuracy, modelled latency, energy and EDP on the
accelerator, and the ratios to the all-conv reference. The same table goes to OUT/bench.md. An
interrupted benchmark continues with ``--resume``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codesign.nas.pareto import SearchConfig, run_search  # noqa: E402


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _row(p: dict, ref: dict | None, label: str) -> str:
    c = p["arch"].get("counts", {})
    lat, en = p["latency_s"], p["energy_pj"]
    edp = lat * en * 1e-3                    # pJ*s -> uJ*ms (1e-6 uJ/pJ x 1e3 ms/s)
    ratio = ""
    if ref is not None and p is not ref:
        ratio = (f"{lat / ref['latency_s']:.2f}x / {en / ref['energy_pj']:.2f}x / "
                 f"{(lat * en) / (ref['latency_s'] * ref['energy_pj']):.2f}x")
    test = f"{100 * p['test_accuracy']:.2f}" if p.get("test_accuracy") is not None else "-"
    return (f"| {label} | {p['trial']} | {c.get('conv', 0)}/{c.get('shift', 0)}/{c.get('adder', 0)}/{c.get('skip', 0)} "
            f"| {100 * p['accuracy']:.2f} | {test} | {1e3 * lat:.4f} | {1e-6 * en:.2f} | {edp:.4g} | {ratio} |")


def table(outcome) -> str:
    ref = outcome.reference
    lines = ["| network | trial | conv/shift/adder/skip blocks | val acc % | test acc % | latency ms | energy uJ "
             "| EDP uJ*ms | latency / energy / EDP vs all-conv |",
             "|---|---|---|---|---|---|---|---|---|"]
    if ref is not None:
        lines.append(_row(ref, ref, "best all-conv" + (" (on front)" if any(p["trial"] == ref["trial"] for p in outcome.front) else "")))
    hybrids = [p for p in outcome.front if p.get("family") not in ("conv", None)]
    for p in hybrids:
        lines.append(_row(p, ref, f"front: {p['family']}"))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("CODESIGN_DATA_DIR", "../shared/data"))
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--out", default="runs/bench-cifar10")
    ap.add_argument("--minutes", type=float, default=27.0, help="start no trial after this (default 27)")
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--width-mult", type=float, default=0.25)
    ap.add_argument("--depth-mult", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--hw", default="nasa-chunked")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--progress", action="store_true")
    a = ap.parse_args(argv)
    cfg = SearchConfig(out=a.out, dataset=a.dataset, data_dir=a.data_dir, hw=a.hw, trials=a.trials, epochs=a.epochs,
                       width_mult=a.width_mult, depth_mult=a.depth_mult, batch_size=a.batch_size, lr=a.lr,
                       threads=a.threads, workers=a.workers, seed=a.seed, resume=a.resume, max_minutes=a.minutes,
                       baselines=("conv_k3_e6", "conv_k3_e3"), progress=a.progress)
    t0 = time.time()
    load0 = os.getloadavg()[0]
    outcome = run_search(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    wall = time.time() - t0
    load1 = os.getloadavg()[0]
    cmd = ".venv/bin/python benchmarks/bench_search.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    head = [f"Command: `{cmd}`",
            f"Machine: {_cpu()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch threads "
            f"{cfg.threads}, load average {load0:.1f} at start / {load1:.1f} at end",
            f"Search: {cfg.dataset} ({a.data_dir}), space nasa w{cfg.width_mult:g} d{cfg.depth_mult:g}, hw {cfg.hw}, "
            f"{outcome.complete} complete trials ({outcome.failed} failed) of {cfg.trials}, {cfg.epochs} epochs each, "
            f"wall time {wall / 60:.1f} min; accuracy: validation split (search objective) and test split; "
            f"latency/energy: lowered, mapped and simulated, batch 1",
            f"Front: {len(outcome.front)} networks (trials {', '.join(str(p['trial']) for p in outcome.front)})", ""]
    md = "\n".join(head) + table(outcome) + "\n"
    (Path(cfg.out_dir) / "bench.md").write_text(md)
    (Path(cfg.out_dir) / "bench.json").write_text(json.dumps({"wall_s": wall, "front": outcome.front,
                                                              "reference": outcome.reference}, indent=1))
    print(md)
    print("\nall networks on the front:\n" + outcome.table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
