"""Metric learning on digits: embeddings trained on digits 0-4, retrieval (recall@1) on the unseen 5-9."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import data
from ..core import ExperimentResult, LabContext, batches, cosine_lr, make_mlp, require, rng_for, seed_torch

NAME = "metric_learning"
SEEN = (0, 1, 2, 3, 4)
HELD_OUT_FRACTION = 0.2  # of the seen-class images, for recall@1 on seen classes
DIM = 16
HIDDEN = 128
BATCH = 128
NOISE = 0.1  # NT-Xent views: gaussian pixel noise (pixels in 0..1) ...
MAX_SHIFT = 1  # ... and a random shift of the 8x8 image by up to 1 pixel
CONTRASTIVE_MARGINS = (0.0, 1.0)  # pos / neg margin on L2-normalised embeddings (pytorch-metric-learning)
TRIPLET_MARGIN = 0.2
NT_XENT_T = 0.5
SUPCON_T = 0.1
# Adam learning rate per method: the best of {3e-4, 1e-3, 3e-3, 1e-2} by recall@1 on the held-out images of
# the *seen* digits 0-4 (what a user can validate on), seeds 100-102, the same search for every method; ties
# go to the smaller rate. Selecting on the unseen digits instead favours the smallest rate for every method
# (the less the network moves from its initialisation, the better it does on 5-9; see the untrained row).
LR = {"ce": 1e-2, "contrastive": 1e-3, "triplet_batch_hard": 1e-3, "nt_xent": 3e-3, "supcon": 1e-3}
REFERENCES = ("untrained", "raw_pixels")

# loss(embeddings, labels, embeddings of view 1, embeddings of view 2, class logits)
LossFn = Callable[..., torch.Tensor]


def _losses() -> dict[str, LossFn]:
    ce, contrastive, triplet, nt_xent, supcon = require(
        "cross_entropy_loss", "contrastive_pairs_loss", "triplet_loss", "nt_xent_loss", "supcon_loss"
    )
    pos_m, neg_m = CONTRASTIVE_MARGINS
    return {
        "ce": lambda e, y, z1, z2, lg: ce(lg, y),
        "contrastive": lambda e, y, z1, z2, lg: contrastive(
            e, y, pos_margin=pos_m, neg_margin=neg_m, normalize_embeddings=True
        ),
        "triplet_batch_hard": lambda e, y, z1, z2, lg: triplet(
            e, y, margin=TRIPLET_MARGIN, mining="batch_hard", normalize_embeddings=True
        ),
        "nt_xent": lambda e, y, z1, z2, lg: nt_xent(z1, z2, temperature=NT_XENT_T),
        "supcon": lambda e, y, z1, z2, lg: supcon(e, y, temperature=SUPCON_T),
    }


def _make_data(seed: int) -> dict[str, torch.Tensor]:
    X, y = data.digits()
    X = X / 16.0
    seen = np.isin(y, SEEN)
    idx_seen = np.flatnonzero(seen)
    split = data.split_indices(len(idx_seen), HELD_OUT_FRACTION, rng_for(NAME, seed), labels=y[idx_seen])
    tr, ho = idx_seen[split.train], idx_seen[split.test]
    unseen = np.flatnonzero(~seen)
    f32 = torch.float32
    return {
        "xtr": torch.tensor(X[tr], dtype=f32),
        "ytr": torch.tensor(y[tr]),
        "xho": torch.tensor(X[ho], dtype=f32),
        "yho": torch.tensor(y[ho]),
        "xte": torch.tensor(X[unseen], dtype=f32),
        "yte": torch.tensor(y[unseen]),
    }


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random view: shift the 8x8 image by up to MAX_SHIFT pixels (zero fill), add gaussian noise."""
    n = x.shape[0]
    img = F.pad(x.view(n, 8, 8), (MAX_SHIFT,) * 4)
    dy = torch.randint(0, 2 * MAX_SHIFT + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * MAX_SHIFT + 1, (n,), generator=g)
    rows = (dy.view(n, 1) + torch.arange(8).view(1, 8)).view(n, 8, 1).expand(n, 8, 8)
    cols = (dx.view(n, 1) + torch.arange(8).view(1, 8)).view(n, 1, 8).expand(n, 8, 8)
    out = img[torch.arange(n).view(n, 1, 1), rows, cols]
    return (out + NOISE * torch.randn(out.shape, generator=g)).reshape(n, 64)


