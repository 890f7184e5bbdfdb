"""Distillation on digits: a teacher MLP, a much smaller student trained with CE, KD or DKD."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import cast

import numpy as np
import torch

from .. import data
from ..core import ExperimentResult, LabContext, cosine_lr, require, rng_for
from ..nets import SeedMLP, seed_generators

NAME = "distillation"
TEST_FRACTION = 0.5
TEACHER = [64, 256, 256, 10]
STUDENT_HIDDEN = 8
T = 4.0
KD_WEIGHT = 0.9  # Hinton-style: (1 - w) CE + w T^2 KL
DKD_ALPHA, DKD_BETA = 1.0, 8.0

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]


def _losses() -> dict[str, LossFn]:
    ce, kd, dkd = require("cross_entropy_loss", "kd_loss", "dkd_loss")
    return {
        "ce": lambda s, t, y, prog: ce(s, y),
        "kd": lambda s, t, y, prog: (1 - KD_WEIGHT) * ce(s, y) + KD_WEIGHT * kd(s, t, temperature=T),
        # DKD is used with the hard-label CE; linear warm-up over the first 20% of training (paper: 20 epochs)
        "dkd": lambda s, t, y, prog: (
            ce(s, y) + dkd(s, t, y, alpha=DKD_ALPHA, beta=DKD_BETA, temperature=T, warmup=0.2, epoch=prog)
        ),
    }


def _make_data(seeds: list[int]) -> dict[str, torch.Tensor]:
    X, y = data.digits()
    parts: dict[str, list[np.ndarray]] = {"xtr": [], "ytr": [], "xte": [], "yte": []}
    for seed in seeds:
        split = data.split_indices(len(y), TEST_FRACTION, rng_for(NAME, seed), labels=y)
        xtr, xte = data.standardize(X[split.train], X[split.test])
        parts["xtr"].append(xtr)
        parts["xte"].append(xte)
        parts["ytr"].append(y[split.train])
        parts["yte"].append(y[split.test])
    return {
        k: torch.tensor(np.stack(v), dtype=torch.float32 if k[0] == "x" else torch.long)
        for k, v in parts.items()
    }


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> list[float]:
    return (100 * (logits.argmax(-1) == y).float().mean(dim=1)).tolist()


def _fit(
    model: SeedMLP, d: dict[str, torch.Tensor], loss: LossFn, teacher_logits: torch.Tensor | None, steps: int, lr: float
) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = cosine_lr(opt, steps)
    x, y = d["xtr"], d["ytr"]
    for step in range(steps):
        out = model(x)
        tl = teacher_logits if teacher_logits is not None else out
        prog = (step + 1) / steps
        total = cast(torch.Tensor, sum(loss(out[i], tl[i], y[i], prog) for i in range(len(y))))
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        sched.step()


def run(ctx: LabContext) -> ExperimentResult:
    losses = _losses()
    (ce,) = require("cross_entropy_loss")
    from ..plots import legend_outside, plt, seed_strip

    seeds = ctx.seeds
    steps = ctx.pick(400, 200, 15)
    d = _make_data(seeds)
    res = ExperimentResult(
        NAME,
        "Knowledge distillation into a tiny student",
        metric="student test accuracy %",
        higher_is_better=True,
        baseline="ce",
        reference_methods=("teacher",),
        setup=(
            f"scikit-learn digits, stratified {int((1 - TEST_FRACTION) * 100)}/{int(TEST_FRACTION * 100)} split per "
            f"seed, standardised pixels. Teacher MLP {'-'.join(map(str, TEACHER))} "
            f"({sum(a * b + b for a, b in itertools.pairwise(TEACHER)):,} parameters) trained with CE; student "
            f"MLP 64-{STUDENT_HIDDEN}-10 ({64 * STUDENT_HIDDEN + STUDENT_HIDDEN + STUDENT_HIDDEN * 10 + 10} "
            f"parameters). Full-batch Adam (weight decay 1e-4, cosine), {steps} steps each; every student of a "
            f"seed starts from the same weights. `kd` = {1 - KD_WEIGHT:.1f} CE + {KD_WEIGHT} `kd_loss` (T = {T:g}, "
            f"includes T^2); `dkd` = CE + `dkd_loss` (alpha = {DKD_ALPHA:g}, beta = {DKD_BETA:g}, T = {T:g}, linear "
            "warm-up over the first 20% of steps)."
        ),
    )
    bar = ctx.bar(1 + len(losses), NAME)
    bar.set_postfix_str("teacher", refresh=False)
    teacher = SeedMLP(TEACHER, seed_generators(NAME, seeds, "teacher"))
    _fit(teacher, d, lambda s, t, y, prog: ce(s, y), None, steps, lr=3e-3)
    teacher.eval()
    with torch.no_grad():
        t_train = teacher(d["xtr"])
        t_test_acc = _accuracy(teacher(d["xte"]), d["yte"])
    bar.update(1)
    for m, loss in losses.items():
        bar.set_postfix_str(m, refresh=False)
        student = SeedMLP([64, STUDENT_HIDDEN, 10], seed_generators(NAME, seeds, "student"))
        _fit(student, d, loss, t_train, steps, lr=1e-2)
        with torch.no_grad():
            res.methods[m] = _accuracy(student(d["xte"]), d["yte"])
        bar.update(1)
    bar.close()
    res.methods["teacher"] = t_test_acc

    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    x = np.arange(len(seeds))
    for j, m in enumerate(("kd", "dkd")):
        gain = np.array(res.methods[m]) - np.array(res.methods["ce"])
        ax.bar(x + (j - 0.5) * 0.38, gain, 0.38, label=f"{m} − ce")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x, [str(s) for s in seeds])
    ax.set_xlabel("seed")
    ax.set_ylabel("student accuracy gain (points)")
    legend_outside(ax)
    ax.set_title("Paired gain over the CE-trained student, per seed", fontsize=10)
    res.figures.append(
        ctx.figure(fig, f"{NAME}_gain.png", "Per-seed accuracy gain of the distilled student over CE")
    )
    res.figures.append(seed_strip(ctx, res))
    return res
