"""Assemble a report: resolve the model, measure CPU/GPU, simulate accelerators, estimate reference
GPUs, plot, and write index.html, report.md and data.json under the output directory."""
from __future__ import annotations

import datetime as _dt
import json
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hw_models.accelerator import load_accelerator
from hw_models.errors import CodesignError

from codesign.report import hw as hwmod
from codesign.report.devices import resolve_ref_gpus
from codesign.report.measure import count_params, measure_cpu, measure_cuda, quantity
from codesign.report.resolve import resolve_model

FORMAT = "codesign-report/1"


@dataclass
class ReportOptions:
    model: str
    hw: list[str]
    out: Path
    search: str | None = None
    ref_gpus: list[str] = field(default_factory=list)
    batches: list[int] = field(default_factory=lambda: [1, 8, 32])
    warmup: int = 3
    reps: int = 20
    threads: int | None = None
    time_cap_s: float = 20.0
    mapper: str = "auto"            # auto: codesign.mapper when importable; default; search (required)
    map_budget_s: float = 20.0
    objective: str = "edp"
    input_shape: tuple[int, ...] | None = None
    cpu: bool = True
    gpu: bool = True
    title: str | None = None
    notes: list[str] = field(default_factory=list)
    command: str = ""
    variants: bool = True
    plots: bool = True

    def validate(self) -> None:
        if not self.hw:
            raise CodesignError("give at least one accelerator with --hw")
        if not self.batches or any(b < 1 for b in self.batches):
            raise CodesignError(f"--batches must be positive integers, got {self.batches}")
        if 1 not in self.batches:
            self.batches = [1, *self.batches]
        self.batches = sorted(set(self.batches))
        if self.warmup < 0 or self.reps < 1:
            raise CodesignError(f"--warmup must be >= 0 and --reps >= 1 (got {self.warmup}, {self.reps})")
        if self.threads is not None and self.threads < 1:
            raise CodesignError(f"--threads must be >= 1, got {self.threads}")


def _round(x: float) -> float:
    return float(f"{x:.4g}")


def sanitize(obj: Any, path: str = "", bad: list[str] | None = None) -> Any:
    """Round floats to the 4 significant digits the report prints; non-finite numbers become None
    (and are listed in ``bad``) so no NaN or inf ever reaches a report."""
    if isinstance(obj, dict):
        return {k: sanitize(v, f"{path}.{k}" if path else str(k), bad) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize(v, f"{path}[{i}]", bad) for i, v in enumerate(obj)]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            if bad is not None:
                bad.append(path)
            return None
        return _round(obj)
    if hasattr(obj, "item"):                    # numpy scalars
        return sanitize(obj.item(), path, bad)
    return str(obj)


def _cpu_rows(cpu: dict) -> list[dict]:
    rows = []
    b1 = cpu["batch1"]
    rows.append({"label": f"{cpu['device']} (measured, batch 1)", "short": "CPU, measured", "kind": "measured",
                 "latency_ms": quantity(b1["median_ms"], "ms", False, "measured median"),
                 "energy_mj": b1["energy_per_inference_mj"]})
    return rows


def _comparison(data: dict) -> dict:
    rows: list[dict] = []
    baseline = None
    cpu = data.get("cpu")
    if cpu and cpu.get("results"):
        rows += _cpu_rows(cpu)
        b = rows[0]
        baseline = {"label": "CPU (batch 1)", "latency_ms": b["latency_ms"]["value"],
                    "energy_mj": b["energy_mj"]["value"], "energy_estimate": b["energy_mj"]["estimate"]}
    gpu = data.get("gpu") or {}
    if gpu.get("available"):
        for prec in gpu["precisions"].values():
            if "batch1" not in prec:
                continue
            b1 = prec["batch1"]
            rows.append({"label": f"{gpu['device']} {prec['precision']} (measured, batch 1)",
                         "short": f"GPU {prec['precision']}, measured", "kind": "measured",
                         "latency_ms": quantity(b1["median_ms"], "ms", False, "measured median (CUDA events)"),
                         "energy_mj": b1.get("energy_per_inference_mj")})
    for e in data["accelerators"]:
        if e.get("ops"):
            rows.append({"label": f"{e['label']} (simulated)", "short": f"{e['label']}, simulated", "kind": "simulated",
                         "latency_ms": quantity(e["latency_ms"], "ms", False, "cycle-level model"),
                         "energy_mj": quantity(e["energy_mj"], "mJ", False, "cycle-level model + energy table")})
    for g in data["reference_gpus"]:
        rows.append({"label": g["label"], "short": g["short"], "kind": "estimate", "latency_ms": g["latency_ms"], "energy_mj": g["energy_mj"]})
    for r in rows:
        if baseline:
            lat = r["latency_ms"]
            r["speedup_vs_cpu"] = quantity(baseline["latency_ms"] / lat["value"], "x", lat["estimate"],
                                           ("estimate: " if lat["estimate"] else "") + "CPU batch-1 median / this latency")
            en = r.get("energy_mj")
            if en:
                est = en["estimate"] or baseline["energy_estimate"]
                r["efficiency_vs_cpu"] = quantity(baseline["energy_mj"] / en["value"], "x", est,
                                                  ("estimate: " if est else "")
                                                  + "CPU energy per inference / this energy per inference"
                                                  + (" (an estimated energy enters the ratio)" if est else ""))
    return {"baseline": baseline, "rows": rows}