def recall_at_1(emb: torch.Tensor, labels: torch.Tensor) -> float:
    """% of samples whose nearest other sample (cosine similarity) has the same label."""
    z = F.normalize(emb, dim=1)
    sim = z @ z.T
    sim.fill_diagonal_(-float("inf"))
    return float(100 * (labels[sim.argmax(dim=1)] == labels).float().mean())


def _train(d: dict[str, torch.Tensor], method: str, loss: LossFn, seed: int, steps: int) -> nn.Module:
    gen = seed_torch(NAME, seed)  # same initial weights and batch order for every method of a seed
    trunk = make_mlp([64, HIDDEN, HIDDEN, DIM])
    head = nn.Linear(DIM, len(SEEN))  # only trained (and only used) by the CE method
    params = list(trunk.parameters()) + (list(head.parameters()) if method == "ce" else [])
    opt = torch.optim.Adam(params, lr=LR[method], weight_decay=1e-4)
    sched = cosine_lr(opt, steps)
    aug_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
    x, y = d["xtr"], d["ytr"]
    for idx in batches(len(y), BATCH, steps, gen):
        xb, yb = x[idx], y[idx]
        z1 = z2 = e = logits = None
        if method == "nt_xent":
            z1, z2 = trunk(_augment(xb, aug_gen)), trunk(_augment(xb, aug_gen))
        else:
            e = trunk(xb)
            logits = head(e) if method == "ce" else None
        total = loss(e, yb, z1, z2, logits)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        sched.step()
    return trunk


def _pca2(z: torch.Tensor) -> np.ndarray:
    z = F.normalize(z, dim=1).double()
    z = z - z.mean(dim=0)
    _, _, v = torch.linalg.svd(z, full_matrices=False)
    coords: np.ndarray = (z @ v[:2].T).numpy()
    return coords


def _conclusion(res: ExperimentResult, trained: list[str]) -> str:
    """The generated paired comparison, plus where the trained embeddings stand against the references."""
    from ..report import conclude

    text = conclude(res).rstrip(".")
    best = max(trained, key=lambda m: float(np.mean(res.methods[m])))
    best_mean = float(np.mean(res.methods[best]))
    beaten = [
        f"{m} ({float(np.mean(res.methods[m])):.1f}%)"
        for m in REFERENCES
        if float(np.mean(res.methods[m])) > best_mean
    ]
    if beaten:
        text += (
            f"; but the best trained embedding ({best}, {best_mean:.1f}%) stays below "
            f"{' and '.join(beaten)}: on 8x8 digits, training on 0-4 discards pixel detail that 5-9 need"
        )
    return text + "."


