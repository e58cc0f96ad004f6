"""Forward+backward throughput of the shift and adder ops relative to nn.Conv2d of the same shape.

Why: a search that trains shift/adder candidates is only practical if they train at a useful
fraction of convolution speed. This times one training step (forward, then backward with a fixed
upstream gradient, input and weight gradients both computed) of

* ``nn.Conv2d`` (the reference),
* ``ShiftConv2d`` (DeepShift-Q and -PS, 8-bit activations),
* ``AdderConv2d`` with the default backend (the native SIMD kernel on a CPU, the Triton kernels on
  CUDA when triton is installed -- ``pip install '.[cuda]'`` -- pure torch otherwise),
* ``AdderConv2d`` forced onto the pure-torch path,
* a naive adder (broadcast ``-(x - w).abs().sum()`` with autograd, run in batch chunks so its
  intermediate fits in memory),

and prints a Markdown table of median times and of throughput ratios ``t_conv / t_op``.

On CUDA the reference is cuDNN in true fp32: TF32 is switched off for convolutions and matmuls
(PyTorch lets cuDNN use TF32 tensor cores by default), unless ``--tf32``. The Triton adder kernels
are autotuned during the warm-up call, which is not timed. The target there is adder >= 0.3x conv.

    python benchmarks/bench_ops.py [--device cpu|cuda] [--quick] [--threads N] [--stat median|min] [--tf32]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search_spaces import AdderConv2d, ShiftConv2d, use_adder_backend  # noqa: E402
from search_spaces import _adder_native, _adder_triton  # noqa: E402

# (name, N, C, M, H, kernel, stride, padding, groups)
SHAPES = [
    ("64-64 3x3 32x32", 32, 64, 64, 32, 3, 1, 1, 1),
    ("64-64 3x3 16x16", 32, 64, 64, 16, 3, 1, 1, 1),
    ("128-128 3x3 8x8", 32, 128, 128, 8, 3, 1, 1, 1),
    ("64-128 3x3 s2 16x16", 32, 64, 128, 16, 3, 2, 1, 1),
    ("dw 128 3x3 16x16", 32, 128, 128, 16, 3, 1, 1, 128),
    ("16-16 3x3 32x32", 32, 16, 16, 32, 3, 1, 1, 1),
]
QUICK = {"64-64 3x3 32x32", "64-64 3x3 16x16"}


class NaiveAdder(nn.Module):
    """Obviously-correct adder: broadcast, autograd (true sign gradients), batch-chunked."""

    def __init__(self, ref: AdderConv2d, chunk_bytes: float = 1.5e9) -> None:
        super().__init__()
        self.ref, self.chunk_bytes = ref, chunk_bytes

    def step(self, x: torch.Tensor, grad: torch.Tensor) -> None:
        r = self.ref
        N = x.shape[0]
        M, Cg, kh, kw = r.weight.shape
        g = r.groups
        Ho, Wo = grad.shape[2:]
        per_sample = M * Cg * kh * kw * Ho * Wo * 4 * 3
        nb = max(1, int(self.chunk_bytes // per_sample))
        W = r.weight.reshape(g, M // g, Cg * kh * kw)
        for n0 in range(0, N, nb):
            xs = x[n0:n0 + nb]
            cols = F.unfold(xs, (kh, kw), r.dilation, r.padding, r.stride)
            X = cols.view(xs.shape[0], g, Cg * kh * kw, Ho * Wo)
            out = -(X[:, :, None] - W[None, :, :, :, None]).abs().sum(3)
            out.backward(grad[n0:n0 + nb].reshape(out.shape))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


STAT: Callable[[list[float]], float] = statistics.median


def time_step(fn: Callable[[], None], device: torch.device, reps: int, max_seconds: float) -> float:
    """Median (or ``--stat min``) seconds of ``fn`` after one warm-up call (stops past ``max_seconds``)."""
    fn()
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > max_seconds:
            break
    return STAT(times)


def bench_shape(shape: tuple, device: torch.device, reps: int, naive: bool) -> dict[str, float]:
    _, N, C, M, H, k, s, p, g = shape
    torch.manual_seed(0)
    x = torch.randn(N, C, H, H, device=device, requires_grad=True)
    conv = nn.Conv2d(C, M, k, s, p, groups=g, bias=False).to(device)
    shift_q = ShiftConv2d(C, M, k, s, p, groups=g, bias=False, mode="q").to(device)
    shift_ps = ShiftConv2d(C, M, k, s, p, groups=g, bias=False, mode="ps").to(device)
    adder = AdderConv2d(C, M, k, s, p, groups=g).to(device)
    with torch.no_grad():
        grad = torch.randn_like(conv(x))

    def step(mod: nn.Module) -> Callable[[], None]:
        def fn() -> None:
            x.grad = None
            mod.zero_grad(set_to_none=True)
            mod(x).backward(grad)
        return fn

    budget = 20.0
    res = {"conv": time_step(step(conv), device, reps, budget),
           "shift_q": time_step(step(shift_q), device, reps, budget),
           "shift_ps": time_step(step(shift_ps), device, reps, budget),
           "adder": time_step(step(adder), device, reps, budget)}
    with use_adder_backend("torch"):
        res["adder_torch"] = time_step(step(adder), device, max(1, reps // 3), budget)
    if naive:
        nv = NaiveAdder(adder)

        def naive_fn() -> None:
            x.grad = None
            adder.zero_grad(set_to_none=True)
            nv.step(x, grad)
        res["naive"] = time_step(naive_fn, device, 1, budget)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--quick", action="store_true", help="two shapes, fewer repetitions, naive only on 16x16")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--stat", choices=["median", "min"], default="median",
                    help="min is the robust choice on a machine shared with other jobs")
    ap.add_argument("--tf32", action="store_true", help="CUDA: let cuDNN / cuBLAS use TF32 (default: true fp32)")
    args = ap.parse_args(argv)
    global STAT
    STAT = min if args.stat == "min" else statistics.median
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"bench_ops: --device cuda but CUDA is not available (torch {torch.__version__})", file=sys.stderr)
        return 2
    if args.device == "cuda":
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    reps = args.reps or (3 if args.quick else 7)
    shapes = [s for s in SHAPES if not args.quick or s[0] in QUICK]

    backend = "torch"
    if device.type == "cpu" and _adder_native.available():
        backend = f"native ({_adder_native.build_info().get('lanes')} lanes)"
    elif device.type == "cuda":
        backend = ("triton (autotuned)" if _adder_triton.available() else
                   "torch (triton not installed: pip install '.[cuda]')")
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"# bench_ops: forward+backward, batch 32, float32, device={device}, "
          f"threads={torch.get_num_threads()}, {args.stat} of {reps} runs, torch {torch.__version__}")
    gpu = ""
    if device.type == "cuda":
        gpu = f"; gpu: {torch.cuda.get_device_name(device)}, conv reference {'TF32' if args.tf32 else 'fp32 (TF32 off)'}"
    print(f"# cpu: {cpu}{gpu}; adder backend: {backend}\n")
    print("| shape (C-M k HxW) | conv ms | shift-Q ms (x conv) | shift-PS ms (x conv) | adder ms (x conv) "
          "| adder, pure torch ms (x conv) | naive adder ms (x conv) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for shape in shapes:
        naive = not args.quick or shape[4] <= 16
        r = bench_shape(shape, device, reps, naive)
        c = r["conv"]

        def cell(key: str) -> str:
            if key not in r:
                return "-"
            return f"{r[key] * 1e3:.1f} ({c / r[key]:.2f}x)"
        print(f"| {shape[0]} | {c * 1e3:.1f} | {cell('shift_q')} | {cell('shift_ps')} | {cell('adder')} "
              f"| {cell('adder_torch')} | {cell('naive')} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
