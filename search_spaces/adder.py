"""Adder layers (AdderNet, Chen et al., CVPR 2020): l1 distance instead of a dot product.

``output[p, m] = -sum_k |x[p, k] - w[m, k]|`` over the unfolded receptive field, so a layer costs
subtractions, absolute values and additions and no multiplications.

Gradients are AdderNet's, not the true (sign) gradients of the l1 distance:

* ``dL/dw[m, k] = sum_p g[p, m] * (x[p, k] - w[m, k])``  (full-precision; two matmuls),
* ``dL/dx[p, k] = sum_m g[p, m] * HardTanh(w[m, k] - x[p, k])``,
* then adaptive gradient scaling ``dL/dw <- eta * sqrt(numel(w)) / ||dL/dw||_2 * dL/dw``.

``exact_grad=True`` gives the true gradients instead (sign(x - w) terms, no scaling), for gradchecks
and for ablations.

Speed: the forward and the HardTanh input gradient are O(P*M*K) elementwise reductions with no BLAS
formulation. Backends, picked per call from the operands' device and dtype:

* ``native``: CPU float32 tensors run in the register-blocked SIMD kernels of
  :mod:`search_spaces._adder_native` (compiled on first use, cached);
* ``triton``: CUDA float32 tensors run in the tiled Triton kernels of
  :mod:`search_spaces._adder_triton` (forward, input gradient and weight gradient), when the
  optional dependency is installed (``pip install '.[cuda]'``);
* ``torch``: everything else (no compiler, no triton, float64, ...): ``torch.cdist(p=1)`` for the
  forward, a chunked broadcast for the input gradient, two matmuls for the weight gradient.

``auto`` (the default) takes the first of these that fits the tensors. ``use_adder_backend(name)``
or the environment variable ``CODESIGN_ADDER_BACKEND`` (``auto | native | triton | torch``) forces
one; a forced ``native`` / ``triton`` backend raises where it cannot run (``triton`` also runs on
CPU tensors under Triton's interpreter, ``TRITON_INTERPRET=1``: slow, for tests). Depthwise
convolutions (one input channel per group) skip the unfold on the native path: their kernel loops
over the kernel window directly, for the forward and both gradients.
"""
from __future__ import annotations

import contextlib
import math
import threading
import warnings
from collections.abc import Callable
from typing import Any, Iterator, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.nn.modules.utils import _pair

from search_spaces import _adder_native as _native
from search_spaces import _adder_triton as _triton
from search_spaces.quant import quantize_fixed_point
from search_spaces.registry import register_ir_kind

__all__ = ["AdderConv2d", "AdderLinear", "adder_conv2d", "adder_linear", "use_adder_backend",
           "adder_backend_for", "release_adder_workspace", "DEFAULT_ETA"]

#: AdderNet's adaptive-learning-rate factor (their code divides by 5).
DEFAULT_ETA = 0.2

_override: str | None = None


@contextlib.contextmanager
def use_adder_backend(name: str) -> Iterator[None]:
    """Force the adder kernels to 'torch', 'native', 'triton' or 'auto' inside a ``with`` block."""
    global _override
    if name not in _native.BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(_native.BACKENDS)}, got {name!r}")
    old, _override = _override, name
    try:
        yield
    finally:
        _override = old


def adder_backend_for(*tensors: torch.Tensor) -> str:
    """Which backend runs on these tensors: 'native' (compiled CPU kernel), 'triton' (CUDA) or 'torch'."""
    choice = _override or _native.backend_env()
    if choice == "torch":
        return "torch"
    if choice == "triton":
        if not _triton.available(*tensors):
            reason = ("triton is not installed (pip install '.[cuda]')" if not _triton.importable() else
                      f"the kernels failed earlier ({_triton.disabled_reason()})" if _triton.disabled_reason()
                      else "it needs float32 CUDA tensors (or CPU tensors under TRITON_INTERPRET=1)")
            raise ValueError(f"the triton adder backend cannot run here: {reason}")
        return "triton"
    on_cuda = all(t.device.type == "cuda" for t in tensors) and bool(tensors)
    if on_cuda:
        if choice == "native":
            raise ValueError("the native adder kernel needs CPU float32 tensors")
        return "triton" if _triton.available(*tensors) else "torch"
    eligible = all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
    if choice == "native":
        if not eligible:
            raise ValueError("the native adder kernel needs CPU float32 tensors")
        if _native.load() is None:
            raise RuntimeError(f"native adder kernel unavailable: {_native.build_info().get('error')}")
        return "native"
    return "native" if eligible and _native.load() is not None else "torch"


