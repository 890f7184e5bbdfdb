"""Policy-gradient losses: one optimisation step is the same whatever the batch layout.

A tiny float64 policy (a linear layer over token features, log-softmax over a 6-token vocabulary)
takes one SGD step on a batch of 8 completions of uneven lengths, processed

(a) at once (the loss type's own definition, no normaliser),
(b) as 4 uneven gradient-accumulation micro-batches, each padded only to its own longest completion,
(c) on 2 gloo DDP ranks holding different numbers of completions, 2 micro-batches each,

with ``normalizer=policy_gradient_normalizer(...)`` computed once per step in (b) and (c). The
parameters after the step must agree to float64 precision for every loss type that has a global
form (grpo, dr_grpo, dapo, gspo, cispo); the per-micro-batch-mean recipe gives a visibly different
step, and ``bnpo`` (the token mean of each call by definition) is shown to depend on the layout.
Old log-probs are ``-inf`` and reference log-probs NaN on the padding, as trainers leave them.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import losskit.distributed as D
from ddp_utils import run_distributed
from losskit.rl import group_advantages, policy_gradient_loss, policy_gradient_normalizer

DT = torch.float64
H, V = 4, 6
LENGTHS = [5, 1, 7, 3, 2, 1, 2, 1]  # valid completion tokens per sequence
B, T = len(LENGTHS), max(LENGTHS)
MAX_LEN = 8  # the generation's maximum completion length (dr_grpo's constant)
LR = 0.5
GLOBAL_TYPES = ["grpo", "dr_grpo", "dapo", "gspo", "cispo"]
CONFIG: dict[str, dict[str, Any]] = {
    "grpo": {"beta": 0.05, "entropy_coef": 0.01},
    "dr_grpo": {"beta": 0.05, "max_len": MAX_LEN},
    "dapo": {"epsilon_high": 0.28, "delta": 2.0, "entropy_coef": 0.01},
    "bnpo": {"beta": 0.05},
    "gspo": {"epsilon": 0.05, "epsilon_high": 0.08, "beta": 0.05},
    "cispo": {"epsilon_high": 0.3, "beta": 0.05},
}
# (b): micro-batches of 1, 3, 2 and 2 completions. (c): rank 0 holds 3 completions (13 tokens),
# rank 1 holds 5 (9 tokens), each in 2 micro-batches.
MICRO = [[0], [1, 2, 3], [4, 5], [6, 7]]
RANK_MICRO = [[[0], [1, 2]], [[3, 4], [5, 6, 7]]]


def _policy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(H, V).to(DT)


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, H, generator=g, dtype=DT)
    y = torch.randint(0, V, (B, T), generator=g)
    mask = torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]
    with torch.no_grad():
        logps, _ = _log_probs(_policy(), x, y)
    old = (logps + 0.4 * torch.randn(B, T, generator=g, dtype=DT)).masked_fill(~mask, float("-inf"))
    ref = (logps + 0.2 * torch.randn(B, T, generator=g, dtype=DT)).masked_fill(~mask, float("nan"))
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.0, 1.0, 1.0], dtype=DT)
    return {"x": x, "y": y, "mask": mask, "old": old, "ref": ref, "adv": group_advantages(rewards, 4)}


def _log_probs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logp_all = torch.log_softmax(model(x), -1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp_all.gather(-1, y[..., None]).squeeze(-1), entropy


def _slice(batch: dict[str, torch.Tensor], rows: list[int]) -> dict[str, torch.Tensor]:
    """The rows of one micro-batch, padded only to its own longest completion."""
    width = max(LENGTHS[i] for i in rows)
    idx = torch.tensor(rows)
    return {k: (v[idx] if k == "adv" else v[idx, :width]) for k, v in batch.items()}


def _loss(model: nn.Module, mb: dict[str, torch.Tensor], loss_type: str, normalizer: Any) -> torch.Tensor:
    logps, entropy = _log_probs(model, mb["x"], mb["y"])
    return policy_gradient_loss(
        logps,
        mb["old"],
        mb["adv"],
        mb["mask"],
        ref_logps=mb["ref"],
        entropy=entropy,
        loss_type=loss_type,
        normalizer=normalizer,
        **CONFIG[loss_type],
    )


def _step(loss_type: str, micro: list[list[int]] | None, recipe: str) -> list[torch.Tensor]:
    """Parameters after one SGD step; ``micro=None`` is the whole batch in one call (no normaliser)."""
    batch = _batch()
    model: nn.Module = _policy()
    if D.is_initialized():
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    if micro is None:
        norm = None
        if recipe == "global":  # the step normaliser of one call equals the loss type's own denominator
            norm = policy_gradient_normalizer(batch["mask"], loss_type, max_len=MAX_LEN)
        _loss(model, batch, loss_type, norm).backward()
    else:
        mbs = [_slice(batch, rows) for rows in micro]
        if recipe == "global":  # once per step, before any micro-batch's forward
            norm = policy_gradient_normalizer([mb["mask"] for mb in mbs], loss_type, max_len=MAX_LEN)
        for k, mb in enumerate(mbs):
            last = k == len(mbs) - 1
            sync = contextlib.nullcontext() if last or not D.is_initialized() else model.no_sync()
            with sync:
                if recipe == "global":
                    loss = _loss(model, mb, loss_type, norm)
                else:  # the common recipe: each micro-batch's own loss, divided by the steps
                    loss = _loss(model, mb, loss_type, None) / len(mbs)
                loss.backward()
    opt.step()
    return [p.detach().clone() for p in model.parameters()]


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def _assert_same(got: list[torch.Tensor], ref: list[torch.Tensor]) -> None:
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-13)


def _ddp_worker(rank: int, world: int, loss_types: list[str]) -> dict[str, Any]:
    torch.set_default_dtype(torch.float32)
    out: dict[str, Any] = {}
    for lt in loss_types:
        out[lt] = {"global": _step(lt, RANK_MICRO[rank], "global")} if lt in GLOBAL_TYPES else {}
        if lt in ("grpo", "dapo", "bnpo"):
            out[lt]["naive"] = _step(lt, RANK_MICRO[rank], "naive")
    return out


@pytest.fixture(scope="module")
def ddp_results() -> list[dict[str, Any]]:
    return run_distributed(_ddp_worker, [*GLOBAL_TYPES, "bnpo"])


def test_batch_has_uneven_micro_batches_and_ranks():
    tokens = [sum(LENGTHS[i] for i in rows) for rows in MICRO]
    assert tokens == [5, 11, 3, 3] and [len(r) for r in MICRO] == [1, 3, 2, 2]
    per_rank = [sum(LENGTHS[i] for mb in r for i in mb) for r in RANK_MICRO]
    assert per_rank == [13, 9] and [sum(len(mb) for mb in r) for r in RANK_MICRO] == [3, 5]
    assert sorted(i for r in RANK_MICRO for mb in r for i in mb) == list(range(B))
    batch = _batch()
    assert torch.isinf(batch["old"][~batch["mask"]]).all() and torch.isnan(batch["ref"][~batch["mask"]]).all()
    # some tokens are clipped: the test exercises the clip branches, not only the linear region
    ratio = (_log_probs(_policy(), batch["x"], batch["y"])[0] - batch["old"]).exp()[batch["mask"]]
    assert ((ratio > 1.28) | (ratio < 0.8)).any() and ((ratio < 1.2) & (ratio > 0.8)).any()


@pytest.mark.parametrize("loss_type", GLOBAL_TYPES)
def test_step_normalizer_of_one_batch_is_the_loss_types_own_denominator(loss_type):
    _assert_same(_step(loss_type, None, "global"), _step(loss_type, None, "definition"))


@pytest.mark.parametrize("loss_type", GLOBAL_TYPES)
def test_accumulation_over_uneven_micro_batches_equals_one_batch(loss_type):
    ref = _step(loss_type, None, "definition")
    got = _step(loss_type, MICRO, "global")
    _assert_same(got, ref)
    assert _max_diff(got, _policy_params()) > 1e-3  # the step moved the parameters


def _policy_params() -> list[torch.Tensor]:
    return [p.detach().clone() for p in _policy().parameters()]


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_per_micro_batch_mean_recipe_is_not_the_full_batch_step(loss_type):
    ref = _step(loss_type, None, "definition")
    naive = _step(loss_type, MICRO, "naive")
    step = _max_diff(ref, _policy_params())
    assert _max_diff(naive, ref) > 0.05 * step


def test_bnpo_depends_on_the_layout_by_definition():
    """bnpo is each call's own token mean: one batch equals dapo, micro-batches do not."""
    _assert_same(_step("bnpo", None, "definition"), _step_as("dapo", "bnpo"))
    ref = _step("bnpo", None, "definition")
    assert _max_diff(_step("bnpo", MICRO, "naive"), ref) > 0.05 * _max_diff(ref, _policy_params())


