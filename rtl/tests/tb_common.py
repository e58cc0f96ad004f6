"""Pieces both cocotb testbenches share: the timing-mismatch error and bus-word packing."""
from __future__ import annotations


class TimingMismatch(AssertionError):
    """The RTL took a different number of cycles than the timing model says."""

    def __init__(self, measured: int, expected: int, what: str):
        super().__init__(f"timing mismatch for {what}: RTL start->done = {measured} cycles, "
                         f"model = {expected}")
        self.measured, self.expected = measured, expected


def pack(values, width: int) -> int:
    """Lane i of the word = values[i], two's complement in ``width`` bits."""
    mask = (1 << width) - 1
    word = 0
    for i, v in enumerate(values):
        word |= (int(v) & mask) << (i * width)
    return word


def to_signed(x: int, width: int) -> int:
    return x - (1 << width) if x >> (width - 1) else x


def unpack(word: int, lanes: int, width: int) -> list[int]:
    """The ``lanes`` signed ``width``-bit lanes of a word (inverse of :func:`pack`)."""
    return [to_signed((word >> (i * width)) & ((1 << width) - 1), width) for i in range(lanes)]
