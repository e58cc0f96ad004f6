"""2-D PE-array engine: exact per-tile timing, a per-cycle reference stepper, integer numerics.

The PE is a MAC (``acc += a*w``), a shift-accumulate unit (``acc += ±(a << s)``) or an adder unit
(``acc += -|a - w|``). The RTL in ``rtl/`` is built to the timing contract below and its cocotb
testbenches assert ``start``-to-``done`` equals :func:`tile_cycles` exactly.

Timing contract
===============
Edges are rising clock edges. **Edge 0** is the edge at which ``start`` is sampled high; the tile
takes ``tile_cycles(...)`` cycles, meaning ``done`` is high during the cycle that follows edge
``tile_cycles(...)`` (it is registered, high for exactly one cycle). ``P`` is the PE pipeline depth
(1: operands latched -> accumulated at the next edge; 2: an extra product register).
Operand buffers are synchronous SRAMs: an address presented during the cycle after edge ``e`` has
its data on the output register after edge ``e + 1``.

Output-stationary (OS): tile C[m x n] = A[m x K] (.) W[K x n], m <= rows, n <= cols.
  A buffer word k = column k of A (one lane per PE row); W buffer word k = row k of W.
  * edge 1+k    (k = 0..K-1): word k of both buffers is on the buffer output registers;
  * edge 2+k+i+j: PE(i, j) latches operand pair k (row i is skewed by i registers, column j by j;
                  one register per PE hop);
  * edge 2+k+i+j+P: PE(i, j) adds pair k into its accumulator. ``clear`` (sampled with ``start``)
                  zeroes the accumulators at edge 0, otherwise they keep the previous tile's sums
                  (a K-split tile);
  * the corner PE(m-1, n-1) accumulates its last pair at edge L = K + P + m + n - 1; the
    controller sees that at edge L + 1;
  * if ``writeback``: output rows r = 0..m-1 are written to the output buffer at edges L+1+r and
    ``done`` rises at edge L + m (the last write and ``done`` share an edge):
        cycles = K + P + 2m + n - 1
    otherwise ``done`` rises at edge L + 1:  cycles = K + P + m + n.

Weight-stationary (WS): tile C[m x n] = A[m x K] (.) W[K x n], K <= rows, n <= cols, any m.
  W buffer word k = row k of W; A buffer word p = row p of A (one lane per PE row).
  * edges 1..K: weight rows 0..K-1 are on the W buffer output; PE row k latches its weights at
    edge 2+k (preload, no shifting);
  * edge K+1+p (p = 0..m-1): A word p is on the A buffer output; row k is skewed by k*P registers;
  * PE(k, j) latches a[p][k] at edge K+2+p+k*P+j; at the next edge it adds f(a, w) to the partial
    sum arriving from PE(k-1, j) and the sum leaves its P-deep psum pipeline after edge
    K+2+p+k*P+j+P, so the finished sum for row p is at the bottom of column j after edge
    B(p, j) = K*(P+1) + p + j + 2;
  * column j is de-skewed by n-1-j registers; output row p is written at edge B(p, n-1) + 1
    = K*(P+1) + p + n + 2;
    ``done`` rises with the last write:
        cycles = K*(P+1) + m + n + 1.
  WS writes every tile (K-splits are summed by the output buffer's accumulate port).

Numerics: two's-complement integers; the accumulator is ``acc_bits`` wide and **wraps** on overflow
(no saturation), in the Python model and the RTL alike. Shift weights are ``weight_bits``-bit codes
``{sign, amount}``: value = (-1)^sign * 2^amount, with no zero code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

PEType = Literal["mac", "shift", "adder"]
Dataflow = Literal["os", "ws"]
PE_TYPES = ("mac", "shift", "adder")
DATAFLOWS = ("os", "ws")


@dataclass(frozen=True)
class ArrayGeometry:
    rows: int
    cols: int
    pipeline: int = 1   # P, PE pipeline depth

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise ValueError(f"array must be at least 1x1, got {self.rows}x{self.cols}")
        if self.pipeline not in (1, 2):
            raise ValueError(f"PE pipeline depth must be 1 or 2, got {self.pipeline}")


def check_tile(geom: ArrayGeometry, dataflow: Dataflow, m: int, n: int, k: int) -> None:
    """Raise ValueError unless (m, n, k) is a legal tile for this array and dataflow."""
    if min(m, n, k) < 1:
        raise ValueError(f"tile dims must be >= 1, got m={m} n={n} k={k}")
    if n > geom.cols:
        raise ValueError(f"tile n={n} exceeds {geom.cols} array columns")
    if dataflow == "os" and m > geom.rows:
        raise ValueError(f"OS tile m={m} exceeds {geom.rows} array rows")
    if dataflow == "ws" and k > geom.rows:
        raise ValueError(f"WS tile k={k} exceeds {geom.rows} array rows")
    if dataflow not in DATAFLOWS:
        raise ValueError(f"unknown dataflow {dataflow!r}")


# ----------------------------------------------------------------------------------------------
# (a) exact per-tile timing


def tile_cycles(geom: ArrayGeometry, dataflow: Dataflow, m: int, n: int, k: int,
                writeback: bool = True) -> int:
    """Cycles from the ``start`` edge to the ``done`` edge for one tile (see module docstring)."""
    check_tile(geom, dataflow, m, n, k)
    p = geom.pipeline
    if dataflow == "os":
        return k + p + 2 * m + n - 1 if writeback else k + p + m + n
    return k * (p + 1) + m + n + 1


def tile_cycles_np(geom: ArrayGeometry, dataflow: Dataflow, m: np.ndarray, n: np.ndarray,
                   k: np.ndarray, writeback: np.ndarray | bool = True) -> np.ndarray:
    """Vectorised :func:`tile_cycles` for the mapper (no legality checks: callers filter first)."""
    p = geom.pipeline
    if dataflow == "os":
        return np.where(writeback, k + p + 2 * m + n - 1, k + p + m + n)
    return k * (p + 1) + m + n + 1


# ----------------------------------------------------------------------------------------------
# integer numerics shared by the stepper, the RTL testbenches and the numpy reference


def wrap(values: np.ndarray, bits: int) -> np.ndarray:
    """Two's-complement wrap of int64 values to ``bits`` bits."""
    mod = np.int64(1) << bits
    half = np.int64(1) << (bits - 1)
    return ((np.asarray(values, dtype=np.int64) + half) % mod) - half


