"""Fused LM-head losses under FSDP2 (``fully_shard``) and under DDP with ``no_sync`` accumulation.

Two real gloo CPU ranks, different data per rank, float64, plain SGD. The reference is the same
model trained in this process on the concatenated batch with the same fused loss on the full head.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

import losskit
import losskit.distributed as D
from ddp_utils import run_distributed
from losskit.vocab_parallel import unsharded_head

W = 2
STEPS = 3
LR = 0.5
DT = torch.float64
VOCAB, HID = 11, 6
TOL = {"rtol": 1e-9, "atol": 1e-12}


class TinyLM(nn.Module):
    """Embedding + linear; ``forward`` returns hidden states, the head is read by the fused loss."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HID)
        self.proj = nn.Linear(HID, HID)
        self.lm_head = nn.Linear(HID, VOCAB, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(self.embed(ids)))


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (4, 5), labels (4, 5)); rows 0-1 (rank 0) have 9 valid labels, rows 2-3 (rank 1) 3."""
    g = torch.Generator().manual_seed(500 + step)
    ids = torch.randint(0, VOCAB, (4, 5), generator=g)
    labels = torch.randint(0, VOCAB, (4, 5), generator=g)
    valid = torch.zeros(4, 5, dtype=torch.bool)
    valid[0] = True
    valid[1, :4] = True
    valid[2, :2] = True
    valid[3, 0] = True
    return ids, labels.masked_fill(~valid, -100)


def _model() -> TinyLM:
    torch.manual_seed(0)
    return TinyLM().to(DT)


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name.replace("module.", "")] = full.detach().clone()
    return out


def _reference() -> dict[str, torch.Tensor]:
    """One process, the whole batch, token mean over all valid labels."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for step in range(STEPS):
        ids, labels = batch(step)
        opt.zero_grad()
        losskit.linear_cross_entropy(model(ids), model.lm_head.weight, labels).backward()
        opt.step()
    return _params(model)


def _fsdp_worker(rank: int, world: int) -> dict[str, Any]:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    model = _model()
    fully_shard(model.lm_head)
    fully_shard(model)
    assert isinstance(model.lm_head.weight, DTensor)  # a shard: unusable by the fused loss as is
    local_rows = model.lm_head.weight.to_local().shape[0]
    try:  # the sharded parameter itself is refused with a pointer to unsharded_head
        losskit.linear_cross_entropy(torch.zeros(3, HID, dtype=DT), model.lm_head.weight, torch.zeros(3).long())
        dtensor_error = ""
    except losskit.LossTypeError as err:
        dtensor_error = str(err)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    full_shapes = []
    for step in range(STEPS):
        ids, labels = (t[2 * rank : 2 * rank + 2] for t in batch(step))
        opt.zero_grad()
        hidden = model(ids)
        with unsharded_head(model.lm_head) as weight:
            full_shapes.append(tuple(weight.shape))
            loss = losskit.linear_cross_entropy(
                hidden, weight, labels, normalizer=D.ddp_normalizer(labels != -100)
            )
        loss.backward()
        opt.step()
    with torch.no_grad(), unsharded_head(model.lm_head) as weight:  # no grad: resharded on exit
        eval_shape = tuple(weight.shape)
    return {
        "params": _params(model),
        "local_rows": local_rows,
        "full_shapes": full_shapes,
        "eval_shape": eval_shape,
        "resharded": isinstance(model.lm_head.weight, DTensor),
        "dtensor_error": dtensor_error,
    }


def test_fsdp2_head_via_unsharded_head_matches_single_process():
    results = run_distributed(_fsdp_worker)
    ref = _reference()
    assert sorted(r["local_rows"] for r in results) == [5, 6]  # 11 rows over 2 ranks
    for r in results:
        assert r["full_shapes"] == [(VOCAB, HID)] * STEPS and r["eval_shape"] == (VOCAB, HID)
        assert r["resharded"]
        assert "weight is a DTensor" in r["dtensor_error"] and "unsharded_head" in r["dtensor_error"]
        for name, p in ref.items():
            torch.testing.assert_close(r["params"][name], p, **TOL, msg=lambda m, n=name: f"{n}: {m}")


def test_unsharded_head_without_fsdp_is_the_weight():
    model = _model()
    with unsharded_head(model.lm_head) as weight:
        assert weight is model.lm_head.weight


# ---------------------------------------------------------------------------- DDP + no_sync


def micro_batches(step: int, rank: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's 2 micro-batches (one sequence each); all 4 for the single-process reference."""
    ids, labels = batch(step)
    rows = range(4) if rank is None else range(2 * rank, 2 * rank + 2)
    return [(ids[k : k + 1], labels[k : k + 1]) for k in rows]


def _ddp_worker(rank: int, world: int) -> dict[str, Any]:
    model = nn.parallel.DistributedDataParallel(_model())
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for step in range(STEPS):
        opt.zero_grad()
        micro = micro_batches(step, rank)
        norm = D.ddp_normalizer([labels != -100 for _, labels in micro])  # global tokens / W
        for k, (ids, labels) in enumerate(micro):
            sync = contextlib.nullcontext() if k == len(micro) - 1 else model.no_sync()
            with sync:
                hidden = model(ids)
                loss = losskit.linear_cross_entropy(
                    hidden, model.module.lm_head.weight, labels, normalizer=norm
                )
                loss.backward()
        opt.step()
    return {"params": _params(model)}


def test_ddp_no_sync_accumulation_matches_single_process():
    results = run_distributed(_ddp_worker)
    ref = _reference()
    for r in results:
        for name, p in ref.items():
            torch.testing.assert_close(r["params"][name], p, **TOL, msg=lambda m, n=name: f"{n}: {m}")


# ---------------------------------------------------------------------------- the recipe page

PAGE = Path(__file__).resolve().parents[1] / "docs" / "distributed-lm-head.md"


def _exec_blocks(rank: int, world: int, blocks: list[str]) -> int:
    for i, block in enumerate(blocks):
        exec(compile(block, f"{PAGE.name}[python block {i}]", "exec"), {"__name__": f"docs_block_{i}"})
    return len(blocks)


def test_recipe_page_blocks_run_on_two_ranks():
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 3
    assert run_distributed(_exec_blocks, blocks) == [3, 3]
