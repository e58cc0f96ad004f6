"""Co-search of chunk resources and mapping (NASA's chunk template: how many PEs, in which array
shape, and how much local buffer each chunk gets).

The design space: for every chunk its ``rows``, ``cols`` and ``local_buffer_kb``, under a total PE
budget (sum of rows x cols) and a total local-buffer budget (sum of local_buffer_kb), by default the
original accelerator's own totals. Everything else (PE types, dataflows, bit widths, global buffer,
DRAM, clock) is kept. Each candidate configuration is scored by mapping the workload on it with a
quick search effort; the search is a seeded hill climb with random restarts-by-perturbation over
moves that reshape a chunk, move PEs between chunks, or move local buffer between chunks. At the
end the best configuration and the original one are mapped again with the full effort and the
better of the two is returned, so co-search never loses to plain mapping on the original design.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field, replace

import numpy as np

from hw_models.accelerator import Accelerator
from hw_models.errors import MappingError
from hw_models.schedule import Schedule
from hw_models.workload import Workload
from codesign.mapper.network import Mapper, _check_args
from codesign.mapper.search import FULL, QUICK, Effort

#: Array side lengths the co-search may give a chunk.
SIDES = (1, 2, 3, 4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96, 128, 192, 256)
#: Local buffers are sized in steps of this many KB.
LB_STEP_KB = 1.0


@dataclass
class CoSearchResult:
    """The co-searched accelerator, its schedule, and what the search saw."""

    accelerator: Accelerator
    schedule: Schedule
    objective: str
    mode: str
    objective_value: float                 # network objective on ``accelerator`` (see network.Network.value)
    original_objective_value: float        # mapper's result on the original accelerator
    pe_budget: int
    buffer_budget_kb: float
    configs_evaluated: int
    seconds: float
    history: list[tuple[tuple[tuple[int, int, float], ...], float]] = field(default_factory=list, repr=False)

    @property
    def improvement(self) -> float:
        """original / co-searched objective (> 1: the co-searched design is better)."""
        return self.original_objective_value / self.objective_value if self.objective_value else 1.0


Config = tuple[tuple[int, int, float], ...]      # (rows, cols, local_buffer_kb) per chunk


def config_of(accel: Accelerator) -> Config:
    return tuple((c.rows, c.cols, float(c.local_buffer_kb)) for c in accel.chunks)


def apply_config(accel: Accelerator, config: Config, name: str | None = None) -> Accelerator:
    chunks = tuple(replace(c, rows=r, cols=k, local_buffer_kb=lb) for c, (r, k, lb) in zip(accel.chunks, config))
    return replace(accel, chunks=chunks, name=name or accel.name, source="")


class _Space:
    def __init__(self, accel: Accelerator, pe_budget: int, lb_budget: float, rng: np.random.Generator):
        self.accel, self.pe_budget, self.lb_budget, self.rng = accel, pe_budget, lb_budget, rng
        self.n = len(accel.chunks)

    def ok(self, cfg: Config) -> bool:
        return (all(r >= 1 and k >= 1 and lb >= 0 for r, k, lb in cfg)
                and sum(r * k for r, k, _ in cfg) <= self.pe_budget
                and sum(lb for _, _, lb in cfg) <= self.lb_budget + 1e-9)

    def shapes(self, max_pes: int, min_pes: int = 1) -> list[tuple[int, int]]:
        return [(r, k) for r in SIDES for k in SIDES if min_pes <= r * k <= max_pes]

    def _pick_shape(self, lo: int, hi: int) -> tuple[int, int] | None:
        cands = self.shapes(hi, max(1, lo))
        if not cands:
            return None
        return cands[int(self.rng.integers(len(cands)))]

    def propose(self, cfg: Config) -> Config:
        cfg = [list(c) for c in cfg]
        used = sum(r * k for r, k, _ in cfg)
        move = int(self.rng.integers(4 if self.n > 1 else 2))
        i = int(self.rng.integers(self.n))
        if move == 0:                                       # reshape chunk i, keeping roughly its PEs
            pes = cfg[i][0] * cfg[i][1]
            shape = self._pick_shape(int(pes * 0.75), pes + self.pe_budget - used)
            if shape:
                cfg[i][0], cfg[i][1] = shape
        elif move == 1:                                     # grow or shrink chunk i
            pes = cfg[i][0] * cfg[i][1]
            hi = pes + self.pe_budget - used
            shape = self._pick_shape(max(1, pes // 2), max(1, hi))
            if shape:
                cfg[i][0], cfg[i][1] = shape
        elif move == 2:                                     # move PEs from chunk j to chunk i
            j = int(self.rng.integers(self.n - 1))
            j = j + (j >= i)
            pj = cfg[j][0] * cfg[j][1]
            shape_j = self._pick_shape(1, max(1, pj * 3 // 4))
            if shape_j:
                freed = pj - shape_j[0] * shape_j[1]
                cfg[j][0], cfg[j][1] = shape_j
                pi = cfg[i][0] * cfg[i][1]
                shape_i = self._pick_shape(pi, pi + freed + self.pe_budget - used)
                if shape_i:
                    cfg[i][0], cfg[i][1] = shape_i
        else:                                               # move local buffer from chunk j to chunk i
            j = int(self.rng.integers(self.n - 1))
            j = j + (j >= i)
            amount = math.floor(cfg[j][2] * float(self.rng.choice([0.25, 0.5, 1.0])) / LB_STEP_KB) * LB_STEP_KB
            cfg[j][2] -= amount
            cfg[i][2] += amount
        if self.n == 1 or move == 1:
            # the local buffer of a single chunk may also take any size within the budget
            if self.lb_budget > 0 and self.rng.random() < 0.5:
                steps = int(self.lb_budget // LB_STEP_KB)
                others = sum(c[2] for k, c in enumerate(cfg) if k != i)
                cap = max(0, int((self.lb_budget - others) // LB_STEP_KB))
                cfg[i][2] = float(self.rng.integers(min(steps, cap) + 1)) * LB_STEP_KB if cap else cfg[i][2]
        out = tuple((int(r), int(k), float(lb)) for r, k, lb in cfg)
        return out


def co_search(workload: Workload, accel: Accelerator, objective: str = "edp", budget_s: float = 30.0,
              mode: str = "latency", seed: int = 0, progress: bool = True, pe_budget: int | None = None,
              buffer_budget_kb: float | None = None, max_configs: int = 200,
              final_effort: Effort = FULL) -> CoSearchResult:
    """Search chunk rows/cols/local buffers and the mapping together (see module docstring).

    ``max_configs`` caps the configurations scored (each is one quick mapping of the workload);
    ``final_effort`` is the search effort of the closing full mapping of the winner.
    """
    _check_args(objective, mode, budget_s)
    t_start = time.perf_counter()
    orig_cfg = config_of(accel)
    pe_budget = int(pe_budget if pe_budget is not None else sum(c.pes for c in accel.chunks))
    lb_budget = float(buffer_budget_kb if buffer_budget_kb is not None else sum(c.local_buffer_kb for c in accel.chunks))
    if pe_budget < len(accel.chunks):
        raise MappingError(f"co-search: PE budget {pe_budget} is smaller than the number of chunks ({len(accel.chunks)})")
    if lb_budget < 0:
        raise MappingError(f"co-search: local-buffer budget must be >= 0 KB, got {lb_budget:g}")
    rng = np.random.default_rng(seed)
    space = _Space(accel, pe_budget, lb_budget, rng)
    name = f"{accel.name}+cosearch"
    search_end = t_start + 0.6 * budget_s
    per_config = max(0.05, 0.6 * budget_s / 12)
    seen: dict[Config, float] = {}
    option_cache: dict = {}                     # per (op, chunk) options, reused while a chunk is unchanged

    def score(cfg: Config) -> float:
        if cfg in seen:
            return seen[cfg]
        acc = apply_config(accel, cfg, name)
        try:
            res = Mapper(workload, acc, objective=objective, budget_s=per_config, mode=mode, seed=seed,
                         progress=False, effort=QUICK, option_cache=option_cache).run()
            value = res.stats.objective_value
        except MappingError:
            value = math.inf                    # some op does not fit this configuration
        seen[cfg] = value
        return value

    from tqdm import tqdm
    bar = tqdm(total=max_configs, desc=f"co-search {accel.name}", unit="cfg", disable=not progress,
               file=sys.stderr, leave=False)
    start_cfg = orig_cfg if space.ok(orig_cfg) else _fit_budget(orig_cfg, space)
    best_cfg, best_val = start_cfg, score(start_cfg)
    bar.update(1)
    current, current_val = best_cfg, best_val
    temperature = 0.05
    stale = 0
    while len(seen) < max_configs and time.perf_counter() < search_end:
        cand = space.propose(current)
        tries = 0
        while (cand in seen or not space.ok(cand)) and tries < 20:
            cand = space.propose(current)
            tries += 1
        if cand in seen or not space.ok(cand):
            stale += 1
            if stale > 5:
                break
            continue
        val = score(cand)
        bar.update(1)
        if val < best_val:
            best_cfg, best_val = cand, val
        # simulated-annealing acceptance on the relative change
        if math.isfinite(val) and (val <= current_val or
                                   rng.random() < math.exp(-(val / current_val - 1) / temperature)):
            current, current_val = cand, val
        temperature *= 0.97
    bar.close()

    # full-effort mapping of the best configuration and of the original design; keep the better
    remaining = max(0.5, budget_s - (time.perf_counter() - t_start))
    finals = [(best_cfg, apply_config(accel, best_cfg, name if best_cfg != orig_cfg else accel.name))]
    if best_cfg != orig_cfg and space.ok(orig_cfg):
        finals.append((orig_cfg, accel))
    results = []
    for cfg, acc in finals:
        res = Mapper(workload, acc, objective=objective, budget_s=remaining / len(finals), mode=mode, seed=seed,
                     progress=progress, effort=final_effort).run()
        results.append((res.stats.objective_value, cfg, acc, res))
    orig_value = next((v for v, cfg, _, _ in results if cfg == orig_cfg), seen.get(orig_cfg, math.inf))
    value, cfg, acc, res = min(results, key=lambda x: x[0])
    if cfg != orig_cfg:
        acc = replace(acc, description=(f"{accel.name} with chunk resources co-searched for {workload.name} "
                                        f"({objective}, {mode}; PE budget {pe_budget}, local-buffer budget "
                                        f"{lb_budget:g} KB)"))
        res.schedule.accelerator = acc.name
    return CoSearchResult(accelerator=acc, schedule=res.schedule, objective=objective, mode=mode,
                          objective_value=value, original_objective_value=orig_value, pe_budget=pe_budget,
                          buffer_budget_kb=lb_budget, configs_evaluated=len(seen),
                          seconds=time.perf_counter() - t_start, history=list(seen.items()))


def _fit_budget(cfg: Config, space: _Space) -> Config:
    """Scale a configuration down until it fits the budgets (when the budgets are below the original)."""
    out = [list(c) for c in cfg]
    while sum(r * k for r, k, _ in out) > space.pe_budget:
        i = max(range(len(out)), key=lambda j: out[j][0] * out[j][1])
        if out[i][0] >= out[i][1] and out[i][0] > 1:
            out[i][0] -= 1
        elif out[i][1] > 1:
            out[i][1] -= 1
        else:
            break
    total_lb = sum(c[2] for c in out)
    if total_lb > space.lb_budget:
        scale = space.lb_budget / total_lb
        for c in out:
            c[2] = math.floor(c[2] * scale / LB_STEP_KB) * LB_STEP_KB
    return tuple((int(r), int(k), float(lb)) for r, k, lb in out)
