"""Which workload-IR kind a torch module lowers to.

The lowering (``codesign.lower``) must not hard-code the op classes of ``search_spaces``: a new op
declares its kind once, here, and every consumer (lowering, NAS cost term, reports) picks it up.
An op can declare its kind either by calling :func:`register_ir_kind` or with a class attribute
``ir_kind``; the registry wins when both exist. Lookup walks the MRO, so a subclass of a registered
op lowers like its parent unless it registers a kind of its own.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import torch.nn as nn

__all__ = ["register_ir_kind", "ir_kind_of", "registered_ir_kinds", "IR_KINDS"]

#: The GEMM kinds of the workload IR (``hw_models.workload.GEMM_KINDS``) that a torch module can
#: lower to. Kept as a literal: ``search_spaces`` depends on torch only, not on ``hw_models``
#: (a test asserts the two stay in step).
IR_KINDS = frozenset({
    "conv", "shift_conv", "adder_conv",
    "linear", "shift_linear", "adder_linear",
    "matmul", "sparse_matmul",
})

_REGISTRY: dict[type, str] = {}

M = TypeVar("M", bound=type)


def register_ir_kind(module_cls: type, kind: str) -> None:
    """Declare that instances of ``module_cls`` (and its subclasses) lower to IR ``kind``."""
    if not isinstance(module_cls, type) or not issubclass(module_cls, nn.Module):
        raise TypeError(f"register_ir_kind: {module_cls!r} is not an nn.Module subclass")
    if kind not in IR_KINDS:
        raise ValueError(f"register_ir_kind: unknown IR kind {kind!r} (known: {', '.join(sorted(IR_KINDS))})")
    _REGISTRY[module_cls] = kind


def ir_kind(kind: str) -> Callable[[M], M]:
    """Class decorator form of :func:`register_ir_kind`; also sets the ``ir_kind`` attribute."""
    def deco(cls: M) -> M:
        register_ir_kind(cls, kind)
        cls.ir_kind = kind  # type: ignore[attr-defined]
        return cls
    return deco


def ir_kind_of(module: nn.Module | type) -> str | None:
    """The IR kind a module (or module class) lowers to, or None if it is not a compute op."""
    cls = module if isinstance(module, type) else type(module)
    for base in cls.__mro__:
        if base in _REGISTRY:
            return _REGISTRY[base]
    kind = getattr(cls, "ir_kind", None)
    return kind if isinstance(kind, str) else None


def registered_ir_kinds() -> dict[type, str]:
    """A copy of the registry, for reports and debugging."""
    return dict(_REGISTRY)


# Plain torch layers: registered here so the lowering needs no special case for them either.
register_ir_kind(nn.Conv2d, "conv")
register_ir_kind(nn.Linear, "linear")
