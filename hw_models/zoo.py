"""Built-in example workloads, generated from the networks' definitions rather than typed in.

Each network is a few lines of :class:`NetBuilder` calls that mirror its PyTorch ``forward``, so the
shapes (and hence MAC counts) follow from the architecture, not from copied numbers. Inference-time
conventions: BatchNorm is folded into the preceding conv (no op emitted), activations are ``eltwise``
ops, the residual add is an ``eltwise`` ``add`` with two graph predecessors, and flatten / concat /
token selection are free (no op). Bit widths default to 8 for every operand; shift layers store
their weights as sign + 4-bit shift amount (5 bits; DeepShift shows 5 bits or fewer suffice).

``BUILTIN`` maps each name to (factory, one-line description); :func:`get_builtin` builds one.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from hw_models.errors import WorkloadError
from hw_models.workload import (ConvShape, LinearShape, Mask, MatmulShape, OpNode, PoolShape, VectorShape,
                                Workload)

#: Weight width of shift layers: 1 sign bit + 4-bit power-of-two exponent (DeepShift).
SHIFT_WEIGHT_BITS = 5

#: Arithmetic family of a layer -> the conv / linear kind that implements it.
CONV_KIND = {"conv": "conv", "shift": "shift_conv", "adder": "adder_conv"}
LINEAR_KIND = {"conv": "linear", "shift": "shift_linear", "adder": "adder_linear"}

#: MobileNetV2 inverted-residual settings (expansion t, out channels c, repeats n, first stride s).
MOBILENETV2_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)


# ---------------------------------------------------------------------------------------------
# Values flowing between ops


@dataclass(frozen=True)
class Tensor:
    """An NCHW feature map and the op that produced it (``None`` for the network input)."""

    op: str | None
    n: int
    c: int
    h: int
    w: int

    @property
    def numel(self) -> int:
        return self.n * self.c * self.h * self.w


@dataclass(frozen=True)
class Tokens:
    """A (batch, tokens, dim) token sequence, as in a transformer, and the op that produced it."""

    op: str | None
    n: int
    tokens: int
    dim: int

    @property
    def numel(self) -> int:
        return self.n * self.tokens * self.dim


Value = Tensor | Tokens


def _srcs(*values: Value) -> list[str]:
    return [v.op for v in values if v.op is not None]


# ---------------------------------------------------------------------------------------------
# Builder


class NetBuilder:
    """Appends ops to a Workload while tracking the current value's shape and producer.

    Every method takes an optional ``src`` (default: the current value), adds one op whose input
    edges come from ``src``, makes the result the current value and returns it. Save a value before
    a branch and pass it back as ``src`` (or to :meth:`add`) to build residual connections.
    """

    def __init__(self, name: str, input_shape: tuple[int, int, int, int], description: str = "",
                 act_bits: int = 8, weight_bits: int = 8, out_bits: int = 8,
                 shift_weight_bits: int = SHIFT_WEIGHT_BITS) -> None:
        self.workload = Workload(name=name, description=description)
        self.x: Value = Tensor(None, *input_shape)
        self.act_bits, self.weight_bits, self.out_bits = act_bits, weight_bits, out_bits
        self.shift_weight_bits = shift_weight_bits

    # -- plumbing -----------------------------------------------------------------------------
    def _emit(self, name: str, kind: str, shape, inputs: Sequence[Value], result: Value,
              mask: Mask | None = None, mask_on: str = "out", **codec) -> Value:
        weight_bits = self.shift_weight_bits if kind in ("shift_conv", "shift_linear") else self.weight_bits
        op = OpNode(name=name, kind=kind, shape=shape, act_bits=self.act_bits,
                    weight_bits=weight_bits, out_bits=self.out_bits, mask=mask, mask_on=mask_on, **codec)
        self.workload.add(op, _srcs(*inputs))
        self.x = replace(result, op=name)
        return self.x

    def _tensor(self, src: Value | None, name: str) -> Tensor:
        x = self.x if src is None else src
        if not isinstance(x, Tensor):
            raise WorkloadError(f"{name}: needs an NCHW feature map, got tokens")
        return x

    def _tokens(self, src: Value | None, name: str) -> Tokens:
        x = self.x if src is None else src
        if not isinstance(x, Tokens):
            raise WorkloadError(f"{name}: needs a token sequence, got an NCHW feature map")
        return x

    # -- CNN ops ------------------------------------------------------------------------------
    def conv(self, name: str, m: int, k: int, stride: int = 1, pad: int | None = None, groups: int = 1,
             kind: str = "conv", src: Value | None = None) -> Tensor:
        """k x k convolution to ``m`` channels; ``pad`` defaults to k // 2 ("same" at stride 1)."""
        if kind not in CONV_KIND.values():
            raise WorkloadError(f"{name}: conv kind must be one of {sorted(CONV_KIND.values())}, got {kind!r}")
        x = self._tensor(src, name)
        shape = ConvShape(n=x.n, c=x.c, h=x.h, w=x.w, m=m, kh=k, kw=k, stride=stride,
                          padding=k // 2 if pad is None else pad, groups=groups)
        shape.validate(name)
        return self._emit(name, kind, shape, [x], Tensor(None, x.n, m, shape.out_h, shape.out_w))

    def _fuse(self, name: str, **codec) -> None:
        """Give an emitted op a fused codec (OpNode's in_scale / out_scale / codec_macs)."""
        self.workload.replace_op(replace(self.workload.op(name), **codec))

    def act(self, name: str, op: str = "relu", src: Value | None = None) -> Value:
        """Element-wise activation / normalisation (``op`` is an ``ELTWISE_OPS`` key)."""
        x = self.x if src is None else src
        row = x.dim if op == "layernorm" and isinstance(x, Tokens) else 1   # normalised row length
        return self._emit(name, "eltwise", VectorShape(elements=x.numel, inputs=1, op=op, row_len=row), [x], x)

    def add(self, name: str, a: Value, b: Value) -> Value:
        """Residual add of two equally shaped values (two graph predecessors)."""
        if replace(a, op=None) != replace(b, op=None):
            raise WorkloadError(f"{name}: cannot add {a} and {b}: shapes differ")
        return self._emit(name, "eltwise", VectorShape(elements=a.numel, inputs=2, op="add"), [a, b], a)

    def pool(self, name: str, k: int, stride: int, pad: int = 0, mode: str = "max",
             src: Value | None = None) -> Tensor:
        x = self._tensor(src, name)
        shape = PoolShape(n=x.n, c=x.c, h=x.h, w=x.w, kernel=k, stride=stride, padding=pad, mode=mode)
        shape.validate(name)
        return self._emit(name, "pool", shape, [x], Tensor(None, x.n, x.c, shape.out_h, shape.out_w))

    def global_pool(self, name: str, mode: str = "avg", src: Value | None = None) -> Tensor:
        """Pool the whole (square) feature map to 1x1, as before a classifier."""
        x = self._tensor(src, name)
        if x.h != x.w:
            raise WorkloadError(f"{name}: global pooling needs a square map, got {x.h}x{x.w}")
        return self.pool(name, k=x.h, stride=1, mode=mode, src=x)

    # -- linear / transformer ops -------------------------------------------------------------
    def linear(self, name: str, out_features: int, kind: str = "linear", src: Value | None = None) -> Value:
        """Fully connected layer on a 1x1 feature map (after pooling) or on every token."""
        if kind not in LINEAR_KIND.values():
            raise WorkloadError(f"{name}: linear kind must be one of {sorted(LINEAR_KIND.values())}, got {kind!r}")
        x = self.x if src is None else src
        if isinstance(x, Tensor):
            if x.h != 1 or x.w != 1:
                raise WorkloadError(f"{name}: linear needs a pooled 1x1 map, got {x.h}x{x.w}")
            rows, fin, result = x.n, x.c, Tensor(None, x.n, out_features, 1, 1)
        else:
            rows, fin, result = x.n * x.tokens, x.dim, Tokens(None, x.n, x.tokens, out_features)
        return self._emit(name, kind, LinearShape(tokens=rows, in_features=fin, out_features=out_features),
                          [x], result)

    def to_tokens(self, extra: int = 0, src: Value | None = None) -> Tokens:
        """Flatten an NCHW map to h*w tokens of dim c, plus ``extra`` learned tokens (CLS); no op."""
        x = self._tensor(src, "to_tokens")
        self.x = Tokens(x.op, x.n, x.h * x.w + extra, x.c)
        return self.x

    def select_tokens(self, count: int, src: Value | None = None) -> Tokens:
        """Keep the first ``count`` tokens (e.g. the CLS token for the classifier); no op."""
        x = self._tokens(src, "select_tokens")
        if not 1 <= count <= x.tokens:
            raise WorkloadError(f"select_tokens: count must be in 1..{x.tokens}, got {count}")
        self.x = replace(x, tokens=count)
        return self.x

    def attention(self, prefix: str, heads: int, src: Value | None = None,
                  mask: np.ndarray | None = None, qk_compressed_heads: int | None = None) -> Tokens:
        """Multi-head self-attention: qkv, QK^T, softmax, AV, proj (ops named ``prefix.*``).

        With a fixed (heads, tokens, tokens) boolean ``mask`` (ViTCoD), QK^T is a ``sparse_matmul``
        masking its output (SDDMM), A.V one masking operand A (SpMM), and the softmax only
        normalises the kept scores. ``qk_compressed_heads`` adds ViTCoD's Q/K auto-encoder: the qkv
        layer's encoder writes Q and K compressed to that many heads, the QK^T's decoder restores
        them on chip (fused codecs, see :class:`OpNode`); it implies a mask (all-ones if none).
        """
        x = self._tokens(src, f"{prefix}.qkv")
        if x.dim % heads:
            raise WorkloadError(f"{prefix}: {heads} heads do not divide dim {x.dim}")
        hd, t, g = x.dim // heads, x.tokens, x.n * heads
        qkv = self.linear(f"{prefix}.qkv", 3 * x.dim, src=x)
        codec_in = {}
        if qk_compressed_heads is not None:
            if not 1 <= qk_compressed_heads <= heads:
                raise WorkloadError(f"{prefix}: compressed heads must be in 1..{heads}, got {qk_compressed_heads}")
            ratio, codec_macs = qk_compressed_heads / heads, 2 * x.n * t * x.dim * qk_compressed_heads
            self._fuse(qkv.op, out_scale=(1 + 2 * ratio) / 3, codec_macs=codec_macs)   # V is not compressed
            codec_in = {"in_scale": ratio, "codec_macs": codec_macs}
            if mask is None:
                mask = np.ones((heads, t, t), dtype=bool)
        kind, kept, packed = "matmul", g * t * t, None
        if mask is not None:
            arr = np.asarray(mask, dtype=bool)
            if arr.shape != (heads, t, t):
                raise WorkloadError(f"{prefix}: attention mask must be ({heads}, {t}, {t}), got {arr.shape}")
            kind, kept, packed = "sparse_matmul", x.n * int(arr.sum()), Mask.from_array(arr)
        scores = self._emit(f"{prefix}.qk", kind, MatmulShape(batch=g, rows=t, inner=hd, cols=t),
                            [qkv], Tokens(None, x.n, t, heads * t), mask=packed, **codec_in)
        probs = self._emit(f"{prefix}.softmax", "softmax", VectorShape(elements=kept, row_len=t),
                           [scores], scores)
        ctx = self._emit(f"{prefix}.av", kind, MatmulShape(batch=g, rows=t, inner=t, cols=hd),
                         [probs, qkv], Tokens(None, x.n, t, x.dim), mask=packed,
                         mask_on="out" if packed is None else "a")
        return self.linear(f"{prefix}.proj", x.dim, src=ctx)

    def mlp(self, prefix: str, hidden: int, act: str = "gelu", src: Value | None = None) -> Tokens:
        """Transformer feed-forward: fc1 -> activation -> fc2 (ops ``prefix.fc1/.gelu/.fc2``)."""
        x = self._tokens(src, f"{prefix}.fc1")
        self.linear(f"{prefix}.fc1", hidden, src=x)
        self.act(f"{prefix}.{act}", act)
        return self.linear(f"{prefix}.fc2", x.dim)

    def build(self) -> Workload:
        return self.workload


# ---------------------------------------------------------------------------------------------
# CNNs


def _basic_block(b: NetBuilder, prefix: str, out_ch: int, stride: int, family: str = "conv") -> Tensor:
    """ResNet BasicBlock: conv3x3-relu-conv3x3 + shortcut (1x1 projection when the shape changes)."""
    x = b.x
    kind = CONV_KIND[family]
    b.conv(f"{prefix}.conv1", out_ch, 3, stride, kind=kind)
    b.act(f"{prefix}.conv1.relu")
    main = b.conv(f"{prefix}.conv2", out_ch, 3, kind=kind)
    short = x
    if stride != 1 or x.c != out_ch:
        short = b.conv(f"{prefix}.downsample", out_ch, 1, stride, pad=0, kind=kind, src=x)
    b.add(f"{prefix}.add", main, short)
    return b.act(f"{prefix}.relu")


def cifar_resnet(name: str, depth: int = 20, block_types: str | Sequence[str] = "conv",
                 description: str = "", num_classes: int = 10) -> Workload:
    """CIFAR ResNet-(6n+2) (He et al. 2016) for 1x3x32x32 with option-B projection shortcuts.

    ``block_types`` is one family ('conv', 'shift', 'adder') for every block or one per block
    (3n entries, stage-major); it sets both 3x3 convs and the shortcut of the block. The first conv
    and the classifier stay full-precision multiply layers, as in DeepShift and AdderNet.
    """
    if depth < 8 or (depth - 2) % 6:
        raise WorkloadError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 56, ...), got {depth}")
    per_stage = (depth - 2) // 6
    types = [block_types] * (3 * per_stage) if isinstance(block_types, str) else list(block_types)
    if len(types) != 3 * per_stage or any(t not in CONV_KIND for t in types):
        raise WorkloadError(f"block_types must be {3 * per_stage} entries from {sorted(CONV_KIND)}, got {types}")
    b = NetBuilder(name, (1, 3, 32, 32), description)
    b.conv("conv1", 16, 3)
    b.act("conv1.relu")
    for s, width in enumerate((16, 32, 64)):
        for i in range(per_stage):
            stride = 2 if s > 0 and i == 0 else 1
            _basic_block(b, f"layer{s + 1}.{i}", width, stride, types[s * per_stage + i])
    b.global_pool("avgpool")
    b.linear("fc", num_classes)
    return b.build()


