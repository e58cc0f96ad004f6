"""Bit-shift layers (DeepShift, Elhoushi et al. 2019): weights are signed powers of two.

A multiplication by ``sign * 2**p`` is a shift (and a negation) in hardware, so a shift layer costs
shifts + adds instead of multiplies + adds. The forward pass here computes exactly the network the
hardware runs -- fixed-point activations times signed powers of two -- but does it with one
``F.conv2d``/``F.linear`` call on the rounded weight tensor, so training runs at convolution speed.

Two parametrisations, as in DeepShift:

* ``mode="q"`` (DeepShift-Q): a float weight is kept and rounded to the nearest signed power of
  two (in the log domain) on every forward pass; the gradient passes straight through.
* ``mode="ps"`` (DeepShift-PS): the trainable parameters are the shift ``p`` and the sign directly,
  each rounded with a straight-through estimator; ``sign`` rounds to {-1, 0, +1}.

Weight encoding: ``weight_bits`` = 1 sign bit + (weight_bits - 1) magnitude bits. With
``zero_weights=True`` (default) one magnitude code means "zero", as in DeepShift's own code, leaving
2**(weight_bits-1) - 1 shift values (15 for 5 bits: p in [-14, 0]); with ``zero_weights=False``
all 2**(weight_bits-1) codes are shifts (16 for 5 bits: p in [-15, 0]) and no weight is zero. An
explicit ``shift_range`` must fit in the codes the bits provide, so ``ir_bits()`` never
under-charges the hardware.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from search_spaces.quant import power_of_two_ste, quantize_fixed_point, round_power_of_two, round_ste
from search_spaces.registry import register_ir_kind

__all__ = ["ShiftConv2d", "ShiftLinear", "default_shift_range"]

_MODES = ("q", "ps")


def default_shift_range(weight_bits: int, zero_weights: bool = True) -> tuple[int, int]:
    """(shift_min, shift_max) that a ``weight_bits`` sign+magnitude code can represent."""
    if weight_bits < 2:
        raise ValueError(f"weight_bits must be >= 2 (sign + shift), got {weight_bits}")
    n = 2 ** (weight_bits - 1) - (1 if zero_weights else 0)
    return -(n - 1), 0


class _ShiftMixin(nn.Module):
    """Parameters, quantisation and IR metadata shared by ShiftConv2d and ShiftLinear."""

    ir_kind: str = ""
    mode: str
    weight_bits: int
    shift_min: int
    shift_max: int
    zero_weights: bool
    act_bits: int | None
    act_frac_bits: int | None

    def _setup(self, weight_shape: tuple[int, ...], fan_in: int, bias: bool, mode: str, weight_bits: int,
               shift_range: tuple[int, int] | None, zero_weights: bool, act_bits: int | None,
               act_frac_bits: int | None) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        lo, hi = shift_range if shift_range is not None else default_shift_range(weight_bits, zero_weights)
        codes = 2 ** (weight_bits - 1) - (1 if zero_weights else 0)
        if lo > hi or hi - lo + 1 > codes:
            raise ValueError(f"shift_range {(lo, hi)} needs {hi - lo + 1} shift values but weight_bits="
                             f"{weight_bits} (zero_weights={zero_weights}) encodes only {codes}")
        if act_bits is not None and act_bits < 2:
            raise ValueError(f"act_bits must be >= 2 or None, got {act_bits}")
        self.mode, self.weight_bits, self.zero_weights = mode, int(weight_bits), bool(zero_weights)
        self.shift_min, self.shift_max = int(lo), int(hi)
        self.act_bits = None if act_bits is None else int(act_bits)
        self.act_frac_bits = (None if act_bits is None else
                              int(act_frac_bits) if act_frac_bits is not None else int(act_bits) // 2)
        # Float initialisation as nn.Conv2d/nn.Linear do; PS mode starts from its rounded version.
        w0 = torch.empty(weight_shape)
        nn.init.kaiming_uniform_(w0, a=math.sqrt(5))
        if mode == "q":
            self.weight = nn.Parameter(w0)
        else:
            q = round_power_of_two(w0, self.shift_min, self.shift_max, self.zero_weights)
            shift = torch.log2(q.abs().clamp_min(2.0 ** self.shift_min))
            self.shift = nn.Parameter(shift)
            self.sign = nn.Parameter(torch.sign(q))
        if bias:
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            self.bias = nn.Parameter(torch.empty(weight_shape[0]).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)

    def quantized_weight(self) -> torch.Tensor:
        """The weight tensor the layer computes with: exactly sign * 2**p (or 0), differentiable (STE)."""
        if self.mode == "q":
            return power_of_two_ste(self.weight, self.shift_min, self.shift_max, self.zero_weights)
        if self.training:
            # As DeepShift-PS: keep the parameters inside the representable range, else the STE lets
            # them drift where rounding no longer responds and they take many steps to come back.
            with torch.no_grad():
                self.shift.clamp_(self.shift_min, self.shift_max)
                self.sign.clamp_(-1.0, 1.0)
        shift = round_ste(self.shift, self.shift_min, self.shift_max)
        if self.zero_weights:
            sign = round_ste(self.sign, -1.0, 1.0)
        else:
            sign = _SignSTE.apply(self.sign)
        return sign * torch.exp2(shift)

    def _quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_bits is None:
            return x
        return quantize_fixed_point(x, self.act_bits, self.act_frac_bits)  # type: ignore[arg-type]

    def ir_bits(self) -> tuple[int, int]:
        """(act_bits, weight_bits) the hardware must provide; unquantised activations count as 32."""
        return (self.act_bits if self.act_bits is not None else 32, self.weight_bits)

    def _shift_repr(self) -> str:
        act = "float" if self.act_bits is None else f"{self.act_bits}b/{self.act_frac_bits}f"
        return (f"mode={self.mode}, weight_bits={self.weight_bits}, shift_range=({self.shift_min}, "
                f"{self.shift_max}), zero_weights={self.zero_weights}, act={act}")


class _SignSTE(torch.autograd.Function):
    """sign with 0 -> +1 (no zero code), identity gradient."""

    @staticmethod
    def forward(ctx: Any, s: torch.Tensor) -> torch.Tensor:
        return torch.where(s >= 0, 1.0, -1.0).to(s.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


class ShiftConv2d(_ShiftMixin):
    """2-D convolution whose weights are signed powers of two (DeepShift-Q or -PS).

    Input activations are rounded to ``act_bits`` fixed point with ``act_frac_bits`` fractional bits
    (default act_bits // 2); ``act_bits=None`` keeps them in float.
    """

    ir_kind = "shift_conv"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, bias: bool = True, *,
                 mode: str = "q", weight_bits: int = 5, shift_range: tuple[int, int] | None = None,
                 zero_weights: bool = True, act_bits: int | None = 8, act_frac_bits: int | None = None) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        fan_in = shape[1] * shape[2] * shape[3]
        self._setup(shape, fan_in, bias, mode, weight_bits, shift_range, zero_weights, act_bits, act_frac_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self._quantize_input(x), self.quantized_weight(), self.bias, self.stride,
                        self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"bias={self.bias is not None}, {self._shift_repr()}")


class ShiftLinear(_ShiftMixin):
    """Fully connected layer whose weights are signed powers of two (DeepShift-Q or -PS)."""

    ir_kind = "shift_linear"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, mode: str = "q",
                 weight_bits: int = 5, shift_range: tuple[int, int] | None = None, zero_weights: bool = True,
                 act_bits: int | None = 8, act_frac_bits: int | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._setup((out_features, in_features), in_features, bias, mode, weight_bits, shift_range,
                    zero_weights, act_bits, act_frac_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._quantize_input(x), self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {self._shift_repr()}")


register_ir_kind(ShiftConv2d, "shift_conv")
register_ir_kind(ShiftLinear, "shift_linear")