def shift_decode(codes: np.ndarray, weight_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Split shift-weight codes into (sign in {0,1}, amount)."""
    codes = np.asarray(codes, dtype=np.int64) & ((1 << weight_bits) - 1)
    return codes >> (weight_bits - 1), codes & ((1 << (weight_bits - 1)) - 1)


def pe_term(pe_type: PEType, a: np.ndarray, w: np.ndarray, weight_bits: int) -> np.ndarray:
    """The value one PE adds to its accumulator for operands (a, w), as int64 (broadcasting)."""
    a = np.asarray(a, dtype=np.int64)
    w = np.asarray(w, dtype=np.int64)
    if pe_type == "mac":
        return a * w
    if pe_type == "shift":
        sign, amount = shift_decode(w, weight_bits)
        mag = a << amount
        return np.where(sign == 1, -mag, mag)
    if pe_type == "adder":
        return -np.abs(a - w)
    raise ValueError(f"unknown PE type {pe_type!r}")


def reference_gemm(pe_type: PEType, a: np.ndarray, w: np.ndarray, acc_bits: int, weight_bits: int,
                   acc_init: np.ndarray | None = None) -> np.ndarray:
    """numpy reference: C[i, j] = wrap(acc_init + sum_k term(A[i, k], W[k, j])).

    Wrapping once at the end equals wrapping after every add (modular arithmetic), as long as the
    int64 intermediate does not overflow, which holds for acc_bits <= 48 and K < 2**15.
    """
    terms = pe_term(pe_type, a[:, :, None], w[None, :, :], weight_bits)   # m x K x n
    total = terms.sum(axis=1)
    if acc_init is not None:
        total = total + acc_init
    return wrap(total, acc_bits)


# ----------------------------------------------------------------------------------------------
# (b) per-cycle reference stepper


@dataclass
class StepResult:
    cycles: int                 # edge at which done rose
    output: np.ndarray          # m x n accumulator values written (or held, if no writeback)
    write_edges: list[int]      # edge of each output-buffer row write, in row order


class PEArrayStepper:
    """Advances the array one clock edge at a time, register by register.

    Nothing here uses :func:`tile_cycles`: the controller only watches valid/last bits travelling
    through the skew registers and PEs, so the timing emerges from the data movement.
    """

    def __init__(self, geom: ArrayGeometry, pe_type: PEType, acc_bits: int = 32, weight_bits: int = 8):
        self.g, self.pe_type, self.acc_bits, self.weight_bits = geom, pe_type, acc_bits, weight_bits
        self.acc = np.zeros((geom.rows, geom.cols), dtype=np.int64)

    def run(self, dataflow: Dataflow, a: np.ndarray, w: np.ndarray, clear: bool = True,
            writeback: bool = True, max_cycles: int = 1_000_000) -> StepResult:
        a = np.asarray(a, dtype=np.int64)
        w = np.asarray(w, dtype=np.int64)
        m, k = a.shape
        k2, n = w.shape
        if k != k2:
            raise ValueError(f"A is {m}x{k} but W is {k2}x{n}")
        check_tile(self.g, dataflow, m, n, k)
        if dataflow == "os":
            return self._run_os(a, w, clear, writeback, max_cycles)
        return self._run_ws(a, w, max_cycles)

    # -- output stationary ------------------------------------------------------------------
    def _run_os(self, a, w, clear, writeback, max_cycles) -> StepResult:
        R, C, P = self.g.rows, self.g.cols, self.g.pipeline
        m, k = a.shape
        n = w.shape[1]
        if clear:
            self.acc[:] = 0                       # edge 0
        # Registers (value, valid, last). Skew chains: row i has i registers, column j has j.
        buf_a = buf_w = None                     # buffer output registers: (vector, last) or None
        skew_a = [[None] * i for i in range(R)]
        skew_w = [[None] * j for j in range(C)]
        pe_a = np.zeros((R, C), np.int64); pe_w = np.zeros((R, C), np.int64)
        pe_v = np.zeros((R, C), bool); pe_last = np.zeros((R, C), bool)
        pipe = [(np.zeros((R, C), np.int64), np.zeros((R, C), bool), np.zeros((R, C), bool))
                for _ in range(P - 1)]           # product registers between latch and accumulate
        finished = np.zeros((R, C), bool)
        state, addr, row, writes = "feed", 0, 0, []
        edge = 0
        while edge < max_cycles:
            edge += 1
            # ---- compute next state from current registers (all updates at this edge) ----
            # accumulate stage: operands that left the last pipeline stage
            if P == 1:
                src_v, src_last, term = pe_v, pe_last, pe_term(self.pe_type, pe_a, pe_w, self.weight_bits)
            else:
                term, src_v, src_last = pipe[-1]
            new_acc = np.where(src_v, wrap(self.acc + term, self.acc_bits), self.acc)
            new_finished = finished | (src_v & src_last)
            new_pipe = []
            if P > 1:
                new_pipe = [(pe_term(self.pe_type, pe_a, pe_w, self.weight_bits), pe_v.copy(), pe_last.copy())]
                new_pipe += pipe[:-1]
            # PE operand latches: from the left/top neighbour, or from the skew chain end
            in_a = np.zeros((R, C), np.int64); in_av = np.zeros((R, C), bool); in_al = np.zeros((R, C), bool)
            in_w = np.zeros((R, C), np.int64)
            for i in range(R):
                src = skew_a[i][-1] if i else buf_a
                if src is not None:
                    in_a[i, 0], in_av[i, 0], in_al[i, 0] = src[0][i], True, src[1]
            for j in range(C):
                src = skew_w[j][-1] if j else buf_w
                if src is not None:
                    in_w[0, j] = src[0][j]
            in_a[:, 1:] = pe_a[:, :-1]; in_av[:, 1:] = pe_v[:, :-1]; in_al[:, 1:] = pe_last[:, :-1]
            in_w[1:, :] = pe_w[:-1, :]
            # skew chains shift by one
            new_skew_a = [([buf_a] + s[:-1]) if s else s for s in skew_a]
            new_skew_w = [([buf_w] + s[:-1]) if s else s for s in skew_w]
            # buffer reads driven by the controller (address presented during the previous cycle)
            new_buf_a = new_buf_w = None
            if state == "feed":
                col = np.zeros(R, np.int64); col[:m] = a[:, addr]
                wrow = np.zeros(C, np.int64); wrow[:n] = w[addr, :]
                last = addr == k - 1
                new_buf_a, new_buf_w = (col, last), (wrow, last)
                addr += 1
                if last:
                    state = "wait"
            # controller: watches the corner PE's finished flag (registered, so seen one edge late)
            done = False
            if state == "wait" and finished[m - 1, n - 1]:
                state = "write" if writeback else "done"
            if state == "write":
                writes.append(edge)
                row += 1
                if row == m:
                    state = "done"
            if state == "done":
                done = True
            # ---- commit ----
            self.acc, finished, pipe = new_acc, new_finished, new_pipe
            pe_a, pe_w, pe_v, pe_last = in_a, in_w, in_av, in_al
            skew_a, skew_w, buf_a, buf_w = new_skew_a, new_skew_w, new_buf_a, new_buf_w
            if done:
                return StepResult(edge, self.acc[:m, :n].copy(), writes)
        raise RuntimeError("stepper did not finish")

    # -- weight stationary ------------------------------------------------------------------
    def _run_ws(self, a, w, max_cycles) -> StepResult:
        R, C, P = self.g.rows, self.g.cols, self.g.pipeline
        m, k = a.shape
        n = w.shape[1]
        weights = np.zeros((R, C), np.int64)
        buf_w = None                                  # (row index, vector)
        buf_a = None                                  # (vector, valid lanes, last, p)
        skew = [[None] * (i * P) for i in range(R)]   # row i delayed by i*P registers
        # per-PE: horizontal operand register, and a P-deep psum pipeline
        pe_a = np.zeros((R, C), np.int64); pe_av = np.zeros((R, C), bool)
        pe_ap = np.full((R, C), -1, np.int64)         # which input row p the operand belongs to
        psum = [np.zeros((R, C), np.int64) for _ in range(P)]
        psum_v = [np.zeros((R, C), bool) for _ in range(P)]
        psum_p = [np.full((R, C), -1, np.int64) for _ in range(P)]
        deskew = [[None] * (n - 1 - j) for j in range(C)] if n else []
        out = np.zeros((m, n), np.int64)
        state, addr, writes, edge = "load", 0, [], 0
        while edge < max_cycles:
            edge += 1
            # weight latch: row index carried with the buffer data
            new_weights = weights.copy()
            if buf_w is not None:
                r, vec = buf_w
                new_weights[r, :n] = vec
            # psum pipeline: stage 0 computes from the operand register + psum from above
            top_sum = np.zeros((R, C), np.int64)
            top_sum[1:, :] = psum[-1][:-1, :]
            term = pe_term(self.pe_type, pe_a, weights, self.weight_bits)
            s0 = np.where(pe_av, wrap(top_sum + term, self.acc_bits), 0)
            new_psum = [s0] + psum[:-1]
            new_psum_v = [pe_av.copy()] + psum_v[:-1]
            new_psum_p = [np.where(pe_av, pe_ap, -1)] + psum_p[:-1]
            # horizontal operand registers
            in_a = np.zeros((R, C), np.int64); in_av = np.zeros((R, C), bool); in_ap = np.full((R, C), -1, np.int64)
            for i in range(min(R, k)):
                src = skew[i][-1] if skew[i] else buf_a
                if src is not None:
                    in_a[i, 0], in_av[i, 0], in_ap[i, 0] = src[0][i], True, src[3]
            in_a[:, 1:] = pe_a[:, :-1]; in_av[:, 1:] = pe_av[:, :-1]; in_ap[:, 1:] = pe_ap[:, :-1]
            new_skew = [([buf_a] + s[:-1]) if s else s for s in skew]
            # bottom of the used rows (row k-1) feeds the de-skew registers
            bottom = [(psum[-1][k - 1, j], psum_v[-1][k - 1, j], psum_p[-1][k - 1, j]) for j in range(n)]
            deskew_out = [(deskew[j][-1] if deskew[j] else bottom[j]) for j in range(n)]
            new_deskew = [([bottom[j]] + deskew[j][:-1]) if deskew[j] else deskew[j] for j in range(n)]
            # output row write when the whole row is aligned (column n-1 has no de-skew delay)
            done = False
            if deskew_out and deskew_out[n - 1][1]:
                p_row = int(deskew_out[n - 1][2])
                out[p_row] = [int(v[0]) for v in deskew_out]
                writes.append(edge)
                if p_row == m - 1:
                    done = True
            # controller: read weight rows, then input rows
            new_buf_w = new_buf_a = None
            if state == "load":
                new_buf_w = (addr, w[addr, :].copy())
                addr += 1
                if addr == k:
                    state, addr = "stream", 0
            elif state == "stream":
                vec = np.zeros(R, np.int64); vec[:k] = a[addr, :]
                new_buf_a = (vec, k, addr == m - 1, addr)
                addr += 1
                if addr == m:
                    state = "drain"
            # commit
            weights, psum, psum_v, psum_p = new_weights, new_psum, new_psum_v, new_psum_p
            pe_a, pe_av, pe_ap, skew, deskew = in_a, in_av, in_ap, new_skew, new_deskew
            buf_w, buf_a = new_buf_w, new_buf_a
            if done:
                return StepResult(edge, out, writes)
        raise RuntimeError("stepper did not finish")
