"""Sparser engine (SDDMM / SpMM over CSR masks), denser engine and encoder/decoder engine: the exact
timing functions equal the per-cycle steppers on hundreds of random masks of many sparsities, and
the steppers compute exactly what numpy computes. numpy only (no torch)."""
import numpy as np
import pytest

from hw_models.engines.pe_array import ArrayGeometry, wrap
from hw_models.engines.sparse_attention import (CSR, SDDMMStepper, SparseEngineConfig, SpMMStepper,
                                                autoencoder_cycles, autoencoder_shapes, dense_block_cycles,
                                                dense_gemm_cycles, dense_gemm_stepper, head_timing,
                                                partition_heads, qk_transfer_bytes, reference_sddmm,
                                                reference_spmm, sddmm_cycles, sddmm_traffic, spmm_cycles,
                                                spmm_traffic, wave_issue_edges)

DENSITIES = (0.0, 0.01, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)      # sparsity 100 % .. 0 %


def random_case(rng):
    rows, cols = (int(x) for x in rng.integers(1, 28, 2))
    density = float(rng.choice(DENSITIES))
    mask = rng.random((rows, cols)) < density
    if rng.random() < 0.2:                      # structured: one kept entry per row
        mask = np.zeros((rows, cols), bool)
        mask[np.arange(rows), rng.integers(0, cols, rows)] = True
    d = int(rng.integers(1, 20))
    cfg = SparseEngineConfig(lines=int(rng.integers(1, 10)), macs_per_line=int(rng.integers(1, 7)),
                             rows_per_cycle=int(rng.integers(1, 5)), acc_bits=int(rng.choice([12, 20, 32])))
    return mask, d, cfg


