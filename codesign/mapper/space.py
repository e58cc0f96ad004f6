"""The mapping space of one GEMM op on one chunk, as a dense integer grid.

A grid point is 8 indices: (P tile, K tile, M tile, loop order, dataflow, row mode, column mode,
stream mode). GB tile sizes come from per-dimension value lists (every size for small dimensions;
balanced splits ``ceil(D/t)``, powers of two and multiples of the array/conv alignment for large
ones). The array tile is derived from the GB tile through the three *modes*, so every grid point
respects the array bounds by construction:

* row mode (the dimension bounded by the array rows: OS output rows ``m``, WS reduction ``k``) and
  column mode (output columns ``n``): 0 = as many as fit, 1 = balanced over the fewest passes,
  2/3 = balanced over 2x/4x as many passes;
* stream mode (OS reduction ``k``, WS streamed rows ``m``): 0 = the whole block, 1..6 = 1/2..1/64
  of it, 7 = the largest that fits the chunk's local buffer, 8 = that, balanced.

Capacity (global buffer, local buffer) is then checked by :meth:`GemmContext.valid`.
"""
from __future__ import annotations

import math

import numpy as np

from hw_models.schedule import LOOP_ORDERS
from codesign.mapper.vectorised import GemmContext, _ceil_div

ROW_MODES = 4
STREAM_MODES = 9
SMALL_DIM = 48          # dimensions up to this size offer every tile size


def dim_values(total: int, aligns: tuple[int, ...] = ()) -> np.ndarray:
    """Candidate GB tile sizes for a GEMM dimension of length ``total``."""
    if total <= SMALL_DIM:
        return np.arange(1, total + 1, dtype=np.int64)
    vals = {math.ceil(total / t) for t in range(1, 25)}
    t = 1
    while t <= total:
        vals.add(t)                               # powers of two
        vals.add(math.ceil(total / t))            # halvings
        t *= 2
    for a in aligns:
        if 1 < a < total:
            j = 1
            while a * j <= total:
                vals.add(a * j)
                j = j + 1 if j < 8 else j * 2
    return np.array(sorted(v for v in vals if 1 <= v <= total), dtype=np.int64)


def _canonical_orders() -> np.ndarray:
    """canon[order, pattern]: the order index equivalent to ``order`` when the dims flagged in
    ``pattern`` (bit 0 = p, 1 = k, 2 = m) have a single trip, so their position does not matter."""
    canon = np.zeros((6, 8), dtype=np.int64)
    index = {o: i for i, o in enumerate(LOOP_ORDERS)}
    for oi, o in enumerate(LOOP_ORDERS):
        for pattern in range(8):
            single = {d for b, d in enumerate("pkm") if pattern >> b & 1}
            kept = "".join(d for d in o if d not in single) + "".join(d for d in "pkm" if d in single)
            canon[oi, pattern] = index[kept]
    return canon


CANON = _canonical_orders()


def limited_mode(size, limit: int, mode):
    """Array-tile size along a dimension bounded by ``limit`` (see module docstring)."""
    passes = _ceil_div(size, limit)
    return np.where(mode == 0, np.minimum(size, limit), _ceil_div(size, passes << np.maximum(mode - 1, 0)))


