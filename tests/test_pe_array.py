"""The exact tile timing function must equal the per-cycle stepper, and both must compute the same
integers as the numpy reference, on hundreds of random tiles, shapes and PE types."""
import numpy as np
import pytest

from hw_models.engines.pe_array import (ArrayGeometry, PEArrayStepper, reference_gemm, tile_cycles,
                                        tile_cycles_np, wrap)

PE_BITS = {"mac": 8, "shift": 5, "adder": 8}


def random_operands(rng, pe_type, m, k, n, in_bits=8):
    lo, hi = -(1 << (in_bits - 1)), 1 << (in_bits - 1)
    a = rng.integers(lo, hi, (m, k))
    if pe_type == "shift":
        w = rng.integers(0, 1 << PE_BITS["shift"], (k, n))
    else:
        w = rng.integers(lo, hi, (k, n))
    return a, w


def random_tile(rng, dataflow):
    rows, cols = (int(x) for x in rng.integers(1, 9, 2))
    geom = ArrayGeometry(rows, cols, int(rng.integers(1, 3)))
    n = int(rng.integers(1, cols + 1))
    if dataflow == "os":
        m, k = int(rng.integers(1, rows + 1)), int(rng.integers(1, 40))
    else:
        m, k = int(rng.integers(1, 24)), int(rng.integers(1, rows + 1))
    return geom, m, n, k


@pytest.mark.parametrize("dataflow", ["os", "ws"])
@pytest.mark.parametrize("pe_type", ["mac", "shift", "adder"])
def test_timing_function_equals_stepper_and_numerics_exact(dataflow, pe_type):
    rng = np.random.default_rng(hash((dataflow, pe_type)) % 2**32)
    for _ in range(70):          # 6 combinations x 70 = 420 random tiles
        geom, m, n, k = random_tile(rng, dataflow)
        a, w = random_operands(rng, pe_type, m, k, n)
        result = PEArrayStepper(geom, pe_type, acc_bits=32, weight_bits=PE_BITS[pe_type]).run(dataflow, a, w)
        assert result.cycles == tile_cycles(geom, dataflow, m, n, k), (geom, m, n, k)
        np.testing.assert_array_equal(result.output, reference_gemm(pe_type, a, w, 32, PE_BITS[pe_type]))
        assert len(result.write_edges) == m and result.write_edges[-1] == result.cycles


@pytest.mark.parametrize("pe_type", ["mac", "shift", "adder"])
def test_os_k_split_accumulates_without_writeback(pe_type):
    rng = np.random.default_rng(7)
    geom = ArrayGeometry(4, 5, 2)
    stepper = PEArrayStepper(geom, pe_type, acc_bits=24, weight_bits=PE_BITS[pe_type])
    a, w = random_operands(rng, pe_type, 4, 30, 5)
    first = stepper.run("os", a[:, :13], w[:13], clear=True, writeback=False)
    assert first.cycles == tile_cycles(geom, "os", 4, 5, 13, writeback=False) and first.write_edges == []
    second = stepper.run("os", a[:, 13:], w[13:], clear=False, writeback=True)
    assert second.cycles == tile_cycles(geom, "os", 4, 5, 17)
    np.testing.assert_array_equal(second.output, reference_gemm(pe_type, a, w, 24, PE_BITS[pe_type]))


def test_accumulator_wraps_like_twos_complement():
    geom = ArrayGeometry(1, 1)
    a = np.full((1, 40), -128)
    w = np.full((40, 1), -128)          # 40 * 16384 = 655360 overflows a 16-bit accumulator
    out = PEArrayStepper(geom, "mac", acc_bits=16).run("os", a, w).output
    assert out[0, 0] == wrap(np.int64(655360), 16) == 655360 - 10 * 65536
    assert out[0, 0] != 655360


def test_shift_codes_are_sign_and_amount():
    # weight_bits=5: code 0b1_0011 is -(a << 3); code 0b0_0000 is +a
    a = np.array([[3, -5]])
    w = np.array([[0b10011], [0b00000]])
    out = PEArrayStepper(ArrayGeometry(2, 2), "shift", weight_bits=5).run("os", a, w).output
    assert out[0, 0] == -(3 << 3) + (-5)


def test_adder_pe_accumulates_negative_l1_distance():
    a = np.array([[5, -7, 0]])
    w = np.array([[2], [1], [-4]])
    out = PEArrayStepper(ArrayGeometry(1, 1), "adder").run("os", a, w).output
    assert out[0, 0] == -(3 + 8 + 4)


def test_vectorised_timing_matches_scalar():
    rng = np.random.default_rng(3)
    geom = ArrayGeometry(16, 16, 2)
    for dataflow in ("os", "ws"):
        m, n, k = (rng.integers(1, 17, 200) for _ in range(3))
        vec = tile_cycles_np(geom, dataflow, m, n, k)
        assert [int(v) for v in vec] == [tile_cycles(geom, dataflow, int(a), int(b), int(c))
                                         for a, b, c in zip(m, n, k)]


def test_illegal_tiles_rejected():
    geom = ArrayGeometry(4, 4)
    with pytest.raises(ValueError, match="exceeds 4 array rows"):
        tile_cycles(geom, "os", 5, 4, 10)
    with pytest.raises(ValueError, match="exceeds 4 array rows"):
        tile_cycles(geom, "ws", 100, 4, 5)
    with pytest.raises(ValueError, match="columns"):
        tile_cycles(geom, "ws", 1, 5, 1)
