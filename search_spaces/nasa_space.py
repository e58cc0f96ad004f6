"""The NASA hybrid search space, declared as data, and its canonical architecture record.

NASA (ICCAD 2022) searches an FBNet-style backbone of inverted-residual blocks in which every block
picks one candidate: an arithmetic type (``conv`` multiply, ``shift`` DeepShift, ``adder``
AdderNet) x a depthwise kernel {3, 5} x an expansion ratio {1, 3, 6}, or ``skip``. Adders are not
allowed in the first and last three of its 22 blocks.

Everything here is plain data until :func:`build_model` / :func:`build_block` turn it into torch
modules:

* :func:`build_space` adapts the backbone to the input resolution (a resolution *tier*):

  ======== ========== ====================================================================
  tier     input      backbone
  ======== ========== ====================================================================
  imagenet H >= 64    FBNet: stem 16 ch stride 2, stages (c, n, s) = (16,1,1) (24,4,2)
                      (32,4,2) (64,4,2) (112,4,1) (184,4,2) (352,1,1): 22 blocks, head 1984
  cifar    17..63     the same 22 blocks with stem stride 1 and the second stage at stride 1
                      (32x32 -> 4x4 before the head), as in NASA's CIFAR setting
  compact  H <= 16    6 narrow blocks (8x8 digits -> 2x2): stem 8, stages (8,1,1) (16,2,2)
                      (24,2,2) (32,1,1), head 64
  ======== ========== ====================================================================

  ``width_mult`` scales every channel count (rounded to a multiple of 4), ``depth_mult`` every
  stage's repeat count (at least 1). Adders are excluded from the first and last
  ``round(3 * blocks / 22)`` blocks (at least 1): 3 for NASA's 22 blocks.
* ``skip`` is a candidate only where the block's input and output shapes agree (stride 1, same
  width), so a skipped block is exactly the identity.
* :class:`Architecture` is the canonical record of one network: the space's key plus one candidate
  name per block, e.g. ``nasa@3x32x32/10:conv_k3_e1,shift_k5_e6,skip,...``. Its string and its JSON
  form (:meth:`Architecture.to_dict`) both rebuild the same space, torch model and (through
  ``codesign.lower``) workload IR.

Block structure (FBNet / MobileNetV2 inverted residual): 1x1 expand (omitted when e = 1) -> BN ->
ReLU -> kxk depthwise (stride s) -> BN -> ReLU -> 1x1 project -> BN, plus the input when stride is 1
and widths agree. All three convolutions of a block use the block's arithmetic type; the stem, the
1x1 head conv and the classifier are fixed multiply layers (as in DeepShift, AdderNet and NASA).
"""
from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn

__all__ = [
    "OP_TYPES", "SKIP", "KERNELS", "EXPANSIONS", "SPACE_NAMES", "DEFAULT_OP_KWARGS",
    "Candidate", "BlockSpec", "SearchSpace", "Architecture",
    "build_space", "space_from_key", "parse_architecture",
    "build_model", "build_block", "make_conv", "NasaNet", "MBBlock",
]

OP_TYPES: tuple[str, ...] = ("conv", "shift", "adder")
SKIP = "skip"
KERNELS: tuple[int, ...] = (3, 5)
EXPANSIONS: tuple[int, ...] = (1, 3, 6)
SPACE_NAMES: tuple[str, ...] = ("nasa",)
FORMAT = "codesign-arch/1"