class GemmSpace:
    """Grid over the mappings of one GEMM op on one chunk (all of the chunk's dataflows)."""

    AXES = ("p", "k", "m", "order", "dataflow", "row", "col", "stream")

    def __init__(self, ctx: GemmContext):
        self.ctx = ctx
        chunk = ctx.chunk
        conv_align = ()
        if ctx.conv is not None:
            conv_align = (ctx.conv[0],)                      # whole output rows
        window = ctx.conv[5] if ctx.conv is not None else 1
        self.values = {
            "p": dim_values(ctx.P, (chunk.rows, *conv_align)),
            "k": dim_values(ctx.K, (chunk.rows, window)),
            "m": dim_values(ctx.M, (chunk.cols,)),
        }
        self.dataflows = tuple(df for df in ("os", "ws") if df in chunk.dataflows)
        self.shape = (len(self.values["p"]), len(self.values["k"]), len(self.values["m"]), len(LOOP_ORDERS),
                      len(self.dataflows), ROW_MODES, ROW_MODES, STREAM_MODES)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def all_indices(self) -> np.ndarray:
        return np.stack(np.unravel_index(np.arange(self.size), self.shape), axis=1)

    def random_indices(self, rng: np.random.Generator, count: int) -> np.ndarray:
        return np.stack([rng.integers(0, n, count) for n in self.shape], axis=1)

    def frontier_indices(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """Random points whose GB tile is maximal: it fits the global buffer, but growing any one
        of p, k, m to the next listed size would not (the other axes are random)."""
        ctx = self.ctx
        vp, vk, vm = self.values["p"], self.values["k"], self.values["m"]
        if vp.size * vk.size * vm.size > 4_000_000:
            return self.random_indices(rng, count)
        pb, kb, mb = np.meshgrid(vp, vk, vm, indexing="ij", sparse=True)
        need = 2 * (ctx.input_elems(pb, kb) * ctx.ab + kb * mb * ctx.wb) + pb * mb * ctx.psb
        fit = need <= ctx.gb_bytes
        maximal = fit.copy()
        for axis in range(3):
            grown = np.zeros_like(fit)
            sl_dst = [slice(None)] * 3
            sl_src = [slice(None)] * 3
            sl_dst[axis], sl_src[axis] = slice(0, -1), slice(1, None)
            grown[tuple(sl_dst)] = fit[tuple(sl_src)]
            maximal &= ~grown
        pts = np.argwhere(maximal)
        if pts.shape[0] == 0:
            return self.random_indices(rng, count)
        pick = pts[rng.integers(0, pts.shape[0], count)]
        idx = self.random_indices(rng, count)
        idx[:, :3] = pick
        return idx

    def flat(self, idx: np.ndarray) -> np.ndarray:
        return np.ravel_multi_index(idx.T, self.shape)

    def decode(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Grid indices (N x 8) -> raw mapping arrays: dataflow code, pb, kb, mb, am, an, ak, order."""
        ctx = self.ctx
        pb = self.values["p"][idx[:, 0]]
        kb = self.values["k"][idx[:, 1]]
        mb = self.values["m"][idx[:, 2]]
        dfc = np.array([0 if d == "os" else 1 for d in self.dataflows], dtype=np.int64)[idx[:, 4]]
        row, col, stream = idx[:, 5], idx[:, 6], idx[:, 7]
        an = limited_mode(mb, ctx.cols, col)
        is_os = dfc == 0
        # the row-bounded dim: OS output rows (from pb), WS reduction (from kb)
        lim = np.where(is_os, pb, kb)
        r = limited_mode(lim, ctx.rows, row)
        am_os, ak_ws = r, r
        # the stream dim: OS reduction (from kb), WS rows (from pb)
        s = np.where(is_os, kb, pb)
        halved = _ceil_div(s, 1 << np.clip(stream, 0, 6))
        if ctx.lb_bytes:
            ab, wb, psb, lb = ctx.ab, ctx.wb, ctx.psb, ctx.lb_bytes
            with np.errstate(divide="ignore", invalid="ignore"):
                os_max = (lb - am_os * an * psb) / (2 * (am_os * ab + an * wb))
                ws_max = (lb - 2 * ak_ws * an * wb) / (2 * ak_ws * ab + an * psb)
            vmax = np.floor(np.where(is_os, os_max, ws_max) * (1 - 1e-12))
            vmax = np.clip(np.nan_to_num(vmax, nan=1.0), 1, s).astype(np.int64)
        else:
            vmax = s
        lb_bal = _ceil_div(s, _ceil_div(s, vmax))
        sv = np.where(stream <= 6, halved, np.where(stream == 7, vmax, lb_bal))
        am = np.where(is_os, am_os, sv)
        ak = np.where(is_os, sv, ak_ws)
        trips1 = ((ctx.P <= pb).astype(np.int64) | (ctx.K <= kb).astype(np.int64) << 1
                  | (ctx.M <= mb).astype(np.int64) << 2)
        order = CANON[idx[:, 3], trips1]
        return {"df": dfc, "pb": pb, "kb": kb, "mb": mb, "am": am, "an": an, "ak": ak, "order": order}

    def neighbours(self, idx: np.ndarray) -> np.ndarray:
        """Every grid point that differs from one of ``idx``'s rows along exactly one axis."""
        out = []
        for row in idx:
            for axis, n in enumerate(self.shape):
                if n <= 1:
                    continue
                block = np.repeat(row[None, :], n, axis=0)
                block[:, axis] = np.arange(n)
                out.append(block)
        return np.concatenate(out) if out else np.empty((0, len(self.shape)), dtype=np.int64)

    def pair_sweep(self, idx: np.ndarray, window: int = 8) -> np.ndarray:
        """Points that differ from a row of ``idx`` in two GB tile axes (p, k, m), each moved by up
        to ``window`` steps, combined with every loop order."""
        out = []
        n_orders = self.shape[3]
        for row in idx:
            for a, b in ((0, 1), (0, 2), (1, 2)):
                va = np.arange(max(0, row[a] - window), min(self.shape[a], row[a] + window + 1))
                vb = np.arange(max(0, row[b] - window), min(self.shape[b], row[b] + window + 1))
                ga, gb, go = np.meshgrid(va, vb, np.arange(n_orders), indexing="ij")
                block = np.repeat(row[None, :], ga.size, axis=0)
                block[:, a], block[:, b], block[:, 3] = ga.ravel(), gb.ravel(), go.ravel()
                out.append(block)
        return np.concatenate(out) if out else np.empty((0, len(self.shape)), dtype=np.int64)

    def jitter(self, idx: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
        """``count`` random points near each row: 2-3 axes moved by up to 2 steps."""
        base = np.repeat(idx, count, axis=0)
        steps = rng.integers(-2, 3, base.shape)
        keep = rng.random(base.shape) < 0.35
        moved = np.clip(base + steps * keep, 0, np.array(self.shape) - 1)
        return moved
