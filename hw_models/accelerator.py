"""Accelerator description: DRAM, a shared global buffer and a list of chunks (sub-accelerators).

Loaded from YAML and validated on load; every error names the field and the reason in one line.
A preset name (``codesign hw list``) and a path to a user's YAML file are interchangeable.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from hw_models.engines.pe_array import DATAFLOWS, ArrayGeometry
from hw_models.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "presets"

#: Which IR kinds each PE type executes, and how (the arithmetic the hardware really performs).
#: A MAC PE runs shift layers as multiplies by a power of two; nothing but an adder PE has |x-w|.
PE_SUPPORTS = {
    "mac": ("conv", "linear", "matmul", "sparse_matmul", "shift_conv", "shift_linear"),
    "shift": ("shift_conv", "shift_linear"),
    "adder": ("adder_conv", "adder_linear"),
    # ViTCoD-style lines of MACs: dense GEMMs as a MAC array, masked attention on the ``csr`` dataflow
    "sparse_attention": ("conv", "linear", "matmul", "sparse_matmul", "shift_conv", "shift_linear"),
}
VECTOR_KINDS = ("softmax", "eltwise", "pool")
DEFAULT_PIPELINE = {"mac": 2, "shift": 1, "adder": 2, "sparse_attention": 2}
#: The flat CSR wave stream of :mod:`hw_models.engines.sparse_attention` (sparse_attention PEs only).
CSR_DATAFLOW = "csr"


@dataclass(frozen=True)
class DRAM:
    bandwidth_gbs: float          # GB/s, shared by all chunks
    kind: str = "lpddr4"          # selects the energy-table entry dram_<kind>


@dataclass(frozen=True)
class GlobalBuffer:
    size_kb: float
    banks: int
    bandwidth_bytes_per_cycle: int   # to all chunks together

    @property
    def size_bytes(self) -> int:
        return int(self.size_kb * 1024)


@dataclass(frozen=True)
class Chunk:
    name: str
    pe_type: str
    rows: int
    cols: int
    dataflows: tuple[str, ...] = ("os", "ws")
    act_bits: int = 8
    weight_bits: int = 8
    acc_bits: int = 32
    rf_bytes_per_pe: int = 64
    local_buffer_kb: float = 16.0
    local_bandwidth_bytes_per_cycle: int = 64
    pipeline: int = 0             # PE pipeline depth; 0 = the PE type's default
    vector_lanes: int = 0         # SIMD lanes for softmax/eltwise/pool; 0 = none
    supports: tuple[str, ...] = ()
    # sparse_attention only: ``rows`` lines of ``cols`` MACs, split into ``engines`` equal pools
    # that take whole heads; the CSR row walker reads ``rows_per_cycle`` pointers per cycle; a column
    # kept by more than ``polarize_threshold`` of the rows goes to the dense (global-token) workload
    rows_per_cycle: int = 4
    engines: int = 1
    polarize_threshold: float = 0.25
    # the chunk that runs this chunk's fused codecs (ViTCoD's encoder/decoder engine), beside the
    # op; "" = this chunk itself, after the op
    codec_engine: str = ""

    @property
    def pes(self) -> int:
        return self.rows * self.cols

    @property
    def geometry(self) -> ArrayGeometry:
        return ArrayGeometry(self.rows, self.cols, self.pipeline or DEFAULT_PIPELINE[self.pe_type])

    @property
    def local_buffer_bytes(self) -> int:
        return int(self.local_buffer_kb * 1024)

    @property
    def gemm_dataflows(self) -> tuple[str, ...]:
        """The dense dataflows (os/ws) of the PE-array contract, without ``csr``."""
        return tuple(d for d in self.dataflows if d in DATAFLOWS)

    def kinds(self) -> tuple[str, ...]:
        gemm = self.supports or PE_SUPPORTS[self.pe_type]
        if not self.gemm_dataflows:              # a csr-only sparse engine runs masked products only
            gemm = tuple(k for k in gemm if k == "sparse_matmul")
        return tuple(gemm) + (VECTOR_KINDS if self.vector_lanes else ())

    def can_run(self, kind: str) -> bool:
        return kind in self.kinds()


@dataclass(frozen=True)
class Accelerator:
    name: str
    clock_mhz: float
    dram: DRAM
    global_buffer: GlobalBuffer
    chunks: tuple[Chunk, ...]
    energy_table: str = "horowitz-45nm"
    tech_node_nm: int = 45
    description: str = ""
    source: str = ""              # file it was loaded from

    @property
    def cycle_ns(self) -> float:
        return 1e3 / self.clock_mhz

    @property
    def dram_bytes_per_cycle(self) -> float:
        return self.dram.bandwidth_gbs * 1e9 / (self.clock_mhz * 1e6)

    def chunk(self, name: str) -> Chunk:
        for c in self.chunks:
            if c.name == name:
                return c
        raise ConfigError(f"{self.name}: no chunk named {name!r} (chunks: {', '.join(c.name for c in self.chunks)})")

    def chunks_for(self, kind: str) -> list[Chunk]:
        return [c for c in self.chunks if c.can_run(kind)]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("source")
        for c in d["chunks"]:
            c["dataflows"] = list(c["dataflows"])
            c["supports"] = list(c["supports"])
            if c["pe_type"] != "sparse_attention":
                del c["rows_per_cycle"], c["engines"], c["polarize_threshold"]
            if not c["codec_engine"]:
                del c["codec_engine"]
        return d


# ----------------------------------------------------------------------------------------------
# loading and validation


def _require(section: str, data: dict, key: str, kind: type | tuple, positive: bool = True) -> Any:
    if key not in data:
        raise ConfigError(f"{section}.{key}: missing")
    value = data[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) or not isinstance(value, kinds):
        want = " or ".join(k.__name__ for k in kinds)
        raise ConfigError(f"{section}.{key}: must be {want}, got {value!r}")
    if positive and isinstance(value, (int, float)) and value <= 0:
        raise ConfigError(f"{section}.{key}: must be > 0, got {value}")
    return value


def _optional(section: str, data: dict, key: str, default: Any, kind: type | tuple, positive: bool = True) -> Any:
    return _require(section, data, key, kind, positive) if key in data else default


def _unknown(section: str, data: dict, allowed: set[str]) -> None:
    extra = sorted(set(data) - allowed)
    if extra:
        raise ConfigError(f"{section}.{extra[0]}: unknown field (allowed: {', '.join(sorted(allowed))})")


NUM = (int, float)


def _chunk_from(i: int, d: Any) -> Chunk:
    sec = f"chunks[{i}]"
    if not isinstance(d, dict):
        raise ConfigError(f"{sec}: must be a mapping")
    allowed = {"name", "pe_type", "rows", "cols", "dataflows", "act_bits", "weight_bits", "acc_bits",
               "rf_bytes_per_pe", "local_buffer_kb", "local_bandwidth_bytes_per_cycle", "pipeline",
               "vector_lanes", "supports", "rows_per_cycle", "engines", "polarize_threshold", "codec_engine"}
    _unknown(sec, d, allowed)
    name = _require(sec, d, "name", str)
    sec = f"chunks[{name}]"
    pe_type = _require(sec, d, "pe_type", str)
    if pe_type not in PE_SUPPORTS:
        raise ConfigError(f"{sec}.pe_type: unknown PE type {pe_type!r} (known: {', '.join(PE_SUPPORTS)})")
    sparse = pe_type == "sparse_attention"
    dataflows = tuple(_optional(sec, d, "dataflows", ["csr", "os"] if sparse else ["os", "ws"], list))
    for df in dataflows:
        if df == CSR_DATAFLOW and not sparse:
            raise ConfigError(f"{sec}.dataflows: only a sparse_attention chunk has the csr dataflow")
        if df not in DATAFLOWS + (CSR_DATAFLOW,):
            raise ConfigError(f"{sec}.dataflows: unknown dataflow {df!r} (known: os, ws, csr)")
    if not dataflows:
        raise ConfigError(f"{sec}.dataflows: at least one dataflow is needed")
    if not sparse and {"rows_per_cycle", "engines", "polarize_threshold"} & set(d):
        raise ConfigError(f"{sec}: rows_per_cycle, engines and polarize_threshold apply to sparse_attention "
                          "chunks only")
    supports = tuple(_optional(sec, d, "supports", [], list))
    for kind in supports:
        if kind not in PE_SUPPORTS[pe_type]:
            raise ConfigError(f"{sec}.supports: a {pe_type} PE cannot run {kind!r} "
                              f"(it can run: {', '.join(PE_SUPPORTS[pe_type])})")
    pipeline = _optional(sec, d, "pipeline", 0, int, positive=False)
    if pipeline not in (0, 1, 2):
        raise ConfigError(f"{sec}.pipeline: must be 1 or 2 (or omitted for the PE default), got {pipeline}")
    bits = {}
    for key, default in (("act_bits", 8), ("weight_bits", 8), ("acc_bits", 32)):
        bits[key] = _optional(sec, d, key, default, int)
        if bits[key] > 48:
            raise ConfigError(f"{sec}.{key}: at most 48 bits are modelled, got {bits[key]}")
    chunk = Chunk(
        name=name, pe_type=pe_type, rows=_require(sec, d, "rows", int), cols=_require(sec, d, "cols", int),
        dataflows=dataflows, **bits,
        rf_bytes_per_pe=_optional(sec, d, "rf_bytes_per_pe", 64, int),
        local_buffer_kb=float(_optional(sec, d, "local_buffer_kb", 16.0, NUM, positive=False)),
        local_bandwidth_bytes_per_cycle=_optional(sec, d, "local_bandwidth_bytes_per_cycle", 64, int),
        pipeline=pipeline, vector_lanes=_optional(sec, d, "vector_lanes", 0, int, positive=False),
        supports=supports, rows_per_cycle=_optional(sec, d, "rows_per_cycle", 4, int),
        engines=_optional(sec, d, "engines", 1, int),
        polarize_threshold=float(_optional(sec, d, "polarize_threshold", 0.25, NUM, positive=False)),
        codec_engine=_optional(sec, d, "codec_engine", "", str, positive=False))
    if not 0.0 <= chunk.polarize_threshold <= 1.0:
        raise ConfigError(f"{sec}.polarize_threshold: must be in [0, 1], got {chunk.polarize_threshold}")
    if chunk.rows % chunk.engines:
        raise ConfigError(f"{sec}.engines: {chunk.engines} engines must divide the {chunk.rows} lines (rows)")
    if chunk.vector_lanes < 0:
        raise ConfigError(f"{sec}.vector_lanes: must be >= 0, got {chunk.vector_lanes}")
    if chunk.local_buffer_kb < 0:
        raise ConfigError(f"{sec}.local_buffer_kb: must be >= 0 (0 = stream from the global buffer), "
                          f"got {chunk.local_buffer_kb}")
    return chunk


def accelerator_from_dict(data: Any, source: str = "") -> Accelerator:
    """Validate a parsed YAML mapping and build the Accelerator."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source or 'accelerator'}: top level must be a mapping of fields")
    _unknown("accelerator", data, {"name", "description", "clock_mhz", "tech_node_nm", "energy_table",
                                   "dram", "global_buffer", "chunks"})
    name = _require("accelerator", data, "name", str)
    dram_d = _require("accelerator", data, "dram", dict)
    _unknown("dram", dram_d, {"bandwidth_gbs", "kind"})
    gb_d = _require("accelerator", data, "global_buffer", dict)
    _unknown("global_buffer", gb_d, {"size_kb", "banks", "bandwidth_bytes_per_cycle"})
    chunks_raw = _require("accelerator", data, "chunks", list)
    if not chunks_raw:
        raise ConfigError("accelerator.chunks: at least one chunk is needed")
    chunks = tuple(_chunk_from(i, c) for i, c in enumerate(chunks_raw))
    names = [c.name for c in chunks]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"chunks: duplicate chunk name {sorted(dup)[0]!r}")
    for c in chunks:
        if not c.codec_engine:
            continue
        engine = next((e for e in chunks if e.name == c.codec_engine), None)
        if engine is None or engine is c or engine.pe_type not in ("mac", "sparse_attention"):
            raise ConfigError(f"chunks[{c.name}].codec_engine: must name another chunk of MAC PEs "
                              f"(chunks: {', '.join(names)}), got {c.codec_engine!r}")
    from hw_models.energy import load_table   # late import: energy imports accelerator constants
    table = _optional("accelerator", data, "energy_table", "horowitz-45nm", str)
    load_table(table)      # fail now, naming the field, if the table does not exist
    return Accelerator(
        name=name,
        clock_mhz=float(_require("accelerator", data, "clock_mhz", NUM)),
        dram=DRAM(bandwidth_gbs=float(_require("dram", dram_d, "bandwidth_gbs", NUM)),
                  kind=_optional("dram", dram_d, "kind", "lpddr4", str)),
        global_buffer=GlobalBuffer(size_kb=float(_require("global_buffer", gb_d, "size_kb", NUM)),
                                   banks=_require("global_buffer", gb_d, "banks", int),
                                   bandwidth_bytes_per_cycle=_require("global_buffer", gb_d,
                                                                      "bandwidth_bytes_per_cycle", int)),
        chunks=chunks, energy_table=table,
        tech_node_nm=_optional("accelerator", data, "tech_node_nm", 45, int),
        description=_optional("accelerator", data, "description", "", str, positive=False),
        source=source)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_accelerator(name_or_path: str | Path) -> Accelerator:
    """Load a preset by name or a YAML file by path."""
    text_path = Path(name_or_path)
    if text_path.suffix in (".yaml", ".yml") or text_path.exists():
        path = text_path
        if not path.is_file():
            raise ConfigError(f"accelerator file not found: {path}")
    else:
        path = PRESET_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown accelerator {str(name_or_path)!r}; presets: {', '.join(preset_names())} "
                              "(or give a path to a .yaml file)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: malformed YAML{where} ({getattr(exc, 'problem', exc)})") from None
    return accelerator_from_dict(data, source=str(path))
