"""Hardware cost of architectures and of single block candidates, from the hardware model.

Every number here comes from the same path as ``codesign simulate``: the torch module is lowered to
the workload IR (:func:`codesign.lower.lower_model`), mapped onto the accelerator by the auto-mapper
(:func:`codesign.mapper.map_workload`) and simulated (:func:`hw_models.simulator.simulate`). No
FLOP-count heuristics.

* :meth:`HardwareModel.measure_architecture`: latency and energy of a whole derived network (the
  outer loop's objectives).
* :meth:`HardwareModel.measure_workload_cached`: the same for any workload IR (e.g. a masked ViT
  built by ``hw_models.zoo.vit``), cached by a digest of its JSON; :meth:`HardwareModel.with_accelerator`
  gives a model of another accelerator (e.g. a variant made with ``dataclasses.replace``) with the
  same mapper settings and cache file.
* :meth:`HardwareModel.block_cost` / :meth:`HardwareModel.cost_table`: latency and energy of one
  block candidate alone (its standalone module, lowered at the block's input shape, batch 1), the
  per-candidate terms of the supernet's differentiable hardware cost. ``skip`` costs nothing.

Results are cached per (candidate or architecture, input shape, accelerator + mapper settings
fingerprint), in memory and, with ``cache_path``, in a JSON file shared by the workers of a search
(writes merge and replace the file atomically, so concurrent writers lose at most an entry).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hw_models.accelerator import Accelerator, load_accelerator
from codesign.mapper.search import EFFORTS as MAPPER_EFFORTS
from hw_models.errors import CodesignError
from hw_models.simulator import simulate
from hw_models.workload import Workload

__all__ = ["HwMetrics", "HardwareModel"]

CACHE_FORMAT = "codesign-hwcache/1"
#: "quick": the mapper's reduced per-op search effort (evaluation caps ~10x lower), "full": its
#: default. Either way the budget is only a ceiling: with the default 30 s the per-op searches stop
#: on their evaluation caps, not on the clock, so the same network maps to the same schedule on any
#: machine load (the front is reproducible); a search that hit the clock would not be.
EFFORTS = tuple(MAPPER_EFFORTS)


@dataclass(frozen=True)
class HwMetrics:
    """Modelled cost of one inference (batch 1) on the accelerator."""

    latency_s: float
    energy_pj: float
    cycles: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def zero(cls) -> "HwMetrics":
        return cls(0.0, 0.0, 0.0)


class HardwareModel:
    """An accelerator plus mapper settings; measures workloads, torch modules and architectures."""

    def __init__(self, hw: str | Path | Accelerator = "nasa-chunked", objective: str = "edp",
                 map_budget_s: float = 30.0, seed: int = 0, mode: str = "latency",
                 cache_path: str | Path | None = None, effort: str = "quick") -> None:
        self.accel = hw if isinstance(hw, Accelerator) else load_accelerator(hw)
        if not map_budget_s > 0:
            raise CodesignError(f"mapper budget must be > 0 seconds, got {map_budget_s}")
        if effort not in EFFORTS:
            raise CodesignError(f"mapper effort must be one of {', '.join(EFFORTS)}, got {effort!r}")
        self.objective, self.map_budget_s, self.seed, self.mode = objective, float(map_budget_s), int(seed), mode
        self.effort = effort
        blob = json.dumps({"accel": self.accel.to_dict(), "objective": objective, "budget": self.map_budget_s,
                           "seed": self.seed, "mode": mode, "effort": effort}, sort_keys=True)
        self.fingerprint = hashlib.sha1(blob.encode()).hexdigest()[:16]
        self.cache_path = Path(cache_path) if cache_path else None
        self._cache: dict[str, list[float]] = {}
        self._dirty: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self.calls = {"mapped": 0, "cached": 0}
        self._load_cache()

    @property
    def name(self) -> str:
        return self.accel.name

    # -- cache ------------------------------------------------------------------------------
    def _load_cache(self) -> None:
        if self.cache_path is None or not self.cache_path.is_file():
            return
        try:
            data = json.loads(self.cache_path.read_text())
        except (OSError, json.JSONDecodeError):
            return                                    # a damaged cache is only a cache
        if data.get("format") == CACHE_FORMAT:
            self._cache.update(data.get("entries", {}).get(self.fingerprint, {}))

    def flush(self) -> None:
        """Merge the new entries into the cache file (atomic replace)."""
        if self.cache_path is None or not self._dirty:
            return
        with self._lock:
            data: dict[str, Any] = {"format": CACHE_FORMAT, "entries": {}}
            if self.cache_path.is_file():
                try:
                    old = json.loads(self.cache_path.read_text())
                    if old.get("format") == CACHE_FORMAT:
                        data = old
                except (OSError, json.JSONDecodeError):
                    pass
            data["entries"].setdefault(self.fingerprint, {}).update(self._dirty)
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.cache_path.parent, prefix=".hwcache.", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, sort_keys=True)
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.cache_path)
            self._dirty = {}

    def _cached(self, key: str, compute) -> HwMetrics:
        hit = self._cache.get(key)
        if hit is not None:
            self.calls["cached"] += 1
            return HwMetrics(*hit)
        m = compute()
        self.calls["mapped"] += 1
        self._cache[key] = self._dirty[key] = [m.latency_s, m.energy_pj, m.cycles]
        return m

    # -- measuring --------------------------------------------------------------------------
    def map(self, workload: Workload):
        """The auto-mapper's schedule for ``workload`` under this model's settings."""
        from codesign.mapper import map_workload
        return map_workload(workload, self.accel, objective=self.objective, budget_s=self.map_budget_s,
                            mode=self.mode, seed=self.seed, progress=False, effort=self.effort)

    def measure_workload(self, workload: Workload) -> HwMetrics:
        """Map (auto-mapper) and simulate one workload."""
        schedule = self.map(workload)
        result = simulate(workload, self.accel, schedule)
        return HwMetrics(float(result.seconds), float(result.energy_total_pj), float(result.cycles))

    def measure_workload_cached(self, workload: Workload) -> HwMetrics:
        """:meth:`measure_workload`, cached by a digest of the workload's JSON (shapes, bits, masks)."""
        blob = json.dumps(workload.to_dict(), sort_keys=True, default=str)
        key = f"workload|{hashlib.sha1(blob.encode()).hexdigest()}"
        return self._cached(key, lambda: self.measure_workload(workload))

    def with_accelerator(self, accel: Accelerator) -> "HardwareModel":
        """The same mapper settings and cache file on another accelerator (its own cache entries)."""
        return HardwareModel(accel, objective=self.objective, map_budget_s=self.map_budget_s, seed=self.seed,
                             mode=self.mode, cache_path=self.cache_path, effort=self.effort)

    def lower(self, module, input_shape: tuple[int, ...], name: str | None = None) -> Workload:
        """Lower a torch module at batch 1 (``input_shape`` = (C, H, W)) to the workload IR."""
        from codesign.lower import lower_model
        was_training = module.training
        module.eval()
        try:
            return lower_model(module, (1, *input_shape), name=name)
        finally:
            module.train(was_training)

    def measure_model(self, module, input_shape: tuple[int, ...], name: str | None = None) -> HwMetrics:
        return self.measure_workload(self.lower(module, input_shape, name))

    def measure_architecture(self, arch) -> HwMetrics:
        """The whole network of an architecture record (cached by its string)."""
        from search_spaces.nasa_space import build_model, parse_architecture
        arch = parse_architecture(arch)
        key = f"arch|{arch.to_string()}"
        return self._cached(key, lambda: self.measure_model(build_model(arch, seed=0), arch.space.input_shape,
                                                            name=arch.space.key))

    def block_cost(self, block, candidate) -> HwMetrics:
        """One block candidate alone at the block's input shape (``skip`` is free)."""
        from search_spaces.nasa_space import Candidate, build_block
        cand = candidate if isinstance(candidate, Candidate) else Candidate.parse(candidate)
        if cand.is_skip:
            return HwMetrics.zero()
        key = (f"block|{cand.name}|{block.in_channels}x{block.in_size}x{block.in_size}"
               f"->{block.out_channels}/s{block.stride}")
        shape = (block.in_channels, block.in_size, block.in_size)
        return self._cached(key, lambda: self.measure_model(build_block(cand, block.in_channels, block.out_channels,
                                                                        block.stride), shape,
                                                            name=f"b{block.index}.{cand.name}"))

    def cost_table(self, space, progress: bool = False) -> list[np.ndarray]:
        """Per block: an array (candidates x 2) of [latency_s, energy_pj], in candidate order."""
        jobs = [(b, c) for b in space.blocks for c in b.candidates]
        it = jobs
        if progress:
            from tqdm import tqdm
            it = tqdm(jobs, desc="hw cost per block candidate", unit="cand", leave=False)
        values: dict[tuple[int, str], HwMetrics] = {}
        for b, c in it:
            values[(b.index, c.name)] = self.block_cost(b, c)
        self.flush()
        return [np.array([[values[(b.index, c.name)].latency_s, values[(b.index, c.name)].energy_pj]
                          for c in b.candidates], dtype=np.float64) for b in space.blocks]