def resnet18(name: str = "resnet18", description: str = "", num_classes: int = 1000) -> Workload:
    """torchvision ResNet-18 for 1x3x224x224."""
    b = NetBuilder(name, (1, 3, 224, 224), description)
    b.conv("conv1", 64, 7, stride=2, pad=3)
    b.act("conv1.relu")
    b.pool("maxpool", 3, stride=2, pad=1)
    for s, width in enumerate((64, 128, 256, 512)):
        for i in range(2):
            _basic_block(b, f"layer{s + 1}.{i}", width, 2 if s > 0 and i == 0 else 1)
    b.global_pool("avgpool")
    b.linear("fc", num_classes)
    return b.build()


def mobilenetv2_cifar(name: str = "mobilenetv2-cifar", description: str = "",
                      num_classes: int = 10) -> Workload:
    """MobileNetV2 (width 1.0) for 32x32 inputs: stem and second setting at stride 1 (the common
    CIFAR adaptation, so the final map is 4x4 instead of 1x1)."""
    settings = [(t, c, n, 1 if i == 1 else s) for i, (t, c, n, s) in enumerate(MOBILENETV2_SETTINGS)]
    b = NetBuilder(name, (1, 3, 32, 32), description)
    b.conv("stem", 32, 3, stride=1)
    b.act("stem.relu6", "relu6")
    block = 0
    for t, c, n, s in settings:
        for i in range(n):
            x, stride = b.x, s if i == 0 else 1
            p = f"block{block}"
            hidden = x.c * t
            if t != 1:
                b.conv(f"{p}.expand", hidden, 1)
                b.act(f"{p}.expand.relu6", "relu6")
            b.conv(f"{p}.dw", hidden, 3, stride, groups=hidden)
            b.act(f"{p}.dw.relu6", "relu6")
            out = b.conv(f"{p}.project", c, 1)           # linear bottleneck: no activation
            if stride == 1 and x.c == c:
                b.add(f"{p}.add", out, x)
            block += 1
    b.conv("conv_last", 1280, 1)
    b.act("conv_last.relu6", "relu6")
    b.global_pool("avgpool")
    b.linear("fc", num_classes)
    return b.build()


