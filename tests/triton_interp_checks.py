"""Checks of the Triton adder kernels on CPU tensors under Triton's interpreter (no GPU needed).

Run by tests/test_ops.py in a fresh process (``TRITON_INTERPRET=1`` must be set before triton is
first imported), or by hand::

    TRITON_INTERPRET=1 python tests/triton_interp_checks.py [kernels] [layers] [env]

Each check compares against the pure-torch path of :mod:`search_spaces.adder` (the reference) and
against AdderNet's formulas in float64, and prints ``ok <check>``.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from search_spaces import AdderConv2d, AdderLinear, _adder_triton, use_adder_backend
from search_spaces import adder as adder_mod

# (N, G, K, P, M): ragged in every dimension against the interpreter's tiles (8/16/4, 16/16/4,
# 16/16/16); grouped; M = 1 (depthwise-like); N = 3 splits the weight gradient 2 + 1 samples.
SHAPES = [(1, 1, 29, 37, 13), (3, 2, 29, 37, 13), (2, 3, 9, 20, 1), (2, 1, 5, 50, 40)]


def _operands(N, NG, K, P, M, seed=20, strided=False):
    gen = torch.Generator().manual_seed(seed)
    if strided:  # X as a non-contiguous view (every other position)
        X = torch.randn(N, NG, K, 2 * P, generator=gen)[..., ::2]
    else:
        X = torch.randn(N, NG, K, P, generator=gen)
    W = torch.randn(NG, M, K, generator=gen) * 0.7
    G = torch.randn(N, NG, M, P, generator=gen)
    return X, W, G


def check_kernels() -> None:
    """Forward, AdderNet's input gradient and the (unscaled) weight gradient == the torch path."""
    for i, shape in enumerate(SHAPES):
        for strided in (False, True) if i in (0, 2) else (False,):
            X, W, G = _operands(*shape, strided=strided)
            out = _adder_triton.forward(X, W)
            ref = adder_mod._torch_forward(X, W)
            assert out.shape == ref.shape and out.is_contiguous(), shape
            assert torch.allclose(out, ref, rtol=1e-6, atol=1e-5), (shape, (out - ref).abs().max())
            gx = _adder_triton.grad_x(X, W, G)
            rgx, _ = adder_mod._torch_backward_loop(X, W, G, True, False, False)
            assert gx.shape == X.shape and torch.allclose(gx, rgx, rtol=1e-5, atol=1e-5), shape
            into = torch.full_like(X, float("nan"))
            assert _adder_triton.grad_x(X, W, G, into) is into and torch.equal(into, gx)
            gw = _adder_triton.grad_w(X, W, G)
            _, rgw = adder_mod._adder_backward(X.double(), W.double(), G.double(), False, True, None, False)
            assert gw.shape == W.shape and torch.allclose(gw.double(), rgw, rtol=1e-5, atol=1e-4), shape
            # float64 formulas (signs): out = -sum|x - w|, gx = sum g HardTanh(w - x), gw = sum g (x - w)
            diff = X.double()[:, :, None] - W.double()[None, :, :, :, None]          # (N, G, M, K, P)
            Gd = G.double()[:, :, :, None, :]
            assert torch.allclose(out.double(), -diff.abs().sum(3), rtol=1e-6, atol=1e-4)
            assert torch.allclose(gx.double(), (Gd * (-diff).clamp(-1, 1)).sum(2), rtol=1e-5, atol=1e-4)
            assert torch.allclose(gw.double(), (Gd * diff).sum(dim=(0, 4)), rtol=1e-5, atol=1e-4)
    # empty problems
    X, W, G = _operands(2, 1, 4, 0, 3)
    assert _adder_triton.forward(X, W).shape == (2, 1, 3, 0)
    assert torch.equal(_adder_triton.grad_w(X, W, G), torch.zeros(1, 3, 4))


def check_layers() -> None:
    """AdderConv2d / AdderLinear forward + backward on the triton backend == the torch backend."""
    calls = {"forward": 0, "grad_x": 0, "grad_w": 0}
    for name in calls:
        fn = getattr(_adder_triton, name)

        def spy(*a, _fn=fn, _name=name, **k):
            calls[_name] += 1
            return _fn(*a, **k)
        setattr(_adder_triton, name, spy)
    torch.manual_seed(21)
    conv = AdderConv2d(4, 6, 3, stride=(1, 2), padding=1, groups=2, bias=True)
    lin = AdderLinear(11, 7)
    x = torch.randn(2, 4, 7, 9)
    v = torch.randn(5, 11)
    res = {}
    for be in ("triton", "torch"):
        xg, vg = x.clone().requires_grad_(), v.clone().requires_grad_()
        conv.zero_grad(set_to_none=True)
        lin.zero_grad(set_to_none=True)
        with use_adder_backend(be):
            assert adder_mod.adder_backend_for(xg, conv.weight) == be
            y, z = conv(xg), lin(vg)
            (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
            (z * torch.linspace(-1, 1, z.numel()).view_as(z)).sum().backward()
        res[be] = (y.detach(), xg.grad, conv.weight.grad, conv.bias.grad, z.detach(), vg.grad, lin.weight.grad)
    assert calls == {"forward": 2, "grad_x": 2, "grad_w": 2}, calls
    for a, b in zip(res["triton"], res["torch"]):
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * max(1.0, b.abs().max().item())), (a - b).abs().max()
    # AdderNet's adaptive gradient scaling is applied on the triton path too
    assert math.isclose(conv.weight.grad.norm().item(), 0.2 * math.sqrt(conv.weight.numel()), rel_tol=1e-4)


def check_env() -> None:
    """CODESIGN_ADDER_BACKEND=triton routes a plain AdderConv2d through the kernels; auto does not."""
    torch.manual_seed(0)
    m = AdderConv2d(3, 5, 3, padding=1)
    x = torch.randn(2, 3, 6, 5, requires_grad=True)
    os.environ["CODESIGN_ADDER_BACKEND"] = "auto"
    assert adder_mod.adder_backend_for(x, m.weight) != "triton"     # CPU tensors: unchanged
    os.environ["CODESIGN_ADDER_BACKEND"] = "triton"
    assert adder_mod.adder_backend_for(x, m.weight) == "triton"
    y = m(x)
    y.backward(torch.ones_like(y))
    assert "triton" in sys.modules
    gx, gw = x.grad.clone(), m.weight.grad.clone()
    x.grad = m.weight.grad = None
    with use_adder_backend("torch"):
        y2 = m(x)
        y2.backward(torch.ones_like(y2))
    assert torch.allclose(y, y2, atol=1e-4) and torch.allclose(gx, x.grad, atol=1e-4)
    assert torch.allclose(gw, m.weight.grad, rtol=1e-5, atol=1e-4)


CHECKS = {"kernels": check_kernels, "layers": check_layers, "env": check_env}

if __name__ == "__main__":
    if not _adder_triton.interpreting():
        sys.exit("set TRITON_INTERPRET=1 (these checks run the kernels on CPU tensors)")
    for name in sys.argv[1:] or list(CHECKS):
        CHECKS[name]()
        print(f"ok {name}", flush=True)
