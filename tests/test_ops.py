"""Multiplication-reduced ops: shift (DeepShift) and adder (AdderNet) layers and the IR-kind registry.

The adder layers use AdderNet's gradients, which are not the true gradients of |x - w|, so they
are checked against slow, explicit implementations of AdderNet's formulas; the true-gradient
option (``exact_grad=True``) is checked with torch.autograd.gradcheck.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import search_spaces
from search_spaces import (AdderConv2d, AdderLinear, ShiftConv2d, ShiftLinear, adder_conv2d, adder_linear,
                           ir_kind_of, register_ir_kind, use_adder_backend)
from search_spaces import _adder_native, _adder_triton
from search_spaces import adder as adder_mod
from search_spaces.quant import fixed_point_grid, quantize_fixed_point, round_power_of_two
from search_spaces.registry import IR_KINDS
from search_spaces.shift import default_shift_range

NATIVE = _adder_native.available() if _adder_native.backend_env() != "torch" else False
BACKENDS = ["torch", pytest.param("native", marks=pytest.mark.skipif(not NATIVE, reason="no C++ compiler"))]
# The Triton kernels run here under Triton's CPU interpreter; CI does not install triton.
needs_triton = pytest.mark.skipif(not _adder_triton.importable(),
                                  reason="triton not installed (pip install '.[cuda]')")


# ---------------------------------------------------------------------------------------------
# registry

def test_ir_kind_registry() -> None:
    assert ir_kind_of(ShiftConv2d(4, 4, 3)) == "shift_conv"
    assert ir_kind_of(ShiftLinear(4, 4)) == "shift_linear"
    assert ir_kind_of(AdderConv2d(4, 4, 3)) == "adder_conv"
    assert ir_kind_of(AdderLinear(4, 4)) == "adder_linear"
    assert ir_kind_of(nn.Conv2d(4, 4, 3)) == "conv"
    assert ir_kind_of(nn.Linear(4, 4)) == "linear"
    assert ir_kind_of(nn.ReLU()) is None
    assert ir_kind_of(AdderConv2d) == "adder_conv"  # classes work too
    for cls in (ShiftConv2d, ShiftLinear, AdderConv2d, AdderLinear):
        assert cls.ir_kind == ir_kind_of(cls)

    class MyShift(ShiftConv2d):  # inherits its parent's kind ...
        pass
    assert ir_kind_of(MyShift) == "shift_conv"

    class MyAttention(nn.Module):  # ... and a new op declares its own without touching the lowering
        pass
    assert ir_kind_of(MyAttention()) is None
    register_ir_kind(MyAttention, "sparse_matmul")
    assert ir_kind_of(MyAttention()) == "sparse_matmul"
    assert MyAttention in search_spaces.registered_ir_kinds()

    class Declared(nn.Module):  # class attribute alone is enough
        ir_kind = "matmul"
    assert ir_kind_of(Declared) == "matmul"

    with pytest.raises(ValueError, match="unknown IR kind"):
        register_ir_kind(MyAttention, "not_a_kind")
    with pytest.raises(TypeError):
        register_ir_kind(int, "conv")


def test_ir_kinds_match_workload_ir() -> None:
    workload = pytest.importorskip("hw_models.workload")
    assert IR_KINDS == workload.GEMM_KINDS


def test_ir_bits() -> None:
    assert ShiftConv2d(4, 4, 3).ir_bits() == (8, 5)
    assert ShiftConv2d(4, 4, 3, act_bits=None, weight_bits=4).ir_bits() == (32, 4)
    assert ShiftLinear(4, 4, act_bits=6, weight_bits=3).ir_bits() == (6, 3)
    assert AdderConv2d(4, 4, 3).ir_bits() == (32, 32)
    assert AdderLinear(4, 4, act_bits=8, weight_bits=16).ir_bits() == (8, 16)


# ---------------------------------------------------------------------------------------------
# quantisers

def test_default_shift_range_and_validation() -> None:
    assert default_shift_range(5) == (-14, 0)                      # 15 shifts + the zero code
    assert default_shift_range(5, zero_weights=False) == (-15, 0)  # 16 shifts, no zero
    assert default_shift_range(2, zero_weights=False) == (-1, 0)
    m = ShiftConv2d(2, 2, 1, weight_bits=4, shift_range=(-3, 3))
    assert (m.shift_min, m.shift_max) == (-3, 3)
    with pytest.raises(ValueError, match="encodes only"):
        ShiftConv2d(2, 2, 1, weight_bits=4, shift_range=(-8, 0))   # 9 shifts > 7 codes
    with pytest.raises(ValueError):
        ShiftConv2d(2, 2, 1, mode="bogus")


def test_round_power_of_two_values() -> None:
    w = torch.tensor([0.3, -0.7, 0.75, 3.0, 1e-9, -1e-9, 0.0, 2 ** -14, 2 ** -14.6, -0.126])
    q = round_power_of_two(w, -14, 0)
    # log2(0.3) = -1.74 -> -2; log2(0.7) = -0.51 -> -1; log2(.75) = -0.415 -> 0; 3 saturates at 2**0;
    # 1e-9 and 2**-14.6 round below -14 -> 0; log2(0.126) = -2.99 -> -3.
    expect = torch.tensor([0.25, -0.5, 1.0, 1.0, 0.0, 0.0, 0.0, 2 ** -14, 0.0, -0.125])
    assert torch.equal(q, expect)
    q_nozero = round_power_of_two(w, -14, 0, zero_weights=False)
    assert q_nozero[4].item() == 2 ** -14 and q_nozero[5].item() == -(2 ** -14) and q_nozero[6].item() == 0.0


@pytest.mark.parametrize("bits,frac", [(8, 4), (4, 1), (6, 6)])
def test_fixed_point_grid(bits: int, frac: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(4096) * 2 ** (bits - frac)
    q = quantize_fixed_point(x, bits, frac)
    step, lo, hi = fixed_point_grid(bits, frac)
    codes = q / step
    assert torch.equal(codes, codes.round())                          # on the grid
    assert q.min() >= lo and q.max() <= hi and q.min() == lo and q.max() == hi  # saturates
    inside = (x >= lo) & (x <= hi)
    assert ((q - x)[inside].abs() <= step / 2 + 1e-7).all()          # rounds to nearest
    assert len(torch.unique(q)) <= 2 ** bits
    # straight-through: gradient passes unchanged
    xg = x.clone().requires_grad_()
    quantize_fixed_point(xg, bits, frac).backward(torch.arange(4096.0))
    assert torch.equal(xg.grad, torch.arange(4096.0))


# ---------------------------------------------------------------------------------------------
# shift layers

def _assert_signed_powers_of_two(w: torch.Tensor, lo: int, hi: int, zero_ok: bool) -> None:
    nz = w != 0
    if not zero_ok:
        assert nz.all()
    p = torch.log2(w[nz].abs())
    assert torch.equal(p, p.round()), "not a power of two"
    assert p.min() >= lo and p.max() <= hi


def _teacher_problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 3, 8, 8, generator=g)
    teacher = torch.randn(4, 3, 3, 3, generator=g) * 0.3
    return x, F.conv2d(x, teacher, padding=1)


@pytest.mark.parametrize("mode", ["q", "ps"])
@pytest.mark.parametrize("zero_weights", [True, False])
def test_shift_weights_are_signed_powers_of_two_and_train(mode: str, zero_weights: bool) -> None:
    torch.manual_seed(0)
    m = ShiftConv2d(3, 4, 3, padding=1, mode=mode, zero_weights=zero_weights, bias=False)
    wq = m.quantized_weight()
    _assert_signed_powers_of_two(wq.detach(), m.shift_min, m.shift_max, zero_weights)
    assert len(torch.unique(wq)) > 4
    x, y = _teacher_problem()
    opt = torch.optim.Adam(m.parameters(), lr=0.1)  # PS moves integer shifts: plain SGD crawls
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = F.mse_loss(m(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses
    _assert_signed_powers_of_two(m.quantized_weight().detach(), m.shift_min, m.shift_max, zero_weights)
    if mode == "ps":  # parameters are kept in range (DeepShift-PS), not only their rounded values
        assert m.shift.min() >= m.shift_min and m.shift.max() <= m.shift_max
        assert m.sign.abs().max() <= 1.0


def test_shift_forward_is_conv_of_quantised_operands() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 4, 9, 9) * 3
    for mode in ("q", "ps"):
        m = ShiftConv2d(4, 6, 3, stride=2, padding=1, groups=2, mode=mode, act_bits=6, act_frac_bits=2)
        xq = quantize_fixed_point(x, 6, 2)
        expect = F.conv2d(xq, m.quantized_weight(), m.bias, 2, 1, 1, 2)
        assert torch.equal(m(x), expect)
        assert not torch.equal(m(x), F.conv2d(x, m.quantized_weight(), m.bias, 2, 1, 1, 2))  # x was quantised
        m.act_bits = None
        assert torch.equal(m(x), F.conv2d(x, m.quantized_weight(), m.bias, 2, 1, 1, 2))
    lin = ShiftLinear(5, 3, mode="ps", act_bits=None)
    v = torch.randn(7, 5)
    assert torch.equal(lin(v), F.linear(v, lin.quantized_weight(), lin.bias))


def test_shift_ste_gradients() -> None:
    torch.manual_seed(2)
    # Input gradient: for fixed quantised weights (and float activations) the layer is linear in x,
    # so the true gradient exists and gradcheck applies.
    for mode in ("q", "ps"):
        m = ShiftConv2d(2, 3, 3, padding=1, mode=mode, act_bits=None).double()
        x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-8)
        lin = ShiftLinear(4, 3, mode=mode, act_bits=None).double()
        v = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lin, (v,), eps=1e-6, atol=1e-8)

    # Weight gradients are straight-through: d/dw of conv(x, w_q), routed to the parameters.
    x = torch.randn(2, 3, 6, 6)
    g = torch.randn(2, 4, 6, 6)
    m = ShiftConv2d(3, 4, 3, padding=1, mode="q", act_bits=8)
    m(x).backward(g)
    wq = m.quantized_weight().detach().requires_grad_()
    F.conv2d(quantize_fixed_point(x, 8, 4), wq, m.bias, 1, 1).backward(g)
    assert torch.allclose(m.weight.grad, wq.grad, atol=1e-5) and wq.grad.abs().sum() > 0

    p = ShiftConv2d(3, 4, 3, padding=1, mode="ps", act_bits=8)
    p(x).backward(g)
    wq = p.quantized_weight().detach().requires_grad_()
    F.conv2d(quantize_fixed_point(x, 8, 4), wq, p.bias, 1, 1).backward(g)
    shift_q = p.shift.detach().round().clamp(p.shift_min, p.shift_max)
    assert torch.allclose(p.shift.grad, wq.grad * wq.detach() * math.log(2), atol=1e-5)
    assert torch.allclose(p.sign.grad, wq.grad * torch.exp2(shift_q), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# adder layers: slow references of AdderNet's stated formulas (float64, F.unfold / F.fold)

def _ref_unfold(x: torch.Tensor, w: torch.Tensor, stride, padding, dilation, groups):
    cols = F.unfold(x, w.shape[2:], dilation=dilation, padding=padding, stride=stride)
    N, M, K = x.shape[0], w.shape[0], w[0].numel()
    return cols.view(N, groups, K, cols.shape[-1]), w.reshape(groups, M // groups, K)


def ref_adder_conv(x, w, stride=1, padding=0, dilation=1, groups=1):
    X, W = _ref_unfold(x, w, stride, padding, dilation, groups)
    out = -(X[:, :, None, :, :] - W[None, :, :, :, None]).abs().sum(3)          # (N, G, Mg, L)
    Ho = (x.shape[2] + 2 * _p(padding)[0] - _p(dilation)[0] * (w.shape[2] - 1) - 1) // _p(stride)[0] + 1
    return out.reshape(x.shape[0], w.shape[0], Ho, -1)


def ref_adder_conv_grads(x, w, g, stride=1, padding=0, dilation=1, groups=1, eta=0.2):
    """AdderNet: dW = sum_p g (x - w), dX = sum_m g HardTanh(w - x), then adaptive scaling of dW."""
    X, W = _ref_unfold(x, w, stride, padding, dilation, groups)
    N, L = X.shape[0], X.shape[-1]
    G = g.reshape(N, groups, w.shape[0] // groups, L)
    diff = X[:, :, None, :, :] - W[None, :, :, :, None]                         # x - w: (N, G, Mg, K, L)
    gW = (G[:, :, :, None, :] * diff).sum(dim=(0, 4))
    gX = (G[:, :, :, None, :] * F.hardtanh(-diff)).sum(dim=2)
    gx = F.fold(gX.reshape(N, -1, L), x.shape[2:], w.shape[2:], dilation=dilation, padding=padding, stride=stride)
    if eta is not None:
        gW = gW * (eta * math.sqrt(gW.numel()) / gW.norm())
    return gx, gW.reshape(w.shape)


def _p(v):
    return v if isinstance(v, tuple) else (v, v)


def test_reference_matches_explicit_loops() -> None:
    """The broadcast reference itself, against the formulas written out element by element."""
    torch.manual_seed(3)
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    w = torch.randn(2, 2, 2, 2, dtype=torch.float64)
    g = torch.randn(1, 2, 2, 2, dtype=torch.float64)
    out = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    gx = torch.zeros_like(x)
    gw = torch.zeros_like(w)
    for m in range(2):
        for i in range(2):
            for j in range(2):
                for c in range(2):
                    for a in range(2):
                        for b in range(2):
                            d = x[0, c, i + a, j + b] - w[m, c, a, b]
                            out[0, m, i, j] -= d.abs()
                            gw[m, c, a, b] += g[0, m, i, j] * d
                            gx[0, c, i + a, j + b] += g[0, m, i, j] * d.neg().clamp(-1, 1)
    assert torch.allclose(ref_adder_conv(x, w), out)
    rgx, rgw = ref_adder_conv_grads(x, w, g, eta=None)
    assert torch.allclose(rgx, gx) and torch.allclose(rgw, gw)


# (N, C, M, H, W, kernel, stride, padding, dilation, groups): partial/exact SIMD tiles, grouped,
# depthwise, strided, dilated, rectangular, 1x1.
CONV_CASES = [
    (2, 4, 6, 7, 5, 3, 1, 1, 1, 1),
    (3, 6, 9, 9, 9, 3, 2, 1, 1, 3),
    (2, 8, 8, 6, 6, 3, 1, 1, 1, 8),
    (1, 3, 5, 8, 8, (3, 2), (1, 2), (2, 0), (2, 1), 1),
    (2, 16, 13, 12, 12, 3, 1, 1, 1, 1),
    (2, 5, 7, 10, 10, 3, 1, 0, 1, 1),
    (4, 7, 12, 4, 4, 1, 1, 0, 1, 1),
]


def _case_tensors(case, dtype, seed=0):
    N, C, M, H, W, k, s, p, d, g = case
    gen = torch.Generator().manual_seed(seed)
    k2 = _p(k)
    x = torch.randn(N, C, H, W, generator=gen, dtype=dtype)
    w = torch.randn(M, C // g, *k2, generator=gen, dtype=dtype) * 0.7
    return x, w, dict(stride=s, padding=p, dilation=d, groups=g)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CONV_CASES)
def test_adder_conv_forward_matches_naive(case, backend: str) -> None:
    dtype = torch.float32 if backend == "native" else torch.float64
    x, w, kw = _case_tensors(case, dtype)
    with use_adder_backend(backend):
        assert adder_mod.adder_backend_for(x, w) == backend
        out = adder_conv2d(x, w, **kw)
    ref = ref_adder_conv(x.double(), w.double(), **kw)
    tol = 1e-4 * ref.abs().max().item() if dtype == torch.float32 else 1e-10
    assert out.shape == ref.shape and out.dtype == dtype
    assert (out.double() - ref).abs().max().item() <= tol
    b = torch.randn(w.shape[0], dtype=dtype)
    with use_adder_backend(backend):
        assert torch.allclose(adder_conv2d(x, w, b, **kw), out + b.view(1, -1, 1, 1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("eta", [0.2, None])
@pytest.mark.parametrize("case", CONV_CASES)
def test_adder_conv_backward_matches_addernet_reference(case, eta, backend: str) -> None:
    dtype = torch.float32 if backend == "native" else torch.float64
    x, w, kw = _case_tensors(case, dtype, seed=1)
    x.requires_grad_()
    w.requires_grad_()
    with use_adder_backend(backend):
        out = adder_conv2d(x, w, eta=eta, **kw)
    g = torch.randn_like(out)
    out.backward(g)
    rgx, rgw = ref_adder_conv_grads(x.detach().double(), w.detach().double(), g.double(), eta=eta, **kw)
    rtol = 1e-4 if dtype == torch.float32 else 1e-10
    assert (x.grad.double() - rgx).abs().max() <= rtol * rgx.abs().max()
    assert (w.grad.double() - rgw).abs().max() <= rtol * rgw.abs().max()
    # and AdderNet's input gradient is really not the true one (HardTanh vs sign): the test would
    # notice a kernel that returned the exact gradient instead.
    x2 = x.detach().clone().requires_grad_()
    adder_conv2d(x2, w.detach(), exact_grad=True, **kw).backward(g)
    assert (x2.grad - x.grad).abs().max() > 1e-3


def test_adaptive_gradient_scaling() -> None:
    torch.manual_seed(4)
    for eta in (0.2, 0.05):
        m = AdderConv2d(4, 6, 3, padding=1, eta=eta).double()
        m(torch.randn(2, 4, 5, 5, dtype=torch.float64)).sum().backward()
        assert math.isclose(m.weight.grad.norm().item(), eta * math.sqrt(m.weight.numel()), rel_tol=1e-9)
    lin = AdderLinear(5, 3, eta=0.2).double()
    lin(torch.randn(4, 5, dtype=torch.float64)).sum().backward()
    assert math.isclose(lin.weight.grad.norm().item(), 0.2 * math.sqrt(15), rel_tol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adder_linear_matches_reference(backend: str) -> None:
    dtype = torch.float32 if backend == "native" else torch.float64
    torch.manual_seed(5)
    x = torch.randn(3, 5, 11, dtype=dtype, requires_grad=True)       # leading dims are flattened
    w = torch.randn(7, 11, dtype=dtype, requires_grad=True)
    b = torch.randn(7, dtype=dtype, requires_grad=True)
    with use_adder_backend(backend):
        out = adder_linear(x, w, b, eta=None)
    xd, wd = x.detach().double().reshape(15, 11), w.detach().double()
    diff = xd[:, None, :] - wd[None]                                    # (P, M, K)
    ref = -diff.abs().sum(-1) + b.detach().double()
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert out.shape == (3, 5, 7) and torch.allclose(out.double().reshape(15, 7), ref, atol=tol * 10, rtol=tol)
    g = torch.randn(3, 5, 7, dtype=dtype)
    out.backward(g)
    gd = g.double().reshape(15, 7)
    ref_gw = (gd[:, :, None] * diff).sum(0)
    ref_gx = (gd[:, :, None] * (-diff).clamp(-1, 1)).sum(1)
    assert torch.allclose(w.grad.double(), ref_gw, rtol=tol, atol=tol * 10)
    assert torch.allclose(x.grad.double().reshape(15, 11), ref_gx, rtol=tol, atol=tol * 10)
    assert torch.allclose(b.grad.double(), gd.sum(0))


def test_exact_grad_gradcheck() -> None:
    torch.manual_seed(6)
    x = torch.randn(1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w: adder_conv2d(x, w, stride=2, padding=1, groups=2, exact_grad=True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w), eps=1e-6, atol=1e-6)
    v = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    wl = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, w: adder_linear(v, w, exact_grad=True), (v, wl), eps=1e-6, atol=1e-6)
    # while AdderNet's gradient fails the same check (it is not the derivative of the forward)
    w1 = torch.randn(2, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    assert not torch.autograd.gradcheck(lambda x, w: adder_conv2d(x, w, padding=1, eta=None), (x, w1),
                                        eps=1e-6, atol=1e-6, raise_exception=False)


@pytest.mark.skipif(not NATIVE, reason="no C++ compiler")
def test_native_matches_torch_on_a_real_layer() -> None:
    """Many tasks, both threads, partial and full tiles, both layouts: native == torch (float32)."""
    torch.manual_seed(7)
    for H, N in ((16, 4), (7, 3)):
        x = torch.randn(N, 16, H, H, requires_grad=True)
        w = torch.randn(24, 16, 3, 3, requires_grad=True)
        res = {}
        for be in ("native", "torch"):
            x.grad = w.grad = None
            with use_adder_backend(be):
                out = adder_conv2d(x, w, padding=1)
                out.backward(torch.ones_like(out))
            res[be] = (out.detach(), x.grad.clone(), w.grad.clone())
        for a, b in zip(res["native"], res["torch"]):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-4 * b.abs().max().item())


# Depthwise (groups == channels): the native kernel walks the kernel window itself, no unfold.
# (N, C, channel multiplier, H, W, kernel, stride, padding, dilation): stride 1 and 2, padding,
# non-square inputs / kernels / strides, dilation, more outputs than inputs per group, outputs
# wider than one SIMD vector with a partial tail, and the 1x1 / 3x3 / 5x5 / generic kernel paths.
DW_CASES = [
    (2, 8, 1, 16, 16, 3, 1, 1, 1),
    (3, 5, 1, 9, 14, 3, 2, 1, 1),
    (2, 4, 1, 11, 37, 3, (1, 2), (1, 0), 1),
    (2, 3, 2, 10, 7, (3, 2), (2, 1), (2, 1), 1),
    (1, 6, 1, 12, 21, 5, 1, 2, (2, 1)),
    (2, 4, 3, 8, 19, 3, 2, (0, 2), (1, 2)),
    (3, 7, 1, 6, 5, 1, 1, 0, 1),
    (2, 2, 1, 5, 40, (2, 4), (1, 3), (1, 2), 1),
]


def _adder_step(x, w, kw, backend, eta=0.2, exact=False, need_x=True):
    x = x.detach().clone().requires_grad_(need_x)
    w = w.detach().clone().requires_grad_()
    with use_adder_backend(backend):
        out = adder_conv2d(x, w, eta=eta, exact_grad=exact, **kw)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(11))
        out.backward(g)
    return out.detach(), (x.grad if need_x else None), w.grad


def _spy_depthwise(monkeypatch: pytest.MonkeyPatch) -> dict:
    calls = {"dw_forward": 0, "dw_backward": 0, "im2col": 0}
    for name in ("dw_forward", "dw_backward"):
        fn = getattr(_adder_native, name)

        def spy(*a, _fn=fn, _name=name, **k):
            calls[_name] += 1
            return _fn(*a, **k)
        monkeypatch.setattr(_adder_native, name, spy)
    im2col = adder_mod._im2col

    def im2col_spy(*a, **k):
        calls["im2col"] += 1
        return im2col(*a, **k)
    monkeypatch.setattr(adder_mod, "_im2col", im2col_spy)
    return calls


@pytest.mark.skipif(not NATIVE, reason="no C++ compiler")
@pytest.mark.parametrize("eta", [0.2, None])
@pytest.mark.parametrize("case", DW_CASES)
def test_depthwise_native_matches_torch_fallback(case, eta, monkeypatch: pytest.MonkeyPatch) -> None:
    """The direct depthwise kernel == the pure-torch path: forward, input and weight gradients."""
    N, C, mult, H, W, k, s, p, d = case
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(N, C, H, W, generator=gen)
    w = torch.randn(C * mult, 1, *_p(k), generator=gen) * 0.7
    kw = dict(stride=s, padding=p, dilation=d, groups=C)
    ref = _adder_step(x, w, kw, "torch", eta)
    calls = _spy_depthwise(monkeypatch)
    nat = _adder_step(x, w, kw, "native", eta)
    assert calls == {"dw_forward": 1, "dw_backward": 1, "im2col": 0}   # really the direct path
    for a, b in zip(nat, ref):
        assert a.shape == b.shape
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    # and against the float64 AdderNet formulas
    g = torch.randn(nat[0].shape, generator=torch.Generator().manual_seed(11)).double()   # as in _adder_step
    rout = ref_adder_conv(x.double(), w.double(), **kw)
    rgx, rgw = ref_adder_conv_grads(x.double(), w.double(), g, eta=eta, **kw)
    assert (nat[0].double() - rout).abs().max() <= 1e-5 * rout.abs().max()
    assert (nat[1].double() - rgx).abs().max() <= 1e-5 * rgx.abs().max()
    assert (nat[2].double() - rgw).abs().max() <= 1e-5 * rgw.abs().max()


@pytest.mark.skipif(not NATIVE, reason="no C++ compiler")
def test_depthwise_native_matches_unfold_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same sums in the same order as the native unfold path: forward and input gradient agree to rounding."""
    x = torch.randn(4, 16, 13, 18, generator=torch.Generator().manual_seed(13))
    w = torch.randn(16, 1, 3, 3, generator=torch.Generator().manual_seed(14))
    for s in (1, 2):
        kw = dict(stride=s, padding=1, groups=16)
        direct = _adder_step(x, w, kw, "native")
        with monkeypatch.context() as m:
            m.setattr(adder_mod, "_native_depthwise", lambda *a, **k: False)
            unfold = _adder_step(x, w, kw, "native")
        assert torch.allclose(direct[0], unfold[0], rtol=0, atol=1e-6 * unfold[0].abs().max().item())
        assert torch.allclose(direct[1], unfold[1], rtol=0, atol=1e-6 * unfold[1].abs().max().item())
        assert torch.allclose(direct[2], unfold[2], rtol=1e-5, atol=1e-5 * unfold[2].abs().max().item())


