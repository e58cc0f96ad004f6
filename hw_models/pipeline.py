"""Event-driven double-buffered pipeline over tiles and transfers.

Each step i has a transfer (operands into a buffer slot) and a compute. With two slots:

    transfer_end[i] = max(transfer_end[i-1], compute_end[i-2]) + transfer[i]   (slot of i-2 is free)
    compute_end[i]  = max(transfer_end[i], compute_end[i-1]) + compute[i]

Steps come as blocks of items repeated ``count`` times. The system is max-plus linear and time
invariant, so once one repetition of a block shifts the whole state by the same amount d, every
further repetition does too: the remaining repetitions are skipped in O(1), exactly. That keeps a
full network to a few thousand events instead of millions of tiles.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass
class PipelineState:
    transfer_end: float = 0.0
    compute_end: float = 0.0
    compute_end_prev: float = 0.0   # compute_end[i-2] once the next step starts
    compute_busy: float = 0.0       # sum of compute cycles
    transfer_busy: float = 0.0

    def step(self, transfer: float, compute: float) -> None:
        t_end = max(self.transfer_end, self.compute_end_prev) + transfer
        c_end = max(t_end, self.compute_end) + compute
        self.transfer_end, self.compute_end_prev, self.compute_end = t_end, self.compute_end, c_end
        self.compute_busy += compute
        self.transfer_busy += transfer

    def _vector(self) -> tuple[float, float, float]:
        return (self.transfer_end, self.compute_end, self.compute_end_prev)

    def run_block(self, items: Sequence[tuple[float, float]], count: int) -> None:
        """Run ``items`` ``count`` times, fast-forwarding once the block reaches steady state."""
        if count <= 0 or not items:
            return
        block_compute = sum(c for _, c in items)
        block_transfer = sum(t for t, _ in items)
        prev_delta = None
        done = 0
        while done < count:
            before = self._vector()
            for transfer, compute in items:
                self.step(transfer, compute)
            done += 1
            after = self._vector()
            delta = tuple(a - b for a, b in zip(after, before))
            if delta[0] == delta[1] == delta[2] and delta == prev_delta:
                rest = count - done
                d = delta[0]
                self.transfer_end += rest * d
                self.compute_end += rest * d
                self.compute_end_prev += rest * d
                self.compute_busy += rest * block_compute
                self.transfer_busy += rest * block_transfer
                return
            prev_delta = delta

    @property
    def end(self) -> float:
        return max(self.compute_end, self.transfer_end)


def run_pipeline(blocks: Sequence[tuple[Sequence[tuple[float, float]], int]], tail_transfer: float = 0.0) -> PipelineState:
    """Run blocks of (transfer, compute) items; ``tail_transfer`` drains the last result."""
    state = PipelineState()
    for items, count in blocks:
        state.run_block(items, count)
    if tail_transfer:
        state.compute_end += tail_transfer
        state.transfer_busy += tail_transfer
    return state