# ---------------------------------------------------------------------------------------------
# Vision transformers


def vit(name: str, embed_dim: int, depth: int, heads: int, image_size: int = 224, patch: int = 16,
        mlp_ratio: float = 4.0, num_classes: int = 1000, cls_token: bool = True, in_chans: int = 3,
        batch: int = 1, description: str = "",
        masks: Sequence[np.ndarray] | None = None, qk_compressed_heads: int | None = None,
        keep_tokens: int | None = None) -> Workload:
    """A ViT/DeiT encoder: conv patch embedding, ``depth`` pre-norm blocks, final norm, CLS head.

    Tokens = (image_size / patch)^2 (+1 with ``cls_token``); e.g. 224/16 -> 197, 32/4 -> 65.
    ``masks``: one fixed (heads, tokens, tokens) attention mask per block (sparse attention);
    ``qk_compressed_heads``: ViTCoD's Q/K auto-encoder in every block (see ``NetBuilder.attention``);
    ``keep_tokens``: only that many tokens (CLS first) enter the blocks -- SpAtten-style token pruning
    with a uniform keep count (the importance top-k itself is not an op).
    Ops are named ``patch_embed``, ``block{i}.{norm1,attn.qkv,attn.qk,attn.softmax,attn.av,
    attn.proj,add1,norm2,mlp.fc1,mlp.gelu,mlp.fc2,add2}``, ``norm``, ``head``. The positional
    embedding add and the CLS concat are omitted (no MACs, < 0.01 % of the element-wise work).
    """
    if image_size % patch:
        raise WorkloadError(f"{name}: patch {patch} does not divide image size {image_size}")
    hidden = int(round(embed_dim * mlp_ratio))
    if masks is not None and len(masks) != depth:
        raise WorkloadError(f"{name}: {len(masks)} attention masks given for {depth} blocks")
    b = NetBuilder(name, (batch, in_chans, image_size, image_size), description)
    b.conv("patch_embed", embed_dim, patch, stride=patch, pad=0)
    x = b.to_tokens(extra=1 if cls_token else 0)
    if keep_tokens is not None:
        x = b.select_tokens(keep_tokens)
    for i in range(depth):
        p = f"block{i}"
        b.act(f"{p}.norm1", "layernorm", src=x)
        mask = None if masks is None else masks[i]
        x = b.add(f"{p}.add1", b.attention(f"{p}.attn", heads, mask=mask, qk_compressed_heads=qk_compressed_heads), x)
        b.act(f"{p}.norm2", "layernorm", src=x)
        x = b.add(f"{p}.add2", b.mlp(f"{p}.mlp", hidden), x)
    b.act("norm", "layernorm", src=x)
    b.select_tokens(1 if cls_token else b.x.tokens)
    b.linear("head", num_classes)
    return b.build()


