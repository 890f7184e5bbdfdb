"""RL policy losses with a verifiable reward: a tiny autoregressive policy learns to write addends from
{1, 2, 3} that sum to a target given in the prompt, then stop; trained with GRPO, Dr. GRPO, DAPO and GSPO
from the same warm start, with the response length watched along the way."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from ..core import ExperimentResult, LabContext, Unavailable, require, rng_for, seed_torch
from ..report import PairedDiff, paired_diff

NAME = "policy_gradient"
# dr_grpo_std: the control that changes the normaliser alone (Dr. GRPO's constant, GRPO's std-scaled advantages)
METHODS = ("grpo", "dr_grpo", "dapo", "gspo", "dr_grpo_std")
LOSS_TYPE = {"grpo": "grpo", "dr_grpo": "dr_grpo", "dapo": "dapo", "gspo": "gspo", "dr_grpo_std": "dr_grpo"}
EOS = 0  # tokens 1, 2, 3 add their value; 0 ends the answer
VOCAB = 4
PAD = VOCAB  # input-only id: "no token here yet" (and the filler after EOS)
T_MAX = 12  # generation budget in tokens, EOS included
TARGETS = tuple(range(1, 21))  # the prompt: one target number
EMBED, HIDDEN = 8, 64
GROUP = 8  # completions per prompt
LR = 1e-3  # Adam, constant, the same for every loss
SFT_LR = 3e-3
# clip ranges (lower epsilon, upper epsilon); the papers' values: GRPO / Dr. GRPO 0.2, DAPO clip-higher
# 0.2 / 0.28, GSPO 3e-4 / 4e-4 on its sequence-level ratio
CLIP = {
    "grpo": (0.2, 0.2),
    "dr_grpo": (0.2, 0.2),
    "dapo": (0.2, 0.28),
    "gspo": (3e-4, 4e-4),
    "dr_grpo_std": (0.2, 0.2),
}
# advantage scale: Dr. GRPO drops the std too
SCALE = {"grpo": "std", "dr_grpo": "none", "dapo": "std", "gspo": "std", "dr_grpo_std": "std"}


def _rl() -> Any:
    """``losskit.rl`` (public API), or :class:`Unavailable`."""
    try:
        import losskit.rl as rl
    except ModuleNotFoundError as exc:
        raise Unavailable("losskit.rl not available") from exc
    missing = [n for n in ("policy_gradient_loss", "group_advantages") if not hasattr(rl, n)]
    if missing:
        raise Unavailable(f"losskit.rl.{', losskit.rl.'.join(missing)} not available")
    return rl


class PrefixPolicy(nn.Module):
    """Next-token policy over the whole prefix: embeddings of the target and of the ``T_MAX - 1`` previous
    positions (PAD where nothing was written yet) -> Linear -> tanh -> logits over {EOS, 1, 2, 3}."""

    def __init__(self) -> None:
        super().__init__()
        self.target = nn.Embedding(max(TARGETS) + 1, EMBED)
        self.token = nn.Embedding(VOCAB + 1, EMBED)
        self.mlp = nn.Sequential(nn.Linear(T_MAX * EMBED, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, VOCAB))

    def forward(self, target: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """``target (..., )``, ``prefix (..., T_MAX - 1)`` -> logits ``(..., VOCAB)``."""
        x = torch.cat([self.target(target)[..., None, :], self.token(prefix)], -2)
        logits: torch.Tensor = self.mlp(x.flatten(-2))
        return logits

    def _tables(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The first layer split by input slot (the same function as :meth:`forward`, cheaper): the
        pre-activation with nothing written yet ``(B, HIDDEN)``, and ``(T_MAX - 1, VOCAB + 1, HIDDEN)``: what
        writing token ``v`` at position ``j`` adds to it (0 for PAD)."""
        first = cast(nn.Linear, self.mlp[0])
        w = first.weight.view(HIDDEN, T_MAX, EMBED)
        per_slot = torch.einsum("ve,hje->jvh", self.token.weight, w[:, 1:])  # (T-1, V+1, H)
        empty = first.bias + self.target(target) @ w[:, 0].T + per_slot[:, PAD].sum(0)
        return empty, per_slot - per_slot[:, PAD : PAD + 1]

    def all_logits(self, target: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``(B, T_MAX, VOCAB)`` of a batch of completions ``tokens (B, T_MAX)``:
        position ``t`` sees the tokens before ``t``."""
        empty, added = self._tables(target)
        written = added[torch.arange(T_MAX - 1), tokens[:, : T_MAX - 1]]  # (B, T-1, H)
        before = torch.cat([torch.zeros_like(written[:, :1]), written.cumsum(1)], 1)  # sum over j < t
        logits: torch.Tensor = self.mlp[2](torch.tanh(empty[:, None] + before))
        return logits


def token_log_probs(model: PrefixPolicy, target: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``(B, T_MAX)`` log-prob of each written token (0 at the PAD positions after EOS)."""
    logp = torch.log_softmax(model.all_logits(target, tokens), -1)
    got = logp.gather(-1, tokens.clamp(max=VOCAB - 1)[..., None])[..., 0]
    return torch.where(tokens != PAD, got, torch.zeros_like(got))


@torch.no_grad()
def sample(model: PrefixPolicy, target: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Completions ``(B, T_MAX)`` sampled at temperature 1 by inverse CDF from the uniforms ``u (B, T_MAX)``
    (so every method of a seed uses the same random numbers); PAD after EOS."""
    tokens = torch.full((len(target), T_MAX), PAD, dtype=torch.long)
    done = torch.zeros(len(target), dtype=torch.bool)
    h, added = model._tables(target)
    for t in range(T_MAX):
        cdf = torch.softmax(model.mlp[2](torch.tanh(h)), -1).cumsum(-1)
        tok = (u[:, t : t + 1] > cdf).sum(-1).clamp(max=VOCAB - 1)
        tok = torch.where(done, torch.full_like(tok, PAD), tok)
        tokens[:, t] = tok
        done |= tok == EOS
        if t < T_MAX - 1:
            h = h + added[t, tok]
    return tokens


def score(target: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(reward 1.0 / 0.0, length in tokens with EOS). Correct: EOS written and the addends sum to the target."""
    written = tokens != PAD
    value = torch.where(written & (tokens != EOS), tokens, torch.zeros_like(tokens)).sum(1)
    ended = (tokens == EOS).any(1)
    return (ended & (value == target)).float(), written.sum(1)


def demonstrations(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` correct answers: uniform addends until the target is reached (the last one cut to fit), then
    EOS; answers longer than the budget are drawn again."""
    targets = rng.choice(TARGETS, size=n)
    rows = []
    for goal in targets:
        while True:
            seq, total = [], 0
            while total < goal:
                a = min(int(rng.integers(1, 4)), goal - total)
                seq.append(a)
                total += a
            if len(seq) < T_MAX:
                break
        rows.append(seq + [EOS] + [PAD] * (T_MAX - len(seq) - 1))
    return torch.as_tensor(targets), torch.tensor(rows)


@dataclass
class Snapshot:
    """Evaluation on fixed samples: success %, mean lengths (NaN when there is no such completion)."""

    success: float
    length: float
    length_wrong: float
    length_right: float
    truncated: float  # % of completions that never wrote EOS


@dataclass
class Run:
    curve: list[Snapshot] = field(default_factory=list)  # at the warm start, then every `every` steps
    reward: list[float] = field(default_factory=list)  # per step: mean reward of the training rollouts
    len_wrong: list[float] = field(default_factory=list)  # per step: mean length of the wrong rollouts
    len_right: list[float] = field(default_factory=list)
    clipped: list[float] = field(default_factory=list)  # per step: share of ratios outside the clip range


def _mean_where(x: torch.Tensor, keep: torch.Tensor) -> float:
    return float(x[keep].float().mean()) if bool(keep.any()) else float("nan")


def evaluate(model: PrefixPolicy, target: torch.Tensor, u: torch.Tensor) -> Snapshot:
    tokens = sample(model, target, u)
    reward, length = score(target, tokens)
    right = reward > 0
    truncated = ~(tokens == EOS).any(1)
    return Snapshot(
        100.0 * float(reward.mean()),
        float(length.float().mean()),
        _mean_where(length, ~right),
        _mean_where(length, right),
        100.0 * float(truncated.float().mean()),
    )


def clip_share(logps: torch.Tensor, old: torch.Tensor, mask: torch.Tensor, method: str) -> float:
    """Share of importance ratios outside ``[1 - eps, 1 + eps_high]``: per completion token, or per
    completion for gspo (its ratio is exp of the length-mean log-ratio)."""
    lo, hi = CLIP[method]
    log_ratio = torch.where(mask, logps - old, torch.zeros_like(logps))
    if LOSS_TYPE[method] == "gspo":
        ratio = (log_ratio.sum(1) / mask.sum(1)).exp()
    else:
        ratio = log_ratio.exp()[mask]
    return float(((ratio < 1 - lo) | (ratio > 1 + hi)).float().mean())


def warm_start(seed: int, steps: int) -> PrefixPolicy:
    """The seed's initial policy: random init, then ``steps`` SFT steps on correct demonstrations."""
    (ce,) = require("cross_entropy_loss")
    seed_torch(NAME, seed, "init")
    model = PrefixPolicy()
    target, tokens = demonstrations(64 * max(steps, 1), rng_for(NAME, seed, "demos"))
    opt = torch.optim.Adam(model.parameters(), lr=SFT_LR)
    for s in range(steps):
        t, y = target[64 * s : 64 * (s + 1)], tokens[64 * s : 64 * (s + 1)]
        logits = model.all_logits(t, y)
        loss = ce(logits.flatten(0, 1), y.flatten(), ignore_index=PAD)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model


def train(
    method: str,
    start: PrefixPolicy,
    seed: int,
    sizes: dict[str, int],
    eval_target: torch.Tensor,
    eval_u: torch.Tensor,
    rl: Any,
) -> Run:
    """RL from ``start`` with one loss type: every step samples ``GROUP`` completions for every target, then
    takes ``inner`` Adam steps on that rollout (the first one on-policy, the rest off by the clip range)."""
    model = copy.deepcopy(start).train()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    lo, hi = CLIP[method]
    loss_kw: dict[str, Any] = {"loss_type": LOSS_TYPE[method], "epsilon": lo, "epsilon_high": hi}
    if LOSS_TYPE[method] == "dr_grpo":
        loss_kw["max_len"] = T_MAX
    target = torch.tensor(TARGETS).repeat_interleave(GROUP)
    g = seed_torch(NAME, seed, "rollouts")  # the same random numbers for every method of a seed
    run = Run(curve=[evaluate(model, eval_target, eval_u)])
    for step in range(sizes["steps"]):
        u = torch.rand((len(target), T_MAX), generator=g)
        tokens = sample(model, target, u)
        mask = tokens != PAD
        with torch.no_grad():
            old = token_log_probs(model, target, tokens)
        reward, length = score(target, tokens)
        adv = rl.group_advantages(reward, GROUP, scale=SCALE[method])
        outside = []
        for k in range(sizes["inner"]):
            logps = token_log_probs(model, target, tokens)
            if k:  # the first inner step is on-policy: every ratio is 1
                outside.append(clip_share(logps.detach(), old, mask, method))
            loss = rl.policy_gradient_loss(logps, old, adv, mask, **loss_kw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        run.clipped.append(float(np.mean(outside)) if outside else 0.0)
        right = reward > 0
        run.reward.append(float(reward.mean()))
        run.len_wrong.append(_mean_where(length, ~right))
        run.len_right.append(_mean_where(length, right))
        if (step + 1) % sizes["every"] == 0 or step + 1 == sizes["steps"]:
            run.curve.append(evaluate(model, eval_target, eval_u))
    return run


# ----------------------------------------------------------------------------- report


def _ci(d: PairedDiff, digits: int = 2) -> str:
    if d.ci_low is None or d.ci_high is None:
        return f"{d.mean:+.{digits}f}"
    return f"{d.mean:+.{digits}f} [{d.ci_low:+.{digits}f}, {d.ci_high:+.{digits}f}]"


def versus(values: dict[str, list[float]], expect_longer: bool, other: str = "dr_grpo") -> str:
    """grpo - ``other`` on one length, paired by seed, read against the claimed direction (longer under
    grpo for incorrect answers, shorter for correct ones); seeds where either has no such completion
    are left out."""
    pairs = [(a, b) for a, b in zip(values["grpo"], values[other]) if np.isfinite(a) and np.isfinite(b)]
    if len(pairs) < 2:
        return f"vs {other}: too few seeds with such completions under both to compare"
    d = paired_diff([a for a, _ in pairs], [b for _, b in pairs], True)
    verdict = d.verdict(True)  # 'better' = longer under grpo
    if verdict == "no measurable difference":
        outcome = "CI includes 0: not measurable"
    elif (verdict == "better") == expect_longer:
        outcome = "consistent with the claim"
    else:
        outcome = "the opposite of the claim"
    return f"vs {other} {_ci(d)} ({d.wins}/{d.n} seeds longer under grpo; {outcome})"


def _per_method(values: dict[str, list[float]]) -> str:
    finite = {m: [v for v in vals if np.isfinite(v)] for m, vals in values.items()}
    return ", ".join(f"{m} {np.mean(finite[m]):.2f}" if finite[m] else f"{m} n/a" for m in METHODS)


def _conclusion(res: ExperimentResult, start: dict[str, list[float]]) -> str:
    from ..report import conclude

    text = conclude(res)
    if len(res.seeds) < 2:
        return text
    sec = {k: v[1] for k, v in res.secondary.items()}
    parts, ends = [], []
    for what, longer in (("incorrect", True), ("correct", False)):
        end, during = sec[f"length of {what} completions"], sec[f"length of {what} rollouts during training"]
        for label, values in (
            (f"{what} rollouts over training", during),
            (f"{what} answers at the end", end),
        ):
            parts.append(f"{label} {versus(values, longer)}, {versus(values, longer, 'dr_grpo_std')}")
        warm = np.nanmean(start["wrong" if longer else "right"])
        ends.append(f"{what}: {_per_method(end)} (warm start {warm:.2f})")
    return (
        f"{text} Liu et al. (2025) report that GRPO's per-sequence mean makes incorrect answers longer and "
        "correct ones shorter than Dr. GRPO's constant normaliser. Measured here (mean length in tokens incl. "
        "EOS, grpo minus the other, paired by seed, 95% CI; dr_grpo_std changes the normaliser alone): "
        + "; ".join(parts)
        + ". Mean length at the end per loss, "
        + "; ".join(ends)
        + "."
    )


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Moving average along the last axis that ignores NaN (steps without such a rollout)."""
    if width <= 1:
        return x
    kernel = np.ones(width)
    ok = np.isfinite(x)
    num = np.apply_along_axis(lambda r: np.convolve(r, kernel, "same"), -1, np.where(ok, x, 0.0))
    den = np.apply_along_axis(lambda r: np.convolve(r, kernel, "same"), -1, ok.astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _figure(ctx: LabContext, runs: dict[str, list[Run]], steps: int, every: int) -> Any:
    from ..plots import legend_outside, plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    x_eval = np.array([0] + [min(steps, (i + 1) * every) for i in range(len(runs[METHODS[0]][0].curve) - 1)])
    x = np.arange(1, steps + 1)
    width = max(1, steps // 20)
    for i, m in enumerate(METHODS):
        rs = runs[m]
        axes[0].plot(x_eval, np.mean([[s.success for s in r.curve] for r in rs], 0), "o-", ms=3,
                     color=f"C{i}", label=m)  # fmt: skip
        for ax, key in zip(axes[1:], ("len_wrong", "len_right")):
            per_seed = _smooth(np.array([getattr(r, key) for r in rs], dtype=float), width)
            with warnings.catch_warnings():  # a step where no seed had such a rollout is a gap
                warnings.simplefilter("ignore", RuntimeWarning)
                ax.plot(x, np.nanmean(per_seed, 0), "-", color=f"C{i}", label=m)
    axes[0].set_ylabel("success % (fixed evaluation samples)")
    axes[0].set_title("Reward: success rate (mean over seeds)", fontsize=10)
    axes[1].set_ylabel("tokens incl. EOS")
    axes[1].set_title("Length of incorrect rollouts", fontsize=10)
    axes[2].set_ylabel("tokens incl. EOS")
    axes[2].set_title("Length of correct rollouts", fontsize=10)
    for ax in axes:
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    legend_outside(axes[2])
    fig.tight_layout()
    return ctx.figure(
        fig,
        f"{NAME}_curves.png",
        "Success rate on fixed evaluation samples, and the mean length of the incorrect and the correct "
        f"training rollouts (moving average over {width} steps), mean over seeds",
    )


def sizes_for(ctx: LabContext) -> dict[str, int]:
    steps = ctx.pick(200, 80, 3)
    return {
        "sft_steps": ctx.pick(40, 40, 4),
        "steps": steps,
        "inner": ctx.pick(4, 4, 2),
        "eval_k": ctx.pick(32, 32, 4),
        "every": max(1, steps // 10),
    }


def collect(ctx: LabContext, sizes: dict[str, int]) -> dict[str, list[Run]]:
    """Every (loss type, seed) run, from the seed's warm start; ``runs[method][i]`` is seed ``ctx.seeds[i]``."""
    rl = _rl()
    et = torch.tensor(TARGETS).repeat_interleave(sizes["eval_k"])
    runs: dict[str, list[Run]] = {m: [] for m in METHODS}
    starts: dict[int, PrefixPolicy] = {}
    eval_u: dict[int, torch.Tensor] = {}
    for method, seed in ctx.runs(NAME, METHODS):
        if seed not in starts:
            starts[seed] = warm_start(seed, sizes["sft_steps"])
            eval_u[seed] = torch.rand((len(et), T_MAX), generator=seed_torch(NAME, seed, "eval"))
        runs[method].append(train(method, starts[seed], seed, sizes, et, eval_u[seed], rl))
    return runs


def run(ctx: LabContext) -> ExperimentResult:
    _rl()
    require("cross_entropy_loss")
    from ..plots import seed_strip

    sizes = sizes_for(ctx)
    sft_steps, steps, inner, eval_k, every = (
        sizes[k] for k in ("sft_steps", "steps", "inner", "eval_k", "every")
    )
    res = ExperimentResult(
        NAME,
        "RL policy losses: verifiable reward",
        metric="success % (sampled)",
        higher_is_better=True,
        baseline="grpo",
        setup=(
            f"Task: the prompt is a target n in {TARGETS[0]}..{TARGETS[-1]}; the policy writes tokens from "
            f"{{1, 2, 3}} and then EOS, at most {T_MAX} tokens; reward 1 when it wrote EOS and the tokens sum to "
            "n, else 0 (checked by a rule, no reward model). Many answers are correct for each n, from "
            "ceil(n/3) to n tokens (+ EOS), so the reward says nothing about length and the loss's normaliser "
            f"is free to move it. Policy: an MLP over the whole prefix (embeddings of n and of the {T_MAX - 1} "
            f"previous positions, {EMBED} dims each -> Linear({T_MAX * EMBED}, {HIDDEN}) -> tanh -> 4 logits; "
            f"{sum(p.numel() for p in PrefixPolicy().parameters())} parameters). Warm start per seed: "
            f"{sft_steps} SFT steps (Adam lr {SFT_LR:g}, 64 answers a step, `cross_entropy_loss`) on correct "
            "answers with uniform random addends, shared by every loss of the seed. RL: each step samples "
            f"{GROUP} completions (temperature 1) for each of the {len(TARGETS)} targets ({GROUP * len(TARGETS)}"
            f" rollouts), then takes {inner} Adam steps (lr {LR:g}, constant) on that rollout, the first "
            "on-policy, the later ones against the sampling log-probs (`old_logps`), where the clip acts; "
            f"{steps} steps; the same random numbers for every loss of a seed. Losses: "
            "`losskit.rl.policy_gradient_loss` with `loss_type` = the method name (`dr_grpo` for "
            "`dr_grpo_std`), advantages from `losskit.rl.group_advantages` (scale 'std'; 'none' for dr_grpo, "
            "as Dr. GRPO drops the std too). So against grpo, dr_grpo changes the normaliser and the std "
            "scale (the paper's recipe), dr_grpo_std the normaliser alone (the control), dapo the normaliser "
            "(token mean of the batch) and the upper clip; "
            "no KL (beta 0) and no entropy term; clip epsilon (low, high): "
            + ", ".join(f"{m} {lo:g}/{hi:g}" for m, (lo, hi) in CLIP.items())
            + f" (the papers' values); dr_grpo's constant is {GROUP * len(TARGETS)} x max_len {T_MAX}. DAPO's "
            "dynamic sampling and overlong shaping are not used. Evaluation: the success rate of "
            f"{eval_k} sampled completions per target ({eval_k * len(TARGETS)} in all) drawn with the same "
            "random numbers for every loss and checkpoint of a seed; lengths count tokens including EOS."
        ),
    )
    runs = collect(ctx, sizes)

    def final(key: str) -> dict[str, list[float]]:
        return {m: [getattr(r.curve[-1], key) for r in rs] for m, rs in runs.items()}

    res.methods = final("success")
    res.secondary["length of incorrect completions"] = (False, final("length_wrong"))
    res.secondary["length of correct completions"] = (False, final("length_right"))
    for what, key in (("incorrect", "len_wrong"), ("correct", "len_right")):
        with warnings.catch_warnings():  # a run without such rollouts at all gives NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            res.secondary[f"length of {what} rollouts during training"] = (
                False,
                {m: [float(np.nanmean(getattr(r, key))) for r in rs] for m, rs in runs.items()},
            )
    res.secondary["mean rollout success % over training"] = (
        True,
        {m: [100.0 * float(np.mean(r.reward)) for r in rs] for m, rs in runs.items()},
    )
    res.secondary["ratios outside the clip range %"] = (
        False,
        {m: [100.0 * float(np.mean(r.clipped)) for r in rs] for m, rs in runs.items()},
    )
    first = [r.curve[0] for r in runs[METHODS[0]]]
    start = {
        "success": [s.success for s in first],
        "wrong": [s.length_wrong for s in first],
        "right": [s.length_right for s in first],
    }
    res.extra.update(
        {
            "targets": [TARGETS[0], TARGETS[-1]],
            "max_len": T_MAX,
            "group_size": GROUP,
            "steps": steps,
            "inner_steps": inner,
            "sft_steps": sft_steps,
            "clip": {m: list(c) for m, c in CLIP.items()},
            "warm_start": {k: [float(v) for v in vals] for k, vals in start.items()},
            "truncated_pct": final("truncated"),
            "mean_length": final("length"),
        }
    )
    res.seeds = list(ctx.seeds)  # the runner sets it too; the conclusion needs it now
    res.conclusion = _conclusion(res, start)
    res.notes.append(
        f"Warm start (shared by all losses of a seed): success {np.mean(start['success']):.1f}%. The length "
        "columns are means over the completions of that kind at the end, so they also move with which targets "
        "are still answered wrong (wrong answers to large targets are longer); n/a where none is left."
    )
    res.notes.append(
        "Ratios outside the clip range: share of completion-token ratios (completions for gspo, whose ratio "
        "is the exp of the length-mean log-ratio) outside [1 - eps_low, 1 + eps_high] in the off-policy inner "
        "steps, mean over training. GSPO's range is three orders of magnitude narrower, so most of its later "
        "inner steps are clipped: that is its design, not a fault."
    )
    res.notes.append(
        "dapo and dr_grpo_std weight every completion token of a step alike (1 / valid tokens vs 1 / (B x "
        "max_len): a per-step constant that Adam nearly removes); they differ mainly by dapo's upper clip. "
        "grpo against dr_grpo_std is the normaliser alone; against dr_grpo, the normaliser and the std scale."
    )
    res.figures.append(_figure(ctx, runs, steps, every))
    res.figures.append(seed_strip(ctx, res))
    return res
