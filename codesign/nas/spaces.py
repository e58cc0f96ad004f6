"""The interface between the outer search loop (:mod:`codesign.nas.pareto`) and a search space.

:mod:`codesign.nas.pareto` owns everything that does not depend on what is searched: the Optuna
study and its storage, resuming, workers, stale-trial recovery, heartbeats, duplicate detection, the
time budget, the front and its files. A :class:`SpaceDriver` owns the rest:

* :meth:`~SpaceDriver.validate` -- space-specific settings (fills the space's defaults for ``--hw``,
  ``--lr``, ``--baseline``; raises :class:`~hw_models.errors.CodesignError` with one line);
* :meth:`~SpaceDriver.make_context` / :meth:`~SpaceDriver.prepare` -- the per-search context (data set,
  hardware model, device, and whatever the space trains once per search: NASA's supernet, ViTCoD's
  pretrained dense ViT and its attention maps; cached in the run directory, keyed by the settings,
  so ``--resume`` and extra workers reuse it);
* :meth:`~SpaceDriver.enqueue_baselines` -- the reference trials evaluated first;
* :meth:`~SpaceDriver.suggest` -- a candidate from the trial's parameters (and its canonical string,
  the key of the duplicate check);
* :meth:`~SpaceDriver.evaluate` -- train / measure a candidate -> objectives + the trial's record;
* :meth:`~SpaceDriver.point_extras`, :meth:`~SpaceDriver.reference`, :meth:`~SpaceDriver.table_columns`,
  :meth:`~SpaceDriver.front_extras` -- what the front JSON, plot and table show.

Implementations: :mod:`codesign.nas.nasa_space` (``nasa``), :mod:`codesign.nas.vitcod_space`
(``vitcod``); :func:`get_driver` maps ``--space`` to one (imported lazily).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from hw_models.errors import CodesignError

__all__ = ["SpaceDriver", "SearchContext", "SPACES", "space_names", "get_driver"]

#: --space name -> "module:class" of its driver.
SPACES: dict[str, str] = {
    "nasa": "codesign.nas.nasa_space:NasaDriver",
    "vitcod": "codesign.nas.vitcod_space:VitcodDriver",
}


def space_names() -> tuple[str, ...]:
    return tuple(SPACES)


def get_driver(name: str) -> "SpaceDriver":
    if name not in SPACES:
        raise CodesignError(f"unknown search space {name!r} (known: {', '.join(SPACES)})")
    mod, _, cls = SPACES[name].partition(":")
    return getattr(importlib.import_module(mod), cls)()


@dataclass
class SearchContext:
    """What every trial of a worker shares. Drivers subclass it for their own state."""

    cfg: Any                      # codesign.nas.pareto.SearchConfig
    bundle: Any                   # codesign.data.DataBundle
    hw: Any                       # codesign.nas.hardware.HardwareModel
    device: Any                   # torch.device

    def flush(self) -> None:
        """Write new hardware-cache entries to the run directory."""
        self.hw.flush()


#: A table column: (header, point -> cell text).
Column = tuple[str, Callable[[dict], str]]


class SpaceDriver:
    """One search space as the outer loop sees it (see the module docstring)."""

    name: str = ""
    #: --hw when none is given.
    default_hw: str = ""
    #: --baseline when none is given.
    default_baselines: tuple[str, ...] = ()
    #: --strategy values the space supports.
    strategies: tuple[str, ...] = ("sample",)
    #: How the reference point is called in the printed summary and the plot legend.
    reference_label: str = "reference"
    #: Trials of this family are marked in the plot (legend: ``reference_marker``).
    reference_family: str | None = None
    reference_marker: str = ""
    #: Trial user attributes that a duplicate trial does not copy (beside the loop's own).
    private_attrs: tuple[str, ...] = ()
    #: SearchConfig fields beyond the loop's own that a resumed or joining worker must share.
    identity_keys: tuple[str, ...] = ()

    def default_lr(self, cfg) -> float:
        raise NotImplementedError

    def validate(self, cfg) -> None:
        """Space-specific checks; called after the loop's own, with the space's defaults filled in."""

    def make_context(self, cfg) -> SearchContext:
        """Load the data set, the accelerator and the space (cheap; errors here are the user's)."""
        raise NotImplementedError

    def prepare(self, ctx: SearchContext, log: Callable[[str], None] | None = None) -> None:
        """Once per search and worker, before the first trial: the expensive shared state."""

    def describe(self, ctx: SearchContext) -> str:
        """A few words on the space, for the start-up line."""
        return self.name

    def enqueue_baselines(self, study, ctx: SearchContext) -> list[str]:
        return []

    def suggest(self, trial, ctx: SearchContext) -> tuple[str, Any]:
        """(canonical string, candidate) from the trial's parameters."""
        raise NotImplementedError

    def evaluate(self, trial, study, candidate: Any, ctx: SearchContext) -> tuple[tuple[float, float, float],
                                                                                     dict[str, Any]]:
        """-> ((validation accuracy, latency s, energy pJ), user attributes to store on the trial)."""
        raise NotImplementedError

    def point_extras(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """Extra fields of a front point, from the trial's user attributes."""
        return {}

    def reference(self, points: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The point the summary compares against (None: no reference)."""
        return None

    def table_columns(self) -> list[Column]:
        """Space-specific columns of the front table (after "trial")."""
        return []

    def front_extras(self, front: list[dict[str, Any]], reference: dict[str, Any] | None) -> dict[str, Any]:
        """Space-specific entries of front.json."""
        return {}
