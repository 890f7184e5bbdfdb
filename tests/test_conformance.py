"""Registry-driven conformance: every name in ``losskit.available()`` against the shared contract.

One small input factory per registered loss (``CASES``); the parametrized tests below check, for every
loss where it applies (DESIGN.md, definition of done):

- build by name and by config mapping; the name is a row of the README catalog table (8);
- module == functional (or an independent composition), deepcopy / pickle / state_dict round trips,
  float32 and float64 inputs keep their dtype (7);
- ``'none'`` / ``'sum'`` / ``'mean'`` consistency and a bad ``reduction`` naming the argument (3, 6);
- fp16 / bf16 inputs give a float32 loss, and extreme logits give a finite loss and gradients (5);
- ``torch.compile(fullgraph=True)`` == eager for the losses no family test compiles (7).

Per-family reference values, gradchecks and error messages live in the family test files; the few
gaps they leave (composite, distillation, feature distillation, detection and generalized Dice
properties, torch-wrapped losses against plain formulas) are filled at the end of this file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import losskit
from harness import (
    assert_compiles,
    assert_finite_with_grads,
    assert_module_matches,
    extreme_logits,
)
from losskit import LossValueError
from losskit.registry import CATALOG_END, CATALOG_START, get_spec

README = Path(__file__).resolve().parents[1] / "README.md"
TORCH_WRAPPED = {"mse", "l1", "bce", "bce_with_logits", "kl_div", "hinge_embedding", "triplet_margin"}
RNC = ("none", "mean", "sum")

# ---------------------------------------------------------------- input factories


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=_g(seed), dtype=torch.float64) * scale).to(dtype)


def _ints(high: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=_g(seed + 500))


def _boxes(n: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    g = _g(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 4
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 3 + 0.5
    return torch.cat([xy, xy + wh], 1).to(dtype)


def _balanced_labels(b: int, k: int) -> torch.Tensor:
    """Every class has at least two members and there are at least two classes."""
    return torch.arange(b) % k


@dataclass
class Case:
    """Inputs and contract of one registered loss.

    ``make(dtype)`` builds the positional arguments shared by the module's ``forward`` and the
    functional. ``wrt``: floating arguments that receive a gradient. ``logits``: arguments that are
    logits (checked at +-6e4 / +-1e4 in fp16 / bf16). ``reductions``: the accepted values of a
    ``reduction`` argument (empty: the loss has none). ``count``: what ``'mean'`` divides ``'sum'`` by
    (default: the number of elements of the ``'none'`` output). ``ref``: the value the module must
    equal (default: the registered functional on the same arguments and keywords).
    """

    make: Callable[[torch.dtype], tuple[Any, ...]]
    wrt: tuple[int, ...] = (0,)
    logits: tuple[int, ...] = ()
    reductions: tuple[str, ...] = RNC
    count: Callable[[tuple[Any, ...]], int] | None = None
    module_kw: dict[str, Any] = field(default_factory=dict)
    functional_kw: dict[str, Any] = field(default_factory=dict)
    ref: Callable[..., torch.Tensor] | None = None


def _pair(dtype, shape=(5, 3)):
    return (_randn(*shape, seed=1, dtype=dtype, scale=2), _randn(*shape, seed=2, dtype=dtype, scale=2))


def _cls(dtype, shape=(6, 4)):
    return (_randn(*shape, seed=3, dtype=dtype, scale=2), _ints(shape[1], (shape[0],), 3))


def _binary(dtype, shape=(5, 4)):
    x = _randn(*shape, seed=4, dtype=dtype, scale=2)
    t = (torch.rand(*shape, generator=_g(5)) > 0.5).to(dtype)
    return x, t


def _seg(dtype):
    return (_randn(2, 3, 4, 4, seed=6, dtype=dtype, scale=2), _ints(3, (2, 4, 4), 6))


def _distill(dtype, with_target=True):
    s, t = _randn(4, 5, seed=7, dtype=dtype, scale=2), _randn(4, 5, seed=8, dtype=dtype, scale=2)
    return (s, t, _ints(5, (4,), 7)) if with_target else (s, t)


def _composite(dtype):
    return (
        _randn(6, 5, seed=9, dtype=dtype, scale=2),
        _ints(5, (6,), 9),
        _boxes(6, 10, dtype),
        _boxes(6, 11, dtype),
    )


def _detection(dtype):
    labels = torch.randint(-1, 4, (2, 5), generator=_g(12))
    labels[0, 0] = 1  # at least one positive anchor
    return (
        _randn(2, 5, 3, seed=12, dtype=dtype, scale=2),
        labels,
        _boxes(10, 13, dtype).reshape(2, 5, 4),
        _boxes(10, 14, dtype).reshape(2, 5, 4),
    )


def _multitask(dtype):
    return (
        _randn(8, 10, seed=15, dtype=dtype, scale=2),
        _ints(10, (8,), 15),
        _randn(8, 1, seed=16, dtype=dtype),
        _randn(8, 1, seed=17, dtype=dtype),
        _randn(8, 5, seed=18, dtype=dtype),
        _randn(8, 5, seed=19, dtype=dtype),
    )


def _linear(dtype):
    return (_randn(7, 6, seed=20, dtype=dtype), _randn(11, 6, seed=21, dtype=dtype), _ints(11, (7,), 20))


def _linear_kd(dtype):
    return (
        _randn(7, 6, seed=22, dtype=dtype),
        _randn(11, 6, seed=23, dtype=dtype),
        _randn(7, 4, seed=24, dtype=dtype),
        _randn(11, 4, seed=25, dtype=dtype),
        _ints(11, (7,), 22),
    )


def _composite_ref(cls_preds, cls_targets, bbox_preds, bbox_targets):
    """The seed's CompositeLoss written with torch built-ins: focal(alpha=1, gamma=2) + Smooth L1."""
    ce = F.cross_entropy(cls_preds.float(), cls_targets, reduction="none")
    focal = ((1 - torch.exp(-ce)) ** 2 * ce).mean()
    return focal + F.smooth_l1_loss(bbox_preds.float(), bbox_targets.float())


