"""Workload IR: a networkx DiGraph of frozen, JSON-serializable operator records.

Every compute operator has a GEMM view ``(groups, rows, reduction, cols)``: output[g, p, m] =
reduce_k f(input[g, p, k], weight[g, k, m]). The mapper, the engines and the simulator only ever see
that view plus the operand footprints, so conv, linear and attention matmuls share one cost model.

Counting is operation-accurate (DESIGN.md): a conv MAC is 1 multiply + 1 add, a shift "MAC" is
1 shift + 1 add, an adder "MAC" is 1 subtract + 1 abs + 1 add.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import networkx as nx
import numpy as np

from hw_models.errors import WorkloadError

GEMM_KINDS = frozenset({
    "conv", "shift_conv", "adder_conv",
    "linear", "shift_linear", "adder_linear",
    "matmul", "sparse_matmul",
})
VECTOR_KINDS = frozenset({"softmax", "eltwise", "pool"})
KINDS = GEMM_KINDS | VECTOR_KINDS
#: What a sparse_matmul's mask covers: the output (SDDMM) or operand A (SpMM).
MASK_TARGETS = ("out", "a")

#: Arithmetic family of each GEMM kind: what one "MAC" of it costs in operations.
FAMILY = {
    "conv": "mac", "linear": "mac", "matmul": "mac", "sparse_matmul": "mac",
    "shift_conv": "shift", "shift_linear": "shift",
    "adder_conv": "adder", "adder_linear": "adder",
}

ELTWISE_OPS = {
    # op: per-element counts (adds, subs, mults, divs, compares, exps) -- why: see docstrings below
    "add": dict(adds=1),            # residual add
    "mul": dict(mults=1),           # gating / scaling
    "relu": dict(compares=1),
    "relu6": dict(compares=2),
    "hardswish": dict(adds=1, compares=2, mults=2),   # x * relu6(x + 3) / 6
    # 0.5x(1 + tanh(c(x + 0.044715x^3))): x^3 (2), two constants (2), 0.5*x*(.) (2); tanh = 1 exp + 1 div
    "gelu": dict(mults=6, adds=4, exps=1, divs=1),
    "sigmoid": dict(exps=1, adds=1, divs=1),        # 1 / (1 + exp(-x))
    "silu": dict(exps=1, adds=1, divs=1, mults=1),  # x * sigmoid(x)
    "tanh": dict(exps=1, adds=1, subs=1, divs=1),   # (e^2x - 1) / (e^2x + 1), 2x folded into the exp
    "layernorm": dict(adds=3, subs=1, mults=2, divs=1),  # mean sum, variance sum, x-mean, square, /std, affine
    "batchnorm": dict(mults=1, adds=1),               # folded scale + shift (inference)
}


@dataclass(frozen=True)
class OpCounts:
    """Arithmetic operations an operator performs (what the network computes, not the hardware)."""

    mults: int = 0
    shifts: int = 0
    adds: int = 0
    subs: int = 0
    abs: int = 0
    compares: int = 0
    exps: int = 0
    divs: int = 0

    def __add__(self, other: "OpCounts") -> "OpCounts":
        return OpCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def scaled(self, factor: int) -> "OpCounts":
        return OpCounts(**{f.name: getattr(self, f.name) * factor for f in fields(self)})

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))


# ---------------------------------------------------------------------------------------------
# Shapes: one frozen record per family of kinds.


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution along one spatial axis (PyTorch's floor rule)."""
    return (size + 2 * padding - kernel) // stride + 1


