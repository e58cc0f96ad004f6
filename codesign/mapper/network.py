"""Whole-workload mapping: per-op option search, then chunk assignment at the network level.

1. For every distinct op (ops with equal shape, kind and bit widths share one search) and every
   chunk that can run it, :mod:`codesign.mapper.search` returns a handful of Pareto-optimal
   (cycles, energy) mappings; the default mapping (``hw_models.simulator.default_mapping``) is
   always one more option, so the result is never worse than the default schedule.
2. The network objective is then minimised over those options by coordinate descent from several
   starting points:

   * ``latency`` mode: one frame, ops list-scheduled in dependency order exactly as
     ``hw_models.simulator.simulate`` does; latency = makespan;
   * ``throughput`` mode: frames pipelined across chunks; latency = the frame interval = the
     busiest chunk's total time (``SimResult.throughput_interval_cycles``). Starts include a
     longest-processing-time-first (LPT) assignment; moves are re-assignments of single ops.

   Objectives: ``latency`` (cycles), ``energy`` (pJ per frame), ``edp`` (energy x latency).
3. The chosen mappings are re-scored with :func:`hw_models.cost.op_cost`, whose numbers are stored
   as ``predicted_cycles`` / ``predicted_energy_pj``, so ``simulate`` reproduces them exactly.
"""
from __future__ import annotations

import math
import sys
import time
import warnings
import zlib
from dataclasses import dataclass, field, replace
import numpy as np

from hw_models.accelerator import Accelerator, Chunk
from hw_models.cost import _leakage_pj, op_cost
from hw_models.energy import load_table
from hw_models.errors import MappingError
from hw_models.schedule import Schedule
from hw_models.simulator import default_mapping, uses_csr
from hw_models.workload import OpNode, Workload
from codesign.mapper.search import FULL, Effort, Option, SearchStats, search_gemm, search_vector

OBJECTIVES = ("edp", "latency", "energy")
MODES = ("latency", "throughput")
#: Relative weight of the secondary term when the objective is pure latency or pure energy.
TIE = 1e-6


@dataclass
class MapStats:
    """What the mapper did (for reports and benchmarks)."""

    seconds: float = 0.0
    search_seconds: float = 0.0
    evaluated: int = 0                    # candidate mappings scored by the vectorised model
    searches: int = 0                     # (distinct op, chunk) searches run
    exhaustive: int = 0                   # of which exhaustive
    op_cost_calls: int = 0
    objective_value: float = 0.0          # network objective of the result (see objective_of)
    default_objective_value: float = 0.0
    cycles: float = 0.0                   # single-frame latency of the result
    interval_cycles: float = 0.0          # pipelined frame interval of the result
    energy_pj: float = 0.0


@dataclass
class MapResult:
    schedule: Schedule
    stats: MapStats
    options: dict[str, list[Option]] = field(default_factory=dict, repr=False)


def _check_args(objective: str, mode: str, budget_s: float) -> None:
    if objective not in OBJECTIVES:
        raise MappingError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if mode not in MODES:
        raise MappingError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not budget_s > 0:
        raise MappingError(f"budget_s must be > 0, got {budget_s!r}")


def op_signature(op: OpNode) -> OpNode:
    """Ops that differ only in name map identically."""
    return replace(op, name="")


def _seed(seed: int, key: object) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(repr(key).encode())])


# ---------------------------------------------------------------------------------------------
# network-level evaluation