@pytest.mark.parametrize("seed", range(4))
def test_sddmm_timing_equals_stepper_and_numerics_exact(seed):
    rng = np.random.default_rng(100 + seed)
    for _ in range(75):                          # 4 x 75 = 300 random masks
        mask, d, cfg = random_case(rng)
        csr = CSR.from_dense(mask)
        q = rng.integers(-128, 128, (mask.shape[0], d))
        k = rng.integers(-128, 128, (mask.shape[1], d))
        res = SDDMMStepper(cfg).run(q, k, csr)
        assert res.cycles == sddmm_cycles(cfg, csr, d), (mask.shape, csr.nnz, d, cfg)
        assert res.issue_edges == wave_issue_edges(cfg, csr, d).tolist()
        np.testing.assert_array_equal(res.output, reference_sddmm(q, k, csr, cfg.acc_bits))
        np.testing.assert_array_equal(res.output, wrap((q @ k.T)[mask], cfg.acc_bits))
        if csr.nnz:
            assert len(res.write_edges) == -(-csr.nnz // cfg.lines) and res.write_edges[-1] == res.cycles


@pytest.mark.parametrize("seed", range(4))
def test_spmm_timing_equals_stepper_and_numerics_exact(seed):
    rng = np.random.default_rng(200 + seed)
    for _ in range(75):
        mask, d, cfg = random_case(rng)
        csr = CSR.from_dense(mask)
        values = rng.integers(0, 256, csr.nnz)                       # unsigned 8-bit probabilities
        v = rng.integers(-128, 128, (mask.shape[1], d))
        init = rng.integers(-5000, 5000, (mask.shape[0], d))          # the denser engine's partial sums
        res = SpMMStepper(cfg).run(values, csr, v, out_init=init)
        assert res.cycles == spmm_cycles(cfg, csr, d), (mask.shape, csr.nnz, d, cfg)
        dense_a = np.zeros(mask.shape, np.int64)
        dense_a[mask] = values
        np.testing.assert_array_equal(res.output, wrap(init + dense_a @ v, cfg.acc_bits))
        np.testing.assert_array_equal(res.output, reference_spmm(values, csr, v, cfg.acc_bits, init))
        if csr.nnz:
            assert res.write_edges[-1] == res.cycles
            # every kept row is written once per beat slice (rows spanning waves go through the carry)
            assert len(res.write_edges) == np.count_nonzero(mask.any(1)) * cfg.beats(d)


def test_hand_computed_walker_bound_and_compute_bound():
    # 16 rows, one nonzero each (diagonal), L=4 lines, d=W=8 -> C=1.
    diag = np.eye(16, dtype=bool)
    slow = SparseEngineConfig(lines=4, macs_per_line=8, rows_per_cycle=1)
    # r_w = 4, 8, 12, 16 -> a_w = 6, 10, 14, 18 (walker-bound) -> s_w = a_w; cycles = 18 + 1 + 3
    assert wave_issue_edges(slow, CSR.from_dense(diag), 8).tolist() == [6, 10, 14, 18]
    assert sddmm_cycles(slow, diag, 8) == 22
    assert spmm_cycles(slow, diag, 8) == 18 + 1 + 2 + 2        # T = ceil(log2 4) = 2
    fast = SparseEngineConfig(lines=4, macs_per_line=8, rows_per_cycle=4)
    assert wave_issue_edges(fast, CSR.from_dense(diag), 8).tolist() == [3, 4, 5, 6]
    assert sddmm_cycles(fast, diag, 8) == 10
    # fully dense 8 x 8, d = 16, W = 4 -> C = 4: the lines bound it: s_w = 3 + 4w, 16 waves
    dense = np.ones((8, 8), bool)
    cfg = SparseEngineConfig(lines=4, macs_per_line=4, rows_per_cycle=1)
    assert wave_issue_edges(cfg, CSR.from_dense(dense), 16).tolist() == [3 + 4 * w for w in range(16)]
    assert sddmm_cycles(cfg, dense, 16) == 3 + 4 * 15 + 4 + 3
    for stepper, fn in ((SDDMMStepper, sddmm_cycles), (SpMMStepper, spmm_cycles)):
        for c, m, d in ((slow, diag, 8), (fast, diag, 8), (cfg, dense, 16)):
            ops = (np.ones((m.shape[0], d), int), np.ones((m.shape[1], d), int)) if stepper is SDDMMStepper \
                else (np.ones(int(m.sum()), int), m, np.ones((m.shape[1], d), int))
            res = stepper(c).run(*ops) if stepper is SpMMStepper else stepper(c).run(ops[0], ops[1], m)
            assert res.cycles == fn(c, m, d)


def test_empty_mask_and_edge_shapes():
    cfg = SparseEngineConfig(lines=3, macs_per_line=2)
    empty = np.zeros((5, 7), bool)
    assert sddmm_cycles(cfg, empty, 4) == spmm_cycles(cfg, empty, 4) == 1
    res = SDDMMStepper(cfg).run(np.ones((5, 4), int), np.ones((7, 4), int), empty)
    assert res.cycles == 1 and res.output.size == 0 and res.write_edges == []
    out = SpMMStepper(cfg).run(np.zeros(0, int), empty, np.ones((7, 4), int), out_init=np.full((5, 4), 3))
    assert out.cycles == 1 and (out.output == 3).all()
    # a single row holding every column: one row spans all waves (carry path), L does not divide nnz
    row = np.ones((1, 10), bool)
    v = np.arange(40).reshape(10, 4)
    res = SpMMStepper(cfg).run(np.arange(1, 11), row, v)
    np.testing.assert_array_equal(res.output[0], np.arange(1, 11) @ v)
    assert res.cycles == spmm_cycles(cfg, row, 4) and len(res.write_edges) == cfg.beats(4)


def test_accumulators_wrap():
    cfg = SparseEngineConfig(lines=2, macs_per_line=4, acc_bits=16)
    q = np.full((1, 40), -128)
    k = np.full((1, 40), -128)                   # 40 * 16384 = 655360 overflows 16 bits
    res = SDDMMStepper(cfg).run(q, k, np.ones((1, 1), bool))
    assert res.output[0] == 655360 - 10 * 65536 != 655360


def test_csr_format_and_metadata_bytes():
    rng = np.random.default_rng(5)
    m = rng.random((197, 197)) < 0.1
    csr = CSR.from_dense(m)
    np.testing.assert_array_equal(csr.to_dense(), m)
    assert csr.ptr_bytes == 2 and csr.idx_bytes == 1            # 197^2 = 38809 < 2^16; 196 < 2^8
    assert csr.metadata_bytes == 198 * 2 + int(m.sum())
    big = CSR.from_dense(np.eye(577, dtype=bool))
    assert big.ptr_bytes == 3 and big.idx_bytes == 2 and big.metadata_bytes == 578 * 3 + 577 * 2
    tr = sddmm_traffic(SparseEngineConfig(lines=8, macs_per_line=8), csr, 64)
    assert tr.metadata_bytes == csr.metadata_bytes and tr.values_bytes == 0
    assert tr.operand_read_bytes == 2 * csr.nnz * 64 and tr.macs == csr.nnz * 64 == tr.hw_macs
    tr2 = spmm_traffic(SparseEngineConfig(lines=8, macs_per_line=6), csr, 64, value_bits=8)
    assert tr2.values_bytes == csr.nnz and tr2.hw_macs == csr.nnz * 11 * 6 > tr2.macs
    assert tr2.output_bytes == int(m.any(1).sum()) * 64


def test_577_tokens_99_percent():
    rng = np.random.default_rng(9)
    n = 577
    m = rng.random((n, n)) < 0.01
    m[:, 0] = True
    csr = CSR.from_dense(m[:, 1:])                               # global column 0 on the denser engine
    cfg = SparseEngineConfig(lines=32, macs_per_line=8, rows_per_cycle=4)
    q = rng.integers(-128, 128, (n, 64))
    k = rng.integers(-128, 128, (n - 1, 64))
    res = SDDMMStepper(cfg).run(q, k, csr)
    assert res.cycles == sddmm_cycles(cfg, csr, 64)
    np.testing.assert_array_equal(res.output, reference_sddmm(q, k, csr, 32))
    vals = rng.integers(0, 256, csr.nnz)
    res = SpMMStepper(cfg).run(vals, csr, k)
    assert res.cycles == spmm_cycles(cfg, csr, 64)
    np.testing.assert_array_equal(res.output, reference_spmm(vals, csr, k, 32))


def test_dense_engine_tiles_equal_pe_array_stepper():
    rng = np.random.default_rng(11)
    for _ in range(25):
        geom = ArrayGeometry(int(rng.integers(1, 6)), int(rng.integers(1, 6)), int(rng.integers(1, 3)))
        m, k, n = (int(x) for x in rng.integers(0, 14, 3))
        a = rng.integers(-128, 128, (m, k))
        w = rng.integers(-128, 128, (k, n))
        cycles, out = dense_gemm_stepper(geom, a, w)
        assert cycles == dense_gemm_cycles(geom, m, k, n)
        np.testing.assert_array_equal(out, a @ w)
    assert dense_gemm_cycles(ArrayGeometry(4, 4), 10, 8, 0) == 0
    assert dense_block_cycles(ArrayGeometry(8, 8), 197, 64, 0) == (0, 0)


def test_polarized_head_dense_plus_sparse_equals_masked_attention():
    """Global columns on the denser engine + the CSR remainder on the sparser engine == the masked
    products of the original head, after undoing the one symmetric permutation."""
    rng = np.random.default_rng(13)
    n, d = 29, 12
    mask = rng.random((n, n)) < 0.15
    mask[:, [0, 7, 19]] = True                   # three global-token columns
    glob = mask.sum(0) > 0.25 * n
    perm = np.concatenate([np.nonzero(glob)[0], np.nonzero(~glob)[0]])
    g = int(glob.sum())
    assert {0, 7, 19} <= set(perm[:g].tolist()) and 3 <= g < n
    mp = mask[perm][:, perm]
    q, k, v = (rng.integers(-128, 128, (n, d)) for _ in range(3))
    qp, kp, vp = q[perm], k[perm], v[perm]
    geom, cfg = ArrayGeometry(4, 4, 2), SparseEngineConfig(lines=4, macs_per_line=4, rows_per_cycle=2)
    csr = CSR.from_dense(mp[:, g:])
    _, s_dense = dense_gemm_stepper(geom, qp, kp[:g].T)
    s_sparse = SDDMMStepper(cfg).run(qp, kp[g:], csr).output
    scores = np.zeros((n, n), np.int64)
    scores[:, :g] = s_dense
    scores[:, g:][mp[:, g:]] = s_sparse
    inv = np.argsort(perm)
    np.testing.assert_array_equal(scores[inv][:, inv][mask], (q @ k.T)[mask])
    probs = np.where(mp, rng.integers(0, 256, (n, n)), 0)      # softmax output, masked entries 0
    _, o_dense = dense_gemm_stepper(geom, probs[:, :g], vp[:g])
    o = SpMMStepper(cfg).run(probs[:, g:][mp[:, g:]], csr, vp[g:], out_init=o_dense).output
    np.testing.assert_array_equal(o[inv], probs[inv][:, inv] @ v)
    t = head_timing(mp, g, d, cfg, geom)
    assert t.sparse_nnz == csr.nnz and t.sparse_qk == sddmm_cycles(cfg, csr, d)
    assert (t.dense_qk, t.dense_av) == dense_block_cycles(geom, n, d, g) and t.total == t.qk + t.av


def test_head_timing_without_global_tokens_and_all_global():
    geom, cfg = ArrayGeometry(8, 8), SparseEngineConfig()
    band = np.abs(np.subtract.outer(np.arange(40), np.arange(40))) <= 1
    t = head_timing(band, 0, 64, cfg, geom)
    assert t.dense_qk == t.dense_av == 0 and t.sparse_nnz == int(band.sum()) and t.qk == t.sparse_qk > 0
    full = np.ones((40, 40), bool)
    t = head_timing(full, 40, 64, cfg, geom)
    assert t.sparse_qk == t.sparse_av == 0 and t.qk == dense_gemm_cycles(geom, 40, 64, 40)


def test_autoencoder_engine():
    assert autoencoder_shapes(197, 64, 6, 3) == {"encoder": (197 * 64, 6, 3), "decoder": (197 * 64, 3, 6)}
    geom = ArrayGeometry(16, 8)
    assert autoencoder_cycles(geom, 197, 64, 6, 3, "decoder") == 2 * dense_gemm_cycles(geom, 197 * 64, 3, 6)
    full, comp = qk_transfer_bytes(197, 64, 6, 3)
    assert full == 2 * 6 * 197 * 64 and comp * 2 == full
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (10 * 4, 3))         # (N d) x H for N=10, d=4, H=3
    enc = rng.integers(-128, 128, (3, 2))
    cycles, out = dense_gemm_stepper(ArrayGeometry(8, 2), x, enc)
    assert cycles == dense_gemm_cycles(ArrayGeometry(8, 2), *autoencoder_shapes(10, 4, 3, 2)["encoder"])
    np.testing.assert_array_equal(out, x @ enc)
    with pytest.raises(ValueError, match="compressed"):
        autoencoder_shapes(10, 4, 3, 4)


