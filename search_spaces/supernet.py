"""NASA-style differentiable supernet over a :class:`~search_spaces.nasa_space.SearchSpace`.

* **Shared, channel-sliced weights.** In every block, the candidates of one arithmetic type and one
  kernel share a single set of weights sized for the largest expansion: expansion ``e`` uses the
  first ``in * e`` hidden channels of the expand, depthwise and project weights (for ``e = 1`` the
  expand conv is skipped, as in the standalone block). So a block holds 3 types x 2 kernels weight
  sets instead of 18. BatchNorm statistics are not shared: each candidate has its own BNs.
* **Gumbel-softmax architecture weights.** One logit vector ``alpha`` per block (one logit per
  candidate, in ``BlockSpec.candidates`` order). ``mode="soft"`` runs every candidate and sums the
  outputs weighted by the relaxed sample (FBNet / NASA); ``mode="hard"`` draws a one-hot sample with
  the straight-through estimator and runs only the sampled candidate, scaled by its weight (GDAS),
  which costs one path per step. The temperature ``tau`` is set by the caller (schedule in
  ``codesign.nas.differentiable``).
* **Hardware cost as an expectation.** :meth:`Supernet.expected_cost` takes a per-block table of
  candidate costs (from the hardware model) and returns sum_b sum_i w_b,i * cost_b,i with the
  weights of the last forward pass, differentiable in ``alpha``.
* **Progressive pretraining.** :meth:`Supernet.set_phase` restricts the candidates that may be
  sampled (``active`` types; skip is always active) and freezes the weights of the types not in
  ``trainable`` (their BNs too), e.g. NASA's conv+shift first, then adders with the others frozen,
  then all.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from search_spaces.adder import AdderConv2d, adder_conv2d
from search_spaces.nasa_space import (OP_TYPES, Architecture, BlockSpec, Candidate, SearchSpace, _autocast_on,
                                      _init_weights, make_conv)
from search_spaces.quant import quantize_fixed_point
from search_spaces.shift import ShiftConv2d

__all__ = ["Supernet", "SuperBlock", "SharedInvertedResidual", "sliced_conv"]

MODES = ("soft", "hard")


def _effective_weight(conv: nn.Module) -> torch.Tensor:
    """The weight tensor a conv module computes with (power-of-two for shift, quantised adders)."""
    if isinstance(conv, ShiftConv2d):
        return conv.quantized_weight()
    if isinstance(conv, AdderConv2d) and conv.weight_bits is not None:
        return quantize_fixed_point(conv.weight, conv.weight_bits, conv.weight_frac_bits)
    return conv.weight


def _effective_input(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    bits = getattr(conv, "act_bits", None)
    if isinstance(conv, (ShiftConv2d, AdderConv2d)) and bits is not None:
        return quantize_fixed_point(x, bits, conv.act_frac_bits)
    return x


def sliced_conv(conv: nn.Module, x: torch.Tensor, out_channels: int, in_channels: int, stride: int = 1,
                depthwise: bool = False) -> torch.Tensor:
    """Run ``conv`` with only its first ``out_channels`` filters over the first ``in_channels``
    input channels (depthwise: ``out_channels`` groups of one channel). Exactly what a standalone
    conv of that size with those weights computes."""
    w = _effective_weight(conv)
    if depthwise:
        w = w[:out_channels]
        groups = out_channels
    else:
        w = w[:out_channels, :in_channels]
        groups = 1
    k = w.shape[-1]
    pad = k // 2
    if isinstance(conv, AdderConv2d):
        if _autocast_on():                       # adders in float32 under mixed precision
            with torch.autocast("cuda", enabled=False):
                x = _effective_input(conv, x.float())
                return adder_conv2d(x, w.float(), None, stride, pad, 1, groups, conv.eta, conv.exact_grad)
        x = _effective_input(conv, x)
        return adder_conv2d(x, w, None, stride, pad, 1, groups, conv.eta, conv.exact_grad)
    x = _effective_input(conv, x)
    return F.conv2d(x, w, None, stride, pad, 1, groups)


class SharedInvertedResidual(nn.Module):
    """All expansions of one (type, kernel) in one block, sharing channel-sliced weights."""

    def __init__(self, op_type: str, kernel: int, expansions: Sequence[int], in_channels: int,
                 out_channels: int, stride: int, **op_kwargs: Any) -> None:
        super().__init__()
        self.op_type, self.kernel, self.stride = op_type, kernel, stride
        self.in_channels, self.out_channels = in_channels, out_channels
        self.expansions = tuple(expansions)
        e_max = max(self.expansions)
        hidden = in_channels * e_max
        self.residual = stride == 1 and in_channels == out_channels
        self.expand = (make_conv(op_type, in_channels, hidden, 1, **op_kwargs)
                       if any(e != 1 for e in self.expansions) else None)
        self.dw = make_conv(op_type, hidden, hidden, kernel, stride, groups=hidden, **op_kwargs)
        self.project = make_conv(op_type, hidden, out_channels, 1, **op_kwargs)
        self.bns = nn.ModuleDict()
        for e in self.expansions:
            h = in_channels * e
            self.bns[str(e)] = nn.ModuleList([nn.BatchNorm2d(h) if e != 1 else nn.Identity(),
                                              nn.BatchNorm2d(h), nn.BatchNorm2d(out_channels)])

    def forward(self, x: torch.Tensor, expansion: int) -> torch.Tensor:
        h = self.in_channels * expansion
        bn1, bn2, bn3 = self.bns[str(expansion)]
        y = x
        if expansion != 1:
            y = F.relu(bn1(sliced_conv(self.expand, y, h, self.in_channels)))
        y = F.relu(bn2(sliced_conv(self.dw, y, h, h, self.stride, depthwise=True)))
        y = bn3(sliced_conv(self.project, y, self.out_channels, h))
        return y + x if self.residual else y

    def export(self, expansion: int) -> dict[str, torch.Tensor]:
        """State dict of the standalone :class:`MBBlock` for this expansion (weights sliced)."""
        h = self.in_channels * expansion
        bn1, bn2, bn3 = self.bns[str(expansion)]
        out: dict[str, torch.Tensor] = {}

        def conv(prefix: str, m: nn.Module, rows: int, cols: int | None) -> None:
            for name, p in m.named_parameters(recurse=False):
                if name == "bias" or p is None:
                    continue
                t = p[:rows] if cols is None else p[:rows, :cols]
                out[f"{prefix}.{name}"] = t.detach().clone()

        def bn(prefix: str, m: nn.Module) -> None:
            for name, t in m.state_dict().items():
                out[f"{prefix}.{name}"] = t.detach().clone()

        if expansion != 1:
            conv("expand", self.expand, h, self.in_channels)
            bn("bn1", bn1)
        conv("dw", self.dw, h, None)
        bn("bn2", bn2)
        conv("project", self.project, self.out_channels, h)
        bn("bn3", bn3)
        return out


class SuperBlock(nn.Module):
    """One searchable position: shared weights per (type, kernel) and the candidate list."""

    def __init__(self, spec: BlockSpec, **op_kwargs: Any) -> None:
        super().__init__()
        self.spec = spec
        self.candidates: tuple[Candidate, ...] = spec.candidates
        self.paths = nn.ModuleDict()
        for t in spec.allowed_types:
            for k in spec.kernels:
                self.paths[f"{t}_k{k}"] = SharedInvertedResidual(t, k, spec.expansions, spec.in_channels,
                                                                 spec.out_channels, spec.stride, **op_kwargs)

    def run(self, x: torch.Tensor, index: int) -> torch.Tensor:
        c = self.candidates[index]
        if c.is_skip:
            return x
        return self.paths[f"{c.op_type}_k{c.kernel}"](x, c.expansion)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, mode: str) -> torch.Tensor:
        if mode == "hard":
            i = int(weights.argmax())
            return self.run(x, i) * weights[i]
        out = None
        for i in range(len(self.candidates)):
            w = weights[i]
            if float(w.detach()) == 0.0:     # masked candidate (inactive phase): contributes nothing
                continue
            y = self.run(x, i) * w
            out = y if out is None else out + y
        return out if out is not None else x


class Supernet(nn.Module):
    """The whole space as one network: fixed stem/head, a :class:`SuperBlock` per position."""

    def __init__(self, space: SearchSpace, mode: str = "hard", **op_kwargs: Any) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.space = space
        self.mode = mode
        self.tau = 1.0
        c_in = space.input_shape[0]
        self.stem = nn.Conv2d(c_in, space.stem_channels, 3, space.stem_stride, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(space.stem_channels)
        self.blocks = nn.ModuleList([SuperBlock(b, **op_kwargs) for b in space.blocks])
        last = space.blocks[-1].out_channels if space.blocks else space.stem_channels
        self.head = nn.Conv2d(last, space.head_channels, 1, bias=False)
        self.head_bn = nn.BatchNorm2d(space.head_channels)
        self.classifier = nn.Linear(space.head_channels, space.num_classes)
        _init_weights(self)
        self.alphas = nn.ParameterList([nn.Parameter(torch.zeros(len(b.candidates))) for b in space.blocks])
        self._masks = [torch.ones(len(b.candidates), dtype=torch.bool) for b in space.blocks]
        self._last_weights: list[torch.Tensor] | None = None
        self.fixed: list[int] | None = None      # force these candidate indices (evaluation of one arch)

    # -- parameters -------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas)

    def weight_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.alphas}
        return [p for p in self.parameters() if id(p) not in ids]

    # -- progressive phases -----------------------------------------------------------------
    def set_phase(self, active: Iterable[str] = OP_TYPES, trainable: Iterable[str] | None = None) -> None:
        """Sample only candidates of ``active`` types (skip always); train only ``trainable`` types.

        Frozen types keep their weights and BN statistics (their BNs run in eval mode).
        """
        active = tuple(active)
        trainable = tuple(active if trainable is None else trainable)
        for name in (*active, *trainable):
            if name not in OP_TYPES:
                raise ValueError(f"unknown op type {name!r} in phase (known: {', '.join(OP_TYPES)})")
        self._active, self._trainable = active, trainable
        for b, block in enumerate(self.blocks):
            mask = torch.tensor([c.is_skip or c.op_type in active for c in block.candidates])
            if not mask.any():
                raise ValueError(f"block {b}: no candidate of types {active} is allowed")
            self._masks[b] = mask
            for key, path in block.paths.items():
                path.requires_grad_(key.split("_")[0] in trainable)
        self.train(self.training)

    def train(self, mode: bool = True) -> "Supernet":
        super().train(mode)
        trainable = getattr(self, "_trainable", OP_TYPES)
        if mode:
            for block in self.blocks:
                for key, path in block.paths.items():
                    if key.split("_")[0] not in trainable:
                        path.eval()          # frozen types: keep their BN running statistics
        return self

    # -- sampling ---------------------------------------------------------------------------
    def sample_weights(self, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """One relaxed Gumbel-softmax sample per block at temperature ``tau`` (masked candidates 0).

        ``hard`` mode returns straight-through one-hot vectors (forward one-hot, gradient of the
        soft sample).
        """
        out = []
        for alpha, mask in zip(self.alphas, self._masks):
            logits = alpha.masked_fill(~mask.to(alpha.device), float("-inf"))
            u = torch.rand(logits.shape, generator=generator).to(logits.device)   # CPU draw: same on any device
            g = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))
            soft = torch.softmax((logits + g) / self.tau, dim=-1)
            if self.mode == "hard":
                hard = torch.zeros_like(soft)
                hard[int(soft.argmax())] = 1.0
                soft = hard - soft.detach() + soft
            out.append(soft)
        return out

    def probabilities(self) -> list[torch.Tensor]:
        """softmax(alpha) per block over the active candidates (no noise, no temperature)."""
        return [torch.softmax(a.masked_fill(~m.to(a.device), float("-inf")), dim=-1)
                for a, m in zip(self.alphas, self._masks)]

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        if self.fixed is not None:
            self._last_weights = None
            for block, i in zip(self.blocks, self.fixed):
                x = block.run(x, i)
        else:
            weights = self.sample_weights(generator)
            self._last_weights = weights
            for block, w in zip(self.blocks, weights):
                x = block(x, w, self.mode)
        x = F.relu(self.head_bn(self.head(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)

    # -- hardware cost ----------------------------------------------------------------------
    def expected_cost(self, table: Sequence[torch.Tensor], weights: Sequence[torch.Tensor] | None = None
                      ) -> torch.Tensor:
        """sum_b <w_b, table_b>: the expected cost under the last sample's weights (or ``weights``).

        ``table[b]`` has one row per candidate of block b (any number of cost columns); the result
        has one entry per column and is differentiable in the architecture logits.
        """
        weights = weights if weights is not None else self._last_weights
        if weights is None:
            weights = self.probabilities()
        total = None
        for w, t in zip(weights, table):
            t = t.to(w.device, w.dtype)
            term = (w.unsqueeze(-1) * t).sum(0) if t.dim() == 2 else (w * t).sum()
            total = term if total is None else total + term
        return total

    # -- the result -------------------------------------------------------------------------
    def derive(self) -> Architecture:
        """The most likely architecture: argmax of alpha per block over the active candidates."""
        idx = [int(p.argmax()) for p in self.probabilities()]
        return self.space.decode(idx)

    def fix(self, arch: Architecture | None) -> None:
        """Run exactly ``arch`` (its candidates' shared weights) until ``fix(None)``."""
        self.fixed = None if arch is None else list(self.space.encode(arch))

    def export_state(self, arch: Architecture) -> dict[str, torch.Tensor]:
        """State dict for ``build_model(arch)`` with the supernet's (sliced) weights."""
        state: dict[str, torch.Tensor] = {}
        for name in ("stem", "stem_bn", "head", "head_bn", "classifier"):
            for k, v in getattr(self, name).state_dict().items():
                state[f"{name}.{k}"] = v.detach().clone()
        for b, (block, c) in enumerate(zip(self.blocks, arch.candidates)):
            if c.is_skip:
                continue
            sub = block.paths[f"{c.op_type}_k{c.kernel}"].export(c.expansion)
            state.update({f"blocks.{b}.{k}": v for k, v in sub.items()})
        return state
