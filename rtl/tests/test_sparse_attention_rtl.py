"""pytest launchers for the sparser-engine RTL testbench (tb_sparse_attention.py): sparse_sddmm.v
and sparse_spmm.v under Icarus and Verilator, checked cycle for cycle against
hw_models.engines.sparse_attention (closed form and stepper) and numerically against numpy.

Each case is one HDL build (its own directory under rtl/build/) running the cocotb tests
random_masks, edge_cases and the tests of the tests checker_catches_wrong_model (a timing model one
cycle off must be rejected) and checker_catches_wrong_numerics (a reference one value off must be
rejected). ``test_timing_check_catches_late_done`` builds an RTL whose done is one cycle late
(DONE_DELAY=1) and shows the normal random-mask test fails on it with a timing mismatch.

Select a simulator with ``--sim icarus|verilator`` (rtl/conftest.py), waves with ``WAVES=1``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from rtl_sim import SparseHdlConfig, run_cocotb_tests

NORMAL_TESTS = ["random_masks", "edge_cases", "checker_catches_wrong_model",
                "checker_catches_wrong_numerics"]


@dataclass(frozen=True)
class Case:
    hdl: SparseHdlConfig
    sims: tuple[str, ...]
    masks: dict[str, int] = field(default_factory=dict)   # random masks per simulator
    slow: bool = False

    @property
    def id(self) -> str:
        return self.hdl.tag


def _both(**kw) -> list[SparseHdlConfig]:
    return [SparseHdlConfig(unit=u, **kw) for u in ("sddmm", "spmm")]


CASES = [
    # ---- the default run
    # Icarus (small engines, ~10k simulated cycles/s with the testbench): d not a multiple of W,
    # L not a power of two, narrow accumulators that wrap, L = 1 (no reduction tree: T = 0),
    # signed SpMM values
    *[Case(h, ("icarus",), {"icarus": 150}) for h in _both(lines=3, macs=2, rows_per_cycle=2, dmax=5,
                                                              max_rows=7, max_cols=6, acc_w=14)],
    *[Case(h, ("icarus",), {"icarus": 100}) for h in _both(lines=1, macs=3, rows_per_cycle=1, dmax=4,
                                                              max_rows=6, max_cols=5)],
    Case(SparseHdlConfig("spmm", lines=7, macs=2, rows_per_cycle=1, dmax=5, max_rows=10, max_cols=9,
                         acc_w=18, val_signed=1), ("icarus",), {"icarus": 100}),
    # Verilator: many masks on two mid-size engines (R < L, R = L - 2, W = 3 with d up to 7)
    *[Case(h, ("verilator",), {"verilator": 1500}) for h in _both(lines=4, macs=4, rows_per_cycle=2,
                                                                     dmax=6, max_rows=12, max_cols=12)],
    *[Case(h, ("verilator",), {"verilator": 1500}) for h in _both(lines=5, macs=3, rows_per_cycle=3,
                                                                     dmax=7, max_rows=16, max_cols=10,
                                                                     acc_w=20)],
    # ---- slow (pytest -m slow): W = 1 with R > L, bigger engines, a capped nnz, and the default
    # engines' shapes under the other simulator
    *[Case(h, ("verilator",), {"verilator": 1000}, slow=True)
      for h in _both(lines=6, macs=1, rows_per_cycle=8, dmax=3, max_rows=20, max_cols=9, acc_w=12)],
    *[Case(h, ("verilator",), {"verilator": 1000}, slow=True)
      for h in _both(lines=1, macs=3, rows_per_cycle=1, dmax=4, max_rows=8, max_cols=8)],
    *[Case(h, ("verilator",), {"verilator": 500}, slow=True)
      for h in _both(lines=8, macs=8, rows_per_cycle=4, dmax=20, max_rows=32, max_cols=32, acc_w=24)],
    *[Case(h, ("verilator",), {"verilator": 200}, slow=True)
      for h in _both(lines=16, macs=4, rows_per_cycle=4, dmax=16, max_rows=48, max_cols=48,
                     max_nnz=1024)],
    Case(SparseHdlConfig("spmm", lines=7, macs=2, rows_per_cycle=1, dmax=5, max_rows=14, max_cols=14,
                         acc_w=18, val_signed=1), ("verilator",), {"verilator": 1000}, slow=True),
    *[Case(h, ("icarus",), {"icarus": 300}, slow=True)
      for h in _both(lines=4, macs=4, rows_per_cycle=2, dmax=6, max_rows=12, max_cols=12)],
    *[Case(h, ("verilator",), {"verilator": 1000}, slow=True)
      for h in _both(lines=3, macs=2, rows_per_cycle=2, dmax=5, max_rows=7, max_cols=6, acc_w=14)],
]

PARAMS = [pytest.param(sim, case, id=f"{sim}-{case.id}",
                       marks=[pytest.mark.slow] if case.slow else [])
          for case in CASES for sim in case.sims]


def _run(sim: str, hdl, testcases: list[str], options: dict) -> dict[str, str | None]:
    return run_cocotb_tests(sim, hdl, testcases, options, quiet=True)


@pytest.mark.rtl
@pytest.mark.parametrize("sim, case", PARAMS)
def test_sparse_engine(sim: str, case: Case):
    options = {"masks": case.masks[sim], "seed": 2000 + sum(map(ord, case.id + sim)),
               "watch_every": 4 if sim == "icarus" else 3}
    results = _run(sim, case.hdl, NORMAL_TESTS, options)
    failed = {name: msg for name, msg in results.items() if msg}
    assert not failed, "\n".join(f"{name}: {msg}" for name, msg in failed.items())


@pytest.mark.rtl(sim="icarus")
@pytest.mark.parametrize("unit", ["sddmm", "spmm"])
def test_timing_check_catches_late_done(unit: str):
    """Test of the test: a build whose done is one cycle late (DONE_DELAY=1) must fail the normal
    random-mask test with a timing mismatch, on every run it makes."""
    hdl = SparseHdlConfig(unit, lines=3, macs=2, rows_per_cycle=2, dmax=5, max_rows=7, max_cols=6,
                          acc_w=14, done_delay=1)
    results = _run("icarus", hdl, ["random_masks", "late_done_is_caught"],
                   {"masks": 3, "seed": 7, "watch_every": 0})
    assert results["late_done_is_caught"] is None, results["late_done_is_caught"]
    msg = results["random_masks"]
    assert msg is not None, "the random-mask test passed on an RTL whose done is one cycle late"
    assert "timing mismatch" in msg, msg