def test_partition_heads_longest_first():
    assign, load, latency = partition_heads([5, 4, 3, 3, 3], 2)
    assert assign == [0, 1, 1, 0, 1] and load == [8, 10] and latency == 10
    assert partition_heads([7, 1, 1], 3)[2] == 7
    assert partition_heads([2, 2, 2, 2], 1)[2] == 8
    with pytest.raises(ValueError):
        partition_heads([1], 0)


def test_bad_inputs_rejected():
    cfg = SparseEngineConfig(lines=2, macs_per_line=2)
    with pytest.raises(ValueError, match="do not fit"):
        SDDMMStepper(cfg).run(np.ones((3, 4)), np.ones((3, 5)), np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="lines"):
        SparseEngineConfig(lines=0)
    with pytest.raises(ValueError, match="2-D"):
        CSR.from_dense(np.ones((2, 2, 2), bool))


# ----------------------------------------------------------------------------------------------
# baseline models (analytical; assumptions in hw_models/engines/attention_baselines.py)

from hw_models.engines.attention_baselines import (SangerConfig, pack_and_split, sanger_head,  # noqa: E402
                                                   spatten_layer, spatten_tokens)
from hw_models.engines.pe_array import tile_cycles  # noqa: E402


def test_sanger_pack_and_split():
    eye = np.eye(4, dtype=bool)                  # four 1-nonzero rows, disjoint columns -> one packed row
    assert pack_and_split(eye, 64, 16).packed_rows == 1
    assert pack_and_split(eye, 64, 16).utilization == 4 / 16
    full = np.ones((4, 4), bool)                 # every row collides in every column -> no packing
    assert pack_and_split(full, 64, 16).packed_rows == 4
    long_row = np.zeros((1, 64), bool)
    long_row[0, :40] = True                      # split into 16 + 16 + 8 (disjoint, but too many to share)
    assert pack_and_split(long_row, 64, 16).packed_rows == 3
    two_blocks = np.ones((1, 128), bool)         # two 64-wide blocks are packed separately
    assert pack_and_split(two_blocks, 64, 16).packed_rows == 8