#: (channels, repeats, stride) per stage; the stem and the head conv are fixed.
_FBNET_STAGES = ((16, 1, 1), (24, 4, 2), (32, 4, 2), (64, 4, 2), (112, 4, 1), (184, 4, 2), (352, 1, 1))
_TIERS: dict[str, dict[str, Any]] = {
    "imagenet": dict(stem=16, stem_stride=2, head=1984, stages=_FBNET_STAGES),
    "cifar": dict(stem=16, stem_stride=1, head=1984,
                  stages=tuple((c, n, 1 if i == 1 else s) for i, (c, n, s) in enumerate(_FBNET_STAGES))),
    "compact": dict(stem=8, stem_stride=1, head=64, stages=((8, 1, 1), (16, 2, 2), (24, 2, 2), (32, 1, 1))),
}
#: NASA: adders excluded from the first and last three of 22 blocks.
_NASA_ADDER_EDGE, _NASA_BLOCKS = 3, 22

#: Constructor arguments of the shift / adder layers: the precision the accelerator's chunks execute
#: (8-bit activations; shift weights sign + 4-bit exponent; adder weights 8-bit fixed point), so the
#: trained network is the one the hardware model costs. ``make_conv(..., shift={...}, adder={...})``
#: overrides them.
DEFAULT_OP_KWARGS: dict[str, dict[str, Any]] = {
    "shift": {"weight_bits": 5, "act_bits": 8},
    "adder": {"act_bits": 8, "weight_bits": 8},
}

_CAND_RE = re.compile(r"^(conv|shift|adder)_k(\d+)_e(\d+)$")
_KEY_RE = re.compile(r"^(?P<name>[a-z][a-z0-9_-]*)@(?P<c>\d+)x(?P<h>\d+)x(?P<w>\d+)/(?P<classes>\d+)"
                     r"(?:/w(?P<w_mult>[0-9.]+))?(?:/d(?P<d_mult>[0-9.]+))?$")


# ---------------------------------------------------------------------------------------------
# Candidates and blocks


@dataclass(frozen=True, order=True)
class Candidate:
    """One choice for a block: an arithmetic type x kernel x expansion, or ``skip``."""

    op_type: str
    kernel: int = 0
    expansion: int = 0

    def __post_init__(self) -> None:
        if self.op_type == SKIP:
            if self.kernel or self.expansion:
                raise ValueError("skip takes no kernel or expansion")
            return
        if self.op_type not in OP_TYPES:
            raise ValueError(f"unknown op type {self.op_type!r} (known: {', '.join(OP_TYPES)}, {SKIP})")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and >= 1, got {self.kernel}")
        if self.expansion < 1:
            raise ValueError(f"expansion must be >= 1, got {self.expansion}")

    @property
    def name(self) -> str:
        return SKIP if self.is_skip else f"{self.op_type}_k{self.kernel}_e{self.expansion}"

    @property
    def is_skip(self) -> bool:
        return self.op_type == SKIP

    @classmethod
    def parse(cls, name: str) -> "Candidate":
        """``conv_k3_e6`` / ``shift_k5_e1`` / ``adder_k3_e3`` / ``skip`` -> Candidate."""
        if name == SKIP:
            return cls(SKIP)
        m = _CAND_RE.match(str(name))
        if not m:
            raise ValueError(f"bad candidate name {name!r} (expected TYPE_kK_eE with TYPE in "
                             f"{'/'.join(OP_TYPES)}, or {SKIP!r})")
        return cls(m.group(1), int(m.group(2)), int(m.group(3)))

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class BlockSpec:
    """Position ``index`` of the backbone: its shapes and which candidates it may take.

    ``in_size`` is the (square) spatial size of the block's input feature map.
    """

    index: int
    stage: int
    in_channels: int
    out_channels: int
    stride: int
    in_size: int
    allowed_types: tuple[str, ...]
    allow_skip: bool
    kernels: tuple[int, ...] = KERNELS
    expansions: tuple[int, ...] = EXPANSIONS

    @property
    def out_size(self) -> int:
        return (self.in_size - 1) // self.stride + 1       # "same" padding, kernel odd

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        """Type-major, then kernel, then expansion; ``skip`` last. The order defines indices."""
        cands = [Candidate(t, k, e) for t in self.allowed_types for k in self.kernels for e in self.expansions]
        if self.allow_skip:
            cands.append(Candidate(SKIP))
        return tuple(cands)

    @property
    def candidate_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.candidates)

    def index_of(self, candidate: Candidate | str) -> int:
        name = candidate.name if isinstance(candidate, Candidate) else str(candidate)
        try:
            return self.candidate_names.index(name)
        except ValueError:
            raise ValueError(f"block {self.index}: {name!r} is not allowed here (allowed: "
                             f"{', '.join(self.candidate_names)})") from None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "stage": self.stage, "in_channels": self.in_channels,
                "out_channels": self.out_channels, "stride": self.stride, "in_size": self.in_size,
                "allowed_types": list(self.allowed_types), "allow_skip": self.allow_skip}


