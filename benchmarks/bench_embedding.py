"""Embedding losses forward+backward: losskit vs the eager code a user would write.

Cases (float32, CPU, default B=1024, D=128, 8 images per class, i.e. B/8 classes):

* batch-hard triplet (euclidean, margin 0.2) vs ``torch.cdist`` + masked max/min;
* NT-Xent (tau 0.5) vs the SimCLR recipe (similarity matrix, ``-inf`` diagonal, ``F.cross_entropy``);
* SupCon (tau 0.1) vs the reference code of Khosla et al. (masked softmax with ``exp``/``log``);
* batch-all triplet vs the ``(B, B, B)`` broadcast, at several B to show how memory scales.

Time: median of ``--runs`` interleaved forward+backward runs after warm-up (``losskit.bench``'s
timer). Memory: bytes of the storages saved for backward (``saved_tensors_hooks``, the input
excluded) and the peak RSS growth of one forward+backward in a fresh subprocess. Both
implementations are checked to give the same value first. The machine may be shared: compare ratios.

    python benchmarks/bench_embedding.py [--batch 1024] [--dim 128] [--threads 2] [--runs 10]
        [--scaling 128 256 512 1024] [--eager-max-b3 512] [--no-peak]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

import losskit.functional as LF
from losskit.bench.measure import held_bytes, time_variants

MARGIN, TAU_NT, TAU_SC = 0.2, 0.5, 0.1


# ----------------------------------------------------------------------------- eager baselines


def eager_batch_hard(emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    dist = torch.cdist(emb, emb)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool)
    pos, neg = same & ~eye, ~same
    hardest_pos = (dist * pos).max(dim=1).values
    hardest_neg = (dist + dist.max().detach() * (~neg)).min(dim=1).values
    valid = pos.any(1) & neg.any(1)
    return F.relu(hardest_pos - hardest_neg + MARGIN)[valid].mean()


def eager_batch_all(emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    dist = torch.cdist(emb, emb)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool)
    valid = (same & ~eye)[:, :, None] & (~same)[:, None, :]
    loss = F.relu(dist[:, :, None] - dist[:, None, :] + MARGIN) * valid
    return loss.sum() / (loss > 0).sum().clamp_min(1)


def eager_nt_xent(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = (z @ z.T) / TAU_NT
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(sim, target)


def eager_supcon(emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    z = F.normalize(emb, dim=1)
    logits = z @ z.T / TAU_SC
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    logits_mask = 1.0 - torch.eye(len(labels))
    mask = (labels[:, None] == labels[None, :]).float() * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    n_pos = mask.sum(1)
    mean_log_prob_pos = (mask * log_prob).sum(1) / n_pos.clamp_min(1)
    return -mean_log_prob_pos[n_pos > 0].mean()


CASES: dict[str, tuple[Callable, Callable, bool]] = {
    # name: (losskit, eager, takes two views)
    "triplet batch_hard": (lambda e, y: LF.triplet_loss(e, y, MARGIN, "batch_hard"), eager_batch_hard, False),
    "NT-Xent": (lambda a, b: LF.nt_xent_loss(a, b, TAU_NT), eager_nt_xent, True),
    "SupCon": (lambda e, y: LF.supcon_loss(e, y, TAU_SC), eager_supcon, False),
    "triplet batch_all": (lambda e, y: LF.triplet_loss(e, y, MARGIN, "batch_all"), eager_batch_all, False),
}
SOFT_BATCH_ALL = lambda e, y: LF.triplet_loss(e, y, MARGIN, "batch_all", soft_margin=True)  # noqa: E731


def make_args(case: str, b: int, d: int) -> tuple[list[torch.Tensor], list[int]]:
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(b, d, generator=g)
    if CASES[case][2]:
        return [emb, emb + 0.3 * torch.randn(b, d, generator=g)], [0, 1]
    return [emb, torch.arange(b) % max(b // 8, 2)], [0]


# ----------------------------------------------------------------------------- peak RSS (subprocess)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{field}:\s+(\d+)\s+kB", f.read(), re.M)
    return int(m.group(1)) if m else -1


def child(case: str, impl: str, b: int, d: int, threads: int) -> None:
    torch.set_num_threads(threads)
    fn = CASES[case][0 if impl == "losskit" else 1]
    args, grad_idx = make_args(case, b, d)
    for i in grad_idx:
        args[i].requires_grad_(True)
    fn(*args).backward()  # warm-up
    for i in grad_idx:
        args[i].grad = None
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kb("VmRSS")
    fn(*args).backward()
    print("PEAK " + json.dumps(max(_status_kb("VmHWM") - before, 0) * 1024))


def peak_growth(case: str, impl: str, b: int, d: int, threads: int) -> int | None:
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    cmd = [sys.executable, __file__, "--child", case, impl, str(b), str(d), str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("PEAK "):
            return int(json.loads(line[5:]))
    return None


# ----------------------------------------------------------------------------- main


def mib(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**20:.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--scaling", type=int, nargs="*", default=[128, 256, 512, 1024])
    parser.add_argument(
        "--eager-max-b3", type=int, default=512, help="largest B for the (B, B, B) eager batch_all"
    )
    parser.add_argument("--no-peak", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        case, impl, b, d, threads = args.child
        child(case, impl, int(b), int(d), int(threads))
        return
    torch.set_num_threads(args.threads)
    b, d = args.batch, args.dim
    print(
        f"Embedding losses, forward+backward, float32 CPU, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, B/8 classes, median of {args.runs} interleaved runs after "
        f"{args.warmup} warm-up; saved = bytes saved for backward (input excluded), peak = peak RSS "
        f"growth of one forward+backward in a fresh process\n"
    )
    print(
        "| loss | B | D | threads | torch | losskit ms | eager ms | time eager/losskit | losskit saved MiB "
        "| eager saved MiB | losskit peak MiB | eager peak MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    tv, th = torch.__version__, torch.get_num_threads()
    for case in ("triplet batch_hard", "NT-Xent", "SupCon"):
        ours, eager, _ = CASES[case]
        inputs, grad_idx = make_args(case, b, d)
        torch.testing.assert_close(ours(*inputs), eager(*inputs), rtol=1e-4, atol=1e-5)
        t = time_variants(
            {"losskit": ours, "eager": eager}, inputs, grad_idx, repeat=args.runs, warmup=args.warmup
        )
        s_ours, s_eager = held_bytes(ours, inputs, grad_idx), held_bytes(eager, inputs, grad_idx)
        p_ours = p_eager = None
        if not args.no_peak:
            p_ours = peak_growth(case, "losskit", b, d, args.threads)
            p_eager = peak_growth(case, "eager", b, d, args.threads)
        ms_o, ms_e = t["losskit"]["total"], t["eager"]["total"]
        print(
            f"| {case} | {b} | {d} | {th} | {tv} | {ms_o:.1f} | {ms_e:.1f} | {ms_e / ms_o:.2f}x | {mib(s_ours)} | "
            f"{mib(s_eager)} | {mib(p_ours)} | {mib(p_eager)} |"
        )

    print(
        f"\nbatch_all triplet scaling (D={d}, {th} threads, torch {tv}): losskit keeps (B, B) coefficients "
        "(hard margin: sorted distances; soft margin: triplets chunked under no_grad), eager builds (B, B, B)\n"
    )
    print(
        "| B | losskit ms | eager ms | losskit saved MiB | saved / B^2 (bytes) | soft_margin saved MiB "
        "| eager saved MiB | eager saved / B^3 (bytes) | losskit peak MiB | eager peak MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    case = "triplet batch_all"
    ours, eager, _ = CASES[case]
    for bb in args.scaling:
        inputs, grad_idx = make_args(case, bb, d)
        with_eager = bb <= args.eager_max_b3
        fns = {"losskit": ours, **({"eager": eager} if with_eager else {})}
        if with_eager:
            torch.testing.assert_close(ours(*inputs), eager(*inputs), rtol=1e-4, atol=1e-5)
        runs = args.runs
        t = time_variants(fns, inputs, grad_idx, repeat=runs, warmup=min(args.warmup, 1))
        s_ours = held_bytes(ours, inputs, grad_idx)
        s_soft = held_bytes(SOFT_BATCH_ALL, inputs, grad_idx)
        s_eager = held_bytes(eager, inputs, grad_idx) if with_eager else None
        per_b3 = "-" if s_eager is None else f"{s_eager / bb**3:.1f}"
        p_ours = p_eager = None
        if not args.no_peak:
            p_ours = peak_growth(case, "losskit", bb, d, args.threads)
            if with_eager:
                p_eager = peak_growth(case, "eager", bb, d, args.threads)
        eager_ms = (
            f"{t['eager']['total']:.1f}"
            if with_eager
            else f"skipped (B^3 = {bb**3 * 4 / 2**30:.0f} GiB/tensor)"
        )
        print(
            f"| {bb} | {t['losskit']['total']:.1f} | {eager_ms} | {mib(s_ours)} | {s_ours / bb**2:.1f} | "
            f"{mib(s_soft)} | {mib(s_eager)} | {per_b3} | {mib(p_ours)} | {mib(p_eager)} |"
        )


if __name__ == "__main__":
    main()
