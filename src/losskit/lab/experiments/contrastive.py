"""Image-text style retrieval on digits: CLIP vs SigLIP training two encoders on paired views.

Each 8x8 digit is cut into two "modalities": the top half (rows 0-3, the "image") and the bottom half
(rows 4-7, the "text"). Two separate encoders map each half to a shared embedding; the loss is CLIP's
softmax or SigLIP's sigmoid over every pair of the batch, with the modules' learnable scale (and
bias). Retrieval on held-out images: for each held-out top half, is the nearest bottom half (cosine
similarity over all held-out bottom halves) its own?
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import data
from ..core import ExperimentResult, LabContext, batches, cosine_lr, make_mlp, require, rng_for, seed_torch

if TYPE_CHECKING:
    from ...embedding.contrastive import CLIPLoss, SigLIPLoss

NAME = "contrastive"
TEST_FRACTION = 0.3
DIM = 16
HIDDEN = 64
BATCH = 128
LR = 3e-3
REFERENCES = ("untrained",)


def _make_data(seed: int) -> dict[str, torch.Tensor]:
    X, y = data.digits()
    X = (X / 16.0).reshape(-1, 8, 8)
    split = data.split_indices(len(y), TEST_FRACTION, rng_for(NAME, seed), labels=y)
    f32 = torch.float32

    def halves(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        part = X[idx]
        return (
            torch.tensor(part[:, :4].reshape(len(idx), 32), dtype=f32),
            torch.tensor(part[:, 4:].reshape(len(idx), 32), dtype=f32),
        )

    (itr, ttr), (ite, tte) = halves(split.train), halves(split.test)
    return {"itr": itr, "ttr": ttr, "ite": ite, "tte": tte, "yte": torch.tensor(y[split.test])}


def recall_at_1(img: torch.Tensor, txt: torch.Tensor) -> float:
    """% of rows whose most similar (cosine) row of the other modality is their own pair."""
    sim = F.normalize(img, dim=1) @ F.normalize(txt, dim=1).T
    return float(100 * (sim.argmax(dim=1) == torch.arange(len(img))).float().mean())


def _towers() -> tuple[nn.Module, nn.Module]:
    return make_mlp([32, HIDDEN, DIM]), make_mlp([32, HIDDEN, DIM])


def _loss_module(method: str) -> CLIPLoss | SigLIPLoss:
    clip, siglip = require("CLIPLoss", "SigLIPLoss")
    loss_fn: CLIPLoss | SigLIPLoss = clip() if method == "clip" else siglip()
    return loss_fn


def _train(
    d: dict[str, torch.Tensor], method: str, seed: int, steps: int
) -> tuple[nn.Module, nn.Module, CLIPLoss | SigLIPLoss]:
    gen = seed_torch(NAME, seed)  # same initial towers and batch order for both losses of a seed
    image, text = _towers()
    loss_fn = _loss_module(method)
    params = [*image.parameters(), *text.parameters(), *loss_fn.parameters()]
    opt = torch.optim.Adam(params, lr=LR)
    sched = cosine_lr(opt, steps)
    for idx in batches(len(d["itr"]), BATCH, steps, gen):
        loss = loss_fn(image(d["itr"][idx]), text(d["ttr"][idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return image, text, loss_fn


def _conclusion(res: ExperimentResult) -> str:
    from ..report import conclude, paired_diff

    text = conclude(res).rstrip(".")
    d = paired_diff(res.methods["siglip"], res.methods["clip"], True)
    if d.n >= 2 and d.verdict(True) == "no measurable difference":
        text += (
            "; at this batch size the two losses give the same retrieval within the seed-to-seed spread: "
            "choose SigLIP for its memory (chunk_size, no softmax over the batch), not for accuracy here"
        )
    bias = float(np.mean(res.extra["siglip_learned_bias"]))
    clip_t, sig_t = (float(np.mean(res.extra["learned_scale"][m])) for m in ("clip", "siglip"))
    text += (
        f"; learned parameters (mean over seeds): CLIP's scale {clip_t:.1f} (init 14.3), SigLIP's scale "
        f"{sig_t:.1f} (init 10) and bias {bias:.1f} (init -10). Only the shared learning rate was set, no "
        "per-loss tuning: this is one small setting (batch 128, 16-d embeddings), not a ranking of the losses"
    )
    untrained = float(np.mean(res.methods["untrained"]))
    text += f"; both are far above the untrained towers ({untrained:.1f}%)"
    return text + "."


def run(ctx: LabContext) -> ExperimentResult:
    require("CLIPLoss", "SigLIPLoss")
    from ..plots import plt, seed_strip

    steps = ctx.pick(600, 200, 15)
    seeds = ctx.seeds
    d0 = _make_data(seeds[0])
    methods = ("clip", "siglip")
    res = ExperimentResult(
        NAME,
        "Image-text retrieval: CLIP vs SigLIP",
        metric="image->text recall@1 % on held-out pairs",
        higher_is_better=True,
        baseline="clip",
        reference_methods=REFERENCES,
        setup=(
            "scikit-learn digits (pixels / 16), each image cut into a top half (rows 0-3, the 'image') and a "
            f"bottom half (rows 4-7, the 'text'). Stratified {int((1 - TEST_FRACTION) * 100)}/"
            f"{int(TEST_FRACTION * 100)} split of the digits per seed ({len(d0['itr'])} training pairs, "
            f"{len(d0['ite'])} held-out pairs). Two towers MLP 32-{HIDDEN}-{DIM}, the same initial weights "
            f"and batch order for both losses of a seed; Adam lr {LR:g} (cosine) on the towers and the loss's "
            f"parameters, {steps} steps of batch {BATCH}. `clip`: `CLIPLoss()` (learnable log-scale, init "
            "log(1/0.07), capped at 100); `siglip`: `SigLIPLoss()` (log-scale init log 10, bias init -10). "
            "recall@1: share of held-out top halves whose most similar held-out bottom half (cosine) is their "
            "own; text->image is the same the other way round. `untrained`: the towers at their initial "
            "weights (a reference, not a candidate)."
        ),
    )
    res.methods = {m: [] for m in (*methods, *REFERENCES)}
    t2i: dict[str, list[float]] = {m: [] for m in (*methods, *REFERENCES)}
    scales: dict[str, list[float]] = {m: [] for m in methods}
    biases: list[float] = []
    d, data_seed = d0, seeds[0]
    for m, seed in ctx.runs(NAME, list(methods)):
        if seed != data_seed:
            d, data_seed = _make_data(seed), seed
        image, text, loss_fn = _train(d, m, seed, steps)
        with torch.no_grad():
            ei, et = image(d["ite"]), text(d["tte"])
            res.methods[m].append(recall_at_1(ei, et))
            t2i[m].append(recall_at_1(et, ei))
            scales[m].append(float(loss_fn.logit_scale.exp()))
            if loss_fn.logit_bias is not None:
                biases.append(float(loss_fn.logit_bias))
    for seed in seeds:
        d = d0 if seed == seeds[0] else _make_data(seed)
        seed_torch(NAME, seed)
        image, text = _towers()
        with torch.no_grad():
            ei, et = image(d["ite"]), text(d["tte"])
            res.methods["untrained"].append(recall_at_1(ei, et))
            t2i["untrained"].append(recall_at_1(et, ei))
    res.secondary["text->image recall@1 % on held-out pairs"] = (True, t2i)
    res.extra["learned_scale"] = {m: [round(s, 2) for s in v] for m, v in scales.items()}
    res.extra["siglip_learned_bias"] = [round(b, 2) for b in biases]
    res.seeds = list(seeds)
    res.conclusion = _conclusion(res)

    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    x = np.arange(len(seeds))
    gain = np.array(res.methods["siglip"]) - np.array(res.methods["clip"])
    ax.bar(x, gain, 0.6, label="siglip − clip")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x, [str(s) for s in seeds])
    ax.set_xlabel("seed")
    ax.set_ylabel("recall@1 difference (points)")
    ax.set_title("Paired difference in image->text recall@1, per seed", fontsize=10)
    res.figures.append(ctx.figure(fig, f"{NAME}_gain.png", "Per-seed recall@1 of SigLIP minus CLIP"))
    res.figures.append(seed_strip(ctx, res))
    return res