def _multitask_ref(cls_preds, cls_targets, reg_preds, reg_targets, aux_preds, aux_targets):
    """The seed's MultiTaskLoss: CE + MSE + MSE with unit weights."""
    return (
        F.cross_entropy(cls_preds.float(), cls_targets)
        + F.mse_loss(reg_preds.float(), reg_targets.float())
        + F.mse_loss(aux_preds.float(), aux_targets.float())
    )


CASES: dict[str, Case] = {
    # regression
    "huber": Case(_pair, wrt=(0, 1)),
    "smooth_l1": Case(_pair, wrt=(0, 1)),
    "log_cosh": Case(_pair, wrt=(0, 1)),
    "charbonnier": Case(_pair, wrt=(0, 1)),
    "quantile": Case(_pair, wrt=(0, 1), module_kw={"quantile": 0.8}, functional_kw={"quantile": 0.8}),
    # classification
    "cross_entropy": Case(_cls, logits=(0,)),
    "weighted_cross_entropy": Case(_cls, logits=(0,)),
    "focal": Case(_cls, logits=(0,)),
    "poly1_cross_entropy": Case(_cls, logits=(0,)),
    "multiclass_hinge": Case(_cls, logits=(0,)),
    # the module defaults to 'mean', the functional to torchvision's 'none' (documented)
    "sigmoid_focal": Case(_binary, logits=(0,), functional_kw={"reduction": "mean"}),
    "asymmetric": Case(_binary, logits=(0,)),
    # segmentation
    "dice": Case(_seg, logits=(0,)),
    "jaccard": Case(_seg, logits=(0,)),
    "tversky": Case(_seg, logits=(0,)),
    "focal_tversky": Case(_seg, logits=(0,)),
    "generalized_dice": Case(_seg, logits=(0,)),
    # detection
    "box_iou": Case(lambda d: (_boxes(6, 26, d), _boxes(6, 27, d)), wrt=(0, 1)),
    "composite": Case(_composite, wrt=(0, 2), logits=(0,), reductions=(), ref=_composite_ref),
    "detection": Case(_detection, wrt=(0, 2), logits=(0,), reductions=()),
    # distillation
    "kd": Case(lambda d: _distill(d, False), wrt=(0, 1), logits=(0, 1), reductions=("batchmean", *RNC)),
    "dkd": Case(_distill, wrt=(0, 1), logits=(0, 1), reductions=("batchmean", *RNC)),
    "jsd": Case(lambda d: _distill(d, False), wrt=(0, 1), logits=(0, 1)),
    "distillation": Case(_distill, wrt=(0, 1), logits=(0, 1), reductions=()),
    "feature_distillation": Case(lambda d: _distill(d, False), wrt=(0, 1)),
    # embedding
    "cosine_embedding": Case(lambda d: (*_pair(d, (6, 3)), torch.tensor([1, -1, 1, -1, 1, -1])), wrt=(0, 1)),
    "contrastive": Case(lambda d: (*_pair(d, (6, 3)), torch.tensor([1, 0, 1, 0, 0, 1])), wrt=(0, 1)),
    "contrastive_pairs": Case(
        lambda d: (_randn(8, 3, seed=28, dtype=d), _balanced_labels(8, 3)), reductions=()
    ),
    # batch_hard with every anchor valid: 'mean' is over the B anchors
    "triplet": Case(
        lambda d: (_randn(8, 3, seed=29, dtype=d), _balanced_labels(8, 3)),
        reductions=("mean", "sum"),
        count=lambda args: args[0].shape[0],
    ),
    "nt_xent": Case(lambda d: _pair(d, (5, 3)), wrt=(0, 1)),
    "supcon": Case(lambda d: (_randn(8, 3, seed=30, dtype=d), _balanced_labels(8, 3))),
    # language
    "linear_cross_entropy": Case(_linear, wrt=(0, 1)),
    "linear_kd": Case(_linear_kd, wrt=(0, 1)),
    # multitask
    "multitask": Case(_multitask, wrt=(0, 2, 4), reductions=(), ref=_multitask_ref),
    # torch's own modules, registered by name
    "mse": Case(_pair, wrt=(0, 1)),
    "l1": Case(_pair, wrt=(0, 1)),
    "bce": Case(lambda d: (torch.sigmoid(_pair(d)[0]), torch.rand(5, 3, generator=_g(31)).to(d))),
    "bce_with_logits": Case(_binary),
    "kl_div": Case(
        lambda d: (torch.log_softmax(_pair(d)[0], 1), torch.softmax(_pair(d)[1], 1)),
        reductions=("batchmean", *RNC),
    ),
    "hinge_embedding": Case(lambda d: (_pair(d)[0], torch.tensor([1, -1, 1]).repeat(5, 1).to(d))),
    "triplet_margin": Case(lambda d: (*_pair(d, (4, 3)), _randn(4, 3, seed=32, dtype=d)), wrt=(0, 1, 2)),
}

