"""All candidate compute ops in one namespace (the modules themselves live in shift.py / adder.py)."""
from search_spaces.adder import AdderConv2d, AdderLinear, adder_conv2d, adder_linear, use_adder_backend
from search_spaces.registry import ir_kind_of, register_ir_kind
from search_spaces.shift import ShiftConv2d, ShiftLinear

__all__ = ["AdderConv2d", "AdderLinear", "ShiftConv2d", "ShiftLinear", "adder_conv2d", "adder_linear",
           "use_adder_backend", "ir_kind_of", "register_ir_kind"]
