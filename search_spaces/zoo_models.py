"""PyTorch equivalents of the built-in workloads of ``hw_models.zoo``, so they can run on a CPU/GPU.

Each factory builds the same network as the zoo's :class:`~hw_models.zoo.NetBuilder` description:
same layers, shapes, strides and paddings, hence the same MAC counts and GEMM shapes once lowered
(``tests/test_zoo_models.py`` checks that). Shift and adder layers are the ``search_spaces`` ops
(:class:`ShiftConv2d`, :class:`AdderConv2d`) at the zoo's bit widths (8-bit activations; 5-bit shift
codes; 8-bit adder weights). BatchNorm layers are kept (the IR folds them into the conv); weights are
randomly initialised -- these models are for timing and lowering, not for accuracy.

``search_spaces`` depends on torch only: the zoo's layer lists are repeated here, not imported.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from search_spaces.adder import AdderConv2d
from search_spaces.shift import ShiftConv2d

__all__ = ["ZOO_MODELS", "zoo_model_names", "build_zoo_model", "input_shape_of", "cifar_resnet",
           "ResNet18", "MobileNetV2Cifar", "VisionTransformer", "HYBRID_BLOCK_TYPES"]

#: Block families of the NASA-style hybrid ResNet-20 (stage-major), as in ``hw_models.zoo``.
HYBRID_BLOCK_TYPES = ("conv", "shift", "adder") * 3

#: MobileNetV2 inverted-residual settings (t, c, n, s), as in torchvision and ``hw_models.zoo``.
MOBILENETV2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

ACT_BITS = 8          # activation width of the shift/adder layers (the zoo IR's 8-bit activations)
SHIFT_WEIGHT_BITS = 5  # sign + 4-bit shift code (hw_models.zoo.SHIFT_WEIGHT_BITS)
ADDER_WEIGHT_BITS = 8


def make_conv(family: str, cin: int, cout: int, k: int, stride: int = 1, padding: int | None = None,
              groups: int = 1) -> nn.Module:
    """A k x k conv of the given arithmetic family ('conv', 'shift', 'adder'), no bias (a BN follows)."""
    pad = k // 2 if padding is None else padding
    if family == "conv":
        return nn.Conv2d(cin, cout, k, stride, pad, groups=groups, bias=False)
    if family == "shift":
        return ShiftConv2d(cin, cout, k, stride, pad, groups=groups, bias=False,
                           weight_bits=SHIFT_WEIGHT_BITS, act_bits=ACT_BITS)
    if family == "adder":
        return AdderConv2d(cin, cout, k, stride, pad, groups=groups, bias=False,
                           act_bits=ACT_BITS, weight_bits=ADDER_WEIGHT_BITS)
    raise ValueError(f"unknown layer family {family!r} (conv, shift, adder)")


# ---------------------------------------------------------------------------------------------
# ResNets


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut (1x1 projection + BN when the shape changes), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, family: str = "conv") -> None:
        super().__init__()
        self.conv1 = make_conv(family, cin, cout, 3, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = make_conv(family, cout, cout, 3)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(make_conv(family, cin, cout, 1, stride, padding=0),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x if self.downsample is None else self.downsample(x)
        return F.relu(out + short)


class CifarResNet(nn.Module):
    """CIFAR ResNet-(6n+2) with option-B (projection) shortcuts; first conv and fc are multiply layers."""

    def __init__(self, depth: int = 20, block_types: str | Sequence[str] = "conv", num_classes: int = 10) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        per_stage = (depth - 2) // 6
        types = [block_types] * (3 * per_stage) if isinstance(block_types, str) else list(block_types)
        if len(types) != 3 * per_stage:
            raise ValueError(f"block_types needs {3 * per_stage} entries, got {len(types)}")
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for s, width in enumerate((16, 32, 64)):
            blocks = []
            for i in range(per_stage):
                blocks.append(BasicBlock(cin, width, 2 if s > 0 and i == 0 else 1, types[s * per_stage + i]))
                cin = width
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def cifar_resnet(depth: int = 20, block_types: str | Sequence[str] = "conv", num_classes: int = 10) -> CifarResNet:
    return CifarResNet(depth, block_types, num_classes)


class ResNet18(nn.Module):
    """torchvision ResNet-18 (1x3x224x224, 1000 classes), written out so no torchvision is needed."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for s, width in enumerate((64, 128, 256, 512)):
            blocks = []
            for i in range(2):
                blocks.append(BasicBlock(cin, width, 2 if s > 0 and i == 0 else 1))
                cin = width
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---------------------------------------------------------------------------------------------
# MobileNetV2 (CIFAR adaptation)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return out + x if self.residual else out


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 1.0 for 32x32 inputs: stem and the second setting at stride 1 (final map 4x4)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
        cin = 32
        for i, (t, c, n, s) in enumerate(MOBILENETV2_SETTINGS):
            s = 1 if i == 1 else s
            for j in range(n):
                layers.append(InvertedResidual(cin, c, s if j == 0 else 1, t))
                cin = c
        layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


