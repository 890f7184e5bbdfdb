"""Preference optimisation on real text: a small LM trained on stdlib docstrings (SFT), then tuned with
DPO, IPO, SimPO, ORPO or KTO to prefer the real continuation of a prompt over a corrupted copy of it."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import data
from ..core import ExperimentResult, LabContext, cosine_lr, require, rng_for, seed_torch
from ..report import PairedDiff, paired_diff
from .large_vocabulary import CONTEXT, _WindowLM

NAME = "preference"
METHODS = ("sft_chosen", "dpo", "ipo", "simpo", "orpo", "kto")
COMPLETION = 6  # tokens per completion
HELD_OUT = 0.1  # last 10% of the corpus: held-out pairs and held-out text
SFT_LR, SFT_BATCH = 3e-3, 256  # tokens per SFT step
PREF_LR, PREF_BATCH = 1e-3, 64  # pairs per preference step, the same for every method
# the losses' defaults (the papers' / TRL's): DPO, IPO (tau), ORPO (lambda), KTO beta 0.1; SimPO beta 2, gamma 0.5
BETA = {"dpo": 0.1, "ipo": 0.1, "orpo": 0.1, "kto": 0.1, "simpo": 2.0}
SIMPO_GAMMA = 0.5
# sequence_log_probs(logits, labels, ...) -> (N,) summed log-probs
SeqLogProbs = Callable[..., torch.Tensor]


@dataclass
class Pairs:
    """``prompt`` ``(N, CONTEXT)``, ``chosen`` / ``rejected`` ``(N, COMPLETION)`` token ids."""

    prompt: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor

    def __len__(self) -> int:
        return len(self.prompt)

    def take(self, idx: torch.Tensor) -> Pairs:
        return Pairs(self.prompt[idx], self.chosen[idx], self.rejected[idx])


def make_pairs(ids: torch.Tensor, n: int, rng: np.random.Generator) -> Pairs:
    """``n`` pairs from the token stream ``ids``: a prompt of ``CONTEXT`` tokens, the real next
    ``COMPLETION`` tokens (chosen), and the same tokens with one adjacent pair of different tokens
    swapped (rejected): the same words, one of them out of order."""
    span = CONTEXT + COMPLETION
    starts = rng.integers(0, len(ids) - span, size=4 * n)
    rows = ids[torch.as_tensor(starts)[:, None] + torch.arange(span)]
    comp = rows[:, CONTEXT:]
    swappable = comp[:, :-1] != comp[:, 1:]  # (4n, COMPLETION - 1)
    ok = swappable.any(1)
    rows, comp, swappable = rows[ok][:n], comp[ok][:n], swappable[ok][:n]
    # a random swappable position per row: argmax of (random key where swappable, -1 elsewhere)
    keys = torch.as_tensor(rng.random(tuple(swappable.shape)), dtype=torch.float32)
    j = torch.where(swappable, keys, torch.full_like(keys, -1.0)).argmax(1)
    r = torch.arange(len(comp))
    rejected = comp.clone()
    rejected[r, j], rejected[r, j + 1] = comp[r, j + 1], comp[r, j]
    return Pairs(rows[:, :CONTEXT], comp, rejected)


def _windows(prompt: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
    """``(N, COMPLETION, CONTEXT)``: the tokens the window LM sees before each completion token."""
    seq = torch.cat([prompt, completion], 1)
    return seq.unfold(1, CONTEXT, 1)[:, :COMPLETION]


def _logits(model: _WindowLM, windows: torch.Tensor) -> torch.Tensor:
    h = model(windows.reshape(-1, CONTEXT))
    logits: torch.Tensor = (h @ model.head.T).view(*windows.shape[:-1], -1)
    return logits


def completion_log_probs(
    model: _WindowLM, prompt: torch.Tensor, completion: torch.Tensor, seq_log_probs: SeqLogProbs
) -> torch.Tensor:
    """``(N,)`` summed log-probs of each completion given its prompt."""
    return seq_log_probs(_logits(model, _windows(prompt, completion)), completion)


def _train_sft(windows: torch.Tensor, vocab: int, seed: int, steps: int) -> _WindowLM:
    (ce,) = require("cross_entropy_loss")
    seed_torch(NAME, seed, "init")
    model = _WindowLM(vocab)
    g = seed_torch(NAME, seed, "sft_order")
    opt = torch.optim.Adam(model.parameters(), lr=SFT_LR)
    sched = cosine_lr(opt, steps)
    for _ in range(steps):
        rows = windows[torch.randint(0, len(windows), (SFT_BATCH,), generator=g)]
        loss = ce(model(rows[:, :CONTEXT]) @ model.head.T, rows[:, CONTEXT])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


class _Objective:
    """One preference method: the loss module and how it is fed (summed or length-averaged log-probs)."""

    def __init__(self, method: str) -> None:
        dpo, simpo, orpo, kto = require("DPOLoss", "SimPOLoss", "ORPOLoss", "KTOLoss")
        self.method = method
        factories: dict[str, Callable[[], Callable[..., torch.Tensor] | None]] = {
            "dpo": lambda: dpo(beta=BETA["dpo"]),
            "ipo": lambda: dpo(beta=BETA["ipo"], loss_type="ipo"),
            "simpo": lambda: simpo(beta=BETA["simpo"], gamma=SIMPO_GAMMA),
            "orpo": lambda: orpo(beta=BETA["orpo"]),
            "kto": lambda: kto(beta=BETA["kto"]),
            "sft_chosen": lambda: None,
        }
        self.loss = factories[method]()

    def __call__(
        self,
        model: _WindowLM,
        ref: _WindowLM,
        batch: Pairs,
        ref_c: torch.Tensor,
        ref_r: torch.Tensor,
        seq_log_probs: SeqLogProbs,
    ) -> torch.Tensor:
        pc = completion_log_probs(model, batch.prompt, batch.chosen, seq_log_probs)
        pr = completion_log_probs(model, batch.prompt, batch.rejected, seq_log_probs)
        m = self.method
        if m == "sft_chosen":  # more SFT: token-mean cross-entropy of the chosen completions only
            return -pc.mean() / COMPLETION
        loss = self.loss
        assert loss is not None  # every method but sft_chosen has a loss module
        if m == "dpo":
            return loss(pc, pr, ref_c, ref_r)
        if m == "ipo":  # IPO's paper uses length-averaged log-probs, policy and reference alike
            return loss(pc / COMPLETION, pr / COMPLETION, ref_c / COMPLETION, ref_r / COMPLETION)
        if m in ("simpo", "orpo"):  # length-averaged, no reference
            return loss(pc / COMPLETION, pr / COMPLETION)
        # KTO: every pair becomes one desirable (real) and one undesirable (corrupted) example; the KL
        # reference point uses mismatched completions (prompt i with the real completion of row i + 1)
        mism = batch.chosen.roll(1, 0)
        pk = completion_log_probs(model, batch.prompt, mism, seq_log_probs)
        with torch.no_grad():
            rk = completion_log_probs(ref, batch.prompt, mism, seq_log_probs)
        desirable = torch.cat([torch.ones_like(pc, dtype=torch.bool), torch.zeros_like(pr, dtype=torch.bool)])
        return loss(torch.cat([pc, pr]), torch.cat([ref_c, ref_r]), desirable, pk, rk)


@dataclass
class Eval:
    accuracy: float  # % of held-out pairs where the model gives the real continuation the higher log-prob
    train_accuracy: float  # the same on a fixed subset of the training pairs (NaN when not measured)
    margin: float  # mean held-out [log-ratio(chosen) - log-ratio(rejected)] vs the reference (nats)
    kl: float  # mean per-token KL(policy || reference) on held-out text (nats)
    nll: float  # mean held-out next-token cross-entropy (nats)


@dataclass
class _EvalSet:
    """Held-out pairs, a subset of the training pairs and held-out text, with the reference's values."""

    held: Pairs
    seen: Pairs
    text: torch.Tensor  # (n, CONTEXT + 1) windows of held-out text
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    ref_text_logp: torch.Tensor