@pytest.mark.skipif(not NATIVE, reason="no C++ compiler")
def test_depthwise_native_edge_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(15)
    x = torch.randn(3, 6, 10, 12, generator=gen)
    w = torch.randn(6, 1, 3, 3, generator=gen)
    kw = dict(stride=(2, 1), padding=1, groups=6)
    ref = _adder_step(x, w, kw, "torch")
    # a non-contiguous input (channels_last)
    got = _adder_step(x.to(memory_format=torch.channels_last), w, kw, "native")
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
    # frozen input: weight gradient only
    only_w = _adder_step(x, w, kw, "native", need_x=False)
    assert torch.allclose(only_w[2], ref[2], rtol=1e-5, atol=1e-5 * ref[2].abs().max().item())
    # frozen weight: input gradient only
    xg = x.clone().requires_grad_()
    with use_adder_backend("native"):
        adder_conv2d(xg, w, **kw).backward(torch.randn(3, 6, 5, 12, generator=torch.Generator().manual_seed(11)))
    assert torch.allclose(xg.grad, ref[1], rtol=1e-5, atol=1e-5 * ref[1].abs().max().item())
    # exact gradients: the native depthwise forward, then the unfold backward on the saved input
    ex_ref = _adder_step(x, w, kw, "torch", exact=True)
    calls = _spy_depthwise(monkeypatch)
    ex = _adder_step(x, w, kw, "native", exact=True)
    assert calls["dw_forward"] == 1 and calls["dw_backward"] == 0
    for a, b in zip(ex, ex_ref):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
    # forward on the native kernel, backward with the torch backend (re-pads the saved input)
    xb = x.clone().requires_grad_()
    wb = w.clone().requires_grad_()
    with use_adder_backend("native"):
        out = adder_conv2d(xb, wb, **kw)
    with use_adder_backend("torch"):
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(11)))
    assert torch.allclose(xb.grad, ref[1], rtol=1e-5, atol=1e-5 * ref[1].abs().max().item())
    assert torch.allclose(wb.grad, ref[2], rtol=1e-5, atol=1e-5 * ref[2].abs().max().item())
    # bias and the module path
    m = AdderConv2d(6, 12, (3, 5), stride=2, padding=(1, 2), groups=6, bias=True)
    with torch.no_grad():
        m.bias.normal_()
    with use_adder_backend("native"):
        y = m(x)
    with use_adder_backend("torch"):
        y_ref = m(x)
    assert torch.allclose(y, y_ref, rtol=1e-5, atol=1e-5 * y_ref.abs().max().item())


