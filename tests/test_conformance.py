"""Registry-driven conformance: every name in ``losskit.available()`` against the shared contract.

One small input factory per registered loss (``CASES``, extended by the ``CASES`` of every
``tests/cases_<family>.py``, which import ``Case`` and the factories from here); the parametrized tests below check, for every
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

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import losskit
import losskit.functional as LF
from harness import (
    assert_compiles,
    assert_connected_zero,
    assert_finite_with_grads,
    assert_gradcheck,
    assert_matches_reference,
    assert_module_matches,
    extreme_logits,
)
from losskit import LossTypeError, LossValueError
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
    equal (default: the registered functional on the same arguments and keywords). ``mismatch``: the
    argument whose leading dimension is cut by one in the bad-shape check. ``arg_names``: names errors
    may use (default: the parameters of the functional and of the module's ``forward``). ``shared``:
    arguments without a batch dimension (weight matrices). ``per_sample``: ``'sum'`` is a sum over
    samples (false for losses that compare the samples of a batch with each other).
    """

    make: Callable[[torch.dtype], tuple[Any, ...]]
    wrt: tuple[int, ...] = (0,)
    logits: tuple[int, ...] = ()
    reductions: tuple[str, ...] = RNC
    count: Callable[[tuple[Any, ...]], int] | None = None
    module_kw: dict[str, Any] = field(default_factory=dict)
    functional_kw: dict[str, Any] = field(default_factory=dict)
    ref: Callable[..., torch.Tensor] | None = None
    mismatch: int = 1
    arg_names: tuple[str, ...] = ()
    shared: tuple[int, ...] = ()
    per_sample: bool = True


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


ANGULAR_KW = {"embedding_dim": 3, "num_classes": 3, "scale": 8.0}


def _angular_case(kind: str) -> Case:
    def ref(emb, labels, **kw):
        module = _module(kind)
        return LF.angular_margin_loss(emb, module.weight.detach(), labels, 8.0, module.margin, kind, **kw)

    return Case(
        lambda d: (_randn(6, 3, seed=33, dtype=d), _balanced_labels(6, 3)),
        module_kw=ANGULAR_KW,
        ref=ref,
        arg_names=("embeddings", "labels"),
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
        per_sample=False,
    ),
    "nt_xent": Case(lambda d: _pair(d, (5, 3)), wrt=(0, 1), per_sample=False),
    "supcon": Case(lambda d: (_randn(8, 3, seed=30, dtype=d), _balanced_labels(8, 3)), per_sample=False),
    # learnable class centres: the module owns the weight, built under a fixed seed (see _module)
    "arcface": _angular_case("arcface"),
    "cosface": _angular_case("cosface"),
    # language
    "linear_cross_entropy": Case(_linear, wrt=(0, 1), mismatch=2, shared=(1,)),
    "linear_kd": Case(_linear_kd, wrt=(0, 1), mismatch=2, shared=(1, 3)),
    # multitask
    "multitask": Case(
        _multitask,
        wrt=(0, 2, 4),
        reductions=(),
        ref=_multitask_ref,
        arg_names=("cls_preds", "cls_targets", "reg_preds", "reg_targets", "aux_preds", "aux_targets"),
    ),
    # torch's own modules, registered by name
    "mse": Case(_pair, wrt=(0, 1)),
    "l1": Case(_pair, wrt=(0, 1)),
    "bce": Case(lambda d: (torch.sigmoid(_pair(d)[0]), torch.rand(5, 3, generator=_g(31)).to(d))),
    "bce_with_logits": Case(_binary, logits=(0,)),
    "kl_div": Case(
        lambda d: (torch.log_softmax(_pair(d)[0], 1), torch.softmax(_pair(d)[1], 1)),
        reductions=("batchmean", *RNC),
    ),
    "hinge_embedding": Case(lambda d: (_pair(d)[0], torch.tensor([1, -1, 1]).repeat(5, 1).to(d))),
    "triplet_margin": Case(lambda d: (*_pair(d, (4, 3)), _randn(4, 3, seed=32, dtype=d)), wrt=(0, 1, 2)),
    # preference: (B,) sequence log-probs (negative), rewards for the reward model
    "dpo": Case(
        lambda d: tuple(-_randn(6, seed=60 + i, dtype=d, scale=5).abs() for i in range(4)), wrt=(0, 1)
    ),
    "simpo": Case(lambda d: tuple(-_randn(6, seed=64 + i, dtype=d).abs() for i in range(2)), wrt=(0, 1)),
    "cpo": Case(
        lambda d: tuple(-_randn(6, seed=66 + i, dtype=d, scale=5).abs() for i in range(2)), wrt=(0, 1)
    ),
    "orpo": Case(lambda d: tuple(-_randn(6, seed=68 + i, dtype=d).abs() for i in range(2)), wrt=(0, 1)),
    # the KL reference point is a batch mean of the mismatched rows: 'sum' is not a sum over samples
    "kto": Case(
        lambda d: (
            -_randn(6, seed=70, dtype=d, scale=5).abs(),
            -_randn(6, seed=71, dtype=d, scale=5).abs(),
            torch.tensor([True, False, True, True, False, False]),
            -_randn(6, seed=72, dtype=d, scale=5).abs(),
            -_randn(6, seed=73, dtype=d, scale=5).abs(),
        ),
        per_sample=False,
    ),
    "reward_model": Case(lambda d: _pair(d, (6,)), wrt=(0, 1)),
}


