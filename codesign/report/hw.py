"""Accelerator side of the report: map + simulate on each accelerator, reference-GPU roofline
estimates, RTL area per chunk, and the Pareto front of a search."""
from __future__ import annotations

import importlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import hw_models
from hw_models.accelerator import Accelerator
from hw_models.cost import ENERGY_KEYS
from hw_models.errors import CodesignError, MappingError
from hw_models.simulator import SimResult, simulate
from hw_models.workload import OpNode, Workload

from codesign.report.devices import GpuSpec
from codesign.report.measure import quantity

#: MAC-family replacement used for the clearly labelled MAC-only variant of a network.
MAC_EQUIVALENT = {"adder_conv": "conv", "adder_linear": "linear", "shift_conv": "conv", "shift_linear": "linear"}
RTL_AREA_PATH = Path(hw_models.__file__).resolve().parent / "data" / "rtl_area.json"


def unsupported(wl: Workload, accel: Accelerator) -> list[OpNode]:
    return [op for op in wl.ops() if not accel.chunks_for(op.kind)]


def unsupported_line(wl: Workload, accel: Accelerator, bad: list[OpNode]) -> str:
    kinds = sorted({op.kind for op in bad})
    pes = ", ".join(sorted({c.pe_type for c in accel.chunks}))
    need = {"adder_conv": "adder", "adder_linear": "adder", "shift_conv": "shift or mac",
            "shift_linear": "shift or mac"}
    what = ", ".join(f"{sum(op.kind == k for op in bad)} {k} ({need.get(k, 'a chunk for ' + k)} PE needed)"
                     for k in kinds)
    return (f"{wl.name} cannot be mapped onto {accel.name}: its PE types are {pes}, and nothing there runs "
            f"{what}, e.g. {bad[0].name}.")


def mac_only_variant(wl: Workload, accel: Accelerator) -> Workload | None:
    """The network with unsupported shift/adder layers replaced by same-shape MAC layers, or None
    when that still would not map (no MAC chunk, or an unsupported non-GEMM op)."""
    bad = unsupported(wl, accel)
    if not bad or any(op.kind not in MAC_EQUIVALENT for op in bad):
        return None
    var = Workload(name=f"{wl.name} (MAC-only variant)",
                   description=f"{wl.name} with {len(bad)} layer(s) of kind "
                               f"{'/'.join(sorted({op.kind for op in bad}))} replaced by multiply layers "
                               "of the same shape (a different network)")
    bad_names = {op.name for op in bad}
    for op in wl.ops():
        new = replace(op, kind=MAC_EQUIVALENT[op.kind]) if op.name in bad_names else op
        var.add(new, wl.predecessors(op.name))
    return var if not unsupported(var, accel) else None


def _schedule(wl: Workload, accel: Accelerator, mapper: str, budget_s: float, objective: str) -> tuple[Any, str]:
    if mapper == "default":
        return None, "default deterministic schedule (hw_models.simulator.default_schedule), --mapper default"
    try:
        mod = importlib.import_module("codesign.mapper")
        map_workload = getattr(mod, "map_workload")
    except (ImportError, AttributeError) as exc:
        if mapper == "search":
            raise CodesignError(f"--mapper search needs codesign.mapper.map_workload ({exc})") from None
        return None, f"default deterministic schedule: codesign.mapper is not available ({exc})"
    sched = map_workload(wl, accel, objective=objective, budget_s=budget_s, mode="latency", co_search=False,
                         seed=0, progress=False)
    return sched, f"codesign.mapper.map_workload (objective {objective}, budget {budget_s:g} s, seed 0)"


def op_rows(result: SimResult, accel: Accelerator) -> list[dict]:
    rows = []
    for o in result.ops:
        dram = o.accesses.get("dram_read", 0.0) + o.accesses.get("dram_write", 0.0)
        rows.append({
            "name": o.name, "kind": o.kind, "chunk": o.chunk, "dataflow": o.dataflow, "bound": o.bound,
            "cycles": o.cycles, "stall_cycles": o.stall_cycles,
            "latency_us": o.cycles / accel.clock_mhz,
            "energy_nj": o.energy_total_pj / 1e3,
            "energy_by_component_nj": {k: o.energy_pj.get(k, 0.0) / 1e3 for k in ENERGY_KEYS},
            "macs": o.macs, "utilization": o.utilization,
            "dram_bytes": dram,
            "intensity_mac_per_byte": (o.macs / dram) if (o.macs and dram) else None,
            "achieved_gmacs": (o.macs / (o.cycles / (accel.clock_mhz * 1e6)) / 1e9) if (o.macs and o.cycles) else None,
        })
    return rows


