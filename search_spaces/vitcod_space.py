"""The ViTCoD search space, declared as data, and its architecture record.

A point of the space is a dense pretrained :class:`~search_spaces.vit.MaskedViT` (fixed per search)
plus three choices:

* ``mask_rule`` (:data:`MASK_RULES`): how the fixed attention masks are made from the pretrained
  model's averaged attention maps -- ``dense`` (no mask), ``sparsity-S`` (ViTCoD's rule by target
  sparsity S, :func:`search_spaces.vitcod.sparsity_mask`) or ``info_cut-C`` (ViTCoD's ``info_cutoff``
  rule, :func:`search_spaces.vitcod.info_cut_mask`); the CLS row/column are always kept, so the
  reached sparsity can be below the target on few tokens (:attr:`ViTCoDArch.sparsity` says what it is);
* ``qk_compressed_heads``: the Q/K auto-encoder across heads -- None (0 in the trial parameters) or
  1..heads-1 compressed heads (:func:`ae_choices`);
* ``polarize_threshold`` (:data:`POLARIZE_THRESHOLDS`): the hardware's dense/sparse split -- columns
  kept by more than this fraction of the queries run on the denser (global-token) workload, the rest
  as CSR on the sparser one. It changes no number the network computes; it is part of the record
  because the hardware cost depends on it. Without masks it is meaningless and stored as None.

:class:`ViTCoDArch` is the record (format ``codesign-arch-vitcod/1``): the ViT configuration, the
rule, the masks themselves (packed bits, :func:`pack_masks`), the auto-encoder width, the threshold
and the reached sparsity. :func:`build_model` rebuilds the PyTorch model from it; the workload IR is
built by ``codesign.nas.vitcod_space.workload_from_record`` (``hw_models.zoo.vit``), since this
package does not import ``hw_models``. Depends on torch (and the standard library) only.
"""
from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass
from typing import Any

import torch

from search_spaces.vit import MaskedViT, ViTConfig
from search_spaces.vitcod import generate_masks, mask_sparsity

__all__ = ["SPACE_NAME", "RECORD_FORMAT", "MASK_RULES", "POLARIZE_THRESHOLDS", "MASK_ENCODING", "parse_rule",
           "masks_for_rule", "ae_choices", "pack_masks", "unpack_masks", "ViTCoDArch", "is_vitcod_record",
           "build_model"]

SPACE_NAME = "vitcod"
RECORD_FORMAT = "codesign-arch-vitcod/1"
#: Mask rules, in the order of the trial's categorical parameter ("dense" is the unmasked model).
MASK_RULES: tuple[str, ...] = ("dense", *(f"sparsity-{s}" for s in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)),
                               *(f"info_cut-{c}" for c in (0.8, 0.9, 0.95)))
#: Dense/sparse split thresholds of the accelerator's sparse_attention chunk.
POLARIZE_THRESHOLDS: tuple[float, ...] = (0.1, 0.25, 0.5)
#: numpy.packbits bit order (first mask entry = most significant bit of byte 0), zlib, base64.
MASK_ENCODING = "packbits+zlib+base64"


def parse_rule(rule: str) -> tuple[str, float | None]:
    """``dense`` -> ("dense", None); ``sparsity-0.9`` -> ("sparsity", 0.9); ``info_cut-0.8`` -> ("info_cut", 0.8)."""
    if rule == "dense":
        return "dense", None
    kind, _, value = str(rule).partition("-")
    try:
        v = float(value)
    except ValueError:
        v = float("nan")
    if kind == "sparsity" and 0.0 <= v <= 1.0 or kind == "info_cut" and v >= 0.0:
        return kind, v
    raise ValueError(f"unknown mask rule {rule!r} (dense, sparsity-S with S in [0, 1], or info_cut-C with C >= 0; "
                     f"searched: {', '.join(MASK_RULES)})")


def masks_for_rule(maps: torch.Tensor, rule: str) -> torch.Tensor | None:
    """Masks (depth, H, N, N) bool for averaged attention maps by ``rule``; None for ``dense``."""
    kind, value = parse_rule(rule)
    if kind == "dense":
        return None
    return generate_masks(maps, **{kind: value}).bool()


def ae_choices(heads: int) -> tuple[int, ...]:
    """The auto-encoder choices: 0 = none, then 1..heads-1 compressed heads."""
    return tuple(range(heads))


def pack_masks(masks: torch.Tensor | None) -> dict[str, Any] | None:
    """A bool tensor -> {"shape", "encoding", "data"} (see :data:`MASK_ENCODING`)."""
    if masks is None:
        return None
    m = torch.as_tensor(masks).bool().cpu()
    flat = m.reshape(-1).to(torch.uint8)
    flat = torch.cat([flat, torch.zeros((-flat.numel()) % 8, dtype=torch.uint8)])
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.int64)
    packed = (flat.view(-1, 8).to(torch.int64) * weights).sum(1).to(torch.uint8)
    raw = bytes(packed.tolist())
    return {"shape": list(m.shape), "encoding": MASK_ENCODING,
            "data": base64.b64encode(zlib.compress(raw, 9)).decode("ascii")}


