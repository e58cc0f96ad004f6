"""The fast-forwarded pipeline must equal stepping every tile one by one."""
import numpy as np

from hw_models.pipeline import PipelineState, run_pipeline


def naive(blocks, tail=0.0):
    state = PipelineState()
    for items, count in blocks:
        for _ in range(count):
            for t, c in items:
                state.step(t, c)
    state.compute_end += tail
    state.transfer_busy += tail
    return state


def test_fast_forward_is_exact_on_random_blocks():
    rng = np.random.default_rng(0)
    for _ in range(300):
        blocks = [([(float(rng.integers(0, 50)), float(rng.integers(0, 50))) for _ in range(rng.integers(1, 4))],
                   int(rng.integers(1, 200))) for _ in range(rng.integers(1, 4))]
        fast, slow = run_pipeline(blocks, 7.0), naive(blocks, 7.0)
        assert fast.end == slow.end
        assert fast.compute_busy == slow.compute_busy and fast.transfer_busy == slow.transfer_busy


def test_double_buffering_overlaps_transfer_and_compute():
    # 10 tiles, transfer 5, compute 8: first transfer exposed, then compute-bound
    assert run_pipeline([([(5.0, 8.0)], 10)]).end == 5 + 10 * 8
    # memory-bound: transfers back to back, last compute exposed
    assert run_pipeline([([(8.0, 5.0)], 10)]).end == 10 * 8 + 5