def test_workspace_reuse_does_not_alias_results() -> None:
    """Scratch buffers are reused between calls: results of an earlier call must stay intact."""
    torch.manual_seed(8)
    m = AdderConv2d(4, 5, 3, padding=1)
    x1 = torch.randn(2, 4, 6, 6, requires_grad=True)
    x2 = torch.randn(2, 4, 6, 6, requires_grad=True)
    y1 = m(x1)
    snapshot = y1.detach().clone()
    y2 = m(x2)
    assert torch.equal(y1, snapshot)
    g = torch.randn_like(y1)
    y2.backward(g)
    gx2 = x2.grad.clone()
    y1.backward(g)                       # backward of the first graph after the second forward
    rgx1, _ = ref_adder_conv_grads(x1.detach().double(), m.weight.detach().double(), g.double(), padding=1)
    assert torch.allclose(x1.grad.double(), rgx1, rtol=1e-4, atol=1e-4)
    assert torch.equal(x2.grad, gx2)


def test_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(2, 3)
    monkeypatch.setenv("CODESIGN_ADDER_BACKEND", "torch")
    assert adder_mod.adder_backend_for(x) == "torch"
    assert adder_mod.adder_backend_for(x.double()) == "torch"
    monkeypatch.setenv("CODESIGN_ADDER_BACKEND", "auto")
    assert adder_mod.adder_backend_for(x.double()) == "torch"            # float64 never goes native
    assert adder_mod.adder_backend_for(x) == ("native" if NATIVE else "torch")
    with use_adder_backend("native"), pytest.raises(ValueError):
        adder_mod.adder_backend_for(x.double())
    monkeypatch.setenv("CODESIGN_ADDER_BACKEND", "fast")
    with pytest.raises(ValueError):
        _adder_native.backend_env()


