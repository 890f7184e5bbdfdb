"""Large-vocabulary cross-entropy: the same language model trained with the naive loss and with the fused,
chunked ``linear_cross_entropy``; the loss curves agree, the memory of one head step does not."""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...bench.measure import run_json_child
from .. import data
from ..core import ExperimentResult, LabContext, cosine_lr, require, seed_torch

NAME = "large_vocabulary"
METHODS = ("naive", "linear_cross_entropy")
CONTEXT = 4  # previous tokens the model sees
EMBED = 32
HIDDEN = 64
BATCH = 128  # tokens per step
LR = 3e-3
HELD_OUT = 0.1  # last 10% of the corpus
MEM_VOCAB = 32_000  # vocabulary of the memory measurement (LLaMA-2 size)
MEM_HIDDEN = 128
MIB = 2**20


class _WindowLM(nn.Module):
    """Next-token model: embeddings of the previous ``CONTEXT`` tokens -> MLP -> hidden state; the head
    weight ``(V, HIDDEN)`` is applied by the loss (naive matmul or the fused kernel)."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, EMBED)
        self.mlp = nn.Sequential(nn.Linear(CONTEXT * EMBED, HIDDEN), nn.Tanh())
        self.head = nn.Parameter(torch.randn(vocab, HIDDEN) / HIDDEN**0.5)

    def forward(self, ctx_ids: torch.Tensor) -> torch.Tensor:
        hidden: torch.Tensor = self.mlp(self.embed(ctx_ids).flatten(1))
        return hidden


def _loss_fn(method: str) -> Any:
    (linear_cross_entropy,) = require("linear_cross_entropy")
    if method == "naive":
        return lambda h, w, t: F.cross_entropy(h @ w.T, t)
    return lambda h, w, t: linear_cross_entropy(h, w, t)


def _train(
    method: str, windows: torch.Tensor, held: torch.Tensor, vocab: int, seed: int, steps: int
) -> tuple[np.ndarray, float, torch.Tensor]:
    """Per-step training losses, the held-out loss (plain F.cross_entropy for both methods), final weights."""
    loss_fn = _loss_fn(method)
    seed_torch(NAME, seed)  # same initial weights for both methods of a seed
    model = _WindowLM(vocab)
    g = seed_torch(NAME, seed, "order")  # same batch order for both methods of a seed
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = cosine_lr(opt, steps)
    curve = np.zeros(steps)
    for step in range(steps):
        rows = windows[torch.randint(0, len(windows), (BATCH,), generator=g)]
        h = model(rows[:, :CONTEXT])
        loss = loss_fn(h, model.head, rows[:, CONTEXT])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        curve[step] = float(loss.detach())
    with torch.no_grad():
        h = model(held[:, :CONTEXT])
        held_loss = float(F.cross_entropy(h @ model.head.T, held[:, CONTEXT]))
    return curve, held_loss, torch.cat([p.detach().flatten() for p in model.parameters()])


# ----------------------------------------------------------------------------- memory, in a fresh process


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{field}:\s+(\d+)\s+kB", f.read(), re.M)
    return int(m.group(1)) * 1024 if m else -1


def measure_child(spec: dict[str, Any]) -> dict[str, dict[str, list[int]]]:
    """Runs in the fresh subprocess: one forward + backward of each method per seed, order given per seed.

    ``held``: RSS growth from before the forward to after it (what the graph keeps for backward, including
    gradients a fused kernel computed in the forward); ``peak``: peak RSS growth over forward + backward
    (``VmHWM`` after resetting it through ``/proc/self/clear_refs``). Large blocks are returned to the OS on
    free (``MALLOC_MMAP_THRESHOLD_`` set by the parent), so the steps can be measured one after another in
    one process; a warm-up step of every method at a small shape runs first (it loads code and pages).
    """
    torch.set_num_threads(1)
    n, v, hdim = spec["tokens"], spec["vocab"], spec["hidden"]
    out: dict[str, dict[str, list[int]]] = {m: {"held": [], "peak": []} for m in METHODS}

    def step(method: str, n: int, v: int, seed: int, record: bool) -> None:
        g = torch.Generator().manual_seed(seed)
        hidden = torch.randn(n, hdim, generator=g).requires_grad_(True)
        weight = (torch.randn(v, hdim, generator=g) / hdim**0.5).requires_grad_(True)
        target = torch.randint(0, v, (n,), generator=g)
        fn = _loss_fn(method)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kb("VmRSS")
        loss = fn(hidden, weight, target)
        after_fwd = _status_kb("VmRSS")
        loss.backward()
        peak = _status_kb("VmHWM")
        if record:
            out[method]["held"].append(max(after_fwd - before, 0))
            out[method]["peak"].append(max(peak - before, 0))

    for method in METHODS:
        step(method, 64, 512, 0, record=False)
    for seed, order in zip(spec["seeds"], spec["orders"]):
        for method in order:
            step(method, n, v, seed, record=True)
    return out


def _measure(
    tokens: int, vocab: int, hidden: int, seeds: list[int]
) -> dict[str, dict[str, list[int]]] | None:
    """Memory of one loss step per seed and method, in a fresh process (None without Linux /proc)."""
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    orders = [list(METHODS) if i % 2 == 0 else list(reversed(METHODS)) for i in range(len(seeds))]
    spec = {"tokens": tokens, "vocab": vocab, "hidden": hidden, "seeds": list(seeds), "orders": orders}
    result, stderr = run_json_child(
        "losskit.lab.experiments.large_vocabulary:measure_child", spec, env={"OMP_NUM_THREADS": "1"}
    )
    if result is None:
        raise RuntimeError(f"memory measurement failed: {stderr.strip()[-500:]}")
    memory: dict[str, dict[str, list[int]]] = result
    return memory


# ----------------------------------------------------------------------------- the experiment


def _g(x: float) -> str:
    return "0 (identical in float32)" if x == 0 else f"{x:.2g}"


def run(ctx: LabContext) -> ExperimentResult:
    require("linear_cross_entropy")
    from ..plots import plt, positive_for_log

    vocab = ctx.pick(4096, 4096, 512)
    steps = ctx.pick(300, 100, 10)
    mem_tokens = ctx.pick(1024, 1024, 256)
    mem_vocab = ctx.pick(MEM_VOCAB, MEM_VOCAB, 4096)
    ids, _ = data.stdlib_corpus(vocab)
    cut = int(len(ids) * (1 - HELD_OUT))
    windows = ids[:cut].unfold(0, CONTEXT + 1, 1).contiguous()
    held = ids[cut:].unfold(0, CONTEXT + 1, 1).contiguous()
    res = ExperimentResult(
        NAME,
        "Large-vocabulary cross-entropy memory",
        metric=f"peak memory growth of one head step, V={mem_vocab} (MiB)",
        higher_is_better=False,
        baseline="naive",
        setup=(
            f"Text that ships with Python: the docstrings of ~90 standard-library modules (Python "
            f"{sys.version.split()[0]}), lower-cased word/punctuation tokens, {len(ids):,} tokens, vocabulary = "
            f"the {vocab - 1} most frequent + <unk>; the last {int(HELD_OUT * 100)}% is held out. Model: "
            f"embeddings ({EMBED}) of the previous {CONTEXT} tokens -> Linear -> tanh ({HIDDEN}) -> head weight "
            f"W ({vocab} x {HIDDEN}), next-token prediction, Adam (lr {LR:g}, cosine), {steps} steps of {BATCH} "
            "tokens. `naive` = `F.cross_entropy(hidden @ W.T, target)`; `linear_cross_entropy` = "
            "`losskit.functional.linear_cross_entropy(hidden, W, target)` (chunked, gradients computed in the "
            "forward, the (N, V) logits never built). Both start from the same weights and see the same batches. "
            f"Memory: one forward + backward of the loss alone at a realistic vocabulary, N = {mem_tokens} tokens, "
            f"H = {MEM_HIDDEN}, V = {mem_vocab}, float32, 1 thread, in one fresh Python process, repeated with "
            "each seed's random inputs (method order alternating by seed) after a small warm-up step: *peak* = peak RSS growth over forward + "
            "backward (it includes the hidden and weight gradients, which every method must produce: "
            f"{(mem_tokens + mem_vocab) * MEM_HIDDEN * 4 / MIB:.0f} MiB), *held* = RSS growth from before to "
            f"after the forward (what is kept for backward). One (N, V) float32 matrix is "
            f"{mem_tokens * mem_vocab * 4 / MIB:.0f} MiB. Held-out loss: mean next-token cross-entropy (nats) on "
            "the held-out text, computed the same way for both."
        ),
    )
    curves: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    held_loss: dict[str, list[float]] = {m: [] for m in METHODS}
    final: dict[str, list[float]] = {m: [] for m in METHODS}
    weights: dict[str, list[torch.Tensor]] = {m: [] for m in METHODS}
    peak: dict[str, list[float]] = {}
    kept: dict[str, list[float]] = {}
    bar = ctx.bar(len(ctx.seeds) * len(METHODS) + 1, NAME)
    for seed in ctx.seeds:
        for m in METHODS:
            bar.set_postfix_str(f"{m} seed={seed}", refresh=False)
            curve, hl, w = _train(m, windows, held, vocab, seed, steps)
            weights[m].append(w)
            curves[m].append(curve)
            held_loss[m].append(hl)
            final[m].append(float(curve[-1]))
            bar.update(1)
    bar.set_postfix_str("memory", refresh=False)
    mem = _measure(mem_tokens, mem_vocab, MEM_HIDDEN, list(ctx.seeds))
    bar.update(1)
    bar.close()
    have_mem = mem is not None
    if mem is not None:
        peak = {m: [b / MIB for b in mem[m]["peak"]] for m in METHODS}
        kept = {m: [b / MIB for b in mem[m]["held"]] for m in METHODS}
        res.methods = peak
        res.secondary[f"held for backward, V={mem_vocab} (MiB)"] = (False, kept)
        res.secondary["held-out loss (nats/token)"] = (False, held_loss)
    else:  # no /proc (not Linux): report the training losses only
        res.metric, res.methods = "held-out loss (nats/token)", dict(held_loss)
    res.secondary["final training loss"] = (False, final)

    diffs = [np.abs(a - b) for a, b in zip(curves["naive"], curves["linear_cross_entropy"])]
    max_curve = float(max(d.max() for d in diffs))
    max_final = float(max(abs(a - b) for a, b in zip(final["naive"], final["linear_cross_entropy"])))
    max_param = float(
        max((a - b).abs().max() for a, b in zip(weights["naive"], weights["linear_cross_entropy"]))
    )
    max_held = float(max(abs(a - b) for a, b in zip(held_loss["naive"], held_loss["linear_cross_entropy"])))
    res.extra.update(
        {
            "max_abs_curve_difference": max_curve,
            "max_abs_final_loss_difference": max_final,
            "max_abs_held_out_loss_difference": max_held,
            "max_abs_final_parameter_difference": max_param,
            "memory_shape": {
                "tokens": mem_tokens,
                "vocab": mem_vocab,
                "hidden": MEM_HIDDEN,
                "dtype": "float32",
            },
            "train_vocab": vocab,
            "corpus_tokens": len(ids),
        }
    )
    res.notes.append(
        f"Loss curves, naive vs fused, same init and batches: max |difference| over all {steps} steps and "
        f"{len(ctx.seeds)} seed(s) = {max_curve:.2g} nats (the curves start near ln V = {np.log(vocab):.2f}); "
        f"final training loss differs by at most {max_final:.2g}, held-out loss by at most {_g(max_held)}, "
        f"the trained parameters by at most {max_param:.2g}. For scale: one float32 ulp of a loss near 6 "
        f"is {float(np.spacing(np.float32(6.0))):.2g}."
    )
    res.seeds = list(ctx.seeds)
    if have_mem:
        p_n, p_f = np.mean(peak["naive"]), np.mean(peak["linear_cross_entropy"])
        k_n, k_f = np.mean(kept["naive"]), np.mean(kept["linear_cross_entropy"])
        res.conclusion = (
            f"linear_cross_entropy trains the same model as the naive loss (loss curves agree to {max_curve:.2g} "
            f"nats, held-out loss to {_g(max_held)}) while one head step at V={mem_vocab}, N={mem_tokens} grows "
            f"peak memory by {p_f:.0f} MiB instead of {p_n:.0f} MiB ({p_n / max(p_f, 1e-9):.1f}x less) and keeps "
            f"{k_f:.0f} MiB instead of {k_n:.0f} MiB between forward and backward (mean over "
            f"{len(ctx.seeds)} seed(s)); it is a memory saving, not a better objective."
        )
    else:
        res.conclusion = (
            f"linear_cross_entropy trains the same model as the naive loss (loss curves agree to {max_curve:.2g} "
            "nats); memory was not measured on this platform (needs Linux /proc)."
        )

    fig, axes = plt.subplots(1, 3 if have_mem else 2, figsize=(13 if have_mem else 9, 3.5))
    x = np.arange(1, steps + 1)
    for m, ls in zip(METHODS, ("-", "--")):
        axes[0].plot(x, np.mean(curves[m], axis=0), ls=ls, label=m)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("training loss (nats, mean over seeds)")
    axes[0].legend(fontsize=8)
    axes[0].set_title("Training loss, same init and batches", fontsize=10)
    gap, exact = positive_for_log(np.max(diffs, axis=0))
    axes[1].plot(x, gap, ".-", color="C2", ms=3)
    if exact < len(x):  # exact zeros are gaps, not spikes to the bottom of a log axis
        axes[1].set_yscale("log")
    else:
        axes[1].text(0.5, 0.5, "equal at every step", ha="center", va="center", transform=axes[1].transAxes)
    axes[1].set_xlabel("step" + (f" (gaps: {exact} step(s) with equal losses)" if exact else ""))
    axes[1].set_ylabel("max over seeds |naive − fused|")
    axes[1].set_title("Difference of the two curves", fontsize=10)
    if have_mem:
        pos = np.arange(len(METHODS))
        axes[2].bar(pos - 0.2, [np.mean(peak[m]) for m in METHODS], 0.4, label="peak growth")
        axes[2].bar(pos + 0.2, [np.mean(kept[m]) for m in METHODS], 0.4, label="held for backward")
        axes[2].set_xticks(pos, list(METHODS))
        axes[2].set_ylabel("MiB")
        axes[2].legend(fontsize=8)
        axes[2].set_title(f"One head step, N={mem_tokens}, V={mem_vocab}, H={MEM_HIDDEN}", fontsize=10)
    fig.tight_layout()
    res.figures.append(
        ctx.figure(
            fig,
            f"{NAME}_curves.png",
            "Training-loss curves of the naive and the fused loss (same init, same batches), their difference, "
            "and the memory of one loss step at a realistic vocabulary",
        )
    )
    return res