def _load_family_cases() -> None:
    """Merge ``CASES`` from every ``tests/cases_<family>.py`` (each family keeps its factories there)."""
    import importlib

    for path in sorted(Path(__file__).parent.glob("cases_*.py")):
        extra = importlib.import_module(path.stem).CASES
        clash = set(extra) & set(CASES)
        assert not clash, f"{path.name} redefines the input factories of {sorted(clash)}"
        CASES.update(extra)


_load_family_cases()

NAMES = losskit.available()
# a registered name without a factory fails test_every_registered_name_has_an_input_factory only
WITH_CASE = [n for n in NAMES if n in CASES]
LOSSKIT_NAMES = list(WITH_CASE)  # torch's losses by name are losskit modules too
REDUCING = [n for n in WITH_CASE if CASES[n].reductions]
LOGIT_NAMES = [n for n in LOSSKIT_NAMES if CASES[n].logits]
HALF = [torch.float16, torch.bfloat16]


def _case(name: str) -> Case:
    return CASES[name]


def _functional_value(name: str, args: tuple[Any, ...], **kw: Any) -> torch.Tensor:
    case = _case(name)
    if case.ref is not None:
        return case.ref(*args, **kw) if kw else case.ref(*args)
    fn = get_spec(name).functional
    assert fn is not None, f"{name} has no functional and no reference"
    return fn(*args, **{**case.functional_kw, **kw})


def _module(name: str, **kw: Any) -> torch.nn.Module:
    # losses with parameters (ArcFace centres) are built under one seed: every build is the same loss
    with torch.random.fork_rng():
        torch.manual_seed(0)
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
    assert len(NAMES) >= 43
    missing = sorted(set(NAMES) - set(CASES))
    assert not missing, f"add an input factory to CASES for {missing}"
    assert not set(CASES) - set(NAMES), f"factories for unregistered names: {sorted(set(CASES) - set(NAMES))}"
    assert TORCH_WRAPPED <= set(NAMES)
    for name in TORCH_WRAPPED:
        assert get_spec(name).family == "torch"


# ---------------------------------------------------------------- 8. build by name, README catalog


@pytest.mark.parametrize("name", NAMES)
def test_build_by_name_and_by_config(name):
    spec = get_spec(name)
    kw = CASES[name].module_kw if name in CASES else {}  # required constructor arguments, if any
    by_name = losskit.build(name, **kw)
    by_config = losskit.build({"name": name, **kw})
    assert isinstance(by_name, torch.nn.Module)
    assert type(by_name) is type(by_config)
    if isinstance(spec.module, type):
        assert isinstance(by_name, spec.module)
    assert repr(by_name) == repr(by_config)
    for alias in spec.aliases:
        assert type(losskit.build(alias, **kw)) is type(by_name)
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
@pytest.mark.parametrize("name", WITH_CASE)
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


