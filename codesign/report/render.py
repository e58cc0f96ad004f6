"""Render report data into one document model, then into HTML (offline, no scripts, images
alongside) and Markdown. Both renderings come from the same blocks, so they show the same numbers;
every number of data.json is printed with :func:`fmt`, and every estimate carries "(estimate)"."""
from __future__ import annotations

import html as _html
from dataclasses import dataclass
from typing import Any

EST = "(estimate)"


def fmt(x: Any) -> str:
    """The one number format of the report (data.json holds floats rounded to 4 significant digits)."""
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return "0" if x == 0 else f"{x:.4g}"
    return str(x)


def is_quantity(v: Any) -> bool:
    return isinstance(v, dict) and "value" in v and "estimate" in v


@dataclass
class Est:
    """A cell holding an estimate: rendered as '<value> (estimate)'."""
    value: Any


def q(v: Any) -> Any:
    """A quantity dict -> its cell (an Est when it is an estimate); anything else unchanged."""
    if is_quantity(v):
        return Est(v["value"]) if v["estimate"] else v["value"]
    return v


def shape_str(shape: list[int]) -> str:
    return "x".join(str(s) for s in shape)


# ---------------------------------------------------------------------------------------------
# document model: ("h", level, text) ("p", text) ("code", text) ("list", [cells]) ("table", headers, rows)
# ("img", file, title, caption) ("details", summary, [blocks]) ("alert", text)


