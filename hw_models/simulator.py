"""Whole-network simulation: place every operator's tiles/transfers in time and add up energy.

Ops are list-scheduled in dependency order: an op starts when its producers have finished and its
chunk is free, so independent ops on different chunks overlap. (Concurrent ops do not contend for
DRAM bandwidth in this model; in latency mode on a chain network only one op runs at a time.)
In ``throughput`` mode frames are pipelined across chunks and the frame interval is the busiest
chunk's total time.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hw_models.accelerator import CSR_DATAFLOW, Accelerator, Chunk
from hw_models.cost import ENERGY_KEYS, OpCost, op_cost, validate_mapping
from hw_models.errors import MappingError
from hw_models.schedule import OpMapping, Schedule
from hw_models.workload import OpNode, Workload

COMPUTE_ACTIONS = ("mult", "shift", "add", "abs", "vector")
ATTENTION_KINDS = ("matmul", "sparse_matmul", "softmax")
MEMORY_LEVELS = {"rf": "rf", "noc": "noc", "local_buffer": "local_buffer", "global_buffer": "global_buffer",
                 "dram": "dram"}


@dataclass
class OpResult:
    name: str
    kind: str
    chunk: str
    dataflow: str
    start_cycle: float
    cycles: float
    compute_cycles: float
    stall_cycles: float
    bound: str
    macs: int
    hw_macs: int
    utilization: float
    energy_pj: dict[str, float]
    accesses: dict[str, float]

    @property
    def energy_total_pj(self) -> float:
        return sum(self.energy_pj.values())


@dataclass
class SimResult:
    """Units are in the field names: cycles, seconds, pJ, bytes."""

    workload: str
    accelerator: str
    clock_mhz: float
    cycles: float
    seconds: float
    energy_total_pj: float
    energy_by_action_pj: dict[str, float]
    energy_by_level_pj: dict[str, float]
    energy_by_chunk_pj: dict[str, float]
    edp_pj_s: float
    utilization: float
    stall_cycles: float
    macs: int
    hw_macs: int
    throughput_interval_cycles: float
    ops: list[OpResult] = field(default_factory=list)
    schedule_producer: str = "default"

    @property
    def attention(self) -> dict[str, float] | None:
        """Attention-only totals: the activation-by-activation products (QK^T, A.V) and softmaxes.

        Summed op times (ops on one chunk run back to back; in latency mode this is their share of
        the critical path). None for a network without attention."""
        ops = [o for o in self.ops if o.kind in ATTENTION_KINDS]
        if not any(o.kind != "softmax" for o in ops):
            return None
        return {"cycles": sum(o.cycles for o in ops), "energy_pj": sum(o.energy_total_pj for o in ops),
                "ops": len(ops)}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for op, o in zip(d["ops"], self.ops):
            op["energy_total_pj"] = o.energy_total_pj
        d["attention"] = self.attention
        d["format"] = "codesign-simresult/1"
        return d

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text

    def op(self, name: str) -> OpResult:
        return next(o for o in self.ops if o.name == name)


# ----------------------------------------------------------------------------------------------
# default schedule: deterministic, every op on a chunk that can run it, a tiling that fits


def preferred_chunk(op: OpNode, accel: Accelerator) -> Chunk:
    """A csr chunk for a masked product, else the largest chunk whose PE type matches the op's
    arithmetic, else the first that supports the kind."""
    candidates = accel.chunks_for(op.kind)
    if not candidates:
        raise MappingError(f"{op.name}: no chunk of {accel.name} supports {op.kind} "
                           f"(chunks: {', '.join(f'{c.name}={c.pe_type}' for c in accel.chunks)})")
    for c in candidates:
        if uses_csr(op, c):
            return c
    pe_types = ("mac", "sparse_attention") if op.family == "mac" else (op.family,)   # sparse lines are MACs
    matching = [c for c in candidates if op.is_gemm and c.pe_type in pe_types]
    return max(matching, key=lambda c: c.pes) if matching else candidates[0]


def uses_csr(op: OpNode, chunk: Chunk) -> bool:
    """Whether ``op`` runs on ``chunk``'s sparse lines (a masked product on a csr chunk)."""
    return op.kind == "sparse_matmul" and op.mask is not None and CSR_DATAFLOW in chunk.dataflows