def chunk_rows(accel: Accelerator, result: SimResult | None) -> list[dict]:
    out = []
    for c in accel.chunks:
        row = {"name": c.name, "pe_type": c.pe_type, "rows": c.rows, "cols": c.cols, "pes": c.pes,
               "act_bits": c.act_bits, "weight_bits": c.weight_bits,
               "peak_gmacs": c.pes * accel.clock_mhz * 1e6 / 1e9,
               "dram_bandwidth_gbs": accel.dram.bandwidth_gbs,
               "ridge_mac_per_byte": c.pes * accel.clock_mhz * 1e6 / (accel.dram.bandwidth_gbs * 1e9)}
        if result is not None:
            ops = [o for o in result.ops if o.chunk == c.name]
            row["ops"] = len(ops)
            row["energy_uj"] = result.energy_by_chunk_pj.get(c.name, 0.0) / 1e6
            row["energy_by_component_uj"] = {k: sum(o.energy_pj.get(k, 0.0) for o in ops) / 1e6 for k in ENERGY_KEYS}
            row["busy_cycles"] = sum(o.cycles for o in ops)
        out.append(row)
    return out


def run_accelerator(wl: Workload, accel: Accelerator, mapper: str, budget_s: float, objective: str,
                    variants: bool = True) -> dict:
    """Map + simulate; an unsupported network gives a one-line status (and a labelled MAC-only variant)."""
    entry: dict[str, Any] = {
        "name": accel.name, "description": accel.description.strip(), "clock_mhz": accel.clock_mhz,
        "tech_node_nm": accel.tech_node_nm, "energy_table": accel.energy_table,
        "dram_bandwidth_gbs": accel.dram.bandwidth_gbs, "global_buffer_kb": accel.global_buffer.size_kb,
    }
    bad = unsupported(wl, accel)
    network = wl
    if bad:
        entry["unsupported"] = unsupported_line(wl, accel, bad)
        var = mac_only_variant(wl, accel) if variants else None
        if var is None:
            entry["status"] = "unsupported"
            entry["chunks"] = chunk_rows(accel, None)
            return entry
        network = var
        entry["variant"] = var.name
        entry["variant_note"] = (f"Shown instead on {accel.name}: {var.description}. Its numbers are for that "
                                 "variant, labelled '(MAC-only variant)' everywhere.")
    try:
        sched, how = _schedule(network, accel, mapper, budget_s, objective)
        result = simulate(network, accel, sched)
    except MappingError as err:               # e.g. a layer whose smallest tile does not fit a buffer
        line = f"{network.name} could not be mapped onto {accel.name}: {err}"
        entry["unsupported"] = f"{entry['unsupported']} {line}" if bad else line
        entry["status"] = "unsupported"
        entry["chunks"] = chunk_rows(accel, None)
        entry.pop("variant_note", None)
        entry.pop("variant", None)
        return entry
    entry.update({
        "status": "variant" if bad else "ok",
        "label": f"{accel.name} (MAC-only variant)" if bad else accel.name,
        "network": network.name, "schedule": how,
        "cycles": result.cycles, "latency_ms": result.seconds * 1e3,
        "energy_mj": result.energy_total_pj / 1e9, "energy_uj": result.energy_total_pj / 1e6,
        "edp_uj_ms": result.energy_total_pj / 1e6 * result.seconds * 1e3,
        "utilization": result.utilization, "stall_cycles": result.stall_cycles, "macs": result.macs,
        "pipelined_frames_per_s": (accel.clock_mhz * 1e6 / result.throughput_interval_cycles
                                   if result.throughput_interval_cycles else None),
        "energy_by_level_uj": {k: v / 1e6 for k, v in result.energy_by_level_pj.items()},
        "energy_by_action_uj": {k: v / 1e6 for k, v in result.energy_by_action_pj.items()},
        "chunks": chunk_rows(accel, result),
        "ops": op_rows(result, accel),
    })
    attn = result.attention
    if attn is not None:                       # transformers: attention-only beside end-to-end
        entry["attention_only"] = {"cycles": attn["cycles"], "latency_ms": attn["cycles"] / accel.clock_mhz / 1e3,
                                   "energy_uj": attn["energy_pj"] / 1e6,
                                   "share_of_cycles": attn["cycles"] / result.cycles if result.cycles else 0.0}
    used = [k for k in ENERGY_KEYS if any(o["energy_by_component_nj"][k] for o in entry["ops"])]
    for o in entry["ops"]:                     # drop components that are zero everywhere (e.g. shift on a MAC array)
        o["energy_by_component_nj"] = {k: o["energy_by_component_nj"][k] for k in used}
    for c in entry["chunks"]:
        c["energy_by_component_uj"] = {k: c["energy_by_component_uj"][k] for k in used}
    return entry