_T = TypeVar("_T")


def _with_triton(kernel: Callable[[], _T], fallback: Callable[[], _T]) -> _T:
    """Run a Triton kernel call; under the 'auto' backend a failure (no compiler for this GPU, a
    Triton bug) switches Triton off for the process with a warning and runs the torch path instead,
    as a failed native build does. A forced 'triton' backend re-raises."""
    try:
        return kernel()
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:
        if (_override or _native.backend_env()) == "triton":
            raise
        _triton.disable(f"{type(exc).__name__}: {str(exc)[:500]}")
        warnings.warn(f"search_spaces: Triton adder kernels failed, using the slower pure-torch path ({exc})",
                      RuntimeWarning, stacklevel=3)
        return fallback()


# ---------------------------------------------------------------------------------------------
# The GEMM-shaped core on X (N, G, K, P), W (G, M, K), G_out (N, G, M, P): p is the fast axis, so
# the unfolded conv input (N, C*kh*kw, L) is used as it comes, and the output is NCHW already.

def _flatten_batch(t: torch.Tensor) -> torch.Tensor:
    """(N, G, R, P) -> (1, G, R, N*P): fills SIMD tiles when P is small or not a tile multiple."""
    N, NG, R, P = t.shape
    return t.permute(1, 2, 0, 3).reshape(1, NG, R, N * P)