def default_mapping(op: OpNode, accel: Accelerator, chunk: Chunk | None = None) -> OpMapping:
    chunk = chunk or preferred_chunk(op, accel)
    if not op.is_gemm:
        block = op.elements()[2]
        while True:
            mp = OpMapping(op.name, chunk.name, "vector", (block, 0, 0))
            try:
                validate_mapping(op, chunk, accel, mp)
                return mp
            except MappingError:
                if block == 1:
                    raise
                block = math.ceil(block / 2)
    _, P, K, M = op.gemm
    if uses_csr(op, chunk):
        mp = OpMapping(op.name, chunk.name, CSR_DATAFLOW, (P, K, M))
        validate_mapping(op, chunk, accel, mp)
        return mp
    if not chunk.gemm_dataflows:
        raise MappingError(f"{op.name}: chunk {chunk.name} has only the csr dataflow, which needs a masked "
                           "sparse_matmul")
    dataflow = chunk.gemm_dataflows[0]
    gb = [P, K, M]
    while True:
        p, k, m = gb
        if dataflow == "os":
            at = [min(chunk.rows, p), min(chunk.cols, m), k]
        else:
            at = [p, min(chunk.cols, m), min(chunk.rows, k)]
        stream = 0 if dataflow == "ws" else 2      # the dimension that may be shortened to fit the LB
        while True:
            mp = OpMapping(op.name, chunk.name, dataflow, tuple(gb), tuple(at), "pkm")
            try:
                validate_mapping(op, chunk, accel, mp)
                return mp
            except MappingError as err:
                msg = str(err)
                if "local buffer" in msg and at[stream] > 1:
                    at[stream] = math.ceil(at[stream] / 2)
                    continue
                if "global buffer" in msg or "local buffer" in msg:
                    break
                raise
        largest = max(range(3), key=lambda i: gb[i])
        if gb[largest] == 1:
            raise MappingError(f"{op.name}: no tile fits the buffers of {accel.name} (chunk {chunk.name})")
        gb[largest] = math.ceil(gb[largest] / 2)


def default_schedule(workload: Workload, accel: Accelerator) -> Schedule:
    sched = Schedule(workload=workload.name, accelerator=accel.name, producer="default")
    for op in workload.ops():
        sched.mappings[op.name] = default_mapping(op, accel)
    return sched


# ----------------------------------------------------------------------------------------------


def simulate(workload: Workload, accel: Accelerator, schedule: Schedule | None = None) -> SimResult:
    """Simulate one frame of ``workload`` on ``accel`` under ``schedule`` (default: deterministic)."""
    schedule = schedule or default_schedule(workload, accel)
    missing = [op.name for op in workload.ops() if op.name not in schedule.mappings]
    if missing:
        raise MappingError(f"schedule has no mapping for {len(missing)} op(s), e.g. {missing[0]!r}")
    extra = sorted(set(schedule.mappings) - {op.name for op in workload.ops()})
    if extra:
        raise MappingError(f"schedule maps op {extra[0]!r}, which is not in workload {workload.name}")
    finish: dict[str, float] = {}
    chunk_free: dict[str, float] = {c.name: 0.0 for c in accel.chunks}
    chunk_busy: dict[str, float] = dict.fromkeys(chunk_free, 0.0)
    ops: list[OpResult] = []
    by_action = dict.fromkeys(ENERGY_KEYS, 0.0)
    by_chunk = dict.fromkeys(chunk_free, 0.0)
    for op in workload.ops():
        cost: OpCost = op_cost(op, accel, schedule.mappings[op.name])
        ready = max((finish[p] for p in workload.predecessors(op.name)), default=0.0)
        start = max(ready, chunk_free[cost.chunk])
        finish[op.name] = chunk_free[cost.chunk] = start + cost.cycles
        chunk_busy[cost.chunk] += cost.cycles
        for k, v in cost.energy_pj.items():
            by_action[k] += v
        by_chunk[cost.chunk] += cost.total_energy_pj
        ops.append(OpResult(name=op.name, kind=op.kind, chunk=cost.chunk, dataflow=cost.dataflow,
                            start_cycle=start, cycles=cost.cycles, compute_cycles=cost.compute_cycles,
                            stall_cycles=cost.stall_cycles, bound=cost.bound, macs=cost.macs,
                            hw_macs=cost.hw_macs, utilization=cost.utilization, energy_pj=cost.energy_pj,
                            accesses=cost.accesses))
    cycles = max(finish.values(), default=0.0)
    seconds = cycles / (accel.clock_mhz * 1e6)
    total = sum(by_action.values())
    by_level = {lvl: by_action[key] for key, lvl in MEMORY_LEVELS.items()}
    by_level["compute"] = sum(by_action[a] for a in COMPUTE_ACTIONS)
    by_level["leakage"] = by_action["leakage"]
    pe_total = sum(c.pes for c in accel.chunks)
    hw_macs = sum(o.hw_macs for o in ops)
    return SimResult(
        workload=workload.name, accelerator=accel.name, clock_mhz=accel.clock_mhz, cycles=cycles,
        seconds=seconds, energy_total_pj=total, energy_by_action_pj=by_action, energy_by_level_pj=by_level,
        energy_by_chunk_pj=by_chunk, edp_pj_s=total * seconds,
        utilization=hw_macs / (cycles * pe_total) if cycles else 0.0,
        stall_cycles=sum(o.stall_cycles for o in ops), macs=sum(o.macs for o in ops), hw_macs=hw_macs,
        throughput_interval_cycles=max(chunk_busy.values(), default=0.0), ops=ops,
        schedule_producer=schedule.producer)
