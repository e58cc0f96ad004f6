"""Measure a PyTorch model on this machine's CPU and, when present, a CUDA GPU.

Protocol (written into every report): eval mode under ``torch.no_grad()`` (not ``inference_mode``:
tensors a layer caches inside inference mode cannot be reused outside it), random inputs of the model's shape at each
batch size, ``warmup`` untimed runs, then up to ``reps`` timed runs (fewer only when a time cap is
hit; the count actually run is recorded). CPU runs are timed with ``time.perf_counter_ns``; GPU runs
with CUDA events around each run, synchronised. Statistics: median, quartiles (IQR), min, max.

Energy: CPU from RAPL package counters (``/sys/class/powercap/intel-rapl:*/energy_uj``) when
readable; GPU from NVML's total-energy counter when ``pynvml`` is importable; otherwise an estimate
(power from a TDP table x time), flagged ``estimate: True`` wherever it is stored.
"""
from __future__ import annotations

import glob
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from codesign.report.devices import cpu_info, cpu_power_estimate, gpu_tdp_for


def quantity(value: float, unit: str, estimate: bool, method: str) -> dict[str, Any]:
    """A number with its unit and provenance; ``estimate`` marks it for labelling everywhere."""
    return {"value": value, "unit": unit, "estimate": bool(estimate), "method": method}


def summarize(times_s: list[float]) -> dict[str, float]:
    """Median, quartiles, min/max of run times, in ms."""
    ms = sorted(t * 1e3 for t in times_s)
    if len(ms) >= 2:
        q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    else:
        q1 = q3 = ms[0]
    return {"median_ms": statistics.median(ms), "q1_ms": q1, "q3_ms": q3, "iqr_ms": q3 - q1,
            "min_ms": ms[0], "max_ms": ms[-1]}


# ---------------------------------------------------------------------------------------------
# RAPL


class Rapl:
    """Package-domain RAPL energy counters, or ``None`` from :meth:`open` when unreadable."""

    def __init__(self, domains: list[tuple[Path, int]]) -> None:
        self.domains = domains            # (energy_uj path, max_energy_range_uj)

    @classmethod
    def open(cls, root: str = "/sys/class/powercap") -> tuple["Rapl | None", str]:
        paths = sorted(glob.glob(f"{root}/intel-rapl:*/energy_uj"))
        paths = [p for p in paths if Path(p).parent.name.count(":") == 1]     # packages, not sub-domains
        if not paths:
            return None, f"no RAPL package domains under {root} (usual in containers and VMs)"
        domains = []
        for p in paths:
            try:
                int(Path(p).read_text())
                rng = Path(p).with_name("max_energy_range_uj")
                domains.append((Path(p), int(rng.read_text()) if rng.exists() else 2 ** 32))
            except (OSError, ValueError) as exc:
                return None, f"RAPL counter {p} not readable ({exc.__class__.__name__})"
        return cls(domains), f"RAPL package counters: {', '.join(str(p) for p, _ in domains)}"

    def read(self) -> list[int]:
        return [int(p.read_text()) for p, _ in self.domains]

    def joules_since(self, start: list[int]) -> float:
        total = 0
        for (p, rng), s, e in zip(self.domains, start, self.read()):
            total += e - s if e >= s else e + rng - s          # counter wrapped
        return total / 1e6


# ---------------------------------------------------------------------------------------------
# CPU


def _time_cpu(fn: Callable[[], Any], reps: int, cap_s: float) -> list[float]:
    times: list[float] = []
    began = time.perf_counter()
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t0) / 1e9)
        if len(times) >= 3 and time.perf_counter() - began > cap_s:
            break
    return times


def measure_cpu(model, input_shape: tuple[int, ...], batches: list[int], warmup: int, reps: int,
                threads: int | None = None, cap_s: float = 20.0, rapl_root: str = "/sys/class/powercap") -> dict:
    """Time ``model`` on the CPU at each batch size; energy from RAPL or a labelled TDP estimate."""
    import torch

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    used_threads = torch.get_num_threads()
    info = cpu_info()
    rapl, rapl_note = Rapl.open(rapl_root)
    power = cpu_power_estimate(info["model_name"], used_threads)
    model = model.eval().to("cpu")
    load_before = _loadavg()
    results = []
    try:
        with torch.no_grad():
            for b in batches:
                x = torch.randn((b, *input_shape[1:]))
                for _ in range(warmup):
                    model(x)
                start = rapl.read() if rapl else None
                times = _time_cpu(lambda: model(x), reps, cap_s)
                row = {"batch": b, "reps": len(times), **summarize(times)}
                row["throughput_per_s"] = b / (row["median_ms"] / 1e3)
                if rapl:
                    joules = rapl.joules_since(start)          # read after the warm-up: timed runs only
                    timed = sum(times)
                    per_inf = joules / len(times) / b
                    row["energy_per_inference_mj"] = quantity(
                        per_inf * 1e3, "mJ", False,
                        f"measured: RAPL package energy over {len(times)} timed runs (whole socket, "
                        f"including any other load); timed {timed:.3g} s")
                else:
                    row["energy_per_inference_mj"] = quantity(
                        power["watts"] * row["median_ms"] / b, "mJ", True,
                        f"estimate: {power['watts']:.3g} W x median time / batch; {power['basis']}")
                results.append(row)
    finally:
        torch.set_num_threads(old_threads)
    best = max(results, key=lambda r: r["throughput_per_s"])
    b1 = next((r for r in results if r["batch"] == 1), results[0])
    return {
        "device": f"CPU: {info['model_name']}",
        "cpu": info,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "threads": used_threads,
        "precision": "fp32",
        "timer": "time.perf_counter_ns per run (eval mode, torch.no_grad)",
        "warmup": warmup, "reps_requested": reps, "time_cap_s": cap_s,
        "batches": list(batches),
        "energy_source": ("RAPL" if rapl else "estimate"),
        "energy_note": rapl_note if rapl else f"{rapl_note}; energy is an estimate: {power['basis']}",
        "power_w": None if rapl else quantity(power["watts"], "W", True, f"estimate: {power['basis']}"),
        "load_avg_1min_before": load_before,
        "load_avg_1min_after": _loadavg(),
        "results": results,
        "batch1": b1,
        "best": best,
    }


