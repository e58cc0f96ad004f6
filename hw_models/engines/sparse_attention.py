"""ViTCoD-style attention engines: the sparser engine (SDDMM + SpMM over a CSR mask), the denser
engine (the dense block of global-token columns on a MAC array) and the Q/K encoder/decoder engine.

Each unit has (a) an exact timing function, (b) a per-cycle reference stepper that advances its
registers one clock edge at a time (tests assert (a) == (b) on hundreds of random masks), integer
numerics checked against numpy, and a count of the bytes it moves, index/metadata included.
numpy only.

Sparse format: CSR, one matrix per head (or per row block of a head)
=====================================================================
``row_ptr``: ``rows + 1`` unsigned pointers, ``row_ptr[0] = 0``, ``row_ptr[r+1] - row_ptr[r]`` = kept
entries of row r; ``col_idx``: ``nnz`` unsigned column indices, row-major, ascending within a row.
Widths are fixed by the matrix shape, not by the data (the hardware's registers are sized for the
largest matrix it accepts): a pointer is ``ceil(bit_length(rows * cols) / 8)`` bytes, an index
``ceil(max(1, bit_length(cols - 1)) / 8)`` bytes. Metadata bytes = ``(rows + 1) * ptr_bytes + nnz *
idx_bytes`` (197 x 197: 2-byte pointers, 1-byte indices; 577 x 577: 3-byte pointers, 2-byte
indices). The SpMM also reads the ``nnz`` attention values (``values``, CSR order).

Sparser engine
==============
``L`` MAC lines (``lines``) of ``W`` multipliers (``macs_per_line``) each; head dim ``d``; a dot
product or a row-slice update takes ``C = ceil(d / W)`` beats. The nonzeros are processed as one flat
stream in CSR order, in **waves** of ``L`` consecutive nonzeros (wave ``w`` = nonzeros ``wL ..
min(nnz, (w+1)L) - 1``, line ``l`` takes nonzero ``wL + l``); ``n_waves = ceil(nnz / L)``. Waves may
span rows, so short rows do not leave lines idle. (This is the sparse-engine parallelism of ViTCoD's
simulator: ``ceil(nnz / lines) * ceil(d / macs_per_line)`` compute beats.)

Timing contract. Edges are rising clock edges; **edge 0** samples ``start`` (with the header
registers ``rows`` and ``nnz``); the unit takes ``cycles`` cycles: ``done`` is high during the cycle
after edge ``cycles`` (registered, one cycle). Buffers are synchronous SRAMs: an address presented in
the cycle after edge ``e`` has its data on the output register after edge ``e + 1``.

* Row walker: reads ``R`` pointers per cycle (``rows_per_cycle``): the address of block ``b`` (pointers
  ``row_ptr[Rb+1 .. R(b+1)]``, clipped to ``rows``) is presented after edge ``b``, its data is on the
  pointer-buffer output after edge ``b + 1``, and at edge ``b + 2`` the register ``walked`` takes
  ``row_ptr[min(R(b+1), rows)]`` and the block's row segments enter the segment FIFO (it holds every
  row of the matrix -- ``rows + 1`` pointers are on chip -- so the walker never stalls). Hence after
  edge ``t``: ``walked = row_ptr[min(R(t-1), rows)]`` (0 for t < 2).
* Wave issue: wave ``w`` is issued at edge ``s_w`` = the first edge ``t`` with ``walked`` (the value
  after edge t-1) ``>= e_end(w) = min(nnz, (w+1)L)`` and ``t >= s_{w-1} + C`` (the lines present their
  last beat in the cycle after edge ``s_{w-1} + C - 1``). With ``r_w`` = the smallest ``r`` with
  ``row_ptr[r] >= e_end(w)``:
        ``a_w = 2 + ceil(r_w / R)``,   ``s_0 = a_0``,   ``s_w = max(a_w, s_{w-1} + C)``.
  At the issue edge every line latches its nonzero's (row, column, position) and a valid bit
  (lines ``l >= nnz - wL`` of the last wave are idle).
* Beat ``b`` (0..C-1) of wave ``w``: the lines present their operand addresses in the cycle after edge
  ``s_w + b``; each line reads W elements per operand per beat (the operand buffers have one W-wide
  read port per line; lanes beyond ``d`` read as 0); the data is on the operand registers after edge
  ``s_w + b + 1`` and the W products (plus, for the SDDMM, their adder tree) are registered at edge
  ``s_w + b + 2``.
* **SDDMM** (scores ``S[e] = q_{i_e} . k_{j_e}`` for every nonzero ``e``): at edge ``s_w + b + 3`` each
  line's accumulator takes ``(0 if b == 0 else acc) + sum``; at edge ``s_w + C + 3`` the wave's ``L``
  accumulators are written as one word (positions ``wL ..``) to the score buffer. ``done`` rises with
  the last wave's write:
        ``cycles = s_{n_waves-1} + C + 3``.
* **SpMM** (``O[i, :] += sum_e A[e] V[j_e, :]``): after edge ``s_w + b + 2`` line ``l`` holds the W
  products ``A[e] * V[j_e, bW .. bW+W-1]``; a segmented reduction tree over the lines (lines of the
  same row, which are contiguous, are summed) has ``T = ceil(log2 L)`` register stages, so the
  per-row-segment sums are registered at edge ``s_w + b + 2 + T``; at edge ``s_w + b + 3 + T`` the merge
  stage adds the carry register to the wave's first segment if that row began in an earlier wave,
  stores the last segment into the carry register (``d`` wide, slice ``b``) if its row continues into
  the next wave, and writes every other segment through the output buffer's accumulate port
  (``O[row, slice b] += sum``; up to ``min(L, rows in the wave)`` row slices per edge). ``done``
  rises with the last wave's last write:
        ``cycles = s_{n_waves-1} + C + 2 + T``.
* ``nnz == 0``: ``done`` rises at edge 1 (``cycles = 1``); nothing is written.

Numerics: two's-complement integers; accumulators (and the tree, carry and output accumulate port)
are ``acc_bits`` wide and wrap. Operands are the integers given (8-bit Q/K/V, unsigned 8-bit
probabilities in the models).

Traffic per run (:func:`sddmm_traffic`, :func:`spmm_traffic`): metadata (pointers + indices), the
values, operand reads from the on-chip buffers into the lines (``nnz * d`` elements per operand: no
reuse inside the lines), unique operand bytes (each row of Q/K/V once: what a buffer must be filled
with) and output bytes.

Denser engine
=============
The global-token block of a polarized head (all ``N`` rows x the first ``G`` columns) is a dense GEMM
on a MAC array (:mod:`hw_models.engines.pe_array`, output-stationary): ``S_G = Q . K_G^T``
(m = N, k = d, n = G) and ``O_G = A_G . V_G`` (m = N, k = G, n = d). Tiles are ``min(rows, m)`` x
``min(cols, n)`` output blocks with the full reduction, run back to back; cycles = the sum of
:func:`~hw_models.engines.pe_array.tile_cycles` over the tiles (the PE-array stepper is the
reference). Masked-out entries inside the block are computed and discarded (the softmax masks
them; the AV block reads them as zero).

Encoder / decoder engine
========================
ViTCoD's Q/K auto-encoder across heads is a small dense GEMM per operand (Q and K): encoder
``(N d) x H -> (N d) x H'``, decoder ``(N d) x H' -> (N d) x H``; on a MAC array like the denser
engine (:func:`autoencoder_cycles`). It trades data movement for compute: Q and K travel compressed
(``H'/H`` of the bytes, :func:`qk_transfer_bytes`) and are decoded on chip. Biases are folded into an
element-wise add on the vector unit.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from hw_models.engines.pe_array import ArrayGeometry, PEArrayStepper, tile_cycles, wrap

__all__ = [
    "CSR", "SparseEngineConfig", "wave_issue_edges", "sddmm_cycles", "spmm_cycles",
    "reference_sddmm", "reference_spmm", "SparseStepResult", "SDDMMStepper", "SpMMStepper",
    "SparseTraffic", "sddmm_traffic", "spmm_traffic",
    "dense_gemm_tiles", "dense_gemm_cycles", "dense_gemm_stepper", "dense_block_cycles",
    "autoencoder_shapes", "autoencoder_cycles", "qk_transfer_bytes",
    "HeadTiming", "head_timing", "partition_heads", "polarize_mask", "LayerTiming", "attention_layer_timing",
    "PooledHeadTiming", "pooled_head_timing", "MaskedMatmulTiming", "masked_matmul_timing",
]


# ----------------------------------------------------------------------------------------------
# CSR


@dataclass(frozen=True)
class CSR:
    """A boolean matrix in CSR form (see the module docstring for the byte widths)."""

    rows: int
    cols: int
    row_ptr: np.ndarray      # int64, rows + 1
    col_idx: np.ndarray      # int64, nnz

    @classmethod
    def from_dense(cls, mask: np.ndarray) -> "CSR":
        m = np.asarray(mask, dtype=bool)
        if m.ndim != 2:
            raise ValueError(f"CSR.from_dense needs a 2-D mask, got shape {m.shape}")
        rows, cols = m.shape
        if rows < 1:
            raise ValueError("CSR needs at least one row")
        counts = m.sum(axis=1)
        row_ptr = np.zeros(rows + 1, dtype=np.int64)
        np.cumsum(counts, out=row_ptr[1:])
        col_idx = np.nonzero(m)[1].astype(np.int64)        # row-major, ascending within a row
        return cls(rows, cols, row_ptr, col_idx)

    @property
    def nnz(self) -> int:
        return int(self.row_ptr[-1])

    def to_dense(self) -> np.ndarray:
        m = np.zeros((self.rows, self.cols), dtype=bool)
        m[self.row_ids(), self.col_idx] = True
        return m

    def row_ids(self) -> np.ndarray:
        """Row of every nonzero (CSR order)."""
        return np.repeat(np.arange(self.rows, dtype=np.int64), np.diff(self.row_ptr))

    @property
    def ptr_bytes(self) -> int:
        return max(1, math.ceil((self.rows * self.cols).bit_length() / 8))

    @property
    def idx_bytes(self) -> int:
        return max(1, math.ceil(max(1, (self.cols - 1).bit_length()) / 8))

    @property
    def row_ptr_bytes(self) -> int:
        return (self.rows + 1) * self.ptr_bytes

    @property
    def col_idx_bytes(self) -> int:
        return self.nnz * self.idx_bytes

    @property
    def metadata_bytes(self) -> int:
        """Index/metadata bytes of the format: pointers + column indices."""
        return self.row_ptr_bytes + self.col_idx_bytes


def _as_csr(mask_or_csr: "CSR | np.ndarray") -> CSR:
    return mask_or_csr if isinstance(mask_or_csr, CSR) else CSR.from_dense(mask_or_csr)


# ----------------------------------------------------------------------------------------------
# sparser engine: configuration and exact timing


@dataclass(frozen=True)
class SparseEngineConfig:
    lines: int = 32               # L
    macs_per_line: int = 8        # W
    rows_per_cycle: int = 4       # R, row pointers the walker reads per cycle
    acc_bits: int = 32

    def __post_init__(self) -> None:
        for key in ("lines", "macs_per_line", "rows_per_cycle"):
            if getattr(self, key) < 1:
                raise ValueError(f"SparseEngineConfig.{key} must be >= 1, got {getattr(self, key)}")
        if not 2 <= self.acc_bits <= 48:
            raise ValueError(f"acc_bits must be in 2..48, got {self.acc_bits}")

    @property
    def macs(self) -> int:
        return self.lines * self.macs_per_line

    def beats(self, head_dim: int) -> int:
        """C = ceil(d / W): beats per nonzero."""
        if head_dim < 1:
            raise ValueError(f"head_dim must be >= 1, got {head_dim}")
        return -(-head_dim // self.macs_per_line)

    @property
    def tree_stages(self) -> int:
        """T = ceil(log2 L): register stages of the SpMM's segmented reduction tree."""
        return (self.lines - 1).bit_length()


