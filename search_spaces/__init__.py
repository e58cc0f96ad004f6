"""What can be searched: candidate ops (torch modules) and search spaces declared as data.

The multiplication-reduced ops live in :mod:`search_spaces.shift` (DeepShift) and
:mod:`search_spaces.adder` (AdderNet); :mod:`search_spaces.registry` maps modules to workload-IR
kinds so the lowering never hard-codes op classes.
"""
from search_spaces.adder import AdderConv2d, AdderLinear, adder_conv2d, adder_linear, use_adder_backend
from search_spaces.registry import ir_kind_of, register_ir_kind, registered_ir_kinds
from search_spaces.shift import ShiftConv2d, ShiftLinear

__all__ = [
    "AdderConv2d", "AdderLinear", "ShiftConv2d", "ShiftLinear",
    "adder_conv2d", "adder_linear", "use_adder_backend",
    "ir_kind_of", "register_ir_kind", "registered_ir_kinds",
]
