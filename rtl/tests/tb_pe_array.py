"""cocotb testbench for rtl/pe_array.v (runs inside the simulator; launched by test_pe_array_rtl.py).

Every tile is checked twice against hw_models.engines.pe_array:
  * timing: cycles from the start edge to the done edge == tile_cycles(...) exactly, done is high
    for exactly one cycle, and (on a subset of tiles) the output-buffer write edges are the m
    consecutive edges ending with done;
  * numerics: the output rows read back == reference_gemm(...) (two's complement, ACC_W wrap),
    including K-split chains (OS: writeback=0 then clear=0; WS: the output buffer's accumulate).

Options arrive as JSON in $PE_ARRAY_TB: {"hdl": HdlConfig fields, "tiles": N, "seed": S, ...}.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

import cocotb
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import FallingEdge, RisingEdge, with_timeout

from tb_common import TimingMismatch, pack, to_signed

from hw_models.engines.pe_array import ArrayGeometry, reference_gemm, tile_cycles

OPTS = json.loads(os.environ.get("PE_ARRAY_TB", "{}"))
HDL = OPTS.get("hdl", {})
PERIOD_NS = 10


def check_timing(measured: int, geom: ArrayGeometry, dataflow: str, m: int, n: int, k: int,
                 writeback: bool, model=tile_cycles) -> int:
    """Raise TimingMismatch unless ``measured == model(geom, dataflow, m, n, k, writeback)``."""
    expected = model(geom, dataflow, m, n, k, writeback)
    if measured != expected:
        raise TimingMismatch(measured, expected,
                             f"{dataflow.upper()} tile m={m} n={n} k={k} writeback={int(writeback)} "
                             f"on {geom.rows}x{geom.cols} P={geom.pipeline}")
    return expected


def late_model(geom, dataflow, m, n, k, writeback=True):
    """A deliberately wrong timing model (one cycle too many): the checker must reject the RTL."""
    return tile_cycles(geom, dataflow, m, n, k, writeback) + 1


class PEArrayTB:
    def __init__(self, dut, hdl: dict):
        self.dut = dut
        self.pe_type = hdl["pe_type"]
        self.rows, self.cols, self.pipe, self.depth = hdl["rows"], hdl["cols"], hdl["pipe"], hdl["depth"]
        self.in_w, self.w_w, self.acc_w = hdl["in_w"], hdl["w_w"], hdl["acc_w"]
        self.geom = ArrayGeometry(self.rows, self.cols, self.pipe)
        self.period = None
        self.tiles = 0
        self.os_acc: np.ndarray | None = None     # model of PE accumulators [:m, :n] (OS chains)
        self.out_mem: np.ndarray | None = None    # model of output words [:m, :n] (WS chains)

    # ------------------------------------------------------------------ setup
    async def start(self):
        dut = self.dut
        Clock(dut.clk, PERIOD_NS, unit="ns").start()
        for name in ("rst", "start", "ws", "clear", "writeback", "m", "n", "k", "a_we", "a_waddr",
                     "a_wdata", "w_we", "w_waddr", "w_wdata", "o_re", "o_raddr"):
            getattr(dut, name).value = 0
        dut.rst.value = 1
        for _ in range(3):
            await FallingEdge(dut.clk)
        dut.rst.value = 0
        await FallingEdge(dut.clk)
        t0 = get_sim_time("step")
        await FallingEdge(dut.clk)
        self.period = get_sim_time("step") - t0

    # ------------------------------------------------------------------ operands
    def random_operands(self, rng, m: int, k: int, n: int, style: str = "random"):
        lo, hi = -(1 << (self.in_w - 1)), (1 << (self.in_w - 1)) - 1
        if self.pe_type == "shift":
            wlo, whi = 0, (1 << self.w_w) - 1          # {sign, amount} codes
        else:
            wlo, whi = -(1 << (self.w_w - 1)), (1 << (self.w_w - 1)) - 1
        if style == "random":
            a = rng.integers(lo, hi + 1, (m, k))
            w = rng.integers(wlo, whi + 1, (k, n))
        elif style == "extremes":                      # most negative / max / 0 / +-1 mixed
            a = rng.choice([lo, hi, 0, -1, 1], (m, k))
            if self.pe_type == "shift":
                amax = (1 << (self.w_w - 1)) - 1
                sign = 1 << (self.w_w - 1)
                w = rng.choice([amax, sign | amax, 0, sign], (k, n))
            else:
                w = rng.choice([wlo, whi, 0, -1, 1], (k, n))
        elif style == "most_negative":                 # every operand at its most negative value
            a = np.full((m, k), lo)
            w = np.full((k, n), (1 << self.w_w) - 1 if self.pe_type == "shift" else wlo)
        elif style == "overflow":                      # same-sign extremes: the largest |sum|
            a = np.full((m, k), lo)
            if self.pe_type == "mac":
                w = np.full((k, n), wlo)
            elif self.pe_type == "shift":
                w = np.full((k, n), (1 << (self.w_w - 1)) - 1)   # +(a << max amount)
            else:
                w = np.full((k, n), whi)               # -|lo - hi| each
        elif style == "zero":
            a = np.zeros((m, k), np.int64)
            w = np.zeros((k, n), np.int64)
        else:
            raise ValueError(style)
        return a.astype(np.int64), w.astype(np.int64)

    async def load(self, dataflow: str, a: np.ndarray, w: np.ndarray):
        """Write the tile's operand words into the A and W buffers (both ports in parallel)."""
        m, k = a.shape
        if dataflow == "os":   # A word q = column q of A, lane i = A[i, q]
            a_words = [pack(a[:, q], self.in_w) for q in range(k)]
        else:                  # A word p = row p of A, lane i = A[p, i]
            a_words = [pack(a[p, :], self.in_w) for p in range(m)]
        w_words = [pack(w[q, :], self.w_w) for q in range(k)]
        dut = self.dut
        for i in range(max(len(a_words), len(w_words))):
            if i < len(a_words):
                dut.a_we.value, dut.a_waddr.value, dut.a_wdata.value = 1, i, a_words[i]
            else:
                dut.a_we.value = 0
            if i < len(w_words):
                dut.w_we.value, dut.w_waddr.value, dut.w_wdata.value = 1, i, w_words[i]
            else:
                dut.w_we.value = 0
            await FallingEdge(dut.clk)
        dut.a_we.value = 0
        dut.w_we.value = 0

    async def read_out(self, m: int, n: int) -> np.ndarray:
        """Read output words 0..m-1, lanes 0..n-1 (read data one cycle after the address)."""
        dut = self.dut
        out = np.zeros((m, n), np.int64)
        width = self.acc_w
        for r in range(m):
            dut.o_re.value, dut.o_raddr.value = 1, r
            await FallingEdge(dut.clk)               # the edge in between latched word r
            val = dut.o_rdata.value
            try:
                word = val.to_unsigned()
                out[r] = [to_signed((word >> (j * width)) & ((1 << width) - 1), width) for j in range(n)]
            except ValueError:             # X/Z in lanes >= n (never written) is fine
                s = str(val)
                top = len(s)
                for j in range(n):
                    seg = s[top - (j + 1) * width: top - j * width]
                    assert set(seg) <= {"0", "1"}, f"X/Z in output word {r} lane {j}: {seg}"
                    out[r, j] = to_signed(int(seg, 2), width)
        dut.o_re.value = 0
        return out

    # ------------------------------------------------------------------ one tile
    async def run(self, dataflow: str, m: int, n: int, k: int, clear: bool, writeback: bool,
                  watch_writes: bool = False):
        """Pulse start; return (cycles start->done, write edges or None)."""
        dut = self.dut
        dut.ws.value = int(dataflow == "ws")
        dut.clear.value = int(clear)
        dut.writeback.value = int(writeback)
        dut.m.value, dut.n.value, dut.k.value = m, n, k
        dut.start.value = 1
        await RisingEdge(dut.clk)                        # edge 0: start sampled high
        t0 = get_sim_time("step")
        await FallingEdge(dut.clk)
        dut.start.value = 0
        writes: list[int] = []
        monitor = None
        if watch_writes:
            async def watch():
                we = dut.o_we
                while True:                              # we high mid-cycle -> write at next edge
                    if int(we.value):
                        writes.append(round((get_sim_time("step") - t0) / self.period + 0.5))
                    await FallingEdge(dut.clk)
            monitor = cocotb.start_soon(watch())
        limit = 20 * (k * (self.pipe + 1) + 2 * max(m, self.rows) + 2 * self.cols + 10)
        await with_timeout(RisingEdge(dut.done), limit * PERIOD_NS, "ns")
        cycles = round((get_sim_time("step") - t0) / self.period)
        await FallingEdge(dut.clk)
        assert int(dut.done.value) == 1
        if monitor is not None:
            monitor.cancel()
        await FallingEdge(dut.clk)
        assert int(dut.done.value) == 0, "done must be high for exactly one cycle"
        assert int(dut.busy.value) == 0, "busy after done"
        self.tiles += 1
        return cycles, (writes if watch_writes else None)

    async def tile(self, dataflow: str, a: np.ndarray, w: np.ndarray, clear: bool = True,
                   writeback: bool = True, watch_writes: bool = False, model=tile_cycles,
                   check_values: bool = True):
        """Load, run and check one tile; update the chain models and compare the outputs."""
        m, k = a.shape
        n = w.shape[1]
        await self.load(dataflow, a, w)
        cycles, writes = await self.run(dataflow, m, n, k, clear, writeback, watch_writes)
        what = f"{dataflow} m={m} n={n} k={k} clear={int(clear)} writeback={int(writeback)}"
        expected = check_timing(cycles, self.geom, dataflow, m, n, k, writeback or dataflow == "ws",
                                model=model)
        written = dataflow == "ws" or writeback
        if writes is not None:
            want = list(range(expected - m + 1, expected + 1)) if written else []
            assert writes == want, f"write edges {writes} != {want} for {what}"
        if not check_values:
            return cycles
        wbits = self.w_w
        if dataflow == "os":
            init = None if clear else self.os_acc
            self.os_acc = reference_gemm(self.pe_type, a, w, self.acc_w, wbits, acc_init=init)
            want_vals = self.os_acc
        else:
            init = None if clear else self.out_mem
            self.out_mem = reference_gemm(self.pe_type, a, w, self.acc_w, wbits, acc_init=init)
            want_vals = self.out_mem
        if written:
            got = await self.read_out(m, n)
            if not np.array_equal(got, want_vals):
                bad = np.argwhere(got != want_vals)[:5]
                raise AssertionError(f"numerics mismatch for {what}: first bad (row, col) {bad.tolist()}; "
                                     f"got {[int(got[tuple(b)]) for b in bad]}, "
                                     f"want {[int(want_vals[tuple(b)]) for b in bad]}")
        return cycles

    # ------------------------------------------------------------------ random tile shapes
    def random_shape(self, rng, dataflow: str, max_k: int | None = None):
        def pick(hi):                     # bias towards the edges 1 and hi
            r = rng.random()
            if r < 0.15:
                return 1
            if r < 0.35:
                return hi
            return int(rng.integers(1, hi + 1))
        n = pick(self.cols)
        if dataflow == "os":
            return pick(self.rows), n, pick(max_k or self.depth)
        return pick(self.depth), n, pick(self.rows)

    async def random_session(self, rng, tiles: int, watch_every: int = 0):
        """``tiles`` random tiles: OS/WS, random shapes and operand styles, K-split chains."""
        styles = ["random"] * 8 + ["extremes", "most_negative", "overflow", "zero"]
        done = 0
        while done < tiles:
            dataflow = "os" if rng.random() < 0.5 else "ws"
            chain = 1 if rng.random() < 0.7 else int(rng.integers(2, 4))
            m, n, k = self.random_shape(rng, dataflow)
            style = styles[int(rng.integers(len(styles)))]
            for c in range(chain):
                if c:                                     # same m, n; a new K slice
                    k = int(rng.integers(1, (self.depth if dataflow == "os" else self.rows) + 1))
                a, w = self.random_operands(rng, m, k, n, style)
                last = c == chain - 1
                writeback = True if last else bool(rng.random() < 0.3)
                watch = bool(watch_every) and done % watch_every == 0
                await self.tile(dataflow, a, w, clear=(c == 0), writeback=writeback, watch_writes=watch)
                done += 1