NAMES = losskit.available()
LOSSKIT_NAMES = [n for n in NAMES if n not in TORCH_WRAPPED]
REDUCING = [n for n in NAMES if n in CASES and CASES[n].reductions]
LOGIT_NAMES = [n for n in LOSSKIT_NAMES if n in CASES and CASES[n].logits]
HALF = [torch.float16, torch.bfloat16]


def _case(name: str) -> Case:
    return CASES[name]


def _functional_value(name: str, args: tuple[Any, ...], **kw: Any) -> torch.Tensor:
    case = _case(name)
    if case.ref is not None:
        return case.ref(*args)
    fn = get_spec(name).functional
    assert fn is not None, f"{name} has no functional and no reference"
    return fn(*args, **{**case.functional_kw, **kw})


def _module(name: str, **kw: Any) -> torch.nn.Module:
    return losskit.build(name, **{**_case(name).module_kw, **kw})


def _with_grad(args: tuple[Any, ...], wrt: tuple[int, ...]) -> tuple[list[Any], list[torch.Tensor]]:
    call = list(args)
    leaves = []
    for i in wrt:
        call[i] = args[i].detach().clone().requires_grad_(True)
        leaves.append(call[i])
    return call, leaves


# ---------------------------------------------------------------- every name has a case


def test_every_registered_name_has_an_input_factory():
    assert len(NAMES) >= 41
    assert sorted(CASES) == NAMES, "add an input factory to CASES for every registered loss"
    assert TORCH_WRAPPED <= set(NAMES)
    for name in TORCH_WRAPPED:
        assert get_spec(name).family == "torch"


# ---------------------------------------------------------------- 8. build by name, README catalog


@pytest.mark.parametrize("name", NAMES)
def test_build_by_name_and_by_config(name):
    spec = get_spec(name)
    by_name = losskit.build(name)
    by_config = losskit.build({"name": name})
    assert isinstance(by_name, torch.nn.Module)
    assert type(by_name) is type(by_config)
    assert isinstance(by_name, spec.module) if isinstance(spec.module, type) else True
    for alias in spec.aliases:
        assert type(losskit.build(alias)) is type(by_name)
        assert get_spec(alias) is spec


def _readme_catalog_names() -> list[str]:
    text = README.read_text(encoding="utf-8")
    assert CATALOG_START in text and CATALOG_END in text, "README has no catalog markers"
    table = text.split(CATALOG_START, 1)[1].split(CATALOG_END, 1)[0]
    names = []
    for line in table.strip().splitlines()[2:]:  # skip the header and the |---| row
        first = line.strip().strip("|").split("|")[0].strip()
        names.append(first.strip("`"))
    return names


