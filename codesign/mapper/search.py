"""Per-operator mapping search: exhaustive over small grids, seeded random + local search otherwise.

Every candidate is scored with the exact closed form of :mod:`codesign.mapper.vectorised` (the
scalar score is ``w_cycles * cycles + w_energy * energy``; the network level picks the weights).
On grids larger than ``Effort.exhaustive_limit``:

1. seed: random grid points, half of them with a *maximal* GB tile (fits the global buffer, but
   growing any one of p, k, m would not);
2. refine: a population (the best distinct points plus the best point of every (loop order,
   dataflow) group, so no loop order is dropped early) is replaced round after round by the best of
   all single-axis neighbours of its members and random multi-axis jitter around them;
3. once that converges: joint moves of two GB tile axes (within a window) combined with every loop
   order around the best points, then back to 2 while anything improves.

The search keeps everything it evaluated, so the (cycles, energy) Pareto front of the explored space
is available at any time (anytime: a deadline or evaluation cap just stops the refinement), and
returns a few Pareto points (the best for a range of latency weights) as options for the network.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from hw_models.accelerator import Accelerator, Chunk
from hw_models.schedule import LOOP_ORDERS, OpMapping
from hw_models.workload import OpNode
from codesign.mapper.space import GemmSpace
from codesign.mapper.vectorised import GemmContext, VectorContext, evaluate_gemm

DATAFLOWS = ("os", "ws")

#: Candidates per call of the vectorised evaluator.
BATCH = 8192


@dataclass(frozen=True)
class Effort:
    """How hard one (op, chunk) search tries."""

    exhaustive_limit: int = 60_000      # grids up to this many points are searched exhaustively
    initial_samples: int = 20_000       # random (half GB-frontier) points seeding the local search
    population: int = 8                 # distinct best points refined every round ...
    per_group: int = 1                  # ... plus the best of every (loop order, dataflow) group
    pair_sweeps: int = 2                # joint 2-axis GB-tile sweeps once 1-axis moves converge
    pair_members: int = 2               # ... around this many of the best points
    max_evals: int = 400_000            # hard cap on candidates scored


FULL = Effort()
QUICK = Effort(exhaustive_limit=8_000, initial_samples=3_000, population=4, per_group=0, pair_sweeps=0,
               max_evals=40_000)
EFFORTS = {"full": FULL, "quick": QUICK}
#: Multipliers of the latency weight for which the best point is kept as an option (Pareto thinning).
LAMBDA_GRID = tuple(4.0 ** e for e in range(-4, 5))


@dataclass(frozen=True)
class Option:
    """One way to run an op: a chunk, a mapping and its exact cycles / energy (pJ)."""

    chunk: str
    mapping: OpMapping
    cycles: float
    energy: float


@dataclass
class SearchStats:
    evaluated: int = 0              # candidate mappings scored (valid or not)
    valid: int = 0
    exhaustive: bool = False
    grid: int = 0                   # size of the grid searched
    seconds: float = 0.0
    rounds: int = 0


@dataclass
class Evaluated:
    """All valid candidates seen so far (raw mapping fields + score)."""

    cols: dict[str, list[np.ndarray]] = field(default_factory=lambda: {k: [] for k in
                                                                     ("df", "pb", "kb", "mb", "am", "an", "ak", "order")})
    cycles: list[np.ndarray] = field(default_factory=list)
    energy: list[np.ndarray] = field(default_factory=list)

    def add(self, raw: dict[str, np.ndarray], mask: np.ndarray, cycles: np.ndarray, energy: np.ndarray) -> None:
        for k in self.cols:
            self.cols[k].append(raw[k][mask])
        self.cycles.append(cycles[mask])
        self.energy.append(energy[mask])

    def arrays(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        if not self.cycles:
            empty = np.empty(0)
            return {k: np.empty(0, dtype=np.int64) for k in self.cols}, empty, empty
        return ({k: np.concatenate(v) for k, v in self.cols.items()}, np.concatenate(self.cycles),
                np.concatenate(self.energy))


def score_raw(ctx: GemmContext, raw: dict[str, np.ndarray], deadline: float | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(valid mask, cycles, energy) for raw candidate arrays (invalid ones score +inf).

    Past ``deadline`` the remaining batches are skipped (reported invalid); the first always runs.
    """
    n = raw["pb"].shape[0]
    valid = np.zeros(n, bool)
    cycles = np.full(n, np.inf)
    energy = np.full(n, np.inf)
    done = 0
    for code, df in enumerate(DATAFLOWS):
        sel = np.nonzero(raw["df"] == code)[0]
        if sel.size == 0:
            continue
        args = [raw[k][sel] for k in ("pb", "kb", "mb", "am", "an", "ak")]
        idx = sel[ctx.valid(df, *args)]
        for start in range(0, idx.size, BATCH):       # moderate batches stay in cache
            if done and deadline is not None and time.perf_counter() > deadline:
                return valid, cycles, energy
            part = idx[start:start + BATCH]
            res = evaluate_gemm(ctx, df, raw["order"][part], *(raw[k][part] for k in ("pb", "kb", "mb", "am", "an", "ak")))
            valid[part] = True
            cycles[part] = res.cycles
            energy[part] = res.energy
            done += 1
    return valid, cycles, energy


