"""Dice loss forward+backward: losskit vs the eager composition a user writes, and F.cross_entropy.

Multiclass, class-index target, (16, 4, 128, 128) float32 logits on CPU by default. Reports the median
of >= 10 timed runs after warm-up (implementations interleaved), and the bytes saved for backward
(distinct storages seen by ``torch.autograd.graph.saved_tensors_hooks``, the logits and target
included when they are saved). The machine may be shared: compare the ratios.

    python benchmarks/bench_dice.py [--shape 16 4 128 128] [--threads 2] [--runs 15] [--with-kernel]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import losskit.functional as LF


def eager_dice(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """What users typically write: softmax, one_hot, permute, sums."""
    c = logits.shape[1]
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(target, c).permute(0, 3, 1, 2).float()
    dims = (2, 3)
    inter = (probs * onehot).sum(dims)
    card = probs.sum(dims) + onehot.sum(dims)
    return (1.0 - 2.0 * inter / card.clamp_min(eps)).mean()


def losskit_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return LF.dice_loss(logits, target)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, target)


def saved_bytes(fn: Callable, logits: torch.Tensor, target: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for backward, the logits and target included
    when they are saved (a loss that keeps its input holds it alive for the backward pass)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    x = logits.detach().clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn(x, target)
    loss.backward()
    return sum(seen.values())


def time_fwd_bwd(
    fns: list[Callable], logits: torch.Tensor, target: torch.Tensor, runs: int, warmup: int
) -> list[float]:
    """Median forward+backward seconds of each function, runs interleaved round-robin so that load
    changes on a shared machine hit every implementation alike."""
    x = logits.detach().requires_grad_(True)
    times: list[list[float]] = [[] for _ in fns]
    for r in range(warmup + runs):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn(x, target).backward()
            dt = time.perf_counter() - t0
            x.grad = None
            if r >= warmup:
                times[k].append(dt)
    return [statistics.median(t) for t in times]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", type=int, nargs=4, default=[16, 4, 128, 128])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--with-kernel", action="store_true", help="also time the compiled private kernel class_sums"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n, c, h, w = args.shape
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(n, c, h, w, generator=g)
    target = torch.randint(0, c, (n, h, w), generator=g)

    # same value first (the eager composition is the plain Dice formula)
    a, b = losskit_dice(logits, target), eager_dice(logits, target)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    impls = [
        ("eager composition", eager_dice),
        ("losskit dice_loss", losskit_dice),
        ("F.cross_entropy", cross_entropy),
    ]
    if args.with_kernel:
        from losskit._kernels.overlap import class_sums

        def kernel_dice(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            tp, ps, gs = class_sums(x, t)
            return (1.0 - 2.0 * tp / (ps + gs).clamp_min(1e-7)).mean()

        t0 = time.perf_counter()
        kernel_dice(logits.detach().clone().requires_grad_(True), target).backward()
        print(f"_kernels.overlap.class_sums: first call (compilation) {time.perf_counter() - t0:.1f} s")
        impls.append(("_kernels.overlap.class_sums (compiled)", kernel_dice))
    medians = time_fwd_bwd([fn for _, fn in impls], logits, target, args.runs, args.warmup)
    rows = [
        (name, 1e3 * sec, saved_bytes(fn, logits, target) / 2**20) for (name, fn), sec in zip(impls, medians)
    ]
    base_ms, base_mb = rows[0][1], rows[0][2]
    print(
        f"Dice forward+backward, multiclass, class-index target, input {tuple(args.shape)} float32, CPU, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.runs} interleaved runs "
        f"after {args.warmup} warm-up\n"
    )
    print("| implementation | time (ms) | time vs eager | saved for backward (MiB) | memory vs eager |")
    print("|---|---|---|---|---|")
    for name, ms, mb in rows:
        print(f"| {name} | {ms:.2f} | {ms / base_ms:.2f}x | {mb:.2f} | {mb / base_mb:.2f}x |")


if __name__ == "__main__":
    main()