@dataclass(frozen=True)
class ConvShape:
    """NCHW input, M output channels, KhxKw kernel; groups == C == M is depthwise."""

    n: int
    c: int
    h: int
    w: int
    m: int
    kh: int
    kw: int
    stride: int = 1
    padding: int = 0
    groups: int = 1

    def validate(self, name: str) -> None:
        _positive(name, n=self.n, c=self.c, h=self.h, w=self.w, m=self.m, kh=self.kh, kw=self.kw,
                  stride=self.stride, groups=self.groups)
        if self.padding < 0:
            raise WorkloadError(f"{name}: padding must be >= 0, got {self.padding}")
        if self.c % self.groups or self.m % self.groups:
            raise WorkloadError(f"{name}: groups={self.groups} must divide c={self.c} and m={self.m}")
        if self.out_h < 1 or self.out_w < 1:
            raise WorkloadError(f"{name}: kernel {self.kh}x{self.kw} larger than padded input {self.h}x{self.w}")

    @property
    def out_h(self) -> int:
        return conv_out(self.h, self.kh, self.stride, self.padding)

    @property
    def out_w(self) -> int:
        return conv_out(self.w, self.kw, self.stride, self.padding)

    def gemm(self) -> tuple[int, int, int, int]:
        return (self.groups, self.n * self.out_h * self.out_w,
                self.c // self.groups * self.kh * self.kw, self.m // self.groups)

    def elements(self) -> tuple[int, int, int]:
        return (self.n * self.c * self.h * self.w,
                self.m * (self.c // self.groups) * self.kh * self.kw,
                self.n * self.m * self.out_h * self.out_w)


@dataclass(frozen=True)
class LinearShape:
    """``tokens`` rows (batch x sequence) through an in_features -> out_features layer."""

    tokens: int
    in_features: int
    out_features: int

    def validate(self, name: str) -> None:
        _positive(name, tokens=self.tokens, in_features=self.in_features, out_features=self.out_features)

    def gemm(self) -> tuple[int, int, int, int]:
        return (1, self.tokens, self.in_features, self.out_features)

    def elements(self) -> tuple[int, int, int]:
        return (self.tokens * self.in_features, self.in_features * self.out_features,
                self.tokens * self.out_features)


@dataclass(frozen=True)
class MatmulShape:
    """``batch`` independent (rows x inner) @ (inner x cols) products, e.g. per attention head.

    Both operands are activations; the IR still calls the second one "weight" (operand B).
    """

    batch: int
    rows: int
    inner: int
    cols: int

    def validate(self, name: str) -> None:
        _positive(name, batch=self.batch, rows=self.rows, inner=self.inner, cols=self.cols)

    def gemm(self) -> tuple[int, int, int, int]:
        return (self.batch, self.rows, self.inner, self.cols)

    def elements(self) -> tuple[int, int, int]:
        return (self.batch * self.rows * self.inner, self.batch * self.inner * self.cols,
                self.batch * self.rows * self.cols)


@dataclass(frozen=True)
class VectorShape:
    """Element-wise work: ``elements`` outputs from ``inputs`` operand tensors of that size.

    softmax uses ``row_len`` (elements per normalised row); eltwise uses ``op`` (see ELTWISE_OPS).
    """

    elements: int
    inputs: int = 1
    op: str = ""
    row_len: int = 1

    def validate(self, name: str) -> None:
        _positive(name, elements=self.elements, inputs=self.inputs, row_len=self.row_len)

    def elements_io(self) -> tuple[int, int, int]:
        return (self.elements * self.inputs, 0, self.elements)


@dataclass(frozen=True)
class PoolShape:
    """Max or average pooling of an NCHW tensor; kernel == h == w with stride 1 is global pooling."""

    n: int
    c: int
    h: int
    w: int
    kernel: int
    stride: int
    padding: int = 0
    mode: str = "max"

    def validate(self, name: str) -> None:
        _positive(name, n=self.n, c=self.c, h=self.h, w=self.w, kernel=self.kernel, stride=self.stride)
        if not 0 <= self.padding <= self.kernel // 2:
            raise WorkloadError(f"{name}: pool padding must be in 0..kernel//2={self.kernel // 2}, got {self.padding}")
        if self.mode not in ("max", "avg"):
            raise WorkloadError(f"{name}: pool mode must be 'max' or 'avg', got {self.mode!r}")
        if self.out_h < 1 or self.out_w < 1:
            raise WorkloadError(f"{name}: pool kernel {self.kernel} larger than input {self.h}x{self.w}")

    @property
    def out_h(self) -> int:
        return conv_out(self.h, self.kernel, self.stride, self.padding)

    @property
    def out_w(self) -> int:
        return conv_out(self.w, self.kernel, self.stride, self.padding)

    def elements_io(self) -> tuple[int, int, int]:
        return (self.n * self.c * self.h * self.w, 0, self.n * self.c * self.out_h * self.out_w)


SHAPE_OF_KIND: dict[str, type] = {
    "conv": ConvShape, "shift_conv": ConvShape, "adder_conv": ConvShape,
    "linear": LinearShape, "shift_linear": LinearShape, "adder_linear": LinearShape,
    "matmul": MatmulShape, "sparse_matmul": MatmulShape,
    "softmax": VectorShape, "eltwise": VectorShape, "pool": PoolShape,
}


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _positive(name: str, **values: int) -> None:
    for key, value in values.items():
        if not _is_int(value) or value < 1:
            raise WorkloadError(f"{name}: {key} must be a positive integer, got {value!r}")


# ---------------------------------------------------------------------------------------------
# Sparse masks


@dataclass(frozen=True)
class Mask:
    """A boolean (batch, rows, cols) mask stored as packed bits in hex, so it hashes and serialises."""

    batch: int
    rows: int
    cols: int
    bits_hex: str

    @classmethod
    def from_array(cls, array: np.ndarray) -> "Mask":
        arr = np.asarray(array, dtype=bool)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise WorkloadError(f"mask must be 2-D or 3-D, got shape {arr.shape}")
        return cls(*arr.shape, np.packbits(arr.ravel()).tobytes().hex())

    def to_array(self) -> np.ndarray:
        count = self.batch * self.rows * self.cols
        bits = np.unpackbits(np.frombuffer(bytes.fromhex(self.bits_hex), dtype=np.uint8), count=count)
        return bits.astype(bool).reshape(self.batch, self.rows, self.cols)

    @property
    def nnz(self) -> int:
        return int(self.to_array().sum())


# ---------------------------------------------------------------------------------------------
# Operator node


@dataclass(frozen=True)
class OpNode:
    """One operator. ``weight_bits`` is the width of operand B (a weight, or K/V for attention).

    ``density`` (0, 1] is the fraction of the MACs a ``sparse_matmul`` performs; ``mask``, when
    given, is the exact pattern and overrides ``density``. ``mask_on`` says what it masks: ``"out"``
    the (rows x cols) output (an SDDMM such as masked Q.K^T), ``"a"`` operand A's (rows x inner)
    entries (an SpMM such as A.V with a sparse attention map). A mask of ``b`` batches serves groups
    ``g`` with ``g % b == 0``: group ``i`` uses batch ``i % b`` (e.g. per-head masks, any image batch).

    A fused codec (ViTCoD's Q/K auto-encoder) is three fields: ``out_scale`` (0, 1] scales the bytes
    of the output (an encoder at the array output, on a conv/linear), ``in_scale`` (0, 1] those of
    the activation operands read from DRAM (a decoder in front of a masked product on the sparse
    lines), and ``codec_macs`` is the encoder's or decoder's MACs, run on the op's chunk.
    """

    name: str
    kind: str
    shape: ConvShape | LinearShape | MatmulShape | VectorShape | PoolShape
    act_bits: int = 8
    weight_bits: int = 8
    out_bits: int = 8
    density: float = 1.0
    mask: Mask | None = None
    mask_on: str = "out"
    in_scale: float = 1.0
    out_scale: float = 1.0
    codec_macs: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise WorkloadError(f"{self.name}: unknown op kind {self.kind!r} (known: {', '.join(sorted(KINDS))})")
        expected = SHAPE_OF_KIND[self.kind]
        if not isinstance(self.shape, expected):
            raise WorkloadError(f"{self.name}: kind {self.kind} needs a {expected.__name__}, got {type(self.shape).__name__}")
        self.shape.validate(self.name)
        for key in ("act_bits", "weight_bits", "out_bits"):
            bits = getattr(self, key)
            if not _is_int(bits) or not 1 <= bits <= 64:
                raise WorkloadError(f"{self.name}: {key} must be an integer in 1..64, got {bits!r}")
        if not 0.0 < self.density <= 1.0:
            raise WorkloadError(f"{self.name}: density must be in (0, 1], got {self.density}")
        if self.density != 1.0 and self.kind != "sparse_matmul":
            raise WorkloadError(f"{self.name}: only sparse_matmul takes a density, {self.kind} is dense")
        if self.kind == "eltwise" and self.shape.op not in ELTWISE_OPS:
            raise WorkloadError(f"{self.name}: unknown eltwise op {self.shape.op!r} (known: {', '.join(ELTWISE_OPS)})")
        for key in ("in_scale", "out_scale"):
            if not 0.0 < getattr(self, key) <= 1.0:
                raise WorkloadError(f"{self.name}: {key} must be in (0, 1], got {getattr(self, key)}")
        if not _is_int(self.codec_macs) or self.codec_macs < 0:
            raise WorkloadError(f"{self.name}: codec_macs must be an integer >= 0, got {self.codec_macs!r}")
        if (self.in_scale != 1.0 or self.out_scale != 1.0 or self.codec_macs) and not self.is_gemm:
            raise WorkloadError(f"{self.name}: only GEMM ops take a fused codec")
        if self.in_scale != 1.0 and self.kind != "sparse_matmul":
            raise WorkloadError(f"{self.name}: in_scale (compressed operands) applies to sparse_matmul only")
        if self.mask_on not in MASK_TARGETS:
            raise WorkloadError(f"{self.name}: mask_on must be one of {', '.join(MASK_TARGETS)}, got {self.mask_on!r}")
        if self.mask is not None:
            if self.kind != "sparse_matmul":
                raise WorkloadError(f"{self.name}: only sparse_matmul takes a mask")
            g, p, k, m = self.gemm
            rows, cols = (p, m) if self.mask_on == "out" else (p, k)
            what = "output" if self.mask_on == "out" else "operand A"
            if (self.mask.rows, self.mask.cols) != (rows, cols) or g % self.mask.batch:
                raise WorkloadError(f"{self.name}: mask shape {(self.mask.batch, self.mask.rows, self.mask.cols)} "
                                    f"does not match the {what} ({g}, {rows}, {cols}) (batch must divide {g})")

    # -- GEMM view --------------------------------------------------------------------------
    @property
    def is_gemm(self) -> bool:
        return self.kind in GEMM_KINDS

    @property
    def family(self) -> str:
        """'mac', 'shift' or 'adder' for GEMM kinds, else the vector kind itself."""
        return FAMILY.get(self.kind, self.kind)

    @property
    def gemm(self) -> tuple[int, int, int, int]:
        """(groups, rows P, reduction K, cols M) of the GEMM view; raises for vector kinds."""
        if not self.is_gemm:
            raise WorkloadError(f"{self.name}: {self.kind} has no GEMM view")
        return self.shape.gemm()

    @property
    def output_density(self) -> float:
        """Fraction of the dense GEMM's MACs actually performed (1 for dense kinds)."""
        if self.kind != "sparse_matmul":
            return 1.0
        if self.mask is not None:
            arr = self.mask.to_array()
            return float(arr.sum()) / arr.size
        return self.density

    def group_masks(self) -> np.ndarray:
        """The (groups, rows, cols) mask of every GEMM group (all True without a mask)."""
        g, p, k, m = self.gemm
        if self.mask is None:
            return np.ones((g, p, m if self.mask_on == "out" else k), dtype=bool)
        arr = self.mask.to_array()
        return arr[np.arange(g) % arr.shape[0]]

    @property
    def macs(self) -> int:
        """Multiply(-like)-accumulate steps of the GEMM view; 0 for vector kinds."""
        if not self.is_gemm:
            return 0
        g, p, k, m = self.gemm
        if self.kind == "sparse_matmul":
            if self.mask is not None:
                arr = self.mask.to_array()
                per_batch = g // arr.shape[0]
                return int(arr.sum()) * per_batch * (k if self.mask_on == "out" else m)
            return int(round(g * p * m * self.density)) * k
        return g * p * k * m

    def counts(self) -> OpCounts:
        """Operation-accurate arithmetic counts."""
        if self.is_gemm:
            n = self.macs
            return {"mac": OpCounts(mults=n, adds=n), "shift": OpCounts(shifts=n, adds=n),
                    "adder": OpCounts(subs=n, abs=n, adds=n)}[self.family]
        if self.kind == "eltwise":
            return OpCounts(**ELTWISE_OPS[self.shape.op]).scaled(self.shape.elements)
        if self.kind == "softmax":
            n = self.shape.elements   # max-subtract, exp, row sum, divide; one compare per element for the max
            return OpCounts(compares=n, subs=n, exps=n, adds=n, divs=n)
        # pool
        s = self.shape
        outs = s.n * s.c * s.out_h * s.out_w
        window = s.kernel * s.kernel
        if s.mode == "max":
            return OpCounts(compares=outs * (window - 1))
        return OpCounts(adds=outs * (window - 1), mults=outs)

    # -- operand footprints -----------------------------------------------------------------
    def elements(self) -> tuple[int, int, int]:
        """Unique (input, weight, output) elements the operator reads/writes once each."""
        if self.is_gemm:
            return self.shape.elements()
        return self.shape.elements_io()

    def bytes(self) -> tuple[int, int, int]:
        """Unique (input, weight, output) bytes at the op's bit widths."""
        i, w, o = self.elements()
        return (math.ceil(i * self.act_bits / 8), math.ceil(w * self.weight_bits / 8),
                math.ceil(o * self.out_bits / 8))

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "kind": self.kind, "shape": asdict(self.shape),
             "act_bits": self.act_bits, "weight_bits": self.weight_bits, "out_bits": self.out_bits,
             "density": self.density}
        if self.mask is not None:
            d["mask"] = asdict(self.mask)
        if self.mask_on != "out":
            d["mask_on"] = self.mask_on
        for key, default in (("in_scale", 1.0), ("out_scale", 1.0), ("codec_macs", 0)):
            if getattr(self, key) != default:
                d[key] = getattr(self, key)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OpNode":
        if not isinstance(d, dict):
            raise WorkloadError(f"each op must be a JSON object, got {type(d).__name__}")
        try:
            kind = d["kind"]
            if kind not in SHAPE_OF_KIND:
                raise WorkloadError(f"{d.get('name', '?')}: unknown op kind {kind!r}")
            shape = SHAPE_OF_KIND[kind](**d["shape"])
            mask = Mask(**d["mask"]) if d.get("mask") else None
            return cls(name=d["name"], kind=kind, shape=shape, act_bits=d.get("act_bits", 8),
                       weight_bits=d.get("weight_bits", 8), out_bits=d.get("out_bits", 8),
                       density=d.get("density", 1.0), mask=mask, mask_on=d.get("mask_on", "out"),
                       in_scale=d.get("in_scale", 1.0), out_scale=d.get("out_scale", 1.0),
                       codec_macs=d.get("codec_macs", 0))
        except KeyError as exc:
            raise WorkloadError(f"op {d.get('name', '?')}: missing field {exc.args[0]!r}") from None
        except TypeError as exc:
            raise WorkloadError(f"op {d.get('name', '?')}: bad shape ({exc})") from None

    def with_bits(self, act: int | None = None, weight: int | None = None, out: int | None = None) -> "OpNode":
        return replace(self, act_bits=act or self.act_bits, weight_bits=weight or self.weight_bits,
                       out_bits=out or self.out_bits)


# ---------------------------------------------------------------------------------------------
# Workload graph


@dataclass
class Workload:
    """A named DAG of OpNodes; edges are data dependencies (producer -> consumer)."""

    name: str
    graph: nx.DiGraph = field(default_factory=nx.DiGraph)
    description: str = ""
    _order: list[OpNode] | None = field(default=None, repr=False, compare=False)

    def add(self, op: OpNode, inputs: Iterable[str] = ()) -> str:
        inputs = list(inputs)
        if op.name in self.graph:
            raise WorkloadError(f"duplicate op name {op.name!r}")
        for src in inputs:
            if src not in self.graph:
                raise WorkloadError(f"{op.name}: input {src!r} is not an op of this workload")
        self.graph.add_node(op.name, op=op)
        self.graph.add_edges_from((src, op.name) for src in inputs)
        self._order = None
        return op.name

    def replace_op(self, op: OpNode) -> None:
        """Swap the op of the same name for ``op`` (its edges stay)."""
        if op.name not in self.graph:
            raise WorkloadError(f"no op named {op.name!r} to replace")
        self.graph.nodes[op.name]["op"] = op
        self._order = None

    def __len__(self) -> int:
        return self.graph.number_of_nodes()

    def __iter__(self) -> Iterator[OpNode]:
        return iter(self.ops())

    def op(self, name: str) -> OpNode:
        return self.graph.nodes[name]["op"]

    def ops(self) -> list[OpNode]:
        """Operators in a deterministic topological order (ties broken by insertion order)."""
        if getattr(self, "_order", None) is None:
            rank = {n: i for i, n in enumerate(self.graph.nodes)}
            self._order = [self.graph.nodes[n]["op"]
                           for n in nx.lexicographical_topological_sort(self.graph, key=rank.get)]
        return list(self._order)

    def predecessors(self, name: str) -> list[str]:
        return list(self.graph.predecessors(name))

    def counts(self) -> OpCounts:
        total = OpCounts()
        for op in self.ops():
            total = total + op.counts()
        return total

    @property
    def macs(self) -> int:
        return sum(op.macs for op in self.ops())

    def kinds(self) -> set[str]:
        return {op.kind for op in self.ops()}

    # -- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": "codesign-workload/1", "name": self.name, "description": self.description,
                "ops": [{**op.to_dict(), "inputs": self.predecessors(op.name)} for op in self.ops()]}

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Workload":
        if not isinstance(d, dict) or "ops" not in d:
            raise WorkloadError("workload JSON must be an object with an 'ops' list")
        if not isinstance(d["ops"], list):
            raise WorkloadError("workload JSON: 'ops' must be a list")
        wl = cls(name=d.get("name", "workload"), description=d.get("description", ""))
        ops = [OpNode.from_dict(entry) for entry in d["ops"]]      # ops may be listed in any order
        for op in ops:
            if op.name in wl.graph:
                raise WorkloadError(f"duplicate op name {op.name!r}")
            wl.graph.add_node(op.name, op=op)
        for op, entry in zip(ops, d["ops"]):
            for src in entry.get("inputs", ()):
                if src not in wl.graph:
                    raise WorkloadError(f"{op.name}: input {src!r} is not an op of this workload")
                wl.graph.add_edge(src, op.name)
        if not nx.is_directed_acyclic_graph(wl.graph):
            cycle = " -> ".join(u for u, _ in nx.find_cycle(wl.graph))
            raise WorkloadError(f"workload graph has a cycle: {cycle}")
        return wl

    @classmethod
    def from_json(cls, path: str | Path) -> "Workload":
        p = Path(path)
        if not p.is_file():
            raise WorkloadError(f"workload file not found: {p}")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise WorkloadError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(data)
