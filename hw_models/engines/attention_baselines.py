"""Baseline sparse-attention accelerators for ViTCoD comparisons: a Sanger-like and a SpAtten-like
timing model at **equal MACs, frequency and bandwidth** (the caller picks the MAC count; DRAM bytes
are returned so the caller charges them at the same bandwidth). numpy only.

These are analytical models of published designs, not RTL-checked engines: every assumption is
listed here so a reader can disagree with a specific one.

Sanger-like (Lu et al., MICRO 2021)
===================================
* **Dynamic prediction**: Q and K are quantised to 4 bits and the predicted scores ``Q4 K4^T`` are
  computed densely (``N^2 d`` 4-bit MACs per head) and thresholded (softmax probability above
  2e-3 / 2e-2 in the paper) to give the mask. Assumption S1: the prediction runs on the same MAC
  budget with bit-fusion-style decomposition, 4 four-bit products per 8-bit MAC per cycle:
  ``ceil(N^2 d / (4 M))`` cycles per head; the threshold is ``N^2`` compares on the vector unit.
  Assumption S2: at equal sparsity the predicted mask has the same pattern as the fixed mask it is
  compared with (we feed it the same mask; Sanger's own masks are input-dependent).
* **Pack-and-split**: the mask is cut into column blocks of ``vec`` (64) keys; in each block every
  row's nonzeros are split into pieces of at most ``pes_per_row`` (16 or 32); pieces whose column sets
  are disjoint are packed into one array row (first-fit, longest piece first) -- our reading of
  Sanger's pack step (merged rows must not collide in a column so that one K vector feeds one PE
  column). Utilisation = nnz / (packed rows x pes_per_row).
* **Array**: score-stationary, ``M / pes_per_row`` rows of ``pes_per_row`` one-MAC PEs; each pass
  takes up to that many packed rows and costs one output-stationary systolic tile of the PE-array
  model (:func:`~hw_models.engines.pe_array.tile_cycles` with m = packed rows in the pass,
  n = pes_per_row, K = d, pipeline 1). Assumption S3: the SpMM (A.V) reuses the same packing and
  costs the same passes (scores stay in place, V streams through).
* Traffic: Q, K, V in and the output out, 8-bit; masks and scores never leave the chip (no index
  traffic to DRAM).

SpAtten-like (Wang et al., HPCA 2021)
=====================================
* **Cascade token pruning**: tokens whose accumulated attention is low are removed and stay removed
  in later layers. Assumption P1: at attention sparsity ``s`` every layer keeps the CLS token and
  ``ceil(sqrt(1 - s) (N - 1))`` others (uniform keep ratio; the attention work ``N_l^2`` then has
  density about ``1 - s``). Token pruning also shrinks the linear layers of the later layers
  (:func:`spatten_tokens`), which ViTCoD does not do -- this favours SpAtten end to end.
* **Head pruning**: none (ViTs have 3-12 heads). **Progressive quantisation**: not modelled (8-bit).
* **Attention**: dense ``QK^T`` and ``A.V`` over the kept tokens, per head, on an ``M``-MAC array
  modelled exactly like the dense baseline (assumption P2: the same output-stationary PE-array tile
  timing, default 16 x 32 with pipeline 2, so fill/drain overheads are charged alike; SpAtten's own
  512 multipliers form a vector unit, not this array).
* **Top-k engine**: selecting the kept tokens costs ``passes x ceil(N_l / lanes)`` cycles per layer
  (quick-select, ``lanes`` = 16 comparators, ``passes`` = 2 expected passes; assumption P3), not
  overlapped with the attention; accumulating the importance scores is ``H N_l^2`` adds on the vector
  unit.
* Traffic: Q, K, V of the kept tokens in, the output out, 8-bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hw_models.engines.pe_array import ArrayGeometry, tile_cycles
from hw_models.engines.sparse_attention import dense_gemm_cycles

__all__ = ["SangerConfig", "PackResult", "pack_and_split", "SangerHead", "sanger_head",
           "SpAttenConfig", "spatten_tokens", "SpAttenLayer", "spatten_layer"]


# ----------------------------------------------------------------------------------------------
# Sanger-like


@dataclass(frozen=True)
class SangerConfig:
    macs: int = 512
    pes_per_row: int = 16
    vec: int = 64
    pred_products_per_mac: int = 4        # S1: 4-bit products per 8-bit MAC per cycle

    def __post_init__(self) -> None:
        if self.macs < self.pes_per_row or self.macs % self.pes_per_row:
            raise ValueError(f"macs ({self.macs}) must be a positive multiple of pes_per_row ({self.pes_per_row})")
        if self.vec < 1 or self.pred_products_per_mac < 1:
            raise ValueError("vec and pred_products_per_mac must be >= 1")

    @property
    def array_rows(self) -> int:
        return self.macs // self.pes_per_row


@dataclass(frozen=True)
class PackResult:
    packed_rows: int
    nnz: int
    pes_per_row: int

    @property
    def utilization(self) -> float:
        return self.nnz / (self.packed_rows * self.pes_per_row) if self.packed_rows else 0.0


def pack_and_split(mask: np.ndarray, vec: int = 64, pes_per_row: int = 16) -> PackResult:
    """Sanger-style split (pieces of <= pes_per_row nonzeros per vec-wide block) and pack
    (first-fit decreasing; pieces in one packed row have disjoint columns)."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"pack_and_split needs a 2-D mask, got {m.shape}")
    packed = 0
    for c0 in range(0, m.shape[1], vec):
        block = m[:, c0:c0 + vec]
        pieces: list[tuple[int, int]] = []               # (count, column bitmask)
        for r in range(block.shape[0]):
            cols = np.nonzero(block[r])[0]
            for s in range(0, len(cols), pes_per_row):
                part = cols[s:s + pes_per_row]
                pieces.append((len(part), sum(1 << int(c) for c in part)))
        pieces.sort(key=lambda p: -p[0])
        bins: list[list[int]] = []                        # [count, bitmask]
        for count, bits in pieces:
            for b in bins:
                if b[0] + count <= pes_per_row and not (b[1] & bits):
                    b[0] += count
                    b[1] |= bits
                    break
            else:
                bins.append([count, bits])
        packed += len(bins)
    return PackResult(packed, int(m.sum()), pes_per_row)


