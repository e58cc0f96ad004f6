"""Lower a PyTorch ``nn.Module`` to the workload IR (:mod:`hw_models.workload`).

The model is traced symbolically with ``torch.fx`` and run once on a zero tensor of the given input
shape (``ShapeProp``), so every node knows its tensor shapes; each node then becomes zero or one IR
op (two or more for attention modules) whose graph predecessors are the ops that really produce its
inputs (data flow, not program order). Conventions are those of ``hw_models.zoo``:

* conv / linear layers -> ``conv`` / ``linear`` (grouped, depthwise, strided, padded; a linear on an
  (..., features) input has tokens = product of the leading dims); modules whose class declares an
  IR kind in the ``search_spaces`` registry (e.g. shift and adder layers) lower the same way with
  their own kind and the bit widths their ``ir_bits()`` reports;
* BatchNorm right after a conv/linear whose output nobody else reads is folded (no op); any other
  BatchNorm is an ``eltwise`` ``batchnorm``;
* activations (relu, relu6, gelu, hardswish, sigmoid, silu, tanh), residual adds, products and scalings are
  ``eltwise`` ops; LayerNorm / GroupNorm are ``eltwise`` ``layernorm``; softmax is ``softmax``;
* max / average / adaptive-average pooling (including global pooling and ``mean`` over H, W) ->
  ``pool``;
* a matrix product of two activations (``@``, ``torch.matmul``, ``bmm``) is a ``matmul`` with
  batch = product of the leading dims (attention QK^T and AV); ``nn.MultiheadAttention`` and
  ``F.scaled_dot_product_attention`` expand to projections, QK^T, softmax and AV;
* reshapes, permutes, transposes, flatten, slicing, concatenation, dropout and identity are free: the
  value keeps its producers.

Anything else that touches an activation makes lowering fail with one line naming every
unsupported module type and function. Bit widths default to 8 (as in the zoo).

torch is imported lazily: ``load_model_spec`` on a built-in name or a JSON file works without it.
"""
from __future__ import annotations

import importlib
import operator
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable

from hw_models.errors import WorkloadError
from hw_models.workload import (ELTWISE_OPS, ConvShape, LinearShape, Mask, MatmulShape, OpNode, PoolShape,
                                VectorShape, Workload)
from hw_models.zoo import BUILTIN, get_builtin

CONV_KINDS = ("conv", "shift_conv", "adder_conv")
LINEAR_KINDS = ("linear", "shift_linear", "adder_linear")
MATMUL_KINDS = ("matmul", "sparse_matmul")
DEFAULT_BITS = 8

def _eltwise_op(activation: str) -> str:
    if activation not in ELTWISE_OPS:
        raise WorkloadError(f"the workload IR has no eltwise op for {activation}")
    return activation


