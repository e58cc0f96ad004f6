"""Schedule: for every operator, its chunk, dataflow, tiling per memory level, loop order and the
predicted cycles/energy. JSON-serializable; ``codesign simulate --schedule`` reloads it."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from itertools import permutations
from pathlib import Path
from typing import Any

from hw_models.errors import WorkloadError

LOOP_ORDERS = tuple("".join(p) for p in permutations("pkm"))


@dataclass(frozen=True)
class OpMapping:
    """How one operator runs.

    GEMM ops (view ``G x (P x K) @ (K x M)``):
      * ``gb_tile`` = (p, k, m): the block of one group held in the global buffer (DRAM level);
      * ``loop_order``: order of the DRAM-level loops over those blocks, outermost first, a
        permutation of "pkm" (groups are always outermost);
      * ``array_tile`` = (m, n, k) of the engine contract: OS tiles cover m <= rows output rows,
        n <= cols output columns and k reduction steps; WS tiles hold k <= rows x n <= cols weights
        and stream m rows.
    Vector ops (softmax, eltwise, pool): ``gb_tile`` = (elements per block, 0, 0), dataflow "vector".
    """

    op: str
    chunk: str
    dataflow: str
    gb_tile: tuple[int, int, int]
    array_tile: tuple[int, int, int] = (0, 0, 0)
    loop_order: str = "pkm"
    predicted_cycles: float | None = None
    predicted_energy_pj: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gb_tile"], d["array_tile"] = list(self.gb_tile), list(self.array_tile)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OpMapping":
        try:
            return cls(op=d["op"], chunk=d["chunk"], dataflow=d["dataflow"],
                       gb_tile=tuple(int(x) for x in d["gb_tile"]),
                       array_tile=tuple(int(x) for x in d.get("array_tile", (0, 0, 0))),
                       loop_order=d.get("loop_order", "pkm"),
                       predicted_cycles=d.get("predicted_cycles"),
                       predicted_energy_pj=d.get("predicted_energy_pj"))
        except (KeyError, TypeError, ValueError) as exc:
            raise WorkloadError(f"schedule entry {d.get('op', '?') if isinstance(d, dict) else d!r}: "
                                f"malformed ({exc})") from None

    def with_prediction(self, cycles: float, energy_pj: float) -> "OpMapping":
        return replace(self, predicted_cycles=cycles, predicted_energy_pj=energy_pj)


@dataclass
class Schedule:
    workload: str
    accelerator: str
    mappings: dict[str, OpMapping] = field(default_factory=dict)
    mode: str = "latency"         # "latency": one frame, ops in dependency order; "throughput": pipelined frames
    objective: str = "edp"
    producer: str = "default"     # what made it: "default", "mapper", ...

    def __getitem__(self, op_name: str) -> OpMapping:
        return self.mappings[op_name]

    def to_dict(self) -> dict[str, Any]:
        return {"format": "codesign-schedule/1", "workload": self.workload, "accelerator": self.accelerator,
                "mode": self.mode, "objective": self.objective, "producer": self.producer,
                "mappings": [m.to_dict() for m in self.mappings.values()]}

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Schedule":
        if not isinstance(d, dict) or not isinstance(d.get("mappings"), list):
            raise WorkloadError("schedule JSON must be an object with a 'mappings' list")
        mappings = [OpMapping.from_dict(m) for m in d["mappings"]]
        return cls(workload=d.get("workload", ""), accelerator=d.get("accelerator", ""),
                   mappings={m.op: m for m in mappings}, mode=d.get("mode", "latency"),
                   objective=d.get("objective", "edp"), producer=d.get("producer", "file"))

    @classmethod
    def from_json(cls, path: str | Path) -> "Schedule":
        p = Path(path)
        if not p.is_file():
            raise WorkloadError(f"schedule file not found: {p}")
        try:
            return cls.from_dict(json.loads(p.read_text()))
        except json.JSONDecodeError as exc:
            raise WorkloadError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
