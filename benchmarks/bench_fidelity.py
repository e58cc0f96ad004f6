"""Fidelity: the eyeriss-like preset on Timeloop's Eyeriss-like reference layer, side by side with
Timeloop's published result (shared/REFERENCE-NUMBERS.md: timeloop-accelergy-exercises,
example_designs/eyeriss_like, default problem, 65 nm).

    .venv/bin/python benchmarks/bench_fidelity.py
"""
from __future__ import annotations

from hw_models.accelerator import load_accelerator
from hw_models.simulator import simulate
from hw_models.workload import ConvShape, OpNode, Workload

# Timeloop's published numbers (fJ per MAC), from REFERENCE-NUMBERS.md
TIMELOOP = {"cycles": 86016, "utilization": 0.75, "energy_uj": 59.28, "fj_per_mac": 5469.65,
            "dram": 3380.86, "spads (RF)": 1006.69 + 386.77 + 112.37, "global buffer": 375.27, "MAC": 207.69}


def reference_layer() -> Workload:
    wl = Workload("timeloop-eyeriss-ref", description="3x3/2 conv, C=3, M=32, 224x224 pad 1, batch 1")
    wl.add(OpNode("conv", "conv", ConvShape(n=1, c=3, h=224, w=224, m=32, kh=3, kw=3, stride=2, padding=1),
                  act_bits=8, weight_bits=8, out_bits=8))
    return wl


def main() -> None:
    wl = reference_layer()
    acc = load_accelerator("eyeriss-like")
    results = {"default schedule": simulate(wl, acc)}
    try:                                 # the mapper, when present, searches the tiling
        from codesign.mapper import map_workload
        results["mapped (edp)"] = simulate(wl, acc, map_workload(wl, acc, objective="edp", budget_s=10, progress=False))
    except ImportError:
        pass
    macs = wl.macs
    assert macs == 10_838_016
    print(f"layer: {wl.description}; MACs {macs:,}\n")
    header = "| quantity | Timeloop (published) | " + " | ".join(results) + " |"
    print(header)
    print("|---" * (2 + len(results)) + "|")
    rows = [("cycles", TIMELOOP["cycles"], lambda r: f"{r.cycles:,.0f}"),
            ("utilization", TIMELOOP["utilization"], lambda r: f"{r.utilization:.2f}"),
            ("energy (uJ)", TIMELOOP["energy_uj"], lambda r: f"{r.energy_total_pj / 1e6:.2f}"),
            ("energy per MAC (fJ)", TIMELOOP["fj_per_mac"], lambda r: f"{r.energy_total_pj * 1e3 / macs:.1f}")]
    levels = [("DRAM", "dram", ("dram",)), ("global buffer", "global buffer", ("global_buffer",)),
              ("PE register files / spads", "spads (RF)", ("rf",)), ("array NoC", None, ("noc",)),
              ("MAC (mult + add)", "MAC", ("compute",)), ("leakage", None, ("leakage",))]
    for label, key, parts in levels:
        ref = TIMELOOP[key] if key else "not itemised"
        rows.append((f"  {label} (fJ/MAC)", ref,
                     lambda r, parts=parts: f"{sum(r.energy_by_level_pj[p] for p in parts) * 1e3 / macs:.1f}"))
    for label, ref, fn in rows:
        ref_s = f"{ref:,}" if isinstance(ref, (int, float)) else ref
        print(f"| {label} | {ref_s} | " + " | ".join(fn(r) for r in results.values()) + " |")


if __name__ == "__main__":
    main()