def unpack_masks(packed: dict[str, Any] | None) -> torch.Tensor | None:
    """The inverse of :func:`pack_masks`."""
    if packed is None:
        return None
    if packed.get("encoding") != MASK_ENCODING:
        raise ValueError(f"unknown mask encoding {packed.get('encoding')!r} (expected {MASK_ENCODING})")
    shape = tuple(int(s) for s in packed["shape"])
    raw = zlib.decompress(base64.b64decode(packed["data"]))
    n = 1
    for s in shape:
        n *= s
    if len(raw) != (n + 7) // 8:
        raise ValueError(f"mask data holds {len(raw)} bytes, shape {shape} needs {(n + 7) // 8}")
    b = torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(torch.int64)
    bits = (b.unsqueeze(1) >> torch.arange(7, -1, -1)) & 1
    return bits.reshape(-1)[:n].bool().reshape(shape)


def _fmt(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True, eq=False)
class ViTCoDArch:
    """A ViTCoD architecture record: ViT body + fixed masks + Q/K auto-encoder + dense/sparse split."""

    vit: ViTConfig                               # qk_compressed_heads of the config = the auto-encoder
    mask_rule: str = "dense"
    masks: torch.Tensor | None = None            # (depth, heads, tokens, tokens) bool
    polarize_threshold: float | None = None

    def __post_init__(self) -> None:
        kind, _ = parse_rule(self.mask_rule)
        if (kind == "dense") != (self.masks is None):
            raise ValueError(f"mask rule {self.mask_rule!r} " + ("takes no masks" if kind == "dense" else "needs masks"))
        if self.masks is not None:
            m = torch.as_tensor(self.masks).bool().cpu()
            want = (self.vit.depth, self.vit.heads, self.vit.tokens, self.vit.tokens)
            if tuple(m.shape) != want:
                raise ValueError(f"masks must be {want} (depth, heads, tokens, tokens), got {tuple(m.shape)}")
            object.__setattr__(self, "masks", m)
        t = self.polarize_threshold
        if self.masks is None:
            object.__setattr__(self, "polarize_threshold", None)
        elif t is None or not 0.0 <= float(t) <= 1.0:
            raise ValueError(f"polarize_threshold must be in [0, 1] with masks, got {t!r}")
        else:
            object.__setattr__(self, "polarize_threshold", float(t))
        c = self.vit.qk_compressed_heads
        if c is not None and not 1 <= c < self.vit.heads:
            raise ValueError(f"qk_compressed_heads must be in 1..{self.vit.heads - 1} (or None), got {c}")

    # -- derived --------------------------------------------------------------------------------
    @property
    def qk_compressed_heads(self) -> int | None:
        return self.vit.qk_compressed_heads

    @property
    def dense_vit(self) -> ViTConfig:
        """The body without the auto-encoder (what the search pretrains)."""
        from dataclasses import replace
        return replace(self.vit, qk_compressed_heads=None)

    @property
    def sparsity(self) -> float:
        """Reached attention sparsity (fraction of masked-out scores; 0 without masks)."""
        return 0.0 if self.masks is None else mask_sparsity(self.masks)

    @property
    def family(self) -> str:
        base = "dense" if self.masks is None else "sparse"
        return base + ("+ae" if self.qk_compressed_heads else "")

    @property
    def model_key(self) -> str:
        c = self.vit
        return (f"vit{c.image_size}p{c.patch}c{c.in_chans}-d{c.embed_dim}x{c.depth}h{c.heads}"
                f"m{_fmt(c.mlp_ratio)}-{c.num_classes}")

    def network_key(self) -> str:
        """Everything that changes the network's numbers (not the hardware split)."""
        return f"{SPACE_NAME}:{self.model_key}:{self.mask_rule}:ae{self.qk_compressed_heads or 0}"

    def to_string(self) -> str:
        pt = "-" if self.polarize_threshold is None else _fmt(self.polarize_threshold)
        return f"{self.network_key()}:pt{pt}"

    def to_dict(self) -> dict[str, Any]:
        return {"format": RECORD_FORMAT, "space": SPACE_NAME, "string": self.to_string(), "family": self.family,
                "vit": self.vit.to_dict(), "mask_rule": self.mask_rule, "masks": pack_masks(self.masks),
                "qk_compressed_heads": self.qk_compressed_heads, "polarize_threshold": self.polarize_threshold,
                "sparsity": self.sparsity}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ViTCoDArch":
        if not is_vitcod_record(d):
            raise ValueError(f"not a ViTCoD record (format {d.get('format')!r})")
        vit = dict(d["vit"])
        if "qk_compressed_heads" in d:
            vit["qk_compressed_heads"] = d["qk_compressed_heads"]
        return cls(ViTConfig(**vit), d.get("mask_rule", "dense"), unpack_masks(d.get("masks")),
                   d.get("polarize_threshold"))


def is_vitcod_record(d: Any) -> bool:
    return isinstance(d, dict) and (str(d.get("format", "")).startswith("codesign-arch-vitcod")
                                    or d.get("space") == SPACE_NAME and isinstance(d.get("vit"), dict))


def build_model(arch: ViTCoDArch | dict[str, Any], seed: int | None = 0,
                state_dict: dict[str, torch.Tensor] | None = None) -> MaskedViT:
    """The record's :class:`MaskedViT` with its masks set (and auto-encoders when the record has them);
    random weights from ``seed`` unless ``state_dict`` (e.g. the search's fine-tuned weights) is given."""
    if isinstance(arch, dict):
        arch = ViTCoDArch.from_dict(arch)
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MaskedViT(arch.vit)
    else:
        model = MaskedViT(arch.vit)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    model.set_attention_masks(None if arch.masks is None else list(arch.masks))
    return model