# ---------------------------------------------------------------------------------------------
# Reference GPUs: roofline estimates from the IR


GPU_ASSUMPTIONS = ("roofline lower bound per layer: max(ops / peak rate, unique operand bytes / DRAM bandwidth), "
                   "summed over layers at batch 1; fp16 operands; conv/linear/matmul and shift layers at the dense "
                   "FP16 tensor-core rate (2 ops per MAC; a GPU has no shift datapath), adder layers at the FP32 "
                   "CUDA-core rate (3 ops per MAC: subtract, abs, add); no kernel-launch, occupancy or cache "
                   "effects; energy = TDP x time")


def gpu_estimate(wl: Workload, spec: GpuSpec) -> dict:
    total_s = 0.0
    for op in wl.ops():
        elems = sum(op.elements())
        mem_s = elems * 2 / (spec.mem_bandwidth_gbs * 1e9)
        comp_s = 0.0
        if op.is_gemm:
            if op.family == "adder":
                comp_s = 3 * op.macs / (spec.fp32_tflops * 1e12)
            else:
                comp_s = 2 * op.macs / (spec.fp16_tensor_tflops * 1e12)
        total_s += max(mem_s, comp_s)
    method = "estimate: roofline lower bound at batch 1 (assumptions and spec sources under Reference GPUs)"
    return {"key": spec.key, "name": spec.name, "label": f"{spec.name}, roofline bound (estimate)",
            "short": f"{spec.short}, roofline (estimate)",
            "latency_ms": quantity(total_s * 1e3, "ms", True, method),
            "energy_mj": quantity(spec.tdp_w * total_s * 1e3, "mJ", True,
                                  f"estimate: {spec.short} TDP {spec.tdp_w:g} W x roofline time"),
            "spec": spec.to_dict()}


# ---------------------------------------------------------------------------------------------
# RTL area


def _area_records(data: Any) -> list[dict]:
    if isinstance(data, list):
        return [r for r in data if isinstance(r, dict)]
    if isinstance(data, dict):
        for key in ("entries", "results", "designs", "records", "area", "data"):
            if isinstance(data.get(key), list):
                return [r for r in data[key] if isinstance(r, dict)]
        # {"mac": {...}, "adder": {...}} keyed by PE type
        out = []
        for k, v in data.items():
            if isinstance(v, dict) and any(isinstance(x, (int, float)) for x in v.values()):
                out.append({"pe_type": k, **v})
            elif isinstance(v, list):
                out.extend({"pe_type": k, **r} for r in v if isinstance(r, dict))
        return out
    return []


def _cells(rec: dict) -> float | None:
    for key in ("cells", "cell_count", "area_cells", "total_cells", "num_cells", "count"):
        v = rec.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
            return float(v)
    return None