@pytest.mark.parametrize("name", REDUCING)
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
    """Half inputs are computed in float32: the loss is the float32 loss of the same (rounded) values and
    the gradients are the float32 gradients rounded once to the input's dtype."""
    case = _case(name)
    args = case.make(torch.float32)
    args = tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    args32 = tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    call, leaves = _with_grad(args, case.wrt)
    loss = _module(name)(*call)
    assert loss.dtype == torch.float32, f"{dtype} inputs gave a {loss.dtype} loss"
    grads = torch.autograd.grad(loss, leaves)
    call32, leaves32 = _with_grad(args32, case.wrt)
    loss32 = _module(name)(*call32)
    grads32 = torch.autograd.grad(loss32, leaves32)
    # the language losses multiply in the inputs' dtype (as a half-precision linear layer does)
    torch.testing.assert_close(loss, loss32, rtol=1e-3 if case.shared else 1e-6, atol=1e-6)
    eps = torch.finfo(dtype).eps
    for i, g, g32 in zip(case.wrt, grads, grads32):
        assert g.dtype == dtype and torch.isfinite(g).all(), f"gradient of argument {i}"
        err = float((g.float() - g32).abs().max())
        assert err <= 2 * eps * float(g32.abs().max()) + 1e-6, f"gradient of argument {i} off by {err}"


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


# ---------------------------------------------------------------- 6. bad input: typed errors naming the argument


def _error_names(name: str) -> set[str]:
    case = _case(name)
    if case.arg_names:
        return set(case.arg_names)
    spec = get_spec(name)
    names = set(inspect.signature(spec.module.forward).parameters) - {"self"}
    if spec.functional is not None:
        names |= set(inspect.signature(spec.functional).parameters)
    return names


def _named_param(name: str, message: str) -> str:
    first = message.split(" ", 1)[0]
    assert first in _error_names(name), f"error does not start with an argument name: {message!r}"
    return first


@pytest.mark.parametrize("name", LOSSKIT_NAMES)
def test_integer_input_raises_type_error_naming_it(name):
    args = list(_case(name).make(torch.float32))
    args[0] = (args[0] * 4).long()
    with pytest.raises(LossTypeError, match="must be a floating-point tensor, got dtype torch.int64") as e:
        _module(name)(*args)
    _named_param(name, str(e.value))


@pytest.mark.parametrize("name", LOSSKIT_NAMES)
def test_batch_mismatch_raises_value_error_naming_the_shapes(name):
    case = _case(name)
    args = list(case.make(torch.float32))
    args[case.mismatch] = args[case.mismatch][:-1]
    with pytest.raises(LossValueError, match=r"has shape \(") as e:
        _module(name)(*args)
    _named_param(name, str(e.value))


def test_composite_box_shape_error():
    cls_preds, cls_targets, bbox_preds, bbox_targets = _composite(torch.float32)
    with pytest.raises(LossValueError, match=r"has shape \(5, 4\), expected \(6, 4\)"):
        losskit.CompositeLoss()(cls_preds, cls_targets, bbox_preds, bbox_targets[:5])