def deit(name: str, embed_dim: int, heads: int, description: str = "", sparsity: float | None = None) -> Workload:
    """DeiT at 224x224 / patch 16 (197 tokens), depth 12, MLP ratio 4; Tiny = (192, 3), Small = (384, 6).

    With ``sparsity``, every block gets :func:`synthetic_attention_masks` (seeded by the block index).
    """
    masks = None
    if sparsity is not None:
        masks = [synthetic_attention_masks(197, heads, sparsity, seed=i, grid=14) for i in range(12)]
    return vit(name, embed_dim=embed_dim, depth=12, heads=heads, image_size=224, patch=16,
               mlp_ratio=4.0, num_classes=1000, description=description, masks=masks)


def attention_masks(workload: Workload) -> list[np.ndarray] | None:
    """The fixed (heads, tokens, tokens) mask of every masked QK^T, in order (None if there are none)."""
    masks = [op.mask.to_array() for op in workload.ops()
             if op.kind == "sparse_matmul" and op.mask is not None and op.mask_on == "out"]
    return masks or None


def synthetic_attention_masks(tokens: int, heads: int, sparsity: float, seed: int = 0,
                              grid: int | None = None) -> np.ndarray:
    """ViTCoD-shaped fixed attention masks (heads, tokens, tokens) at exactly ``sparsity``.

    **Synthetic**, for hardware studies where no trained model is at hand (DeiT-Small's weights are
    not shipped): the structure follows what ViTCoD reports for trained DeiTs -- a few global token
    columns every query keeps (the CLS token and 0-3 % of the tokens per head), each query's
    spatial neighbourhood on the ``grid`` x ``grid`` patch map (token 0 is CLS), then random
    entries favouring a few heavily attended tokens (column weights ~ u^3) -- taken in that priority order until ``round((1 - sparsity) * tokens^2)`` are kept
    (at least the diagonal: one token per row). Masks from a trained model replace these through
    ``vit(masks=...)`` (see ``search_spaces.vitcod``).
    """
    if not 0.0 <= sparsity < 1.0:
        raise WorkloadError(f"sparsity must be in [0, 1), got {sparsity}")
    rng = np.random.default_rng(seed)
    n = tokens
    keep = max(n, round((1.0 - sparsity) * n * n))
    patches = n - 1
    grid = grid or max(1, round(patches ** 0.5))
    pos = np.array([(-100, -100)] + [divmod(i, grid) for i in range(patches)])
    dist = np.abs(pos[:, None, :] - pos[None, :, :]).max(axis=2)        # Chebyshev distance on the map
    masks = np.zeros((heads, n, n), dtype=bool)
    for h in range(heads):
        globals_ = np.concatenate([[0], rng.choice(np.arange(1, n), size=int(rng.integers(0, max(1, round(0.03 * n)) + 1)),
                                                   replace=False)])
        popularity = np.sort(rng.random(n)) ** 3                       # heavy-tailed token importance
        prio = rng.random((n, n)) * rng.permutation(popularity)[None, :]  # random fill: [0, 1)
        prio += np.where(dist <= 3, 4.0 - dist, 0.0)                      # local window: (1, 4]
        prio[:, globals_] += 10.0
        np.fill_diagonal(prio, 100.0)
        flat = np.argsort(-prio, axis=None, kind="stable")[:keep]
        masks[h].flat[flat] = True
    return masks