async def make_tb(dut) -> PEArrayTB:
    tb = PEArrayTB(dut, HDL)
    await tb.start()
    return tb


def report(dut, tb: PEArrayTB, t_wall: float, t_sim0: int):
    cycles = (get_sim_time("step") - t_sim0) / tb.period
    dut._log.info("%d tiles, %d simulated cycles in %.2f s wall (%.0f cycles/s)", tb.tiles, cycles,
                  t_wall, cycles / max(t_wall, 1e-9))


# ====================================================================== cocotb tests


@cocotb.test()
async def random_tiles(dut):
    """Random OS/WS tiles, shapes, operands and K-split chains: exact timing and numerics."""
    tb = await make_tb(dut)
    rng = np.random.default_rng(OPTS.get("seed", 1))
    t_wall, t_sim = time.perf_counter(), get_sim_time("step")
    await tb.random_session(rng, OPTS.get("tiles", 50), watch_every=OPTS.get("watch_every", 5))
    report(dut, tb, time.perf_counter() - t_wall, t_sim)


@cocotb.test()
async def edge_cases(dut):
    """Smallest and largest tiles, most-negative operands, max shift amount, accumulator wrap,
    an OS K-split (writeback=0 then clear=0) and a WS K-split into the output accumulate port."""
    tb = await make_tb(dut)
    rng = np.random.default_rng(OPTS.get("seed", 1) + 1)
    R, C, D = tb.rows, tb.cols, tb.depth
    for dataflow in ("os", "ws"):
        shapes = [(1, 1, 1), (R, C, D), (R, C, 1), (1, C, R)] if dataflow == "os" else \
                 [(1, 1, 1), (D, C, R), (1, C, R), (D, 1, 1)]
        for (m, n, k) in shapes:
            for style in ("most_negative", "overflow", "extremes", "zero", "random"):
                a, w = tb.random_operands(rng, m, k, n, style)
                await tb.tile(dataflow, a, w, watch_writes=True)
    # accumulator wrap over a long K (OS, and WS through the output accumulate port)
    a, w = tb.random_operands(rng, R, D, C, "overflow")
    await tb.tile("os", a, w, clear=True, writeback=False, watch_writes=True)
    for _ in range(3):
        await tb.tile("os", a, w, clear=False, writeback=False)
    await tb.tile("os", a, w, clear=False, writeback=True, watch_writes=True)
    # OS K-split: writeback=0 then clear=0 (the second tile continues the first's sums)
    a, w = tb.random_operands(rng, R, 2 * D, C, "random")
    await tb.tile("os", a[:, :D], w[:D], clear=True, writeback=False, watch_writes=True)
    await tb.tile("os", a[:, D:], w[D:], clear=False, writeback=True, watch_writes=True)
    full = reference_gemm(tb.pe_type, a, w, tb.acc_w, tb.w_w)
    assert np.array_equal(tb.os_acc, full)
    # WS K-split: rows of the output accumulate in the output buffer
    a, w = tb.random_operands(rng, D, 3 * R, C, "overflow")
    for s in range(3):
        await tb.tile("ws", a[:, s * R:(s + 1) * R], w[s * R:(s + 1) * R], clear=(s == 0),
                      watch_writes=True)
    assert np.array_equal(tb.out_mem, reference_gemm(tb.pe_type, a, w, tb.acc_w, tb.w_w))


