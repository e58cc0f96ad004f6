"""Device tables for the report: reference GPUs (roofline estimates) and processor TDPs (energy
estimates when no energy counter is readable). Every entry names its source.

Nothing here is measured: numbers from this module are always labelled as estimates or spec values
where the report shows them.
"""
from __future__ import annotations

import os
import platform
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median


@dataclass(frozen=True)
class GpuSpec:
    """Peak numbers from a vendor datasheet (dense, no structured sparsity)."""

    key: str
    name: str
    fp32_tflops: float            # CUDA-core FP32 (also the rate used for adder |x-w| layers)
    fp16_tensor_tflops: float     # dense FP16 tensor-core rate (mixed precision)
    mem_bandwidth_gbs: float
    tdp_w: float
    source: str
    note: str = ""
    short: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


#: Reference GPUs the report can add as roofline estimates (``--ref-gpu``).
GPU_SPECS: dict[str, GpuSpec] = {
    "a100": GpuSpec(
        "a100", "NVIDIA A100 SXM4 80GB", fp32_tflops=19.5, fp16_tensor_tflops=312.0,
        mem_bandwidth_gbs=2039.0, tdp_w=400.0, short="A100",
        source="NVIDIA A100 Tensor Core GPU datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf): "
               "FP32 19.5 TFLOPS, FP16 Tensor Core 312 TFLOPS dense (624 with sparsity), 2,039 GB/s, max TDP 400 W"),
    "h100": GpuSpec(
        "h100", "NVIDIA H100 SXM5 80GB", fp32_tflops=67.0, fp16_tensor_tflops=989.4,
        mem_bandwidth_gbs=3350.0, tdp_w=700.0, short="H100",
        source="NVIDIA H100 Tensor Core GPU datasheet: FP32 67 TFLOPS, FP16 Tensor Core 1,979 TFLOPS with "
               "sparsity (989.4 dense), 3.35 TB/s, max TDP up to 700 W"),
    "jetson-orin": GpuSpec(
        "jetson-orin", "NVIDIA Jetson AGX Orin 64GB (edge)", fp32_tflops=5.32, fp16_tensor_tflops=42.5,
        mem_bandwidth_gbs=204.8, tdp_w=60.0, short="Jetson AGX Orin",
        source="NVIDIA Jetson AGX Orin Series Technical Brief v1.2: GPU 2048 CUDA cores / 64 Tensor Cores at "
               "up to 1.3 GHz (5.32 FP32 TFLOPS), 170 sparse INT8 TOPS, 204.8 GB/s LPDDR5, module power 15-60 W",
        note="FP16 tensor rate derived: 170 sparse INT8 TOPS / 2 (dense) / 2 (FP16 runs at half the INT8 rate)"),
}


@dataclass(frozen=True)
class CpuTdp:
    pattern: str          # regex matched against /proc/cpuinfo's model name
    name: str
    tdp_w: float
    cores: int
    threads: int
    source: str

    @property
    def watts_per_thread(self) -> float:
        return self.tdp_w / self.threads


#: Processor TDPs (package), for the labelled CPU energy estimate when RAPL cannot be read.
CPU_TDPS: tuple[CpuTdp, ...] = (
    CpuTdp(r"Platinum 8592\+", "Intel Xeon Platinum 8592+", 350, 64, 128,
           "Intel ARK product page, Intel Xeon Platinum 8592+ (Emerald Rapids): TDP 350 W, 64 cores / 128 threads"),
    CpuTdp(r"Platinum 8480\+", "Intel Xeon Platinum 8480+", 350, 56, 112,
           "Intel ARK product page, Intel Xeon Platinum 8480+ (Sapphire Rapids): TDP 350 W, 56 cores / 112 threads"),
    CpuTdp(r"Platinum 8380\b", "Intel Xeon Platinum 8380", 270, 40, 80,
           "Intel ARK product page, Intel Xeon Platinum 8380 (Ice Lake-SP): TDP 270 W, 40 cores / 80 threads"),
    CpuTdp(r"Gold 6248\b", "Intel Xeon Gold 6248", 150, 20, 40,
           "Intel ARK product page, Intel Xeon Gold 6248 (Cascade Lake): TDP 150 W, 20 cores / 40 threads"),
    CpuTdp(r"EPYC 7763\b", "AMD EPYC 7763", 280, 64, 128,
           "AMD product page, AMD EPYC 7763: default TDP 280 W, 64 cores / 128 threads"),
    CpuTdp(r"EPYC 9654\b", "AMD EPYC 9654", 360, 96, 192,
           "AMD product page, AMD EPYC 9654: default TDP 360 W, 96 cores / 192 threads"),
    CpuTdp(r"i9-13900K\b", "Intel Core i9-13900K", 125, 24, 32,
           "Intel ARK product page, Intel Core i9-13900K: processor base power 125 W, 24 cores / 32 threads"),
)