# ---------------------------------------------------------------------------------------------
# Vision transformers (DeiT)


class Attention(nn.Module):
    """Multi-head self-attention with explicit QK^T and AV matmuls (no fused kernel), so the
    lowering sees the two attention GEMMs the IR has."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"{heads} heads do not divide dim {dim}")
        self.heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.matmul(q * self.scale, k.transpose(-2, -1)).softmax(dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, t, d)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT/DeiT: conv patch embedding, CLS token + positional embedding, pre-norm blocks, CLS head."""

    def __init__(self, embed_dim: int, depth: int, heads: int, image_size: int = 224, patch: int = 16,
                 mlp_ratio: float = 4.0, num_classes: int = 1000, in_chans: int = 3) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"patch {patch} does not divide image size {image_size}")
        tokens = (image_size // patch) ** 2 + 1
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, embed_dim) * 0.02)
        hidden = int(round(embed_dim * mlp_ratio))
        self.blocks = nn.Sequential(*(Block(embed_dim, heads, hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def _masked_deit_small(masks: Sequence) -> nn.Module:
    """DeiT-Small with one fixed (6, 197, 197) attention mask per block."""
    from search_spaces.vit import MaskedViT, vit_config

    model = MaskedViT(vit_config("deit-small"))
    if len(masks) != len(model.blocks):
        raise ValueError(f"deit-small needs {len(model.blocks)} attention masks, got {len(masks)}")
    for block, mask in zip(model.blocks, masks):
        block.attn.set_mask(torch.as_tensor(mask, dtype=torch.bool))
    return model


# ---------------------------------------------------------------------------------------------
# Registry (names as in hw_models.zoo.BUILTIN)

_CIFAR = (1, 3, 32, 32)
_IMAGENET = (1, 3, 224, 224)

ZOO_MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, int, int, int]]] = {
    "resnet20-conv": (lambda: cifar_resnet(20, "conv"), _CIFAR),
    "resnet20-shift": (lambda: cifar_resnet(20, "shift"), _CIFAR),
    "resnet20-adder": (lambda: cifar_resnet(20, "adder"), _CIFAR),
    "resnet20-hybrid": (lambda: cifar_resnet(20, HYBRID_BLOCK_TYPES), _CIFAR),
    "mobilenetv2-cifar": (MobileNetV2Cifar, _CIFAR),
    "resnet18": (ResNet18, _IMAGENET),
    "deit-tiny": (lambda: VisionTransformer(192, 12, 3), _IMAGENET),
    "deit-small": (lambda: VisionTransformer(384, 12, 6), _IMAGENET),
    **{f"deit-small-sparse{p}": (_masked_deit_small, _IMAGENET) for p in (50, 70, 90)},
}
#: Models whose factory takes the IR's fixed attention masks (search_spaces does not import hw_models;
#: the caller passes ``hw_models.zoo.attention_masks(workload)``).
MASKED_MODELS = frozenset(name for name in ZOO_MODELS if "-sparse" in name)


def zoo_model_names() -> list[str]:
    return list(ZOO_MODELS)


def input_shape_of(name: str) -> tuple[int, int, int, int]:
    """Batch-1 NCHW input shape of a zoo model."""
    try:
        return ZOO_MODELS[name][1]
    except KeyError:
        raise KeyError(f"no PyTorch equivalent for {name!r}; known: {', '.join(ZOO_MODELS)}") from None


def build_zoo_model(name: str, seed: int = 0, masks: Sequence | None = None) -> nn.Module:
    """A fresh, deterministically initialised model in eval mode (``masks``: see MASKED_MODELS)."""
    try:
        factory = ZOO_MODELS[name][0]
    except KeyError:
        raise KeyError(f"no PyTorch equivalent for {name!r}; known: {', '.join(ZOO_MODELS)}") from None
    if (name in MASKED_MODELS) != (masks is not None):
        raise ValueError(f"{name}: attention masks must be given exactly for {', '.join(sorted(MASKED_MODELS))}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory() if masks is None else factory(masks)
    return model.eval()