RAW_FIELDS = ("df", "pb", "kb", "mb", "am", "an", "ak", "order")


def _unique_rows(raw: dict[str, np.ndarray], radices: tuple[int, ...]) -> np.ndarray:
    """Indices of the first occurrence of each distinct raw mapping (sorted)."""
    if math.prod(radices) < 2 ** 62:             # exact mixed-radix key: a fast 1-D unique
        key = np.zeros(raw["pb"].shape, dtype=np.int64)
        for f, r in zip(RAW_FIELDS, radices):
            key = key * r + raw[f]
        _, first = np.unique(key, return_index=True)
    else:
        keys = np.ascontiguousarray(np.stack([raw[k] for k in RAW_FIELDS], axis=1))
        view = keys.view(np.dtype((np.void, keys.dtype.itemsize * keys.shape[1]))).ravel()
        _, first = np.unique(view, return_index=True)
    return np.sort(first)


def pareto_options(cycles: np.ndarray, energy: np.ndarray, w_cycles: float, w_energy: float) -> list[int]:
    """Indices of the points that minimise ``l * w_cycles * cycles + w_energy * energy`` for the
    latency multipliers in LAMBDA_GRID, plus the fastest and the most frugal point."""
    if cycles.size == 0:
        return []
    picks = [int(np.argmin(cycles + 1e-9 * energy)), int(np.argmin(energy + 1e-9 * cycles))]
    for lam in LAMBDA_GRID:
        picks.append(int(np.argmin(lam * w_cycles * cycles + w_energy * energy)))
    seen, out = set(), []
    for i in picks:
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out


def _mapping(op: OpNode, chunk: Chunk, raw: dict[str, np.ndarray], i: int) -> OpMapping:
    return OpMapping(op=op.name, chunk=chunk.name, dataflow=DATAFLOWS[int(raw["df"][i])],
                     gb_tile=(int(raw["pb"][i]), int(raw["kb"][i]), int(raw["mb"][i])),
                     array_tile=(int(raw["am"][i]), int(raw["an"][i]), int(raw["ak"][i])),
                     loop_order=LOOP_ORDERS[int(raw["order"][i])])