def _prod(values: Iterable[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def _pair(value: Any, what: str) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) == 1:
            return int(value[0]), int(value[0])
        if len(value) != 2:
            raise ValueError(f"{what} must be 2-D, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _ir_kind(module: Any) -> str | None:
    """The IR kind a module declares through the search_spaces registry (or an ``ir_kind`` attribute)."""
    try:
        from search_spaces.registry import ir_kind_of
    except ImportError:                                   # pragma: no cover - search_spaces ships with us
        kind = getattr(type(module), "ir_kind", None)
        return kind if isinstance(kind, str) and kind else None
    kind = ir_kind_of(module)
    return kind or None


def _ir_bits(module: Any) -> tuple[int, int, int]:
    """(act, weight, out) bits from the module's ``ir_bits()`` (a pair, a triple or a dict)."""
    act = weight = out = DEFAULT_BITS
    fn = getattr(module, "ir_bits", None)
    if callable(fn):
        bits = fn()
        if isinstance(bits, dict):
            act = bits.get("act_bits", bits.get("act", act))
            weight = bits.get("weight_bits", bits.get("weight", weight))
            out = bits.get("out_bits", bits.get("out", out))
        elif isinstance(bits, (tuple, list)):
            act, weight = bits[0], bits[1]
            if len(bits) > 2:
                out = bits[2]
        elif isinstance(bits, int):
            weight = bits
    return int(act), int(weight), int(out)


class _Unsupported(Exception):
    """A node that cannot be lowered; ``label`` names its module type or function."""

    def __init__(self, label: str, reason: str = ""):
        super().__init__(label)
        self.label, self.reason = label, reason


_QUALNAMES: dict[int, str] = {}


def _qualname(target: Any) -> str:
    """'torch.fft.fft' rather than 'torch._C._fft.fft_fft' for a function object."""
    if not _QUALNAMES:
        import torch
        import torch.nn.functional as F
        for prefix, ns in (("operator", operator), ("torch.special", torch.special), ("torch.linalg", torch.linalg),
                           ("torch.fft", torch.fft), ("torch", torch), ("torch.nn.functional", F)):
            for attr in dir(ns):
                if not attr.startswith("_"):
                    obj = getattr(ns, attr, None)
                    if callable(obj):
                        _QUALNAMES.setdefault(id(obj), f"{prefix}.{attr}")
    if id(target) in _QUALNAMES:
        return _QUALNAMES[id(target)]
    return f"{getattr(target, '__module__', '') or ''}.{getattr(target, '__name__', str(target))}".lstrip(".")


# ---------------------------------------------------------------------------------------------


def _parse_shape(input_shape: Any) -> tuple[int, ...]:
    if isinstance(input_shape, str):
        parts = [p for p in input_shape.replace("x", ",").replace(" ", ",").split(",") if p]
        try:
            input_shape = tuple(int(p) for p in parts)
        except ValueError:
            raise WorkloadError(f"input shape must be integers like 1,3,224,224, got {input_shape!r}") from None
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise WorkloadError(f"input shape must be a tuple of integers, got {input_shape!r}") from None
    if not shape or any(d < 1 for d in shape):
        raise WorkloadError(f"input shape must be positive integers, got {shape}")
    return shape


def lower_model(module: Any, input_shape: Any, name: str | None = None) -> Workload:
    """Trace ``module`` with an example input of ``input_shape`` (batch included) into a Workload.

    Raises :class:`hw_models.errors.WorkloadError` with a one-line message if tracing fails or if
    the model uses modules/functions the IR cannot express (all of them are listed).
    """
    import torch
    import torch.fx
    from torch.fx.passes.shape_prop import ShapeProp

    if not isinstance(module, torch.nn.Module):
        raise WorkloadError(f"lower_model needs a torch.nn.Module, got {type(module).__name__}")
    shape = _parse_shape(input_shape)
    name = name or type(module).__name__.lower()

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
            if _ir_kind(m) is not None or isinstance(m, torch.nn.MultiheadAttention):
                return True
            return super().is_leaf_module(m, qualname)

    try:
        graph = Tracer().trace(module)
    except Exception as exc:                               # noqa: BLE001 - any tracing failure is reported
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise WorkloadError(f"cannot lower {name}: torch.fx cannot trace it ({type(exc).__name__}: {msg[:200]}); "
                            "data-dependent control flow must be removed or wrapped in a leaf module") from None
    gm = torch.fx.GraphModule(module, graph)

    class FastShapeProp(ShapeProp):
        """Registered conv/linear-like leaves (e.g. adder layers, slow on a CPU) are replaced by a
        plain conv2d / linear with the same weight shape: only the output shape is needed."""

        def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
            m = self.fetch_attr(target)
            kind = _ir_kind(m)
            w = getattr(m, "weight", None)
            x = args[0] if args else None
            if (kind in CONV_KINDS and not isinstance(m, torch.nn.Conv2d) and isinstance(w, torch.Tensor)
                    and w.dim() == 4 and isinstance(x, torch.Tensor) and not kwargs and len(args) == 1):
                try:
                    return torch.nn.functional.conv2d(x, torch.zeros_like(w), None, getattr(m, "stride", 1),
                                                      getattr(m, "padding", 0), getattr(m, "dilation", 1),
                                                      getattr(m, "groups", 1))
                except (RuntimeError, TypeError, ValueError):
                    pass                                    # fall back to the module's own forward
            if (kind in LINEAR_KINDS and not isinstance(m, torch.nn.Linear) and isinstance(w, torch.Tensor)
                    and w.dim() == 2 and isinstance(x, torch.Tensor) and not kwargs and len(args) == 1
                    and x.shape[-1] == w.shape[1]):
                return torch.nn.functional.linear(x, torch.zeros_like(w))
            return super().call_module(target, args, kwargs)

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            FastShapeProp(gm).propagate(torch.zeros(shape))
    except Exception as exc:                               # noqa: BLE001
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise WorkloadError(f"cannot lower {name}: forward pass with input shape {tuple(shape)} failed "
                            f"({type(exc).__name__}: {msg[:200]})") from None
    finally:
        module.train(was_training)
    return _Lowering(gm, name, type(module).__name__).run()


class _Lowering:
    def __init__(self, gm: Any, name: str, model_class: str):
        import torch
        import torch.nn.functional as F

        self.torch, self.F = torch, F
        self.gm = gm
        self.workload = Workload(name=name, description=f"lowered from PyTorch model {model_class}")
        self.src: dict[Any, Any] = {}           # node -> tuple of producer op names | list (tuple outputs) | None
        self.kind_of: dict[Any, str] = {}       # node -> IR kind of the op it emitted
        self.unsupported: dict[tuple[str, str], str] = {}   # (modules|functions, label) -> reason
        self.modules = dict(gm.named_modules())

    # -- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _nodes_in(args: Any) -> list:
        import torch.fx
        found: list = []
        torch.fx.node.map_arg(args, lambda n: found.append(n))
        return found

    def _act(self, value: Any) -> bool:
        """Does ``value`` (a node) carry data derived from the model input?"""
        import torch.fx
        return isinstance(value, torch.fx.Node) and self.src.get(value) is not None

    def _srcs(self, *values: Any) -> tuple[str, ...]:
        out: list[str] = []
        for v in values:
            for n in self._nodes_in(v):
                s = self.src.get(n)
                if isinstance(s, list):
                    s = tuple(x for part in s for x in part)
                for name in s or ():
                    if name not in out:
                        out.append(name)
        return tuple(out)

    @staticmethod
    def _shape(node: Any) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise _Unsupported(str(node.target), "no tensor shape")
        return tuple(int(d) for d in meta.shape)

    @staticmethod
    def _is_tensor(node: Any) -> bool:
        meta = node.meta.get("tensor_meta")
        if meta is None:
            return False
        if hasattr(meta, "shape"):
            return True
        return isinstance(meta, (tuple, list)) and any(hasattr(m, "shape") for m in meta)

    def _unique(self, hint: str) -> str:
        base = hint or "op"
        name, i = base, 1
        while name in self.workload.graph:
            name = f"{base}_{i}"
            i += 1
        return name

    def _emit(self, hint: str, kind: str, shape: Any, preds: Iterable[str], bits: tuple[int, int, int] | None = None,
              density: float = 1.0, mask: Mask | None = None, mask_on: str = "out") -> str:
        act, weight, out = bits or (DEFAULT_BITS, DEFAULT_BITS, DEFAULT_BITS)
        op = OpNode(name=self._unique(hint), kind=kind, shape=shape, act_bits=act, weight_bits=weight,
                    out_bits=out, density=density, mask=mask, mask_on=mask_on)
        self.workload.add(op, list(dict.fromkeys(preds)))
        return op.name

    @staticmethod
    def _hint(node: Any) -> str:
        """Op name: the module path for modules; enclosing module path + function name otherwise."""
        if node.op == "call_module":
            return str(node.target)
        base = re.sub(r"_\d+$", "", node.name)
        stack = node.meta.get("nn_module_stack") or {}
        prefix = next(reversed(stack), "") if stack else ""
        return f"{prefix}.{base}" if prefix else base

    # -- op builders ---------------------------------------------------------------------------
    def conv(self, node: Any, x: Any, kind: str, out_ch: int, kernel: Any, stride: Any, padding: Any,
             dilation: Any, groups: int, bits: tuple[int, int, int] | None, label: str) -> tuple[str, ...]:
        xs = self._shape(x)
        if len(xs) != 4:
            raise _Unsupported(label, f"needs an NCHW input, got {len(xs)}-D")
        n, c, h, w = xs
        kh, kw = _pair(kernel, "kernel_size")
        sh, sw = _pair(stride, "stride")
        if isinstance(padding, str):
            if padding == "valid":
                ph = pw = 0
            else:                                             # "same" (stride 1)
                ph, pw = (kh - 1) // 2, (kw - 1) // 2
        else:
            ph, pw = _pair(padding, "padding")
        if _pair(dilation, "dilation") != (1, 1):
            raise _Unsupported(label, "dilated convolution")
        if sh != sw or ph != pw:
            raise _Unsupported(label, "unequal stride/padding along H and W")
        shape = ConvShape(n=n, c=c, h=h, w=w, m=int(out_ch), kh=kh, kw=kw, stride=sh, padding=ph, groups=int(groups))
        out = self._shape(node)
        if tuple(out) != (n, int(out_ch), shape.out_h, shape.out_w):
            raise _Unsupported(label, f"output {out} does not match a plain convolution")
        name = self._emit(self._hint(node), kind, shape, self._srcs(x), bits)
        self.kind_of[node] = kind
        return (name,)

    def linear(self, node: Any, x: Any, kind: str, fin: int, fout: int, bits: tuple[int, int, int] | None,
               label: str) -> tuple[str, ...]:
        xs = self._shape(x)
        if xs[-1] != fin:
            raise _Unsupported(label, f"input features {xs[-1]} != {fin}")
        shape = LinearShape(tokens=_prod(xs[:-1]), in_features=int(fin), out_features=int(fout))
        name = self._emit(self._hint(node), kind, shape, self._srcs(x), bits)
        self.kind_of[node] = kind
        return (name,)

    def matmul(self, node: Any, a: Any, b: Any, hint: str | None = None, kind: str = "matmul",
               density: float = 1.0, mask: Mask | None = None, mask_on: str = "out") -> tuple[str, ...]:
        act_a, act_b = self._act(a), self._act(b)
        sa = self._shape(a) if hasattr(a, "meta") else None
        sb = self._shape(b) if hasattr(b, "meta") else None
        if sa is None or sb is None:
            raise _Unsupported("matmul", "operand without a tensor shape")
        if act_a and act_b:
            rows = sa[-2] if len(sa) >= 2 else 1
            inner = sa[-1]
            cols = sb[-1] if len(sb) >= 2 else 1
            out = self._shape(node)
            batch = _prod(out[:-2]) if len(sa) >= 2 and len(sb) >= 2 else _prod(out) // max(1, rows * cols)
            name = self._emit(hint or self._hint(node), kind, MatmulShape(batch=max(1, batch), rows=rows, inner=inner,
                                                                          cols=cols), self._srcs(a, b),
                              density=1.0 if mask is not None else density, mask=mask, mask_on=mask_on)
            self.kind_of[node] = kind
            return (name,)
        if act_a:                              # activation @ constant matrix: a linear layer
            if len(sb) != 2:
                raise _Unsupported("matmul", "activation @ non-2-D constant")
            return self.linear(node, a, "linear", sb[0], sb[1], None, "matmul")
        # constant @ activation: W (r x i) @ x (..., i, c): every column of x through an i -> r layer
        if len(sa) != 2 or len(sb) < 2:
            raise _Unsupported("matmul", "constant @ activation with unexpected ranks")
        shape = LinearShape(tokens=_prod(sb[:-2]) * sb[-1], in_features=sa[1], out_features=sa[0])
        name = self._emit(hint or self._hint(node), "linear", shape, self._srcs(b))
        self.kind_of[node] = "linear"
        return (name,)

    def attention_core(self, prefix: str, q: tuple[str, ...], k: tuple[str, ...], v: tuple[str, ...], batch: int,
                       lq: int, lk: int, dk: int, dv: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """QK^T, softmax, AV; returns (output producers, attention-weight producers)."""
        qk = self._emit(f"{prefix}.qk", "matmul", MatmulShape(batch=batch, rows=lq, inner=dk, cols=lk), q + k)
        sm = self._emit(f"{prefix}.softmax", "softmax", VectorShape(elements=batch * lq * lk, row_len=lk), (qk,))
        av = self._emit(f"{prefix}.av", "matmul", MatmulShape(batch=batch, rows=lq, inner=lk, cols=dv), (sm,) + v)
        return (av,), (sm,)

    def eltwise(self, node: Any, op: str, inputs: list, row_len: int = 1, n_in: int | None = None) -> tuple[str, ...]:
        numel = _prod(self._shape(node))
        acts = [a for a in inputs if self._act(a)]
        shape = VectorShape(elements=numel, inputs=n_in or max(1, len(acts)), op=op, row_len=row_len)
        name = self._emit(self._hint(node), "eltwise", shape, self._srcs(*acts))
        self.kind_of[node] = "eltwise"
        return (name,)

    def pool(self, node: Any, x: Any, kernel: Any, stride: Any, padding: Any, mode: str, label: str,
             ceil_mode: bool = False, dilation: Any = 1) -> tuple[str, ...]:
        xs = self._shape(x)
        if len(xs) != 4:
            raise _Unsupported(label, "needs an NCHW input")
        kh, kw = _pair(kernel, "kernel_size")
        sh, sw = _pair(stride if stride not in (None, ()) else kernel, "stride")
        ph, pw = _pair(padding, "padding")
        if kh != kw or sh != sw or ph != pw or _pair(dilation, "dilation") != (1, 1):
            raise _Unsupported(label, "non-square pooling window")
        n, c, h, w = xs
        shape = PoolShape(n=n, c=c, h=h, w=w, kernel=kh, stride=sh, padding=ph, mode=mode)
        shape.validate(self._hint(node))
        if self._shape(node) != (n, c, shape.out_h, shape.out_w):
            raise _Unsupported(label, "output shape (ceil_mode?) differs from the IR's pooling")
        name = self._emit(self._hint(node), "pool", shape, self._srcs(x))
        self.kind_of[node] = "pool"
        return (name,)

    def adaptive_pool(self, node: Any, x: Any, mode: str, label: str) -> tuple[str, ...]:
        xs = self._shape(x)
        out = self._shape(node)
        if len(xs) != 4 or len(out) != 4:
            raise _Unsupported(label, "needs an NCHW input")
        n, c, h, w = xs
        oh, ow = out[2], out[3]
        if h % oh or w % ow or h // oh != w // ow:
            raise _Unsupported(label, f"adaptive pooling {h}x{w} -> {oh}x{ow} is not a square uniform window")
        k = h // oh
        return self.pool(node, x, k, k if (oh, ow) != (1, 1) or h != w else 1, 0, mode, label)

    def softmax(self, node: Any, x: Any, dim: Any) -> tuple[str, ...]:
        xs = self._shape(x)
        dim = -1 if dim is None else int(dim)
        srcs = self._srcs(x)
        elements = _prod(xs)
        if len(srcs) == 1:                    # after a masked QK^T only the kept scores are normalised
            src = self.workload.op(srcs[0])
            if src.kind == "sparse_matmul" and src.mask is not None and src.mask_on == "out":
                elements = src.macs // src.gemm[2]
        shape = VectorShape(elements=elements, row_len=int(xs[dim]))
        name = self._emit(self._hint(node), "softmax", shape, srcs)
        self.kind_of[node] = "softmax"
        return (name,)

    # -- dispatch --------------------------------------------------------------------------------
    def run(self) -> Workload:
        for node in self.gm.graph.nodes:
            try:
                self.src[node] = self.visit(node)
            except _Unsupported as exc:
                group = "modules" if node.op == "call_module" else "functions"
                self.unsupported.setdefault((group, exc.label), exc.reason)
                self.src[node] = self._srcs(node.args, node.kwargs) or ()
        if self.unsupported:
            groups = []
            for group in ("modules", "functions"):
                parts = [f"{label} ({reason})" if reason else label
                         for (g, label), reason in sorted(self.unsupported.items()) if g == group]
                if parts:
                    groups.append(f"unsupported {group}: {', '.join(parts)}")
            raise WorkloadError(f"cannot lower {self.workload.name}: {'; '.join(groups)}")
        if len(self.workload) == 0:
            raise WorkloadError(f"cannot lower {self.workload.name}: it has no compute operators")
        return self.workload

    def visit(self, node: Any) -> Any:
        if node.op == "placeholder":
            return ()
        if node.op == "get_attr":
            return None
        if node.op == "output":
            return None
        inputs = self._nodes_in((node.args, node.kwargs))
        if not any(self.src.get(n) is not None for n in inputs):
            return None                                     # constant folding territory: no work on activations
        if node.op == "call_module":
            return self.visit_module(node, self.modules[node.target])
        if not self._is_tensor(node):
            return None                                     # sizes, dims, dtypes: not data
        if node.op == "call_method":
            return self.visit_function(node, node.target, method=True)
        return self.visit_function(node, node.target, method=False)

    def visit_module(self, node: Any, m: Any) -> Any:
        torch = self.torch
        nn = torch.nn
        label = type(m).__name__
        x = node.args[0] if node.args else next(iter(node.kwargs.values()))
        kind = _ir_kind(m)
        if kind is not None:
            bits = _ir_bits(m) if not isinstance(m, (nn.Conv2d, nn.Linear)) or hasattr(m, "ir_bits") else None
            if kind in CONV_KINDS:
                weight = getattr(m, "weight", None)
                out_ch = getattr(m, "out_channels", None) or (weight.shape[0] if weight is not None else None)
                ksize = getattr(m, "kernel_size", None) or (tuple(weight.shape[2:]) if weight is not None else None)
                if out_ch is None or ksize is None:
                    raise _Unsupported(label, "conv-like module without out_channels/kernel_size")
                return self.conv(node, x, kind, out_ch, ksize, getattr(m, "stride", 1), getattr(m, "padding", 0),
                                 getattr(m, "dilation", 1), getattr(m, "groups", 1), bits, label)
            if kind in LINEAR_KINDS:
                weight = getattr(m, "weight", None)
                fin = getattr(m, "in_features", None) or (weight.shape[1] if weight is not None else None)
                fout = getattr(m, "out_features", None) or (weight.shape[0] if weight is not None else None)
                if fin is None or fout is None:
                    raise _Unsupported(label, "linear-like module without in_features/out_features")
                return self.linear(node, x, kind, fin, fout, bits, label)
            if kind in MATMUL_KINDS:
                if len(node.args) < 2:
                    raise _Unsupported(label, "matmul-like module needs two inputs")
                density = float(getattr(m, "density", 1.0)) if kind == "sparse_matmul" else 1.0
                mask, mask_on = None, "out"
                fixed = getattr(m, "mask", None) if kind == "sparse_matmul" else None
                if fixed is not None and hasattr(fixed, "detach"):   # a fixed pattern (ViTCoD): keep it exactly
                    mask = Mask.from_array(fixed.detach().cpu().bool().reshape(-1, *fixed.shape[-2:]).numpy())
                    mask_on = getattr(m, "mask_on", "out")
                return self.matmul(node, node.args[0], node.args[1], kind=kind, density=density, mask=mask,
                                   mask_on=mask_on)
            raise _Unsupported(label, f"IR kind {kind!r} has no lowering")
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            return self.batchnorm(node, x)
        act = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.GELU: "gelu", nn.Hardswish: "hardswish",
               nn.Sigmoid: "sigmoid", nn.SiLU: "silu", nn.Tanh: "tanh"}.get(type(m))
        if act is None and isinstance(m, nn.Hardtanh) and (m.min_val, m.max_val) == (0.0, 6.0):
            act = "relu6"
        if act is not None:
            return self.eltwise(node, _eltwise_op(act), [x])
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            mode = "max" if isinstance(m, nn.MaxPool2d) else "avg"
            if getattr(m, "ceil_mode", False):
                raise _Unsupported(label, "ceil_mode")
            return self.pool(node, x, m.kernel_size, m.stride, m.padding, mode, label,
                             dilation=getattr(m, "dilation", 1))
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            return self.adaptive_pool(node, x, "avg" if isinstance(m, nn.AdaptiveAvgPool2d) else "max", label)
        if isinstance(m, nn.LayerNorm):
            return self.eltwise(node, "layernorm", [x], row_len=_prod(m.normalized_shape))
        if isinstance(m, nn.GroupNorm):
            xs = self._shape(x)
            return self.eltwise(node, "layernorm", [x], row_len=_prod(xs[1:]) // m.num_groups)
        if isinstance(m, nn.Softmax):
            return self.softmax(node, x, m.dim)
        if isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.Flatten, nn.Unflatten)):
            return self._srcs(x)
        if isinstance(m, nn.MultiheadAttention):
            return self.multihead(node, m)
        raise _Unsupported(label)

    def batchnorm(self, node: Any, x: Any) -> Any:
        if self.kind_of.get(x) in CONV_KINDS + LINEAR_KINDS and len(x.users) == 1:
            return self._srcs(x)                             # folded into the preceding layer
        return self.eltwise(node, "batchnorm", [x])

    def multihead(self, node: Any, m: Any) -> Any:
        args = list(node.args) + [None] * 3
        q = args[0] if args[0] is not None else node.kwargs.get("query")
        k = args[1] if args[1] is not None else node.kwargs.get("key")
        v = args[2] if args[2] is not None else node.kwargs.get("value")
        qs, ks = self._shape(q), self._shape(k)
        if len(qs) == 2:                                     # unbatched (L, E)
            n, lq, lk = 1, qs[0], ks[0]
        elif m.batch_first:
            n, lq, lk = qs[0], qs[1], ks[1]
        else:
            lq, n, lk = qs[0], qs[1], ks[0]
        e, h = m.embed_dim, m.num_heads
        prefix = str(node.target)
        if q is k and k is v and m._qkv_same_embed_dim:
            qkv = (self._emit(f"{prefix}.in_proj", "linear", LinearShape(tokens=n * lq, in_features=e, out_features=3 * e),
                              self._srcs(q)),)
            qp = kp = vp = qkv
        else:
            qp = (self._emit(f"{prefix}.q_proj", "linear", LinearShape(n * lq, e, e), self._srcs(q)),)
            kp = (self._emit(f"{prefix}.k_proj", "linear", LinearShape(n * lk, m.kdim, e), self._srcs(k)),)
            vp = (self._emit(f"{prefix}.v_proj", "linear", LinearShape(n * lk, m.vdim, e), self._srcs(v)),)
        out, weights = self.attention_core(prefix, qp, kp, vp, n * h, lq, lk, e // h, e // h)
        proj = self._emit(f"{prefix}.out_proj", "linear", LinearShape(n * lq, e, e), out)
        self.kind_of[node] = "linear"
        return [(proj,), weights]

    def visit_function(self, node: Any, target: Any, method: bool) -> Any:
        torch, F = self.torch, self.F
        args, kwargs = node.args, node.kwargs
        label = f"Tensor.{target}" if method else _qualname(target)
        x = args[0] if args else None

        def arg(i: int, key: str, default: Any = None) -> Any:
            if len(args) > i:
                return args[i]
            return kwargs.get(key, default)

        # free: layout changes, slicing, concatenation, dropout
        free_methods = {"view", "reshape", "flatten", "unflatten", "permute", "transpose", "contiguous",
                        "unsqueeze", "squeeze", "expand", "expand_as", "repeat", "chunk", "split", "unbind",
                        "type", "to", "float", "half", "double", "detach", "clone", "view_as", "reshape_as",
                        "t", "narrow", "swapaxes", "movedim", "__getitem__", "cpu", "flip", "roll"}
        free_functions = {torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze,
                          torch.unsqueeze, torch.cat, torch.concat, torch.stack, torch.chunk, torch.split,
                          torch.unbind, torch.narrow, torch.t, torch.swapaxes, torch.movedim, torch.clone,
                          operator.getitem, getattr, F.dropout, F.dropout1d, F.dropout2d, torch.flip, torch.roll}
        if (method and target in free_methods) or (not method and target in free_functions):
            if target is operator.getitem and isinstance(self.src.get(x), list):
                idx = args[1]
                if isinstance(idx, int):
                    return self.src[x][idx]
            return self._srcs(args, kwargs)
        # activations
        acts = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.gelu: "gelu", F.hardswish: "hardswish",
                torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.silu: "silu", torch.tanh: "tanh", F.tanh: "tanh"}
        acts_m = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid", "tanh": "tanh",
                  "tanh_": "tanh"}
        act = acts_m.get(target) if method else acts.get(target)
        if act is None and not method and target is F.hardtanh and (arg(1, "min_val", -1.0), arg(2, "max_val", 1.0)) == (0.0, 6.0):
            act = "relu6"
        if act is None and ((method and target in ("clamp", "clamp_")) or (not method and target is torch.clamp)):
            lo, hi = arg(1, "min"), arg(2, "max")
            act = "relu" if (lo == 0 and hi is None) else ("relu6" if (lo == 0 and hi == 6) else None)
        if act is not None:
            return self.eltwise(node, _eltwise_op(act), [x])
        # element-wise arithmetic
        binary = {operator.add: "add", operator.iadd: "add", torch.add: "add", operator.sub: "add",
                  operator.isub: "add", torch.sub: "add", operator.mul: "mul", operator.imul: "mul",
                  torch.mul: "mul", operator.truediv: "div", operator.itruediv: "div", torch.div: "div"}
        binary_m = {"add": "add", "add_": "add", "__add__": "add", "__radd__": "add", "sub": "add", "sub_": "add",
                    "__sub__": "add", "__rsub__": "add", "mul": "mul", "mul_": "mul", "__mul__": "mul",
                    "__rmul__": "mul", "div": "div", "div_": "div", "__truediv__": "div"}
        bop = binary_m.get(target) if method else binary.get(target)
        if bop is not None:
            a, b = arg(0, "input"), arg(1, "other")
            both = self._act(a) and self._act(b)
            if bop == "div":
                if both:
                    raise _Unsupported(label, "division of two activations")
                bop = "mul"                                   # scaling by a constant: multiply by its reciprocal
            return self.eltwise(node, bop, [a, b], n_in=2 if both else 1)
        # products
        if (method and target in ("matmul", "bmm", "__matmul__")) or (not method and target in (torch.matmul, operator.matmul, torch.bmm)):
            return self.matmul(node, args[0], args[1])
        if not method and target is F.linear:
            w = arg(1, "weight")
            ws = self._shape(w)
            if self._act(w):
                raise _Unsupported(label, "weight computed from activations")
            return self.linear(node, x, "linear", ws[1], ws[0], None, label)
        if not method and target is F.conv2d:
            w = arg(1, "weight")
            ws = self._shape(w)
            if self._act(w):
                raise _Unsupported(label, "weight computed from activations")
            return self.conv(node, x, "conv", ws[0], ws[2:], arg(3, "stride", 1), arg(4, "padding", 0),
                             arg(5, "dilation", 1), arg(6, "groups", 1), None, label)
        if not method and target is F.scaled_dot_product_attention:
            q, k, v = arg(0, "query"), arg(1, "key"), arg(2, "value")
            qs, ks, vs = self._shape(q), self._shape(k), self._shape(v)
            batch = _prod(self._shape(node)[:-2])
            out, _ = self.attention_core(self._hint(node), self._srcs(q), self._srcs(k), self._srcs(v), batch,
                                         qs[-2], ks[-2], qs[-1], vs[-1])
            self.kind_of[node] = "matmul"
            return out
        # normalisation, softmax
        if (method and target in ("softmax", "log_softmax")) or (not method and target in (F.softmax, torch.softmax, F.log_softmax, torch.log_softmax)):
            return self.softmax(node, x, arg(1, "dim", -1))
        if not method and target is F.layer_norm:
            return self.eltwise(node, "layernorm", [x], row_len=_prod(arg(1, "normalized_shape")))
        if not method and target is F.batch_norm:
            return self.batchnorm(node, x)
        # pooling
        if not method and target in (F.max_pool2d, F.avg_pool2d):
            if arg(5 if target is F.max_pool2d else 4, "ceil_mode", False):
                raise _Unsupported(label, "ceil_mode")
            return self.pool(node, x, arg(1, "kernel_size"), arg(2, "stride"), arg(3, "padding", 0),
                             "max" if target is F.max_pool2d else "avg", label,
                             dilation=arg(4, "dilation", 1) if target is F.max_pool2d else 1)
        if not method and target in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
            return self.adaptive_pool(node, x, "avg" if target is F.adaptive_avg_pool2d else "max", label)
        if (method and target == "mean") or (not method and target is torch.mean):
            dims = arg(1, "dim")
            xs = self._shape(x)
            dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
            if len(xs) == 4 and sorted(d % 4 for d in dims if d is not None) == [2, 3]:
                n, c, h, w = xs
                if h != w:
                    raise _Unsupported(label, "global mean over a non-square map")
                shape = PoolShape(n=n, c=c, h=h, w=w, kernel=h, stride=1, padding=0, mode="avg")
                name = self._emit(self._hint(node), "pool", shape, self._srcs(x))
                self.kind_of[node] = "pool"
                return (name,)
            raise _Unsupported(label, "mean over dims other than H, W of an NCHW map")
        raise _Unsupported(label)