class Network:
    """Fast evaluation of the network objective for a choice of one option per op."""

    def __init__(self, workload: Workload, accel: Accelerator, options: dict[str, list[Option]],
                 objective: str, mode: str):
        self.ops = workload.ops()
        self.names = [op.name for op in self.ops]
        pos = {n: i for i, n in enumerate(self.names)}
        self.preds = [[pos[p] for p in workload.predecessors(n)] for n in self.names]
        chunk_pos = {c.name: i for i, c in enumerate(accel.chunks)}
        self.n_chunks = len(accel.chunks)
        self.options = [options[n] for n in self.names]
        self.cyc = [np.array([o.cycles for o in opts]) for opts in self.options]
        self.en = [np.array([o.energy for o in opts]) for opts in self.options]
        self.chk = [np.array([chunk_pos[o.chunk] for o in opts]) for opts in self.options]
        self.objective, self.mode = objective, mode
        # one chunk used by every option: the makespan is the plain sum of op times
        used = {int(c) for arr in self.chk for c in arr}
        self.serial = len(used) == 1

    # -- components --------------------------------------------------------------------------
    def makespan(self, choice: list[int]) -> float:
        if self.serial:
            return float(sum(self.cyc[i][c] for i, c in enumerate(choice)))
        finish = [0.0] * len(choice)
        free = [0.0] * self.n_chunks
        for i, c in enumerate(choice):
            ch = self.chk[i][c]
            ready = max((finish[p] for p in self.preds[i]), default=0.0)
            start = max(ready, free[ch])
            finish[i] = free[ch] = start + self.cyc[i][c]
        return max(finish, default=0.0)

    def loads(self, choice: list[int]) -> np.ndarray:
        load = np.zeros(self.n_chunks)
        for i, c in enumerate(choice):
            load[self.chk[i][c]] += self.cyc[i][c]
        return load

    def energy(self, choice: list[int]) -> float:
        return float(sum(self.en[i][c] for i, c in enumerate(choice)))

    def value(self, choice: list[int]) -> tuple[float, float]:
        """(objective, tie-break) -- smaller is better. Latency = makespan or interval by mode."""
        e = self.energy(choice)
        if self.mode == "latency":
            d = self.makespan(choice)
            spread = 0.0
        else:
            load = self.loads(choice)
            d = float(load.max())
            spread = float(np.sum(load ** 2)) / max(d, 1.0)
        if self.objective == "latency":
            return d, spread + TIE * e
        if self.objective == "energy":
            return e, d
        return e * d, spread

    # -- search ------------------------------------------------------------------------------
    def descend(self, choice: list[int], deadline: float, max_sweeps: int = 8) -> tuple[list[int], tuple]:
        """Coordinate descent: change one op's option at a time while the objective improves."""
        choice = list(choice)
        best = self.value(choice)
        # visit expensive ops first: they move the objective most
        visit = sorted(range(len(choice)), key=lambda i: -float(self.cyc[i].min()))
        for _ in range(max_sweeps):
            improved = False
            for i in visit:
                if len(self.options[i]) < 2:
                    continue
                cur = choice[i]
                for c in range(len(self.options[i])):
                    if c == cur:
                        continue
                    choice[i] = c
                    v = self.value(choice)
                    if v < best:
                        best, cur, improved = v, c, True
                choice[i] = cur
                if time.perf_counter() > deadline:
                    return choice, best
            if not improved:
                break
        return choice, best

    def scalar_choice(self, w_cycles: float, w_energy: float) -> list[int]:
        return [int(np.argmin(w_cycles * cy + w_energy * en)) for cy, en in zip(self.cyc, self.en)]

    def lpt_choice(self, w_energy: float) -> list[int]:
        """Longest processing time first: each op (longest first) to the option that keeps the
        busiest chunk least busy (energy breaks ties)."""
        choice = [0] * len(self.ops)
        load = np.zeros(self.n_chunks)
        for i in sorted(range(len(self.ops)), key=lambda i: -float(self.cyc[i].min())):
            best, best_v = 0, None
            for c in range(len(self.options[i])):
                trial = load.copy()
                trial[self.chk[i][c]] += self.cyc[i][c]
                v = (float(trial.max()), float(np.sum(trial ** 2)), w_energy * float(self.en[i][c]))
                if best_v is None or v < best_v:
                    best, best_v = c, v
            choice[i] = best
            load[self.chk[i][best]] += self.cyc[i][best]
        return choice


# ---------------------------------------------------------------------------------------------