#: Fallback when the CPU model is not in the table: the median TDP per hardware thread of the
#: server CPUs above (a generic default, always labelled as such).
GENERIC_WATTS_PER_THREAD = round(median(t.watts_per_thread for t in CPU_TDPS if "Xeon" in t.name or "EPYC" in t.name), 3)


def cpu_info(cpuinfo: str | Path = "/proc/cpuinfo") -> dict:
    """CPU model name, logical CPUs and (family, model) from /proc/cpuinfo (platform fallbacks)."""
    text = ""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        pass

    def field(key: str) -> str | None:
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.M)
        return m.group(1).strip() if m else None

    name = field("model name") or field("Hardware") or platform.processor() or platform.machine() or "unknown CPU"
    logical = len(re.findall(r"^processor\s*:", text, re.M)) or os.cpu_count() or 1
    info = {"model_name": re.sub(r"\s+", " ", name), "logical_cpus": logical}
    fam, mod = field("cpu family"), field("model")
    if fam and mod and mod.isdigit():
        info["family_model"] = f"family {fam}, model {mod}"
    try:
        info["affinity_cpus"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        info["affinity_cpus"] = logical
    return info


def cpu_power_estimate(model_name: str, threads: int) -> dict:
    """Power (W) attributed to a job using ``threads`` hardware threads, from the TDP table.

    The package TDP is shared out per hardware thread: P = TDP x threads / package threads (a
    container rarely owns the whole socket). Returns the watts and a one-line basis with its source.
    """
    for entry in CPU_TDPS:
        if re.search(entry.pattern, model_name):
            watts = entry.watts_per_thread * threads
            return {"watts": watts, "tdp_w": entry.tdp_w, "package_threads": entry.threads,
                    "table_entry": entry.name, "generic": False,
                    "basis": (f"TDP {entry.tdp_w:g} W x {threads}/{entry.threads} threads ({entry.name}); "
                              f"source: {entry.source}")}
    return {"watts": GENERIC_WATTS_PER_THREAD * threads, "tdp_w": None, "package_threads": None,
            "table_entry": None, "generic": True,
            "basis": (f"generic default: CPU model {model_name!r} is not in the TDP table, so "
                      f"{GENERIC_WATTS_PER_THREAD:g} W per hardware thread (median TDP per thread of the table's "
                      f"server CPUs: {', '.join(t.name for t in CPU_TDPS if 'Xeon' in t.name or 'EPYC' in t.name)}) "
                      f"x {threads} threads")}


def gpu_tdp_for(name: str) -> GpuSpec | None:
    """The table entry whose model matches a CUDA device name (e.g. 'NVIDIA H100 80GB HBM3')."""
    low = name.lower()
    for key, token in (("h100", "h100"), ("a100", "a100"), ("jetson-orin", "orin")):
        if token in low:
            return GPU_SPECS[key]
    return None


def resolve_ref_gpus(keys: list[str]) -> list[GpuSpec]:
    from hw_models.errors import CodesignError
    out = []
    for key in keys:
        k = key.lower()
        if k == "all":
            out.extend(g for g in GPU_SPECS.values() if g not in out)
            continue
        if k not in GPU_SPECS:
            raise CodesignError(f"unknown reference GPU {key!r}; known: {', '.join(GPU_SPECS)}, all")
        if GPU_SPECS[k] not in out:
            out.append(GPU_SPECS[k])
    return out