def _step_as(loss_type: str, config_of: str) -> list[torch.Tensor]:
    saved = CONFIG[loss_type]
    CONFIG[loss_type] = CONFIG[config_of]
    try:
        return _step(loss_type, None, "definition")
    finally:
        CONFIG[loss_type] = saved


@pytest.mark.parametrize("loss_type", GLOBAL_TYPES)
def test_ddp_two_ranks_two_micro_batches_equal_one_batch(ddp_results, loss_type):
    ref = _step(loss_type, None, "definition")
    for rank in range(2):
        _assert_same(ddp_results[rank][loss_type]["global"], ref)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "bnpo"])
def test_ddp_per_rank_mean_recipe_differs(ddp_results, loss_type):
    ref = _step(loss_type, None, "definition")
    step = _max_diff(ref, _policy_params())
    assert _max_diff(ddp_results[0][loss_type]["naive"], ref) > 0.05 * step


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 6), min_size=1, max_size=7),
    cuts=st.lists(st.integers(1, 6), max_size=3),
    loss_type=st.sampled_from(GLOBAL_TYPES),
    seed=st.integers(0, 1000),
)
def test_any_split_sums_to_the_full_batch_loss(lengths, cuts, loss_type, seed):
    """Value and gradient w.r.t. the log-probs: sum over micro-batches == one call, for any split."""
    n, width = len(lengths), max(max(lengths), 1)
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    logps = (-torch.rand(n, width, generator=g, dtype=DT) * 2).requires_grad_(True)
    old = (logps.detach() + 0.3 * torch.randn(n, width, generator=g, dtype=DT)).masked_fill(~mask, -math.inf)
    adv = torch.randn(n, generator=g, dtype=DT)
    kw = {"loss_type": loss_type, "max_len": 6, "epsilon_high": 0.28}
    full = policy_gradient_loss(logps, old, adv, mask, **kw)
    (want,) = torch.autograd.grad(full, logps)
    bounds = sorted({0, n, *(c for c in cuts if c < n)})
    parts = [list(range(a, b)) for a, b in itertools.pairwise(bounds)]
    widths = [max([lengths[i] for i in rows] + [1]) for rows in parts]
    masks = [mask[rows[0] : rows[-1] + 1, :w] for rows, w in zip(parts, widths)]
    norm = policy_gradient_normalizer(masks, loss_type, max_len=6)
    total = sum(
        policy_gradient_loss(
            logps[rows[0] : rows[-1] + 1, :w], old[rows[0] : rows[-1] + 1, :w], adv[rows[0] : rows[-1] + 1], m,
            normalizer=norm, **kw,
        )
        for rows, w, m in zip(parts, widths, masks)
    )  # fmt: skip
    (got,) = torch.autograd.grad(total, logps)
    torch.testing.assert_close(total, full, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