@cocotb.test()
async def all_operand_pairs(dut):
    """Every (a, w) operand pair through every PE column: WS tiles with k=1 compute one term each."""
    if not OPTS.get("exhaustive", False):
        return
    tb = await make_tb(dut)
    a_vals = np.arange(-(1 << (tb.in_w - 1)), 1 << (tb.in_w - 1), dtype=np.int64)
    if tb.pe_type == "shift":
        w_vals = np.arange(0, 1 << tb.w_w, dtype=np.int64)
    else:
        w_vals = np.arange(-(1 << (tb.w_w - 1)), 1 << (tb.w_w - 1), dtype=np.int64)
    m, n = tb.depth, tb.cols
    for i in range(0, len(a_vals), m):
        for j in range(0, len(w_vals), n):
            a = a_vals[i:i + m].reshape(-1, 1)
            w = w_vals[j:j + n].reshape(1, -1)
            await tb.tile("ws", a, w)


@cocotb.test()
async def checker_catches_wrong_model(dut):
    """Test of the test: against a timing model that is one cycle off, every tile must fail."""
    tb = await make_tb(dut)
    rng = np.random.default_rng(5)
    for i in range(6):
        dataflow = ("os", "ws")[i % 2]
        m, n, k = tb.random_shape(rng, dataflow)
        a, w = tb.random_operands(rng, m, k, n)
        try:
            await tb.tile(dataflow, a, w, writeback=bool(i % 3), model=late_model, check_values=False)
        except TimingMismatch as err:
            assert err.measured == err.expected - 1, str(err)
        else:
            raise AssertionError("the timing check accepted a model that is one cycle off")


