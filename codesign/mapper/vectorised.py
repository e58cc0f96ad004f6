"""Vectorised, closed-form evaluation of :func:`hw_models.cost.op_cost` over many candidate mappings.

``hw_models.cost`` walks the DRAM-level blocks of a mapping one by one and runs a double-buffered
pipeline over them (:mod:`hw_models.pipeline`). That recurrence has a closed form: with two buffer
slots, transfer ``i+1`` always starts exactly when compute ``i`` starts, so the compute start times
obey ``S_{i+1} = S_i + max(C_i, T_{i+1})`` and a run of items ends at

    T_0 + sum_i max(C_i, T_{i+1}) + C_last            (+ the tail transfer, if any).

Every sum of that form over the blocks of a mapping only depends on how many consecutive pairs of
each *type* there are (which loop carried, which tile sizes are edge tiles, whether the reduction
index is first/last), and those counts are products of trip counts. This module evaluates the
sums per pair type for whole numpy arrays of candidates at once: the same cycles, accesses and
energy as ``op_cost`` (up to float rounding, checked by ``tests/test_mapper.py`` on random
mappings), at a few hundred thousand candidates per second instead of a few thousand.

It mirrors ``hw_models.cost`` exactly, including its conventions (e.g. the output store of each
group's last tile is only timed for the final group, as there). If ``hw_models.cost`` changes, the
equivalence test fails and this file must follow.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

from hw_models.accelerator import Accelerator, Chunk
from hw_models.cost import LANE_OPS, CodecCost, _leakage_pj, _per_mac_energy, codec_cost
from hw_models.energy import load_table
from hw_models.errors import MappingError
from hw_models.schedule import LOOP_ORDERS
from hw_models.workload import ConvShape, OpNode

ORDER_INDEX = {o: i for i, o in enumerate(LOOP_ORDERS)}
DATAFLOW_CODE = {"os": 0, "ws": 1}


def _ceil_div(a, b):
    return -(-a // b)


@dataclass
class GemmContext:
    """Everything about (op, chunk, accelerator) that the closed form needs, computed once."""

    op: OpNode
    chunk: Chunk
    accel: Accelerator
    G: int
    P: int
    K: int
    M: int
    ab: float
    wb: float
    ob: float
    psb: float
    bw_array: float
    bw_dram: float
    pipe: int
    rows: int
    cols: int
    gb_bytes: int
    lb_bytes: int
    conv: tuple[int, int, int, int, int, int, int] | None    # out_w, h+2pad, w+2pad, stride, kh, window, n
    e_mac: float            # pJ per hardware MAC step (all arithmetic actions)
    e_rf_noc: dict          # dataflow -> pJ for rf + noc (fixed per op)
    gbr: float              # pJ/bit global buffer read / write
    gbw: float
    lbr: float
    lbw: float
    dram_pj_bit: float
    leak_per_cycle: float
    feasible: bool          # bits/rf/kind allow this chunk at all
    why: str = ""
    codec: CodecCost = CodecCost()   # a fused encoder/decoder (hw_models.cost.codec_cost)

    @classmethod
    def build(cls, op: OpNode, chunk: Chunk, accel: Accelerator) -> "GemmContext":
        if not op.is_gemm:
            raise MappingError(f"{op.name}: {op.kind} is not a GEMM op")
        G, P, K, M = op.gemm
        table = load_table(accel.energy_table)
        ab, wb, ob, psb = op.act_bits / 8, op.weight_bits / 8, op.out_bits / 8 * op.out_scale, chunk.acc_bits / 8
        gb = accel.global_buffer
        bw = gb.bandwidth_bytes_per_cycle
        bw_array = min(bw, chunk.local_bandwidth_bytes_per_cycle) if chunk.local_buffer_bytes else bw
        conv = None
        if isinstance(op.shape, ConvShape):
            s = op.shape
            conv = (s.out_w, s.h + 2 * s.padding, s.w + 2 * s.padding, s.stride, s.kh, s.kh * s.kw, s.n)
        hw_macs = G * P * K * M
        a, w, acc = chunk.act_bits, chunk.weight_bits, chunk.acc_bits
        rf, noc = table.bit_pj("rf", chunk.rf_bytes_per_pe), table.bit_pj("noc")
        e_rf_noc = {"os": hw_macs * (a + w + 2 * acc) * rf + hw_macs * (a + w) * noc,
                    "ws": hw_macs * (a + w + acc) * rf + hw_macs * (a + acc) * noc}
        gb_cap = gb.size_bytes / gb.banks
        lbr = lbw = 0.0
        if chunk.local_buffer_bytes:
            lbr = table.bit_pj("sram_read", chunk.local_buffer_bytes)
            lbw = table.bit_pj("sram_write", chunk.local_buffer_bytes)
        feasible, why = True, ""
        if not chunk.can_run(op.kind):
            feasible, why = False, f"chunk {chunk.name} ({chunk.pe_type}) cannot run {op.kind}"
        elif op.act_bits > chunk.act_bits or op.weight_bits > chunk.weight_bits:
            feasible, why = False, f"operand bits exceed chunk {chunk.name}'s datapath"
        elif chunk.rf_bytes_per_pe < ab + wb + psb:
            feasible, why = False, f"chunk {chunk.name} register file too small"
        elif op.in_scale != 1.0:
            feasible, why = False, "compressed operands are decoded by the sparse lines only"
        codec = codec_cost(op, chunk, accel, table)
        return cls(op=op, chunk=chunk, accel=accel, G=G, P=P, K=K, M=M, ab=ab, wb=wb, ob=ob, psb=psb,
                   bw_array=bw_array, bw_dram=accel.dram_bytes_per_cycle, pipe=chunk.geometry.pipeline,
                   rows=chunk.rows, cols=chunk.cols, gb_bytes=gb.size_bytes, lb_bytes=chunk.local_buffer_bytes,
                   conv=conv, e_mac=sum(_per_mac_energy(op, chunk, table).values()), e_rf_noc=e_rf_noc,
                   gbr=table.bit_pj("sram_read", gb_cap), gbw=table.bit_pj("sram_write", gb_cap), lbr=lbr, lbw=lbw,
                   dram_pj_bit=table.bit_pj(f"dram_{accel.dram.kind}"),
                   leak_per_cycle=_leakage_pj(accel, table, 1.0), feasible=feasible, why=why,
                   codec=codec)

    @property
    def hw_macs(self) -> int:
        return self.G * self.P * self.K * self.M

    # -- pieces shared with validate_mapping ------------------------------------------------------
    def input_elems(self, p, k):
        """Vectorised ``hw_models.cost._input_elems``."""
        if self.conv is None:
            return p * k
        out_w, hp, wp, stride, kh, window, n = self.conv
        rows = _ceil_div(p, out_w)
        in_rows = np.minimum(hp, (rows - 1) * stride + kh)
        return np.minimum(p * k, in_rows * wp * _ceil_div(k, window) * n)

    def valid(self, dataflow: str, pb, kb, mb, am, an, ak) -> np.ndarray:
        """Vectorised ``validate_mapping`` for GEMM mappings on this chunk (True = valid)."""
        n = np.broadcast(pb, kb, mb, am, an, ak).shape
        if not self.feasible or dataflow not in self.chunk.dataflows:
            return np.zeros(n, bool)
        ok = (pb >= 1) & (pb <= self.P) & (kb >= 1) & (kb <= self.K) & (mb >= 1) & (mb <= self.M)
        ok &= (am >= 1) & (am <= pb) & (an >= 1) & (an <= mb) & (ak >= 1) & (ak <= kb)
        ok &= an <= self.cols
        ok &= (am <= self.rows) if dataflow == "os" else (ak <= self.rows)
        gb_need = 2 * (self.input_elems(pb, kb) * self.ab + kb * mb * self.wb) + pb * mb * self.psb
        ok &= gb_need <= self.gb_bytes
        if self.lb_bytes:
            lb_need = 2 * (am * ak * self.ab + ak * an * self.wb) + am * an * self.psb
            ok &= lb_need <= self.lb_bytes
        return ok


# ---------------------------------------------------------------------------------------------
# array level: one GB block


def _chain(classes):
    """Closed-form pipeline end over a sequence of tile classes.

    ``classes``: (count, T_first, within, C_last) per class in execution order; a class is a tile
    repeated ``count`` times whose items give ``within`` = sum of max(C_i, T_{i+1}) inside one tile.
    Returns (T_0, sum over all consecutive pairs, C of the very last item).
    """
    t0 = pairs = prev_c = None
    has = None
    for cnt, tf, win, cl in classes:
        e = cnt > 0
        add = np.where(e, cnt * win + np.maximum(cnt - 1, 0) * np.maximum(cl, tf), 0.0)
        if has is None:
            t0 = np.where(e, tf, 0.0)
            pairs = add
            prev_c = np.where(e, cl, 0.0)
            has = e
            continue
        pairs = pairs + add + np.where(e & has, np.maximum(prev_c, tf), 0.0)
        t0 = np.where(e & ~has, tf, t0)
        prev_c = np.where(e, cl, prev_c)
        has = has | e
    return t0, pairs, prev_c


def block_model(ctx: GemmContext, dataflow: str, p, k, m, am, an, ak, final):
    """Vectorised ``hw_models.cost._block_model``: (cycles, compute, transfer, to_array, from_array, psum_read)."""
    ab, wb, psb, bw, P = ctx.ab, ctx.wb, ctx.psb, ctx.bw_array, ctx.pipe
    out_b = np.where(final, ctx.ob, psb)
    compute = transfer = 0.0
    classes = []
    if dataflow == "os":
        fm, rm = np.divmod(p, am)
        fn, rn = np.divmod(m, an)
        fk, rk = np.divmod(k, ak)
        nk = fk + (rk > 0)
        lk = np.where(rk > 0, rk, ak)
        many = nk >= 2
        for (ms, mc), (ns, nc) in product(((am, fm), (rm, (rm > 0).astype(np.int64))),
                                          ((an, fn), (rn, (rn > 0).astype(np.int64)))):
            cnt = mc * nc
            c_nl = ak + P + ms + ns
            t_nl = (ms * ak * ab + ak * ns * wb) / bw
            c_l = lk + P + 2 * ms + ns - 1
            t_l = (ms * lk * ab + lk * ns * wb + ms * ns * out_b) / bw
            win = np.maximum(nk - 2, 0) * np.maximum(c_nl, t_nl) + np.where(many, np.maximum(c_nl, t_l), 0.0)
            tf = np.where(many, t_nl, t_l)
            classes.append((cnt, tf, win, c_l))
            compute = compute + cnt * ((nk - 1) * c_nl + c_l)
            transfer = transfer + cnt * ((nk - 1) * t_nl + t_l)
        nn_, nm_ = fn + (rn > 0), fm + (rm > 0)
        to_array = ab * k * p * nn_ + wb * k * m * nm_
        from_array = p * m * out_b
        psum_read = 0.0
    else:
        fk, rk = np.divmod(k, ak)
        nk = fk + (rk > 0)
        fn, rn = np.divmod(m, an)
        fm, rm = np.divmod(p, am)
        st_b = np.where(nk == 1, out_b, psb)
        s0 = np.where(fm >= 1, am, rm)
        has_rem = rm > 0
        rem_after = has_rem & (fm >= 1)
        for (ks, kc), (ns, nc) in product(((ak, fk), (rk, (rk > 0).astype(np.int64))),
                                          ((an, fn), (rn, (rn > 0).astype(np.int64)))):
            cnt = kc * nc
            base = ks * (P + 1) + ns + 1
            c_am, c_rm = base + am, base + rm
            tf = (s0 * ks * ab + ks * ns * wb + s0 * ns * st_b) / bw
            t_am = (am * ks * ab + am * ns * st_b) / bw
            t_rm = (rm * ks * ab + rm * ns * st_b) / bw
            win = np.maximum(fm - 1, 0) * np.maximum(c_am, t_am) + np.where(rem_after, np.maximum(c_am, t_rm), 0.0)
            c_last = np.where(has_rem, c_rm, c_am)
            classes.append((cnt, tf, win, c_last))
            compute = compute + cnt * (fm * c_am + has_rem * c_rm)
            transfer = transfer + cnt * (tf + np.maximum(fm - 1, 0) * t_am + rem_after * t_rm)
        nn_ = fn + (rn > 0)
        to_array = ab * p * k * nn_ + wb * k * m
        from_array = nk * p * m * st_b
        psum_read = (nk - 1) * p * m * psb
    t0, pairs, c_last = _chain(classes)
    return t0 + pairs + c_last, compute, transfer, to_array, from_array, psum_read


# ---------------------------------------------------------------------------------------------
# DRAM level: the blocks of one group in loop order, repeated for every group

#: POS[order, d]: nesting depth (0 = outermost) of dim d (0 = p, 1 = k, 2 = m) in LOOP_ORDERS[order].
POS = np.array([[o.index(d) for d in "pkm"] for o in LOOP_ORDERS], dtype=np.int64)
_FLAGS = np.array(list(product((0, 1), repeat=3)), dtype=bool)      # (8, 3): (p last, k last, m last)


def _role_table(t: np.ndarray) -> np.ndarray:
    """Index classes of one loop for a consecutive pair (i, i+1) of DRAM-level iterations.

    Returns an int array (3 roles, 5 attributes, 3 classes, n). Roles: 0 = an outer loop (index
    unchanged, any value), 1 = the loop that advances (j -> j+1 for j in 0..t-2), 2 = an inner loop
    (wraps from t-1 to 0). Attributes: count, i_first, i_last, j_first, j_last of the class.
    """
    z = np.zeros_like(t)
    o = np.ones_like(t)
    t1, t2 = (t == 1).astype(np.int64), (t == 2).astype(np.int64)
    ge2, ge3 = (t >= 2).astype(np.int64), (t >= 3).astype(np.int64)
    outer = [[o, np.maximum(t - 2, 0), ge2], [o, z, z], [t1, z, o], [o, z, z], [t1, z, o]]
    carry = [[ge2, np.maximum(t - 3, 0), ge3], [o, z, z], [z, z, z], [z, z, z], [t2, z, o]]
    inner = [[o, z, z], [t1, z, z], [o, z, o], [o, z, z], [t1, z, o]]
    return np.array([outer, carry, inner])


@dataclass
class EvalResult:
    cycles: np.ndarray
    energy: np.ndarray
    dram_read: np.ndarray
    dram_write: np.ndarray
    gb_read: np.ndarray
    gb_write: np.ndarray
    compute: np.ndarray


def evaluate_gemm(ctx: GemmContext, dataflow: str, order: np.ndarray, pb, kb, mb, am, an, ak) -> EvalResult:
    """Cycles and energy (pJ) of every candidate, exactly as ``op_cost`` computes them.

    All arguments are int arrays of one length (``order`` indexes ``LOOP_ORDERS``); candidates must
    be valid (see :meth:`GemmContext.valid`).
    """
    pb, kb, mb, am, an, ak = (np.asarray(x, dtype=np.int64) for x in (pb, kb, mb, am, an, ak))
    order = np.asarray(order, dtype=np.int64)
    G, P, K, M = ctx.G, ctx.P, ctx.K, ctx.M
    ab, wb, ob, psb, bwd = ctx.ab, ctx.wb, ctx.ob, ctx.psb, ctx.bw_dram
    tiles = (pb, kb, mb)
    trips = (_ceil_div(P, pb), _ceil_div(K, kb), _ceil_div(M, mb))
    last = tuple(total - (t - 1) * tile for total, t, tile in zip((P, K, M), trips, tiles))
    final = kb == K

    # block model for the 8 (p last?, k last?, m last?) size classes at once: arrays (8, n)
    sizes8 = [np.where(_FLAGS[:, d, None], last[d][None, :], tiles[d][None, :]) for d in range(3)]
    cb, comp8, _, ta8, fa8, pr8 = block_model(ctx, dataflow, *sizes8, am, an, ak, final)
    count8 = np.ones((8, pb.shape[0]), dtype=np.int64)
    for d in range(3):
        count8 = count8 * np.where(_FLAGS[:, d, None], 1, trips[d][None, :] - 1)
    comp = (count8 * comp8).sum(axis=0)
    to_array = (count8 * ta8).sum(axis=0)
    from_array = (count8 * fa8).sum(axis=0)
    psum_read = (count8 * pr8).sum(axis=0)

    # first block of a group: all indices 0 (its size is the full tile, or the whole dim if one trip)
    t0_load = ctx.input_elems(pb, kb) * ab + kb * mb * wb
    t0 = t0_load / bwd

    # Consecutive pairs (i, i+1) inside one group, grouped by the nesting level of the loop that
    # advances between them: loops outside it keep their index (any value), it goes j -> j+1, loops
    # inside it wrap from last to 0. Per loop that leaves 3 index classes (first / middle / last),
    # which decide the tile sizes, which operands change (and are loaded / stored) and whether the
    # reduction is complete, so each level is a (3, 3, 3, n) array of pair types with their counts.
    pos = POS[order]                                        # (n, 3)
    shape_of = ((3, 1, 1, -1), (1, 3, 1, -1), (1, 1, 3, -1))
    tables = [_role_table(trips[d]) for d in range(3)]
    w_sum = load_sum = store_sum = 0.0
    for level in range(3):
        cls = []
        chg = []
        for d in range(3):
            role = np.sign(pos[:, d] - level) + 1          # 0 outer, 1 advancing, 2 inner
            attrs = np.take_along_axis(tables[d], role[None, None, None, :], axis=0)[0]     # (5, 3, n)
            cls.append(tuple(a.reshape(shape_of[d]) for a in attrs))
            chg.append(np.where(role == 0, False, np.where(role == 1, True, trips[d] > 1)))
        (cp, _, ilp, _, jlp), (ck, _, ilk, jfk, jlk), (cm, _, ilm, _, jlm) = cls
        ilp, jlp, ilk, jfk, jlk, ilm, jlm = (a.astype(bool) for a in (ilp, jlp, ilk, jfk, jlk, ilm, jlm))
        cnt = cp * ck * cm                                   # (3, 3, 3, n)
        idx = ilp.astype(np.int64) * 4 + ilk.astype(np.int64) * 2 + ilm.astype(np.int64)
        idx = np.broadcast_to(idx, cnt.shape).reshape(27, -1)
        ci = np.take_along_axis(cb, idx, axis=0).reshape(cnt.shape)
        pj = np.where(jlp, last[0], tiles[0])
        kj = np.where(jlk, last[1], tiles[1])
        mj = np.where(jlm, last[2], tiles[2])
        chg_pk, chg_km, chg_pm = chg[0] | chg[1], chg[1] | chg[2], chg[0] | chg[2]
        load = (np.where(chg_pk, ctx.input_elems(pj, kj) * ab, 0.0) + np.where(chg_km, kj * mj * wb, 0.0)
                + np.where(chg_pm & ~jfk, pj * mj * psb, 0.0))
        pi = np.where(ilp, last[0], tiles[0])
        mi = np.where(ilm, last[2], tiles[2])
        store = np.where(chg_pm, pi * mi * np.where(ilk, ob, psb), 0.0)
        tj = (load + store) / bwd
        w_sum = w_sum + np.broadcast_to(cnt * np.maximum(ci, tj), cnt.shape).reshape(27, -1).sum(axis=0)
        load_sum = load_sum + np.broadcast_to(cnt * load, cnt.shape).reshape(27, -1).sum(axis=0)
        store_sum = store_sum + np.broadcast_to(cnt * store, cnt.shape).reshape(27, -1).sum(axis=0)

    c_last = cb[7]
    last_store = last[0] * last[2] * ob
    cycles = ctx.codec.end(t0 + G * w_sum + (G - 1) * np.maximum(c_last, t0) + c_last + last_store / bwd, G)
    dram_r = G * (t0_load + load_sum)
    dram_w = G * (store_sum + last_store)
    to_array, from_array, psum_read = G * to_array, G * from_array, G * psum_read
    gb_read = to_array + psum_read + dram_w
    gb_write = dram_r + from_array
    energy = (ctx.hw_macs * ctx.e_mac + ctx.e_rf_noc[dataflow]
              + 8 * (gb_read * ctx.gbr + gb_write * ctx.gbw)
              + 8 * (dram_r + dram_w) * ctx.dram_pj_bit
              + cycles * ctx.leak_per_cycle + sum(ctx.codec.energy.values()))
    if ctx.lb_bytes:
        lb = to_array + psum_read + from_array
        energy = energy + 8 * lb * (ctx.lbr + ctx.lbw)
    return EvalResult(cycles=cycles, energy=energy, dram_read=dram_r, dram_write=dram_w, gb_read=gb_read,
                      gb_write=gb_write, compute=G * comp + ctx.codec.serial_cycles)


# ---------------------------------------------------------------------------------------------
# vector ops (softmax, eltwise, pool): one block-size parameter


@dataclass
class VectorContext:
    op: OpNode
    chunk: Chunk
    accel: Accelerator
    outs: int
    in_b: int
    out_b: int
    lane_ops: int
    lanes: int
    bw_dram: float
    gb_bytes: int
    fixed_energy: float
    leak_per_cycle: float
    feasible: bool

    @classmethod
    def build(cls, op: OpNode, chunk: Chunk, accel: Accelerator) -> "VectorContext":
        table = load_table(accel.energy_table)
        counts = op.counts()
        lane_ops = sum(getattr(counts, name) * w for name, w in LANE_OPS.items())
        in_b, _, out_b = op.bytes()
        gb_cap = accel.global_buffer.size_bytes / accel.global_buffer.banks
        fixed = (lane_ops * table.op_pj("vector_op", 16)
                 + 8 * (in_b + out_b) * (table.bit_pj("sram_read", gb_cap) + table.bit_pj("sram_write", gb_cap))
                 + 8 * (in_b + out_b) * table.bit_pj(f"dram_{accel.dram.kind}"))
        feasible = chunk.can_run(op.kind) and op.act_bits <= chunk.act_bits
        return cls(op=op, chunk=chunk, accel=accel, outs=op.elements()[2], in_b=in_b, out_b=out_b,
                   lane_ops=lane_ops, lanes=max(chunk.vector_lanes, 1), bw_dram=accel.dram_bytes_per_cycle,
                   gb_bytes=accel.global_buffer.size_bytes, fixed_energy=fixed,
                   leak_per_cycle=_leakage_pj(accel, table, 1.0), feasible=feasible)

    def valid(self, block) -> np.ndarray:
        block = np.asarray(block)
        if not self.feasible:
            return np.zeros(block.shape, bool)
        per_elem = (self.in_b + self.out_b) / max(1, self.outs)
        return (block >= 1) & (2 * block * per_elem <= self.gb_bytes)

    def evaluate(self, block) -> tuple[np.ndarray, np.ndarray]:
        """(cycles, energy pJ) of vector mappings with GB block ``block`` (vectorised ``vector_cost``)."""
        block = np.minimum(np.asarray(block, dtype=np.int64), self.outs)
        full, rem = np.divmod(self.outs, block)
        io = self.in_b + self.out_b

        def item(size):
            frac = size / self.outs
            return io * frac / self.bw_dram, np.ceil(self.lane_ops * frac / self.lanes)

        tf, cf = item(block)
        tr, cr = item(rem)
        has_rem = rem > 0
        pairs = np.maximum(full - 1, 0) * np.maximum(cf, tf) + np.where(has_rem, np.maximum(cf, tr), 0.0)
        cycles = tf + pairs + np.where(has_rem, cr, cf)
        return cycles, self.fixed_energy + cycles * self.leak_per_cycle