def _round_channels(c: float, divisor: int = 4) -> int:
    """Nearest multiple of ``divisor`` (never below it, never 10 % below ``c``), as MobileNet does."""
    new = max(divisor, int(c + divisor / 2) // divisor * divisor)
    if new < 0.9 * c:
        new += divisor
    return new


def _fmt_mult(x: float) -> str:
    return f"{x:g}"


# ---------------------------------------------------------------------------------------------
# The space


@dataclass(frozen=True)
class SearchSpace:
    """A backbone with per-block candidate sets. Build one with :func:`build_space`."""

    name: str
    input_shape: tuple[int, int, int]           # (C, H, W)
    num_classes: int
    width_mult: float
    depth_mult: float
    tier: str
    stem_channels: int
    stem_stride: int
    head_channels: int
    blocks: tuple[BlockSpec, ...]
    kernels: tuple[int, ...] = KERNELS
    expansions: tuple[int, ...] = EXPANSIONS

    # -- identity ---------------------------------------------------------------------------
    @property
    def key(self) -> str:
        """Canonical id; :func:`space_from_key` rebuilds the identical space from it."""
        c, h, w = self.input_shape
        key = f"{self.name}@{c}x{h}x{w}/{self.num_classes}"
        if self.width_mult != 1.0:
            key += f"/w{_fmt_mult(self.width_mult)}"
        if self.depth_mult != 1.0:
            key += f"/d{_fmt_mult(self.depth_mult)}"
        return key

    def spec(self) -> dict[str, Any]:
        """The arguments of :func:`build_space` that produce this space."""
        return {"name": self.name, "input_shape": list(self.input_shape), "num_classes": self.num_classes,
                "width_mult": self.width_mult, "depth_mult": self.depth_mult}

    def to_dict(self) -> dict[str, Any]:
        return {**self.spec(), "key": self.key, "tier": self.tier, "stem_channels": self.stem_channels,
                "stem_stride": self.stem_stride, "head_channels": self.head_channels,
                "kernels": list(self.kernels), "expansions": list(self.expansions),
                "blocks": [b.to_dict() for b in self.blocks]}

    # -- sizes ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.blocks)

    def num_candidates(self) -> list[int]:
        return [len(b.candidates) for b in self.blocks]

    @property
    def size(self) -> int:
        """Number of distinct architectures."""
        return math.prod(self.num_candidates())

    @property
    def feature_size(self) -> int:
        """Spatial size of the map entering the head conv."""
        return self.blocks[-1].out_size if self.blocks else self.stem_size

    @property
    def stem_size(self) -> int:
        return (self.input_shape[1] - 1) // self.stem_stride + 1

    # -- decoding ---------------------------------------------------------------------------
    def decode(self, choices: Sequence[int | str | Candidate]) -> "Architecture":
        """Per-block indices (into ``block.candidates``), names or Candidates -> Architecture."""
        if isinstance(choices, (str, bytes)):
            raise ValueError("decode takes one choice per block, not a string (use Architecture.from_string)")
        choices = list(choices)
        if len(choices) != len(self.blocks):
            raise ValueError(f"{self.key}: expected {len(self.blocks)} choices (one per block), got {len(choices)}")
        ops = []
        for block, choice in zip(self.blocks, choices):
            if isinstance(choice, bool):
                raise ValueError(f"block {block.index}: choice must be an index or a name, got {choice!r}")
            if isinstance(choice, int):
                n = len(block.candidates)
                if not 0 <= choice < n:
                    raise ValueError(f"block {block.index}: index {choice} out of range 0..{n - 1}")
                ops.append(block.candidates[choice].name)
            else:
                name = choice.name if isinstance(choice, Candidate) else Candidate.parse(str(choice)).name
                block.index_of(name)
                ops.append(name)
        return Architecture(self, tuple(ops))

    def encode(self, arch: "Architecture") -> tuple[int, ...]:
        """Architecture -> per-block candidate indices (the inverse of :meth:`decode`)."""
        if arch.space.key != self.key:
            raise ValueError(f"architecture of space {arch.space.key} decoded in {self.key}")
        return tuple(b.index_of(op) for b, op in zip(self.blocks, arch.ops))

    def sample(self, rng: random.Random | int | None = None) -> "Architecture":
        """A uniformly random architecture (per block, uniform over its candidates)."""
        rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        return self.decode([rng.randrange(len(b.candidates)) for b in self.blocks])

    def uniform(self, candidate: str, fallback: str | None = None) -> "Architecture":
        """Every block takes ``candidate``; blocks that do not allow it take ``fallback``."""
        ops = []
        for b in self.blocks:
            if candidate in b.candidate_names:
                ops.append(candidate)
            elif fallback is not None and fallback in b.candidate_names:
                ops.append(fallback)
            else:
                raise ValueError(f"block {b.index} allows neither {candidate!r} nor {fallback!r}")
        return Architecture(self, tuple(ops))


@lru_cache(maxsize=64)
def _build_space_cached(name: str, input_shape: tuple[int, int, int], num_classes: int,
                        width_mult: float, depth_mult: float) -> SearchSpace:
    c, h, w = input_shape
    if h >= 64:
        tier = "imagenet"
    elif h >= 17:
        tier = "cifar"
    else:
        tier = "compact"
    t = _TIERS[tier]
    stem = _round_channels(t["stem"] * width_mult)
    head = _round_channels(t["head"] * width_mult)
    stage_defs = [(_round_channels(ch * width_mult), max(1, int(round(n * depth_mult))), s)
                  for ch, n, s in t["stages"]]
    total = sum(n for _, n, _ in stage_defs)
    edge = max(1, int(round(_NASA_ADDER_EDGE * total / _NASA_BLOCKS)))
    if 2 * edge >= total:                       # keep at least one block that may use adders
        edge = max(0, (total - 1) // 2)
    size = (h - 1) // t["stem_stride"] + 1
    in_ch = stem
    blocks = []
    idx = 0
    for stage, (ch, n, s) in enumerate(stage_defs):
        for i in range(n):
            stride = s if i == 0 else 1
            if stride > 1 and size < 2:
                stride = 1                      # never shrink a 1x1 map
            adders = edge <= idx < total - edge
            types = OP_TYPES if adders else tuple(x for x in OP_TYPES if x != "adder")
            blocks.append(BlockSpec(index=idx, stage=stage, in_channels=in_ch, out_channels=ch, stride=stride,
                                    in_size=size, allowed_types=types,
                                    allow_skip=(stride == 1 and in_ch == ch)))
            size = (size - 1) // stride + 1
            in_ch = ch
            idx += 1
    return SearchSpace(name=name, input_shape=input_shape, num_classes=num_classes, width_mult=width_mult,
                       depth_mult=depth_mult, tier=tier, stem_channels=stem, stem_stride=t["stem_stride"],
                       head_channels=head, blocks=tuple(blocks))


def build_space(name: str = "nasa", input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10,
                width_mult: float = 1.0, depth_mult: float = 1.0) -> SearchSpace:
    """The named space adapted to ``input_shape`` (C, H, W); see the module docstring."""
    if name not in SPACE_NAMES:
        raise ValueError(f"unknown search space {name!r} (known: {', '.join(SPACE_NAMES)})")
    shape = tuple(int(x) for x in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {tuple(input_shape)}")
    if shape[1] != shape[2]:
        raise ValueError(f"input must be square, got {shape[1]}x{shape[2]}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    for label, mult in (("width_mult", width_mult), ("depth_mult", depth_mult)):
        if not (isinstance(mult, (int, float)) and 0 < float(mult) <= 8):
            raise ValueError(f"{label} must be in (0, 8], got {mult!r}")
    return _build_space_cached(name, shape, int(num_classes), float(width_mult), float(depth_mult))


def space_from_key(key: str) -> SearchSpace:
    """``nasa@3x32x32/10[/w0.5][/d0.5]`` -> SearchSpace."""
    m = _KEY_RE.match(str(key).strip())
    if not m:
        raise ValueError(f"bad space key {key!r} (expected NAME@CxHxW/CLASSES[/wMULT][/dMULT])")
    return build_space(m["name"], (int(m["c"]), int(m["h"]), int(m["w"])), int(m["classes"]),
                       float(m["w_mult"] or 1.0), float(m["d_mult"] or 1.0))


# ---------------------------------------------------------------------------------------------
# The architecture record


@dataclass(frozen=True)
class Architecture:
    """One network of a space: the space plus one candidate name per block (canonical record)."""

    space: SearchSpace
    ops: tuple[str, ...]

    def __post_init__(self) -> None:
        ops = tuple(str(o) for o in self.ops)
        object.__setattr__(self, "ops", ops)
        if len(ops) != len(self.space.blocks):
            raise ValueError(f"{self.space.key}: expected {len(self.space.blocks)} ops, got {len(ops)}")
        for block, op in zip(self.space.blocks, ops):
            Candidate.parse(op)
            block.index_of(op)

    # -- views ------------------------------------------------------------------------------
    @property
    def candidates(self) -> tuple[Candidate, ...]:
        return tuple(Candidate.parse(o) for o in self.ops)

    def counts(self) -> dict[str, int]:
        """Blocks per arithmetic type (and skip)."""
        out = dict.fromkeys((*OP_TYPES, SKIP), 0)
        for c in self.candidates:
            out[c.op_type] += 1
        return out

    @property
    def is_all_conv(self) -> bool:
        """True when no block uses shift or adder arithmetic (skips allowed)."""
        counts = self.counts()
        return counts["shift"] == 0 and counts["adder"] == 0

    @property
    def family(self) -> str:
        """'conv', 'shift' or 'adder' when only one type is used, else 'hybrid'."""
        used = [t for t in OP_TYPES if self.counts()[t]]
        return used[0] if len(used) == 1 else ("hybrid" if used else SKIP)

    def indices(self) -> tuple[int, ...]:
        return self.space.encode(self)

    # -- serialisation ----------------------------------------------------------------------
    def to_string(self) -> str:
        return f"{self.space.key}:{','.join(self.ops)}"

    __str__ = to_string

    def to_dict(self) -> dict[str, Any]:
        """JSON record: format, the space's spec and key, the ops and, for readers, the per-block shapes."""
        return {"format": FORMAT, "string": self.to_string(), "space": self.space.spec(),
                "space_key": self.space.key, "ops": list(self.ops),
                "blocks": [{"op": op, "in": b.in_channels, "out": b.out_channels, "stride": b.stride,
                            "in_size": b.in_size} for b, op in zip(self.space.blocks, self.ops)],
                "counts": self.counts()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_string(cls, text: str) -> "Architecture":
        key, sep, ops = str(text).strip().rpartition(":")
        if not sep or not key:
            raise ValueError(f"bad architecture string {text!r} (expected SPACE_KEY:op,op,...)")
        space = space_from_key(key)
        return space.decode([o.strip() for o in ops.split(",")] if ops else [])

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Architecture":
        if not isinstance(d, dict):
            raise ValueError(f"architecture record must be a JSON object, got {type(d).__name__}")
        if d.get("format", FORMAT) != FORMAT:
            raise ValueError(f"unknown architecture record format {d.get('format')!r} (expected {FORMAT})")
        if "space" not in d or "ops" not in d:
            if "string" in d:
                return cls.from_string(d["string"])
            raise ValueError("architecture record needs 'space' and 'ops' (or 'string')")
        spec = d["space"]
        if not isinstance(spec, dict):
            raise ValueError("architecture record: 'space' must be an object")
        try:
            space = build_space(spec.get("name", "nasa"), spec["input_shape"], spec["num_classes"],
                                spec.get("width_mult", 1.0), spec.get("depth_mult", 1.0))
        except KeyError as exc:
            raise ValueError(f"architecture record: space is missing {exc.args[0]!r}") from None
        arch = space.decode(list(d["ops"]))
        if "string" in d and d["string"] != arch.to_string():
            raise ValueError(f"architecture record is inconsistent: string {d['string']!r} != {arch.to_string()!r}")
        return arch

    @classmethod
    def from_json(cls, text: str) -> "Architecture":
        return cls.from_dict(json.loads(text))


def parse_architecture(obj: "Architecture | str | dict[str, Any]") -> Architecture:
    """An Architecture, its string or its dict (or JSON text) -> Architecture."""
    if isinstance(obj, Architecture):
        return obj
    if isinstance(obj, dict):
        return Architecture.from_dict(obj)
    text = str(obj).strip()
    if text.startswith("{"):
        return Architecture.from_json(text)
    return Architecture.from_string(text)


# ---------------------------------------------------------------------------------------------
# torch modules


def make_conv(op_type: str, in_channels: int, out_channels: int, kernel: int, stride: int = 1,
              groups: int = 1, **op_kwargs: Any) -> nn.Module:
    """A bias-free kxk ("same" padding) convolution of the given arithmetic type."""
    pad = kernel // 2
    if op_type == "conv":
        return nn.Conv2d(in_channels, out_channels, kernel, stride, pad, groups=groups, bias=False)
    if op_type == "shift":
        from search_spaces.shift import ShiftConv2d
        return ShiftConv2d(in_channels, out_channels, kernel, stride, pad, groups=groups, bias=False,
                           **{**DEFAULT_OP_KWARGS["shift"], **op_kwargs.get("shift", {})})
    if op_type == "adder":
        from search_spaces.adder import AdderConv2d
        return AdderConv2d(in_channels, out_channels, kernel, stride, pad, groups=groups, bias=False,
                           **{**DEFAULT_OP_KWARGS["adder"], **op_kwargs.get("adder", {})})
    raise ValueError(f"unknown op type {op_type!r}")


def _autocast_on() -> bool:
    """True inside a CUDA autocast region (a plain bool, so torch.fx tracing never branches on a tensor)."""
    try:
        return torch.is_autocast_enabled("cuda")
    except TypeError:                                    # older torch: no device argument
        return torch.is_autocast_enabled()


def run_conv(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``; adder layers run in float32 even under mixed precision (their |x - w| sums and
    AdderNet's gradient scaling are not meant for 16-bit floats)."""
    if _autocast_on() and getattr(conv, "ir_kind", None) == "adder_conv":
        with torch.autocast("cuda", enabled=False):
            return conv(x.float())
    return conv(x)


class MBBlock(nn.Module):
    """Inverted residual block of one arithmetic type (see the module docstring)."""

    def __init__(self, candidate: Candidate, in_channels: int, out_channels: int, stride: int,
                 **op_kwargs: Any) -> None:
        super().__init__()
        if candidate.is_skip:
            raise ValueError("MBBlock needs a compute candidate; use nn.Identity for skip")
        t, k, e = candidate.op_type, candidate.kernel, candidate.expansion
        hidden = in_channels * e
        self.candidate = candidate.name
        self.residual = stride == 1 and in_channels == out_channels
        if e != 1:
            self.expand = make_conv(t, in_channels, hidden, 1, **op_kwargs)
            self.bn1 = nn.BatchNorm2d(hidden)
            self.act1 = nn.ReLU(inplace=True)
        else:
            self.expand = self.bn1 = self.act1 = None
        self.dw = make_conv(t, hidden, hidden, k, stride, groups=hidden, **op_kwargs)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.act2 = nn.ReLU(inplace=True)
        self.project = make_conv(t, hidden, out_channels, 1, **op_kwargs)
        self.bn3 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand is not None:
            y = self.act1(self.bn1(run_conv(self.expand, y)))
        y = self.act2(self.bn2(run_conv(self.dw, y)))
        y = self.bn3(run_conv(self.project, y))
        if self.residual:
            y = y + x
        return y


def build_block(candidate: Candidate | str, in_channels: int, out_channels: int, stride: int,
                **op_kwargs: Any) -> nn.Module:
    """The standalone torch module of one block candidate (``nn.Identity`` for skip)."""
    cand = candidate if isinstance(candidate, Candidate) else Candidate.parse(candidate)
    if cand.is_skip:
        if stride != 1 or in_channels != out_channels:
            raise ValueError(f"skip needs stride 1 and equal widths, got {in_channels}->{out_channels} stride {stride}")
        return nn.Identity()
    return MBBlock(cand, in_channels, out_channels, stride, **op_kwargs)


class NasaNet(nn.Module):
    """Stem conv -> searched blocks -> 1x1 head conv -> global average pool -> linear classifier."""

    def __init__(self, arch: Architecture, **op_kwargs: Any) -> None:
        super().__init__()
        space = arch.space
        self.arch_string = arch.to_string()
        c_in = space.input_shape[0]
        self.stem = nn.Conv2d(c_in, space.stem_channels, 3, space.stem_stride, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(space.stem_channels)
        self.stem_act = nn.ReLU(inplace=True)
        self.blocks = nn.Sequential(*[build_block(op, b.in_channels, b.out_channels, b.stride, **op_kwargs)
                                      for b, op in zip(space.blocks, arch.ops)])
        last = space.blocks[-1].out_channels if space.blocks else space.stem_channels
        self.head = nn.Conv2d(last, space.head_channels, 1, bias=False)
        self.head_bn = nn.BatchNorm2d(space.head_channels)
        self.head_act = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(space.head_channels, space.num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem_bn(self.stem(x)))
        x = self.blocks(x)
        x = self.head_act(self.head_bn(self.head(x)))
        x = self.pool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _init_weights(model: nn.Module) -> None:
    """Kaiming init for multiply convs, zero-mean small init for the classifier; the shift and
    adder layers keep their own initialisation (DeepShift / AdderNet)."""
    for m in model.modules():
        if type(m) is nn.Conv2d:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def build_model(arch: Architecture | str | dict[str, Any], seed: int | None = None,
                **op_kwargs: Any) -> NasaNet:
    """The torch model of an architecture record. With ``seed``, its initial weights are a pure
    function of (record, seed). ``op_kwargs`` may hold ``shift={...}`` / ``adder={...}`` keyword
    arguments for the ShiftConv2d / AdderConv2d constructors."""
    arch = parse_architecture(arch)
    if seed is None:
        return NasaNet(arch, **op_kwargs)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return NasaNet(arch, **op_kwargs)
    finally:
        torch.random.set_rng_state(state)


def iter_blocks(arch: Architecture) -> Iterable[tuple[BlockSpec, Candidate]]:
    return zip(arch.space.blocks, arch.candidates)
