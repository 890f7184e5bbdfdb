"""Multi-task weighting: breast-cancer diagnosis plus a raw-scale regression target from the same trunk."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import data
from ..core import ExperimentResult, LabContext, batches, cosine_lr, require, rng_for, seed_torch

NAME = "multitask"
TEST_FRACTION = 0.3
TARGET = "mean area"  # removed from the inputs, predicted in its raw units (um^2 scale, about 140..2500)
HIDDEN = 64
BATCH = 64
LR = 3e-3
# Adam learning rates of the learnable weightings' own parameters: the log-variances must travel to about
# log(1e5) ~ 12, so they get a fast rate; GradNorm's weights (kept summing to 2) use the paper's 0.025
WEIGHT_LR = {"uncertainty": 0.1, "gradnorm": 0.025}
GRADNORM_ALPHA = 1.5
DWA_T = 2.0

# method -> (weighting name, weighting_options); "cls_only" trains the classification task alone
METHODS: dict[str, tuple[str, dict[str, float]]] = {
    "equal": ("fixed", {}),
    "fixed_1/var": ("fixed", {}),  # weights (1, 1 / Var(y_train)): the loss scale of a standardised target
    "uncertainty": ("uncertainty", {}),
    "dwa": ("dwa", {"temperature": DWA_T}),
    "gradnorm": ("gradnorm", {"alpha": GRADNORM_ALPHA}),
    "cls_only": ("fixed", {}),
}


class _TwoHeads(nn.Module):
    def __init__(self, n_in: int, reg_mean: float) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(n_in, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU())
        self.cls = nn.Linear(HIDDEN, 2)
        self.reg = nn.Linear(HIDDEN, 1)
        with torch.no_grad():  # every method starts predicting the training mean of the raw target
            self.reg.bias.fill_(reg_mean)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.cls(h), self.reg(h).squeeze(-1)


def _split(seed: int) -> dict[str, torch.Tensor]:
    X, y, names = data.breast_cancer()
    col = names.index(TARGET)
    inputs = np.delete(X, col, axis=1)
    split = data.split_indices(len(y), TEST_FRACTION, rng_for(NAME, seed), labels=y)
    xtr, xte = data.standardize(inputs[split.train], inputs[split.test])
    f32 = torch.float32
    return {
        "xtr": torch.tensor(xtr, dtype=f32),
        "xte": torch.tensor(xte, dtype=f32),
        "ytr": torch.tensor(y[split.train]),
        "yte": torch.tensor(y[split.test]),
        "rtr": torch.tensor(X[split.train, col], dtype=f32),
        "rte": torch.tensor(X[split.test, col], dtype=f32),
    }


def _train(
    method: str, d: dict[str, torch.Tensor], seed: int, epochs: int
) -> tuple[float, float, np.ndarray]:
    """Train one model; returns test accuracy %, test RMSE (raw units), and the per-epoch weights (E, 2)."""
    (MultiTaskLoss,) = require("MultiTaskLoss")
    weighting, options = METHODS[method]
    g = seed_torch(NAME, seed)  # same initial weights and batch order for every method of a seed
    model = _TwoHeads(d["xtr"].shape[1], float(d["rtr"].mean()))
    weights = None
    if method == "fixed_1/var":
        weights = [1.0, 1.0 / float(d["rtr"].var())]
    elif method == "cls_only":
        weights = [1.0, 0.0]
    mtl = MultiTaskLoss(
        tasks={"cls": nn.CrossEntropyLoss(), "reg": nn.MSELoss()},
        weighting=weighting,
        weights=weights,
        weighting_options=options or None,
    )
    groups = [{"params": model.parameters(), "lr": LR}]
    extra = list(mtl.parameters())
    if extra:
        groups.append({"params": extra, "lr": WEIGHT_LR[method]})
    opt = torch.optim.Adam(groups)
    n = len(d["ytr"])
    per_epoch = n // BATCH
    steps = epochs * per_epoch
    sched = cosine_lr(opt, steps)
    shared = model.trunk[2].weight  # last shared layer (GradNorm's W)
    history = np.zeros((epochs, 2))
    for step, idx in enumerate(batches(n, BATCH, steps, g)):
        logits, reg = model(d["xtr"][idx])
        loss = mtl({"cls": logits, "reg": reg}, {"cls": d["ytr"][idx], "reg": d["rtr"][idx]})
        # copy now: GradNorm's weights are updated in place by the optimizer step
        w = mtl.last_weights
        history[step // per_epoch] += [float(w["cls"]) / per_epoch, float(w["reg"]) / per_epoch]
        opt.zero_grad(set_to_none=True)
        mtl.backward(loss, shared_parameters=shared)
        opt.step()
        sched.step()
        if (step + 1) % per_epoch == 0:
            mtl.epoch_end()
    model.eval()
    with torch.no_grad():
        logits, reg = model(d["xte"])
    acc = 100.0 * float((logits.argmax(-1) == d["yte"]).float().mean())
    rmse = float(F.mse_loss(reg, d["rte"]).sqrt())
    return acc, rmse, history


def run(ctx: LabContext) -> ExperimentResult:
    require("MultiTaskLoss")
    from ..plots import plt, seed_strip

    epochs = ctx.pick(60, 30, 3)
    X, _, names = data.breast_cancer()
    col = names.index(TARGET)
    res = ExperimentResult(
        NAME,
        "Multi-task weighting with mismatched loss scales",
        metric="test accuracy %",
        higher_is_better=True,
        baseline="equal",
        reference_methods=("cls_only",),
        setup=(
            f"scikit-learn breast cancer (569 x 30, malignant/benign), stratified "
            f"{int((1 - TEST_FRACTION) * 100)}/{int(TEST_FRACTION * 100)} split per seed. Task 1: diagnosis "
            f"(cross-entropy). Task 2: the feature '{TARGET}' (raw scale, mean {X[:, col].mean():.0f}, std "
            f"{X[:, col].std():.0f}) removed from the inputs and predicted in its own units (MSE), so at the start "
            f"MSE is about 1e5 x CE. The other 29 features are standardised on the training split. Shared trunk "
            f"29-{HIDDEN}-{HIDDEN} (ReLU) with a 2-way classification head and a 1-output regression head (bias "
            f"started at the training mean). Adam (lr {LR:g}, cosine), batches of {BATCH}, {epochs} epochs; "
            f"every method of a seed has the same initial weights and batch order. `MultiTaskLoss(tasks="
            "{cls: CE, reg: MSE}, weighting=...)`: `equal` = fixed (1, 1); `fixed_1/var` = fixed (1, 1/Var(y_train)), "
            f"the loss scale that standardising the target would give (the head still predicts raw units); `uncertainty` = Kendall et al. (half form); `dwa` = "
            f"DWA (T = {DWA_T:g}, epoch_end() every epoch); `gradnorm` = GradNorm (alpha = {GRADNORM_ALPHA:g}, "
            f"W = the last shared layer). The learnable weightings' parameters use Adam with their own lr: {WEIGHT_LR['uncertainty']:g} "
            f"for the log-variances (they must reach about log(1e5)), {WEIGHT_LR['gradnorm']:g} for GradNorm's "
            "weights (the paper's value). "
            "`cls_only` (weights (1, 0)) is the classification-only reference. Primary metric: diagnosis "
            "accuracy, the task the regression target can crowd out of the shared trunk; test RMSE of the "
            "regression head is reported beside it."
        ),
    )
    rmse: dict[str, list[float]] = {m: [] for m in METHODS}
    curves: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    for m in METHODS:
        res.methods[m] = []
    splits = {s: _split(s) for s in ctx.seeds}
    for method, seed in ctx.runs(NAME, METHODS):
        acc, err, hist = _train(method, splits[seed], seed, epochs)
        res.methods[method].append(acc)
        rmse[method].append(err)
        curves[method].append(hist)
    res.secondary["test RMSE (raw units)"] = (False, rmse)
    # a constant prediction (training mean) as the yardstick for the RMSE column
    base_rmse = [float((d["rte"] - d["rtr"].mean()).pow(2).mean().sqrt()) for d in splits.values()]
    res.notes.append(
        f"Predicting the training mean of '{TARGET}' gives test RMSE {np.mean(base_rmse):.0f}; "
        "the regression head's RMSE is in the same units."
    )
    ratio = {  # geometric mean over seeds (the ratios span orders of magnitude)
        m: np.exp(
            np.mean(
                [np.log(np.maximum(h[:, 1], 1e-30) / np.maximum(h[:, 0], 1e-30)) for h in curves[m]], axis=0
            )
        )
        for m in METHODS
        if m != "cls_only"
    }
    res.extra["final_weight_ratio_reg_over_cls"] = {m: float(r[-1]) for m, r in ratio.items()}
    inv_var = float(np.mean([1.0 / float(d["rtr"].var()) for d in splits.values()]))
    res.notes.append(
        "Effective weight ratio w_reg / w_cls at the end of training (geometric mean over seeds): "
        + ", ".join(f"{m} {r[-1]:.2g}" for m, r in ratio.items())
        + f"; 1/Var(y_train) = {inv_var:.2g}."
    )
    res.seeds = list(ctx.seeds)  # the runner sets it too; the conclusion needs it now
    res.conclusion = _conclusion(res, rmse)

    fig, ax = plt.subplots(figsize=(6.2, 3.6))
    ep = np.arange(1, epochs + 1)
    for m, r in ratio.items():
        ax.plot(ep, r, label=m, lw=1.6, ls="--" if m.startswith("fixed") else "-")
    ax.axhline(inv_var, color="0.5", lw=0.8, ls=":", label="1 / Var(y_train)")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("effective weight ratio w_reg / w_cls")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Task weights over training (geometric mean over seeds)", fontsize=10)
    res.figures.append(
        ctx.figure(
            fig,
            f"{NAME}_weights.png",
            "Effective weight of the raw-scale regression loss relative to the classification loss, per epoch "
            "(d total / d L_k from MultiTaskLoss.last_weights, averaged over each epoch's steps; log scale)",
        )
    )
    res.figures.append(seed_strip(ctx, res))
    return res


def _conclusion(res: ExperimentResult, rmse: dict[str, list[float]]) -> str:
    """The generated verdict on accuracy, plus the regression side (which the accuracy table cannot show)."""
    from ..report import conclude, paired_diff

    text = conclude(res)
    if len(res.seeds) < 2:
        return text
    parts = []
    for m in ("fixed_1/var", "uncertainty", "dwa", "gradnorm"):
        d = paired_diff(rmse[m], rmse["equal"], higher_is_better=False)
        verdict = d.verdict(False)
        if verdict == "no measurable difference":
            parts.append(f"{m} no measurable difference")
        else:
            parts.append(
                f"{m} {'lower' if verdict == 'better' else 'higher'} ({d.mean:+.3g}, {d.wins}/{d.n} seeds)"
            )
    return text.rstrip(".") + ". Test RMSE of the regression head vs equal: " + ", ".join(parts) + "."