def _plot_rows(comp: dict) -> list[dict]:
    out = []
    for r in comp["rows"]:
        en = r.get("energy_mj")
        out.append({"label": r["short"], "latency_ms": r["latency_ms"]["value"],
                    "latency_estimate": r["latency_ms"]["estimate"],
                    "energy_mj": en["value"] if en else None, "energy_estimate": bool(en and en["estimate"])})
    return out


def build_data(opts: ReportOptions, log=print) -> dict:
    opts.validate()
    accels = [load_accelerator(h) for h in opts.hw]
    names = [a.name for a in accels]
    if len(set(names)) != len(names):
        raise CodesignError(f"--hw lists the same accelerator twice ({', '.join(names)})")
    ref_gpus = resolve_ref_gpus(opts.ref_gpus)
    rm = resolve_model(opts.model, opts.input_shape)
    search = None
    if opts.search:
        same = rm.search_dir is not None and Path(rm.search_dir).resolve() == Path(opts.search).resolve()
        search = hwmod.search_points(opts.search, rm.record_index if same else None)
        if not search["chosen"]:
            search["note"] = "the reported network is not a record of this front, and no record is flagged chosen"
    wl = rm.workload
    notes = list(opts.notes) + list(rm.notes)
    model_info = {"spec": rm.spec, "name": rm.name, "form": rm.form, "description": rm.description,
                  "input_shape": list(rm.input_shape), "ops": len(wl), "gemm_ops": sum(op.is_gemm for op in wl.ops()),
                  "macs": wl.macs, "kinds": sorted(wl.kinds())}
    if rm.module is not None:
        model_info["parameters"] = count_params(rm.module)
    data: dict[str, Any] = {
        "format": FORMAT,
        "title": opts.title or f"{rm.name} on {', '.join(names)}",
        "generated_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": opts.command,
        "model": model_info,
        "host": {"platform": platform.platform(), "python": platform.python_version()},
    }
    # CPU / GPU measurements
    if rm.module is None:
        data["cpu"] = None
        data["cpu_skipped"] = rm.no_run_reason
        data["gpu"] = {"available": False, "reason": rm.no_run_reason}
    else:
        if opts.cpu:
            log(f"report: measuring {rm.name} on the CPU (batches {opts.batches}, {opts.reps} reps)")
            data["cpu"] = measure_cpu(rm.module, rm.input_shape, opts.batches, opts.warmup, opts.reps,
                                      opts.threads, opts.time_cap_s)
        else:
            data["cpu"] = None
            data["cpu_skipped"] = "CPU measurement switched off (--no-cpu)"
        if opts.gpu:
            data["gpu"] = measure_cuda(rm.module, rm.input_shape, opts.batches, opts.warmup, opts.reps, opts.time_cap_s)
        else:
            data["gpu"] = {"available": False, "reason": "GPU measurement switched off (--no-gpu)"}
    # Accelerators
    data["accelerators"] = []
    for accel in accels:
        log(f"report: mapping and simulating {rm.name} on {accel.name}")
        entry = hwmod.run_accelerator(wl, accel, opts.mapper, opts.map_budget_s, opts.objective, opts.variants)
        data["accelerators"].append(entry)
    data["reference_gpus"] = [hwmod.gpu_estimate(wl, g) for g in ref_gpus]
    data["reference_gpu_assumptions"] = hwmod.GPU_ASSUMPTIONS if ref_gpus else None
    data["comparison"] = _comparison(data)
    data["search"] = search
    data["area"] = hwmod.area_per_chunk(accels)
    data["notes"] = notes
    return data


def write_report(opts: ReportOptions, log=print) -> Path:
    from codesign.report import plots, render

    raw = build_data(opts, log)
    bad: list[str] = []
    data = sanitize(raw, bad=bad)
    if bad:
        data["notes"].append(f"{len(bad)} value(s) could not be computed and are shown as n/a: {', '.join(bad[:5])}")
    out = Path(opts.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CodesignError(f"cannot create --out {out}: {exc.strerror or exc}") from None
    for old in out.glob("*.png"):                 # a re-run must not leave plots of an earlier report
        old.unlink()
    comp_plot = {"rows": _plot_rows(data["comparison"]), "baseline": data["comparison"]["baseline"]}
    if opts.plots:
        log("report: plotting")
        data["plots"], data["plots_omitted"] = plots.make_all({**data, "comparison": comp_plot}, out)
    else:
        data["plots"], data["plots_omitted"] = [], ["all plots: switched off (--no-plots)"]
    (out / "data.json").write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    (out / "report.md").write_text(render.markdown(data))
    (out / "index.html").write_text(render.html(data))
    return out