# ---------------------------------------------------------------------------------------------
# Registry

_HYBRID_TYPES = ("conv", "shift", "adder") * 3

_DESCRIPTIONS = {
    "resnet20-conv": "CIFAR ResNet-20 (1x3x32x32), all multiply convs",
    "resnet20-shift": "CIFAR ResNet-20, block and shortcut convs as bit-shift convs (DeepShift)",
    "resnet20-adder": "CIFAR ResNet-20, block and shortcut convs as adder convs (AdderNet)",
    "resnet20-hybrid": "CIFAR ResNet-20 hybrid: blocks conv, shift, adder in every stage (NASA-style)",
    "mobilenetv2-cifar": "MobileNetV2 1.0 adapted to 32x32 CIFAR inputs, 10 classes",
    "resnet18": "torchvision ResNet-18 for 1x3x224x224, 1000 classes",
    "deit-tiny": "DeiT-Tiny: ViT with dim 192, 3 heads, depth 12, 197 tokens (224x224, patch 16)",
    "deit-small": "DeiT-Small: ViT with dim 384, 6 heads, depth 12, 197 tokens (224x224, patch 16)",
    **{f"deit-small-sparse{p}": f"DeiT-Small with fixed {p} % sparse attention (synthetic ViTCoD-shaped masks)"
       for p in (50, 70, 90)},
}