def area_per_chunk(accels: list[Accelerator], path: Path | None = None) -> dict:
    """Cells per chunk from the RTL area data (yosys cell counts) when it exists."""
    path = Path(path) if path is not None else RTL_AREA_PATH
    if not path.is_file():
        return {"available": False, "reason": f"no RTL area data ({path.name} not present in hw_models/data)"}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return {"available": False, "reason": f"{path.name} is not readable JSON ({exc.__class__.__name__})"}
    records = [r for r in _area_records(data) if _cells(r) is not None]
    rows, missing = [], []
    for accel in accels:
        for c in accel.chunks:
            best, scale, basis = None, 1, ""
            for r in records:
                pe = r.get("pe_type", r.get("pe", r.get("type")))
                if pe != c.pe_type:
                    continue
                bits = r.get("bits", r.get("act_bits", r.get("width")))
                if bits is not None and bits not in (c.act_bits, c.weight_bits):
                    continue
                rr, cc = r.get("rows"), r.get("cols")
                if rr is None and isinstance(r.get("array"), (list, str)):
                    arr = r["array"]
                    arr = arr.lower().split("x") if isinstance(arr, str) else arr
                    try:
                        rr, cc = int(arr[0]), int(arr[1])
                    except (ValueError, IndexError, TypeError):
                        rr = cc = None
                if rr == c.rows and cc == c.cols:
                    best, scale, basis = r, 1, f"RTL array {rr}x{cc}"
                    break
                if rr is None and best is None:         # per-PE entry: scale by the PE count
                    best, scale, basis = r, c.pes, f"per-PE cells x {c.pes} PEs"
                elif rr and cc and best is None:
                    best, scale, basis = r, c.pes / (rr * cc), f"RTL array {rr}x{cc} scaled x{c.pes / (rr * cc):.3g} by PE count"
            if best is None:
                missing.append(f"{accel.name}/{c.name} ({c.pe_type} {c.rows}x{c.cols}, {c.act_bits}-bit)")
                continue
            rows.append({"accelerator": accel.name, "chunk": c.name, "pe_type": c.pe_type,
                         "array": f"{c.rows}x{c.cols}", "cells": int(round(_cells(best) * scale)), "basis": basis})
    if not rows:
        return {"available": False,
                "reason": f"{path.name} has no entry for any chunk ({'; '.join(missing) or 'no cell counts found'})"}
    return {"available": True, "source": f"hw_models/data/{path.name} (yosys cell counts)", "rows": rows,
            "missing": missing}


# ---------------------------------------------------------------------------------------------
# Search front


#: Known objective keys of codesign search fronts -> (display name, scale to the display unit).
_KNOWN = {"accuracy": ("accuracy", 1.0), "latency_s": ("latency (ms)", 1e3), "energy_pj": ("energy (uJ)", 1e-6),
          "latency_ms": ("latency (ms)", 1.0), "energy_uj": ("energy (uJ)", 1.0), "cycles": ("latency (cycles)", 1.0)}


def _find_number(rec: dict, exact: tuple[str, ...], patterns: tuple[str, ...]) -> tuple[str, float] | None:
    pools = [rec] + [rec[k] for k in ("objectives", "metrics", "result", "scores") if isinstance(rec.get(k), dict)]
    for pool in pools:
        for key in exact:
            v = pool.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                name, scale = _KNOWN.get(key, (key, 1.0))
                return name, float(v) * scale
    for pool in pools:
        for key, value in pool.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and any(p in key.lower() for p in patterns):
                return key, float(value)
    return None


def search_points(search_dir: str, chosen_index: int | None) -> dict:
    from codesign.report.resolve import load_front
    path, records = load_front(search_dir)
    points = []
    keys: dict[str, str] = {}
    for i, rec in enumerate(records):
        acc = _find_number(rec, ("accuracy", "val_accuracy"), ("acc",))
        lat = _find_number(rec, ("latency_s", "latency_ms", "cycles"), ("latency",))
        en = _find_number(rec, ("energy_pj", "energy_uj"), ("energy",))
        if not (acc and (lat or en)):
            continue
        keys.update({"accuracy": acc[0], **({"latency": lat[0]} if lat else {}), **({"energy": en[0]} if en else {})})
        chosen = i == chosen_index or bool(rec.get("chosen") or rec.get("selected"))
        points.append({"index": i, "trial": rec.get("trial") if isinstance(rec.get("trial"), int) else None,
                       "family": str(rec.get("family", "")), "accuracy": acc[1],
                       "latency": lat[1] if lat else None, "energy": en[1] if en else None, "chosen": chosen})
    if not points:
        raise CodesignError(f"{path}: no record has an accuracy and a latency or energy value")
    return {"dir": str(search_dir), "file": str(path), "keys": keys, "points": points,
            "chosen": [p["index"] for p in points if p["chosen"]]}
