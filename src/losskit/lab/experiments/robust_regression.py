"""Robust regression: diabetes with 10% of the training targets replaced by large outliers."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F

from .. import data
from ..core import ExperimentResult, LabContext, cosine_lr, require, rng_for
from ..nets import SeedLinear, seed_generators

NAME = "robust_regression"
OUTLIER_FRACTION = 0.10
TEST_FRACTION = 0.3

LossFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def _losses() -> dict[str, LossFn]:
    huber_loss, log_cosh_loss, quantile_loss = require("huber_loss", "log_cosh_loss", "quantile_loss")
    return {
        "mse": lambda p, y, s: F.mse_loss(p, y),
        "huber": lambda p, y, s: huber_loss(p, y, delta=s),
        "l1": lambda p, y, s: F.l1_loss(p, y),
        # log-cosh has a built-in scale of 1: measure residuals in units of s so its quadratic zone is ~s wide
        "log_cosh": lambda p, y, s: log_cosh_loss(p / s, y / s),
        "quantile_0.5": lambda p, y, s: quantile_loss(p, y, quantile=0.5),
        "mse_clean": lambda p, y, s: F.mse_loss(p, y),
    }


def _make_data(seeds: list[int]) -> dict[str, torch.Tensor]:
    X, y = data.diabetes()
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("xtr", "ytr", "ytr_clean", "xte", "yte", "scale")}
    for seed in seeds:
        rng = rng_for(NAME, seed)
        split = data.split_indices(len(y), TEST_FRACTION, rng)
        xtr, xte = data.standardize(X[split.train], X[split.test])
        ytr = y[split.train].copy()
        out["ytr_clean"].append(ytr.copy())
        k = round(OUTLIER_FRACTION * len(ytr))
        bad = rng.choice(len(ytr), size=k, replace=False)
        # one-sided gross errors, 5-10 target standard deviations (e.g. a unit or entry error)
        ytr[bad] += rng.uniform(5.0, 10.0, size=k) * ytr.std()
        # robust scale of the (corrupted) training targets, in target units: 1.4826 * MAD
        out["scale"].append(np.array(1.4826 * np.median(np.abs(ytr - np.median(ytr)))))
        out["xtr"].append(xtr)
        out["ytr"].append(ytr)
        out["xte"].append(xte)
        out["yte"].append(y[split.test])
    return {k: torch.tensor(np.stack(v), dtype=torch.float32) for k, v in out.items()}


def _fit(
    d: dict[str, torch.Tensor],
    loss: LossFn,
    seeds: list[int],
    steps: int,
    clean: bool,
    delta_mult: float = 1.0,
) -> torch.Tensor:
    """Train one linear model per seed (batched) and return per-seed test predictions ``(S, n_test)``."""
    y = d["ytr_clean"] if clean else d["ytr"]
    model = SeedLinear(d["xtr"].shape[-1], 1, seed_generators(NAME, seeds))
    with torch.no_grad():  # start at the median target (robust, same start for every loss)
        model.bias.copy_(y.median(dim=1).values.view(-1, 1, 1))
    opt = torch.optim.Adam(model.parameters(), lr=2.0)
    sched = cosine_lr(opt, steps)
    scales = [float(s) * delta_mult for s in d["scale"]]
    for _ in range(steps):
        pred = model(d["xtr"]).squeeze(-1)
        total = cast(torch.Tensor, sum(loss(pred[i], y[i], scales[i]) for i in range(len(seeds))))
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        test_pred: torch.Tensor = model(d["xte"]).squeeze(-1)
        return test_pred


def _rmse(pred: torch.Tensor, y: torch.Tensor) -> list[float]:
    return ((pred - y) ** 2).mean(dim=1).sqrt().tolist()


def run(ctx: LabContext) -> ExperimentResult:
    losses = _losses()
    from ..plots import ERRORBAR_LABEL, legend_outside, plt, seed_strip

    steps = ctx.pick(600, 300, 30)
    seeds = ctx.seeds
    d = _make_data(seeds)
    res = ExperimentResult(
        NAME,
        "Robust regression with outlier targets",
        metric="test RMSE",
        higher_is_better=False,
        baseline="mse",
        reference_methods=("mse_clean",),
        setup=(
            f"scikit-learn diabetes (442 x 10, raw target 25-346), random {int((1 - TEST_FRACTION) * 100)}/"
            f"{int(TEST_FRACTION * 100)} split per seed, inputs standardised on the training split. "
            f"{int(OUTLIER_FRACTION * 100)}% of the *training* targets get a one-sided gross error of "
            "+5..10 target standard deviations; the test targets are clean. Linear model, full-batch Adam "
            f"(lr 2, cosine), {steps} steps, started at the median target. Huber's delta is in target units: "
            "delta = 1.4826 x MAD of the (corrupted) training targets; log-cosh is applied to residuals "
            "divided by the same scale; quantile(0.5) is half the L1 loss. `mse_clean` is MSE trained on the "
            "uncorrupted targets: the ceiling, not a candidate."
        ),
    )
    mae: dict[str, list[float]] = {}
    names = list(losses)
    bar = ctx.bar(len(names), NAME)
    for m in names:
        bar.set_postfix_str(m, refresh=False)
        pred = _fit(d, losses[m], seeds, steps, clean=(m == "mse_clean"))
        res.methods[m] = _rmse(pred, d["yte"])
        mae[m] = (pred - d["yte"]).abs().mean(dim=1).tolist()
        bar.update(1)
    bar.close()
    res.secondary["test MAE"] = (False, mae)
    scale = float(d["scale"].mean())
    res.notes.append(
        f"Huber delta (1.4826 x MAD of training targets), mean over seeds: {scale:.1f} target units."
    )

    # delta sweep: the same Huber fit with delta from "much smaller than the noise" to "larger than outliers"
    mults = ctx.pick([0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0], [0.01, 0.3, 1.0, 10.0], [0.1, 10.0])
    huber = losses["huber"]
    sweep = []
    for mult in mults:
        sweep.append(_rmse(_fit(d, huber, seeds, steps, clean=False, delta_mult=mult), d["yte"]))
    res.extra["huber_delta_sweep"] = {
        "delta_target_units": [mult * scale for mult in mults],
        "test_rmse_mean": [float(np.mean(v)) for v in sweep],
    }

    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    deltas = [mult * scale for mult in mults]
    stds = [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in sweep]  # the report's sample std
    ax.errorbar(deltas, [np.mean(v) for v in sweep], yerr=stds, fmt="o-", capsize=3,
                label=f"Huber(delta), {ERRORBAR_LABEL}")  # fmt: skip
    for m, color, ls in (("mse", "C3", "--"), ("l1", "C2", ":"), ("mse_clean", "k", "-.")):
        ax.axhline(float(np.mean(res.methods[m])), color=color, ls=ls, lw=1, label=m)
    ax.axvline(scale, color="0.6", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("Huber delta (target units; grey line = 1.4826 MAD)")
    ax.set_ylabel("test RMSE (lower is better)")
    legend_outside(ax)
    ax.set_title("Huber delta must be set in target units", fontsize=10)
    res.figures.append(
        ctx.figure(
            fig,
            f"{NAME}_delta.png",
            "Huber test RMSE against delta: tiny delta behaves like L1, huge delta like MSE (outliers win)",
        )
    )
    res.figures.append(seed_strip(ctx, res))
    return res
