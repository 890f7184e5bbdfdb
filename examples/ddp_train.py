"""Train a tiny sequence model under DDP with a gathered contrastive loss and an exact token-mean loss.

    torchrun --standalone --nproc_per_node 2 examples/ddp_train.py           # 2 CPU processes (gloo)
    python examples/ddp_train.py                                             # one process, same result
    torchrun --standalone --nproc_per_node 2 examples/ddp_train.py --naive   # the usual mistakes

The model embeds token sequences of different lengths (padding is ignored, so the ranks hold
different numbers of valid tokens) and learns two things at once:

* a per-token tag, with cross-entropy averaged over the valid tokens of the *global* batch:
  ``cross_entropy_loss(..., normalizer=ddp_normalizer(valid))``;
* a sequence embedding, with NT-Xent (SimCLR) between two noisy views of each sequence, where each
  rank's anchors are compared against the views of *every* rank (``gather_candidates``, whose
  backward sends every rank's gradient back to the rank that owns the sample).

Each rank takes its slice of the same global batch, so the parameters after training are the same
(to float64 round-off) whether the script runs on 1, 2 or 4 processes: the printed checksum shows
it (``--naive`` shows what the usual per-rank mean and non-differentiable gather do instead). Real
code would shard the data with a ``DistributedSampler``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import losskit.functional as LF
from losskit.distributed import ddp_normalizer, gather_candidates, global_sum, rank, world_size

VOCAB, TAGS, DIM, MAX_LEN, GLOBAL_BATCH = 16, 5, 16, 12, 8
TEMPERATURE = 0.2


class TinyEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.mix = nn.Conv1d(DIM, DIM, kernel_size=3, padding=1)
        self.tagger = nn.Linear(DIM, TAGS)
        self.project = nn.Linear(DIM, 8)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.mix(self.embed(tokens).transpose(1, 2)).transpose(1, 2))  # (B, T, D)
        w = valid.unsqueeze(-1).to(h.dtype)
        pooled = (h * w).sum(1) / w.sum(1).clamp_min(1.0)
        return self.tagger(h), self.project(pooled)


def global_batch(step: int) -> dict[str, torch.Tensor]:
    """Sequences of random lengths, their tags (-100 on padding) and two noisy views."""
    g = torch.Generator().manual_seed(1000 + step)
    lengths = torch.randint(2, MAX_LEN + 1, (GLOBAL_BATCH,), generator=g)
    valid = torch.arange(MAX_LEN).unsqueeze(0) < lengths.unsqueeze(1)
    tokens = torch.randint(0, VOCAB, (GLOBAL_BATCH, MAX_LEN), generator=g) * valid
    prev = torch.cat([torch.zeros_like(tokens[:, :1]), tokens[:, :-1]], dim=1)
    tags = ((tokens + prev) % TAGS).masked_fill(~valid, -100)
    views = []
    for _ in range(2):  # each view replaces ~20% of the tokens
        noise = torch.randint(0, VOCAB, tokens.shape, generator=g)
        swap = torch.rand(tokens.shape, generator=g) < 0.2
        views.append(torch.where(swap & valid, noise, tokens))
    return {"tokens": tokens, "valid": valid, "tags": tags, "view1": views[0], "view2": views[1]}


def naive_gather(z: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The common hand-written version: all_gather (no gradient), own slice put back. Wrong under DDP."""
    if world_size() == 1:
        return z, labels, 0
    zs, ls = (
        [torch.empty_like(z) for _ in range(world_size())],
        [torch.empty_like(labels) for _ in range(world_size())],
    )
    dist.all_gather(zs, z.detach())
    dist.all_gather(ls, labels)
    zs[rank()] = z
    return torch.cat(zs), torch.cat(ls), rank() * z.shape[0]


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, ids: torch.Tensor, naive: bool = False) -> torch.Tensor:
    """NT-Xent of this rank's 2n views (anchors) against the 2N views gathered from every rank."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    labels = torch.cat([ids, ids])
    candidates, cand_labels, offset = (naive_gather if naive else gather_candidates)(z, labels)
    n = z.shape[0]
    logits = z @ candidates.T / TEMPERATURE
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[torch.arange(n), offset + torch.arange(n)] = True
    logits = logits.masked_fill(self_mask, torch.finfo(logits.dtype).min)
    positive = (labels[:, None] == cand_labels[None, :]) & ~self_mask
    per_anchor = -torch.where(positive, logits.log_softmax(dim=1), 0.0).sum(1)
    if naive:
        return per_anchor.mean()
    # sum over local anchors / (global anchor count / W): exact under DDP even for uneven shards
    return per_anchor.sum() / ddp_normalizer(n)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--contrastive-weight", type=float, default=0.5)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--naive",
        action="store_true",
        help="per-rank token mean and a gather without gradient (the usual mistakes): the result then "
        "depends on the number of processes",
    )
    args = parser.parse_args(argv)

    started_here = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
        started_here = True
    try:
        return _train(args)
    finally:
        if started_here:
            dist.destroy_process_group()


def _train(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    W, r = world_size(), rank()
    if GLOBAL_BATCH % W:
        raise SystemExit(f"the global batch of {GLOBAL_BATCH} must split evenly over {W} ranks")
    model: nn.Module = TinyEncoder().double()
    if W > 1:
        model = nn.parallel.DistributedDataParallel(model)  # averages gradients over ranks
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    shard = slice(r * GLOBAL_BATCH // W, (r + 1) * GLOBAL_BATCH // W)
    say = (lambda *a: None) if args.quiet or r != 0 else print
    say(f"world_size={W} backend={dist.get_backend() if W > 1 else 'none'} torch={torch.__version__}")
    history: list[list[float]] = []
    last_print = 0
    for step in range(args.steps):
        b = {k: v[shard] for k, v in global_batch(step).items()}
        ids = torch.arange(GLOBAL_BATCH)[shard]
        n = ids.numel()
        # one forward for the sequences and both views (one DDP forward per backward)
        tag_logits, z = model(torch.cat([b["tokens"], b["view1"], b["view2"]]), torch.cat([b["valid"]] * 3))
        norm = None if args.naive else ddp_normalizer(b["valid"])  # global valid tokens / W
        token_loss = LF.cross_entropy_loss(tag_logits[:n].flatten(0, 1), b["tags"].flatten(), normalizer=norm)
        contrastive = nt_xent(z[n : 2 * n], z[2 * n :], ids, naive=args.naive)
        loss = token_loss + args.contrastive_weight * contrastive
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        # each rank's value is its share of the global mean; summing over ranks / W gives the mean
        logged = global_sum(torch.stack([token_loss, contrastive]).detach()) / W
        history.append(logged.tolist())
        if step == 0 or (step + 1) % max(args.steps // 5, 1) == 0 or step + 1 == args.steps:
            window = torch.tensor(history[last_print:])
            last_print = step + 1
            token_ce, contrast = window.mean(0).tolist()
            say(
                f"step {step + 1}/{args.steps}  mean since last line: token_ce={token_ce:.4f}  nt_xent={contrast:.4f}"
            )
    params = [p.detach().clone() for p in model.parameters()]
    checksum = float(sum(p.double().sum() for p in params))
    say(f"parameter checksum {checksum:.10f}")
    return {"world_size": W, "params": params, "losses": history, "checksum": checksum}


if __name__ == "__main__":
    main()
