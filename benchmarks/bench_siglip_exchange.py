"""SigLIP under DDP: one all-gather of the text features vs big_vision's ring of neighbour swaps.

Both schemes give the same loss and gradients (checked here); this script measures, on 2 gloo ranks on
CPU (1 thread each), the forward+backward time of one rank's local loss and the bytes it keeps for
backward (``losskit.bench.measure.held_bytes``: saved tensors and custom-node tensors, inputs
excluded):

* ``gather``: ``losskit.functional.siglip_loss(..., gather_distributed=True)`` (one all-gather with
  gradient, then this rank's images against every text; ``--chunk`` adds the recomputing kernel);
* ``ring``: the text features travel round the ring one hop per step (``W - 1`` point-to-point
  exchanges whose backward sends the gradient back), one block per hop, as open_clip's
  ``SigLipLoss(bidir=False)``.

    python benchmarks/bench_siglip_exchange.py               # B = 1024 per rank, D = 512, 10 runs
    python benchmarks/bench_siglip_exchange.py --batch 256 --runs 3
"""

from __future__ import annotations

import argparse
import datetime
import math
import socket
import statistics
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import losskit.functional as LF
from losskit.bench.measure import held_bytes


class _Exchange(torch.autograd.Function):
    """Send ``x`` to ``to``, receive the same shape from ``frm``; backward sends the gradient back."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, to: int, frm: int) -> torch.Tensor:
        ctx.to, ctx.frm = to, frm
        out = torch.empty_like(x)
        ops = [dist.P2POp(dist.isend, x.contiguous(), to), dist.P2POp(dist.irecv, out, frm)]
        for req in dist.batch_isend_irecv(ops):
            req.wait()
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        out = torch.empty_like(grad)
        ops = [dist.P2POp(dist.isend, grad.contiguous(), ctx.frm), dist.P2POp(dist.irecv, out, ctx.to)]
        for req in dist.batch_isend_irecv(ops):
            req.wait()
        return out, None, None


def ring_siglip(img: torch.Tensor, txt: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor):
    """Local SigLIP loss with a ring exchange (open_clip's unidirectional scheme), divided by B_local."""
    rank, world = dist.get_rank(), dist.get_world_size()
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    scale = log_scale.exp().clamp(max=100.0)
    n = img.shape[0]
    logits = scale * img @ txt.T + bias
    labels = 2 * torch.eye(n, dtype=img.dtype) - 1
    loss = -F.logsigmoid(labels * logits).sum()
    cur = txt
    for _ in range(world - 1):
        cur = _Exchange.apply(cur, (rank + 1) % world, (rank - 1) % world)
        loss = loss + F.softplus(scale * img @ cur.T + bias).sum()  # negatives only
    return loss / n


def _time(variants: dict[str, Any], args: tuple[torch.Tensor, ...], runs: int) -> dict[str, float]:
    """Median fwd+bwd milliseconds; every round runs each variant once (interleaved, so load hits all)."""
    leaves = [a.detach().clone().requires_grad_(True) for a in args]
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(runs + 2):
        for name, fn in variants.items():
            dist.barrier()
            t0 = time.perf_counter()
            fn(*leaves).backward()
            dist.barrier()
            if i >= 2:
                times[name].append((time.perf_counter() - t0) * 1e3)
            for leaf in leaves:
                leaf.grad = None
    return {name: statistics.median(v) for name, v in times.items()}


def _worker(rank: int, world: int, port: int, opts: dict[str, Any], queue: Any) -> None:
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, is_master=rank == 0, timeout=datetime.timedelta(seconds=60))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    g = torch.Generator().manual_seed(rank)
    b, d = opts["batch"], opts["dim"]
    img, txt = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    ls, bias = torch.tensor(math.log(10.0)), torch.tensor(-10.0)
    args = (img, txt, ls, bias)

    def gather(i, t, s, c):
        return LF.siglip_loss(i, t, s, c, gather_distributed=True)

    def gather_chunked(i, t, s, c):
        return LF.siglip_loss(i, t, s, c, gather_distributed=True, chunk_size=opts["chunk"])

    variants = {"gather": gather, "gather + chunk_size": gather_chunked, "ring": ring_siglip}
    # same value and gradients (the exchange is exact in both schemes)
    ref = [a.clone().requires_grad_(True) for a in args]
    gather(*ref).backward()
    for name, fn in variants.items():
        leaves = [a.clone().requires_grad_(True) for a in args]
        loss = fn(*leaves)
        loss.backward()
        for leaf, r in zip(leaves, ref):
            torch.testing.assert_close(leaf.grad, r.grad, rtol=1e-4, atol=1e-5, msg=f"{name} gradient")
    ms = _time(variants, args, opts["runs"])
    rows = {name: (ms[name], held_bytes(fn, args, (0, 1, 2, 3))) for name, fn in variants.items()}
    if rank == 0:
        queue.put(rows)
    dist.barrier()
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=1024, help="rows per rank")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--runs", type=int, default=10)
    opts = vars(p.parse_args(argv))
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=_worker, args=(r, 2, port, opts, queue)) for r in range(2)]
    for proc in procs:
        proc.start()
    rows = queue.get(timeout=900)
    for proc in procs:
        proc.join()
    print(
        f"SigLIP local loss, 2 gloo ranks x 1 thread, B = {opts['batch']} per rank, D = {opts['dim']}, "
        f"float32, torch {torch.__version__}, median of {opts['runs']} fwd+bwd"
    )
    print(f"{'scheme':<22} {'ms':>9} {'held MiB':>9}")
    for name, (ms, held) in rows.items():
        print(f"{name:<22} {ms:9.1f} {held / 2**20:9.2f}")


if __name__ == "__main__":
    sys.exit(main())