def test_native_build_is_cached_and_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    # A fresh build into an empty cache, then a cache hit; no build at import time.
    monkeypatch.setattr(_adder_native, "_lib", None)
    monkeypatch.setattr(_adder_native, "_tried", False)
    monkeypatch.setenv("CODESIGN_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CODESIGN_ADDER_BACKEND", "auto")
    if NATIVE:
        assert _adder_native.load() is not None
        assert _adder_native.build_info()["cached"] == "no" and list(tmp_path.glob("adder_*.so"))
        monkeypatch.setattr(_adder_native, "_lib", None)
        monkeypatch.setattr(_adder_native, "_tried", False)
        assert _adder_native.load() is not None and _adder_native.build_info()["cached"] == "yes"
    # No compiler: a warning, and the layer still works on the torch path.
    monkeypatch.setattr(_adder_native, "_lib", None)
    monkeypatch.setattr(_adder_native, "_tried", False)
    monkeypatch.setattr(_adder_native, "_compiler", lambda: None)
    x = torch.randn(2, 3, 5, 5)
    w = torch.randn(4, 3, 3, 3)
    with pytest.warns(RuntimeWarning, match="pure-torch"):
        out = adder_conv2d(x, w, padding=1)
    assert adder_mod.adder_backend_for(x, w) == "torch"
    assert torch.allclose(out.double(), ref_adder_conv(x.double(), w.double(), padding=1), atol=1e-4)
    wd = torch.randn(6, 1, 3, 3)                      # depthwise takes the torch path too
    out_dw = adder_conv2d(x, wd, stride=2, padding=1, groups=3)
    assert torch.allclose(out_dw.double(), ref_adder_conv(x.double(), wd.double(), 2, 1, groups=3), atol=1e-4)
    monkeypatch.setenv("CODESIGN_ADDER_BACKEND", "native")
    with pytest.raises(RuntimeError):
        _adder_native.load()


