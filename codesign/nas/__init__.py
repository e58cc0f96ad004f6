"""Neural architecture search for an accelerator: conv/shift/adder hybrids (NASA-style) and
sparse-attention ViTs (ViTCoD-style).

* :mod:`codesign.nas.hardware` -- latency/energy of architectures and block candidates from the
  hardware model (lower -> map -> simulate), cached;
* :mod:`codesign.nas.train` -- short seeded training, CUDA mixed precision when present;
* :mod:`codesign.nas.differentiable` -- supernet search: Gumbel-softmax, hardware-cost expectation,
  progressive pretraining;
* :mod:`codesign.nas.pareto` -- the outer NSGA-II loop on an Optuna database (resume, workers),
  independent of the space;
* :mod:`codesign.nas.spaces` -- the interface between that loop and a search space, with the
  implementations :mod:`codesign.nas.nasa_space` (``--space nasa``) and
  :mod:`codesign.nas.vitcod_space` (``--space vitcod``: mask rule x Q/K auto-encoder x dense/sparse split);
* :mod:`codesign.nas.front` -- the Pareto front, its JSON, plot and table;
* :mod:`codesign.nas.cli` -- ``codesign search`` (:func:`add_search_parser`).

Heavy imports (torch, optuna) happen inside the modules, not here.
"""
__all__ = ["add_search_parser"]


def add_search_parser(subparsers):
    """Register the ``search`` sub-command (see :mod:`codesign.nas.cli`)."""
    from codesign.nas.cli import add_search_parser as _add
    return _add(subparsers)