def _accuracy(model: _WindowLM, pairs: Pairs, seq_log_probs: SeqLogProbs) -> tuple[float, torch.Tensor]:
    pc = completion_log_probs(model, pairs.prompt, pairs.chosen, seq_log_probs)
    pr = completion_log_probs(model, pairs.prompt, pairs.rejected, seq_log_probs)
    return 100.0 * float((pc > pr).float().mean()), pc - pr


def _evaluate(model: _WindowLM, es: _EvalSet, seq_log_probs: SeqLogProbs, seen: bool = False) -> Eval:
    """The held-out metrics (and the training-pair accuracy with ``seen=True``)."""
    with torch.no_grad():
        acc, gap = _accuracy(model, es.held, seq_log_probs)
        train_acc = _accuracy(model, es.seen, seq_log_probs)[0] if seen else float("nan")
        logp = torch.log_softmax(model(es.text[:, :CONTEXT]) @ model.head.T, -1)
        kl = (logp.exp() * (logp - es.ref_text_logp)).sum(-1).mean()
        nll = F.nll_loss(logp, es.text[:, CONTEXT])
    margin = float((gap - (es.ref_chosen - es.ref_rejected)).mean())
    return Eval(acc, train_acc, margin, float(kl), float(nll))


def _run_seed(
    seed: int,
    train_ids: torch.Tensor,
    held_ids: torch.Tensor,
    vocab: int,
    sft_steps: int,
    sizes: dict[str, int],
    objectives: dict[str, _Objective],
    bar: Any,
) -> Iterator[tuple[str, list[Eval]]]:
    """SFT, then every method from the SFT model; yields (method, held-out evaluations along training)."""
    (seq_log_probs,) = require("sequence_log_probs")
    bar.set_postfix_str(f"sft seed={seed}", refresh=False)
    ref = _train_sft(train_ids.unfold(0, CONTEXT + 1, 1), vocab, seed, sft_steps).requires_grad_(False)
    train = make_pairs(train_ids, sizes["n_train"], rng_for(NAME, seed, "train_pairs"))
    held = make_pairs(held_ids, sizes["n_held"], rng_for(NAME, seed, "held_pairs"))
    held_windows = held_ids.unfold(0, CONTEXT + 1, 1)
    text_rng = rng_for(NAME, seed, "text")
    text = held_windows[torch.as_tensor(text_rng.choice(len(held_windows), sizes["n_text"], replace=False))]
    with torch.no_grad():
        ref_tc = completion_log_probs(ref, train.prompt, train.chosen, seq_log_probs)
        ref_tr = completion_log_probs(ref, train.prompt, train.rejected, seq_log_probs)
        es = _EvalSet(
            held,
            train.take(torch.arange(min(len(train), len(held)))),
            text,
            completion_log_probs(ref, held.prompt, held.chosen, seq_log_probs),
            completion_log_probs(ref, held.prompt, held.rejected, seq_log_probs),
            torch.log_softmax(ref(text[:, :CONTEXT]) @ ref.head.T, -1),
        )
    base = _evaluate(ref, es, seq_log_probs, seen=True)
    bar.update(1)
    yield "sft", [base]
    steps, every = sizes["steps"], sizes["every"]
    for m, objective in objectives.items():
        bar.set_postfix_str(f"{m} seed={seed}", refresh=False)
        model = copy.deepcopy(ref).requires_grad_(True).train()
        opt = torch.optim.Adam(model.parameters(), lr=PREF_LR)
        sched = cosine_lr(opt, steps)
        g = seed_torch(NAME, seed, "pref_order")  # the same batches for every method of a seed
        curve = [base]
        for step in range(steps):
            idx = torch.randint(0, len(train), (PREF_BATCH,), generator=g)
            loss = objective(model, ref, train.take(idx), ref_tc[idx], ref_tr[idx], seq_log_probs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if (step + 1) % every == 0 or step + 1 == steps:
                curve.append(_evaluate(model.eval(), es, seq_log_probs, seen=step + 1 == steps))
                model.train()
        bar.update(1)
        yield m, curve


def _fmt_ci(d: PairedDiff) -> str:
    if d.ci_low is None or d.ci_high is None:
        return f"{d.mean:+.1f}"
    return f"{d.mean:+.1f} [{d.ci_low:+.1f}, {d.ci_high:+.1f}]"


def _conclusion(
    acc: dict[str, list[float]],
    train_acc: dict[str, list[float]],
    kl: dict[str, list[float]],
    nll: dict[str, list[float]],
) -> str:
    """Which methods beat sft on held-out pairs (paired 95% CI), at what drift and NLL cost."""
    n = len(acc["sft"])
    groups: dict[str, list[str]] = {"better": [], "worse": [], "no measurable difference": []}
    for m in METHODS:
        d = paired_diff(acc[m], acc["sft"], True)
        groups[d.verdict(True)].append(
            f"{m} {np.mean(acc[m]):.1f}% ({_fmt_ci(d)} points, KL {np.mean(kl[m]):.2g}, "
            f"NLL {np.mean(nll[m]) - np.mean(nll['sft']):+.3f})"
        )
    parts = []
    if groups["better"]:
        parts.append("raise held-out pair accuracy over sft: " + "; ".join(groups["better"]))
    if groups["worse"]:
        parts.append("lower it: " + "; ".join(groups["worse"]))
    if groups["no measurable difference"]:
        parts.append("do not change it measurably: " + "; ".join(groups["no measurable difference"]))
    control: dict[str, list[str]] = {"better": [], "worse": [], "no measurable difference": []}
    for m in METHODS[1:]:
        d = paired_diff(acc[m], acc["sft_chosen"], True)
        control[d.verdict(True)].append(f"{m} {_fmt_ci(d)}")
    words = {"better": "higher", "worse": "lower", "no measurable difference": "not measurably different"}
    vs_control = "; ".join(f"{words[v]} for {', '.join(ms)}" for v, ms in control.items() if ms)
    gains = [float(np.mean(train_acc[m]) - np.mean(train_acc["sft"])) for m in METHODS]
    most = max(METHODS, key=lambda m: np.mean(kl[m]))
    least = min(METHODS, key=lambda m: np.mean(kl[m]))
    text = (
        f"Over {n} seed(s) the SFT model already prefers the real continuation in {np.mean(acc['sft']):.1f}% of "
        f"held-out pairs ({np.mean(train_acc['sft']):.1f}% of training pairs). Methods that "
        + "; methods that ".join(parts)
        + " (Δ with its paired 95% CI; KL to sft in nats/token; NLL = change of held-out next-token "
        f"cross-entropy vs sft). On the training pairs the methods change the accuracy by {min(gains):+.1f} to "
        f"{max(gains):+.1f} points"
        + (
            "; that gain does not carry over to held-out text. "
            if not groups["better"] and min(gains) > 0
            else ". "
        )
        + "Against sft_chosen (the same steps on the real completions, without the rejected ones), "
        f"held-out pair accuracy (points, paired 95% CI) is {vs_control}. Drift from "
        f"the reference is largest for {most} (KL {np.mean(kl[most]):.2g}) and smallest for {least} "
        f"(KL {np.mean(kl[least]):.2g})."
    )
    if n < 2:
        text += " With a single seed there is no confidence interval, so no difference is claimed."
    return text


def run(ctx: LabContext) -> ExperimentResult:
    require("sequence_log_probs", "cross_entropy_loss", "DPOLoss", "SimPOLoss", "ORPOLoss", "KTOLoss")
    from ..plots import legend_outside, plt, seed_strip

    vocab = ctx.pick(1024, 1024, 256)
    sft_steps = ctx.pick(400, 400, 10)
    steps = ctx.pick(200, 100, 6)
    n_train = ctx.pick(4096, 4096, 128)
    n_held = ctx.pick(1000, 1000, 64)
    n_text = ctx.pick(2048, 2048, 64)
    every = max(1, steps // 4)
    ids, _ = data.stdlib_corpus(vocab)
    cut = int(len(ids) * (1 - HELD_OUT))
    train_ids, held_ids = ids[:cut], ids[cut:]

    res = ExperimentResult(
        NAME,
        "Preference optimisation: prefer the real continuation",
        metric="held-out pair accuracy %",
        higher_is_better=True,
        baseline="sft",
        setup=(
            f"Text that ships with Python: the docstrings of ~90 standard-library modules (Python "
            f"{sys.version.split()[0]}), lower-cased word/punctuation tokens, {len(ids):,} tokens, vocabulary "
            f"{vocab} (the most frequent + <unk>); the last {int(HELD_OUT * 100)}% is held out. Model: the "
            f"`large_vocabulary` window LM (embeddings of the previous {CONTEXT} tokens -> Linear -> tanh -> "
            f"head), first trained on the training text with cross-entropy (SFT: Adam lr {SFT_LR:g}, cosine, "
            f"{sft_steps} steps of {SFT_BATCH} tokens); that model is `sft`, the baseline, and also the frozen "
            f"reference. Pairs: a prompt of {CONTEXT} tokens, *chosen* = the real next {COMPLETION} tokens, "
            f"*rejected* = the same {COMPLETION} tokens with one adjacent pair of different tokens swapped "
            f"(random position): the same words, one out of order. {n_train} training pairs from the training "
            f"text, {n_held} held-out pairs from the held-out text, drawn per seed. Each method starts from "
            f"the seed's SFT model and trains {steps} steps of {PREF_BATCH} pairs (Adam lr {PREF_LR:g}, cosine, "
            "same batches for every method; the lr is one value for all methods, not tuned per method). "
            "`sft_chosen` (control) = the same steps with cross-entropy on the chosen completions only. "
            f"Losses (losskit modules, their defaults = the papers' / TRL's, not tuned): `dpo` = `DPOLoss(beta="
            f"{BETA['dpo']:g})` on summed log-probs; `ipo` = `DPOLoss(beta={BETA['ipo']:g}, loss_type='ipo')` "
            f"on length-averaged log-probs (target margin 1/(2 beta) = {1 / (2 * BETA['ipo']):g} nats/token); "
            f"`simpo` = `SimPOLoss(beta={BETA['simpo']:g}, gamma={SIMPO_GAMMA:g})` and `orpo` = `ORPOLoss(beta="
            f"{BETA['orpo']:g})` (its NLL term included) on length-averaged log-probs, no reference; `kto` = "
            f"`KTOLoss(beta={BETA['kto']:g})`, each pair split into a desirable (real) and an undesirable "
            "(corrupted) example, weights 1/1, KL reference point from mismatched completions. Log-probs: "
            "`losskit.functional.sequence_log_probs`. Metrics on held-out data: *pair accuracy* = % of "
            "pairs where the model gives the real continuation the higher log-prob; *margin* = mean "
            "[log pi/pi_ref (chosen) - log pi/pi_ref (rejected)] in nats (summed over the completion, "
            "beta-free; 0 for sft by definition); *KL to sft* = mean per-token KL(pi || pi_sft) of the "
            f"next-token distributions on {n_text} held-out text positions; *held-out NLL* = next-token "
            "cross-entropy on the same positions."
        ),
    )
    sizes = {"steps": steps, "every": every, "n_train": n_train, "n_held": n_held, "n_text": n_text}
    objectives = {m: _Objective(m) for m in METHODS}
    curves: dict[str, list[list[Eval]]] = {m: [] for m in ("sft", *METHODS)}
    bar = ctx.bar(len(ctx.seeds) * (1 + len(METHODS)), NAME)
    for seed in ctx.seeds:
        for m, curve in _run_seed(seed, train_ids, held_ids, vocab, sft_steps, sizes, objectives, bar):
            curves[m].append(curve)
    bar.close()

    def final(key: str) -> dict[str, list[float]]:
        return {m: [getattr(c[-1], key) for c in cs] for m, cs in curves.items()}

    acc, margin, kl, nll = final("accuracy"), final("margin"), final("kl"), final("nll")
    res.methods = acc
    res.secondary["training-pair accuracy %"] = (True, final("train_accuracy"))
    res.secondary["margin vs reference (nats)"] = (True, margin)
    res.secondary["KL to sft (nats/token)"] = (False, kl)
    res.secondary["held-out NLL (nats/token)"] = (False, nll)
    res.extra.update(
        {
            "vocab": vocab,
            "corpus_tokens": len(ids),
            "completion_tokens": COMPLETION,
            "betas": dict(BETA),
            "simpo_gamma": SIMPO_GAMMA,
            "steps": steps,
            "sft_steps": sft_steps,
        }
    )

    res.conclusion = _conclusion(acc, final("train_accuracy"), kl, nll)
    res.notes.append(
        "sft_chosen is the control for 'is it the preference signal or just more training?': the same "
        "steps and batches, cross-entropy on the chosen (real) completions only, no rejected ones."
    )

    def gap(a: str, b: str) -> float:
        return max(abs(x - y) for x, y in zip(acc[a], acc[b]))

    res.notes.append(
        f"Per seed, dpo, ipo and kto end within {max(gap('dpo', 'ipo'), gap('dpo', 'kto')):.2g} points of "
        f"each other and orpo within {gap('orpo', 'sft_chosen'):.2g} points of sft_chosen. Near the "
        "reference (small margins) the DPO, IPO and KTO gradients are all close to one multiple of the "
        "gradient of the log-ratio margin, and Adam removes the scale, so the three take nearly the same "
        f"steps; ORPO with beta = {BETA['orpo']:g} is mostly its NLL term on the chosen completions, i.e. "
        "sft_chosen."
    )

    # curves: held-out pair accuracy and KL against the preference step, mean over seeds
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    x = np.array([0] + [min(steps, (i + 1) * every) for i in range(len(curves[METHODS[0]][0]) - 1)])
    for i, m in enumerate(METHODS):
        c = curves[m]
        for ax, key in zip(axes, ("accuracy", "kl", "nll")):
            ax.plot(
                x, np.mean([[getattr(e, key) for e in s] for s in c], axis=0), "-", color=f"C{i}", label=m
            )
    for ax, key, label in zip(
        axes,
        ("accuracy", "kl", "nll"),
        ("held-out pair accuracy %", "KL(policy || sft), nats/token", "held-out NLL, nats/token"),
    ):
        ax.axhline(float(np.mean([getattr(e, key) for e in [c[0] for c in curves[METHODS[0]]]])),
                   color="k", ls=":", lw=1, label="sft")  # fmt: skip
        ax.set_xlabel("preference step")
        ax.set_ylabel(label)
    axes[0].set_title("Held-out pair accuracy (mean over seeds)", fontsize=10)
    axes[1].set_title("Drift from the reference", fontsize=10)
    axes[2].set_title("Language-model quality on held-out text", fontsize=10)
    legend_outside(axes[2])
    fig.tight_layout()
    res.figures.append(
        ctx.figure(
            fig,
            f"{NAME}_curves.png",
            "Held-out pair accuracy, KL to the SFT reference and held-out NLL during preference training "
            "(mean over seeds; dotted: the SFT model)",
        )
    )
    res.figures.append(seed_strip(ctx, res))
    return res
