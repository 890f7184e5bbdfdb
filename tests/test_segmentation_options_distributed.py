"""gather_distributed with the new overlap options and MCC: 2 gloo ranks on an uneven split of the batch.

With DDP's gradient averaging (1/W), every rank's input gradient must be the gradient of the loss of
the concatenated batch; here the gradient a rank computes, divided by W, is compared with one process
on the whole batch (rows 0-2 on rank 0, row 3 on rank 1).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

import losskit.functional as LF
from ddp_utils import run_distributed

ROWS = [slice(0, 3), slice(3, 4)]


def _batch():
    g = torch.Generator().manual_seed(123)
    x = torch.randn(4, 1, 5, 5, generator=g, dtype=torch.float64) * 2
    t = (torch.rand(4, 5, 5, generator=g) < 0.3).long()
    xm = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64) * 2
    tm = torch.randint(0, 3, (4, 5, 5), generator=g)
    m = torch.rand(4, 5, 5, generator=g) < 0.7
    return x, t, xm, tm, m


def _losses():
    return {
        "mcc_batch": lambda x, t, xm, tm, m: LF.mcc_loss(x, t, batch_dice=True, gather_distributed=True),
        "mcc_mean": lambda x, t, xm, tm, m: LF.mcc_loss(x, t, mask=m, gather_distributed=True),
        "dice_micro_batch_mask": lambda x, t, xm, tm, m: LF.dice_loss(
            xm,
            tm,
            average="micro",
            batch_dice=True,
            mask=m,
            smooth_nr=1e-5,
            smooth_dr=1e-5,
            gather_distributed=True,
        ),
        "tversky_micro_mean": lambda x, t, xm, tm, m: LF.tversky_loss(
            xm, tm, alpha=0.3, beta=0.7, average="micro", mask=m, gather_distributed=True
        ),
    }


def _run(rows: slice) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    x, t, xm, tm, m = _batch()
    out = {}
    for name, fn in _losses().items():
        a = x[rows].clone().requires_grad_(True)
        b = xm[rows].clone().requires_grad_(True)
        loss = fn(a, t[rows], b, tm[rows], m[rows])
        ga, gb = torch.autograd.grad(loss, (a, b), allow_unused=True)
        ga = torch.zeros_like(a) if ga is None else ga
        gb = torch.zeros_like(b) if gb is None else gb
        out[name] = (loss.detach(), ga, gb)
    return out


def _worker(rank: int, world: int) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    assert dist.get_world_size() == world
    return _run(ROWS[rank])


def test_gather_distributed_options_equal_one_process():
    results = run_distributed(_worker, world_size=2)
    ref = _run(slice(0, 4))
    for name in _losses():
        ref_loss, ref_ga, ref_gb = ref[name]
        grads_a = torch.cat([r[name][1] for r in results]) / 2  # DDP divides by W
        grads_b = torch.cat([r[name][2] for r in results]) / 2
        torch.testing.assert_close(grads_a, ref_ga, msg=lambda m, n=name: f"{n}: {m}")
        torch.testing.assert_close(grads_b, ref_gb, msg=lambda m, n=name: f"{n}: {m}")
        if "batch" in name:  # batch sums: every rank computes the global loss itself
            for r in results:
                torch.testing.assert_close(r[name][0], ref_loss)
        else:  # global mean: the local parts, each over the global count / W, average to it
            torch.testing.assert_close(sum(r[name][0] for r in results) / 2, ref_loss)
