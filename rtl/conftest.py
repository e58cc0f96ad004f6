"""pytest options for the RTL testbenches: ``--sim icarus|verilator`` (repeatable) keeps only the
cases for those simulators (the ``sim`` parameter, or ``@pytest.mark.rtl(sim=...)``). The launchers live in rtl/tests/ and import rtl_sim from there."""
from __future__ import annotations

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)


def pytest_addoption(parser):
    parser.addoption("--sim", action="append", choices=("icarus", "verilator"), default=None,
                     help="run the RTL tests only under this simulator (repeatable)")


def pytest_collection_modifyitems(config, items):
    sims = config.getoption("--sim")
    if not sims:
        return
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        sim = callspec.params.get("sim") if callspec is not None else None
        marker = item.get_closest_marker("rtl")
        if sim is None and marker is not None:
            sim = marker.kwargs.get("sim")     # @pytest.mark.rtl(sim="icarus"); None: always run
        (drop if sim is not None and sim not in sims else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
