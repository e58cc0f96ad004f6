"""The Pareto front of (accuracy max, latency min, energy min): computation, JSON, PNG, table."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["dominates", "pareto_front", "front_table", "write_front_json", "plot_front", "FRONT_FORMAT"]

FRONT_FORMAT = "codesign-front/1"
#: (key, sense): +1 to maximise, -1 to minimise.
OBJECTIVES: tuple[tuple[str, int], ...] = (("accuracy", +1), ("latency_s", -1), ("energy_pj", -1))


def _vec(point: dict[str, Any], objectives=OBJECTIVES) -> tuple[float, ...]:
    return tuple(sense * float(point[key]) for key, sense in objectives)


def dominates(a: dict[str, Any], b: dict[str, Any], objectives=OBJECTIVES) -> bool:
    """True when ``a`` is at least as good as ``b`` in every objective and better in one."""
    va, vb = _vec(a, objectives), _vec(b, objectives)
    return all(x >= y for x, y in zip(va, vb)) and any(x > y for x, y in zip(va, vb))


def pareto_front(points: Sequence[dict[str, Any]], objectives=OBJECTIVES) -> list[dict[str, Any]]:
    """The non-dominated points, one per distinct objective vector (lowest trial number kept),
    sorted by latency then energy."""
    pts = [p for p in points if all(math.isfinite(float(p[k])) for k, _ in objectives)]
    front = [p for p in pts if not any(dominates(q, p, objectives) for q in pts if q is not p)]
    seen: dict[tuple[float, ...], dict[str, Any]] = {}
    for p in sorted(front, key=lambda p: p.get("trial", 0)):
        seen.setdefault(_vec(p, objectives), p)
    return sorted(seen.values(), key=lambda p: (float(p["latency_s"]), float(p["energy_pj"]), -float(p["accuracy"]),
                                                p.get("trial", 0)))


def _counts(p: dict[str, Any]) -> str:
    c = (p.get("arch") or {}).get("counts", {})
    return f"{c.get('conv', 0)}/{c.get('shift', 0)}/{c.get('adder', 0)}/{c.get('skip', 0)}"


#: The NASA space's columns (the default): family and conv/shift/adder/skip block counts.
NASA_COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("family", lambda p: str(p.get("family", "?"))), ("conv/shift/adder/skip", _counts))


def front_table(front: Sequence[dict[str, Any]], reference: dict[str, Any] | None = None,
                columns: Sequence[tuple[str, Callable[[dict[str, Any]], str]]] | None = None) -> str:
    """A plain-text table (also valid Markdown) of the front; ``reference`` (e.g. the best all-conv
    network) is appended, marked, when it is not on the front. ``columns``: the space-specific
    (header, point -> text) columns after "trial" (default: the NASA space's)."""
    columns = NASA_COLUMNS if columns is None else tuple(columns)
    rows = [(p, "") for p in front]
    if reference is not None and all(p.get("trial") != reference.get("trial") for p in front):
        rows.append((reference, " (ref)"))
    headers = ["trial", *(h for h, _ in columns), "val acc %", "test acc %", "latency ms", "energy uJ", "EDP uJ*ms"]
    body = []
    for p, mark in rows:
        body.append([f"{p.get('trial', '-')}{mark}", *(fn(p) for _, fn in columns),
                     f"{100 * float(p['accuracy']):.2f}",
                     f"{100 * float(p['test_accuracy']):.2f}" if p.get("test_accuracy") is not None else "-",
                     f"{1e3 * float(p['latency_s']):.4f}", f"{1e-6 * float(p['energy_pj']):.3f}",
                     f"{1e-6 * float(p['energy_pj']) * 1e3 * float(p['latency_s']):.4g}"])
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    fmt = lambda cells: "| " + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    lines = [fmt(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [fmt(r) for r in body]
    return "\n".join(lines)


def write_front_json(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"format": FRONT_FORMAT, **payload}, indent=1, sort_keys=False))
    tmp.replace(path)
    return path


def plot_front(path: str | Path, points: Sequence[dict[str, Any]], front: Sequence[dict[str, Any]],
               title: str = "", reference_family: str | None = "conv", reference_label: str = "all-conv") -> Path:
    """Accuracy vs latency and accuracy vs energy: every trial, the front, the trials of
    ``reference_family`` (all-conv networks in the NASA space, dense ones in ViTCoD's) marked."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(path)
    on_front = {p.get("trial") for p in front}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, key, scale, label in ((axes[0], "latency_s", 1e3, "modelled latency (ms)"),
                                  (axes[1], "energy_pj", 1e-6, "modelled energy (uJ)")):
        rest = [p for p in points if p.get("trial") not in on_front]
        conv = [p for p in points if reference_family is not None and p.get("family") == reference_family]
        ax.scatter([scale * p[key] for p in rest], [100 * p["accuracy"] for p in rest], s=18, c="0.7",
                   label="trials")
        # The front is non-dominated in all three objectives, so its 2-D projections need not be
        # monotonic: points, not a line; each labelled with its trial number.
        ax.scatter([scale * p[key] for p in front], [100 * p["accuracy"] for p in front], c="tab:red", s=28,
                   label="Pareto front (3 objectives)", zorder=3)
        for p in front:
            ax.annotate(str(p.get("trial")), (scale * p[key], 100 * p["accuracy"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        if conv:
            ax.scatter([scale * p[key] for p in conv], [100 * p["accuracy"] for p in conv], marker="s",
                       facecolors="none", edgecolors="tab:blue", s=60, label=reference_label or reference_family)
        ax.set_xlabel(label)
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