def test_multitask_seed_form_checks_and_names_its_inputs():
    args = list(_multitask(torch.float32))
    m = losskit.MultiTaskLoss()
    bad = list(args)
    bad[3] = args[3].reshape(-1)  # (8,) against (8, 1): torch's mse_loss would broadcast to (8, 8)
    with pytest.raises(
        LossValueError, match=r"reg_targets has shape \(8,\), expected \(8, 1\) to match reg_preds"
    ):
        m(*bad)
    bad = list(args)
    bad[5] = args[5][:, :4]
    with pytest.raises(LossValueError, match=r"aux_targets has shape \(8, 4\), expected \(8, 5\)"):
        m(*bad)
    bad = list(args)
    bad[1] = torch.full((8,), 10)
    with pytest.raises(
        LossValueError, match=r"cls_targets contains class index 10, expected values in \[0, 10\)"
    ):
        m(*bad)
    with pytest.raises(LossTypeError, match="reg_preds must be a floating-point tensor"):
        m(args[0], args[1], args[2].long(), args[3], args[4], args[5])
    # the mapping call of the seed form is checked the same way
    preds = {"cls": args[0], "reg": args[2], "aux": args[4]}
    targets = {"cls": args[1], "reg": args[3].reshape(-1), "aux": args[5]}
    with pytest.raises(LossValueError, match="reg_targets has shape"):
        m(preds, targets)
    # class-probability targets (as torch's cross_entropy accepts) still work
    probs = torch.softmax(args[0], 1)
    expected = F.cross_entropy(args[0], probs) + F.mse_loss(args[2], args[3]) + F.mse_loss(args[4], args[5])
    torch.testing.assert_close(m(args[0], probs, *args[2:]), expected)


def test_log_cosh_charbonnier_weighted_ce_bad_inputs():
    x = torch.randn(4, 3)
    with pytest.raises(LossValueError, match=r"target has shape \(4, 2\), expected \(4, 3\) to match input"):
        LF.log_cosh_loss(x, x[:, :2])
    with pytest.raises(LossValueError, match="eps must be > 0.0, got 0.0"):
        LF.charbonnier_loss(x, x, eps=0.0)
    with pytest.raises(LossValueError, match="eps must be > 0.0, got -1"):
        losskit.CharbonnierLoss(eps=-1)
    with pytest.raises(
        LossValueError, match=r"weight has shape \(2,\), expected \(3,\): one entry per class"
    ):
        losskit.WeightedCrossEntropyLoss(torch.ones(2))(x, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(LossValueError, match=r"target contains class index 3, expected values in \[0, 3\)"):
        losskit.WeightedCrossEntropyLoss()(x, torch.tensor([0, 1, 3, 0]))


# ---------------------------------------------------------------- torch's own modules against plain formulas


def _torch_refs():
    """name -> (args, kwargs, float64 per-element formula); 'mean' is the plain mean of the elements."""
    x, y = _pair(torch.float64)
    p = torch.sigmoid(x)
    t = torch.rand(5, 3, generator=_g(40), dtype=torch.float64)
    logp, q = torch.log_softmax(x, 1), torch.softmax(y, 1)
    pm = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64).repeat(5, 1)
    a, pos, neg = (
        _randn(4, 3, seed=41, dtype=torch.float64),
        _randn(4, 3, seed=42, dtype=torch.float64),
        x[:4],
    )
    return {
        "mse": ((x, y), {}, lambda: (x - y) ** 2),
        "l1": ((x, y), {}, lambda: (x - y).abs()),
        "bce": ((p, t), {}, lambda: -(t * torch.log(p) + (1 - t) * torch.log(1 - p))),
        "bce_with_logits": (
            (x, t),
            {"pos_weight": torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)},
            lambda: (
                -(
                    torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64) * t * torch.log(torch.sigmoid(x))
                    + (1 - t) * torch.log(1 - torch.sigmoid(x))
                )
            ),
        ),
        "kl_div": (
            (logp, q),
            {},
            lambda: q * (torch.log(q) - logp),
        ),  # KL(target || input), input in log space
        "hinge_embedding": (
            (x, pm),
            {"margin": 1.5},
            lambda: torch.where(pm > 0, x, torch.clamp(1.5 - x, min=0)),
        ),
        "triplet_margin": (
            (a, pos, neg),
            {"margin": 0.5},
            lambda: torch.clamp(
                ((a - pos + 1e-6) ** 2).sum(1).sqrt() - ((a - neg + 1e-6) ** 2).sum(1).sqrt() + 0.5, min=0
            ),
        ),
    }