def test_sanger_head_cycles():
    cfg = SangerConfig(macs=64, pes_per_row=16, vec=64)   # 4 array rows
    m = np.ones((8, 8), bool)                    # 8 packed rows -> 2 full passes
    h = sanger_head(m, 32, cfg)
    one_pass = tile_cycles(ArrayGeometry(4, 16, 1), "os", 4, 16, 32)
    assert h.packed_rows == 8 and h.sddmm_cycles == h.spmm_cycles == 2 * one_pass
    assert h.prediction_cycles == -(-8 * 8 * 32 // (4 * 64))
    assert h.total == h.prediction_cycles + 2 * h.sddmm_cycles


def test_spatten_token_schedule_and_layer():
    assert spatten_tokens(197, 12, 0.0) == [197] * 12
    assert spatten_tokens(197, 2, 0.9) == [1 + 62] * 2          # 1 + ceil(sqrt(0.1) * 196)
    layer = spatten_layer(197, 63, 6, 64)
    geom = ArrayGeometry(16, 32, 2)
    assert layer.attention_cycles == 6 * (dense_gemm_cycles(geom, 63, 64, 63) + dense_gemm_cycles(geom, 63, 63, 64))
    assert layer.topk_cycles == 2 * 4 and abs(layer.attention_density - 63 ** 2 / 197 ** 2) < 1e-12
    with pytest.raises(ValueError):
        spatten_layer(10, 11, 1, 8)


def test_layer_timing_partitions_heads_and_takes_the_slowest_engine():
    from hw_models.engines.sparse_attention import attention_layer_timing, polarize_mask
    rng = np.random.default_rng(21)
    masks = rng.random((6, 40, 40)) < 0.08
    masks[:, :, [0, 3]] = True
    perm, pm, g = polarize_mask(masks)
    assert (g >= 2).all() and all(np.array_equal(pm[h], masks[h][perm[h]][:, perm[h]]) for h in range(6))
    geom, cfg = ArrayGeometry(8, 8), SparseEngineConfig(lines=8, macs_per_line=8)
    one = attention_layer_timing(masks, 64, cfg, geom)
    heads = [head_timing(pm[h], int(g[h]), 64, cfg, geom) for h in range(6)]
    assert one.heads == tuple(heads)
    assert one.qk == max(sum(h.dense_qk for h in heads), sum(h.sparse_qk for h in heads))
    two = attention_layer_timing(masks, 64, cfg, geom, sparse_engines=2, dense_engines=3)
    assert len(two.sparse_loads_qk) == 2 and len(two.dense_loads_av) == 3
    assert two.qk == max(two.dense_loads_qk + two.sparse_loads_qk) <= one.qk
    assert sum(two.sparse_loads_av) == sum(h.sparse_av for h in heads)


def test_pooled_lines_split_between_dense_block_and_sparse_part():
    from hw_models.engines.sparse_attention import pooled_head_timing
    pool = SparseEngineConfig(lines=16, macs_per_line=8, rows_per_cycle=4)
    n = 48
    m = np.zeros((n, n), bool)
    m[:, :6] = True                              # 6 global columns (already polarized)
    m[np.arange(n), np.arange(n)] = True
    t = pooled_head_timing(m, 6, 64, pool)
    assert t.lines_dense + t.lines_sparse == 16 and 0 < t.lines_dense < 16
    brute = []
    for dl in range(1, 16):
        a = SparseEngineConfig(dl, 8, 4)
        b = SparseEngineConfig(16 - dl, 8, 4)
        blk, rest = np.ones((n, 6), bool), m[:, 6:]
        brute.append(max(sddmm_cycles(a, blk, 64), sddmm_cycles(b, rest, 64))
                     + max(spmm_cycles(a, blk, 64), spmm_cycles(b, rest, 64)))
    assert t.total == min(brute)
    only_dense = pooled_head_timing(np.ones((n, n), bool), n, 64, pool)
    assert only_dense.lines_dense == 16 and only_dense.sparse_qk == 0
    no_global = pooled_head_timing(m[6:, 6:], 0, 64, pool)
    assert no_global.lines_dense == 0 and no_global.dense_qk == 0 and no_global.qk == sddmm_cycles(pool, m[6:, 6:], 64)