@cocotb.test()
async def late_done_is_caught(dut):
    """Test of the test on a DONE_DELAY=1 build: every tile must be reported one cycle late."""
    if not HDL.get("done_delay"):
        return
    tb = await make_tb(dut)
    rng = np.random.default_rng(6)
    for i in range(8):
        dataflow = ("os", "ws")[i % 2]
        m, n, k = tb.random_shape(rng, dataflow)
        a, w = tb.random_operands(rng, m, k, n)
        try:
            await tb.tile(dataflow, a, w, writeback=bool(i % 3), check_values=False)
        except TimingMismatch as err:
            assert err.measured == err.expected + 1, str(err)
        else:
            raise AssertionError("the timing check accepted an RTL whose done is one cycle late")


@cocotb.test()
async def throughput(dut):
    """Benchmark only: a long stream of tiles without per-cycle Python (see benchmarks/)."""
    if not OPTS.get("bench_tiles"):
        return
    tb = await make_tb(dut)
    rng = np.random.default_rng(9)
    R, C = tb.rows, tb.cols
    a, w = tb.random_operands(rng, R, tb.depth, C)
    await tb.load("os", a, w)
    t_wall, t_sim = time.perf_counter(), get_sim_time("step")
    for i in range(OPTS["bench_tiles"]):
        cycles, _ = await tb.run("os", R, C, tb.depth, clear=True, writeback=True)
        check_timing(cycles, tb.geom, "os", R, C, tb.depth, True)
    wall = time.perf_counter() - t_wall
    sim_cycles = (get_sim_time("step") - t_sim) / tb.period
    report(dut, tb, wall, t_sim)
    out = OPTS.get("bench_out")
    if out:
        with open(out, "w") as f:
            json.dump({"cycles": sim_cycles, "wall_s": wall, "tiles": tb.tiles}, f)