# test_registry.py checks that the README table equals catalog_markdown(); this checks the README
# itself against available(), so a name that catalog_markdown() skipped would still be caught.
@pytest.mark.parametrize("name", NAMES)
def test_name_is_a_row_of_the_readme_catalog(name):
    rows = _readme_catalog_names()
    assert rows.count(name) == 1, f"{name!r} appears {rows.count(name)} times in the README catalog"


def test_readme_catalog_has_no_unregistered_rows():
    assert sorted(_readme_catalog_names()) == NAMES


# ---------------------------------------------------------------- 7. module == functional, round trips, dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_module_equals_functional_and_round_trips(name, dtype):
    case = _case(name)
    args = case.make(dtype)
    value = _functional_value(name, args)
    module = _module(name)
    if dtype == torch.float64 and name in ("composite", "multitask"):
        # the reference compositions above compute in float32; compare in float64 on the module side
        torch.testing.assert_close(module(*args).float(), value)
    else:
        assert_module_matches(module, value, *args)
    out = module(*args)
    assert out.dtype == dtype, f"{dtype} inputs gave a {out.dtype} loss"
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------- 3. reductions


@pytest.mark.parametrize("name", REDUCING)
def test_reductions_are_consistent(name):
    case = _case(name)
    args = case.make(torch.float64)
    values = {r: _functional_value(name, args, reduction=r) for r in case.reductions}
    for r in case.reductions:  # the module's reduction is the functional's
        torch.testing.assert_close(_module(name, reduction=r)(*args), values[r])
    total = values["sum"]
    assert total.dim() == 0 and values["mean"].dim() == 0
    if "none" in values:
        torch.testing.assert_close(values["none"].sum(), total)
    count = case.count(args) if case.count is not None else values["none"].numel()
    torch.testing.assert_close(values["mean"], total / count)
    if "batchmean" in values:
        torch.testing.assert_close(values["batchmean"], total / args[0].shape[0])


@pytest.mark.parametrize("name", [n for n in REDUCING if n not in TORCH_WRAPPED])
def test_bad_reduction_names_the_argument(name):
    args = _case(name).make(torch.float32)
    with pytest.raises(LossValueError, match=r"reduction must be one of .*got 'avg'"):
        _functional_value(name, args, reduction="avg")
    with pytest.raises(LossValueError, match=r"reduction must be one of .*got 'avg'"):
        _module(name, reduction="avg")


# ---------------------------------------------------------------- 5. low precision


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("name", LOSSKIT_NAMES)
def test_half_inputs_give_float32_loss_and_half_grads(name, dtype):
    case = _case(name)
    args = case.make(torch.float32)
    args = tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    call, leaves = _with_grad(args, case.wrt)
    loss = _module(name)(*call)
    assert loss.dtype == torch.float32, f"{dtype} inputs gave a {loss.dtype} loss"
    grads = torch.autograd.grad(loss, leaves)
    for leaf, g in zip(leaves, grads):
        assert g.dtype == leaf.dtype
        assert torch.isfinite(g).all()
    # close to the float32 loss on the same (rounded) values
    ref = _module(name)(
        *(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    )
    torch.testing.assert_close(loss, ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("name", LOGIT_NAMES)
def test_extreme_logits_give_finite_loss_and_grads(name, dtype):
    case = _case(name)
    args = list(case.make(torch.float32))
    for k, i in enumerate(case.logits):
        args[i] = extreme_logits(args[i].shape, dtype, seed=k)
    args = [a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    call, leaves = _with_grad(tuple(args), case.logits)
    loss = _module(name)(*call)
    assert loss.dtype == torch.float32
    assert_finite_with_grads(loss, *leaves)


# ---------------------------------------------------------------- 7. compile (only what no family test compiles)

# Compiled elsewhere: regression (5), classification (7), segmentation (5), detection (3), kd / dkd / jsd /
# feature_distillation, every embedding loss, linear_cross_entropy / linear_kd, multitask.
NOT_COMPILED_ELSEWHERE = ["distillation"]


@pytest.mark.parametrize("name", NOT_COMPILED_ELSEWHERE)
def test_compile_fullgraph_equals_eager(name):
    args = _case(name).make(torch.float32)
    module = _module(name)
    assert_compiles(lambda *a: module(*a), *args)