def test_adder_quantised_operands() -> None:
    torch.manual_seed(9)
    m = AdderConv2d(3, 4, 3, padding=1, act_bits=8, act_frac_bits=4, weight_bits=8, weight_frac_bits=5)
    x = torch.randn(2, 3, 6, 6)
    out = m(x)
    expect = adder_conv2d(quantize_fixed_point(x, 8, 4), quantize_fixed_point(m.weight, 8, 5), padding=1)
    assert torch.equal(out, expect)
    assert not torch.allclose(out, adder_conv2d(x, m.weight, padding=1))


def test_adder_network_trains() -> None:
    torch.manual_seed(10)
    g = torch.Generator().manual_seed(10)
    x = torch.randn(64, 3, 8, 8, generator=g)
    y = (x[:, 0].mean((1, 2)) > x[:, 1].mean((1, 2))).long()
    net = nn.Sequential(AdderConv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), AdderLinear(8, 2), nn.BatchNorm1d(2))
    w0 = net[0].weight.detach().clone()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert (net[0].weight - w0).abs().max() > 1e-3


def test_no_compilation_at_import() -> None:
    import subprocess
    import sys
    from pathlib import Path
    code = ("import sys, search_spaces, search_spaces._adder_native as n, search_spaces._adder_triton as t; "
            "assert n._lib is None and not n._tried, 'built at import'; "
            "assert 'triton' not in sys.modules and not t._kernels, 'triton imported at import'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------------
# Triton (CUDA) kernels, checked on CPU tensors under Triton's interpreter against the torch path
# (tests/triton_interp_checks.py). Performance needs a GPU: benchmarks/bench_ops.py --device cuda.
# TRITON_INTERPRET must be set before triton is first imported in a process (triton.language's own
# jit helpers are built at import), and torch itself may import triton (torch.optim probes for
# it), so the checks run in a fresh interpreter process each.

@needs_triton
@pytest.mark.parametrize("check", ["kernels", "layers", "env"])
def test_triton_kernels_under_interpreter(check: str) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("CODESIGN_ADDER_BACKEND", None)
    proc = subprocess.run([sys.executable, str(root / "tests" / "triton_interp_checks.py"), check],
                          capture_output=True, text=True, timeout=300, env=env, cwd=root, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"ok {check}" in proc.stdout


@needs_triton
def test_triton_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(2, 3)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("CODESIGN_ADDER_BACKEND", "auto")
    assert not _adder_triton.available(x)                     # CPU tensors need the interpreter
    assert adder_mod.adder_backend_for(x) in ("native", "torch")
    with use_adder_backend("triton"), pytest.raises(ValueError, match="CUDA"):
        adder_mod.adder_backend_for(x)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert adder_mod.adder_backend_for(x) in ("native", "torch")   # auto never sends CPU tensors to triton
    assert not _adder_triton.available(x.double())
    monkeypatch.setenv("CODESIGN_ADDER_BACKEND", "triton")
    assert adder_mod.adder_backend_for(x) == "triton"
    with pytest.raises(ValueError):
        adder_mod.adder_backend_for(x.double())
    monkeypatch.setattr(_adder_triton, "importable", lambda: False)
    with pytest.raises(ValueError, match=r"pip install '\.\[cuda\]'"):
        adder_mod.adder_backend_for(x)
    assert not _adder_triton.available(x)


def test_triton_failure_falls_back_to_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Triton kernel that fails (e.g. cannot compile for this GPU) under 'auto': warning, torch path,
    Triton switched off for the process; under a forced 'triton' backend the error propagates.
    Needs no triton: the kernels are replaced by failing stubs and the dispatch is pointed at them."""
    def broken(*a, **k):
        raise RuntimeError("no compiler for this GPU")
    for name in ("forward", "grad_x", "grad_w"):
        monkeypatch.setattr(_adder_triton, name, broken)
    monkeypatch.setattr(_adder_triton, "_disabled", None)
    monkeypatch.setattr(adder_mod, "adder_backend_for", lambda *t: "triton")
    monkeypatch.setenv("CODESIGN_ADDER_BACKEND", "auto")
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="pure-torch"):
        out = adder_conv2d(x, w, padding=1)
    g = torch.randn_like(out)
    with pytest.warns(RuntimeWarning, match="pure-torch"):   # the stubs keep failing: warned again
        out.backward(g)
    assert _adder_triton.disabled_reason() is not None and not _adder_triton.available(x)
    assert torch.allclose(out, ref_adder_conv(x.detach(), w.detach(), padding=1))
    rgx, rgw = ref_adder_conv_grads(x.detach(), w.detach(), g, padding=1)
    assert torch.allclose(x.grad, rgx) and torch.allclose(w.grad, rgw)
    monkeypatch.setenv("CODESIGN_ADDER_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="no compiler"):
        adder_conv2d(x, w, padding=1)