@pytest.mark.parametrize("reduction", RNC)
@pytest.mark.parametrize("name", sorted(TORCH_WRAPPED))
def test_torch_wrapped_equal_plain_formulas(name, reduction):
    args, kw, elem = _torch_refs()[name]
    module = losskit.build(name, reduction=reduction, **kw)
    e = elem()
    want = {"none": e, "sum": e.sum(), "mean": e.mean()}[reduction]
    torch.testing.assert_close(module(*args), want)
    torch.testing.assert_close(get_spec(name).functional(*args, reduction=reduction, **kw), want)


# ---------------------------------------------------------------- gaps the family tests leave
# composite: gradcheck, degenerate input, properties


def test_composite_gradcheck_and_empty_batch():
    cls_preds, cls_targets, bbox_preds, bbox_targets = _composite(torch.float64)
    for kw in ({}, {"alpha": 0.5, "gamma": 0.5, "cls_weight": 2.0, "bbox_weight": 0.3, "beta": 0.5}):
        m = losskit.CompositeLoss(**kw)
        assert_gradcheck(
            lambda a, c, d, m=m: m(a, cls_targets, c, d), (cls_preds, bbox_preds, bbox_targets), (0, 1, 2)
        )
    x = torch.zeros(0, 5, requires_grad=True)
    b = torch.zeros(0, 4, requires_grad=True)
    assert_connected_zero(
        losskit.CompositeLoss()(x, torch.zeros(0, dtype=torch.long), b, torch.zeros(0, 4)), x, b
    )


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    alpha=st.floats(0.0, 2.0),
    gamma=st.floats(0.0, 4.0),
    cw=st.floats(0.0, 3.0),
    bw=st.floats(0.0, 3.0),
)
def test_composite_properties(seed, alpha, gamma, cw, bw):
    g = _g(seed)
    cls_preds = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    cls_targets = torch.randint(0, 5, (6,), generator=g)
    bp, bt = _boxes(6, seed + 1, torch.float64), _boxes(6, seed + 2, torch.float64)
    m = losskit.CompositeLoss(alpha, gamma, cw, bw)
    total = m(cls_preds, cls_targets, bp, bt)
    assert float(total) >= 0
    # the total is the weighted sum of its logged terms
    torch.testing.assert_close(total, cw * m.last_terms["cls"] + bw * m.last_terms["bbox"])
    # gamma = 0, alpha = 1: cross-entropy + Smooth L1 (torch's)
    plain = losskit.CompositeLoss(1.0, 0.0)(cls_preds, cls_targets, bp, bt)
    torch.testing.assert_close(plain, F.cross_entropy(cls_preds, cls_targets) + F.smooth_l1_loss(bp, bt))
    # focusing never increases the classification term; a perfect box prediction has no box term
    assert float(m.last_terms["cls"]) <= alpha * float(F.cross_entropy(cls_preds, cls_targets)) + 1e-12
    m(cls_preds, cls_targets, bp, bp.clone())
    assert float(m.last_terms["bbox"]) == 0.0


# distillation (KD + CE): properties and limits


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), alpha=st.floats(0.0, 1.0), T=st.floats(0.5, 8.0))
def test_distillation_properties(seed, alpha, T):
    s, t = (
        _randn(5, 4, seed=seed, dtype=torch.float64, scale=3),
        _randn(5, 4, seed=seed + 1, dtype=torch.float64, scale=3),
    )
    y = _ints(4, (5,), seed)
    value = LF.distillation_loss(s, t, y, alpha, T)
    ce = F.cross_entropy(s, y)
    soft = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T * T
    assert float(value) >= 0
    torch.testing.assert_close(value, alpha * soft + (1 - alpha) * ce)  # affine in alpha
    torch.testing.assert_close(LF.distillation_loss(s, t, y, 0.0, T), ce)  # alpha = 0: plain CE
    torch.testing.assert_close(LF.distillation_loss(s, t, y, 1.0, T), soft)  # alpha = 1: KD only
    # a student equal to its teacher leaves only the hard term
    torch.testing.assert_close(LF.distillation_loss(s, s, y, alpha, T), (1 - alpha) * ce)