class Mapper:
    """Maps one workload onto one accelerator (see module docstring)."""

    def __init__(self, workload: Workload, accel: Accelerator, objective: str = "edp", budget_s: float = 10.0,
                 mode: str = "latency", seed: int = 0, progress: bool = True,
                 effort: Effort = FULL, option_cache: dict | None = None):
        _check_args(objective, mode, budget_s)
        self.workload, self.accel = workload, accel
        self.objective, self.mode, self.budget_s = objective, mode, budget_s
        self.seed, self.progress = seed, progress
        self.effort = effort
        # (op signature, chunk, shared-resource key) -> (options, leakage pJ/cycle they include);
        # shared across Mappers (co-search) so that unchanged chunks are not searched again
        self.option_cache = option_cache
        self._leak = _leakage_pj(accel, load_table(accel.energy_table), 1.0)
        self._shared_key = (accel.clock_mhz, accel.dram, accel.global_buffer, accel.energy_table, objective, mode)
        self.stats = MapStats()

    # -- per-op options ----------------------------------------------------------------------
    def _weights(self, lam: float) -> tuple[float, float]:
        if self.objective == "latency":
            return 1.0, TIE / lam
        if self.objective == "energy":
            return TIE * lam, 1.0
        return lam, 1.0

    def _default_option(self, op: OpNode) -> Option:
        mp = default_mapping(op, self.accel)
        cost = op_cost(op, self.accel, mp)
        self.stats.op_cost_calls += 1
        return Option(mp.chunk, mp, cost.cycles, cost.total_energy_pj)

    def _csr_option(self, op: OpNode, chunk: Chunk) -> Option:
        mp = default_mapping(op, self.accel, chunk)
        cost = op_cost(op, self.accel, mp)
        self.stats.op_cost_calls += 1
        return Option(chunk.name, mp, cost.cycles, cost.total_energy_pj)

    def collect_options(self, lam: float, deadline: float, defaults: dict[str, Option]) -> dict[str, list[Option]]:
        from tqdm import tqdm

        ops = self.workload.ops()
        cache: dict[OpNode, list[Option]] = {}
        todo_keys = {op_signature(op) for op in ops}
        options: dict[str, list[Option]] = {}
        w_c, w_e = self._weights(lam)
        t0 = time.perf_counter()
        bar = tqdm(ops, desc=f"mapping {self.workload.name}", unit="op", disable=not self.progress,
                   file=sys.stderr, leave=False)
        for op in bar:
            key = op_signature(op)
            if key not in cache:
                chunks = self.accel.chunks_for(op.kind)
                if not chunks:
                    raise MappingError(f"{op.name}: no chunk of {self.accel.name} supports {op.kind} (chunks: "
                                       + ", ".join(f"{c.name}={c.pe_type}" for c in self.accel.chunks) + ")")
                found: list[Option] = []
                remaining_jobs = max(1, len(todo_keys - set(cache)))
                share = max(0.0, deadline - time.perf_counter()) / remaining_jobs
                for j, chunk in enumerate(chunks):
                    job_deadline = time.perf_counter() + share / (len(chunks) - j)
                    ckey = (key, chunk, self._shared_key)
                    if self.option_cache is not None and ckey in self.option_cache:
                        # leakage is the only accelerator-wide term of an op's energy: rescale it
                        cached, leak = self.option_cache[ckey]
                        found.extend(replace(o, energy=o.energy + o.cycles * (self._leak - leak)) for o in cached)
                        continue
                    if op.is_gemm:
                        opts, st = [], SearchStats()
                        if uses_csr(op, chunk):                 # the sparse lines: one fixed mapping
                            opts.append(self._csr_option(op, chunk))
                        if chunk.gemm_dataflows:                # computing it dense may still win
                            dense, st = search_gemm(op, chunk, self.accel, w_c, w_e,
                                                    _seed(self.seed, (key, chunk.name)),
                                                    effort=self.effort, deadline=job_deadline)
                            opts.extend(dense)
                    else:
                        opts, st = search_vector(op, chunk, self.accel, w_c, w_e)
                    found.extend(opts)
                    if self.option_cache is not None:
                        self.option_cache[ckey] = (opts, self._leak)
                    self.stats.evaluated += st.evaluated
                    self.stats.searches += 1
                    self.stats.exhaustive += int(st.exhaustive)
                if op.name in defaults:
                    found.append(defaults[op.name])                 # always the last option
                if not found:
                    why = getattr(self, "default_errors", {}).get(op.name, "operand bits, register file or buffers "
                                                                           "too small")
                    raise MappingError(f"{op.name}: no mapping of {op.kind} fits any chunk of {self.accel.name} ({why})")
                cache[key] = found
            options[op.name] = [replace(o, mapping=replace(o.mapping, op=op.name)) for o in cache[key]]
        bar.close()
        self.stats.search_seconds = time.perf_counter() - t0
        return options

    # -- network level -----------------------------------------------------------------------
    def run(self) -> MapResult:
        t_start = time.perf_counter()
        ops = self.workload.ops()
        if not ops:
            raise MappingError(f"workload {self.workload.name} has no ops to map")
        # default schedule: its options and its objective are the baseline and set lambda
        defaults: dict[str, Option] = {}
        self.default_errors: dict[str, str] = {}
        for op in ops:
            if not self.accel.chunks_for(op.kind):
                raise MappingError(f"{op.name}: no chunk of {self.accel.name} supports {op.kind} (chunks: "
                                   + ", ".join(f"{c.name}={c.pe_type}" for c in self.accel.chunks) + ")")
            try:
                defaults[op.name] = self._default_option(op)
            except MappingError as err:   # the default chunk cannot take it; another chunk may
                self.default_errors[op.name] = str(err).removeprefix(f"{op.name}: ")
        zero = [0] * len(ops)
        base_net = None
        if len(defaults) == len(ops):
            base_net = Network(self.workload, self.accel, {n: [o] for n, o in defaults.items()}, self.objective,
                               self.mode)
            d0 = base_net.makespan(zero) if self.mode == "latency" else float(base_net.loads(zero).max())
            lam = base_net.energy(zero) / max(d0, 1.0)
            self.stats.default_objective_value = base_net.value(zero)[0]
        else:
            cyc = sum(o.cycles for o in defaults.values())
            lam = sum(o.energy for o in defaults.values()) / cyc if cyc else 1e3
            self.stats.default_objective_value = float("inf")

        search_deadline = t_start + 0.85 * self.budget_s
        descent_deadline = t_start + 0.97 * self.budget_s
        options = self.collect_options(lam, search_deadline, defaults)
        net = Network(self.workload, self.accel, options, self.objective, self.mode)
        starts = []
        if base_net is not None:
            starts.append([len(opts) - 1 for opts in net.options])       # the default is every op's last option
        w_c, w_e = self._weights(lam)
        starts.append(net.scalar_choice(w_c, w_e))
        if self.objective == "edp":
            first = starts[-1]
            d = net.makespan(first) if self.mode == "latency" else float(net.loads(first).max())
            starts.append(net.scalar_choice(net.energy(first) / max(d, 1.0), 1.0))
        if self.mode == "throughput":
            starts.append(net.lpt_choice(w_e))
            # the latency-mode optimum is a start too (so throughput mode never loses to it)
            lat = Network(self.workload, self.accel, options, self.objective, "latency")
            starts.append(lat.descend(lat.scalar_choice(w_c, w_e), descent_deadline)[0])
        best_choice, best_val = None, None
        for start in starts:
            choice, val = net.descend(start, descent_deadline)
            if best_val is None or val < best_val:
                best_choice, best_val = choice, val
        schedule = Schedule(workload=self.workload.name, accelerator=self.accel.name, mode=self.mode,
                            objective=self.objective, producer="mapper")
        exact: dict[str, list[Option]] = {}
        disagree = []
        for i, (op, c) in enumerate(zip(ops, best_choice)):
            opt = net.options[i][c]
            cost = op_cost(op, self.accel, opt.mapping)
            self.stats.op_cost_calls += 1
            if not (math.isclose(cost.cycles, opt.cycles, rel_tol=1e-6)
                    and math.isclose(cost.total_energy_pj, opt.energy, rel_tol=1e-6)):
                disagree.append(f"{op.name} (cycles {opt.cycles:.6g} vs {cost.cycles:.6g}, "
                                f"energy {opt.energy:.6g} vs {cost.total_energy_pj:.6g} pJ)")
            schedule.mappings[op.name] = opt.mapping.with_prediction(cost.cycles, cost.total_energy_pj)
            exact[op.name] = [Option(opt.chunk, opt.mapping, cost.cycles, cost.total_energy_pj)]
        if disagree:
            warnings.warn(f"codesign.mapper: the vectorised cost model disagrees with hw_models.cost.op_cost on "
                          f"{len(disagree)} op(s), e.g. {disagree[0]}; the schedule is valid and its predictions "
                          "come from op_cost, but the search ranked candidates with stale numbers "
                          "(codesign/mapper/vectorised.py must follow hw_models/cost.py)", RuntimeWarning,
                          stacklevel=3)
        final = Network(self.workload, self.accel, exact, self.objective, self.mode)
        value = final.value(zero)[0]
        if base_net is not None and value > self.stats.default_objective_value * (1 + 1e-12):
            # cannot happen unless the vectorised model and op_cost disagree; keep the promise anyway
            schedule = Schedule(workload=self.workload.name, accelerator=self.accel.name, mode=self.mode,
                                objective=self.objective, producer="mapper")
            for op in ops:
                o = defaults[op.name]
                schedule.mappings[op.name] = o.mapping.with_prediction(o.cycles, o.energy)
            final, value = base_net, self.stats.default_objective_value
        self.stats.objective_value = value
        self.stats.cycles = final.makespan(zero)
        self.stats.interval_cycles = float(final.loads(zero).max())
        self.stats.energy_pj = final.energy(zero)
        self.stats.seconds = time.perf_counter() - t_start
        return MapResult(schedule=schedule, stats=self.stats, options=options)


def map_workload_detailed(workload: Workload, accel: Accelerator, objective: str = "edp", budget_s: float = 10.0,
                          mode: str = "latency", seed: int = 0, progress: bool = True, **kwargs) -> MapResult:
    """Like :func:`map_workload` but returns the schedule with the mapper's statistics and options."""
    return Mapper(workload, accel, objective=objective, budget_s=budget_s, mode=mode, seed=seed,
                  progress=progress, **kwargs).run()