def _blocks(d: dict) -> list[tuple]:
    B: list[tuple] = []
    B.append(("h", 1, f"codesign report: {d['title']}"))
    B.append(("p", f"Generated {d['generated_utc']} by codesign report."))
    if d.get("command"):
        B.append(("code", d["command"]))

    # -- alerts: unsupported accelerators, estimates, skipped measurements -------------------
    alerts = [e["unsupported"] for e in d["accelerators"] if e.get("unsupported")]
    alerts += [e["variant_note"] for e in d["accelerators"] if e.get("variant_note")]
    if d.get("cpu_skipped"):
        alerts.append(f"No CPU/GPU measurement: {d['cpu_skipped']}.")
    for a in alerts:
        B.append(("alert", a))
    if d.get("notes"):
        B.append(("h", 2, "Notes"))
        B.append(("list", list(d["notes"])))

    # -- summary -------------------------------------------------------------------------
    comp = d["comparison"]
    B.append(("h", 2, "Summary"))
    if comp["baseline"]:
        B.append(("p", "Batch-1 latency and energy per inference of every target; speedup and energy efficiency "
                       "(inferences per joule) are relative to this machine's CPU at batch 1. Values marked "
                       f"{EST} are estimates, not measurements or simulations."))
    else:
        B.append(("p", "Batch-1 latency and energy per inference of every target (no CPU baseline: see above). "
                       f"Values marked {EST} are estimates."))
    headers = ["target", "how obtained", "latency, batch 1 (ms)", "energy per inference (mJ)"]
    if comp["baseline"]:
        headers += ["speedup vs CPU (x)", "energy efficiency vs CPU (x)"]
    rows = []
    for r in comp["rows"]:
        row = [r["label"], r["kind"], q(r["latency_ms"]), q(r.get("energy_mj"))]
        if comp["baseline"]:
            row += [q(r.get("speedup_vs_cpu")), q(r.get("efficiency_vs_cpu"))]
        rows.append(row)
    B.append(("table", headers, rows))
    if comp["baseline"]:
        bl = comp["baseline"]
        B.append(("p", f"Baseline: {bl['label']}, latency {fmt(bl['latency_ms'])} ms, energy "
                       f"{fmt(bl['energy_mj'])}{' ' + EST if bl['energy_estimate'] else ''} mJ per inference."))
    methods = sorted({v["method"] for r in comp["rows"] for v in r.values() if is_quantity(v) and v["estimate"]})
    if methods:
        B.append(("p", "How the estimates were made:"))
        B.append(("list", methods))
    for p in _plots(d, "comparison.png"):
        B.append(p)

    # -- network --------------------------------------------------------------------------
    m = d["model"]
    B.append(("h", 2, "Network"))
    rows = [["model argument", m["spec"]], ["form", m["form"]], ["name", m["name"]],
            ["description", m["description"] or "-"], ["input shape (NCHW)", shape_str(m["input_shape"])],
            ["operators in the IR", m["ops"]], ["GEMM operators", m["gemm_ops"]], ["MACs per inference", m["macs"]],
            ["operator kinds", ", ".join(m["kinds"])]]
    if "parameters" in m:
        rows.append(["PyTorch parameters", m["parameters"]])
    B.append(("table", ["field", "value"], rows))

    # -- protocol and CPU/GPU measurements ---------------------------------------------------
    B.append(("h", 2, "Measurement protocol"))
    cpu = d.get("cpu")
    if cpu:
        c = cpu["cpu"]
        rows = [["device", cpu["device"]], ["CPU model (/proc/cpuinfo)", c["model_name"]]]
        if c.get("family_model"):
            rows.append(["CPU family/model", c["family_model"]])
        rows += [["logical CPUs (cpuinfo)", c["logical_cpus"]], ["CPUs available to this process", c["affinity_cpus"]],
                 ["torch threads", cpu["threads"]], ["torch version", cpu["torch_version"]],
                 ["Python", cpu["python_version"]], ["precision", cpu["precision"]], ["timer", cpu["timer"]],
                 ["batch sizes", ", ".join(fmt(b) for b in cpu["batches"])], ["warm-up runs per batch", cpu["warmup"]],
                 ["timed repetitions per batch (requested)", cpu["reps_requested"]],
                 ["time cap per batch (s; at least 3 runs)", cpu["time_cap_s"]],
                 ["system load average, 1 min, before / after (shared machine)",
                  f"{fmt(cpu['load_avg_1min_before'])} / {fmt(cpu['load_avg_1min_after'])}"],
                 ["energy source", cpu["energy_source"]], ["energy note", cpu["energy_note"]]]
        if cpu.get("power_w"):
            rows.append(["power attributed to the run (W)", q(cpu["power_w"])])
        B.append(("table", ["CPU", "value"], rows))
    else:
        B.append(("p", f"CPU: not measured ({d.get('cpu_skipped') or 'no model to run'})."))
    gpu = d.get("gpu") or {}
    if gpu.get("available"):
        rows = [["device", gpu["device"]], ["torch version", gpu["torch_version"]], ["CUDA", gpu["cuda_version"]],
                ["precisions", ", ".join(p["precision"] for p in gpu["precisions"].values())], ["timer", gpu["timer"]],
                ["batch sizes", ", ".join(fmt(b) for b in gpu["batches"])], ["warm-up runs per batch", gpu["warmup"]],
                ["timed repetitions per batch (requested)", gpu["reps_requested"]],
                ["time cap per batch (s)", gpu["time_cap_s"]], ["energy source", gpu["energy_source"]],
                ["energy note", gpu["energy_note"]]]
        B.append(("table", ["GPU", "value"], rows))
    else:
        B.append(("p", f"GPU: not measured ({gpu.get('reason', 'no CUDA device')})."))

    if cpu:
        B.append(("h", 2, "CPU measurements"))
        B += _measure_table(cpu["results"])
        b1, best = cpu["batch1"], cpu["best"]
        B.append(("p", f"Batch-1 latency: median {fmt(b1['median_ms'])} ms (IQR {fmt(b1['iqr_ms'])} ms, "
                       f"min {fmt(b1['min_ms'])}, max {fmt(b1['max_ms'])}) over {fmt(b1['reps'])} runs. Best "
                       f"throughput: {fmt(best['throughput_per_s'])} inferences/s at batch {fmt(best['batch'])} "
                       f"(median {fmt(best['median_ms'])} ms per batch)."))
    if gpu.get("available"):
        B.append(("h", 2, "GPU measurements"))
        for p in gpu["precisions"].values():
            B.append(("h", 3, f"{gpu['device']}, {p['precision']}"))
            if p.get("error"):
                B.append(("alert", f"{p['precision']}: {p['error']}"))
                continue
            B += _measure_table(p["results"])
            b1, best = p["batch1"], p["best"]
            B.append(("p", f"Batch-1 latency: median {fmt(b1['median_ms'])} ms (IQR {fmt(b1['iqr_ms'])} ms, "
                           f"min {fmt(b1['min_ms'])}, max {fmt(b1['max_ms'])}) over {fmt(b1['reps'])} runs. Best "
                           f"throughput: {fmt(best['throughput_per_s'])} inferences/s at batch {fmt(best['batch'])} "
                           f"(median {fmt(best['median_ms'])} ms per batch)."))

    # -- accelerators --------------------------------------------------------------------------
    B.append(("h", 2, "Accelerators (cycle-level model)"))
    for e in d["accelerators"]:
        B += _accel_blocks(d, e)
    for p in _plots(d, "chunk_energy.png"):
        B.append(p)

    # -- reference GPUs -----------------------------------------------------------------------
    if d["reference_gpus"]:
        B.append(("h", 2, "Reference GPUs (roofline estimates)"))
        B.append(("p", f"Not measured: every number in this section is an estimate. Assumptions: "
                       f"{d['reference_gpu_assumptions']}."))
        rows = []
        for g in d["reference_gpus"]:
            s = g["spec"]
            rows.append([g["label"], q(g["latency_ms"]), q(g["energy_mj"]), s["fp32_tflops"], s["fp16_tensor_tflops"],
                         s["mem_bandwidth_gbs"], s["tdp_w"]])
        B.append(("table", ["GPU", "latency, batch 1 (ms)", "energy per inference (mJ)", "spec FP32 TFLOPS",
                            "spec FP16 tensor TFLOPS (dense)", "spec memory GB/s", "spec TDP (W)"], rows))
        B.append(("p", "Spec sources:"))
        B.append(("list", [f"{g['spec']['name']}: {g['spec']['source']}"
                           + (f" ({g['spec']['note']})" if g["spec"].get("note") else "") for g in d["reference_gpus"]]))

    # -- search --------------------------------------------------------------------------------
    s = d.get("search")
    if s:
        B.append(("h", 2, "Search: Pareto front"))
        B.append(("p", f"Front file: {s['file']}." + (f" Note: {s['note']}." if s.get("note") else "")))
        keys = s["keys"]
        rows = [[p["index"], p["trial"], p["family"], p["accuracy"], p["latency"], p["energy"],
                 "chosen" if p["chosen"] else ""] for p in s["points"]]
        B.append(("table", ["front record (@K)", "trial", "family", keys.get("accuracy", "accuracy"),
                            keys.get("latency", "latency"), keys.get("energy", "energy"), "marked"], rows))
        for p in _plots(d, "pareto.png"):
            B.append(p)

    # -- area ----------------------------------------------------------------------------------
    B.append(("h", 2, "Area per chunk (RTL)"))
    a = d["area"]
    if a.get("available"):
        B.append(("table", ["accelerator", "chunk", "PE type", "array", "cells", "basis"],
                  [[r["accelerator"], r["chunk"], r["pe_type"], r["array"], r["cells"], r["basis"]] for r in a["rows"]]))
        if a.get("missing"):
            B.append(("p", "No RTL area entry for: " + "; ".join(a["missing"]) + "."))
        for p in _plots(d, "area.png"):
            B.append(p)
    else:
        B.append(("p", f"Not shown: {a['reason']}."))

    if d.get("plots_omitted"):
        B.append(("h", 2, "Plots not drawn"))
        B.append(("list", list(d["plots_omitted"])))
    return B