def _unflatten_batch(t: torch.Tensor, N: int) -> torch.Tensor:
    _, NG, R, NP = t.shape
    return t.view(NG, R, N, NP // N).permute(2, 0, 1, 3).contiguous()


def _tile_waste(P: int, tile: int) -> float:
    return (-(-P // tile) * tile - P) / P


def _native_forward(X: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    N, P = X.shape[0], X.shape[3]
    if N > 1 and _tile_waste(P, _native.ptiles()[0]) > 0.125:
        return _unflatten_batch(_native.forward(_flatten_batch(X), W), N)
    return _native.forward(X, W)


def _native_grad_x(X: torch.Tensor, W: torch.Tensor, G: torch.Tensor,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    N, P = X.shape[0], X.shape[3]
    if N > 1 and _tile_waste(P, _native.ptiles()[1]) > 0.125:
        gx = _unflatten_batch(_native.grad_x(_flatten_batch(X), W, _flatten_batch(G)), N)
        return out.copy_(gx) if out is not None else gx
    return _native.grad_x(X, W, G, out)


def _torch_forward(X: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """-l1 distances with torch.cdist(p=1): ~10x faster than broadcasting on the CPU, any device."""
    N, NG, K, P = X.shape
    M = W.shape[1]
    x1 = X.transpose(-1, -2).reshape(N * NG, P, K)
    x2 = W.unsqueeze(0).expand(N, NG, M, K).reshape(N * NG, M, K)
    d = torch.cdist(x1, x2, p=1.0)
    return d.neg_().view(N, NG, P, M).transpose(-1, -2).contiguous()


def _chunk_elems(t: torch.Tensor) -> int:
    # Broadcast intermediates of this many elements: cache-sized on the CPU, large on a GPU.
    return 1 << 26 if t.device.type == "cuda" else 1 << 20


def _torch_backward_loop(X: torch.Tensor, W: torch.Tensor, G: torch.Tensor, need_x: bool, need_w: bool,
                         exact: bool, gx_out: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Chunked broadcast for the O(P*M*K) gradient terms: HardTanh (or sign) of w - x, times g."""
    N, NG, K, P = X.shape
    M = W.shape[1]
    gx = (gx_out if gx_out is not None else torch.empty_like(X)) if need_x else None
    gw = torch.zeros_like(W) if (need_w and exact) else None
    per = max(1, NG * M * K)
    budget = _chunk_elems(X)
    pc = max(1, min(P, budget // per))
    nc = max(1, budget // (per * P)) if pc == P else 1
    wb = W[None, :, :, :, None]                                   # (1, G, M, K, 1)
    for n0 in range(0, N, nc):
        n1 = min(N, n0 + nc)
        for p0 in range(0, P, pc):
            p1 = min(P, p0 + pc)
            d = wb - X[n0:n1, :, None, :, p0:p1]                  # (n, G, M, K, p) = w - x
            d = d.sign_() if exact else d.clamp_(-1.0, 1.0)
            d.mul_(G[n0:n1, :, :, None, p0:p1])
            if gx is not None:
                gx[n0:n1, :, :, p0:p1] = d.sum(dim=2)
            if gw is not None:
                gw.sub_(d.sum(dim=(0, 4)))                        # dL/dw = sum g * sign(x - w)
    return gx, gw


def _adder_backward(X: torch.Tensor, W: torch.Tensor, G: torch.Tensor, need_x: bool, need_w: bool,
                    eta: float | None, exact: bool, gx_out: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dL/dX, dL/dW) on the GEMM view, AdderNet's (default) or the exact gradients.

    ``gx_out`` (optional, shaped like X) receives dL/dX when given.
    """
    if exact:
        return _torch_backward_loop(X, W, G, need_x, need_w, True, gx_out)
    backend = adder_backend_for(X, W, G)
    gx = None
    if need_x:
        if backend == "native":
            gx = _native_grad_x(X, W, G, gx_out)
        elif backend == "triton":
            gx = _with_triton(lambda: _triton.grad_x(X, W, G, gx_out),
                              lambda: _torch_backward_loop(X, W, G, True, False, False, gx_out)[0])
        else:
            gx, _ = _torch_backward_loop(X, W, G, True, False, False, gx_out)
    gw = None
    if need_w and backend == "triton" and _triton.available(X, W, G):  # (still: grad_x may have failed)
        # G X^T - W * rowsum(G) in one kernel, fp32; None: failed, the torch formula below runs
        gw = _with_triton(lambda: _triton.grad_w(X, W, G), lambda: None)
    if need_w and gw is not None:
        _scale_grad_w(gw, eta)
    elif need_w:
        # sum_p g[p, m] * (x[p, k] - w[m, k]) = (G X^T)[m, k] - w[m, k] * sum_p g[p, m]
        gw = torch.matmul(G, X.transpose(-1, -2)).sum(0)  # batched GEMM; einsum's copies cost 3x
        gw.sub_(W * G.sum(dim=(0, 3)).unsqueeze(-1))
        _scale_grad_w(gw, eta)
    return gx, gw


def _scale_grad_w(gw: torch.Tensor, eta: float | None) -> torch.Tensor:
    """AdderNet's adaptive gradient scaling, in place: gw * eta * sqrt(numel) / ||gw||_2."""
    if eta is not None:
        norm = torch.linalg.vector_norm(gw).clamp_min(1e-12)
        gw.mul_(eta * math.sqrt(gw.numel()) / norm)
    return gw


def _adder_forward(X: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    backend = adder_backend_for(X, W)
    if backend == "native":
        return _native_forward(X, W)
    if backend == "triton":
        return _with_triton(lambda: _triton.forward(X, W), lambda: _torch_forward(X, W))
    return _torch_forward(X, W)


# ---------------------------------------------------------------------------------------------
# autograd Functions: conv (im2col inside, recomputed in backward to save memory) and linear.

_tls = threading.local()


def _workspace(name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A reusable scratch tensor for intermediates that never leave a forward/backward call.

    Why: the unfolded input is kh*kw times the input (75 MB at batch 32, 64 channels, 32x32);
    allocating it fresh page-faults it in on every call, which cost tens of ms per training step
    here. One buffer per name and thread, grown to the largest layer seen;
    ``release_adder_workspace()`` frees them.
    On CUDA the caching allocator already does this, so a fresh tensor is returned.
    """
    if like.device.type != "cpu":
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    bufs: dict[tuple[str, torch.dtype], torch.Tensor] = _tls.__dict__.setdefault("bufs", {})
    n = math.prod(shape)
    buf = bufs.get((name, like.dtype))
    if buf is None or buf.numel() < n:
        buf = torch.empty(n, dtype=like.dtype)
        bufs[(name, like.dtype)] = buf
    return buf[:n].view(shape)


def release_adder_workspace() -> None:
    """Free the scratch buffers this thread holds for adder layers."""
    _tls.__dict__.pop("bufs", None)


def _im2col(xp: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
            out_hw: tuple[int, int], out: torch.Tensor) -> torch.Tensor:
    """Unfold an already padded (N, C, Hp, Wp) input into ``out`` (N, C*kh*kw, Ho*Wo) with one copy.

    Why not F.unfold: aten's im2col runs one parallel region per sample and allocates; one strided
    copy is ~2x faster idle and ~8x faster when another process holds a core (measured).
    """
    N, C = xp.shape[:2]
    sn, sc, sh, sw = xp.stride()
    view = xp.as_strided((N, C, kernel[0], kernel[1], out_hw[0], out_hw[1]),
                         (sn, sc, dilation[0] * sh, dilation[1] * sw, stride[0] * sh, stride[1] * sw))
    out.view(N, C, kernel[0], kernel[1], out_hw[0], out_hw[1]).copy_(view)
    return out


def _col2im(cols: torch.Tensor, x_shape: tuple[int, ...], kernel: tuple[int, int], stride: tuple[int, int],
            padding: tuple[int, int], dilation: tuple[int, int], out_hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`_im2col` (sums overlaps): kh*kw strided adds, ~5x faster than F.fold here."""
    N, C, H, W = x_shape
    (kh, kw), (Ho, Wo) = kernel, out_hw
    buf = torch.zeros((N, C, H + 2 * padding[0], W + 2 * padding[1]), dtype=cols.dtype, device=cols.device)
    c6 = cols.view(N, C, kh, kw, Ho, Wo)
    for i in range(kh):
        h0 = i * dilation[0]
        for j in range(kw):
            w0 = j * dilation[1]
            buf[:, :, h0:h0 + stride[0] * (Ho - 1) + 1:stride[0], w0:w0 + stride[1] * (Wo - 1) + 1:stride[1]] += c6[:, :, i, j]
    if padding[0] or padding[1]:
        return buf[:, :, padding[0]:padding[0] + H, padding[1]:padding[1] + W]
    return buf


def _native_depthwise(x: torch.Tensor, weight: torch.Tensor, groups: int, out_hw: tuple[int, int],
                      stride: tuple[int, int]) -> bool:
    """Whether the direct depthwise kernel takes this conv (one input channel per group, native)."""
    return (weight.shape[1] == 1 and groups == x.shape[1] and x.shape[0] > 0 and groups > 0
            and min(out_hw) > 0 and weight.shape[3] <= 64 and stride[1] <= 64  # the kernel's limits
            and adder_backend_for(x, weight) == "native")


def _pad(x: torch.Tensor, padding: tuple[int, int]) -> torch.Tensor:
    xp = F.pad(x, (padding[1], padding[1], padding[0], padding[0])) if padding[0] or padding[1] else x
    return xp.contiguous()


class _AdderConv2dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int],
                padding: tuple[int, int], dilation: tuple[int, int], groups: int, eta: float | None,
                exact: bool) -> torch.Tensor:
        N, C, H, Wd = x.shape
        M, Cg, kh, kw = weight.shape
        Ho = (H + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        Wo = (Wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        if _native_depthwise(x, weight, groups, (Ho, Wo), stride):
            # Depthwise: the kernel walks the kernel window itself (an unfolded copy would be
            # kh*kw times the input and dominate the time). Saves the unpadded input.
            out = _native.dw_forward(x, weight, stride, padding, dilation)
            ctx.save_for_backward(x, weight)
            ctx.conf = (stride, padding, dilation, groups, eta, exact, (Ho, Wo), tuple(x.shape), True)
            return out
        xp = _pad(x, padding)
        K = Cg * kh * kw
        X = _im2col(xp, (kh, kw), stride, dilation, (Ho, Wo), _workspace("cols", (N, C * kh * kw, Ho * Wo), x))
        out = _adder_forward(X.view(N, groups, K, Ho * Wo), weight.reshape(groups, M // groups, K))
        # Save the (padded) input, not its unfolded copy (kh*kw times larger): the backward pass
        # re-unfolds it, and a supernet holds many adder candidates at once.
        ctx.save_for_backward(xp, weight)
        ctx.conf = (stride, padding, dilation, groups, eta, exact, (Ho, Wo), tuple(x.shape), False)
        return out.view(N, M, Ho, Wo)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        xp, weight = ctx.saved_tensors  # the padded input, or the input itself if `unpadded`
        stride, padding, dilation, groups, eta, exact, (Ho, Wo), x_shape, unpadded = ctx.conf
        N, C = x_shape[:2]
        M, Cg, kh, kw = weight.shape
        K, L = Cg * kh * kw, Ho * Wo
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if unpadded:  # saved by the depthwise forward
            if not exact and _native_depthwise(xp, weight, groups, (Ho, Wo), stride):
                gx, gw = _native.dw_backward(xp, weight, grad, stride, padding, dilation, need_x, need_w)
                if gw is not None:
                    _scale_grad_w(gw, eta)
                return gx, gw, None, None, None, None, None, None
            xp = _pad(xp, padding)
        X = _im2col(xp, (kh, kw), stride, dilation, (Ho, Wo), _workspace("cols", (N, C * kh * kw, L), xp))
        X = X.view(N, groups, K, L)
        G = grad.contiguous().view(N, groups, M // groups, L)
        gx_out = _workspace("grad_cols", (N, groups, K, L), xp) if need_x else None
        gX, gW = _adder_backward(X, weight.reshape(groups, M // groups, K), G, need_x, need_w, eta, exact, gx_out)
        grad_x = _col2im(gX, x_shape, (kh, kw), stride, padding, dilation, (Ho, Wo)) if gX is not None else None
        grad_w = gW.view_as(weight) if gW is not None else None
        return grad_x, grad_w, None, None, None, None, None, None


class _AdderLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eta: float | None,
                exact: bool) -> torch.Tensor:
        B, K = x.shape
        M = weight.shape[0]
        X = x.t().contiguous().view(1, 1, K, B)
        out = _adder_forward(X, weight.view(1, M, K))
        ctx.save_for_backward(x, weight)
        ctx.conf = (eta, exact)
        return out.view(M, B).t().contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        eta, exact = ctx.conf
        B, K = x.shape
        M = weight.shape[0]
        X = x.t().contiguous().view(1, 1, K, B)
        G = grad.t().contiguous().view(1, 1, M, B)
        gX, gW = _adder_backward(X, weight.view(1, M, K), G, ctx.needs_input_grad[0],
                                 ctx.needs_input_grad[1], eta, exact)
        grad_x = gX.view(K, B).t() if gX is not None else None
        grad_w = gW.view(M, K) if gW is not None else None
        return grad_x, grad_w, None, None


def adder_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, eta: float | None = DEFAULT_ETA,
                 exact_grad: bool = False) -> torch.Tensor:
    """Functional adder convolution; ``weight`` is (M, C/groups, kh, kw) as for conv2d."""
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(f"adder_conv2d expects 4-D input and weight, got {tuple(x.shape)}, {tuple(weight.shape)}")
    if x.shape[1] != weight.shape[1] * groups or weight.shape[0] % groups:
        raise ValueError(f"adder_conv2d: input channels {x.shape[1]} / weight {tuple(weight.shape)} / "
                         f"groups {groups} do not match")
    out = _AdderConv2dFn.apply(x, weight, _pair(stride), _pair(padding), _pair(dilation), int(groups),
                               eta, bool(exact_grad))
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def adder_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 eta: float | None = DEFAULT_ETA, exact_grad: bool = False) -> torch.Tensor:
    """Functional adder fully connected layer; ``weight`` is (out_features, in_features)."""
    lead = x.shape[:-1]
    out = _AdderLinearFn.apply(x.reshape(-1, x.shape[-1]), weight, eta, bool(exact_grad))
    out = out.view(*lead, weight.shape[0])
    if bias is not None:
        out = out + bias
    return out


# ---------------------------------------------------------------------------------------------
# Modules

class _AdderMixin(nn.Module):
    ir_kind: str = ""
    eta: float | None
    exact_grad: bool
    act_bits: int | None
    act_frac_bits: int | None
    weight_bits: int | None
    weight_frac_bits: int | None

    def _setup(self, weight_shape: tuple[int, ...], bias: bool, eta: float | None, exact_grad: bool,
               act_bits: int | None, act_frac_bits: int | None, weight_bits: int | None,
               weight_frac_bits: int | None) -> None:
        for name, bits in (("act_bits", act_bits), ("weight_bits", weight_bits)):
            if bits is not None and bits < 2:
                raise ValueError(f"{name} must be >= 2 or None, got {bits}")
        self.eta, self.exact_grad = eta, bool(exact_grad)
        self.act_bits = act_bits
        self.act_frac_bits = None if act_bits is None else (act_frac_bits if act_frac_bits is not None
                                                            else act_bits // 2)
        self.weight_bits = weight_bits
        self.weight_frac_bits = None if weight_bits is None else (weight_frac_bits if weight_frac_bits is not None
                                                                  else weight_bits // 2)
        # AdderNet initialises adder weights from N(0, 1) (its BN afterwards absorbs the scale).
        self.weight = nn.Parameter(torch.randn(weight_shape))
        self.bias = nn.Parameter(torch.zeros(weight_shape[0])) if bias else None

    def _operands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weight
        if self.act_bits is not None:
            x = quantize_fixed_point(x, self.act_bits, self.act_frac_bits)  # type: ignore[arg-type]
        if self.weight_bits is not None:
            w = quantize_fixed_point(w, self.weight_bits, self.weight_frac_bits)  # type: ignore[arg-type]
        return x, w

    def ir_bits(self) -> tuple[int, int]:
        """(act_bits, weight_bits) the hardware must provide; unquantised operands count as 32."""
        return (self.act_bits or 32, self.weight_bits or 32)

    def _adder_repr(self) -> str:
        return (f"eta={self.eta}, exact_grad={self.exact_grad}, act_bits={self.act_bits}, "
                f"weight_bits={self.weight_bits}")


class AdderConv2d(_AdderMixin):
    """Adder convolution (AdderNet); bias off by default as in AdderNet (a BN follows)."""

    ir_kind = "adder_conv"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, bias: bool = False, *,
                 eta: float | None = DEFAULT_ETA, exact_grad: bool = False, act_bits: int | None = None,
                 act_frac_bits: int | None = None, weight_bits: int | None = None,
                 weight_frac_bits: int | None = None) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self._setup((out_channels, in_channels // groups, *self.kernel_size), bias, eta, exact_grad, act_bits,
                    act_frac_bits, weight_bits, weight_frac_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self._operands(x)
        return adder_conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups,
                            self.eta, self.exact_grad)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"bias={self.bias is not None}, {self._adder_repr()}")


class AdderLinear(_AdderMixin):
    """Adder fully connected layer (AdderNet's classifier variant)."""

    ir_kind = "adder_linear"

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *,
                 eta: float | None = DEFAULT_ETA, exact_grad: bool = False, act_bits: int | None = None,
                 act_frac_bits: int | None = None, weight_bits: int | None = None,
                 weight_frac_bits: int | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._setup((out_features, in_features), bias, eta, exact_grad, act_bits, act_frac_bits, weight_bits,
                    weight_frac_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self._operands(x)
        return adder_linear(x, w, self.bias, self.eta, self.exact_grad)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {self._adder_repr()}")


register_ir_kind(AdderConv2d, "adder_conv")
register_ir_kind(AdderLinear, "adder_linear")
