"""Auto-mapper: exactness of the vectorised cost model, validity and optimality of schedules,
throughput mode and chunk-resource co-search."""
from __future__ import annotations

import itertools
import json
import time
import warnings
from dataclasses import replace

import numpy as np
import pytest

from codesign.mapper import co_search, map_workload, map_workload_detailed
from codesign.mapper.search import QUICK
from codesign.mapper.space import GemmSpace
from codesign.mapper.vectorised import GemmContext, VectorContext, evaluate_gemm
from hw_models.accelerator import load_accelerator
from hw_models.cost import op_cost, validate_mapping
from hw_models.errors import CodesignError, MappingError
from hw_models.schedule import LOOP_ORDERS, OpMapping, Schedule
from hw_models.simulator import default_schedule, simulate
from hw_models.workload import LinearShape, MatmulShape, OpNode, Workload
from hw_models.zoo import cifar_resnet, get_builtin, synthetic_attention_masks, vit

PRESETS = ("eyeriss-like", "nasa-chunked", "tpu-like", "vitcod")


@pytest.fixture(scope="module")
def accels():
    return {name: load_accelerator(name) for name in PRESETS}


def _random_mapping(op, chunk, rng) -> OpMapping:
    _, P, K, M = op.gemm

    def tile(total):                      # near a balanced split, so edge tiles of every size occur
        t = int(rng.integers(1, min(total, 10) + 1))
        return int(np.clip(-(-total // t) + rng.integers(-2, 3), 1, total))

    pb, kb, mb = tile(P), tile(K), tile(M)
    df = chunk.gemm_dataflows[int(rng.integers(len(chunk.gemm_dataflows)))]
    if df == "os":
        at = (int(rng.integers(1, min(chunk.rows, pb) + 1)), int(rng.integers(1, min(chunk.cols, mb) + 1)),
              int(rng.integers(1, kb + 1)))
    else:
        at = (int(rng.integers(1, pb + 1)), int(rng.integers(1, min(chunk.cols, mb) + 1)),
              int(rng.integers(1, min(chunk.rows, kb) + 1)))
    if rng.random() < 0.1:                # now and then out of bounds: validity must say so too
        at = (at[0] + chunk.rows, at[1], at[2])
    return OpMapping(op.name, chunk.name, df, (pb, kb, mb), at, LOOP_ORDERS[int(rng.integers(6))])


def test_vectorised_model_equals_op_cost_and_validate_mapping(accels):
    """The closed form reproduces op_cost (cycles, energy, DRAM/GB traffic) and validate_mapping."""
    rng = np.random.default_rng(1)
    checked = invalid = 0
    # a small sparse ViT with the Q/K auto-encoder: fused codecs on their own engine (vitcod's encdec)
    masks = [synthetic_attention_masks(17, 4, 0.7, seed=i, grid=4) for i in range(2)]
    vit_ae = vit("vit-ae", embed_dim=32, depth=2, heads=4, image_size=16, patch=4, num_classes=10, masks=masks,
                 qk_compressed_heads=2)
    for wl_name, acc_name in (("resnet20-hybrid", "nasa-chunked"), ("mobilenetv2-cifar", "eyeriss-like"),
                              ("deit-tiny", "tpu-like"), ("resnet18", "eyeriss-like"), ("vit-ae", "vitcod")):
        wl, acc = (vit_ae if wl_name == "vit-ae" else get_builtin(wl_name)), accels[acc_name]
        seen = set()
        for op in wl.ops():
            if not op.is_gemm or (op.kind, op.shape) in seen:
                continue
            seen.add((op.kind, op.shape))
            for chunk in acc.chunks_for(op.kind):
                if not chunk.gemm_dataflows:
                    continue
                ctx = GemmContext.build(op, chunk, acc)
                for _ in range(5):
                    mp = _random_mapping(op, chunk, rng)
                    arrays = [np.array([v]) for v in (*mp.gb_tile, *mp.array_tile)]
                    ok = bool(ctx.valid(mp.dataflow, *arrays)[0])
                    try:
                        validate_mapping(op, chunk, acc, mp)
                        expected = True
                    except MappingError:
                        expected = False
                    assert ok == expected, mp
                    if not ok:
                        invalid += 1
                        continue
                    G, P, K, M = op.gemm
                    if G * -(-P // mp.gb_tile[0]) * -(-K // mp.gb_tile[1]) * -(-M // mp.gb_tile[2]) > 4000:
                        continue                   # op_cost walks every block in Python: keep the test fast
                    cost = op_cost(op, acc, mp)
                    res = evaluate_gemm(ctx, mp.dataflow, np.array([LOOP_ORDERS.index(mp.loop_order)]), *arrays)
                    assert res.cycles[0] == pytest.approx(cost.cycles, rel=1e-9, abs=1e-9), mp
                    assert res.energy[0] == pytest.approx(cost.total_energy_pj, rel=1e-9), mp
                    assert res.dram_read[0] == pytest.approx(cost.accesses["dram_read"], rel=1e-9)
                    assert res.dram_write[0] == pytest.approx(cost.accesses["dram_write"], rel=1e-9)
                    assert res.gb_read[0] == pytest.approx(cost.accesses["gb_read"], rel=1e-9)
                    assert res.compute[0] == pytest.approx(cost.compute_cycles, rel=1e-9)
                    checked += 1
    assert checked > 150 and invalid > 10


def test_vector_op_model_equals_op_cost(accels):
    rng = np.random.default_rng(2)
    checked = 0
    for wl_name, acc_name in (("deit-tiny", "nasa-chunked"), ("resnet18", "eyeriss-like")):
        wl, acc = get_builtin(wl_name), accels[acc_name]
        for op in [o for o in wl.ops() if not o.is_gemm][:12]:
            for chunk in acc.chunks_for(op.kind):
                ctx = VectorContext.build(op, chunk, acc)
                blocks = rng.integers(1, op.elements()[2] + 1, 6)
                cyc, en = ctx.evaluate(blocks)
                for b, ok, c, e in zip(blocks, ctx.valid(blocks), cyc, en):
                    mp = OpMapping(op.name, chunk.name, "vector", (int(b), 0, 0))
                    if not ok:
                        with pytest.raises(MappingError):
                            validate_mapping(op, chunk, acc, mp)
                        continue
                    cost = op_cost(op, acc, mp)
                    assert c == pytest.approx(cost.cycles, rel=1e-12) and e == pytest.approx(cost.total_energy_pj, rel=1e-12)
                    checked += 1
    assert checked >= 40


def test_grid_points_are_legal_by_construction(accels):
    """Every decoded grid point respects the array bounds; capacity is the only filter."""
    rng = np.random.default_rng(3)
    acc = accels["nasa-chunked"]
    op = get_builtin("resnet20-conv").op("layer2.0.conv1")
    for chunk in acc.chunks_for(op.kind):
        space = GemmSpace(GemmContext.build(op, chunk, acc))
        raw = space.decode(space.random_indices(rng, 3000))
        os_ = raw["df"] == 0
        assert np.all(raw["am"] >= 1) and np.all(raw["am"] <= raw["pb"]) and np.all(raw["an"] <= raw["mb"])
        assert np.all(raw["ak"] <= raw["kb"]) and np.all(raw["an"] <= chunk.cols)
        assert np.all(raw["am"][os_] <= chunk.rows) and np.all(raw["ak"][~os_] <= chunk.rows)


# ---------------------------------------------------------------------------------------------
# whole-workload mapping

CASES = [("resnet20-hybrid", "nasa-chunked", "edp"), ("deit-tiny", "tpu-like", "edp"),
         ("mobilenetv2-cifar", "eyeriss-like", "latency"), ("resnet20-conv", "eyeriss-like", "energy")]


@pytest.fixture(scope="module")
def mapped(accels):
    out = {}
    with warnings.catch_warnings():
        # the mapper warns if its vectorised model and op_cost disagree on a chosen mapping: fail on it
        warnings.simplefilter("error", RuntimeWarning)
        for wl_name, acc_name, objective in CASES:
            wl = get_builtin(wl_name)
            res = map_workload_detailed(wl, accels[acc_name], objective=objective, budget_s=60, progress=False,
                                        effort=QUICK)
            out[(wl_name, acc_name, objective)] = (wl, res)
    return out


def test_schedules_are_complete_valid_and_mapper_made(mapped, accels):
    for (wl_name, acc_name, objective), (wl, res) in mapped.items():
        acc, sched = accels[acc_name], res.schedule
        assert len(sched.mappings) == len(wl) and set(sched.mappings) == {o.name for o in wl.ops()}
        assert sched.producer == "mapper" and sched.objective == objective and sched.mode == "latency"
        for op in wl.ops():
            mp = sched[op.name]
            chunk = acc.chunk(mp.chunk)
            assert chunk.can_run(op.kind)
            validate_mapping(op, chunk, acc, mp)          # raises on any capacity / bounds violation
        assert Schedule.from_dict(json.loads(sched.to_json())).mappings == sched.mappings   # JSON round trip


def test_simulate_reproduces_predictions_exactly(mapped, accels):
    for (wl_name, acc_name, _), (wl, res) in mapped.items():
        sim = simulate(wl, accels[acc_name], res.schedule)
        for o in sim.ops:
            mp = res.schedule[o.name]
            assert o.cycles == mp.predicted_cycles and o.energy_total_pj == mp.predicted_energy_pj
        assert sim.cycles == pytest.approx(res.stats.cycles, rel=1e-12)
        assert sim.energy_total_pj == pytest.approx(res.stats.energy_pj, rel=1e-12)


def _objective(sim, objective, mode="latency"):
    d = sim.cycles if mode == "latency" else sim.throughput_interval_cycles
    return {"latency": d, "energy": sim.energy_total_pj, "edp": d * sim.energy_total_pj}[objective]


def test_mapper_never_worse_than_default_and_usually_better(mapped, accels):
    gains = []
    for (wl_name, acc_name, objective), (wl, res) in mapped.items():
        acc = accels[acc_name]
        ours = _objective(simulate(wl, acc, res.schedule), objective)
        base = _objective(simulate(wl, acc, default_schedule(wl, acc)), objective)
        assert ours <= base * (1 + 1e-9), (wl_name, acc_name, objective)
        gains.append(base / ours)
    assert max(gains) > 1.2                              # the search does find much better mappings


def test_equals_brute_force_optimum_on_tiny_layers(accels):
    """Every legal mapping (all tiles, orders, dataflows) scored with op_cost: the mapper finds the best."""
    base = accels["nasa-chunked"]

    def tiny(rows, cols, lb_kb, gb_kb):
        chunk = replace(base.chunks[0], rows=rows, cols=cols, local_buffer_kb=lb_kb)
        return replace(base, chunks=(chunk,), global_buffer=replace(base.global_buffer, size_kb=gb_kb))

    cases = [(OpNode("fc", "linear", LinearShape(3, 5, 4)), tiny(2, 2, 0.25, 1)),        # fits: one block
             (OpNode("mm", "matmul", MatmulShape(2, 5, 4, 3)), tiny(2, 2, 0, 0.05)),      # buffers force tiling
             (OpNode("fc2", "linear", LinearShape(5, 6, 3)), tiny(3, 2, 0.05, 0.06))]
    for op, acc in cases:
        chunk = acc.chunks[0]
        _, P, K, M = op.gemm
        best = None
        for df, (pb, kb, mb), order in itertools.product(chunk.dataflows, itertools.product(
                range(1, P + 1), range(1, K + 1), range(1, M + 1)), LOOP_ORDERS):
            for am, an, ak in itertools.product(range(1, pb + 1), range(1, min(chunk.cols, mb) + 1), range(1, kb + 1)):
                mp = OpMapping(op.name, chunk.name, df, (pb, kb, mb), (am, an, ak), order)
                try:
                    cost = op_cost(op, acc, mp)
                except MappingError:
                    continue
                edp = cost.cycles * cost.total_energy_pj
                best = edp if best is None else min(best, edp)
        wl = Workload("one")
        wl.add(op)
        mp = map_workload(wl, acc, objective="edp", progress=False)[op.name]
        assert mp.predicted_cycles * mp.predicted_energy_pj == pytest.approx(best, rel=1e-12)


def test_throughput_mode_balances_chunks(accels):
    # resnet20-shift: the shift chunk is the natural home of almost every layer, so a single frame
    # leaves the MAC chunk idle; pipelined frames want the shift layers split over both chunks
    acc, wl = accels["nasa-chunked"], get_builtin("resnet20-shift")
    lat = map_workload_detailed(wl, acc, objective="latency", mode="latency", budget_s=60, progress=False, effort=QUICK)
    thr = map_workload_detailed(wl, acc, objective="latency", mode="throughput", budget_s=60, progress=False, effort=QUICK)
    assert thr.schedule.mode == "throughput"
    sim_lat, sim_thr = simulate(wl, acc, lat.schedule), simulate(wl, acc, thr.schedule)
    i_lat, i_thr = sim_lat.throughput_interval_cycles, sim_thr.throughput_interval_cycles
    assert i_thr <= i_lat * (1 + 1e-12) and i_thr < 0.8 * i_lat
    assert i_thr < simulate(wl, acc).throughput_interval_cycles
    assert sim_lat.cycles <= sim_thr.cycles              # ... at the price of single-frame latency
    loads = {}
    for o in sim_thr.ops:
        loads[o.chunk] = loads.get(o.chunk, 0.0) + o.cycles
    assert max(loads.values()) == i_thr and min(loads.values()) > 0.8 * i_thr
    assert {thr.schedule[o.name].chunk for o in wl.ops() if o.kind == "shift_conv"} == {"mac", "shift"}


def test_errors_are_one_line_codesign_errors(accels):
    wl = get_builtin("resnet20-adder")
    with pytest.raises(MappingError, match="no chunk of eyeriss-like supports adder_conv") as err:
        map_workload(wl, accels["eyeriss-like"], progress=False)
    assert "\n" not in str(err.value)
    for kwargs, pattern in (({"objective": "speed"}, "objective must be one of"), ({"mode": "batch"}, "mode must be"),
                            ({"budget_s": 0}, "budget_s")):
        with pytest.raises(CodesignError, match=pattern):
            map_workload(get_builtin("resnet20-conv"), accels["eyeriss-like"], progress=False, **kwargs)


def test_op_that_only_fits_a_non_default_chunk(accels):
    # 12-bit activations: too wide for the shift chunk (the default home of shift layers) but not for
    # a 16-bit MAC chunk; 32-bit activations fit nowhere
    acc = accels["nasa-chunked"]
    acc = replace(acc, chunks=(replace(acc.chunks[0], act_bits=16),) + acc.chunks[1:])
    wl = Workload("w")
    wl.add(OpNode("s", "shift_linear", LinearShape(64, 128, 64), act_bits=12, weight_bits=5))
    mp = map_workload(wl, acc, progress=False)["s"]
    assert mp.chunk == "mac"
    validate_mapping(wl.op("s"), acc.chunk("mac"), acc, mp)
    wide = Workload("w2")
    wide.add(OpNode("s", "shift_linear", LinearShape(64, 128, 64), act_bits=32, weight_bits=5))
    with pytest.raises(MappingError, match="no mapping of shift_linear fits any chunk") as err:
        map_workload(wide, acc, progress=False)
    assert "\n" not in str(err.value)


def test_deterministic_and_within_budget(accels):
    wl, acc = get_builtin("resnet20-shift"), accels["nasa-chunked"]
    a = map_workload_detailed(wl, acc, budget_s=60, progress=False, effort=QUICK, seed=3).schedule
    b = map_workload_detailed(wl, acc, budget_s=60, progress=False, effort=QUICK, seed=3).schedule
    assert a.mappings == b.mappings
    t = time.perf_counter()
    map_workload(get_builtin("resnet18"), accels["eyeriss-like"], budget_s=1.0, progress=False)
    assert time.perf_counter() - t < 6.0                # anytime: stops near the budget


def test_co_search_respects_budgets(accels):
    acc, wl = accels["nasa-chunked"], cifar_resnet("resnet8-hybrid", 8, ("conv", "shift", "adder"))
    res = co_search(wl, acc, objective="edp", mode="throughput", budget_s=60, max_configs=5, progress=False,
                    final_effort=QUICK)
    pes = sum(c.pes for c in res.accelerator.chunks)
    lbs = sum(c.local_buffer_kb for c in res.accelerator.chunks)
    assert pes <= res.pe_budget == sum(c.pes for c in acc.chunks)
    assert lbs <= res.buffer_budget_kb == sum(c.local_buffer_kb for c in acc.chunks)
    assert [c.pe_type for c in res.accelerator.chunks] == [c.pe_type for c in acc.chunks]
    assert res.objective_value <= res.original_objective_value * (1 + 1e-12)
    assert res.configs_evaluated == 5
    for cfg, _ in res.history:
        assert sum(r * k for r, k, _ in cfg) <= res.pe_budget and sum(lb for _, _, lb in cfg) <= res.buffer_budget_kb
    sim = simulate(wl, res.accelerator, res.schedule)
    assert all(o.cycles == res.schedule[o.name].predicted_cycles for o in sim.ops)
    # a tighter budget than the original design is respected too
    small = co_search(wl, acc, budget_s=60, max_configs=3, progress=False, pe_budget=300, buffer_budget_kb=20,
                      final_effort=QUICK)
    assert sum(c.pes for c in small.accelerator.chunks) <= 300
    assert sum(c.local_buffer_kb for c in small.accelerator.chunks) <= 20
    via_api = map_workload(wl, acc, co_search=True, budget_s=1.5, progress=False, pe_budget=200, buffer_budget_kb=8)
    assert sum(c.pes for c in via_api.accelerator.chunks) <= 200
