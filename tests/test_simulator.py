"""Whole-network properties of the cost model and simulator."""
import dataclasses
import json

import pytest

from hw_models.accelerator import load_accelerator
from hw_models.cost import op_cost, validate_mapping
from hw_models.errors import MappingError
from hw_models.schedule import Schedule
from hw_models.simulator import default_mapping, default_schedule, simulate
from hw_models.workload import ConvShape, OpNode, VectorShape, Workload
from hw_models.zoo import builtin_names, get_builtin

RUNNABLE = [(w, hw) for hw in ("eyeriss-like", "nasa-chunked", "tpu-like") for w in builtin_names()
            if hw == "nasa-chunked" or "adder" not in w and "hybrid" not in w]


@pytest.mark.parametrize("workload, hw", RUNNABLE)
def test_mac_conservation_capacity_and_sane_totals(workload, hw):
    wl, acc = get_builtin(workload), load_accelerator(hw)
    sched = default_schedule(wl, acc)
    result = simulate(wl, acc, sched)
    assert result.macs == wl.macs                       # the workload's MACs, all of them
    dense = sum(g * p * k * m for g, p, k, m in (op.gemm for op in wl.ops() if op.is_gemm))
    assert result.hw_macs == dense                      # tiles executed cover every GEMM step once
    for op in wl.ops():
        validate_mapping(op, acc.chunk(sched[op.name].chunk), acc, sched[op.name])
    assert 0 < result.utilization <= 1
    assert result.cycles > 0 and result.energy_total_pj > 0
    assert result.energy_total_pj == pytest.approx(sum(result.energy_by_action_pj.values()))
    assert result.energy_total_pj == pytest.approx(sum(result.energy_by_chunk_pj.values()))
    assert result.energy_total_pj == pytest.approx(sum(result.energy_by_level_pj.values()))
    for o in result.ops:
        assert o.cycles >= o.compute_cycles > 0 and o.bound in ("compute", "memory")


def scaled(acc, bw=1.0, pes=1):
    chunks = tuple(dataclasses.replace(c, rows=c.rows * pes, cols=c.cols * pes) for c in acc.chunks)
    return dataclasses.replace(acc, chunks=chunks, dram=dataclasses.replace(acc.dram, bandwidth_gbs=acc.dram.bandwidth_gbs * bw))


@pytest.mark.parametrize("workload, hw", [("resnet20-hybrid", "nasa-chunked"), ("mobilenetv2-cifar", "eyeriss-like"),
                                          ("deit-tiny", "eyeriss-like"), ("resnet18", "tpu-like")])
def test_more_bandwidth_or_more_pes_never_slower(workload, hw):
    wl, acc = get_builtin(workload), load_accelerator(hw)
    sched = default_schedule(wl, acc)
    base = simulate(wl, acc, sched).cycles
    assert simulate(wl, scaled(acc, bw=2.0), sched).cycles <= base      # same schedule, more bandwidth
    assert simulate(wl, scaled(acc, bw=0.5), sched).cycles >= base
    assert simulate(wl, scaled(acc, pes=2), sched).cycles <= base       # same tiles still legal on a bigger array
    assert simulate(wl, scaled(acc, pes=2)).cycles <= base * 1.0001     # and the default re-tiles no worse


def test_memory_bound_layer_is_reported_as_such():
    acc = load_accelerator("tpu-like")          # 128 vector lanes against 48.6 B/cycle of DRAM
    wl = Workload("add")
    wl.add(OpNode("add", "eltwise", VectorShape(elements=1 << 20, inputs=2, op="add")))
    r = simulate(wl, acc)
    assert r.ops[0].bound == "memory" and r.stall_cycles > 0
    assert r.cycles >= 3 * (1 << 20) / acc.dram_bytes_per_cycle          # bandwidth floor
    wl2 = Workload("conv")
    wl2.add(OpNode("c", "conv", ConvShape(1, 256, 56, 56, 256, 3, 3, 1, 1)))
    assert simulate(wl2, acc).ops[0].bound == "compute"


def test_schedule_json_round_trip_reproduces_result(tmp_path):
    wl, acc = get_builtin("resnet20-hybrid"), load_accelerator("nasa-chunked")
    sched = default_schedule(wl, acc)
    path = tmp_path / "s.json"
    sched.to_json(path)
    again = simulate(wl, acc, Schedule.from_json(path))
    first = simulate(wl, acc, sched)
    assert again.cycles == first.cycles and again.energy_total_pj == first.energy_total_pj
    json.loads(first.to_json())                         # SimResult is JSON-serialisable


def test_capacity_violations_are_rejected():
    acc = load_accelerator("eyeriss-like")
    op = OpNode("big", "conv", ConvShape(1, 256, 56, 56, 256, 3, 3, 1, 1))
    good = default_mapping(op, acc)
    too_big = dataclasses.replace(good, gb_tile=(op.gemm[1], op.gemm[2], op.gemm[3]))
    with pytest.raises(MappingError, match="global buffer has 108 KB"):
        validate_mapping(op, acc.chunks[0], acc, too_big)
    off_array = dataclasses.replace(good, array_tile=(13, 14, 1))
    with pytest.raises(MappingError, match="12x14 array"):
        op_cost(op, acc, off_array)


def test_unsupported_kind_and_wrong_schedule_are_mapping_errors():
    acc = load_accelerator("eyeriss-like")
    with pytest.raises(MappingError, match="no chunk of eyeriss-like supports adder_conv"):
        simulate(get_builtin("resnet20-adder"), acc)
    wl = get_builtin("resnet20-conv")
    sched = default_schedule(wl, acc)
    del sched.mappings["fc"]
    with pytest.raises(MappingError, match="no mapping for 1 op"):
        simulate(wl, acc, sched)


def test_buffer_too_small_for_any_tile():
    acc = load_accelerator("eyeriss-like")
    tiny = dataclasses.replace(acc, global_buffer=dataclasses.replace(acc.global_buffer, size_kb=0.001))
    with pytest.raises(MappingError, match="no tile fits|does not fit"):
        simulate(get_builtin("resnet20-conv"), tiny)


def test_shift_and_adder_ops_charge_their_own_actions_and_memory():
    acc = load_accelerator("nasa-chunked")
    r = simulate(get_builtin("resnet20-adder"), acc)
    adder_ops = [o for o in r.ops if o.kind == "adder_conv"]
    assert adder_ops and all(o.chunk == "adder" for o in adder_ops)
    for o in adder_ops:       # memory is charged for adder layers too (unlike ShiftAddNAS' model)
        assert o.energy_pj["abs"] > 0 and o.energy_pj["mult"] == 0
        assert o.energy_pj["dram"] > 0 and o.energy_pj["global_buffer"] > 0 and o.energy_pj["rf"] > 0
    s = simulate(get_builtin("resnet20-shift"), acc)
    assert sum(o.energy_pj["shift"] for o in s.ops) > 0
    conv = simulate(get_builtin("resnet20-conv"), acc)
    assert s.energy_by_action_pj["mult"] < conv.energy_by_action_pj["mult"]
