"""ViTCoD in the hardware model: masked products in the IR, the sparse_attention PE type and its
csr dataflow, the vitcod preset, per-head partitioning, and simulate/map/CLI on sparse DeiTs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from codesign.cli import main
from codesign.mapper import map_workload
from hw_models.accelerator import accelerator_from_dict, load_accelerator
from hw_models.cost import op_cost
from hw_models.engines.sparse_attention import (CSR, SparseEngineConfig, masked_matmul_timing, polarize_mask,
                                                pooled_head_timing, sddmm_cycles, spmm_cycles)
from hw_models.errors import ConfigError, MappingError, WorkloadError
from hw_models.schedule import OpMapping
from hw_models.simulator import default_mapping, simulate
from hw_models.workload import Mask, MatmulShape, OpNode, Workload
from hw_models.zoo import get_builtin, synthetic_attention_masks, vit

POOL = SparseEngineConfig(lines=8, macs_per_line=4, rows_per_cycle=2)


def _accel_dict(lines: int = 8, engines: int = 1, gb_kb: float = 256, **extra) -> dict:
    return {
        "name": "tiny-vitcod", "clock_mhz": 500, "dram": {"bandwidth_gbs": 16},
        "global_buffer": {"size_kb": gb_kb, "banks": 8, "bandwidth_bytes_per_cycle": 64},
        "chunks": [{"name": "lines", "pe_type": "sparse_attention", "rows": lines, "cols": 4,
                    "rows_per_cycle": 2, "engines": engines, "local_buffer_kb": 64, "vector_lanes": 8, **extra}]}


def _accel(lines: int = 8, engines: int = 1, gb_kb: float = 256, **extra) -> object:
    return accelerator_from_dict(_accel_dict(lines, engines, gb_kb, **extra))


def _masked(name: str, masks: np.ndarray, d: int, on: str = "out") -> OpNode:
    h, n, _ = masks.shape
    shape = MatmulShape(batch=h, rows=n, inner=d, cols=n) if on == "out" else MatmulShape(batch=h, rows=n, inner=n, cols=d)
    return OpNode(name, "sparse_matmul", shape, mask=Mask.from_array(masks), mask_on=on)


# -- IR ------------------------------------------------------------------------------------------


def test_mask_on_operand_a_counts_and_roundtrip() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((2, 9, 9)) < 0.3
    sddmm, spmm = _masked("qk", masks, 5), _masked("av", masks, 5, on="a")
    assert sddmm.macs == spmm.macs == int(masks.sum()) * 5
    back = OpNode.from_dict(json.loads(json.dumps(spmm.to_dict())))
    assert back == spmm and back.mask_on == "a"
    # a 2-head mask serves 4 groups (2 images): group i uses head i % 2
    four = OpNode("qk4", "sparse_matmul", MatmulShape(4, 9, 5, 9), mask=Mask.from_array(masks))
    assert four.macs == 2 * sddmm.macs
    assert np.array_equal(four.group_masks()[3], masks[1])


@pytest.mark.parametrize("bad, message", [
    (dict(mask_on="b"), "mask_on must be one of"),
    (dict(mask_on="a"), "does not match the operand A"),           # a (9, 9) mask on a (9 x 5) operand A
])
def test_mask_validation(bad: dict, message: str) -> None:
    mask = Mask.from_array(np.ones((1, 9, 9), bool))
    with pytest.raises(WorkloadError, match=message):
        OpNode("x", "sparse_matmul", MatmulShape(2, 9, 5, 9), mask=mask, **bad)
    with pytest.raises(WorkloadError, match="batch must divide"):
        OpNode("x", "sparse_matmul", MatmulShape(3, 9, 5, 9), mask=Mask.from_array(np.ones((2, 9, 9), bool)))


def test_sparse_vit_builder() -> None:
    masks = [synthetic_attention_masks(65, 2, 0.7, seed=i, grid=8) for i in range(2)]
    wl = vit("v", embed_dim=32, depth=2, heads=2, image_size=32, patch=4, num_classes=10, masks=masks)
    qk, av, sm = wl.op("block1.attn.qk"), wl.op("block1.attn.av"), wl.op("block1.attn.softmax")
    assert qk.kind == av.kind == "sparse_matmul" and (qk.mask_on, av.mask_on) == ("out", "a")
    assert sm.shape.elements == int(masks[1].sum())
    assert qk.macs == int(masks[1].sum()) * 16 == av.macs
    assert Workload.from_dict(json.loads(wl.to_json())).ops() == wl.ops()
    with pytest.raises(WorkloadError, match="2 attention masks given for 3 blocks"):
        vit("v", embed_dim=32, depth=3, heads=2, image_size=32, patch=4, masks=masks)
    with pytest.raises(WorkloadError, match=r"attention mask must be \(2, 65, 65\)"):
        vit("v", embed_dim=32, depth=2, heads=2, image_size=32, patch=4, masks=[m[:, :5, :5] for m in masks])


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
def test_synthetic_masks_hit_the_sparsity(sparsity: float) -> None:
    m = synthetic_attention_masks(197, 3, sparsity, seed=1, grid=14)
    assert m.shape == (3, 197, 197)
    kept = max(197, round((1 - sparsity) * 197 * 197))
    assert all(int(h.sum()) == kept for h in m)
    assert all(h.diagonal().all() for h in m)                     # every query keeps itself
    assert np.array_equal(m, synthetic_attention_masks(197, 3, sparsity, seed=1, grid=14))


# -- accelerator -------------------------------------------------------------------------------


def test_vitcod_preset() -> None:
    acc = load_accelerator("vitcod")
    lines = acc.chunk("lines")
    assert sum(c.pes for c in acc.chunks) == 512 and lines.codec_engine == "encdec"
    assert (lines.pe_type, lines.rows * lines.cols, acc.clock_mhz, acc.dram.bandwidth_gbs) == \
        ("sparse_attention", 480, 500, 76.8)
    assert lines.dataflows == ("csr", "os") and lines.gemm_dataflows == ("os",)
    assert lines.can_run("sparse_matmul") and lines.can_run("linear") and lines.can_run("softmax")


@pytest.mark.parametrize("chunk, message", [
    ({"pe_type": "mac", "dataflows": ["csr"]}, "only a sparse_attention chunk has the csr dataflow"),
    ({"pe_type": "mac", "engines": 2}, "apply to sparse_attention chunks only"),
    ({"pe_type": "sparse_attention", "engines": 3}, "3 engines must divide the 8 lines"),
    ({"pe_type": "sparse_attention", "dataflows": ["tiled"]}, "unknown dataflow 'tiled'"),
    ({"pe_type": "sparse_attention", "polarize_threshold": 1.5}, "polarize_threshold: must be in"),
    ({"pe_type": "sparse_attention", "codec_engine": "c"}, "codec_engine: must name another chunk"),
    ({"pe_type": "sparse_attention", "codec_engine": "nowhere"}, "codec_engine: must name another chunk"),
])
def test_sparse_chunk_validation(chunk: dict, message: str) -> None:
    data = {"name": "x", "clock_mhz": 500, "dram": {"bandwidth_gbs": 16},
            "global_buffer": {"size_kb": 64, "banks": 8, "bandwidth_bytes_per_cycle": 64},
            "chunks": [{"name": "c", "rows": 8, "cols": 4, **chunk}]}
    with pytest.raises(ConfigError, match=message):
        accelerator_from_dict(data)


def test_csr_only_chunk_runs_masked_products_only() -> None:
    acc = _accel(dataflows=["csr"])
    lines = acc.chunk("lines")
    assert lines.kinds()[:1] == ("sparse_matmul",) and not lines.can_run("linear")
    dense = OpNode("d", "sparse_matmul", MatmulShape(1, 8, 4, 8), density=0.5)     # no mask: no csr
    with pytest.raises(MappingError, match="needs a sparse_matmul with a mask"):
        op_cost(dense, acc, OpMapping("d", "lines", "csr", (8, 4, 8)))


# -- cost of the csr dataflow -------------------------------------------------------------------


def _expected_head_cycles(mask: np.ndarray, phase: str, d: int, pool: SparseEngineConfig) -> int:
    """Brute force over the dense/sparse line split, straight from the engine contract."""
    _, pm, g = polarize_mask(mask)
    pm, g = pm[0], int(g[0])
    n = mask.shape[0]
    fn = sddmm_cycles if phase == "sddmm" else spmm_cycles
    best = None
    for dl in range(pool.lines + 1):
        rest = pm[:, g:]
        if (g and dl == 0) or (rest.any() and dl == pool.lines) or (not g and dl):
            continue
        dc = fn(SparseEngineConfig(dl, pool.macs_per_line, pool.rows_per_cycle), np.ones((n, g), bool), d) if g else 0
        sc = fn(SparseEngineConfig(pool.lines - dl, pool.macs_per_line, pool.rows_per_cycle), rest, d) \
            if rest.any() else 0
        best = max(dc, sc) if best is None else min(best, max(dc, sc))
    return best


@pytest.mark.parametrize("case", ["random", "dense", "diagonal", "no-global", "577-tokens"])
def test_masked_timing_edge_cases(case: str) -> None:
    rng = np.random.default_rng(3)
    n = 577 if case == "577-tokens" else 40
    masks = {
        "random": rng.random((3, n, n)) < 0.2,
        "dense": np.ones((2, n, n), bool),
        "diagonal": np.broadcast_to(np.eye(n, dtype=bool), (2, n, n)),        # one token kept per row
        "no-global": np.broadcast_to(np.eye(n, dtype=bool) | np.eye(n, k=1, dtype=bool), (2, n, n)),
        "577-tokens": synthetic_attention_masks(577, 2, 0.9, seed=0, grid=24),
    }[case]
    for phase in ("sddmm", "spmm"):
        t = masked_matmul_timing(masks, phase, 16, POOL)
        assert t.head_cycles == tuple(_expected_head_cycles(m, phase, 16, POOL) for m in masks)
        assert t.latency == sum(t.head_cycles)                    # one engine: heads back to back
    t = masked_matmul_timing(masks, "sddmm", 16, POOL)
    if case == "dense":
        assert t.num_global == (n, n) and t.sparse_nnz == 0 and t.computed == 2 * n * n
    if case in ("diagonal", "no-global"):
        assert t.num_global == (0, 0) and t.computed == t.sparse_nnz == int(masks.sum())
    if case == "577-tokens":                                      # 3-byte pointers, 2-byte indices
        _, pm, g = polarize_mask(masks[0])
        rest = CSR.from_dense(pm[0][:, int(g[0]):])
        assert (rest.ptr_bytes, rest.idx_bytes) == (3, 2)
        assert t.head_metadata[0] == rest.metadata_bytes + 577 * 2


def test_pooled_head_timing_is_the_two_phase_split() -> None:
    mask = np.random.default_rng(5).random((30, 30)) < 0.3
    _, pm, g = polarize_mask(mask)
    pooled = pooled_head_timing(pm[0], int(g[0]), 16, POOL)
    per_phase = [masked_matmul_timing(mask, ph, 16, POOL).head_cycles[0] for ph in ("sddmm", "spmm")]
    assert sum(per_phase) <= pooled.total               # per-phase splits can only do better


def test_heads_partitioned_over_engines() -> None:
    masks = synthetic_attention_masks(65, 6, 0.8, seed=2, grid=8)
    one = masked_matmul_timing(masks, "sddmm", 16, SparseEngineConfig(4, 4, 2), engines=1)
    two = masked_matmul_timing(masks, "sddmm", 16, SparseEngineConfig(4, 4, 2), engines=2)
    assert one.head_cycles == two.head_cycles
    assert max(two.engine_loads) < sum(two.head_cycles) and sum(two.engine_loads) == sum(two.head_cycles)
    # through the cost model: two 4-line pools versus one 8-line pool on the same op
    op = _masked("qk", masks, 16)
    for engines in (1, 2):
        acc = _accel(engines=engines)
        cost = op_cost(op, acc, default_mapping(op, acc))
        t = masked_matmul_timing(masks, "sddmm", 16, SparseEngineConfig(8 // engines, 4, 2), engines=engines)
        assert cost.dataflow == "csr" and cost.compute_cycles == t.latency
        assert cost.cycles >= t.latency


def test_polarize_threshold_moves_work_between_the_workloads() -> None:
    masks = synthetic_attention_masks(65, 2, 0.7, seed=4, grid=8)
    op = _masked("qk", masks, 16)
    cost = {t: op_cost(op, a, default_mapping(op, a)) for t in (0.1, 0.25, 1.0) for a in [_accel(polarize_threshold=t)]}
    # threshold 1.0: no column is global, everything goes through the CSR format
    assert cost[1.0].hw_macs == int(masks.sum()) * 4 * 4
    assert cost[0.1].hw_macs > cost[0.25].hw_macs > cost[1.0].hw_macs       # bigger dense blocks compute more


def test_csr_cost_traffic_and_energy() -> None:
    masks = synthetic_attention_masks(65, 2, 0.9, seed=0, grid=8)
    acc = _accel()
    qk, av = _masked("qk", masks, 16), _masked("av", masks, 16, on="a")
    c_qk, c_av = (op_cost(op, acc, default_mapping(op, acc)) for op in (qk, av))
    t = masked_matmul_timing(masks, "sddmm", 16, POOL)
    # Q and K of both heads plus the CSR data in; one score per computed entry out
    assert c_qk.accesses["dram_read"] == 2 * (2 * 65 * 16) + t.metadata_bytes
    assert c_qk.accesses["dram_write"] == t.computed
    assert c_av.accesses["dram_write"] == 2 * 65 * 16
    assert c_qk.hw_macs == t.computed * 4 * 4 and c_qk.macs == qk.macs <= c_qk.hw_macs
    assert c_qk.energy_pj["mult"] > 0 and c_qk.energy_pj["dram"] > 0 and c_qk.energy_pj["noc"] == 0
    # the same products computed dense on the lines (all-ones masks) cost more cycles and energy
    ones = np.ones_like(masks)
    dense = op_cost(_masked("qk", ones, 16), acc, default_mapping(_masked("qk", ones, 16), acc))
    assert dense.cycles > c_qk.cycles and dense.total_energy_pj > c_qk.total_energy_pj


def test_global_buffer_too_small_is_one_line_error() -> None:
    masks = np.ones((1, 197, 197), bool)
    op = _masked("qk", masks, 64)
    with pytest.raises(MappingError, match="does not fit the 16 KB global buffer"):
        default_mapping(op, _accel(gb_kb=16))


# -- whole networks ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sparse_deit() -> Workload:
    return get_builtin("deit-small-sparse90")


def test_simulate_sparse_deit_on_vitcod(sparse_deit: Workload) -> None:
    acc = load_accelerator("vitcod")
    sparse = simulate(sparse_deit, acc)
    dense = simulate(get_builtin("deit-small"), acc)
    qk = sparse.op("block0.attn.qk")
    assert qk.dataflow == "csr" and sparse.op("block0.attn.av").dataflow == "csr"
    assert sparse.op("block0.attn.qkv").dataflow == "os"
    attn = lambda r: sum(o.cycles for o in r.ops if o.name.endswith((".qk", ".av", ".softmax")))  # noqa: E731
    assert attn(sparse) < attn(dense) and sparse.cycles < dense.cycles
    assert sparse.macs < dense.macs


def test_mapper_keeps_csr_for_sparse_attention(sparse_deit: Workload) -> None:
    acc = load_accelerator("vitcod")
    small = Workload("two-blocks", description="")
    for op in sparse_deit.ops()[:14]:                              # patch embed + the first block
        small.add(op, [p for p in sparse_deit.predecessors(op.name) if p in small.graph])
    sched = map_workload(small, acc, budget_s=5)
    assert sched.mappings["block0.attn.qk"].dataflow == "csr"
    mapped, default = simulate(small, acc, sched), simulate(small, acc)
    assert mapped.cycles * mapped.energy_total_pj <= default.cycles * default.energy_total_pj * 1.0001


def test_cli_simulate_and_map_sparse_vit(tmp_path, capsys) -> None:
    wl_path = tmp_path / "w.json"
    get_builtin("deit-small-sparse70").to_json(wl_path)
    assert main(["simulate", "--workload", str(wl_path), "--hw", "vitcod", "--json", str(tmp_path / "r.json")]) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert sum(op["dataflow"] == "csr" for op in data["ops"]) == 24
    attention = [op for op in data["ops"] if op["kind"] in ("sparse_matmul", "softmax")]
    assert data["attention"]["cycles"] == pytest.approx(sum(op["cycles"] for op in attention))
    printed = capsys.readouterr().out
    assert "csr" in printed and "attention only (36 QK^T / softmax / A.V ops)" in printed
    sched = tmp_path / "s.json"
    assert main(["map", "--model", "deit-small-sparse90", "--hw", "vitcod", "--budget", "3", "--quiet",
                 "-o", str(sched)]) == 0
    mappings = {m["op"]: m for m in json.loads(sched.read_text())["mappings"]}
    assert mappings["block3.attn.av"]["dataflow"] == "csr"


def test_qk_autoencoder_trades_traffic_for_codec_macs() -> None:
    masks = [synthetic_attention_masks(65, 4, 0.8, seed=i, grid=8) for i in range(2)]
    args = dict(embed_dim=64, depth=2, heads=4, image_size=32, patch=4, num_classes=10, masks=masks)
    plain, coded = vit("v", **args), vit("v", qk_compressed_heads=2, **args)
    assert plain.macs == coded.macs                               # the network's own MACs are unchanged
    qkv, qk = coded.op("block0.attn.qkv"), coded.op("block0.attn.qk")
    assert qkv.out_scale == pytest.approx((1 + 2 * 0.5) / 3) and qk.in_scale == 0.5
    assert qkv.codec_macs == qk.codec_macs == 2 * 65 * 64 * 2
    assert OpNode.from_dict(json.loads(json.dumps(qk.to_dict()))) == qk
    acc = _accel()
    p_qk, c_qk = (op_cost(w.op("block0.attn.qk"), acc, default_mapping(w.op("block0.attn.qk"), acc))
                  for w in (plain, coded))
    meta = masked_matmul_timing(masks[0], "sddmm", 16, POOL).metadata_bytes
    assert c_qk.accesses["dram_read"] - meta == pytest.approx((p_qk.accesses["dram_read"] - meta) / 2)
    assert c_qk.compute_cycles == p_qk.compute_cycles + -(-qk.codec_macs // 32)
    p_qkv, c_qkv = (op_cost(w.op("block0.attn.qkv"), acc, default_mapping(w.op("block0.attn.qkv"), acc))
                    for w in (plain, coded))
    assert c_qkv.accesses["dram_write"] == pytest.approx(p_qkv.accesses["dram_write"] * (2 / 3))
    # on a codec engine of its own the decoder runs beside the op: one head's worth stays exposed
    eng = accelerator_from_dict({**_accel_dict(), "chunks": [
        {**_accel_dict()["chunks"][0], "codec_engine": "encdec"},
        {"name": "encdec", "pe_type": "mac", "rows": 2, "cols": 4, "dataflows": ["os"], "supports": ["linear"]}]})
    e_qk = op_cost(qk, eng, default_mapping(qk, eng))
    codec, serial = -(-qk.codec_macs // 8), -(-qk.codec_macs // 32)    # on the engine / on the lines
    main_end = c_qk.cycles - serial                                     # c_qk ran its codec after the op
    assert e_qk.cycles == pytest.approx(max(main_end, codec) + codec / 4)
    assert e_qk.compute_cycles == c_qk.compute_cycles - serial
    # compressed operands must be decoded by the sparse lines: no dense mapping of that QK^T
    with pytest.raises(MappingError, match="decoded by the sparse lines only"):
        op_cost(qk, acc, OpMapping(qk.name, "lines", "os", (65, 16, 65), (8, 4, 16)))
    with pytest.raises(WorkloadError, match="compressed heads must be in 1..4"):
        vit("v", qk_compressed_heads=5, **args)