def _resnet20(name: str, types: str | Sequence[str]) -> Callable[[], Workload]:
    return lambda: cifar_resnet(name, 20, types, _DESCRIPTIONS[name])


BUILTIN: dict[str, tuple[Callable[[], Workload], str]] = {
    "resnet20-conv": (_resnet20("resnet20-conv", "conv"), _DESCRIPTIONS["resnet20-conv"]),
    "resnet20-shift": (_resnet20("resnet20-shift", "shift"), _DESCRIPTIONS["resnet20-shift"]),
    "resnet20-adder": (_resnet20("resnet20-adder", "adder"), _DESCRIPTIONS["resnet20-adder"]),
    "resnet20-hybrid": (_resnet20("resnet20-hybrid", _HYBRID_TYPES), _DESCRIPTIONS["resnet20-hybrid"]),
    "mobilenetv2-cifar": (lambda: mobilenetv2_cifar("mobilenetv2-cifar", _DESCRIPTIONS["mobilenetv2-cifar"]),
                          _DESCRIPTIONS["mobilenetv2-cifar"]),
    "resnet18": (lambda: resnet18("resnet18", _DESCRIPTIONS["resnet18"]), _DESCRIPTIONS["resnet18"]),
    "deit-tiny": (lambda: deit("deit-tiny", 192, 3, _DESCRIPTIONS["deit-tiny"]), _DESCRIPTIONS["deit-tiny"]),
    "deit-small": (lambda: deit("deit-small", 384, 6, _DESCRIPTIONS["deit-small"]), _DESCRIPTIONS["deit-small"]),
    **{name: ((lambda name=name, p=p: deit(name, 384, 6, _DESCRIPTIONS[name], sparsity=p / 100)), _DESCRIPTIONS[name])
       for p in (50, 70, 90) for name in [f"deit-small-sparse{p}"]},
}


def builtin_names() -> list[str]:
    """Names of the built-in workloads, in registry order."""
    return list(BUILTIN)


def get_builtin(name: str) -> Workload:
    """Build a fresh copy of a built-in workload (callers may mutate it freely)."""
    try:
        factory, _ = BUILTIN[name]
    except KeyError:
        raise WorkloadError(f"unknown workload {name!r}; built-in: {', '.join(BUILTIN)}") from None
    return factory()


def load_workload(spec: str | Path) -> Workload:
    """A built-in name or the path of a workload JSON file (anything ending in .json or existing)."""
    path = Path(spec)
    if path.suffix == ".json" or path.exists():
        return Workload.from_json(path)
    return get_builtin(str(spec))