def run(ctx: LabContext) -> ExperimentResult:
    losses = _losses()
    from ..plots import legend_outside, plt, seed_strip

    steps = ctx.pick(300, 300, 20)
    seeds = ctx.seeds
    d0 = _make_data(seeds[0])
    res = ExperimentResult(
        NAME,
        "Embeddings for unseen classes",
        metric="recall@1 % on unseen digits 5-9",
        higher_is_better=True,
        baseline="ce",
        reference_methods=REFERENCES,
        setup=(
            f"scikit-learn digits (8x8, pixels / 16). Training: a stratified {int((1 - HELD_OUT_FRACTION) * 100)}% "
            f"of the images of digits 0-4 per seed ({len(d0['ytr'])} images); test: all {len(d0['yte'])} images "
            "of digits 5-9, classes never seen in training. recall@1 = share of test images whose nearest other "
            "test image (cosine similarity of the embeddings) has the same digit. Every method trains the same "
            f"MLP 64-{HIDDEN}-{HIDDEN}-{DIM} (embedding dimension {DIM}) from the same initial weights per seed, "
            f"Adam (weight decay 1e-4, cosine), {steps} steps of batch {BATCH}; learning rates chosen per method "
            "from {3e-4, 1e-3, 3e-3, 1e-2} by recall@1 on held-out images of the seen digits, on separate seeds "
            "(the same search for each). `ce`: a linear classifier head "
            "on the 5 seen digits, embedding = its input (the penultimate layer). `contrastive`: "
            f"`contrastive_pairs_loss` over all pairs (margins {CONTRASTIVE_MARGINS[0]:g}/{CONTRASTIVE_MARGINS[1]:g}, "
            f"L2-normalised); `triplet_batch_hard`: `triplet_loss(mining='batch_hard', margin={TRIPLET_MARGIN:g})`, "
            f"L2-normalised; `nt_xent`: `nt_xent_loss` (T = {NT_XENT_T:g}) on two views per image (shift by up to "
            f"{MAX_SHIFT} px + gaussian noise sd {NOISE:g}); it uses no labels; `supcon`: `supcon_loss` "
            f"(T = {SUPCON_T:g}) with the labels, one unaugmented view. `untrained`: the network at its initial "
            "weights; `raw_pixels`: the 64 pixels themselves. Both are references, not candidates."
        ),
    )
    res.extra["learning_rates"] = dict(LR)
    held_out: dict[str, list[float]] = {m: [] for m in (*losses, *REFERENCES)}
    res.methods = {m: [] for m in (*losses, *REFERENCES)}
    shown: dict[str, torch.Tensor] = {}
    d, data_seed = d0, seeds[0]
    for m, seed in ctx.runs(NAME, list(losses)):
        if seed != data_seed:  # ctx.runs goes seed by seed: build each seed's data once
            d, data_seed = _make_data(seed), seed
        trunk = _train(d, m, losses[m], seed, steps)
        with torch.no_grad():
            emb = trunk(d["xte"])
            res.methods[m].append(recall_at_1(emb, d["yte"]))
            held_out[m].append(recall_at_1(trunk(d["xho"]), d["yho"]))
        if seed == seeds[0]:
            shown[m] = emb
    for seed in seeds:
        d = d0 if seed == seeds[0] else _make_data(seed)
        seed_torch(NAME, seed)
        untrained = make_mlp([64, HIDDEN, HIDDEN, DIM])  # the initial weights every method starts from
        with torch.no_grad():
            for m, f in (("untrained", untrained), ("raw_pixels", nn.Identity())):
                res.methods[m].append(recall_at_1(f(d["xte"]), d["yte"]))
                held_out[m].append(recall_at_1(f(d["xho"]), d["yho"]))
    res.secondary["recall@1 % on held-out seen digits 0-4"] = (True, held_out)
    res.seeds = list(seeds)
    res.conclusion = _conclusion(res, list(losses))

    means = {m: float(np.mean(res.methods[m])) for m in losses}
    best = max((m for m in losses if m != "ce"), key=means.__getitem__)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    labels = d0["yte"].numpy()
    for ax, m in zip(axes, ("ce", best)):
        p = _pca2(shown[m])
        for k, digit in enumerate(sorted(set(labels.tolist()))):
            sel = labels == digit
            ax.scatter(p[sel, 0], p[sel, 1], s=6, alpha=0.6, color=f"C{k}", label=str(digit))
        ax.set_title(f"{m}: recall@1 {res.methods[m][0]:.1f}% (seed {seeds[0]})", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    legend_outside(axes[1], title="digit", markerscale=2)
    fig.suptitle("Unseen digits 5-9 in the learned embedding (PCA of L2-normalised embeddings)", fontsize=10)
    fig.tight_layout()
    res.figures.append(
        ctx.figure(
            fig,
            f"{NAME}_pca.png",
            f"Test embeddings of the unseen digits 5-9, first two principal components: ce vs {best}",
        )
    )
    res.figures.append(seed_strip(ctx, res))
    return res