# ---------------------------------------------------------------------------------------------


def load_model_spec(spec: str, input_shape: Any = None) -> Workload:
    """A built-in workload name, a path to a workload JSON file, or ``package.module:factory``.

    ``package.module:factory`` is imported from the current directory (then sys.path); ``factory``
    is an nn.Module instance or a callable returning one, lowered with ``input_shape`` (required).
    """
    spec = str(spec)
    if spec in BUILTIN:
        return get_builtin(spec)
    path = Path(spec)
    if path.suffix == ".json" or path.is_file():
        return Workload.from_json(path)
    if ":" in spec:
        mod_name, _, attr = spec.partition(":")
        if not mod_name or not attr:
            raise WorkloadError(f"model spec {spec!r} must look like package.module:factory")
        if input_shape is None:
            raise WorkloadError(f"{spec}: a PyTorch model needs an input shape (e.g. 1,3,224,224)")
        shape = _parse_shape(input_shape)
        cwd = os.getcwd()
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
        try:
            module = importlib.import_module(mod_name)
        except Exception as exc:                                  # noqa: BLE001 - user code may raise anything
            raise WorkloadError(f"cannot import {mod_name!r} for {spec}: {type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        obj: Any = module
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise WorkloadError(f"{mod_name} has no attribute {attr!r}")
            obj = getattr(obj, part)
        import torch
        if not isinstance(obj, torch.nn.Module):
            if not callable(obj):
                raise WorkloadError(f"{spec} is neither an nn.Module nor a callable returning one")
            try:
                obj = obj()
            except Exception as exc:                              # noqa: BLE001
                raise WorkloadError(f"{spec}() failed: {type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
            if not isinstance(obj, torch.nn.Module):
                raise WorkloadError(f"{spec}() returned {type(obj).__name__}, not an nn.Module")
        return lower_model(obj, shape, name=attr.split(".")[-1])
    raise WorkloadError(f"unknown model {spec!r}: not a built-in workload ({', '.join(BUILTIN)}), "
                        "a workload .json file, or package.module:factory")