# ---------------------------------------------------------------------------------------------
# CUDA


class Nvml:
    """NVML total-energy counter for one device (Volta or newer), or None when unavailable."""

    def __init__(self, handle, pynvml) -> None:
        self.handle, self.nvml = handle, pynvml

    @classmethod
    def open(cls, index: int) -> tuple["Nvml | None", str]:
        try:
            import pynvml  # type: ignore
        except ImportError:
            return None, "pynvml (nvidia-ml-py) is not installed, so NVML energy counters cannot be read"
        try:
            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        except Exception as exc:                       # NVMLError subclasses; old GPUs lack the counter
            return None, f"NVML energy counter unavailable ({exc})"
        return cls(handle, pynvml), "NVML nvmlDeviceGetTotalEnergyConsumption (whole board)"

    def read_mj(self) -> int:
        return int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))


def measure_cuda(model, input_shape: tuple[int, ...], batches: list[int], warmup: int, reps: int,
                 cap_s: float = 20.0) -> dict:
    """Time ``model`` on CUDA device 0 in fp32 and in mixed precision (autocast fp16 / bf16)."""
    import torch

    if not torch.cuda.is_available():
        return {"available": False, "reason": f"no CUDA device (torch {torch.__version__}, "
                                              f"CUDA build: {torch.version.cuda or 'none'})"}
    dev = torch.device("cuda", 0)
    name = torch.cuda.get_device_name(dev)
    nvml, nvml_note = Nvml.open(0)
    spec = gpu_tdp_for(name)
    amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    model = model.eval().to(dev)
    precisions = {}
    for prec in ("fp32", "amp"):
        label = "fp32" if prec == "fp32" else f"autocast {str(amp_dtype).split('.')[-1]}"
        try:
            rows = _cuda_rows(model, dev, input_shape, batches, warmup, reps, cap_s, prec, amp_dtype, nvml, spec, name)
        except RuntimeError as exc:       # e.g. an op without a kernel for this dtype: say so, do not crash
            first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            precisions[prec] = {"precision": label, "error": f"failed on the GPU: {first[:300]}"}
            torch.cuda.empty_cache()
            continue
        best = max(rows, key=lambda r: r["throughput_per_s"])
        b1 = next((r for r in rows if r["batch"] == 1), rows[0])
        precisions[prec] = {"precision": label, "results": rows, "batch1": b1, "best": best}
    model.to("cpu")
    torch.cuda.empty_cache()
    return {
        "available": True,
        "device": f"GPU: {name}",
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "timer": "CUDA events around each run, synchronised (eval mode, torch.no_grad)",
        "warmup": warmup, "reps_requested": reps, "time_cap_s": cap_s, "batches": list(batches),
        "energy_source": "NVML" if nvml else "estimate",
        "energy_note": nvml_note,
        "precisions": precisions,
    }


def _cuda_rows(model, dev, input_shape, batches, warmup, reps, cap_s, prec, amp_dtype, nvml, spec, name) -> list[dict]:
    import torch

    rows = []
    for b in batches:
        x = torch.randn((b, *input_shape[1:]), device=dev)

        def run(x=x) -> None:
            ctx = torch.autocast("cuda", dtype=amp_dtype) if prec == "amp" else _null()
            with torch.no_grad(), ctx:
                model(x)
        for _ in range(warmup):
            run()
        torch.cuda.synchronize(dev)
        e0 = nvml.read_mj() if nvml else None
        times: list[float] = []
        began = time.perf_counter()
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
            if len(times) >= 3 and time.perf_counter() - began > cap_s:
                break
        row = {"batch": b, "reps": len(times), **summarize(times)}
        row["throughput_per_s"] = b / (row["median_ms"] / 1e3)
        mj = (nvml.read_mj() - e0) if nvml else 0
        if nvml and mj > 0 and sum(times) >= 1.0:     # the counter updates coarsely: need >= 1 s of runs
            row["energy_per_inference_mj"] = quantity(mj / len(times) / b, "mJ", False,
                                                      f"measured: NVML board energy over {len(times)} runs")
        elif spec:
            why = "" if not nvml else f" (NVML not used: {sum(times):.3g} s of timed runs is too short for its counter)"
            row["energy_per_inference_mj"] = quantity(
                spec.tdp_w * row["median_ms"] / b, "mJ", True,
                f"estimate: TDP {spec.tdp_w:g} W x median time / batch ({spec.name}; {spec.source}){why}")
        else:
            row["energy_per_inference_mj"] = None
            row["energy_missing"] = f"no NVML and no TDP entry for {name!r}: GPU energy not reported"
        rows.append(row)
        del x
    return rows


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _loadavg() -> float | None:
    """1-minute system load average (other jobs on a shared machine slow the measurement)."""
    try:
        import os
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def count_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
