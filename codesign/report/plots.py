"""The report's plots (matplotlib, PNG). Each function writes one file and returns its record
(file, title, caption, series labels), or returns None with nothing written when it has no data --
a report never contains an empty plot."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 72
COMPONENT_COLORS = {
    "mult": "#1f77b4", "shift": "#17becf", "add": "#2ca02c", "abs": "#bcbd22", "vector": "#9467bd",
    "rf": "#ff9896", "noc": "#c5b0d5", "local_buffer": "#ffbb78", "global_buffer": "#ff7f0e",
    "dram": "#d62728", "leakage": "#7f7f7f",
}
COMPONENT_LABELS = {
    "mult": "compute: mult", "shift": "compute: shift", "add": "compute: add", "abs": "compute: abs",
    "vector": "compute: vector unit", "rf": "memory: register file", "noc": "memory: NoC",
    "local_buffer": "memory: local buffer", "global_buffer": "memory: global buffer", "dram": "memory: DRAM",
    "leakage": "leakage",
}
KIND_MARKERS = {"conv": "o", "linear": "s", "matmul": "D", "sparse_matmul": "d", "shift_conv": "^",
                "shift_linear": "v", "adder_conv": "P", "adder_linear": "X"}


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=DPI, pil_kwargs={"optimize": True})
    plt.close(fig)


def _record(path: Path, title: str, caption: str, series: list[str]) -> dict:
    return {"file": path.name, "title": title, "caption": caption, "series": series}


def per_layer(entry: dict, path: Path) -> dict | None:
    ops = entry.get("ops") or []
    if not ops:
        return None
    n = len(ops)
    width = min(20.0, max(8.5, 4.5 + 0.09 * n))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(width, 6.4), sharex=True)
    x = np.arange(n)
    compute = np.array([max(o["cycles"] - o["stall_cycles"], 0.0) for o in ops]) / entry["clock_mhz"]
    stall = np.array([o["stall_cycles"] for o in ops]) / entry["clock_mhz"]
    ax1.bar(x, compute, color="#4c72b0", label="compute-bound time")
    ax1.bar(x, stall, bottom=compute, color="#dd8452", label="stall (memory) time")
    ax1.set_ylabel("latency (us)")
    label = entry["label"]
    ax1.set_title(f"Per-layer latency and energy: {entry['network']} on {entry['name']} (simulated)", fontsize=10)
    ax1.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    bottom = np.zeros(n)
    used = []
    for key, color in COMPONENT_COLORS.items():
        vals = np.array([o["energy_by_component_nj"].get(key, 0.0) for o in ops])
        if not vals.any():
            continue
        ax2.bar(x, vals, bottom=bottom, color=color, label=COMPONENT_LABELS[key])
        bottom += vals
        used.append(COMPONENT_LABELS[key])
    ax2.set_ylabel("energy (nJ)")
    ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    step = max(1, n // 60)
    ax2.set_xticks(x[::step])
    ax2.set_xticklabels([o["name"] for o in ops][::step], rotation=90, fontsize=6)
    fig.tight_layout()
    _save(fig, path)
    return _record(path, f"Per-layer latency and energy on {label}",
                   f"Simulated per-layer latency (compute vs memory stall) and energy stacked by memory level and "
                   f"action type, {entry['network']} on {label}, batch 1.",
                   ["compute-bound time", "stall (memory) time", *used])


def chunk_energy(entries: list[dict], path: Path) -> dict | None:
    bars = [(e["label"], c) for e in entries if e.get("chunks") and e.get("ops") for c in e["chunks"]
            if c.get("energy_uj")]
    if not bars:
        return None
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(bars) + 2.5), 4.4))
    x = np.arange(len(bars))
    bottom = np.zeros(len(bars))
    used = []
    for key, color in COMPONENT_COLORS.items():
        vals = np.array([c["energy_by_component_uj"].get(key, 0.0) for _, c in bars])
        if not vals.any():
            continue
        ax.bar(x, vals, bottom=bottom, color=color, label=COMPONENT_LABELS[key])
        bottom += vals
        used.append(COMPONENT_LABELS[key])
    ax.set_xticks(x)
    ax.set_xticklabels([f"{lab}\n{c['name']} ({c['pe_type']} {c['rows']}x{c['cols']})" for lab, c in bars],
                       fontsize=7, rotation=20, ha="right")
    ax.set_ylabel("energy per inference (uJ)")
    ax.set_title("Energy per chunk by memory level and action (simulated)", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    _save(fig, path)
    return _record(path, "Energy breakdown per chunk",
                   "Simulated energy per inference of each chunk, stacked by memory level and action type.", used)


def roofline(entry: dict, path: Path) -> dict | None:
    chunks = [c for c in entry.get("chunks", [])
              if any(o["chunk"] == c["name"] and o["intensity_mac_per_byte"] and o["achieved_gmacs"]
                     for o in entry.get("ops", []))]
    if not chunks:
        return None
    fig, axes = plt.subplots(1, len(chunks), figsize=(max(6.5, 4.2 * len(chunks) + 0.6), 3.9), squeeze=False)
    series = []
    for ax, c in zip(axes[0], chunks):
        ops = [o for o in entry["ops"] if o["chunk"] == c["name"] and o["intensity_mac_per_byte"] and o["achieved_gmacs"]]
        ai = np.array([o["intensity_mac_per_byte"] for o in ops])
        lo, hi = min(ai.min(), c["ridge_mac_per_byte"]) / 3, max(ai.max(), c["ridge_mac_per_byte"]) * 3
        xs = np.geomspace(lo, hi, 200)
        roof = np.minimum(c["peak_gmacs"], xs * c["dram_bandwidth_gbs"])
        ax.loglog(xs, roof, color="k", lw=1.5, label=f"roof: {c['peak_gmacs']:.4g} GMAC/s, {c['dram_bandwidth_gbs']:.4g} GB/s")
        for kind in sorted({o["kind"] for o in ops}):
            sel = [o for o in ops if o["kind"] == kind]
            ax.scatter([o["intensity_mac_per_byte"] for o in sel], [o["achieved_gmacs"] for o in sel],
                       marker=KIND_MARKERS.get(kind, "o"), s=22, label=f"{kind} layers ({len(sel)})", alpha=0.8)
            series.append(f"{c['name']}: {kind}")
        ax.set_xlabel("intensity (MAC per DRAM byte)")
        ax.set_ylabel("achieved GMAC/s")
        ax.set_title(f"{c['name']} ({c['pe_type']} {c['rows']}x{c['cols']})", fontsize=9)
        ax.legend(fontsize=6, loc="lower right")
        ax.grid(True, which="both", alpha=0.2)
    fig.suptitle(f"Roofline per chunk: {entry['network']} on {entry['name']} (simulated)", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return _record(path, f"Roofline per chunk on {entry['label']}",
                   f"Each GEMM layer placed on the roofline of the chunk it runs on ({entry['label']}): peak "
                   "= PEs x clock, slope = DRAM bandwidth. Vector ops (softmax, eltwise, pool) are not shown.",
                   series)


def comparison(rows: list[dict], baseline: dict | None, path: Path) -> dict | None:
    """Speedup and energy efficiency versus the CPU (or absolute numbers when there is no CPU run).

    ``rows``: label, latency_ms, energy_mj (floats), latency_estimate, energy_estimate (bools).
    """
    rows = [r for r in rows if r.get("latency_ms")]
    if not rows:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8.0, 1.3 * len(rows) + 4), 4.6))
    labels = [r["label"] for r in rows]
    x = np.arange(len(rows))
    series = []
    if baseline:
        lat = [baseline["latency_ms"] / r["latency_ms"] for r in rows]
        eff = [(baseline["energy_mj"] / r["energy_mj"]) if r.get("energy_mj") else 0.0 for r in rows]
        est_l = [r["latency_estimate"] for r in rows]
        est_e = [r["energy_estimate"] or baseline["energy_estimate"] for r in rows]
        t1 = f"Speedup vs {baseline['label']}"
        t2 = f"Energy efficiency vs {baseline['label']}" + (
            "\n(estimate: the CPU energy is TDP x time, so every ratio is an estimate)"
            if baseline["energy_estimate"] else "")
        y1, y2 = "speedup (x, log)", "inferences per joule, ratio (x, log)"
    else:
        lat = [r["latency_ms"] for r in rows]
        eff = [r.get("energy_mj") or 0.0 for r in rows]
        est_l = [r["latency_estimate"] for r in rows]
        est_e = [r["energy_estimate"] for r in rows]
        t1, t2 = "Latency per inference (batch 1)", "Energy per inference"
        y1, y2 = "latency (ms, log)", "energy (mJ, log)"
    for ax, vals, ests, title, ylab, energy in ((ax1, lat, est_l, t1, y1, False), (ax2, eff, est_e, t2, y2, True)):
        colors = ["#c44e52" if e else "#4c72b0" for e in ests]
        hatches = ["//" if e else "" for e in ests]
        for xi, v, col, h in zip(x, vals, colors, hatches):
            if v > 0:
                ax.bar(xi, v, color=col, hatch=h, edgecolor="white")
                ax.text(xi, v, f"{v:.3g}", ha="center", va="bottom", fontsize=7)
        ax.set_yscale("log")
        ax.set_xticks(x)
        ticks = []
        for r, e in zip(rows, ests):
            lab = r["label"]
            own = r["energy_estimate"] if energy else r["latency_estimate"]
            if e and "(estimate)" not in lab:
                lab += "\n(estimate)" if own else "\n(ratio: estimate)"
            ticks.append(lab)
        ax.set_xticklabels(ticks, rotation=25, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(ylab)
        if baseline:
            ax.axhline(1.0, color="k", lw=0.8)
    from matplotlib.patches import Patch
    ax1.legend(handles=[Patch(color="#4c72b0", label="measured / simulated"),
                        Patch(facecolor="#c44e52", hatch="//", edgecolor="white", label="estimate")], fontsize=7)
    for lab, el, ee in zip(labels, est_l, est_e):
        series.append(lab + (" (estimate)" if (el or ee) and "(estimate)" not in lab else ""))
    fig.tight_layout()
    _save(fig, path)
    cap = ("Speedup (batch-1 latency ratio) and energy efficiency (inferences per joule ratio) of each target "
           f"versus {baseline['label']}. " if baseline else
           "Absolute batch-1 latency and energy per inference (no CPU/GPU baseline could be run). ")
    cap += "Hatched red bars are estimates."
    return _record(path, "Speedup and energy efficiency" if baseline else "Latency and energy per inference", cap, series)


def pareto(search: dict, path: Path) -> dict | None:
    pts = search.get("points") or []
    axes_keys = [k for k in ("latency", "energy") if any(p.get(k) is not None for p in pts)]
    if not pts or not axes_keys:
        return None
    fig, axes = plt.subplots(1, len(axes_keys), figsize=(4.6 * len(axes_keys) + 0.5, 4.0), squeeze=False)
    for ax, key in zip(axes[0], axes_keys):
        sel = [p for p in pts if p.get(key) is not None]
        ax.scatter([p[key] for p in sel if not p["chosen"]], [p["accuracy"] for p in sel if not p["chosen"]],
                   color="#4c72b0", s=24, label="front point")
        ch = [p for p in sel if p["chosen"]]
        if ch:
            ax.scatter([p[key] for p in ch], [p["accuracy"] for p in ch], marker="*", color="#c44e52", s=160,
                       label="chosen", zorder=3)
            for p in ch:
                tag = f"trial {p['trial']}" if p.get("trial") is not None else f"@{p['index']}"
                ax.annotate(tag, (p[key], p["accuracy"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
        ax.set_xlabel(search["keys"].get(key, key))
        ax.set_ylabel(search["keys"].get("accuracy", "accuracy"))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Pareto front of search {Path(search['dir']).name}", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return _record(path, "Pareto front of the search",
                   f"Front of {search['file']}; chosen points (the reported network, or flagged chosen by the search) "
                   "are starred.", ["front point"] + (["chosen"] if search.get("chosen") else []))


def area(area_data: dict, path: Path) -> dict | None:
    rows = area_data.get("rows") or []
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(max(5.5, 1.0 * len(rows) + 2.5), 3.8))
    x = np.arange(len(rows))
    ax.bar(x, [r["cells"] for r in rows], color="#55a868")
    for xi, r in zip(x, rows):
        ax.text(xi, r["cells"], f"{r['cells']:.4g}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{r['accelerator']}\n{r['chunk']} ({r['pe_type']} {r['array']})" for r in rows],
                       rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("standard cells (yosys)")
    ax.set_title("Area per chunk from RTL synthesis", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return _record(path, "Area per chunk", f"Cell counts per chunk from {area_data['source']}.", ["cells"])


def make_all(data: dict[str, Any], out: Path) -> tuple[list[dict], list[str]]:
    """Write every plot the data supports; return (plot records, one line per plot left out and why)."""
    plots, omitted = [], []
    ok = [e for e in data["accelerators"] if e.get("ops")]
    for i, e in enumerate(data["accelerators"]):
        if not e.get("ops"):
            omitted.append(f"per-layer and roofline plots for {e['name']}: nothing was simulated there "
                           f"({e.get('unsupported', 'no result')})")
            continue
        slug = "".join(ch if ch.isalnum() else "-" for ch in e["name"])
        rec = per_layer(e, out / f"layers_{i}_{slug}.png")
        plots.append(rec) if rec else omitted.append(f"per-layer plot for {e['label']}: no layers")
        rec = roofline(e, out / f"roofline_{i}_{slug}.png")
        plots.append(rec) if rec else omitted.append(f"roofline for {e['label']}: no GEMM layer moves DRAM data")
    rec = chunk_energy(ok, out / "chunk_energy.png")
    plots.append(rec) if rec else omitted.append("energy per chunk: no accelerator result")
    rec = comparison(data["comparison"]["rows"], data["comparison"]["baseline"], out / "comparison.png")
    plots.append(rec) if rec else omitted.append("speedup / efficiency: nothing to compare")
    if data.get("search"):
        rec = pareto(data["search"], out / "pareto.png")
        plots.append(rec) if rec else omitted.append("Pareto front: the front has no plottable points")
    if data["area"].get("available"):
        rec = area(data["area"], out / "area.png")
        plots.append(rec) if rec else omitted.append("area per chunk: no rows")
    else:
        omitted.append(f"area per chunk: {data['area']['reason']}")
    return plots, omitted