# feature distillation: properties


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 10.0))
def test_feature_distillation_properties(seed, scale):
    s, t = _randn(4, 6, seed=seed, dtype=torch.float64), _randn(4, 6, seed=seed + 1, dtype=torch.float64)
    mse = LF.feature_distillation_loss(s, t, "mse")
    cos = LF.feature_distillation_loss(s, t, "cosine", reduction="none")
    assert float(mse) >= 0 and cos.shape == (4,)
    assert ((cos >= -1e-12) & (cos <= 2 + 1e-12)).all()
    torch.testing.assert_close(mse, F.mse_loss(s, t))
    torch.testing.assert_close(cos, 1 - F.cosine_similarity(s, t, dim=1))
    # cosine ignores the features' scale; both kinds vanish on identical features
    torch.testing.assert_close(LF.feature_distillation_loss(s * scale, t, "cosine", reduction="none"), cos)
    for kind in ("mse", "cosine"):
        assert float(LF.feature_distillation_loss(s, s, kind)) == pytest.approx(0.0, abs=1e-12)


# detection (RetinaNet): properties


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), cw=st.floats(0.0, 3.0), bw=st.floats(0.0, 3.0))
def test_detection_properties(seed, cw, bw):
    g = _g(seed)
    logits = torch.randn(2, 6, 3, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(-1, 4, (2, 6), generator=g)
    bp = _boxes(12, seed + 1, torch.float64).reshape(2, 6, 4)
    bt = _boxes(12, seed + 2, torch.float64).reshape(2, 6, 4)
    total = LF.detection_loss(logits, labels, bp, bt, cls_weight=cw, box_weight=bw)
    cls = LF.detection_loss(logits, labels, bp, bt, cls_weight=1.0, box_weight=0.0)
    box = LF.detection_loss(logits, labels, bp, bt, cls_weight=0.0, box_weight=1.0)
    assert float(cls) >= 0 and float(box) >= 0
    torch.testing.assert_close(total, cw * cls + bw * box)  # linear in the two weights
    # the anchors' order does not matter (within and across images)
    perm = torch.randperm(12, generator=g)
    flat = lambda z: z.reshape(1, 12, *z.shape[2:])[:, perm]  # noqa: E731
    torch.testing.assert_close(
        LF.detection_loss(flat(logits), flat(labels), flat(bp), flat(bt), cls_weight=cw, box_weight=bw), total
    )
    # boxes equal to their targets leave only the classification term
    torch.testing.assert_close(
        LF.detection_loss(logits, labels, bt, bt, cls_weight=cw, box_weight=bw), cw * cls
    )


# generalized Dice: properties


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(2, 4),
    hw=st.integers(1, 4),
    seed=st.integers(0, 10_000),
    weight_type=st.sampled_from(["square", "simple", "uniform"]),
)
def test_generalized_dice_properties(n, c, hw, seed, weight_type):
    g = _g(seed)
    x = torch.randn(n, c, hw, hw, generator=g, dtype=torch.float64) * 3
    t = torch.randint(0, c, (n, hw, hw), generator=g)
    none = LF.generalized_dice_loss(x, t, weight_type=weight_type, reduction="none")
    assert ((none >= -1e-12) & (none <= 1 + 1e-12)).all()
    torch.testing.assert_close(
        LF.generalized_dice_loss(x, t, weight_type=weight_type, reduction="sum"), none.sum()
    )
    torch.testing.assert_close(
        LF.generalized_dice_loss(x, t, weight_type=weight_type) * none.numel(), none.sum()
    )
    perfect = F.one_hot(t, c).movedim(-1, 1).double()
    assert float(LF.generalized_dice_loss(perfect, t, from_logits=False, weight_type=weight_type)) < 1e-12


# weighted cross-entropy (the seed's class): gradcheck with weights, degenerate inputs


