"""The report's pictures: test error against training wall-clock and against examples
backpropagated (BENCHMARK.md's protocol), per method its mean over seeds with a min-max band
and each seed as a thin line; each method's own plot; and ``save_figure``, which writes any of
them. They draw runs as ``selectkit.report.load_run`` reads them."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from selectkit.io import atomic_write
from selectkit.methods import METHODS
from selectkit.report import machine_label

# The picture's two x axes: curve column, scale for display, axis label, format of an end point.
X_AXES = (("wall_s", 1.0, "training wall-clock (s, evaluation excluded)", "{:.0f} s"),
          ("examples_seen", 1e-6, "examples backpropagated (millions)", "{:.2f} M examples"))


def curve_xy(run: Dict[str, Any], x: str = "wall_s") -> Tuple[Any, Any]:
    """A run's curve as arrays (x, test error in %), in x order, rows missing either left out."""
    import numpy as np

    pts = sorted((row[x], 100 * row["test_error"]) for row in run["curve"]
                 if math.isfinite(row.get(x, math.nan)) and math.isfinite(row["test_error"]))
    arr = np.asarray(pts, dtype=float).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def fit_xlim(runs: Sequence[Dict[str, Any]], x: str = "wall_s",
             margin: float = 1.15) -> Tuple[float, List[Dict[str, Any]]]:
    """The x limit that shows the informative part of the curves, and the runs that end beyond it.

    The limit is ``margin`` times the largest per-method median end point, so one stalled run
    does not squeeze every other curve into the left of the picture; where every run ends
    before that, it is the last end point plus 2 %. The caller marks the runs beyond it.

    Raises:
        ValueError: margin < 1, or no run has a point on the x axis.
    """
    if margin < 1:
        raise ValueError(f"{margin=} should be >= 1 (the limit must show each method's median run)")
    ends: Dict[str, List[float]] = {}
    for r in runs:
        xs, _ = curve_xy(r, x)
        if len(xs):
            ends.setdefault(r["label"], []).append(float(xs[-1]))
    if not ends:
        raise ValueError(f"no run has a curve point with {x!r}: nothing to plot")
    limit = min(margin * max(statistics.median(e) for e in ends.values()),
                1.02 * max(max(e) for e in ends.values()))
    beyond = [r for r in runs if len(xs := curve_xy(r, x)[0]) and xs[-1] > limit]
    return limit, beyond


def mean_band(runs: Sequence[Dict[str, Any]], x: str = "wall_s", points: int = 200) -> Optional[Tuple[Any, ...]]:
    """Mean, minimum and maximum test error (%) over runs (a method's seeds), each interpolated
    onto a common grid over the x range every run covers.

    Returns:
        (grid, mean, min, max) arrays, or None where the runs share no x range.
    """
    import numpy as np

    curves = [c for c in (curve_xy(r, x) for r in runs) if len(c[0])]
    if not curves:
        return None
    lo, hi = max(c[0][0] for c in curves), min(c[0][-1] for c in curves)
    if not lo < hi:
        return None
    grid = np.linspace(lo, hi, points)
    ys = np.stack([np.interp(grid, xs, es) for xs, es in curves])
    return grid, ys.mean(axis=0), ys.min(axis=0), ys.max(axis=0)


def figure_title(runs: Sequence[Dict[str, Any]]) -> str:
    """The picture's title: the task(s) and the machine the runs were measured on."""
    tasks = ", ".join(dict.fromkeys(str(r.get("task") or "unknown task") for r in runs))
    return f"Test error on {tasks}, measured on {machine_label(runs)}"


# Matplotlib's ten default colours, then distinct named ones: a study with more than ten methods
# (the online one has eleven) must not draw two of them in the same colour.
_EXTRA_COLOURS = ("black", "darkgoldenrod", "teal", "indigo", "lime", "crimson", "slategrey", "navy", "olive",
                  "deeppink")


def method_colours(labels: List[str]) -> Dict[str, str]:
    """One distinct colour per label, in order (the default cycle first); repeats only past 20."""
    palette = [f"C{i}" for i in range(10)] + list(_EXTRA_COLOURS)
    return {label: palette[i % len(palette)] for i, label in enumerate(labels)}