def search_gemm(op: OpNode, chunk: Chunk, accel: Accelerator, w_cycles: float, w_energy: float,
                rng: np.random.Generator, effort: Effort = FULL, deadline: float | None = None
                ) -> tuple[list[Option], SearchStats]:
    """Search the grid of ``op`` on ``chunk``; return Pareto-thinned options and statistics."""
    t_start = time.perf_counter()
    ctx = GemmContext.build(op, chunk, accel)
    stats = SearchStats()
    if not ctx.feasible:
        return [], stats
    space = GemmSpace(ctx)
    stats.grid = space.size
    found = Evaluated()
    radices = (2, ctx.P + 1, ctx.K + 1, ctx.M + 1, ctx.P + 1, ctx.M + 1, ctx.K + 1, len(LOOP_ORDERS))

    def run(idx: np.ndarray) -> np.ndarray:
        raw = space.decode(idx)
        first = _unique_rows(raw, radices)
        raw_u = {k: v[first] for k, v in raw.items()}
        valid, cyc, en = score_raw(ctx, raw_u, deadline)
        stats.evaluated += first.size
        stats.valid += int(valid.sum())
        found.add(raw_u, valid, cyc, en)
        # score per requested grid point; a duplicate of an earlier point in the batch scores +inf
        scores = np.full(idx.shape[0], np.inf)
        scores[first] = w_cycles * cyc + w_energy * en
        return scores

    def out_of_budget() -> bool:
        return stats.evaluated >= effort.max_evals or (deadline is not None and time.perf_counter() > deadline)

    if space.size <= effort.exhaustive_limit:
        stats.exhaustive = True
        allidx = space.all_indices()
        for start in range(0, allidx.shape[0], 50_000):
            if start and out_of_budget():
                break
            run(allidx[start:start + 50_000])
    else:
        seen: set[int] = set()
        pop_idx = np.empty((0, len(space.shape)), dtype=np.int64)
        pop_score = np.empty(0)

        def step(idx: np.ndarray) -> None:
            nonlocal seen, pop_idx, pop_score
            flat = space.flat(idx)
            flat, keep = np.unique(flat, return_index=True)
            fresh = np.array([f not in seen for f in flat.tolist()], dtype=bool)
            idx, flat = idx[keep[fresh]], flat[fresh]
            if not idx.shape[0]:
                return
            seen.update(flat.tolist())
            scores = run(idx)
            ok = np.isfinite(scores)
            all_idx = np.concatenate([pop_idx, idx[ok]])
            all_sc = np.concatenate([pop_score, scores[ok]])
            # distinct scores only (distinct score ~ distinct mapping), best first
            all_sc, first = np.unique(all_sc, return_index=True)
            all_idx = all_idx[first]
            # the population best, plus the per_group best of every (loop order, dataflow) group so
            # that no order is abandoned early
            chosen = list(range(min(effort.population, all_sc.size)))
            if effort.per_group:
                group = all_idx[:, 3] * 2 + all_idx[:, 4]
                for g in np.unique(group):
                    members = np.nonzero(group == g)[0][:effort.per_group]
                    chosen.extend(int(i) for i in members if i >= effort.population)
            pop_idx, pop_score = all_idx[chosen], all_sc[chosen]

        half = effort.initial_samples // 2
        step(np.concatenate([space.random_indices(rng, effort.initial_samples - half),
                             space.frontier_indices(rng, half)]))
        # make sure we start from somewhere valid: widen the sample until something fits
        tries = 0
        while pop_idx.shape[0] == 0 and tries < 5 and not out_of_budget():
            step(space.random_indices(rng, effort.initial_samples * 4))
            tries += 1
        stale, swept = 0, 0
        while pop_idx.shape[0] and not out_of_budget():
            before = pop_score.copy()
            if stale < 2:
                cand = np.concatenate([space.neighbours(pop_idx), space.jitter(pop_idx, rng, 48)])
            elif swept < effort.pair_sweeps:
                # converged under single-axis moves: move two GB tile axes at once around the best
                cand = space.pair_sweep(pop_idx[np.argsort(pop_score)[:effort.pair_members]])
                swept += 1
            else:
                break
            step(cand)
            stats.rounds += 1
            if before.shape == pop_score.shape and np.array_equal(before, pop_score):
                stale += 1
            else:
                stale = 0
    raw, cyc, en = found.arrays()
    options = [Option(chunk.name, _mapping(op, chunk, raw, i), float(cyc[i]), float(en[i]))
               for i in pareto_options(cyc, en, w_cycles, w_energy)]
    stats.seconds = time.perf_counter() - t_start
    return options, stats


def vector_blocks(outs: int) -> np.ndarray:
    """Candidate block sizes (elements per GB block) for a vector op with ``outs`` outputs."""
    ts = set(range(1, min(outs, 512) + 1))
    t = 512
    while t < outs:
        ts.add(t)
        ts.add(t * 3 // 2)
        t *= 2
    ts.add(outs)
    blocks = {-(-outs // t) for t in ts if t <= outs}
    return np.array(sorted(blocks), dtype=np.int64)


def search_vector(op: OpNode, chunk: Chunk, accel: Accelerator, w_cycles: float, w_energy: float
                  ) -> tuple[list[Option], SearchStats]:
    t_start = time.perf_counter()
    ctx = VectorContext.build(op, chunk, accel)
    stats = SearchStats(exhaustive=True)
    if not ctx.feasible:
        return [], stats
    blocks = vector_blocks(ctx.outs)
    ok = ctx.valid(blocks)
    blocks = blocks[ok]
    stats.evaluated = stats.grid = int(ok.size)
    stats.valid = int(blocks.size)
    cyc, en = ctx.evaluate(blocks)
    options = [Option(chunk.name, OpMapping(op.name, chunk.name, "vector", (int(blocks[i]), 0, 0)),
                      float(cyc[i]), float(en[i])) for i in pareto_options(cyc, en, w_cycles, w_energy)]
    stats.seconds = time.perf_counter() - t_start
    return options, stats
