"""Per-operator model: tiles, transfers, accesses per memory level, cycles and energy.

Memory hierarchy: DRAM -> global buffer (GB, shared) -> chunk local buffer (LB; absent when
``local_buffer_kb`` is 0, then the array streams from the GB) -> PE registers. Operands start and
end in DRAM for every operator (Timeloop's per-layer convention), so layers are independent.

Execution order (this *is* the model; the simulator and the mapper both call it):
  * DRAM level: GB blocks of each group in ``loop_order``; a block's input/weight tile is loaded
    only when its index changed since the previous block; an output tile is stored when the loop
    leaves it (partial sums at accumulator width if its reduction is unfinished, read back on the
    next visit).
  * GB level: inside a block, array tiles grouped by tile shape (full tiles first, edge tiles
    last). OS: for each (m, n) output tile the k-tiles run back to back, accumulating in the PEs;
    only the last writes back. WS: for each (k, n) weight tile, the m-row streams run back to back;
    the weights are loaded once per weight tile, partial sums are accumulated in the buffer.
  * Both levels are double-buffered (:mod:`hw_models.pipeline`); a tile's output store shares the
    transfer slot of that tile.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import product

import numpy as np

from hw_models.accelerator import CSR_DATAFLOW, Accelerator, Chunk
from hw_models.energy import EnergyTable, load_table
from hw_models.engines.pe_array import tile_cycles
from hw_models.engines.sparse_attention import SparseEngineConfig, masked_matmul_timing
from hw_models.errors import MappingError
from hw_models.pipeline import run_pipeline
from hw_models.schedule import LOOP_ORDERS, OpMapping
from hw_models.workload import ConvShape, OpNode

#: Lane-ops per arithmetic operation on the vector unit (exp and divide are iterative: 4 lane-ops).
LANE_OPS = {"mults": 1, "shifts": 1, "adds": 1, "subs": 1, "abs": 1, "compares": 1, "exps": 4, "divs": 4}

ENERGY_KEYS = ("mult", "shift", "add", "abs", "vector", "rf", "noc", "local_buffer", "global_buffer",
               "dram", "leakage")
ACCESS_KEYS = ("dram_read", "dram_write", "gb_read", "gb_write", "lb_read", "lb_write", "rf_bits", "noc_bits")


@dataclass
class OpCost:
    op: str
    kind: str
    chunk: str
    dataflow: str
    cycles: float
    compute_cycles: float
    transfer_cycles: float
    macs: int                       # useful MAC steps the workload asks for
    hw_macs: int                    # MAC steps the PEs actually perform (dense, for sparse kinds)
    pes: int
    accesses: dict[str, float] = field(default_factory=dict)    # bytes (rf/noc: bits)
    energy_pj: dict[str, float] = field(default_factory=dict)   # per ENERGY_KEYS
    lane_ops: int = 0

    @property
    def stall_cycles(self) -> float:
        return self.cycles - self.compute_cycles

    @property
    def bound(self) -> str:
        return "memory" if self.transfer_cycles > self.compute_cycles else "compute"

    @property
    def total_energy_pj(self) -> float:
        return sum(self.energy_pj.values())

    @property
    def utilization(self) -> float:
        return self.hw_macs / (self.cycles * self.pes) if self.cycles and self.hw_macs else 0.0


def _splits(total: int, tile: int) -> list[tuple[int, int]]:
    """[(size, count)] of tiles covering ``total`` with ``tile``-sized pieces (full ones first)."""
    full, rem = divmod(total, tile)
    return [(s, c) for s, c in ((tile, full), (rem, 1)) if c and s]


def _size(index: int, tile: int, total: int) -> int:
    return min(tile, total - index * tile)


def _input_elems(op: OpNode, p: int, k: int) -> float:
    """Unique input elements of a GB block of p output positions x k reduction elements."""
    if isinstance(op.shape, ConvShape):
        s = op.shape
        window = s.kh * s.kw
        rows = math.ceil(p / s.out_w)
        in_rows = min(s.h + 2 * s.padding, (rows - 1) * s.stride + s.kh)
        return min(p * k, in_rows * (s.w + 2 * s.padding) * math.ceil(k / window) * s.n)
    return p * k


def check_bits(op: OpNode, chunk: Chunk) -> None:
    if op.act_bits > chunk.act_bits:
        raise MappingError(f"{op.name}: {op.act_bits}-bit activations exceed chunk {chunk.name}'s {chunk.act_bits}-bit datapath")
    if op.is_gemm and op.weight_bits > chunk.weight_bits:
        raise MappingError(f"{op.name}: {op.weight_bits}-bit weights exceed chunk {chunk.name}'s {chunk.weight_bits}-bit datapath")


def validate_mapping(op: OpNode, chunk: Chunk, accel: Accelerator, mp: OpMapping) -> None:
    """Raise MappingError naming the first violated constraint (kind, bits, tile bounds, capacity)."""
    if not chunk.can_run(op.kind):
        raise MappingError(f"{op.name}: chunk {chunk.name} ({chunk.pe_type}) cannot run {op.kind}")
    check_bits(op, chunk)
    if mp.dataflow == CSR_DATAFLOW or op.kind == "sparse_matmul" and not chunk.gemm_dataflows:
        _validate_csr(op, chunk, accel, mp)
        return
    if op.in_scale != 1.0:
        raise MappingError(f"{op.name}: compressed operands (in_scale) are decoded by the sparse lines only; "
                           "map it on the csr dataflow")
    if not op.is_gemm:
        if mp.dataflow != "vector" or mp.gb_tile[0] < 1:
            raise MappingError(f"{op.name}: vector ops need dataflow 'vector' and a positive block size")
        in_b, _, out_b = op.bytes()
        per_elem = (in_b + out_b) / max(1, op.elements()[2])
        if 2 * mp.gb_tile[0] * per_elem > accel.global_buffer.size_bytes:
            raise MappingError(f"{op.name}: vector block of {mp.gb_tile[0]} elements does not fit the global buffer")
        return
    if mp.dataflow not in chunk.dataflows:
        raise MappingError(f"{op.name}: chunk {chunk.name} has no {mp.dataflow!r} dataflow ({', '.join(chunk.dataflows)})")
    if mp.loop_order not in LOOP_ORDERS:
        raise MappingError(f"{op.name}: loop_order must be a permutation of 'pkm', got {mp.loop_order!r}")
    _, P, K, M = op.gemm
    pb, kb, mb = mp.gb_tile
    am, an, ak = mp.array_tile
    if not (1 <= pb <= P and 1 <= kb <= K and 1 <= mb <= M):
        raise MappingError(f"{op.name}: gb_tile {mp.gb_tile} outside the GEMM (P={P}, K={K}, M={M})")
    if not (1 <= am <= pb and 1 <= an <= mb and 1 <= ak <= kb):
        raise MappingError(f"{op.name}: array_tile {mp.array_tile} outside gb_tile {mp.gb_tile}")
    rows, cols = chunk.rows, chunk.cols
    if an > cols or (mp.dataflow == "os" and am > rows) or (mp.dataflow == "ws" and ak > rows):
        raise MappingError(f"{op.name}: array_tile {mp.array_tile} does not fit the {rows}x{cols} array ({mp.dataflow})")
    ab, wb = op.act_bits / 8, op.weight_bits / 8
    psb = chunk.acc_bits / 8
    gb_need = 2 * (_input_elems(op, pb, kb) * ab + kb * mb * wb) + pb * mb * psb
    if gb_need > accel.global_buffer.size_bytes:
        raise MappingError(f"{op.name}: gb_tile {mp.gb_tile} needs {gb_need / 1024:.1f} KB, global buffer has "
                           f"{accel.global_buffer.size_kb:g} KB")
    if chunk.local_buffer_bytes:
        lb_need = 2 * (am * ak * ab + ak * an * wb) + am * an * psb
        if lb_need > chunk.local_buffer_bytes:
            raise MappingError(f"{op.name}: array_tile {mp.array_tile} needs {lb_need / 1024:.1f} KB, chunk "
                               f"{chunk.name} local buffer has {chunk.local_buffer_kb:g} KB")
    if chunk.rf_bytes_per_pe < ab + wb + psb:
        raise MappingError(f"{op.name}: chunk {chunk.name} register file ({chunk.rf_bytes_per_pe} B/PE) cannot hold "
                           "one operand pair and an accumulator")


def _validate_csr(op: OpNode, chunk: Chunk, accel: Accelerator, mp: OpMapping) -> None:
    if mp.dataflow != CSR_DATAFLOW or CSR_DATAFLOW not in chunk.dataflows:
        raise MappingError(f"{op.name}: chunk {chunk.name} runs {op.kind} only on the csr dataflow "
                           f"(mapping asks for {mp.dataflow!r})")
    if op.kind != "sparse_matmul" or op.mask is None:
        raise MappingError(f"{op.name}: the csr dataflow needs a sparse_matmul with a mask")
    # one head's operands, CSR data and output must fit the global buffer (the next head's loads
    # overlap the tail of its compute: the per-head pipeline in csr_cost)
    _, P, K, M = op.gemm
    rows, cols = op.mask.rows, op.mask.cols
    nnz = int(op.mask.to_array().sum(axis=(1, 2)).max())
    csr_bytes = (rows + 1) * max(1, math.ceil((rows * cols).bit_length() / 8)) \
        + nnz * max(1, math.ceil(max(1, (cols - 1).bit_length()) / 8))
    head = (P * K + K * M) * op.act_bits / 8 + P * M * op.out_bits / 8 + csr_bytes
    if head > accel.global_buffer.size_bytes:
        raise MappingError(f"{op.name}: one head ({head / 1024:.1f} KB with its CSR data) does not fit "
                           f"the {accel.global_buffer.size_kb:g} KB global buffer")


def _gb_to_array_bandwidth(accel: Accelerator, chunk: Chunk) -> float:
    bw = accel.global_buffer.bandwidth_bytes_per_cycle
    return min(bw, chunk.local_bandwidth_bytes_per_cycle) if chunk.local_buffer_bytes else bw


@lru_cache(maxsize=65536)
def _block_model(chunk: Chunk, bw: float, dataflow: str, block: tuple[int, int, int],
                 array_tile: tuple[int, int, int], bits: tuple[float, float, float, float],
                 final: bool) -> tuple[float, float, float, dict[str, float]]:
    """Array-level pipeline of one GB block: (cycles, compute, transfer, GB<->array bytes)."""
    pb, kb, mb = block
    am, an, ak = array_tile
    ab, wb, ob, psb = bits
    out_b = ob if final else psb
    geom = chunk.geometry
    blocks, moved = [], {"to_array": 0.0, "from_array": 0.0, "psum_read": 0.0, "macs": 0}
    if dataflow == "os":
        for (m, mc), (n, nc) in product(_splits(pb, am), _splits(mb, an)):
            items = []
            ks = [(k, c) for k, c in _splits(kb, ak)]
            seq = [k for k, c in ks for _ in range(c)]
            for i, k in enumerate(seq):
                last = i == len(seq) - 1
                load = m * k * ab + k * n * wb
                store = m * n * out_b if last else 0.0
                items.append(((load + store) / bw, tile_cycles(geom, "os", m, n, k, writeback=last)))
                moved["to_array"] += mc * nc * load
                moved["from_array"] += mc * nc * store
                moved["macs"] += mc * nc * m * n * k
            blocks.append((items, mc * nc))
    else:
        nk = math.ceil(kb / ak)
        for (k, kc), (n, nc) in product(_splits(kb, ak), _splits(mb, an)):
            first_k = k == ak or nk == 1          # psum read-back only for k-tiles after the first
            items = []
            ms = [m for m, c in _splits(pb, am) for _ in range(c)]
            for i, m in enumerate(ms):
                load = m * k * ab + (k * n * wb if i == 0 else 0.0)
                store = m * n * (out_b if nk == 1 else psb)
                items.append(((load + store) / bw, tile_cycles(geom, "ws", m, n, k)))
                moved["to_array"] += kc * nc * load
                moved["from_array"] += kc * nc * store
                moved["macs"] += kc * nc * m * n * k
            blocks.append((items, kc * nc))
            # every k-tile but the first reads the partial sums back (accumulate at the buffer)
            later = kc - (1 if first_k else 0)
            moved["psum_read"] += later * nc * pb * n * psb
    state = run_pipeline(blocks)
    return state.end, state.compute_busy, state.transfer_busy, moved


def _per_mac_energy(op: OpNode, chunk: Chunk, table: EnergyTable) -> dict[str, float]:
    a, w, acc = chunk.act_bits, chunk.weight_bits, chunk.acc_bits
    if chunk.pe_type in ("mac", "sparse_attention"):      # sparse lines are MAC lines
        return {"mult": table.op_pj("mult", max(a, w)), "add": table.op_pj("add", acc)}
    if chunk.pe_type == "shift":
        return {"shift": table.op_pj("shift", a), "add": table.op_pj("add", acc)}
    return {"add": table.op_pj("add", a) + table.op_pj("add", acc), "abs": table.op_pj("abs", a)}


@dataclass(frozen=True)
class CodecCost:
    """An op's fused encoder/decoder (``codec_macs``): a small dense GEMM streamed over every PE of
    the engine that runs it at full utilisation. On the op's own chunk it runs after the op; on the
    chunk's ``codec_engine`` it runs beside it, one group's worth (a head, an image) unoverlapped."""

    cycles: int = 0
    energy: dict[str, float] = field(default_factory=dict)
    overlapped: bool = False

    def end(self, op_end, groups: int):
        """The op's end cycle with its codec (works on numpy arrays of candidates too)."""
        if not self.cycles:
            return op_end
        if not self.overlapped:
            return op_end + self.cycles
        return np.maximum(op_end, self.cycles) + self.cycles / groups

    @property
    def serial_cycles(self) -> int:
        """Cycles the codec adds to the op's own compute (0 when it has an engine of its own)."""
        return 0 if self.overlapped else self.cycles


