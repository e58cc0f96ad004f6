"""Quantisers with straight-through gradients, shared by the shift and adder ops.

Each forward pass computes exactly what the hardware would (fixed-point activations, signed powers
of two for shift weights), while the backward pass lets the gradient through unchanged (the
straight-through estimator, STE), as DeepShift does.
"""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["quantize_fixed_point", "round_ste", "round_power_of_two", "power_of_two_ste",
           "fixed_point_grid"]


class _FixedPointSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, bits: int, frac_bits: int) -> torch.Tensor:
        scale = 2.0 ** frac_bits
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        # One fresh tensor, then in-place ops: four passes over x, none in backward.
        return torch.mul(x, scale).round_().clamp_(lo, hi).div_(scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad, None, None


def quantize_fixed_point(x: torch.Tensor, bits: int, frac_bits: int) -> torch.Tensor:
    """Round ``x`` to signed ``bits``-bit fixed point with ``frac_bits`` fractional bits (STE).

    Values saturate at the ends of the range; the gradient passes straight through (DeepShift's
    ``round_fixed_point``).
    """
    if bits < 2:
        raise ValueError(f"fixed point needs at least 2 bits (sign + 1), got {bits}")
    return _FixedPointSTE.apply(x, int(bits), int(frac_bits))


def fixed_point_grid(bits: int, frac_bits: int) -> tuple[float, float, float]:
    """(step, smallest, largest) representable value of the fixed-point format."""
    step = 2.0 ** -frac_bits
    return step, -(2 ** (bits - 1)) * step, (2 ** (bits - 1) - 1) * step


class _RoundClampSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return torch.round(x).clamp_(lo, hi)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad, None, None


def round_ste(x: torch.Tensor, lo: float = -float("inf"), hi: float = float("inf")) -> torch.Tensor:
    """round(x) clamped to [lo, hi] in the forward pass, identity gradient (DeepShift-PS shift)."""
    return _RoundClampSTE.apply(x, lo, hi)


def round_power_of_two(w: torch.Tensor, shift_min: int, shift_max: int,
                       zero_weights: bool = True) -> torch.Tensor:
    """Round to sign(w) * 2**p, p = round(log2|w|) clamped to [shift_min, shift_max].

    Rounding is in the log domain (DeepShift-Q). With ``zero_weights`` a weight whose exponent
    rounds below ``shift_min`` becomes 0 (the encoding has a zero code); without it, it saturates
    at 2**shift_min. Exact zeros stay zero either way (sign 0).
    """
    with torch.no_grad():
        p = torch.round(torch.log2(w.abs()))
        underflow = p < shift_min
        q = torch.sign(w) * torch.exp2(p.clamp_(shift_min, shift_max))
        if zero_weights:
            q = q.masked_fill_(underflow, 0.0)
    return q


class _PowerOfTwoSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, shift_min: int, shift_max: int,
                zero_weights: bool) -> torch.Tensor:
        return round_power_of_two(w, shift_min, shift_max, zero_weights)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        return grad, None, None, None


def power_of_two_ste(w: torch.Tensor, shift_min: int, shift_max: int,
                     zero_weights: bool = True) -> torch.Tensor:
    """:func:`round_power_of_two` with a straight-through gradient (DeepShift-Q weights)."""
    return _PowerOfTwoSTE.apply(w, int(shift_min), int(shift_max), bool(zero_weights))
