"""search_spaces.zoo_models: the PyTorch twin of every built-in workload has the zoo IR's layers.

Two independent checks: (1) forward hooks on the torch model read every conv/linear/matmul's GEMM
shape and arithmetic family, which must equal the IR's, op for op; (2) lowering the model with
codesign.lower gives the same MAC count and GEMM shapes (skipped while codesign.lower is absent).
"""
import functools
import importlib

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

from hw_models.zoo import attention_masks, builtin_names, get_builtin  # noqa: E402
from search_spaces import AdderConv2d, ShiftConv2d  # noqa: E402
from search_spaces.zoo_models import MASKED_MODELS, build_zoo_model, input_shape_of, zoo_model_names  # noqa: E402

FAMILY_OF = {nn.Conv2d: "mac", ShiftConv2d: "shift", AdderConv2d: "adder"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on a shared 2-core machine, OpenMP barriers make 2 threads far slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class _MatmulRecorder(TorchFunctionMode):
    def __init__(self, out):
        super().__init__()
        self.out = out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if func is torch.matmul:
            a, b = args
            self.out.append(("mac", (a.numel() // (a.shape[-2] * a.shape[-1]), a.shape[-2], a.shape[-1], b.shape[-1])))
        return result


def torch_gemms(model, shape):
    """(family, (groups, P, K, M)) of every compute layer, in execution order."""
    out = []

    def hook(mod, inp, outp):
        x = inp[0]
        if isinstance(mod, nn.Linear):
            out.append(("mac", (1, x.numel() // x.shape[-1], mod.in_features, mod.out_features)))
            return
        n, c = x.shape[:2]
        _, m, oh, ow = outp.shape
        kh, kw = mod.kernel_size
        g = mod.groups
        out.append((FAMILY_OF[type(mod)], (g, n * oh * ow, c // g * kh * kw, m // g)))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear, ShiftConv2d, AdderConv2d))]
    try:
        with torch.inference_mode(), _MatmulRecorder(out):
            y = model(torch.randn(shape))
    finally:
        for h in handles:
            h.remove()
    return out, y


@functools.lru_cache(maxsize=None)
def twin(name):
    """One built model per name for the module (the tests only read it)."""
    return build_zoo_model(name, masks=attention_masks(get_builtin(name)) if name in MASKED_MODELS else None)


def ir_gemms(wl):
    return [(op.family, op.gemm) for op in wl.ops() if op.is_gemm]


def test_every_builtin_has_a_torch_twin():
    assert set(zoo_model_names()) == set(builtin_names())


@pytest.mark.parametrize("name", builtin_names())
def test_torch_layers_match_the_ir(name):
    wl = get_builtin(name)
    model = twin(name)
    shape = input_shape_of(name)
    assert shape == (wl.ops()[0].shape.n, wl.ops()[0].shape.c, wl.ops()[0].shape.h, wl.ops()[0].shape.w)
    got, y = torch_gemms(model, shape)
    assert got == ir_gemms(wl)
    dense_macs = sum(g * p * k * m for _, (g, p, k, m) in ir_gemms(wl))     # sparse twins run dense matmuls
    assert sum(g * p * k * m for _, (g, p, k, m) in got) == dense_macs
    assert (wl.macs < dense_macs) if "sparse" in name else (wl.macs == dense_macs)
    classes = 10 if "cifar" in name or name.startswith("resnet20") else 1000
    assert tuple(y.shape) == (1, classes) and torch.isfinite(y).all()


def test_hook_check_can_fail():
    """The comparison is sensitive: one shift layer swapped for a same-shape multiply conv, or a
    different kernel size, does not match."""
    wl = get_builtin("resnet20-hybrid")
    model = build_zoo_model("resnet20-hybrid")
    model.layer1[1].conv1 = nn.Conv2d(16, 16, 3, 1, 1, bias=False)
    got, _ = torch_gemms(model, input_shape_of("resnet20-hybrid"))
    assert got != ir_gemms(wl) and sorted(g for _, g in got) == sorted(g for _, g in ir_gemms(wl))
    model = build_zoo_model("resnet20-conv")
    model.conv1 = nn.Conv2d(3, 16, 5, 1, 2, bias=False)
    got, _ = torch_gemms(model, input_shape_of("resnet20-conv"))
    assert got != ir_gemms(get_builtin("resnet20-conv"))


def test_shift_and_adder_layers_use_the_zoo_bit_widths():
    model = build_zoo_model("resnet20-hybrid")
    shifts = [m for m in model.modules() if isinstance(m, ShiftConv2d)]
    adders = [m for m in model.modules() if isinstance(m, AdderConv2d)]
    wl = get_builtin("resnet20-hybrid")
    assert len(shifts) == sum(op.kind == "shift_conv" for op in wl.ops())
    assert len(adders) == sum(op.kind == "adder_conv" for op in wl.ops())
    shift_ir = next(op for op in wl.ops() if op.kind == "shift_conv")
    adder_ir = next(op for op in wl.ops() if op.kind == "adder_conv")
    assert all(m.ir_bits() == (shift_ir.act_bits, shift_ir.weight_bits) for m in shifts)
    assert all(m.ir_bits() == (adder_ir.act_bits, adder_ir.weight_bits) for m in adders)


def test_masked_twins_need_their_masks():
    with pytest.raises(ValueError, match="attention masks must be given exactly for"):
        build_zoo_model("deit-small-sparse90")
    with pytest.raises(ValueError, match="needs 12 attention masks, got 1"):
        build_zoo_model("deit-small-sparse90", masks=attention_masks(get_builtin("deit-small-sparse90"))[:1])


def test_build_is_deterministic():
    a = build_zoo_model("resnet20-shift", seed=3)
    b = build_zoo_model("resnet20-shift", seed=3)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("name", builtin_names())
def test_lowering_matches_the_ir(name):
    try:
        lower = importlib.import_module("codesign.lower")
    except ImportError as exc:
        pytest.skip(f"codesign.lower is not in this checkout yet ({exc})")
    wl = get_builtin(name)
    lowered = lower.lower_model(twin(name), input_shape_of(name), name=name)
    assert lowered.macs == wl.macs
    masked = [(op.mask, op.mask_on) for op in wl.ops() if op.mask is not None]
    assert [(op.mask, op.mask_on) for op in lowered.ops() if op.mask is not None] == masked
    assert sorted((op.kind, op.gemm) for op in lowered.ops() if op.is_gemm) == \
        sorted((op.kind, op.gemm) for op in wl.ops() if op.is_gemm)
