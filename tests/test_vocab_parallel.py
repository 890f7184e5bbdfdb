"""losskit.vocab_parallel: the vocabulary-sharded cross-entropy on 2 real gloo ranks against one process.

Every rank holds the full hidden states and targets and a contiguous slice of the head's rows. The
reference is the float64 full-logit formula (plain tensor code, differentiated by autograd) and
:func:`losskit.language.linear_cross_entropy` on the whole head.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch

import losskit
import losskit.vocab_parallel as vp
from ddp_utils import run_distributed
from losskit import LossValueError
from losskit.vocab_parallel import (
    VocabParallelCrossEntropyLoss,
    vocab_parallel_cross_entropy,
    vocab_parallel_log_probs,
)

DT = torch.float64
H = 5
TOL = {"rtol": 1e-10, "atol": 1e-12}


def make_case(case: dict[str, Any], rank: int | None = None) -> dict[str, torch.Tensor]:
    """Full head (V, H), bias (V,), hidden, target and a cotangent for reduction='none'."""
    g = torch.Generator().manual_seed(case.get("seed", 0))
    v = sum(case["sizes"])
    shape = case.get("shape", (9,))
    hidden = torch.randn(*shape, H, generator=g, dtype=DT)
    weight = 2.0 * torch.randn(v, H, generator=g, dtype=DT)
    bias = torch.randn(v, generator=g, dtype=DT)
    lo, hi = case.get("targets", (0, v))
    target = torch.randint(lo, hi, shape, generator=g)
    if rank is not None and case.get("target_differs"):
        target.view(-1)[1] = rank
    if case.get("ignore", True):
        target.view(-1)[::4] = -100
    cot = torch.randn(shape, generator=g, dtype=DT)
    if "dtype" in case:  # inputs rounded to the half type; the reference keeps float64 arithmetic
        low = getattr(torch, case["dtype"])
        hidden, weight, bias = (t.to(low).to(DT) for t in (hidden, weight, bias))
    return {"hidden": hidden, "weight": weight, "bias": bias, "target": target, "cot": cot}


def ref_loss(case: dict[str, Any], d: dict[str, torch.Tensor]) -> torch.Tensor:
    """Plain float64 full-logit cross-entropy with label smoothing and z-loss."""
    eps, zl = case.get("label_smoothing", 0.0), case.get("z_loss", 0.0)
    h = d["hidden"].reshape(-1, H)
    s = h @ d["weight"].T + (d["bias"] if case.get("bias", True) else 0.0)
    t = d["target"].reshape(-1)
    valid = t != -100
    lse = torch.logsumexp(s, 1)
    s_t = s.gather(1, t.clamp_min(0).unsqueeze(1)).squeeze(1)
    tok = (1 - eps) * (lse - s_t) + eps * (lse - s.mean(1)) + zl * lse**2
    tok = torch.where(valid, tok, 0.0)
    if case.get("log_probs"):
        return (torch.where(valid, s_t - lse, 0.0).reshape(d["target"].shape) * d["cot"]).sum()
    red = case.get("reduction", "mean")
    if red == "none":
        return (tok.reshape(d["target"].shape) * d["cot"]).sum()
    if red == "sum":
        return tok.sum()
    return tok.sum() / case.get("normalizer", valid.sum())


def reference(case: dict[str, Any]) -> dict[str, torch.Tensor]:
    d = make_case(case)
    leaves = {k: d[k].clone().requires_grad_() for k in ("hidden", "weight", "bias")}
    loss = ref_loss(case, {**d, **leaves})
    loss.backward()
    return {"loss": loss.detach(), **{k: v.grad for k, v in leaves.items()}}


def _slices(case: dict[str, Any]) -> list[slice]:
    starts = case.get("starts")
    sizes = case["sizes"]
    cum = [sum(sizes[:i]) for i in range(len(sizes))]
    starts = cum if starts is None else [c if s is None else s for s, c in zip(starts, cum)]
    return [slice(a, a + n) for a, n in zip(starts, sizes)]


def run_case(rank: int, case: dict[str, Any]) -> dict[str, Any]:
    d = make_case(case, rank)
    vp._COMPACT_DEVICES = () if case.get("masked") else ("cpu",)  # the accelerator path: mask rows
    rows = _slices(case)[rank]
    low = getattr(torch, case.get("dtype", "float64"))
    hidden = d["hidden"].to(low).requires_grad_()
    w = d["weight"][rows].to(low).requires_grad_()
    b = d["bias"][rows].to(low).requires_grad_() if case.get("bias", True) else None
    kw = {"chunk_size": case.get("chunk_size", 3)}
    if "starts" in case:
        kw["vocab_start"] = case["starts"][rank]
    if case.get("log_probs"):
        out = vocab_parallel_log_probs(hidden, w, d["target"], b, **kw)
        value = (out * d["cot"]).sum()
    else:
        red = case.get("reduction", "mean")
        norm = case.get("normalizer")
        out = vocab_parallel_cross_entropy(
            hidden,
            w,
            d["target"],
            b,
            label_smoothing=case.get("label_smoothing", 0.0),
            z_loss=case.get("z_loss", 0.0),
            reduction=red,
            normalizer=None if norm is None else torch.tensor(norm, dtype=DT),
            **kw,
        )
        value = (out * d["cot"]).sum() if red == "none" else out
    if case.get("no_grad"):
        with torch.no_grad():
            again = vocab_parallel_cross_entropy(hidden, w, d["target"], b, **kw)
        torch.testing.assert_close(again, out.detach(), rtol=0, atol=0)
    if case.get("retain"):
        value.backward(retain_graph=True)
        leaves = [t for t in (hidden, w, b) if t is not None]
        first = [t.grad.clone() for t in leaves]
        value.backward()
        for t, f in zip(leaves, first):  # a second backward through the graph adds the same
            torch.testing.assert_close(t.grad, 2 * f, rtol=1e-12, atol=1e-14)
            t.grad = f
    else:
        value.backward()
    return {
        "loss": value.detach(),
        "out": out.detach(),
        "hidden": hidden.grad,
        "weight": w.grad,
        "bias": None if b is None else b.grad,
    }


def _worker(rank: int, world: int, cases: list[dict[str, Any]]) -> list[Any]:
    results = []
    for case in cases:
        try:
            results.append(run_case(rank, case))
        except LossValueError as exc:
            results.append(f"LossValueError: {exc}")
    return results


CASES = {
    "uneven_6_5": {"sizes": [6, 5]},
    "3d_hidden": {"sizes": [6, 5], "shape": (2, 7), "seed": 1},
    "single_chunk": {"sizes": [6, 5], "chunk_size": 64, "seed": 2},
    "all_targets_on_rank0": {"sizes": [6, 5], "targets": (0, 6), "seed": 3},
    "all_targets_on_rank1": {"sizes": [6, 5], "targets": (6, 11), "seed": 4},
    "no_ignored": {"sizes": [6, 5], "ignore": False, "seed": 5},
    "smoothing_zloss_mean": {"sizes": [6, 5], "label_smoothing": 0.2, "z_loss": 1e-2, "seed": 6},
    "smoothing_zloss_sum": {
        "sizes": [6, 5],
        "label_smoothing": 0.1,
        "z_loss": 1e-3,
        "reduction": "sum",
        "seed": 7,
    },
    "none": {"sizes": [6, 5], "label_smoothing": 0.1, "z_loss": 1e-3, "reduction": "none", "seed": 8},
    "normalizer": {"sizes": [6, 5], "normalizer": 13.0, "seed": 9, "bias": False},
    "vocab_start_reversed": {"sizes": [5, 6], "starts": [6, 0], "seed": 10},
    "empty_shard": {"sizes": [11, 0], "label_smoothing": 0.1, "seed": 11},
    "masked_rows_mean": {"sizes": [6, 5], "masked": True, "label_smoothing": 0.1, "seed": 14},
    "masked_rows_none": {"sizes": [6, 5], "masked": True, "reduction": "none", "seed": 15},
    "masked_log_probs": {"sizes": [6, 5], "masked": True, "log_probs": True, "seed": 16},
    "no_grad_forward": {"sizes": [6, 5], "no_grad": True, "seed": 17},
    "retained_graph": {"sizes": [6, 5], "retain": True, "z_loss": 1e-2, "seed": 18},
    "retained_graph_none": {"sizes": [6, 5], "retain": True, "reduction": "none", "seed": 19},
    "bfloat16": {"sizes": [6, 5], "dtype": "bfloat16", "label_smoothing": 0.1, "seed": 20},
    "float32_none": {"sizes": [6, 5], "dtype": "float32", "reduction": "none", "seed": 21},
    "log_probs": {"sizes": [6, 5], "log_probs": True, "seed": 12},
    "log_probs_all_on_rank0": {"sizes": [6, 5], "log_probs": True, "targets": (0, 6), "seed": 13},
}
ERROR_CASES = {
    "gap": ({"sizes": [6, 5], "starts": [0, 7]}, "found a gap at row 6"),
    "overlap": ({"sizes": [6, 5], "starts": [0, 5]}, "found an overlap at row 5"),
    "target_too_large": ({"sizes": [6, 4], "targets": (8, 11), "seed": 1}, r"in \[0, 10\)"),
    "target_not_replicated": ({"sizes": [6, 5], "target_differs": True}, "target must be replicated"),
    "start_on_one_rank_only": ({"sizes": [6, 5], "starts": [0, None]}, "on every rank or on none"),
}


@pytest.fixture(scope="module")
def distributed_results() -> dict[str, list[Any]]:
    cases = list(CASES.values()) + [c for c, _ in ERROR_CASES.values()]
    per_rank = run_distributed(_worker, cases)
    names = list(CASES) + list(ERROR_CASES)
    return {name: [per_rank[r][i] for r in range(2)] for i, name in enumerate(names)}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_full_head_reference(distributed_results, name):
    case = CASES[name]
    ref = reference(case)
    slices = _slices(case)
    tol = {"bfloat16": {"rtol": 2e-2, "atol": 2e-2}, "float32": {"rtol": 1e-5, "atol": 1e-5}}
    tol = tol.get(case.get("dtype", ""), TOL)
    for rank, got in enumerate(distributed_results[name]):
        assert not isinstance(got, str), got
        got = {k: v if v is None else v.to(DT) for k, v in got.items()}
        torch.testing.assert_close(got["loss"], ref["loss"], **tol)
        torch.testing.assert_close(got["hidden"], ref["hidden"], **tol)  # summed over ranks
        torch.testing.assert_close(got["weight"], ref["weight"][slices[rank]], **tol)
        if case.get("bias", True):
            torch.testing.assert_close(got["bias"], ref["bias"][slices[rank]], **tol)
    # replicated result: both ranks return the same loss
    torch.testing.assert_close(distributed_results[name][0]["out"], distributed_results[name][1]["out"])


@pytest.mark.parametrize("name", ["uneven_6_5", "smoothing_zloss_sum", "none"])
def test_matches_linear_cross_entropy(distributed_results, name):
    case = CASES[name]
    d = make_case(case)
    want = losskit.linear_cross_entropy(
        d["hidden"],
        d["weight"],
        d["target"],
        d["bias"],
        label_smoothing=case.get("label_smoothing", 0.0),
        z_loss=case.get("z_loss", 0.0),
        reduction=case.get("reduction", "mean"),
    )
    torch.testing.assert_close(distributed_results[name][0]["out"], want, **TOL)


@pytest.mark.parametrize("name", list(ERROR_CASES))
def test_bad_layouts_raise_on_every_rank(distributed_results, name):
    _, pattern = ERROR_CASES[name]
    for got in distributed_results[name]:
        assert isinstance(got, str) and got.startswith("LossValueError"), got
    assert any(re.search(pattern, got) for got in distributed_results[name]), distributed_results[name]


# ---------------------------------------------------------------------------- single process


def test_single_process_equals_linear_cross_entropy():
    case = {"sizes": [11], "label_smoothing": 0.1, "z_loss": 1e-3}
    d = make_case(case)
    for red in ("mean", "sum", "none"):
        got = vocab_parallel_cross_entropy(
            d["hidden"], d["weight"], d["target"], d["bias"], label_smoothing=0.1, z_loss=1e-3, reduction=red
        )
        want = losskit.linear_cross_entropy(
            d["hidden"], d["weight"], d["target"], d["bias"], label_smoothing=0.1, z_loss=1e-3, reduction=red
        )
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    ref = ref_loss({**case, "reduction": "sum"}, d)
    got = vocab_parallel_cross_entropy(
        d["hidden"], d["weight"], d["target"], d["bias"], label_smoothing=0.1, z_loss=1e-3, reduction="sum"
    )
    torch.testing.assert_close(got, ref, **TOL)


def test_single_process_log_probs_and_module():
    d = make_case({"sizes": [11]})
    logps = vocab_parallel_log_probs(d["hidden"], d["weight"], d["target"], d["bias"])
    full = torch.log_softmax(d["hidden"] @ d["weight"].T + d["bias"], -1)
    valid = d["target"] != -100
    torch.testing.assert_close(logps[valid], full[valid, d["target"][valid]], **TOL)
    assert (logps[~valid] == 0).all()
    mod = VocabParallelCrossEntropyLoss(label_smoothing=0.1)
    want = torch.nn.functional.cross_entropy(
        d["hidden"] @ d["weight"].T, d["target"], label_smoothing=0.1, ignore_index=-100
    )
    torch.testing.assert_close(mod(d["hidden"], d["weight"], d["target"]), want, **TOL)


def test_single_process_rejects_a_partial_head():
    d = make_case({"sizes": [11]})
    with pytest.raises(LossValueError, match="vocab_start=3"):
        vocab_parallel_cross_entropy(d["hidden"], d["weight"], d["target"], vocab_start=3)
    with pytest.raises(LossValueError, match="vocab_start"):
        vocab_parallel_cross_entropy(d["hidden"], d["weight"], d["target"], vocab_start=-1)
    with pytest.raises(LossValueError, match="label_smoothing"):
        vocab_parallel_cross_entropy(d["hidden"], d["weight"], d["target"], label_smoothing=2.0)
