"""Matplotlib (Agg) helpers shared by the experiments."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, overload

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .core import ExperimentResult, Figure, LabContext
from .report import summarize

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["ERRORBAR_LABEL", "legend_outside", "plt", "positive_for_log", "seed_strip"]

ERRORBAR_LABEL = "mean ± std over seeds"


@overload
def seed_strip(ctx: LabContext, res: ExperimentResult, ax: None = None) -> Figure: ...


@overload
def seed_strip(ctx: LabContext, res: ExperimentResult, ax: Axes) -> None: ...


def seed_strip(ctx: LabContext, res: ExperimentResult, ax: Axes | None = None) -> Figure | None:
    """Per-seed values of the primary metric per method (dots, paired seeds joined by faint lines),
    with mean ± std bars. Saved as ``<experiment>_metric.png`` unless an axis is given."""
    methods = list(res.methods)
    own = ax is None
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(methods) + 1.5), 3.4))
    n_seeds = len(next(iter(res.methods.values()), []))
    for s in range(n_seeds):
        ax.plot(range(len(methods)), [res.methods[m][s] for m in methods], color="0.8", lw=0.6, zorder=1)
    for i, m in enumerate(methods):
        vals = res.methods[m]
        mean, std = summarize(vals)
        color = "C3" if m == res.baseline else "C0"
        ax.scatter(
            [i] * len(vals),
            vals,
            s=12,
            color=color,
            alpha=0.6,
            zorder=2,
            label="one seed" if i == 0 else None,
        )
        ax.errorbar(
            [i + 0.18], [mean], yerr=[std], fmt="o", color="k", ms=4, capsize=3, zorder=3,
            label=ERRORBAR_LABEL if i == 0 else None,
        )  # fmt: skip
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    ax.set_ylabel(f"{res.metric} ({'higher' if res.higher_is_better else 'lower'} is better)")
    ax.grid(axis="y", alpha=0.3)
    if own:
        legend_outside(ax)
    else:  # a panel of a larger figure: the space to its right may be another panel
        ax.legend(fontsize=8)
    if not own:
        return None
    ax.set_title(f"{res.name}: per-seed {res.metric} (baseline in red)", fontsize=10)
    return ctx.figure(fig, f"{res.name}_metric.png", f"{res.name}: per-seed {res.metric} for each method")


def legend_outside(ax: Any, **kwargs: Any) -> Any:
    """A legend to the right of the axes, where it cannot cover data (saved with ``bbox_inches='tight'``)."""
    kwargs.setdefault("fontsize", 8)
    return ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kwargs)


def positive_for_log(values: Sequence[float] | np.ndarray) -> tuple[np.ndarray, int]:
    """``values`` with zeros (and negatives) replaced by NaN for a log axis, and how many were masked.

    matplotlib draws a non-positive value on a log axis as a spike to the bottom of the plot; a
    masked value is a gap instead, and the caller says in a label what the gaps mean.
    """
    arr = np.asarray(values, dtype=float)
    bad = arr <= 0
    return np.where(bad, np.nan, arr), int(bad.sum())