def _measure_table(results: list[dict]) -> list[tuple]:
    rows = []
    for r in results:
        rows.append([r["batch"], r["reps"], r["median_ms"], r["q1_ms"], r["q3_ms"], r["iqr_ms"], r["min_ms"],
                     r["max_ms"], r["throughput_per_s"],
                     q(r["energy_per_inference_mj"]) if r.get("energy_per_inference_mj") else
                     f"n/a: {r.get('energy_missing', 'not available')}"])
    return [("table", ["batch", "runs", "median (ms)", "Q1 (ms)", "Q3 (ms)", "IQR (ms)", "min (ms)", "max (ms)",
                       "throughput (inferences/s)", "energy per inference (mJ)"], rows)]


def _plots(d: dict, *names: str, prefix: str | None = None) -> list[tuple]:
    out = []
    for p in d.get("plots", []):
        if p["file"] in names or (prefix and p["file"].startswith(prefix)):
            out.append(("img", p["file"], p["title"], p["caption"]))
    return out


def _accel_blocks(d: dict, e: dict) -> list[tuple]:
    B: list[tuple] = [("h", 3, e["name"])]
    if e.get("description"):
        B.append(("p", e["description"]))
    B.append(("p", f"Clock {fmt(e['clock_mhz'])} MHz, {fmt(e['tech_node_nm'])} nm energy table {e['energy_table']}, "
                   f"DRAM {fmt(e['dram_bandwidth_gbs'])} GB/s, global buffer {fmt(e['global_buffer_kb'])} KB."))
    if e.get("unsupported"):
        B.append(("alert", e["unsupported"]))
    if e.get("variant_note"):
        B.append(("alert", e["variant_note"]))
    if not e.get("ops"):
        rows = [[c["name"], c["pe_type"], f"{c['rows']}x{c['cols']}", c["pes"], f"{c['act_bits']}/{c['weight_bits']}",
                 c["peak_gmacs"], c["dram_bandwidth_gbs"], c["ridge_mac_per_byte"]] for c in e["chunks"]]
        B.append(("table", ["chunk", "PE type", "array", "PEs", "act/weight bits", "peak GMAC/s", "DRAM GB/s",
                            "ridge (MAC/byte)"], rows))
        return B
    lab = e["label"]
    rows = [["network simulated", e["network"]], ["schedule", e["schedule"]], ["cycles", e["cycles"]],
            ["latency (ms)", e["latency_ms"]], ["energy per inference (uJ)", e["energy_uj"]],
            ["energy per inference (mJ)", e["energy_mj"]], ["EDP (uJ x ms)", e["edp_uj_ms"]],
            ["utilization", e["utilization"]], ["stall cycles", e["stall_cycles"]], ["MACs", e["macs"]],
            ["pipelined frames/s (chunks overlapped across frames)", e["pipelined_frames_per_s"]]]
    a = e.get("attention_only")
    if a:
        rows += [["attention only: cycles (QK^T, softmax, A.V)", a["cycles"]],
                 ["attention only: latency (ms)", a["latency_ms"]], ["attention only: energy (uJ)", a["energy_uj"]],
                 ["attention only: share of cycles", a["share_of_cycles"]]]
    B.append(("table", [lab, "simulated"], rows))
    levels = [k for k, v in e["energy_by_level_uj"].items()]
    B.append(("table", ["energy by level (uJ)", *levels], [["all chunks", *[e["energy_by_level_uj"][k] for k in levels]]]))
    actions = [k for k, v in e["energy_by_action_uj"].items()]
    B.append(("table", ["energy by action (uJ)", *actions],
              [["all chunks", *[e["energy_by_action_uj"][k] for k in actions]]]))
    comps = list(e["chunks"][0].get("energy_by_component_uj", {}))
    rows = []
    for c in e["chunks"]:
        rows.append([c["name"], c["pe_type"], f"{c['rows']}x{c['cols']}", c["pes"], f"{c['act_bits']}/{c['weight_bits']}",
                     c["peak_gmacs"], c["dram_bandwidth_gbs"], c["ridge_mac_per_byte"], c["ops"], c["busy_cycles"],
                     c["energy_uj"], *[c["energy_by_component_uj"][k] for k in comps]])
    B.append(("table", ["chunk", "PE type", "array", "PEs", "act/weight bits", "peak GMAC/s", "DRAM GB/s",
                        "ridge (MAC/byte)", "ops", "busy cycles", "energy (uJ)", *[f"{k} (uJ)" for k in comps]], rows))
    idx = d["accelerators"].index(e)
    B += _plots(d, prefix=f"layers_{idx}_")
    B += _plots(d, prefix=f"roofline_{idx}_")
    ocomps = list(e["ops"][0]["energy_by_component_nj"]) if e["ops"] else []
    rows = []
    for o in e["ops"]:
        rows.append([o["name"], o["kind"], o["chunk"], o["dataflow"], o["bound"], o["cycles"], o["stall_cycles"],
                     o["latency_us"], o["utilization"], o["macs"], o["dram_bytes"], o["intensity_mac_per_byte"],
                     o["achieved_gmacs"], o["energy_nj"], *[o["energy_by_component_nj"][k] for k in ocomps]])
    table = ("table", ["layer", "kind", "chunk", "dataflow", "bound", "cycles", "stall cycles", "latency (us)",
                       "utilization", "MACs", "DRAM bytes", "MAC/DRAM byte", "GMAC/s", "energy (nJ)",
                       *[f"{k} (nJ)" for k in ocomps]], rows)
    B.append(("details", f"Per-layer table: {len(e['ops'])} operators on {lab}", [table]))
    return B