@dataclass(frozen=True)
class SangerHead:
    prediction_cycles: int
    sddmm_cycles: int
    spmm_cycles: int
    packed_rows: int
    utilization: float
    threshold_compares: int           # vector-unit work of the prediction threshold
    dram_bytes: int

    @property
    def total(self) -> int:
        return self.prediction_cycles + self.sddmm_cycles + self.spmm_cycles


def _passes_cycles(cfg: SangerConfig, packed_rows: int, head_dim: int) -> int:
    geom = ArrayGeometry(cfg.array_rows, cfg.pes_per_row, 1)
    full, rem = divmod(packed_rows, cfg.array_rows)
    cycles = full * tile_cycles(geom, "os", cfg.array_rows, cfg.pes_per_row, head_dim)
    if rem:
        cycles += tile_cycles(geom, "os", rem, cfg.pes_per_row, head_dim)
    return cycles


def sanger_head(mask: np.ndarray, head_dim: int, cfg: SangerConfig = SangerConfig(), act_bits: int = 8) -> SangerHead:
    """Compute cycles and DRAM bytes of one attention head on the Sanger-like model."""
    m = np.asarray(mask, dtype=bool)
    n_q, n_k = m.shape
    pack = pack_and_split(m, cfg.vec, cfg.pes_per_row)
    pred = math.ceil(n_q * n_k * head_dim / (cfg.pred_products_per_mac * cfg.macs))
    passes = _passes_cycles(cfg, pack.packed_rows, head_dim)
    dram = math.ceil((n_q + 2 * n_k + n_q) * head_dim * act_bits / 8)      # Q, K, V in; O out
    return SangerHead(pred, passes, passes, pack.packed_rows, pack.utilization, n_q * n_k, dram)


# ----------------------------------------------------------------------------------------------
# SpAtten-like


@dataclass(frozen=True)
class SpAttenConfig:
    array_rows: int = 16
    array_cols: int = 32
    pipeline: int = 2
    topk_lanes: int = 16
    topk_passes: int = 2

    @property
    def macs(self) -> int:
        return self.array_rows * self.array_cols


def spatten_tokens(tokens: int, depth: int, sparsity: float) -> list[int]:
    """Kept tokens per layer under assumption P1 (CLS always kept; uniform keep ratio sqrt(1 - s))."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    keep = 1 + math.ceil(math.sqrt(1.0 - sparsity) * (tokens - 1))
    return [min(tokens, keep)] * depth


@dataclass(frozen=True)
class SpAttenLayer:
    tokens: int
    attention_cycles: int
    topk_cycles: int
    importance_adds: int
    dram_bytes: int
    attention_density: float          # N_l^2 / N^2

    @property
    def total(self) -> int:
        return self.attention_cycles + self.topk_cycles


def spatten_layer(tokens: int, kept: int, heads: int, head_dim: int, cfg: SpAttenConfig = SpAttenConfig(),
                  act_bits: int = 8) -> SpAttenLayer:
    """One layer's attention (all heads) on the SpAtten-like model with ``kept`` of ``tokens`` tokens."""
    if not 1 <= kept <= tokens:
        raise ValueError(f"kept must be in 1..{tokens}, got {kept}")
    geom = ArrayGeometry(cfg.array_rows, cfg.array_cols, cfg.pipeline)
    attn = heads * (dense_gemm_cycles(geom, kept, head_dim, kept) + dense_gemm_cycles(geom, kept, kept, head_dim))
    topk = cfg.topk_passes * math.ceil(kept / cfg.topk_lanes)
    dram = math.ceil(4 * heads * kept * head_dim * act_bits / 8)          # Q, K, V in; O out
    return SpAttenLayer(kept, attn, topk, heads * kept * kept, dram, kept * kept / (tokens * tokens))
