"""Accelerator descriptions: presets load; every invalid field gives one line naming it."""
import pytest
import yaml

from hw_models.accelerator import accelerator_from_dict, load_accelerator, preset_names
from hw_models.energy import load_table, table_names
from hw_models.errors import ConfigError


def base():
    return yaml.safe_load(open(load_accelerator("nasa-chunked").source))


def test_presets_load_with_required_shapes():
    assert {"eyeriss-like", "nasa-chunked", "tpu-like"} <= set(preset_names())
    eyeriss = load_accelerator("eyeriss-like")
    assert (eyeriss.chunks[0].rows, eyeriss.chunks[0].cols, eyeriss.global_buffer.size_kb) == (12, 14, 108)
    assert eyeriss.chunks[0].act_bits == 16
    nasa = load_accelerator("nasa-chunked")
    assert {c.pe_type for c in nasa.chunks} == {"mac", "shift", "adder"}
    tpu = load_accelerator("tpu-like")
    assert tpu.chunks[0].dataflows == ("ws",) and tpu.chunks[0].pes >= 128 * 128


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.__setitem__("clock_mhz", 0), "accelerator.clock_mhz"),
    (lambda d: d.__setitem__("clock_mhz", -5), "accelerator.clock_mhz"),
    (lambda d: d["dram"].__setitem__("bandwidth_gbs", "fast"), "dram.bandwidth_gbs"),
    (lambda d: d["global_buffer"].__setitem__("size_kb", 0), "global_buffer.size_kb"),
    (lambda d: d["chunks"][0].__setitem__("rows", 0), "chunks[mac].rows"),
    (lambda d: d["chunks"][1].__setitem__("pe_type", "quantum"), "chunks[shift].pe_type"),
    (lambda d: d["chunks"][0].__setitem__("dataflows", ["rs"]), "chunks[mac].dataflows"),
    (lambda d: d["chunks"][2].__setitem__("supports", ["conv"]), "chunks[adder].supports"),
    (lambda d: d["chunks"][0].__setitem__("colz", 3), "chunks[0].colz: unknown field"),
    (lambda d: d.pop("dram"), "accelerator.dram"),
    (lambda d: d.__setitem__("energy_table", "nope"), "energy_table"),
    (lambda d: d["chunks"].append(dict(d["chunks"][0])), "duplicate chunk name"),
])
def test_invalid_fields_are_named(mutate, field):
    data = base()
    mutate(data)
    with pytest.raises(ConfigError) as err:
        accelerator_from_dict(data)
    assert field in str(err.value) and "\n" not in str(err.value)


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown accelerator 'nope'"):
        load_accelerator("nope")
    with pytest.raises(ConfigError, match="not found"):
        load_accelerator(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nchunks: [\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_accelerator(bad)


def test_user_yaml_works_like_a_preset(tmp_path):
    data = base()
    data["name"] = "mine"
    data["chunks"][0]["rows"] = 4
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    acc = load_accelerator(path)
    assert acc.name == "mine" and acc.chunk("mac").rows == 4


def test_energy_entries_carry_unit_node_source_and_scaling():
    for name in table_names():
        table = load_table(name)
        for row in table.rows():
            assert row["unit"].startswith("pJ") and row["node_nm"] == table.node_nm
            assert row["source"] and row["scaling"] in ("linear", "quadratic", "sqrt_capacity", "constant")
        actions = {e.action for e in table.entries}
        assert {"mult", "add", "shift", "abs", "rf", "noc", "sram_read", "sram_write"} <= actions


def test_energy_scaling_rules():
    t = load_table("horowitz-45nm")
    assert t.op_pj("mult", 8) == 0.2 and t.op_pj("add", 16) == 0.05
    assert t.op_pj("mult", 16) == pytest.approx(3.1 / 4)          # quadratic from the 32-bit entry
    assert t.op_pj("add", 64) == pytest.approx(0.2)                # linear from the 32-bit entry
    assert t.bit_pj("sram_read", 32 * 1024) == pytest.approx(2 * t.bit_pj("sram_read", 8 * 1024))
    assert t.op_pj("shift", 8) < t.op_pj("add", 8) < t.op_pj("mult", 8)
