"""pytest launchers for the PE-array RTL testbench (tb_pe_array.py) under Icarus and Verilator.

Each case is one HDL build (its own directory under rtl/build/) running several cocotb tests:
random tiles (OS/WS, K-split chains), edge cases, every operand pair (Verilator, 8x8 and up), and
the timing checker against a deliberately wrong model. ``test_timing_check_catches_late_done``
builds an RTL whose done is one cycle late and shows the normal tests fail on it.

Select a simulator with ``--sim icarus|verilator`` (rtl/conftest.py), waves with ``WAVES=1``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from rtl_sim import SIMULATORS, HdlConfig, run_cocotb_tests

NORMAL_TESTS = ["random_tiles", "edge_cases", "all_operand_pairs", "checker_catches_wrong_model"]


@dataclass(frozen=True)
class Case:
    hdl: HdlConfig
    sims: tuple[str, ...]
    tiles: dict[str, int] = field(default_factory=dict)   # random tiles per simulator
    exhaustive: bool = False

    @property
    def id(self) -> str:
        return self.hdl.tag


CASES = [
    # small arrays under both simulators (Icarus is ~5-10k cycles/s: keep these short)
    Case(HdlConfig("mac", 2, 3, pipe=1, acc_w=32, depth=8), SIMULATORS,
         {"icarus": 150, "verilator": 1500}),
    Case(HdlConfig("shift", 4, 4, w_w=5, pipe=2, acc_w=24, depth=16), SIMULATORS,
         {"icarus": 80, "verilator": 1500}),
    Case(HdlConfig("adder", 3, 2, pipe=2, acc_w=12, depth=8), SIMULATORS,
         {"icarus": 120, "verilator": 1500}),
    Case(HdlConfig("mac", 4, 4, pipe=2, acc_w=16, depth=16), ("icarus",), {"icarus": 80}),
    # the chunk sizes the mapper uses: Verilator, thousands of tiles and every operand pair
    Case(HdlConfig("mac", 8, 8, pipe=1, acc_w=32, depth=32), ("verilator",), {"verilator": 2000},
         exhaustive=True),
    Case(HdlConfig("shift", 8, 8, w_w=5, pipe=2, acc_w=24, depth=32), ("verilator",),
         {"verilator": 2000}, exhaustive=True),
    Case(HdlConfig("adder", 8, 8, pipe=2, acc_w=20, depth=32), ("verilator",), {"verilator": 2000},
         exhaustive=True),
    Case(HdlConfig("mac", 16, 16, pipe=2, acc_w=32, depth=32), ("verilator",), {"verilator": 600}),
]

PARAMS = [pytest.param(sim, case, id=f"{sim}-{case.id}") for case in CASES for sim in case.sims]


def _run(sim: str, hdl, testcases: list[str], options: dict) -> dict[str, str | None]:
    return run_cocotb_tests(sim, hdl, testcases, options)


@pytest.mark.rtl
@pytest.mark.parametrize("sim, case", PARAMS)
def test_pe_array(sim: str, case: Case):
    options = {"tiles": case.tiles[sim], "seed": 1000 + sum(map(ord, case.id + sim)),
               "exhaustive": case.exhaustive, "watch_every": 5 if sim == "icarus" else 3}
    results = _run(sim, case.hdl, NORMAL_TESTS, options)
    failed = {name: msg for name, msg in results.items() if msg}
    assert not failed, "\n".join(f"{name}: {msg}" for name, msg in failed.items())


@pytest.mark.rtl(sim="icarus")
def test_timing_check_catches_late_done():
    """Test of the test: an RTL build whose done is one cycle late (DONE_DELAY=1) must fail the
    normal random-tile test with a timing mismatch, on every tile it runs."""
    hdl = HdlConfig("mac", 2, 3, pipe=1, depth=8, done_delay=1)
    results = _run("icarus", hdl, ["random_tiles", "late_done_is_caught"],
                   {"tiles": 10, "seed": 7, "watch_every": 0})
    assert results["late_done_is_caught"] is None, results["late_done_is_caught"]
    msg = results["random_tiles"]
    assert msg is not None, "the random-tile test passed on an RTL whose done is one cycle late"
    assert "timing mismatch" in msg, msg