def codec_cost(op: OpNode, chunk: Chunk, accel: Accelerator, table: EnergyTable) -> CodecCost:
    if not op.codec_macs:
        return CodecCost()
    engine = accel.chunk(chunk.codec_engine) if chunk.codec_engine else chunk
    energy = {k: v * op.codec_macs for k, v in _per_mac_energy(op, engine, table).items()}
    energy["rf"] = energy.get("rf", 0.0) + op.codec_macs * (engine.act_bits + engine.weight_bits + 2 * engine.acc_bits) \
        * table.bit_pj("rf", engine.rf_bytes_per_pe)
    return CodecCost(-(-op.codec_macs // engine.pes), energy, engine is not chunk)


def _leakage_pj(accel: Accelerator, table: EnergyTable, cycles: float) -> float:
    pes = sum(c.pes for c in accel.chunks)
    sram_kb = accel.global_buffer.size_kb + sum(c.local_buffer_kb for c in accel.chunks)
    return cycles * (pes * table.static_pj("leakage_pe") + sram_kb * table.static_pj("leakage_sram"))


def gemm_cost(op: OpNode, chunk: Chunk, accel: Accelerator, mp: OpMapping) -> OpCost:
    validate_mapping(op, chunk, accel, mp)
    table = load_table(accel.energy_table)
    G, P, K, M = op.gemm
    pb, kb, mb = mp.gb_tile
    ab, wb, ob, psb = op.act_bits / 8, op.weight_bits / 8, op.out_bits / 8 * op.out_scale, chunk.acc_bits / 8
    bits = (ab, wb, ob, psb)
    bw_array = _gb_to_array_bandwidth(accel, chunk)
    bw_dram = accel.dram_bytes_per_cycle
    trips = {"p": math.ceil(P / pb), "k": math.ceil(K / kb), "m": math.ceil(M / mb)}
    tiles = {"p": pb, "k": kb, "m": mb}
    totals = {"p": P, "k": K, "m": M}
    order = mp.loop_order
    dram_r = dram_w = 0.0
    to_array = from_array = psum_read = 0.0
    items = []
    prev = None
    compute = array_transfer = 0.0
    tile_macs = 0
    ranges = [range(trips[d]) for d in order]
    for idx in product(*ranges):
        ix = dict(zip(order, idx))
        p, k, m = (_size(ix[d], tiles[d], totals[d]) for d in "pkm")
        load = 0.0
        if prev is None or (prev["p"], prev["k"]) != (ix["p"], ix["k"]):
            load += _input_elems(op, p, k) * ab
        if prev is None or (prev["k"], prev["m"]) != (ix["k"], ix["m"]):
            load += k * m * wb
        store = 0.0
        if prev is not None and (prev["p"], prev["m"]) != (ix["p"], ix["m"]):
            pp, pm = _size(prev["p"], pb, P), _size(prev["m"], mb, M)
            store = pp * pm * (ob if prev["k"] == trips["k"] - 1 else psb)
        if ix["k"] > 0 and (prev is None or (prev["p"], prev["m"]) != (ix["p"], ix["m"])):
            load += p * m * psb                                   # partial sums of an earlier visit
        final = ix["k"] == trips["k"] - 1 and kb == K
        cyc, comp, tr, moved = _block_model(chunk, bw_array, mp.dataflow, (p, k, m), mp.array_tile, bits, final)
        compute += comp
        array_transfer += tr
        tile_macs += moved["macs"]
        to_array += moved["to_array"]
        from_array += moved["from_array"]
        psum_read += moved["psum_read"]
        items.append(((load + store) / bw_dram, cyc))
        dram_r += load
        dram_w += store
        prev = ix
    last_store = _size(prev["p"], pb, P) * _size(prev["m"], mb, M) * ob
    dram_w += last_store
    state = run_pipeline([(items, G)], tail_transfer=last_store / bw_dram)
    codec = codec_cost(op, chunk, accel, table)
    end = codec.end(state.end, G)
    # everything above is per group; scale the byte counts
    dram_r, dram_w = dram_r * G, dram_w * G
    to_array, from_array, psum_read = to_array * G, from_array * G, psum_read * G
    hw_macs = tile_macs * G            # MAC steps of the tiles actually executed
    compute, array_transfer = compute * G, array_transfer * G
    acc_bits = chunk.acc_bits
    if mp.dataflow == "os":
        rf_bits = hw_macs * (chunk.act_bits + chunk.weight_bits + 2 * acc_bits)
        noc_bits = hw_macs * (chunk.act_bits + chunk.weight_bits)
    else:
        rf_bits = hw_macs * (chunk.act_bits + chunk.weight_bits + acc_bits)
        noc_bits = hw_macs * (chunk.act_bits + acc_bits)
    gb_read = to_array + psum_read + dram_w          # operands to the array; outputs leaving for DRAM
    gb_write = dram_r + from_array                   # arrivals from DRAM; results from the array
    lb_read = lb_write = 0.0
    if chunk.local_buffer_bytes:
        lb_write, lb_read = to_array + psum_read, to_array + psum_read   # staged operands
        lb_write += from_array
        lb_read += from_array
    accesses = {"dram_read": dram_r, "dram_write": dram_w, "gb_read": gb_read, "gb_write": gb_write,
                "lb_read": lb_read, "lb_write": lb_write, "rf_bits": rf_bits, "noc_bits": noc_bits}
    energy = dict.fromkeys(ENERGY_KEYS, 0.0)
    for action, pj in _per_mac_energy(op, chunk, table).items():
        energy[action] += pj * hw_macs
    energy["rf"] = rf_bits * table.bit_pj("rf", chunk.rf_bytes_per_pe)
    energy["noc"] = noc_bits * table.bit_pj("noc")
    gb_cap = accel.global_buffer.size_bytes / accel.global_buffer.banks    # one bank per access
    energy["global_buffer"] = 8 * (gb_read * table.bit_pj("sram_read", gb_cap) + gb_write * table.bit_pj("sram_write", gb_cap))
    if chunk.local_buffer_bytes:
        lb_cap = chunk.local_buffer_bytes
        energy["local_buffer"] = 8 * (lb_read * table.bit_pj("sram_read", lb_cap) + lb_write * table.bit_pj("sram_write", lb_cap))
    energy["dram"] = 8 * (dram_r + dram_w) * table.bit_pj(f"dram_{accel.dram.kind}")
    energy["leakage"] = _leakage_pj(accel, table, end)
    for key, pj in codec.energy.items():
        energy[key] += pj
    return OpCost(op=op.name, kind=op.kind, chunk=chunk.name, dataflow=mp.dataflow, cycles=end,
                  compute_cycles=compute + codec.serial_cycles, transfer_cycles=max(state.transfer_busy, array_transfer),
                  macs=op.macs, hw_macs=hw_macs,
                  pes=chunk.pes, accesses=accesses, energy_pj=energy)


def vector_cost(op: OpNode, chunk: Chunk, accel: Accelerator, mp: OpMapping) -> OpCost:
    validate_mapping(op, chunk, accel, mp)
    table = load_table(accel.energy_table)
    counts = op.counts()
    lane_ops = sum(getattr(counts, name) * w for name, w in LANE_OPS.items())
    in_b, _, out_b = op.bytes()
    outs = op.elements()[2]
    block = min(mp.gb_tile[0], outs)
    full, rem = divmod(outs, block)
    items = []
    for size, count in ((block, full), (rem, 1)):
        if count and size:
            frac = size / outs
            items.append(([((in_b + out_b) * frac / accel.dram_bytes_per_cycle,
                             math.ceil(lane_ops * frac / chunk.vector_lanes))], count))
    state = run_pipeline(items)
    accesses = dict.fromkeys(ACCESS_KEYS, 0.0)
    accesses.update(dram_read=in_b, dram_write=out_b, gb_read=in_b + out_b, gb_write=in_b + out_b)
    energy = dict.fromkeys(ENERGY_KEYS, 0.0)
    gb_cap = accel.global_buffer.size_bytes / accel.global_buffer.banks
    energy["vector"] = lane_ops * table.op_pj("vector_op", 16)
    energy["global_buffer"] = 8 * (in_b + out_b) * (table.bit_pj("sram_read", gb_cap) + table.bit_pj("sram_write", gb_cap))
    energy["dram"] = 8 * (in_b + out_b) * table.bit_pj(f"dram_{accel.dram.kind}")
    energy["leakage"] = _leakage_pj(accel, table, state.end)
    return OpCost(op=op.name, kind=op.kind, chunk=chunk.name, dataflow="vector", cycles=state.end,
                  compute_cycles=state.compute_busy, transfer_cycles=state.transfer_busy, macs=0, hw_macs=0,
                  pes=chunk.vector_lanes, accesses=accesses, energy_pj=energy, lane_ops=lane_ops)


def csr_cost(op: OpNode, chunk: Chunk, accel: Accelerator, mp: OpMapping) -> OpCost:
    """A masked product on a sparse_attention chunk's lines (:func:`masked_matmul_timing`).

    Per head (group), in order: its operands, CSR metadata and column permutation come from DRAM
    and its output goes back (dense blocks at full size, the sparse rest as nonzeros), double-
    buffered against the compute of the heads; with several engines the heads' compute shares are
    scaled so that they sum to the partitioned latency (the slowest engine).
    """
    validate_mapping(op, chunk, accel, mp)
    table = load_table(accel.energy_table)
    G, P, K, M = op.gemm
    sddmm = op.mask_on == "out"
    head_dim = K if sddmm else M
    pool = SparseEngineConfig(chunk.rows // chunk.engines, chunk.cols, chunk.rows_per_cycle, chunk.acc_bits)
    timing = masked_matmul_timing(op.group_masks(), "sddmm" if sddmm else "spmm", head_dim, pool,
                                  chunk.engines, chunk.polarize_threshold, op.act_bits)
    ab, ob = op.act_bits / 8, op.out_bits / 8 * op.out_scale
    per_head_in, per_head_out = [], []
    for computed, meta in zip(timing.head_computed, timing.head_metadata):
        if sddmm:       # Q and K rows in (compressed by in_scale when a decoder restores them); the scores out
            per_head_in.append((P * K + K * M) * ab * op.in_scale + meta)
            per_head_out.append(computed * ob)
        else:           # the computed probabilities and V in; the output rows out
            per_head_in.append((computed + K * M) * ab * op.in_scale + meta)
            per_head_out.append(P * M * ob)
    total = sum(timing.head_cycles)
    scale = timing.latency / total if total else 0.0
    bw = accel.dram_bytes_per_cycle
    items = [((per_head_in[h] + (per_head_out[h - 1] if h else 0.0)) / bw, timing.head_cycles[h] * scale)
             for h in range(G)]
    state = run_pipeline([(items, 1)], tail_transfer=per_head_out[-1] / bw)
    codec = codec_cost(op, chunk, accel, table)
    end = codec.end(state.end, G)
    dram_r, dram_w = sum(per_head_in), sum(per_head_out)
    hw_macs = timing.hw_macs
    reads = timing.operand_read_bytes + timing.metadata_bytes + (timing.computed * ab if not sddmm else 0.0)
    accesses = {"dram_read": dram_r, "dram_write": dram_w, "gb_read": dram_r + dram_w, "gb_write": dram_r + dram_w,
                "lb_read": reads if chunk.local_buffer_bytes else 0.0,
                "lb_write": dram_r + dram_w if chunk.local_buffer_bytes else 0.0,
                "rf_bits": hw_macs * (chunk.act_bits + chunk.weight_bits + 2 * chunk.acc_bits),
                "noc_bits": 0.0}       # the lines read their operand ports directly
    energy = dict.fromkeys(ENERGY_KEYS, 0.0)
    for action, pj in _per_mac_energy(op, chunk, table).items():
        energy[action] += pj * hw_macs
    energy["rf"] = accesses["rf_bits"] * table.bit_pj("rf", chunk.rf_bytes_per_pe)
    gb_cap = accel.global_buffer.size_bytes / accel.global_buffer.banks
    energy["global_buffer"] = 8 * (accesses["gb_read"] * table.bit_pj("sram_read", gb_cap)
                                   + accesses["gb_write"] * table.bit_pj("sram_write", gb_cap))
    if chunk.local_buffer_bytes:
        lb_cap = chunk.local_buffer_bytes
        energy["local_buffer"] = 8 * (accesses["lb_read"] * table.bit_pj("sram_read", lb_cap)
                                      + accesses["lb_write"] * table.bit_pj("sram_write", lb_cap))
    energy["dram"] = 8 * (dram_r + dram_w) * table.bit_pj(f"dram_{accel.dram.kind}")
    energy["leakage"] = _leakage_pj(accel, table, end)
    for key, pj in codec.energy.items():
        energy[key] += pj
    return OpCost(op=op.name, kind=op.kind, chunk=chunk.name, dataflow=CSR_DATAFLOW, cycles=end,
                  compute_cycles=timing.latency + codec.serial_cycles, transfer_cycles=state.transfer_busy, macs=op.macs,
                  hw_macs=hw_macs, pes=chunk.pes, accesses=accesses, energy_pj=energy)


def op_cost(op: OpNode, accel: Accelerator, mp: OpMapping) -> OpCost:
    """Cycles, accesses and energy of ``op`` under mapping ``mp`` (raises MappingError if invalid)."""
    chunk = accel.chunk(mp.chunk)
    if mp.dataflow == CSR_DATAFLOW:
        return csr_cost(op, chunk, accel, mp)
    return gemm_cost(op, chunk, accel, mp) if op.is_gemm else vector_cost(op, chunk, accel, mp)
