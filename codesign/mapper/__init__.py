"""Auto-mapper: places every operator of a workload on a chunk of an accelerator and picks its
tiling, loop order and dataflow (and, optionally, co-searches the chunks' resources).

Public API::

    map_workload(workload, accel, objective="edp", budget_s=10.0, mode="latency",
                 co_search=False, seed=0, progress=True, effort="full") -> Schedule   (CoSearchResult if co_search)
    map_workload_detailed(...) -> MapResult                          (schedule + statistics)
    co_search(workload, accel, ...) -> CoSearchResult                  (accelerator + schedule)

All costs come from :func:`hw_models.cost.op_cost`: candidates are ranked with an exact vectorised
closed form of it (:mod:`codesign.mapper.vectorised`) and the chosen mappings are re-scored with
``op_cost`` itself, so ``hw_models.simulator.simulate`` reproduces the predicted cycles and energy.
"""
from __future__ import annotations

from hw_models.accelerator import Accelerator
from hw_models.errors import MappingError
from hw_models.schedule import Schedule
from hw_models.workload import Workload
from codesign.mapper.cosearch import CoSearchResult, co_search
from codesign.mapper.cosearch import co_search as _co_search
from codesign.mapper.network import MODES, OBJECTIVES, MapResult, MapStats, Mapper, map_workload_detailed
from codesign.mapper.search import EFFORTS, Effort, Option

__all__ = ["map_workload", "map_workload_detailed", "co_search", "CoSearchResult", "MapResult", "MapStats",
           "Mapper", "Option", "OBJECTIVES", "MODES"]


def map_workload(workload: Workload, accel: Accelerator, objective: str = "edp", budget_s: float = 10.0,
                 mode: str = "latency", co_search: bool = False, seed: int = 0, progress: bool = True,
                 pe_budget: int | None = None, buffer_budget_kb: float | None = None,
                 effort: str | Effort = "full") -> Schedule | CoSearchResult:
    """Map ``workload`` onto ``accel``.

    objective: "edp" | "latency" | "energy" (per frame; latency is the single-frame makespan in
    ``mode="latency"`` and the pipelined frame interval in ``mode="throughput"``).
    budget_s: wall-clock budget for the whole search (the search is anytime: it returns the best
    found when the budget runs out; small workloads finish well before it).
    co_search: also search the chunks' rows/cols and local buffers under a total PE budget and a
    total local-buffer budget (default: the accelerator's own totals); returns a CoSearchResult
    with the new Accelerator and its Schedule instead of a Schedule.
    effort: "full" or "quick" (fewer candidates per op; deterministic because the search stops on
    its evaluation caps rather than on the clock -- what the NAS uses), or an Effort.
    Raises hw_models.errors.MappingError (a CodesignError) with a one-line message on failure.
    """
    if co_search:
        if effort != "full":
            raise MappingError("the co-search has its own per-op effort; leave effort at 'full'")
        return _co_search(workload, accel, objective=objective, budget_s=budget_s, mode=mode, seed=seed,
                          progress=progress, pe_budget=pe_budget, buffer_budget_kb=buffer_budget_kb)
    if isinstance(effort, str):
        if effort not in EFFORTS:
            raise MappingError(f"unknown mapper effort {effort!r} (known: {', '.join(EFFORTS)})")
        effort = EFFORTS[effort]
    return map_workload_detailed(workload, accel, objective=objective, budget_s=budget_s, mode=mode, seed=seed,
                                 progress=progress, effort=effort).schedule