def test_weighted_cross_entropy_gradcheck_and_degenerate():
    x, y = _cls(torch.float64)
    w = torch.tensor([0.1, 0.9, 2.0, 0.5], dtype=torch.float64)
    m = losskit.WeightedCrossEntropyLoss(w, label_smoothing=0.1)
    assert_gradcheck(lambda a: m(a, y), (x,))
    assert_matches_reference(
        lambda a: m(a, y), lambda a: F.cross_entropy(a, y, weight=w, label_smoothing=0.1), (x,)
    )
    x0 = torch.zeros(0, 4, requires_grad=True)
    assert_connected_zero(m(x0, torch.zeros(0, dtype=torch.long)), x0)
    x1 = x.detach().clone().requires_grad_(True)
    assert_connected_zero(losskit.WeightedCrossEntropyLoss(w)(x1, torch.full((6,), -100)), x1)


# multitask (seed form): gradcheck, non-negativity


def test_multitask_seed_form_gradcheck_and_weights():
    args = _multitask(torch.float64)
    m = losskit.MultiTaskLoss(0.5, 2.0, 0.25).double()
    assert_gradcheck(lambda *a: m(*a), args, (0, 3, 5))
    ce, reg, aux = (
        F.cross_entropy(args[0], args[1]),
        F.mse_loss(args[2], args[3]),
        F.mse_loss(args[4], args[5]),
    )
    total = m(*args)
    assert float(total) >= 0
    torch.testing.assert_close(total, 0.5 * ce + 2.0 * reg + 0.25 * aux)
    assert math.isclose(float(m.last_losses["reg"]), float(reg), rel_tol=1e-12)


# ---------------------------------------------------------------- 4. empty batch on every loss


def _batch_index(name: str, args: tuple[Any, ...], index: Any) -> tuple[Any, ...]:
    """``args`` with ``index`` applied to the batch dimension (shared weight matrices unchanged)."""
    shared = _case(name).shared
    return tuple(
        a[index] if isinstance(a, torch.Tensor) and a.dim() and i not in shared else a
        for i, a in enumerate(args)
    )


def _empty(name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The same call with a batch of zero samples."""
    return _batch_index(name, args, slice(0, 0))


@pytest.mark.parametrize("name", LOSSKIT_NAMES)
def test_empty_batch_gives_connected_zero(name):
    case = _case(name)
    call, leaves = _with_grad(_empty(name, case.make(torch.float32)), case.wrt)
    for reduction in [r for r in case.reductions if r != "none"] or [None]:
        kw = {} if reduction is None else {"reduction": reduction}
        assert_connected_zero(_module(name, **kw)(*call), *leaves)


@pytest.mark.parametrize("name", [n for n in LOSSKIT_NAMES if "none" in _case(n).reductions])
def test_empty_batch_none_reduction_keeps_its_shape(name):
    case = _case(name)
    args = case.make(torch.float32)
    full = _module(name, reduction="none")(*args)
    empty = _module(name, reduction="none")(*_empty(name, args))
    assert empty.dim() == full.dim(), (
        f"shape {tuple(empty.shape)} for an empty batch, {tuple(full.shape)} otherwise"
    )
    assert empty.numel() == 0 and empty.shape[1:] == full.shape[1:]


# ---------------------------------------------------------------- 3. batch order and splitting


@pytest.mark.parametrize("name", LOSSKIT_NAMES)
def test_batch_order_does_not_matter(name):
    case = _case(name)
    args = case.make(torch.float64)
    perm = torch.randperm(args[0].shape[0], generator=_g(50))
    for reduction in [r for r in case.reductions if r != "none"] or [None]:
        kw = {} if reduction is None else {"reduction": reduction}
        torch.testing.assert_close(
            _module(name, **kw)(*_batch_index(name, args, perm)),
            _module(name, **kw)(*args),
            rtol=1e-10,
            atol=1e-12,
        )


@pytest.mark.parametrize(
    "name", [n for n in LOSSKIT_NAMES if "sum" in _case(n).reductions and _case(n).per_sample]
)
def test_sum_adds_up_over_batch_splits(name):
    args = _case(name).make(torch.float64)
    h = args[0].shape[0] // 2
    m = _module(name, reduction="sum")
    parts = m(*_batch_index(name, args, slice(0, h))) + m(*_batch_index(name, args, slice(h, None)))
    torch.testing.assert_close(parts, m(*args), rtol=1e-10, atol=1e-12)