def wave_issue_edges(cfg: SparseEngineConfig, csr: CSR, head_dim: int) -> np.ndarray:
    """Edge s_w at which every wave is issued (see the contract); empty for nnz == 0."""
    nnz, L, C, R = csr.nnz, cfg.lines, cfg.beats(head_dim), cfg.rows_per_cycle
    n_waves = -(-nnz // L)
    if n_waves == 0:
        return np.zeros(0, dtype=np.int64)
    w = np.arange(n_waves, dtype=np.int64)
    e_end = np.minimum((w + 1) * L, nnz)
    r_w = np.searchsorted(csr.row_ptr, e_end, side="left")          # first r with row_ptr[r] >= e_end
    ready = 2 + -(-r_w // R)
    # s_w = max(a_w, s_{w-1} + C)  <=>  s_w = w*C + max_{u <= w} (a_u - u*C)
    return w * C + np.maximum.accumulate(ready - w * C)


def sddmm_cycles(cfg: SparseEngineConfig, mask: CSR | np.ndarray, head_dim: int) -> int:
    """Start-to-done cycles of one SDDMM run over ``mask`` (CSR or a 2-D boolean array)."""
    csr = _as_csr(mask)
    s = wave_issue_edges(cfg, csr, head_dim)
    return 1 if len(s) == 0 else int(s[-1]) + cfg.beats(head_dim) + 3


def spmm_cycles(cfg: SparseEngineConfig, mask: CSR | np.ndarray, head_dim: int) -> int:
    """Start-to-done cycles of one SpMM run over ``mask``."""
    csr = _as_csr(mask)
    s = wave_issue_edges(cfg, csr, head_dim)
    return 1 if len(s) == 0 else int(s[-1]) + cfg.beats(head_dim) + 2 + cfg.tree_stages


# ----------------------------------------------------------------------------------------------
# numpy references


def reference_sddmm(q: np.ndarray, k: np.ndarray, mask: CSR | np.ndarray, acc_bits: int) -> np.ndarray:
    """Scores of the nonzeros in CSR order: wrap(q[i] . k[j])."""
    csr = _as_csr(mask)
    q = np.asarray(q, dtype=np.int64)
    k = np.asarray(k, dtype=np.int64)
    return wrap(np.einsum("ed,ed->e", q[csr.row_ids()], k[csr.col_idx]), acc_bits)


def reference_spmm(values: np.ndarray, mask: CSR | np.ndarray, v: np.ndarray, acc_bits: int,
                   out_init: np.ndarray | None = None) -> np.ndarray:
    """O = wrap(out_init + A_sparse @ V) with A given by its CSR values."""
    csr = _as_csr(mask)
    v = np.asarray(v, dtype=np.int64)
    out = np.zeros((csr.rows, v.shape[1]), dtype=np.int64) if out_init is None else np.array(out_init, dtype=np.int64)
    np.add.at(out, csr.row_ids(), np.asarray(values, dtype=np.int64)[:, None] * v[csr.col_idx])
    return wrap(out, acc_bits)


# ----------------------------------------------------------------------------------------------
# per-cycle reference steppers


@dataclass
class SparseStepResult:
    cycles: int                    # edge at which done rose
    output: np.ndarray             # SDDMM: (nnz,) scores in CSR order; SpMM: (rows, d)
    write_edges: list[int]         # edge of every output-buffer write (SpMM: one per row slice)
    issue_edges: list[int] = field(default_factory=list)


class _FrontEnd:
    """Row walker + segment FIFO + wave issuer + line beat counter, shared by SDDMM and SpMM.

    ``edge(t)`` advances to clock edge ``t`` and returns what the lines present in the cycle after
    it: ``((valid, row, col, pos, first_cont, last_cont, final), beat)`` -- per-line valid bits, the
    nonzeros' rows, columns and CSR positions, whether the wave's first row began in the previous
    wave, whether its last row continues into the next one, whether it is the last wave -- or None
    when the lines are idle. Column indices come from the index buffer with the wave (one L-wide word).
    """

    def __init__(self, cfg: SparseEngineConfig, csr: CSR, beats: int) -> None:
        self.cfg, self.csr, self.C = cfg, csr, beats
        self.nnz = csr.nnz
        self.n_waves = -(-self.nnz // cfg.lines)
        # walker registers
        self.block = 0                     # next pointer block to address (presented after edge 0)
        self.ptr_reg: np.ndarray | None = None     # pointers on the buffer output register
        self.ptr_first = 0                 # row index of ptr_reg[0] - 1 (pointer before the block)
        self.walked = 0
        self.prev_ptr = 0                  # last pointer value pushed
        self.fifo: list[tuple[int, int, int]] = []   # (row, start, end) segments, end > start
        # issuer / line controller
        self.wave = 0
        self.active = False
        self.beat = 0
        self.lines: tuple | None = None    # latched wave: (valid, row, col, pos, first_cont, last_cont, final)
        self.last_row = -1                 # row of the previous wave's last nonzero
        self.issue_edges: list[int] = []

    def _walker(self) -> tuple:
        """Next walker state (computed from the current registers)."""
        R, rows = self.cfg.rows_per_cycle, self.csr.rows
        new_walked, new_prev, pushes = self.walked, self.prev_ptr, []
        if self.ptr_reg is not None:
            start_row = self.ptr_first
            for n, p in enumerate(self.ptr_reg):
                r = start_row + n
                if p > new_prev:
                    pushes.append((r, new_prev, int(p)))
                new_prev = int(p)
            new_walked = new_prev
        new_ptr, new_first, new_block = None, self.ptr_first, self.block
        first = R * self.block + 1
        if first <= rows:                              # address of this block was presented
            last = min(R * (self.block + 1), rows)
            new_ptr = self.csr.row_ptr[first:last + 1].copy()
            new_first, new_block = first - 1, self.block + 1
        return new_ptr, new_first, new_block, new_walked, new_prev, pushes

    def _build_wave(self) -> tuple:
        """Pop the segments of the next wave from the FIFO (they are all there: walked >= e_end)."""
        L = self.cfg.lines
        e0, e1 = self.wave * L, min((self.wave + 1) * L, self.nnz)
        valid = np.zeros(L, bool)
        row = np.zeros(L, np.int64)
        col = np.zeros(L, np.int64)
        pos = np.zeros(L, np.int64)
        e, last_cont = e0, False
        while e < e1:
            r, s, t = self.fifo[0]
            take = min(t, e1) - e
            sl = slice(e - e0, e - e0 + take)
            valid[sl], row[sl], pos[sl] = True, r, np.arange(e, e + take)
            col[sl] = self.csr.col_idx[e:e + take]
            e += take
            if e == t:
                self.fifo.pop(0)
            else:
                self.fifo[0] = (r, e, t)            # the row continues into the next wave
                last_cont = True
        first_cont = bool(row[0] == self.last_row)   # same row as the previous wave's last line
        self.last_row = int(row[e1 - e0 - 1])
        final = self.wave == self.n_waves - 1
        return valid, row, col, pos, first_cont, last_cont, final

    def edge(self, t: int):
        # issue decision uses the registers as they were after edge t-1
        can_issue = self.wave < self.n_waves and self.walked >= min((self.wave + 1) * self.cfg.lines, self.nnz)
        lines_free = (not self.active) or self.beat == self.C - 1
        walker_next = self._walker()
        new_active, new_beat, new_lines = self.active, self.beat, self.lines
        if lines_free:
            if can_issue:
                new_lines = self._build_wave()
                new_active, new_beat = True, 0
                self.wave += 1
                self.issue_edges.append(t)
            else:
                new_active = False
        else:
            new_beat = self.beat + 1
        # commit walker (its FIFO pushes land at this edge, after the issuer popped older segments)
        (self.ptr_reg, self.ptr_first, self.block, self.walked, self.prev_ptr, pushes) = walker_next
        self.fifo.extend(pushes)
        self.active, self.beat, self.lines = new_active, new_beat, new_lines
        if self.active:
            return self.lines, self.beat
        return None


class SDDMMStepper:
    """Register-level model of the SDDMM unit (timing emerges from valid bits; see the contract)."""

    def __init__(self, cfg: SparseEngineConfig) -> None:
        self.cfg = cfg

    def run(self, q: np.ndarray, k: np.ndarray, mask: CSR | np.ndarray, max_cycles: int = 10_000_000) -> SparseStepResult:
        cfg, csr = self.cfg, _as_csr(mask)
        q = np.asarray(q, dtype=np.int64)
        k = np.asarray(k, dtype=np.int64)
        d = q.shape[1]
        if k.shape[1] != d or q.shape[0] != csr.rows or k.shape[0] != csr.cols:
            raise ValueError(f"Q {q.shape} / K {k.shape} do not fit a {csr.rows}x{csr.cols} mask")
        L, W = cfg.lines, cfg.macs_per_line
        C = cfg.beats(d)
        pad = C * W - d
        qp = np.pad(q, ((0, 0), (0, pad)))
        kp = np.pad(k, ((0, 0), (0, pad)))
        out = np.zeros(csr.nnz, dtype=np.int64)
        if csr.nnz == 0:
            return SparseStepResult(1, out, [], [])
        fe = _FrontEnd(cfg, csr, C)
        op = None          # operand registers: (valid, qslice, kslice, first, last, pos)
        prod = None        # product registers: (valid, sum, first, last, pos)
        acc = np.zeros(L, np.int64)
        pending = None     # (valid, pos, final) of a wave whose accumulators are complete
        writes: list[int] = []
        fe_out = None
        t = 0
        while t < max_cycles:
            t += 1
            # write stage: the accumulators completed at the previous edge
            done = False
            if pending is not None:
                valid, pos, final = pending
                out[pos[valid]] = acc[valid]
                writes.append(t)
                done = final
            # accumulate stage
            new_pending = None
            new_acc = acc
            if prod is not None:
                valid, s, first, last, pos, final = prod
                new_acc = np.where(valid, wrap(np.where(first, 0, acc) + s, cfg.acc_bits), acc)
                if last:
                    new_pending = (valid, pos, final)
            # product stage
            new_prod = None
            if op is not None:
                valid, qs, ks, first, last, pos, final = op
                new_prod = (valid, (qs * ks).sum(axis=1), first, last, pos, final)
            # operand buffers: addresses presented after the previous edge
            new_op = None
            if fe_out is not None:
                (valid, row, col, pos, _fc, _lc, final), beat = fe_out
                sl = slice(beat * W, (beat + 1) * W)
                new_op = (valid, qp[row, sl], kp[col, sl], beat == 0, beat == C - 1, pos, final)
            fe_out = fe.edge(t)
            op, prod, acc, pending = new_op, new_prod, new_acc, new_pending
            if done:
                return SparseStepResult(t, out, writes, fe.issue_edges)
        raise RuntimeError("SDDMM stepper did not finish")


class SpMMStepper:
    """Register-level model of the SpMM unit (see the contract)."""

    def __init__(self, cfg: SparseEngineConfig) -> None:
        self.cfg = cfg

    def run(self, values: np.ndarray, mask: CSR | np.ndarray, v: np.ndarray,
            out_init: np.ndarray | None = None, max_cycles: int = 10_000_000) -> SparseStepResult:
        cfg, csr = self.cfg, _as_csr(mask)
        v = np.asarray(v, dtype=np.int64)
        values = np.asarray(values, dtype=np.int64)
        d = v.shape[1]
        if v.shape[0] != csr.cols or values.shape != (csr.nnz,):
            raise ValueError(f"V {v.shape} / values {values.shape} do not fit a {csr.rows}x{csr.cols} "
                             f"mask with {csr.nnz} nonzeros")
        W, T = cfg.macs_per_line, cfg.tree_stages
        C = cfg.beats(d)
        vp = np.pad(v, ((0, 0), (0, C * W - d)))
        out = np.zeros((csr.rows, C * W), np.int64)
        if out_init is not None:                 # the output buffer holds acc_bits-wide words
            out[:, :d] = wrap(np.asarray(out_init, dtype=np.int64), cfg.acc_bits)
        if csr.nnz == 0:
            return SparseStepResult(1, wrap(out[:, :d], cfg.acc_bits), [], [])
        fe = _FrontEnd(cfg, csr, C)
        op = None
        prod = None
        tree = [None] * T                 # T register stages carrying the wave's segment sums
        carry = np.zeros((C, W), np.int64)
        carry_row = -1
        writes: list[int] = []
        fe_out = None
        t = 0
        while t < max_cycles:
            t += 1
            done = False
            # segmented sums of the product registers (combinational: lines of one row are contiguous)
            seg_cur = None
            if prod is not None:
                valid, products, row, beat, first_cont, last_cont, final = prod
                segs: list[list] = []
                for l in np.nonzero(valid)[0]:
                    if segs and segs[-1][0] == row[l]:
                        segs[-1][1] = segs[-1][1] + products[l]
                    else:
                        segs.append([int(row[l]), products[l].copy()])
                seg_cur = ([(r, wrap(vec, cfg.acc_bits)) for r, vec in segs], beat, first_cont, last_cont,
                           final, beat == C - 1)
            # merge / write stage: the segment sums leaving the T tree registers (T = 0: seg_cur)
            head = tree[-1] if T else seg_cur
            new_carry, new_carry_row = carry, carry_row
            if head is not None:
                segs, beat, first_cont, last_cont, final, last_beat = head
                new_carry = carry.copy()
                for n, (row, vec) in enumerate(segs):
                    if n == 0 and first_cont:
                        vec = wrap(vec + carry[beat], cfg.acc_bits)
                    if n == len(segs) - 1 and last_cont:
                        new_carry[beat] = vec
                        new_carry_row = row
                        continue
                    sl = slice(beat * W, (beat + 1) * W)
                    out[row, sl] = wrap(out[row, sl] + vec, cfg.acc_bits)
                    writes.append(t)
                done = final and last_beat
            new_tree = ([seg_cur] + tree[:-1]) if T else []
            # product stage
            new_prod = None
            if op is not None:
                valid, a, vs, row, beat, first_cont, last_cont, final = op
                new_prod = (valid, a[:, None] * vs, row, beat, first_cont, last_cont, final)
            # operand buffers (addresses presented after the previous edge)
            new_op = None
            if fe_out is not None:
                (valid, row, col, pos, first_cont, last_cont, final), beat = fe_out
                sl = slice(beat * W, (beat + 1) * W)
                a = np.where(valid, values[np.minimum(pos, csr.nnz - 1)], 0)
                new_op = (valid, a, vp[col, sl], row, beat, first_cont, last_cont, final)
            fe_out = fe.edge(t)
            op, prod, tree, carry, carry_row = new_op, new_prod, new_tree, new_carry, new_carry_row
            if done:
                return SparseStepResult(t, out[:, :d].copy(), writes, fe.issue_edges)
        raise RuntimeError("SpMM stepper did not finish")


# ----------------------------------------------------------------------------------------------
# traffic


@dataclass(frozen=True)
class SparseTraffic:
    """Bytes one SDDMM or SpMM run moves. ``metadata_bytes`` is the index traffic of the format."""

    row_ptr_bytes: int
    col_idx_bytes: int
    values_bytes: int              # SpMM: the attention values read; SDDMM: 0
    operand_read_bytes: int        # on-chip operand buffers -> lines
    unique_operand_bytes: int      # each Q/K (or V) row once: what the buffers are filled with
    output_bytes: int              # scores (SDDMM, CSR order) or output rows (SpMM)
    macs: int                      # useful multiply-accumulates (nnz * d)
    hw_macs: int                   # multiplier slots occupied (nnz * C * W, incl. lanes beyond d)

    @property
    def metadata_bytes(self) -> int:
        return self.row_ptr_bytes + self.col_idx_bytes


def sddmm_traffic(cfg: SparseEngineConfig, mask: CSR | np.ndarray, head_dim: int, act_bits: int = 8,
                  out_bits: int = 8) -> SparseTraffic:
    csr = _as_csr(mask)
    nnz, ab = csr.nnz, act_bits / 8
    used_rows = int(np.count_nonzero(np.diff(csr.row_ptr)))
    used_cols = int(np.unique(csr.col_idx).size)
    return SparseTraffic(
        row_ptr_bytes=csr.row_ptr_bytes, col_idx_bytes=csr.col_idx_bytes, values_bytes=0,
        operand_read_bytes=math.ceil(2 * nnz * head_dim * ab),
        unique_operand_bytes=math.ceil((used_rows + used_cols) * head_dim * ab),
        output_bytes=math.ceil(nnz * out_bits / 8), macs=nnz * head_dim,
        hw_macs=nnz * cfg.beats(head_dim) * cfg.macs_per_line)


def spmm_traffic(cfg: SparseEngineConfig, mask: CSR | np.ndarray, head_dim: int, act_bits: int = 8,
                 value_bits: int = 8, out_bits: int = 8) -> SparseTraffic:
    csr = _as_csr(mask)
    nnz = csr.nnz
    used_rows = int(np.count_nonzero(np.diff(csr.row_ptr)))
    used_cols = int(np.unique(csr.col_idx).size)
    return SparseTraffic(
        row_ptr_bytes=csr.row_ptr_bytes, col_idx_bytes=csr.col_idx_bytes,
        values_bytes=math.ceil(nnz * value_bits / 8),
        operand_read_bytes=math.ceil(nnz * head_dim * act_bits / 8),
        unique_operand_bytes=math.ceil(used_cols * head_dim * act_bits / 8),
        output_bytes=math.ceil(used_rows * head_dim * out_bits / 8), macs=nnz * head_dim,
        hw_macs=nnz * cfg.beats(head_dim) * cfg.macs_per_line)


# ----------------------------------------------------------------------------------------------
# denser engine and encoder/decoder engine: dense GEMMs on a MAC array (pe_array, OS)


def dense_gemm_tiles(geom: ArrayGeometry, m: int, k: int, n: int) -> list[tuple[int, int, int, int]]:
    """OS tiles ``(tile_m, tile_n, k, count)`` covering an m x n output with the full reduction k."""
    if min(m, k, n) < 0:
        raise ValueError(f"GEMM dims must be >= 0, got m={m} k={k} n={n}")
    if min(m, k, n) == 0:
        return []
    tiles = []
    fm, rm = divmod(m, geom.rows)
    fn, rn = divmod(n, geom.cols)
    for tm, cm in ((geom.rows, fm), (rm, 1)):
        for tn, cn in ((geom.cols, fn), (rn, 1)):
            if tm and tn and cm and cn:
                tiles.append((tm, tn, k, cm * cn))
    return tiles


def dense_gemm_cycles(geom: ArrayGeometry, m: int, k: int, n: int) -> int:
    """Cycles of an m x k x n GEMM as back-to-back OS tiles (0 when any dim is 0)."""
    return sum(c * tile_cycles(geom, "os", tm, tn, tk) for tm, tn, tk, c in dense_gemm_tiles(geom, m, k, n))


def dense_gemm_stepper(geom: ArrayGeometry, a: np.ndarray, w: np.ndarray, acc_bits: int = 32) -> tuple[int, np.ndarray]:
    """Reference: every OS tile on :class:`PEArrayStepper`, in row-major tile order -> (cycles, C)."""
    a = np.asarray(a, dtype=np.int64)
    w = np.asarray(w, dtype=np.int64)
    m, k = a.shape
    n = w.shape[1]
    out = np.zeros((m, n), np.int64)
    if min(m, k, n) == 0:
        return 0, out
    stepper = PEArrayStepper(geom, "mac", acc_bits=acc_bits)
    cycles = 0
    for i in range(0, m, geom.rows):
        for j in range(0, n, geom.cols):
            res = stepper.run("os", a[i:i + geom.rows], w[:, j:j + geom.cols])
            cycles += res.cycles
            out[i:i + geom.rows, j:j + geom.cols] = res.output
    return cycles, out


def dense_block_cycles(geom: ArrayGeometry, tokens: int, head_dim: int, num_global: int) -> tuple[int, int]:
    """Denser engine for one head: (QK^T cycles, AV cycles) of the N x G global-token block."""
    return (dense_gemm_cycles(geom, tokens, head_dim, num_global),
            dense_gemm_cycles(geom, tokens, num_global, head_dim))


def autoencoder_shapes(tokens: int, head_dim: int, heads: int, compressed: int) -> dict[str, tuple[int, int, int]]:
    """(m, k, n) of the encoder and decoder GEMMs for ONE operand (Q or K) of a layer."""
    if not 1 <= compressed <= heads:
        raise ValueError(f"compressed heads must be in 1..{heads}, got {compressed}")
    m = tokens * head_dim
    return {"encoder": (m, heads, compressed), "decoder": (m, compressed, heads)}


def autoencoder_cycles(geom: ArrayGeometry, tokens: int, head_dim: int, heads: int, compressed: int,
                       which: str = "decoder", operands: int = 2) -> int:
    """Cycles of the encoder or decoder for ``operands`` operands (2: Q and K) of one layer."""
    shapes = autoencoder_shapes(tokens, head_dim, heads, compressed)
    if which not in shapes:
        raise ValueError(f"which must be 'encoder' or 'decoder', got {which!r}")
    return operands * dense_gemm_cycles(geom, *shapes[which])


def qk_transfer_bytes(tokens: int, head_dim: int, heads: int, compressed: int, act_bits: int = 8) -> tuple[int, int]:
    """(uncompressed, compressed) bytes of Q and K of one layer: what the auto-encoder saves moving."""
    per_head = tokens * head_dim * act_bits / 8
    return math.ceil(2 * heads * per_head), math.ceil(2 * compressed * per_head)


# ----------------------------------------------------------------------------------------------
# one head on both engines; heads over several engines


@dataclass(frozen=True)
class PhaseTiming:
    """Cycles of the QK^T and A.V phases on the dense and sparse sides, which run concurrently."""

    dense_qk: int
    sparse_qk: int
    dense_av: int
    sparse_av: int

    @property
    def qk(self) -> int:
        return max(self.dense_qk, self.sparse_qk)

    @property
    def av(self) -> int:
        return max(self.dense_av, self.sparse_av)

    @property
    def total(self) -> int:
        return self.qk + self.av


@dataclass(frozen=True)
class HeadTiming(PhaseTiming):
    """Compute cycles of one polarized head on the fixed denser and sparser engines."""

    num_global: int = 0
    sparse_nnz: int = 0


def head_timing(polarized_mask: np.ndarray, num_global: int, head_dim: int, sparse: SparseEngineConfig,
                dense: ArrayGeometry) -> HeadTiming:
    """Timing of one head whose (N, N) mask is already polarized (global columns first)."""
    m = np.asarray(polarized_mask, dtype=bool)
    n = m.shape[0]
    if m.shape != (n, n) or not 0 <= num_global <= n:
        raise ValueError(f"need an (N, N) mask and 0 <= num_global <= N, got {m.shape}, {num_global}")
    csr = CSR.from_dense(m[:, num_global:]) if num_global < n else None
    dqk, dav = dense_block_cycles(dense, n, head_dim, num_global)
    sqk = sddmm_cycles(sparse, csr, head_dim) if csr is not None and csr.nnz else 0
    sav = spmm_cycles(sparse, csr, head_dim) if csr is not None and csr.nnz else 0
    return HeadTiming(dense_qk=dqk, sparse_qk=sqk, dense_av=dav, sparse_av=sav, num_global=num_global,
                      sparse_nnz=csr.nnz if csr is not None else 0)


def partition_heads(head_cycles: Sequence[float], engines: int) -> tuple[list[int], list[float], float]:
    """Assign heads to ``engines`` identical engines, longest first onto the least-loaded one.

    Returns (engine of every head, load of every engine, latency = the slowest engine's load).
    Deterministic: ties go to the lower engine index.
    """
    if engines < 1:
        raise ValueError(f"engines must be >= 1, got {engines}")
    order = sorted(range(len(head_cycles)), key=lambda h: (-head_cycles[h], h))
    heap = [(0.0, e) for e in range(engines)]
    assign = [0] * len(head_cycles)
    load = [0.0] * engines
    for h in order:
        cur, e = heapq.heappop(heap)
        assign[h] = e
        load[e] = cur + head_cycles[h]
        heapq.heappush(heap, (load[e], e))
    return assign, load, max(load, default=0.0)


def polarize_mask(mask: np.ndarray, threshold: float = 0.25) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """numpy twin of :func:`search_spaces.vitcod.polarize` (the hardware side cannot import torch).

    ``mask`` (H, N, N) or (N, N) -> (perm (H, N), permuted masks (H, N, N), num_global (H,)): columns
    kept by more than ``threshold * N`` queries move to the front (stable), rows and columns alike.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or m.shape[1] != m.shape[2]:
        raise ValueError(f"polarize_mask needs (H, N, N) or (N, N), got {m.shape}")
    h, n, _ = m.shape
    is_global = m.sum(axis=1) > threshold * n
    perm = np.argsort(np.where(is_global, 0, n) + np.arange(n)[None], axis=1, kind="stable")
    permuted = np.stack([m[i][perm[i]][:, perm[i]] for i in range(h)])
    return perm, permuted, is_global.sum(axis=1)


@dataclass(frozen=True)
class LayerTiming:
    """Compute cycles of one attention layer (all heads) on ViTCoD-style engines.

    Each phase (QK^T, then A.V after the softmax) runs the heads' dense blocks on the denser engines
    and their sparse parts on the sparser engines, each kind partitioned over its engines longest
    first; the two kinds work through their own queues concurrently, so a phase lasts as long as the
    busiest engine of either kind (latency = the slowest).
    """

    heads: tuple[HeadTiming, ...]
    qk: float
    av: float
    dense_loads_qk: tuple[float, ...]
    sparse_loads_qk: tuple[float, ...]
    dense_loads_av: tuple[float, ...]
    sparse_loads_av: tuple[float, ...]

    @property
    def total(self) -> float:
        return self.qk + self.av

    @property
    def sparse_nnz(self) -> int:
        return sum(h.sparse_nnz for h in self.heads)


def attention_layer_timing(masks: np.ndarray, head_dim: int, sparse: SparseEngineConfig, dense: ArrayGeometry,
                           sparse_engines: int = 1, dense_engines: int = 1, threshold: float = 0.25,
                           polarized: bool = False, num_global: Sequence[int] | None = None) -> LayerTiming:
    """Timing of one layer's attention from its (H, N, N) masks (polarized here unless told so)."""
    m = np.asarray(masks, dtype=bool)
    if m.ndim == 2:
        m = m[None]
    if polarized:
        if num_global is None or len(num_global) != m.shape[0]:
            raise ValueError("polarized masks need num_global for every head")
        pm, g = m, np.asarray(num_global)
    else:
        _, pm, g = polarize_mask(m, threshold)
    heads = tuple(head_timing(pm[h], int(g[h]), head_dim, sparse, dense) for h in range(pm.shape[0]))
    loads = {}
    for key, attr in (("dqk", "dense_qk"), ("sqk", "sparse_qk"), ("dav", "dense_av"), ("sav", "sparse_av")):
        engines = dense_engines if key[0] == "d" else sparse_engines
        loads[key] = tuple(partition_heads([getattr(h, attr) for h in heads], engines)[1])
    return LayerTiming(heads, max(loads["dqk"] + loads["sqk"]), max(loads["dav"] + loads["sav"]),
                       loads["dqk"], loads["sqk"], loads["dav"], loads["sav"])


@dataclass(frozen=True)
class PooledHeadTiming(PhaseTiming):
    """One head on a reconfigurable pool of lines split between the two workloads (see below)."""

    lines_dense: int = 0
    lines_sparse: int = 0


def _split_pool(block: CSR | None, rest: CSR | None, head_dim: int, pool: SparseEngineConfig,
                phases: Sequence[str]) -> tuple[int, list[tuple[int, int]]]:
    """Dense lines ``D`` (0..L) minimising the summed phase times, and each phase's (dense, sparse)
    cycles: ``D`` lines run the all-ones global block, ``L - D`` the sparse rest, concurrently."""
    has_block = block is not None and block.nnz > 0
    has_rest = rest is not None and rest.nnz > 0
    L = pool.lines
    timing = {"sddmm": sddmm_cycles, "spmm": spmm_cycles}
    best: tuple[int, int, list[tuple[int, int]]] | None = None
    for d_lines in range(0, L + 1):
        if (has_block and d_lines == 0) or (has_rest and d_lines == L) or (not has_block and d_lines):
            continue
        per_phase = []
        for phase in phases:
            dc = sc = 0
            if has_block:
                dc = timing[phase](SparseEngineConfig(d_lines, pool.macs_per_line, pool.rows_per_cycle,
                                                      pool.acc_bits), block, head_dim)
            if has_rest:
                sc = timing[phase](SparseEngineConfig(L - d_lines, pool.macs_per_line, pool.rows_per_cycle,
                                                      pool.acc_bits), rest, head_dim)
            per_phase.append((dc, sc))
        total = sum(max(p) for p in per_phase)
        if best is None or total < best[0]:
            best = (total, d_lines, per_phase)
    if best is None:                                  # nothing to compute
        return 0, [(0, 0) for _ in phases]
    return best[1], best[2]


def pooled_head_timing(polarized_mask: np.ndarray, num_global: int, head_dim: int,
                       pool: SparseEngineConfig) -> PooledHeadTiming:
    """ViTCoD's per-head split of one pool of MAC lines (its simulator: ``dense_PE_width = PE_width x
    dense_ratio``): ``D`` lines take the global-token block, ``L - D`` the sparse remainder, both as
    two copies of the sparser engine running concurrently; the block is an all-ones ``N x G`` CSR
    (the flat wave stream runs a dense block at full line utilisation; the denser engine's operand
    reuse changes buffer traffic, not cycles). ``D`` is chosen per head, the same for QK^T and A.V,
    to minimise ``qk + av`` (ties: fewer dense lines).
    """
    m = np.asarray(polarized_mask, dtype=bool)
    n = m.shape[0]
    if m.shape != (n, n) or not 0 <= num_global <= n:
        raise ValueError(f"need an (N, N) mask and 0 <= num_global <= N, got {m.shape}, {num_global}")
    block = CSR.from_dense(np.ones((n, num_global), bool)) if num_global else None
    rest = CSR.from_dense(m[:, num_global:]) if num_global < n else None
    d_lines, ((dq, sq), (da, sa)) = _split_pool(block, rest, head_dim, pool, ("sddmm", "spmm"))
    has_rest = rest is not None and rest.nnz > 0
    return PooledHeadTiming(dense_qk=dq, sparse_qk=sq, dense_av=da, sparse_av=sa, lines_dense=d_lines,
                            lines_sparse=pool.lines - d_lines if has_rest else 0)


# ----------------------------------------------------------------------------------------------
# one masked product (all heads of an IR op) on pools of lines: what hw_models.cost charges


@dataclass(frozen=True)
class MaskedMatmulTiming:
    """Cycles and traffic of one masked product (SDDMM or SpMM) over all its heads (groups).

    Every head is polarized (:func:`polarize_mask`; column-only for non-square masks): its global
    columns form a dense ``rows x G`` block, the rest a CSR matrix; a pool of lines splits itself
    per head between the two (:func:`pooled_head_timing`'s rule, here per phase). Heads are then
    partitioned over ``engines`` identical pools, longest first; latency = the slowest pool.
    """

    head_cycles: tuple[int, ...]
    engine_loads: tuple[float, ...]
    num_global: tuple[int, ...]
    lines_dense: tuple[int, ...]
    head_computed: tuple[int, ...]   # entries computed: the dense block (masked entries too) + rest nnz
    head_metadata: tuple[int, ...]   # CSR pointers + indices of the rest, plus the column permutation
    sparse_nnz: int                  # nonzeros handled through the CSR format
    operand_read_bytes: int          # on-chip operand buffers -> lines (row operands broadcast per row segment)
    hw_macs: int                     # multiplier slots occupied: computed x C x W

    @property
    def latency(self) -> float:
        return max(self.engine_loads, default=0.0)

    @property
    def computed(self) -> int:
        return sum(self.head_computed)

    @property
    def metadata_bytes(self) -> int:
        return sum(self.head_metadata)


def _polarize_columns(mask: np.ndarray, threshold: float) -> tuple[np.ndarray, int]:
    """(mask with its global columns first, G) -- symmetric permutation for square masks."""
    rows, cols = mask.shape
    if rows == cols:
        _, pm, g = polarize_mask(mask, threshold)
        return pm[0], int(g[0])
    is_global = mask.sum(axis=0) > threshold * rows
    order = np.argsort(~is_global, kind="stable")
    return mask[:, order], int(is_global.sum())


_MASKED_CACHE: dict[tuple, tuple] = {}


def _row_segments(csr: CSR, lines: int) -> int:
    """Distinct (wave, row) pairs of the flat wave stream: the row-operand reads of a run."""
    if csr.nnz == 0 or lines < 1:
        return 0
    wave = np.arange(csr.nnz) // lines
    row = csr.row_ids()
    return 1 + int(np.count_nonzero((np.diff(wave) != 0) | (np.diff(row) != 0)))


def _masked_head(mask: np.ndarray, phase: str, head_dim: int, pool: SparseEngineConfig, threshold: float,
                 act_bits: int) -> tuple:
    """(cycles, G, dense lines, computed, rest nnz, metadata bytes, operand read bytes) of one head."""
    key = (np.packbits(mask).tobytes(), mask.shape, phase, head_dim, pool, threshold, act_bits)
    hit = _MASKED_CACHE.get(key)
    if hit is not None:
        return hit
    rows, cols = mask.shape
    pm, g = _polarize_columns(mask, threshold)
    block = CSR.from_dense(np.ones((rows, g), bool)) if g else None
    rest = CSR.from_dense(pm[:, g:]) if g < cols else None
    d_lines, [(dc, sc)] = _split_pool(block, rest, head_dim, pool, (phase,))
    rest_nnz = rest.nnz if rest is not None else 0
    computed = rows * g + rest_nnz
    perm_bytes = cols * max(1, math.ceil(max(1, (cols - 1).bit_length()) / 8)) if g else 0
    meta = (rest.metadata_bytes if rest is not None and rest_nnz else 0) + perm_bytes
    # operand reads: the row operand (q_i; the SpMM's output row) once per row segment of a wave,
    # broadcast to that row's lines; the column operand (k_j, v_j) once per nonzero
    segments = (_row_segments(block, d_lines) if g else 0) + (_row_segments(rest, pool.lines - d_lines)
                                                             if rest_nnz else 0)
    per_nz = 1 if phase == "sddmm" else 0
    reads = math.ceil((computed + per_nz * segments) * head_dim * act_bits / 8)
    out = (max(dc, sc), g, d_lines, computed, rest_nnz, meta, reads)
    if len(_MASKED_CACHE) > 100_000:
        _MASKED_CACHE.clear()
    _MASKED_CACHE[key] = out
    return out


def masked_matmul_timing(masks: np.ndarray, phase: str, head_dim: int, pool: SparseEngineConfig,
                         engines: int = 1, threshold: float = 0.25, act_bits: int = 8) -> MaskedMatmulTiming:
    """Timing of ``phase`` ('sddmm': scores for every kept (i, j); 'spmm': A.V with A masked) over
    the (heads, rows, cols) ``masks`` on ``engines`` pools of ``pool.lines`` lines each."""
    if phase not in ("sddmm", "spmm"):
        raise ValueError(f"phase must be 'sddmm' or 'spmm', got {phase!r}")
    m = np.asarray(masks, dtype=bool)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"masks must be (heads, rows, cols), got shape {m.shape}")
    heads = [_masked_head(m[h], phase, head_dim, pool, threshold, act_bits) for h in range(m.shape[0])]
    cycles = [h[0] for h in heads]
    _, loads, _ = partition_heads(cycles, engines)
    computed = sum(h[3] for h in heads)
    return MaskedMatmulTiming(
        head_cycles=tuple(cycles), engine_loads=tuple(loads), num_global=tuple(h[1] for h in heads),
        lines_dense=tuple(h[2] for h in heads), head_computed=tuple(h[3] for h in heads),
        head_metadata=tuple(h[5] for h in heads), sparse_nnz=sum(h[4] for h in heads),
        operand_read_bytes=sum(h[6] for h in heads), hw_macs=computed * pool.beats(head_dim) * pool.macs_per_line)
