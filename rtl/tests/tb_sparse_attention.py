"""cocotb testbench for rtl/sparse_sddmm.v and rtl/sparse_spmm.v, the ViTCoD sparser engine
(runs inside the simulator; launched by test_sparse_attention_rtl.py).

Every run (one CSR mask, one head dim d) is checked against hw_models.engines.sparse_attention:
  * timing: cycles from the start edge to the done edge == sddmm_cycles / spmm_cycles (the closed
    form) == SDDMMStepper / SpMMStepper (the register-level model) exactly; done is high for exactly
    one cycle; on watched runs also every wave's issue edge == wave_issue_edges(...) and every
    output-buffer write edge == the stepper's write_edges (SpMM: one per row slice, L ports);
  * numerics: the score buffer (CSR order, lanes past nnz read 0) == reference_sddmm, the output
    buffer == reference_spmm accumulated onto the buffer's previous contents (out_init), ACC_W-bit
    two's-complement wrap; rows >= rows and lanes >= d of O are never changed.

Operands: Q/K (or V) are loaded once per session for the largest matrix (max_rows/max_cols x dmax,
the padding lanes up to CMAX*W filled with junk the RTL must mask) and reloaded now and then with
extreme values; each run picks rows <= max_rows, cols <= max_cols, d <= dmax.

Options arrive as JSON in $SPARSE_ATTENTION_TB: {"hdl": SparseHdlConfig fields, "masks": N,
"seed": S, "watch_every": K, ...}.
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

from tb_common import TimingMismatch, pack, unpack

from hw_models.engines.pe_array import wrap
from hw_models.engines.sparse_attention import (CSR, SDDMMStepper, SparseEngineConfig, SpMMStepper,
                                                reference_sddmm, reference_spmm, sddmm_cycles,
                                                spmm_cycles, wave_issue_edges)

OPTS = json.loads(os.environ.get("SPARSE_ATTENTION_TB", "{}"))
HDL = OPTS.get("hdl", {})
PERIOD_NS = 10
IN_W = 8
VAL_W = 8


def late_model(cfg, mask, head_dim, unit="sddmm"):
    """A deliberately wrong timing model (one cycle too many): the checker must reject the RTL."""
    return (sddmm_cycles if unit == "sddmm" else spmm_cycles)(cfg, mask, head_dim) + 1


# ------------------------------------------------------------------------------------------ masks


def random_mask(rng, rows: int, cols: int, kind: str) -> np.ndarray:
    """A boolean rows x cols mask of one of the named kinds."""
    if kind == "empty":
        return np.zeros((rows, cols), bool)
    if kind == "dense":
        return np.ones((rows, cols), bool)
    if kind.startswith("p"):                               # "p0.7": density 1 - 0.7 (70 % sparse)
        return rng.random((rows, cols)) >= float(kind[1:])
    if kind == "one_per_row":
        m = np.zeros((rows, cols), bool)
        m[np.arange(rows), rng.integers(0, cols, rows)] = True
        return m
    if kind == "single":
        m = np.zeros((rows, cols), bool)
        m[rng.integers(rows), rng.integers(cols)] = True
        return m
    if kind == "empty_rows":                               # half the rows empty, the rest ~50 %
        m = rng.random((rows, cols)) < 0.5
        m[rng.random(rows) < 0.5] = False
        return m
    if kind == "long_rows":                                # a few full rows between sparse ones
        m = rng.random((rows, cols)) < 0.1
        m[rng.random(rows) < 0.3] = True
        return m
    if kind == "last_row":                                 # only the last row: the walker's end
        m = np.zeros((rows, cols), bool)
        m[-1] = rng.random(cols) < 0.7
        m[-1, rng.integers(cols)] = True
        return m
    if kind == "first_row":                                # trailing empty rows after row 0
        m = np.zeros((rows, cols), bool)
        m[0] = rng.random(cols) < 0.7
        m[0, rng.integers(cols)] = True
        return m
    if kind == "diagonal":
        m = np.zeros((rows, cols), bool)
        i = np.arange(min(rows, cols))
        m[i, i] = True
        return m
    if kind == "global_cols":                              # a few dense columns (polarised head)
        m = rng.random((rows, cols)) < 0.05
        m[:, rng.integers(0, cols, max(1, cols // 4))] = True
        return m
    raise ValueError(kind)


MASK_KINDS = (["p0.0", "p0.5", "p0.7", "p0.9", "p0.99", "p0.3", "p0.8", "p0.95"] +
              ["empty", "dense", "one_per_row", "single", "empty_rows", "long_rows", "last_row",
               "first_row", "diagonal", "global_cols"])
CHECKER_KINDS = ("p0.5", "p0.9", "dense", "empty", "one_per_row", "p0.7")


# ------------------------------------------------------------------------------------------ bench


class SparseTB:
    def __init__(self, dut, hdl: dict):
        self.dut = dut
        self.unit = hdl["unit"]
        self.L, self.W, self.R = hdl["lines"], hdl["macs"], hdl["rows_per_cycle"]
        self.dmax, self.max_rows, self.max_cols = hdl["dmax"], hdl["max_rows"], hdl["max_cols"]
        self.nnz_cap = hdl.get("max_nnz") or self.max_rows * self.max_cols
        self.acc_w = hdl["acc_w"]
        self.val_signed = bool(hdl.get("val_signed", 0))
        self.cfg = SparseEngineConfig(self.L, self.W, self.R, self.acc_w)
        self.cmax = -(-self.dmax // self.W)
        self.period = None
        self.runs = 0
        self.sim_cycles_run = 0         # start->done cycles of all runs
        # operands (int64, padded to CMAX*W columns with junk)
        self.a = self.b = None          # SDDMM: Q (max_rows), K (max_cols); SpMM: b = V
        self.o_model: np.ndarray | None = None

    # ------------------------------------------------------------------ setup
    async def start(self):
        dut = self.dut
        Clock(dut.clk, PERIOD_NS, unit="ns").start()
        ports = ["rst", "start", "rows", "nnz", "d", "ptr_we", "ptr_waddr", "ptr_wdata", "idx_we",
                 "idx_waddr", "idx_wdata"]
        if self.unit == "sddmm":
            ports += ["q_we", "q_waddr", "q_wdata", "k_we", "k_waddr", "k_wdata", "s_re", "s_raddr"]
        else:
            ports += ["val_we", "val_waddr", "val_wdata", "v_we", "v_waddr", "v_wdata", "o_we",
                      "o_waddr", "o_wdata", "o_re", "o_raddr"]
        for name in ports:
            getattr(dut, name).value = 0
        dut.rst.value = 1
        for _ in range(3):
            await FallingEdge(dut.clk)
        dut.rst.value = 0
        await FallingEdge(dut.clk)
        t0 = get_sim_time("step")
        await FallingEdge(dut.clk)
        self.period = get_sim_time("step") - t0

    async def write_words(self, streams: list[tuple[str, list[int]]]):
        """Write several buffers in parallel: (port prefix, words) -> word i at address i."""
        dut = self.dut
        n = max((len(w) for _, w in streams), default=0)
        for i in range(n):
            for prefix, words in streams:
                if i < len(words):
                    getattr(dut, f"{prefix}_we").value = 1
                    getattr(dut, f"{prefix}_waddr").value = i
                    getattr(dut, f"{prefix}_wdata").value = words[i]
                elif i == len(words):
                    getattr(dut, f"{prefix}_we").value = 0
            await FallingEdge(dut.clk)
        for prefix, _ in streams:
            getattr(dut, f"{prefix}_we").value = 0

    def operand_words(self, x: np.ndarray) -> list[int]:
        """Buffer words of a (n, CMAX*W) operand: word i*CMAX + c = x[i, c*W .. c*W+W-1]."""
        W = self.W
        return [pack(x[i, c * W:(c + 1) * W], IN_W) for i in range(x.shape[0]) for c in range(self.cmax)]

    def random_operand(self, rng, n: int, style: str = "random") -> np.ndarray:
        width = self.cmax * self.W
        if style == "random":
            x = rng.integers(-128, 128, (n, width))
        elif style == "extremes":
            x = rng.choice([-128, 127, 0, -1, 1], (n, width))
        elif style == "most_negative":
            x = np.full((n, width), -128)
        else:
            raise ValueError(style)
        x[:, self.dmax:] = rng.integers(-128, 128, (n, width - self.dmax))   # junk the RTL masks
        return x.astype(np.int64)

    async def load_operands(self, rng, style: str = "random"):
        if self.unit == "sddmm":
            self.a = self.random_operand(rng, self.max_rows, style)
            self.b = self.random_operand(rng, self.max_cols, style)
            await self.write_words([("q", self.operand_words(self.a)), ("k", self.operand_words(self.b))])
        else:
            self.b = self.random_operand(rng, self.max_cols, style)
            streams = [("v", self.operand_words(self.b))]
            if self.o_model is None:                 # random initial O (the out_init of run 1)
                lim = 1 << (self.acc_w - 1)
                self.o_model = rng.integers(-lim, lim, (self.max_rows, self.cmax * self.W))
                streams.append(("o", [pack(self.o_model[i, c * self.W:(c + 1) * self.W], self.acc_w)
                                      for i in range(self.max_rows) for c in range(self.cmax)]))
            await self.write_words(streams)

    def random_values(self, rng, nnz: int, style: str = "random") -> np.ndarray:
        lo, hi = (-128, 127) if self.val_signed else (0, 255)
        if style == "extremes":
            return rng.choice([lo, hi, 0, 1, hi - 1], nnz).astype(np.int64)
        return rng.integers(lo, hi + 1, nnz).astype(np.int64)

    async def load_mask(self, csr: CSR, values: np.ndarray | None = None):
        """Pointer words (R pointers each, row_ptr[1..rows]), index words (L columns), value words."""
        R, L = self.R, self.L
        ptr = [int(p) for p in csr.row_ptr[1:]]
        ptr += [0] * (-len(ptr) % R)                  # lanes past rows: any value (0 here)
        pw = (self.nnz_cap).bit_length()
        ptr_words = [pack(ptr[i:i + R], pw) for i in range(0, len(ptr), R)]
        cw = max(1, (self.max_cols - 1).bit_length())
        col = [int(c) for c in csr.col_idx]
        col += [0] * (-len(col) % L)
        streams = [("ptr", ptr_words), ("idx", [pack(col[i:i + L], cw) for i in range(0, len(col), L)])]
        if self.unit == "spmm":
            v = [int(x) for x in values] + [0] * (-len(values) % L)
            streams.append(("val", [pack(v[i:i + L], VAL_W) for i in range(0, len(v), L)]))
        await self.write_words(streams)

    # ------------------------------------------------------------------ one run
    async def run(self, rows: int, nnz: int, d: int, limit: int, watch: bool = False):
        """Pulse start; return (cycles start->done, issue edges, write edges) (edges None unless
        watched)."""
        dut = self.dut
        dut.rows.value, dut.nnz.value, dut.d.value = rows, nnz, d
        dut.start.value = 1
        await RisingEdge(dut.clk)                        # edge 0: start sampled high
        t0 = get_sim_time("step")
        await FallingEdge(dut.clk)
        dut.start.value = 0
        issues: list[int] = []
        writes: list[int] = []
        monitor = None
        if watch:
            wsig = dut.pend if self.unit == "sddmm" else dut.o_wen

            async def mon():
                iss = dut.issue
                while True:                              # high mid-cycle -> happens at the next edge
                    edge = round((get_sim_time("step") - t0) / self.period + 0.5)
                    if int(iss.value):
                        issues.append(edge)
                    n = bin(int(wsig.value)).count("1")
                    writes.extend([edge] * n)
                    await FallingEdge(dut.clk)
            monitor = cocotb.start_soon(mon())
        await with_timeout(RisingEdge(dut.done), limit * PERIOD_NS, "ns")
        cycles = round((get_sim_time("step") - t0) / self.period)
        await FallingEdge(dut.clk)
        assert int(dut.done.value) == 1
        if monitor is not None:
            monitor.cancel()
        await FallingEdge(dut.clk)
        assert int(dut.done.value) == 0, "done must be high for exactly one cycle"
        assert int(dut.busy.value) == 0, "busy after done"
        self.runs += 1
        self.sim_cycles_run += cycles
        return cycles, (issues if watch else None), (writes if watch else None)

    async def read_scores(self, words: int) -> list[int]:
        dut = self.dut
        out: list[int] = []
        for w in range(words):
            dut.s_re.value, dut.s_raddr.value = 1, w
            await FallingEdge(dut.clk)
            out += unpack(dut.s_rdata.value.to_unsigned(), self.L, self.acc_w)
        dut.s_re.value = 0
        return out

    async def read_o(self, rows: int) -> np.ndarray:
        dut = self.dut
        W, C = self.W, self.cmax
        out = np.zeros((rows, C * W), np.int64)
        for i in range(rows):
            for c in range(C):
                dut.o_re.value, dut.o_raddr.value = 1, i * C + c
                await FallingEdge(dut.clk)
                out[i, c * W:(c + 1) * W] = unpack(dut.o_rdata.value.to_unsigned(), W, self.acc_w)
        dut.o_re.value = 0
        return out

    async def check(self, mask: np.ndarray, d: int, rng, watch: bool = False, model=None,
                    check_values: bool = True, value_style: str = "random", wrong_ref: bool = False):
        """Load one mask, run it with head dim d and check timing (+ edges) and numerics.
        ``wrong_ref`` (test of the test) compares against a reference with one value off by one."""
        csr = CSR.from_dense(mask)
        rows, cols, nnz = csr.rows, csr.cols, csr.nnz
        assert rows <= self.max_rows and cols <= self.max_cols and nnz <= self.nnz_cap and 1 <= d <= self.dmax
        cfg, unit = self.cfg, self.unit
        what = (f"{unit} {rows}x{cols} nnz={nnz} d={d} on L={self.L} W={self.W} R={self.R} "
                f"(row_ptr={csr.row_ptr.tolist()})")
        values = self.random_values(rng, nnz, value_style) if unit == "spmm" else None
        await self.load_mask(csr, values)
        closed = (sddmm_cycles if unit == "sddmm" else spmm_cycles)(cfg, csr, d)
        if unit == "sddmm":
            step = SDDMMStepper(cfg).run(self.a[:rows, :d], self.b[:cols, :d], csr)
        else:
            step = SpMMStepper(cfg).run(values, csr, self.b[:cols, :d], out_init=self.o_model[:rows, :d])
        assert step.cycles == closed, \
            f"the Python models disagree for {what}: stepper {step.cycles}, closed form {closed}"
        cycles, issues, writes = await self.run(rows, nnz, d, limit=4 * closed + 40, watch=watch)
        expected = closed if model is None else model(cfg, csr, d, unit)
        if OPTS.get("log_runs"):
            self.dut._log.info("%s: %d cycles", what, cycles)
        if cycles != expected:
            raise TimingMismatch(cycles, expected, what)
        if watch:
            want_issue = [int(s) for s in wave_issue_edges(cfg, csr, d)]
            assert issues == want_issue, f"issue edges {issues} != {want_issue} for {what}"
            assert issues == list(step.issue_edges), f"issue edges {issues} != stepper {step.issue_edges}"
            assert sorted(writes) == sorted(step.write_edges), \
                f"write edges {writes} != stepper {step.write_edges} for {what}"
        if not check_values:
            return cycles
        if unit == "sddmm":
            want = reference_sddmm(self.a[:rows, :d], self.b[:cols, :d], csr, self.acc_w)
            assert np.array_equal(step.output, want)
            if wrong_ref and nnz:
                want = want.copy()
                want[int(rng.integers(nnz))] += 1
            words = -(-nnz // self.L)
            got = np.array(await self.read_scores(words), np.int64)
            pad = got[nnz:]
            got = got[:nnz]
            if not np.array_equal(got, want):
                bad = np.nonzero(got != want)[0][:5]
                raise AssertionError(f"numerics mismatch for {what}: first bad positions {bad.tolist()}; "
                                     f"got {got[bad].tolist()}, want {want[bad].tolist()}")
            assert not pad.any(), f"score lanes past nnz are not 0: {pad.tolist()} ({what})"
        else:
            want = reference_spmm(values, csr, self.b[:cols, :d], self.acc_w,
                                  out_init=self.o_model[:rows, :d])
            assert np.array_equal(step.output, want)
            self.o_model[:rows, :d] = want
            got = await self.read_o(rows)
            exp = self.o_model[:rows].copy()
            if wrong_ref:
                exp[int(rng.integers(rows)), int(rng.integers(d))] += 1
            if not np.array_equal(got, exp):
                bad = np.argwhere(got != exp)[:5]
                raise AssertionError(f"numerics mismatch for {what}: first bad (row, col) {bad.tolist()}; "
                                     f"got {[int(got[tuple(b)]) for b in bad]}, "
                                     f"want {[int(exp[tuple(b)]) for b in bad]}")
        return cycles

    async def check_all_o(self):
        """Every output word (rows never touched and lanes >= dmax included) equals the model."""
        got = await self.read_o(self.max_rows)
        assert np.array_equal(got, wrap(self.o_model, self.acc_w)), "output buffer differs from the model"

    # ------------------------------------------------------------------ random sessions
    def cap(self, mask: np.ndarray) -> np.ndarray:
        """Keep at most nnz_cap nonzeros (the first ones in CSR order)."""
        m = np.array(mask, bool)
        if m.sum() > self.nnz_cap:
            m.flat[np.flatnonzero(m)[self.nnz_cap:]] = False
        return m

    def random_shape(self, rng) -> tuple[int, int, int]:
        def pick(hi):
            r = rng.random()
            if r < 0.1:
                return 1
            if r < 0.5:
                return hi
            return int(rng.integers(1, hi + 1))
        rows, cols, d = pick(self.max_rows), pick(self.max_cols), pick(self.dmax)
        return rows, cols, d

    async def random_session(self, rng, masks: int, watch_every: int = 0):
        for i in range(masks):
            if i and i % 40 == 0:
                await self.load_operands(rng, ("extremes", "most_negative", "random")[(i // 40) % 3])
            rows, cols, d = self.random_shape(rng)
            kind = MASK_KINDS[int(rng.integers(len(MASK_KINDS)))] if i >= len(MASK_KINDS) else MASK_KINDS[i]
            mask = self.cap(random_mask(rng, rows, cols, kind))
            watch = bool(watch_every) and i % watch_every == 0
            await self.check(mask, d, rng, watch=watch, value_style="extremes" if i % 7 == 3 else "random")


async def make_tb(dut, rng=None, style: str = "random") -> SparseTB:
    tb = SparseTB(dut, HDL)
    await tb.start()
    await tb.load_operands(rng if rng is not None else np.random.default_rng(0), style)
    return tb


def report(dut, tb: SparseTB, t_wall: float, t_sim0: int):
    cycles = (get_sim_time("step") - t_sim0) / tb.period
    dut._log.info("%d runs, %d simulated cycles (%d start->done) in %.2f s wall (%.0f cycles/s)",
                  tb.runs, cycles, tb.sim_cycles_run, t_wall, cycles / max(t_wall, 1e-9))
    out = OPTS.get("bench_out")
    if out:
        with open(out, "w") as f:
            json.dump({"cycles": cycles, "run_cycles": tb.sim_cycles_run, "wall_s": t_wall,
                       "runs": tb.runs}, f)


# ====================================================================== cocotb tests


@cocotb.test()
async def random_masks(dut):
    """Random masks at many sparsities and shapes, random d: exact timing and numerics."""
    rng = np.random.default_rng(OPTS.get("seed", 1))
    tb = await make_tb(dut, rng)
    t_wall, t_sim = time.perf_counter(), get_sim_time("step")
    await tb.random_session(rng, OPTS.get("masks", 30), watch_every=OPTS.get("watch_every", 3))
    if tb.unit == "spmm":
        await tb.check_all_o()
    report(dut, tb, time.perf_counter() - t_wall, t_sim)


@cocotb.test()
async def edge_cases(dut):
    """Empty mask (cycles = 1), a single nonzero, fully dense at the largest size, one nonzero per
    row, empty rows, rows spanning several waves, d = 1 / dmax / not a multiple of W, the last row
    only (the walker's end), the first row only (trailing rows never walked), accumulator wrap
    with most-negative operands, and back-to-back runs of one mask."""
    rng = np.random.default_rng(OPTS.get("seed", 1) + 1)
    tb = await make_tb(dut, rng, "most_negative")
    R, C, D = tb.max_rows, tb.max_cols, tb.dmax
    ds = sorted({1, D, max(1, D - 1), min(D, tb.W + 1), min(D, 2 * tb.W - 1)})
    full = tb.cap(np.ones((R, C), bool))
    cases = [np.zeros((R, C), bool), np.zeros((1, 1), bool), np.ones((1, 1), bool), full,
             random_mask(rng, R, C, "one_per_row"), random_mask(rng, R, C, "empty_rows"),
             random_mask(rng, R, C, "long_rows"), random_mask(rng, R, C, "last_row"),
             random_mask(rng, R, C, "first_row"), random_mask(rng, R, C, "single"),
             random_mask(rng, R, C, "diagonal")]
    for mask in map(tb.cap, cases):
        for d in ds:
            await tb.check(mask, d, rng, watch=True, value_style="extremes")
    # most-negative operands and the largest values over a full row: the accumulators wrap
    for mask in (full, tb.cap(random_mask(rng, R, C, "long_rows"))):
        await tb.check(mask, D, rng, watch=True, value_style="extremes")
    # the same mask twice in a row (no state left behind), then a different one
    m = tb.cap(random_mask(rng, R, C, "p0.5"))
    for _ in range(2):
        await tb.check(m, D, rng)
    await tb.load_operands(rng, "random")
    await tb.check(tb.cap(random_mask(rng, R, C, "p0.7")), ds[len(ds) // 2], rng, watch=True)
    if tb.unit == "spmm":
        await tb.check_all_o()


@cocotb.test()
async def checker_catches_wrong_model(dut):
    """Test of the test: against a timing model that is one cycle off, every run must fail."""
    rng = np.random.default_rng(5)
    tb = await make_tb(dut, rng)
    for i in range(6):
        rows, cols, d = tb.random_shape(rng)
        mask = tb.cap(random_mask(rng, rows, cols, CHECKER_KINDS[i]))
        try:
            await tb.check(mask, d, rng, model=late_model, check_values=False)
        except TimingMismatch as err:
            assert err.measured == err.expected - 1, str(err)
        else:
            raise AssertionError("the timing check accepted a model that is one cycle off")


@cocotb.test()
async def checker_catches_wrong_numerics(dut):
    """Test of the test: against a reference with one output value off by one, every run (with a
    nonzero) must fail the numerics check."""
    rng = np.random.default_rng(8)
    tb = await make_tb(dut, rng)
    for i in range(6):
        rows, cols, d = tb.random_shape(rng)
        mask = random_mask(rng, rows, cols, CHECKER_KINDS[i])
        mask[0, 0] = True                      # at least one nonzero (one score to get wrong)
        mask = tb.cap(mask)
        try:
            await tb.check(mask, d, rng, wrong_ref=True)
        except AssertionError as err:
            assert "numerics mismatch" in str(err), str(err)
        else:
            raise AssertionError("the numerics check accepted a wrong reference")


@cocotb.test()
async def late_done_is_caught(dut):
    """Test of the test on a DONE_DELAY=1 build: every run must be reported one cycle late."""
    if not HDL.get("done_delay"):
        return
    rng = np.random.default_rng(6)
    tb = await make_tb(dut, rng)
    for i in range(6):
        rows, cols, d = tb.random_shape(rng)
        mask = tb.cap(random_mask(rng, rows, cols, CHECKER_KINDS[i]))
        try:
            await tb.check(mask, d, rng, check_values=False)
        except TimingMismatch as err:
            assert err.measured == err.expected + 1, str(err)
        else:
            raise AssertionError("the timing check accepted an RTL whose done is one cycle late")


@cocotb.test()
async def throughput(dut):
    """Benchmark only: many random masks, no edge watching (simulated cycles per second)."""
    if not OPTS.get("bench_masks"):
        return
    rng = np.random.default_rng(9)
    tb = await make_tb(dut, rng)
    t_wall, t_sim = time.perf_counter(), get_sim_time("step")
    for _ in range(OPTS["bench_masks"]):
        mask = tb.cap(random_mask(rng, tb.max_rows, tb.max_cols, "p0.7"))
        await tb.check(mask, tb.dmax, rng)
    report(dut, tb, time.perf_counter() - t_wall, t_sim)