# ---------------------------------------------------------------------------------------------
# HTML


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em;display:block;overflow-x:auto}
th,td{border:1px solid #ddd;padding:.2em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.estimate{color:#a0341f;font-style:italic}
.alert{background:#fff4e5;border-left:4px solid #e67e22;padding:.5em .8em;margin:.6em 0}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}code{background:#f5f5f5;padding:.2em .4em;display:block;white-space:pre-wrap}
"""


def _h(text: str) -> str:
    return _html.escape(str(text), quote=True)


def _cell_html(v: Any) -> str:
    if isinstance(v, Est):
        return f'<td class="num"><span class="estimate">{_h(fmt(v.value))} {EST}</span></td>'
    if isinstance(v, (int, float)) and not isinstance(v, bool) or v is None:
        return f'<td class="num">{_h(fmt(v))}</td>'
    return f"<td>{_h(v)}</td>"


def _html_blocks(blocks: list[tuple]) -> list[str]:
    out = []
    for b in blocks:
        kind = b[0]
        if kind == "h":
            out.append(f"<h{b[1]}>{_h(b[2])}</h{b[1]}>")
        elif kind == "p":
            out.append(f"<p>{_h(b[1])}</p>")
        elif kind == "code":
            out.append(f"<code>{_h(b[1])}</code>")
        elif kind == "alert":
            out.append(f'<p class="alert">{_h(b[1])}</p>')
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{_h(i)}</li>" for i in b[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{_h(x)}</th>" for x in b[1])
            body = "".join("<tr>" + "".join(_cell_html(c) for c in row) + "</tr>" for row in b[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            out.append(f'<figure><img src="{_h(b[1])}" alt="{_h(b[2])}"><figcaption><b>{_h(b[2])}.</b> '
                       f"{_h(b[3])}</figcaption></figure>")
        elif kind == "details":
            out.append(f"<details><summary>{_h(b[1])}</summary>" + "".join(_html_blocks(b[2])) + "</details>")
    return out


def html(data: dict) -> str:
    body = "\n".join(_html_blocks(_blocks(data)))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_h(data['title'])}</title>\n<style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


# ---------------------------------------------------------------------------------------------
# Markdown


def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _cell_md(v: Any) -> str:
    if isinstance(v, Est):
        return f"{fmt(v.value)} {EST}"
    if isinstance(v, (int, float)) and not isinstance(v, bool) or v is None:
        return fmt(v)
    return _md_escape(v)


def _md_blocks(blocks: list[tuple]) -> list[str]:
    out = []
    for b in blocks:
        kind = b[0]
        if kind == "h":
            out.append("#" * b[1] + " " + b[2])
        elif kind == "p":
            out.append(b[1])
        elif kind == "code":
            out.append(f"```\n{b[1]}\n```")
        elif kind == "alert":
            out.append(f"> **Note:** {b[1]}")
        elif kind == "list":
            out.append("\n".join(f"- {i}" for i in b[1]))
        elif kind == "table":
            lines = ["| " + " | ".join(_md_escape(h) for h in b[1]) + " |",
                     "|" + "---|" * len(b[1])]
            lines += ["| " + " | ".join(_cell_md(c) for c in row) + " |" for row in b[2]]
            out.append("\n".join(lines))
        elif kind == "img":
            out.append(f"![{b[2]}]({b[1]})\n\n*{b[2]}.* {b[3]}")
        elif kind == "details":
            out.append(f"<details><summary>{b[1]}</summary>\n\n" + "\n\n".join(_md_blocks(b[2])) + "\n\n</details>")
    return out


def markdown(data: dict) -> str:
    return "\n\n".join(_md_blocks(_blocks(data))) + "\n"
