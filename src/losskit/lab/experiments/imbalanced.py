"""Long-tailed digits: cross-entropy, class weights, focal loss, poly-1."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict, cast

import numpy as np
import torch

from .. import data
from ..core import ExperimentResult, Figure, LabContext, cosine_lr, require, rng_for
from ..nets import SeedMLP, seed_generators

NAME = "imbalanced_classification"
RATIO = 100.0
TEST_FRACTION = 0.4
NUM_CLASSES = 10
TAIL = 3  # minority classes = the 3 rarest in the training profile
EFFECTIVE_BETA = 0.99
GAMMA = 2.0

LossFn = Callable[[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


class _Data(TypedDict):
    """Per-seed stacks: inputs ``(S, n, 64)``, targets ``(S, n)``, class order ``(S, C)``, class weights."""

    xtr: torch.Tensor
    ytr: torch.Tensor
    xte: torch.Tensor
    yte: torch.Tensor
    order: np.ndarray
    weights: list[dict[str, torch.Tensor]]


def _losses() -> dict[str, LossFn]:
    ce, focal, poly1, _ = require(
        "cross_entropy_loss", "focal_loss", "poly1_cross_entropy_loss", "class_weights"
    )
    return {
        "ce": lambda x, y, w: ce(x, y),
        "ce_w_inverse": lambda x, y, w: ce(x, y, weight=w["inverse"]),
        "ce_w_inverse_sqrt": lambda x, y, w: ce(x, y, weight=w["inverse_sqrt"]),
        "ce_w_effective_number": lambda x, y, w: ce(x, y, weight=w["effective_number"]),
        "focal": lambda x, y, w: focal(x, y, gamma=GAMMA),
        "focal_w_effective_number": lambda x, y, w: focal(x, y, gamma=GAMMA, weight=w["effective_number"]),
        "poly1": lambda x, y, w: poly1(x, y, epsilon=1.0),
    }


def _make_data(seeds: list[int]) -> _Data:
    (class_weights,) = require("class_weights")
    X, y = data.digits()
    X = X / 16.0
    xtr: list[np.ndarray] = []
    ytr: list[np.ndarray] = []
    xte: list[np.ndarray] = []
    yte: list[np.ndarray] = []
    order: list[np.ndarray] = []
    weights: list[dict[str, torch.Tensor]] = []
    for seed in seeds:
        rng = rng_for(NAME, seed)
        split = data.split_indices(len(y), TEST_FRACTION, rng, labels=y)
        perm = rng.permutation(NUM_CLASSES)  # which digit is frequent differs per seed
        keep = split.train[data.long_tailed_indices(y[split.train], RATIO, rng, class_order=perm)]
        xtr.append(X[keep])
        ytr.append(y[keep])
        xte.append(X[split.test])
        yte.append(y[split.test])
        order.append(perm)
        t = torch.tensor(y[keep])
        weights.append(
            {
                scheme: class_weights(t, NUM_CLASSES, scheme=scheme, beta=EFFECTIVE_BETA)
                for scheme in ("inverse", "inverse_sqrt", "effective_number")
            }
        )
    sizes = {len(a) for a in ytr}
    if len(sizes) != 1:  # the profile only depends on the rank, so every seed has the same size
        raise RuntimeError(f"long-tailed training sets differ in size across seeds: {sorted(sizes)}")
    return {
        "xtr": torch.tensor(np.stack(xtr), dtype=torch.float32),
        "ytr": torch.tensor(np.stack(ytr)),
        "xte": torch.tensor(np.stack(xte), dtype=torch.float32),
        "yte": torch.tensor(np.stack(yte)),
        "order": np.stack(order),
        "weights": weights,
    }


def _per_class_recall(pred: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """(S, C) recall of every class on the test split."""
    out = np.zeros((pred.shape[0], NUM_CLASSES))
    for s in range(pred.shape[0]):
        for c in range(NUM_CLASSES):
            sel = y[s] == c
            out[s, c] = float((pred[s][sel] == c).float().mean()) if bool(sel.any()) else np.nan
    return out


def _train(d: _Data, loss: LossFn, seeds: list[int], steps: int, hidden: int) -> torch.Tensor:
    model = SeedMLP([64, hidden, NUM_CLASSES], seed_generators(NAME, seeds))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    sched = cosine_lr(opt, steps)
    x, y, w = d["xtr"], d["ytr"], d["weights"]
    for _ in range(steps):
        logits = model(x)
        total = cast(torch.Tensor, sum(loss(logits[i], y[i], w[i]) for i in range(len(seeds))))
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        pred: torch.Tensor = model(d["xte"]).argmax(-1)
        return pred


def _mechanism_figure(ctx: LabContext) -> Figure:
    from ..plots import plt

    ce, focal = require("cross_entropy_loss", "focal_loss")
    p_t = torch.linspace(0.01, 0.995, 200, dtype=torch.float64)
    z = torch.log(p_t / (1 - p_t)).requires_grad_(True)  # 2-class logits (z, 0): softmax gives p_t
    target = torch.zeros(len(p_t), dtype=torch.long)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    curves: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = [
        ("CE", lambda lg: ce(lg, target, reduction="none"))
    ]

    def focal_curve(g: float) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda lg: focal(lg, target, gamma=g, reduction="none")

    curves += [(f"focal γ={g:g}", focal_curve(g)) for g in (0.5, 1, 2, 5)]
    for label, fn in curves:
        logits = torch.stack([z, torch.zeros_like(z)], dim=1)
        loss = fn(logits)
        (grad,) = torch.autograd.grad(loss.sum(), z)
        ax1.plot(p_t, loss.detach(), label=label)
        ax2.plot(p_t, grad.abs(), label=label)
    ax1.set_xlabel("p_t (probability of the true class)")
    ax1.set_ylabel("loss")
    ax1.set_ylim(0, 3)
    ax2.set_xlabel("p_t")
    ax2.set_ylabel("|d loss / d logit_t|")
    ax2.set_yscale("log")
    ax2.set_ylim(1e-4, 3)
    ax1.legend(fontsize=8)
    ax1.set_title("loss vs p_t", fontsize=10)
    ax2.set_title("gradient magnitude vs p_t", fontsize=10)
    fig.tight_layout()
    return ctx.figure(
        fig,
        f"{NAME}_focal_mechanism.png",
        "What focal loss does: (1-p_t)^γ shrinks loss and gradient of well-classified examples (p_t → 1); "
        "it does not look at class frequency",
    )


def run(ctx: LabContext) -> ExperimentResult:
    losses = _losses()
    from ..plots import plt, seed_strip

    steps = ctx.pick(300, 150, 15)
    hidden = 64
    seeds = ctx.seeds
    d = _make_data(seeds)
    n_train = int(d["ytr"].shape[1])
    counts = np.sort(np.bincount(d["ytr"][0].numpy(), minlength=NUM_CLASSES))[::-1]
    res = ExperimentResult(
        NAME,
        "Long-tailed classification",
        metric="balanced accuracy %",
        higher_is_better=True,
        baseline="ce",
        setup=(
            f"scikit-learn digits (8x8, 10 classes); stratified {int((1 - TEST_FRACTION) * 100)}/"
            f"{int(TEST_FRACTION * 100)} split per seed, then the training split is cut to an exponential "
            f"long-tailed profile with imbalance ratio {RATIO:g} (Cui et al. 2019): per-class counts "
            f"{', '.join(str(int(c)) for c in counts)} ({n_train} images); which digit is frequent is shuffled per "
            f"seed. The test split stays balanced. MLP 64-{hidden}-10, full-batch Adam (lr 1e-2, weight decay "
            f"1e-4, cosine), {steps} steps. Class weights from `class_weights(train_targets, 10, scheme)`, "
            f"normalised to sum to 10 (effective number with beta = {EFFECTIVE_BETA}); focal gamma = {GAMMA:g}; "
            "poly-1 epsilon = 1. Balanced accuracy = mean per-class recall on the test split; minority recall = "
            f"mean recall of the {TAIL} rarest training classes."
        ),
    )
    minority: dict[str, list[float]] = {}
    recalls: dict[str, np.ndarray] = {}
    rank_of = np.argsort(d["order"], axis=1)  # rank_of[s, c] = frequency rank of class c in seed s
    bar = ctx.bar(len(losses), NAME)
    for m, loss in losses.items():
        bar.set_postfix_str(m, refresh=False)
        pred = _train(d, loss, seeds, steps, hidden)
        rec = _per_class_recall(pred, d["yte"])
        by_rank = np.take_along_axis(rec, np.argsort(rank_of, axis=1), axis=1)  # columns: rank 0..9
        recalls[m] = by_rank
        res.methods[m] = (100 * np.nanmean(rec, axis=1)).tolist()
        minority[m] = (100 * np.nanmean(by_rank[:, -TAIL:], axis=1)).tolist()
        bar.update(1)
    bar.close()
    res.secondary[f"minority recall % ({TAIL} rarest)"] = (True, minority)
    res.extra["train_counts_by_rank"] = [int(c) for c in counts]
    res.extra["recall_by_rank_mean"] = {m: np.nanmean(r, axis=0).tolist() for m, r in recalls.items()}

    fig, ax = plt.subplots(figsize=(8, 3.6))
    shown = [m for m in ("ce", "ce_w_inverse", "ce_w_effective_number", "focal", "focal_w_effective_number")]
    width = 0.8 / len(shown)
    for j, m in enumerate(shown):
        mean = np.nanmean(recalls[m], axis=0)
        ax.bar(np.arange(NUM_CLASSES) + (j - (len(shown) - 1) / 2) * width, mean, width, label=m)
    ax.set_xticks(range(NUM_CLASSES), [f"#{r}\nn={int(c)}" for r, c in enumerate(counts)], fontsize=8)
    ax.set_xlabel("class, by training frequency (rank, training images)")
    ax.set_ylabel("test recall (mean over seeds)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.22))
    ax.set_title("Per-class recall on the balanced test split", fontsize=10)
    res.figures.append(
        ctx.figure(fig, f"{NAME}_recall.png", "Per-class test recall, classes ordered from frequent to rare")
    )
    res.figures.append(_mechanism_figure(ctx))
    res.figures.append(seed_strip(ctx, res))
    return res