def _draw_panel(ax, by_label: Dict[str, List[Dict[str, Any]]], colours: Dict[str, str], x: str,
                scale: float, end_fmt: str, ylim: Tuple[float, float]) -> None:
    """One panel: per method its seeds as thin faint lines, their mean and min-max band, and an
    arrow and a note at the right edge for every run the fitted x limit cuts."""
    import numpy as np

    runs = [r for rs in by_label.values() for r in rs]
    limit, beyond = fit_xlim(runs, x)
    for label, rs in by_label.items():
        c, n = colours[label], len(rs)
        name = f"{label} ({n} seed{'s' if n > 1 else ''})"
        band = mean_band(rs, x) if n > 1 else None
        for r in rs:  # one seed is drawn as its method's line
            xs, ys = curve_xy(r, x)
            ax.plot(xs * scale, ys, color=c, **({"lw": 0.7, "alpha": 0.4} if n > 1 else {"lw": 1.8}))
        if band is not None:
            grid, avg, lo, hi = band
            ax.fill_between(grid * scale, lo, hi, color=c, alpha=0.15, lw=0)
            ax.plot(grid * scale, avg, color=c, lw=1.8)
        ax.plot([], [], color=c, lw=1.8, label=name)  # one legend entry per method
    ax.set_xlim(0, limit * scale)
    shown = sorted(beyond, key=lambda r: -curve_xy(r, x)[0][-1])
    for i, r in enumerate(shown[:6]):
        xs, ys = curve_xy(r, x)
        y = min(max(float(np.interp(limit, xs, ys)), ylim[0]), ylim[1])
        c = colours[r["label"]]
        ax.plot([limit * scale], [y], marker=">", ms=8, color=c, clip_on=False, ls="none")
        seed = r.get("seed") if r.get("seed") is not None else r["name"]
        ax.text(0.985, 0.97 - 0.07 * i, f"{r['label']} seed {seed} ends at {end_fmt.format(xs[-1] * scale)} →",
                transform=ax.transAxes, ha="right", va="top", fontsize=8, color=c,
                bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none", "pad": 1})
    if len(shown) > 6:
        ax.text(0.985, 0.97 - 0.07 * 6, f"and {len(shown) - 6} more runs end beyond the axis →",
                transform=ax.transAxes, ha="right", va="top", fontsize=8, color="grey")


def plot(runs: List[Dict[str, Any]], path: str | Path, summary: Optional[Dict[str, Any]] = None) -> None:
    """PNG of test error against training wall-clock (left) and examples backpropagated (right):
    per method one colour, its mean over seeds with a min-max band and each seed as a thin line;
    x axes fitted to the informative part (``fit_xlim``), with runs ending beyond marked at the
    right edge; the target errors as dotted lines; titled with the task and the machine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_label: Dict[str, List[Dict[str, Any]]] = {}
    for r in runs:
        by_label.setdefault(r["label"], []).append(r)
    colours = method_colours(list(by_label))
    ys_all = [100 * row["test_error"] for r in runs for row in r["curve"] if math.isfinite(row["test_error"])]
    lo = min(ys_all) if ys_all else 0.0
    ylim = (max(0.0, lo * 0.9), min(100.0, max(lo * 2.5, lo + 5)))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    for ax, (x, scale, xlabel, end_fmt) in zip(axes, X_AXES):
        _draw_panel(ax, by_label, colours, x, scale, end_fmt, ylim)
        for k, v in (summary or {}).get("targets", {}).items():
            ax.axhline(100 * v, color="grey", lw=0.8, ls=":")
            ax.text(0.005, 100 * v, f" {k}", transform=ax.get_yaxis_transform(), va="bottom", fontsize=8,
                    color="grey")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(*ylim)
    axes[0].set_ylabel("test error (%)")
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title_fontsize=8,
                   title="line: mean over seeds\nband: min to max\nthin: each seed")
    fig.suptitle(figure_title(runs))
    save_figure(fig, path, dpi=120)


def save_figure(fig, path: str | Path, dpi: int) -> None:
    """Write a figure atomically and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi))
    plt.close(fig)


def method_plots(runs: List[Dict[str, Any]], out_dir: str | Path) -> List[str]:
    """Each method's own plot (e.g. AutoAssist's), for methods whose runs are present; returns
    the file names written."""
    names = []
    for method in METHODS.values():
        section = method.report
        if section is None or section.plot is None:
            continue
        if any(section.summarise([r]) is not None for r in runs):
            section.plot(runs, Path(out_dir) / section.plot_name)
            names.append(section.plot_name)
    return names
