"""Matplotlib (Agg) helpers shared by the experiments."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .core import ExperimentResult, Figure, LabContext
from .report import summarize

__all__ = ["plt", "seed_strip"]


def seed_strip(ctx: LabContext, res: ExperimentResult, ax: Any | None = None) -> Figure | None:
    """Per-seed values of the primary metric per method (dots, paired seeds joined by faint lines),
    with mean ± std bars. Saved as ``<experiment>_metric.png`` unless an axis is given."""
    methods = list(res.methods)
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(methods) + 1.5), 3.4))
    n_seeds = len(next(iter(res.methods.values()), []))
    for s in range(n_seeds):
        ax.plot(range(len(methods)), [res.methods[m][s] for m in methods], color="0.8", lw=0.6, zorder=1)
    for i, m in enumerate(methods):
        vals = res.methods[m]
        mean, std = summarize(vals)
        color = "C3" if m == res.baseline else "C0"
        ax.scatter([i] * len(vals), vals, s=12, color=color, alpha=0.6, zorder=2)
        ax.errorbar([i + 0.18], [mean], yerr=[std], fmt="o", color="k", ms=4, capsize=3, zorder=3)
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    ax.set_ylabel(f"{res.metric} ({'higher' if res.higher_is_better else 'lower'} is better)")
    ax.grid(axis="y", alpha=0.3)
    if not own:
        return None
    ax.set_title(f"{res.name}: per-seed {res.metric} (baseline in red)", fontsize=10)
    return ctx.figure(fig, f"{res.name}_metric.png", f"{res.name}: per-seed {res.metric} for each method")
