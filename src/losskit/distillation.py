"""Knowledge distillation: KD, the seed's KD + CE objective, DKD, generalised JSD, feature hints, Distiller.

Conventions shared by the logit losses:

* Probabilities are always computed as ``log_softmax(logits / T)`` in float32 (half inputs are upcast),
  and divergences in log-space, so saturated fp16/bf16 logits give finite values and gradients.
* ``KL(p || q) = sum_c p_c (log p_c - log q_c)``. Hinton's KD is ``KL(p_teacher || p_student)``, which is
  ``F.kl_div(log p_student, p_teacher)`` in torch's argument order (input in log-space, target second).
* The class axis of :func:`kd_loss`, :func:`distillation_loss` and :func:`dkd_loss` is ``dim=1`` as in
  ``torch.nn.functional`` (``(N, C)`` or ``(N, C, d1, ...)``); :func:`kd_loss` takes ``dim=-1`` for
  ``(B, L, V)`` language-model logits. :func:`jsd_loss` is a token-level loss and takes the vocabulary
  **last**, like LM logits.
* The teacher is whatever tensor you pass: these functions do not detach it. :class:`Distiller` runs the
  teacher frozen, in eval mode and under ``torch.no_grad``.
* Speed and memory: :func:`kd_loss` (class axis last: ``(N, C)`` with ``dim=1`` or ``(..., V)`` with
  ``dim=-1``) and :func:`jsd_loss` run fused row kernels (:mod:`losskit._kernels.distill`) on
  contiguous logits of one dtype: autograd keeps the two logit tensors and two float32 numbers per
  row (the log-normalisers; four for the JSD), so backward is one elementwise pass. The kernels are
  ``torch.compile``-d on first use and taken for inputs of >= 262144 elements (smaller ones run
  faster through the plain code). Other layouts, mixed dtypes and calls inside an outer ``torch.compile`` use the plain tensor code;
  ``losskit._kernels.fused_kernels(False)`` forces it. Double backward works on both paths.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import (
    LossTypeError,
    LossValueError,
    check_choice,
    check_class_target,
    check_floating,
    check_int,
    check_integer,
    check_min_ndim,
    check_ndim,
    check_number,
    check_reduction,
    check_same_device,
    check_same_shape,
    check_tensor,
    shape_str,
)
from ._kernels._compile import use_fused_kernel
from ._kernels.distill import distill_supports, jsd_rows, kd_rows
from ._reduction import Normalizer, check_normalizer, reduce_loss, upcast
from .registry import register

__all__ = [
    "DKDLoss",
    "DistillationLoss",
    "Distiller",
    "FeatureDistillationLoss",
    "JSDLoss",
    "KDLoss",
    "distillation_loss",
    "distillation_step",
    "dkd_loss",
    "feature_distillation_loss",
    "jsd_loss",
    "kd_loss",
]

_ROW_REDUCTIONS = ("batchmean", "mean", "sum", "none")


# ----------------------------------------------------------------------------- shared pieces


def _check_logit_pair(
    student: Any, teacher: Any, min_ndim: int = 2, target: torch.Tensor | None = None
) -> None:
    """Student and teacher logits (and the optional ``target``) on one device, logits floating and of one shape."""
    check_floating("student_logits", student)
    check_floating("teacher_logits", teacher)
    check_same_device(("student_logits", student), ("teacher_logits", teacher), ("target", target))
    check_min_ndim("student_logits", student, min_ndim)
    check_same_shape("teacher_logits", teacher, "student_logits", student)


def _check_temperature(temperature: Any) -> float:
    return float(check_number("temperature", temperature, low=0.0, low_open=True))


def _upcast_finite(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits in the compute dtype (float32 for half inputs), ``-inf`` -> a finite value that stays
    finite after division by ``temperature``.

    The clamp is applied after the upcast, at the compute dtype's lowest value: clamping in fp16
    (``finfo(fp16).min * T = -6550`` at ``T = 0.1``) would move finite logits such as ``-1e4``.
    """
    x = upcast(logits)
    return x.clamp_min(torch.finfo(x.dtype).min * min(1.0, temperature))


def _log_probs(logits: torch.Tensor, temperature: float, dim: int) -> torch.Tensor:
    """``log_softmax(logits / T)`` in float32 for half inputs, finite even for ``-inf`` logits.

    Logits masked with ``-inf`` (padded or banned classes) are clamped to a very negative finite value
    first, so their log-probabilities stay finite (their probability is still
    exactly 0) and such entries contribute 0 to the divergences with finite gradients instead of NaN.
    The clamp runs in the compute dtype (see :func:`_upcast_finite`), so half inputs give the float32
    values of the same (rounded) logits.
    """
    x = _upcast_finite(logits, temperature)
    if temperature != 1.0:
        x = x / temperature
    return F.log_softmax(x, dim=dim)


def _kl_terms(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Element-wise ``p (log p - log q)`` for finite log-probabilities (see :func:`_log_probs`).

    Where ``p`` underflows to 0 the term is ``0 * finite = 0``, with finite gradients.
    """
    return log_p.exp() * (log_p - log_q)


def _reduce_rows(rows: torch.Tensor, reduction: str, batch: int) -> torch.Tensor:
    """Reduce per-sample (per-position) losses; ``'batchmean'`` divides the sum by the batch size."""
    if reduction == "batchmean":
        # Python int denominator: no device sync; an empty batch gives 0 / 1 = 0, graph-connected.
        return rows.sum() / max(batch, 1)
    return reduce_loss(rows, reduction)


def _fused_rows_view(
    student: torch.Tensor, teacher: torch.Tensor, dim: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(R, C)`` views of two logit tensors for the fused row kernels, or None (use the eager code).

    Only when a fused kernel pays at this size (:func:`losskit._kernels.use_fused_kernel`), the class
    axis ``dim`` is the last one, both tensors are contiguous (so the reshape is a view, no copy) and
    non-empty, and the kernels support the pair.
    """
    if not use_fused_kernel(student.numel()) or dim != student.dim() - 1:
        return None
    if not (student.is_contiguous() and teacher.is_contiguous()):
        return None
    c = student.shape[-1]
    s2, t2 = student.reshape(-1, c), teacher.reshape(-1, c)
    return (s2, t2) if distill_supports(s2, t2) else None


def _norm_dim(dim: int, ndim: int, name: str = "dim") -> int:
    if not -ndim <= dim < ndim:
        raise LossValueError(f"{name} must be in [{-ndim}, {ndim - 1}] for a {ndim}-D input, got {dim}")
    return dim % ndim


# ----------------------------------------------------------------------------- Hinton KD


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 4.0,
    reduction: str = "batchmean",
    *,
    dim: int = 1,
) -> torch.Tensor:
    r"""Knowledge-distillation loss (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network").

    .. math::
        \ell = T^2\, \mathrm{KL}\big(p_T \,\|\, p_S\big)
             = T^2 \sum_c p_{T,c} \big(\log p_{T,c} - \log p_{S,c}\big),\quad
        p = \operatorname{softmax}(z / T)

    The ``T^2`` keeps the soft-target gradient on the scale of a hard-label cross-entropy when ``T``
    changes. The direction is teacher-to-student (forward KL, mass-covering), the same as
    ``F.kl_div(F.log_softmax(s / T), F.softmax(t / T), reduction='batchmean') * T**2``.

    Args:
        student_logits, teacher_logits: ``(N, C)`` or ``(N, C, d1, ...)`` with the class axis ``dim``
            (default 1, torch's convention). For ``(B, L, V)`` language-model logits pass ``dim=-1``.
        temperature: ``T > 0``.
        reduction: per-sample KL rows (the input's shape without ``dim``) reduced by
            ``'batchmean'`` (sum / ``N``, where ``N`` is the size of dim 0: torch's ``batchmean``),
            ``'mean'`` (mean over rows, i.e. over samples *and* positions — not torch's ``'mean'``, which
            also divides by ``C``), ``'sum'``, or ``'none'`` (the rows). For token-level logits
            ``'mean'`` is the per-token mean; ``'batchmean'`` grows with the sequence length. For
            token-level distillation with padding, :func:`jsd_loss` with ``beta=0`` is the same forward
            KL per token with ``ignore_index`` (times ``T^2`` to match this function).
        dim: the class axis.

    Example:
        >>> s = torch.tensor([[2.0, 0.0, -1.0]])
        >>> t = torch.tensor([[0.0, 2.0, -1.0]])
        >>> kd_loss(s, t, temperature=1.0)
        tensor(1.4592)
        >>> kd_loss(s, s)
        tensor(0.)
    """
    t = _check_temperature(temperature)
    check_reduction(reduction, _ROW_REDUCTIONS)
    _check_logit_pair(student_logits, teacher_logits)
    d = _norm_dim(dim, student_logits.dim())
    pair = _fused_rows_view(student_logits, teacher_logits, d)
    if pair is not None:
        rows = kd_rows(pair[0], pair[1], t).view(student_logits.shape[:-1])
        return _reduce_rows(rows, reduction, student_logits.shape[0])
    log_s = _log_probs(student_logits, t, d)
    log_t = _log_probs(teacher_logits, t, d)
    rows = _kl_terms(log_t, log_s).sum(d) * (t * t)
    return _reduce_rows(rows, reduction, student_logits.shape[0])


class KDLoss(nn.Module):
    """Module form of :func:`kd_loss`.

    Example:
        >>> KDLoss(temperature=4.0)(torch.zeros(2, 3), torch.zeros(2, 3))
        tensor(0.)
    """

    def __init__(self, temperature: float = 4.0, reduction: str = "batchmean", dim: int = 1) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)
        self.reduction = check_reduction(reduction, _ROW_REDUCTIONS)
        self.dim = check_int("dim", dim)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return kd_loss(student_logits, teacher_logits, self.temperature, self.reduction, dim=self.dim)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, reduction={self.reduction!r}, dim={self.dim}"


# ----------------------------------------------------------------------------- KD + CE (the seed's objective)


def _check_alpha(alpha: Any) -> float:
    return float(check_number("alpha", alpha, low=0.0, high=1.0))


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Mean cross-entropy over the non-ignored targets; zero (connected) when none count."""
    log_p = F.log_softmax(upcast(logits), dim=1)
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))
    nll = -log_p.gather(1, safe.unsqueeze(1)).squeeze(1)
    return reduce_loss(nll, "mean", mask=valid)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.1,
    temperature: float = 3.0,
    *,
    ignore_index: int = -100,
) -> torch.Tensor:
    r"""Hinton KD blended with the hard-label cross-entropy, the objective of the seed's ``distillation_step``.

    .. math::
        \ell = \alpha\, T^2\, \mathrm{KL}(p_T \| p_S) + (1 - \alpha)\, \mathrm{CE}(z_S, y)

    ``alpha`` weighs the **soft** (teacher) term, as in the seed (``alpha=0.1, T=3``); many papers write the
    same blend with ``alpha`` on the hard term, so check which one a recipe means. The KD term is the mean
    over samples (positions) of :func:`kd_loss` — torch's ``batchmean`` for ``(N, C)`` inputs — and the CE
    term is the mean over the targets that are not ``ignore_index``. Ignored samples still receive the
    teacher's soft targets (the teacher needs no label); if every target is ignored the CE term is 0.

    Args:
        student_logits, teacher_logits: ``(N, C)`` or ``(N, C, d1, ...)``.
        target: class indices ``(N,)`` or ``(N, d1, ...)``.
        alpha: weight of the KD term in ``[0, 1]``.
        temperature: ``T > 0`` of the KD term (the CE term uses ``T = 1``).

    Example:
        >>> s = torch.tensor([[2.0, 0.0, -1.0]])
        >>> distillation_loss(s, s, torch.tensor([0]), alpha=0.5)
        tensor(0.0849)
    """
    a = _check_alpha(alpha)
    t = _check_temperature(temperature)
    _check_logit_pair(student_logits, teacher_logits, target=target)
    check_class_target(student_logits, target, ignore_index=ignore_index, input_name="student_logits")
    soft = kd_loss(student_logits, teacher_logits, t, "mean")
    hard = _cross_entropy(student_logits, target, ignore_index)
    return a * soft + (1.0 - a) * hard


class DistillationLoss(nn.Module):
    """Module form of :func:`distillation_loss`, seed signature ``DistillationLoss(alpha=0.1, temperature=3.0)``.

    Example:
        >>> loss_fn = DistillationLoss(alpha=0.5, temperature=3.0)
        >>> s = torch.tensor([[2.0, 0.0, -1.0]])
        >>> loss_fn(s, s, torch.tensor([0]))
        tensor(0.0849)
    """

    def __init__(self, alpha: float = 0.1, temperature: float = 3.0, ignore_index: int = -100) -> None:
        super().__init__()
        self.alpha = _check_alpha(alpha)
        self.temperature = _check_temperature(temperature)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        return distillation_loss(
            student_logits,
            teacher_logits,
            target,
            self.alpha,
            self.temperature,
            ignore_index=self.ignore_index,
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, temperature={self.temperature}"


# ----------------------------------------------------------------------------- Decoupled KD


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    *,
    warmup: float | None = None,
    epoch: float | None = None,
    reduction: str = "batchmean",
) -> torch.Tensor:
    r"""Decoupled knowledge distillation (Zhao et al., CVPR 2022, "Decoupled Knowledge Distillation").

    KD splits into a target-class term and a non-target-class term, weighted separately:

    .. math::
        \mathrm{TCKD} = \mathrm{KL}\big([p_{T,t},\,1 - p_{T,t}] \,\big\|\, [p_{S,t},\,1 - p_{S,t}]\big),\qquad
        \mathrm{NCKD} = \mathrm{KL}\big(\hat p_T \,\big\|\, \hat p_S\big)

    .. math::
        \ell = \min(\mathrm{epoch} / \mathrm{warmup},\, 1)\; T^2\,(\alpha\, \mathrm{TCKD} + \beta\, \mathrm{NCKD})

    where ``p = softmax(z / T)``, ``t`` is the true class and ``\hat p`` the distribution renormalised over
    the non-target classes. Everything is computed in log-space: ``log(1 - p_t)`` is the logsumexp of the
    non-target log-probabilities, and ``\hat p`` is a log_softmax with the target logit replaced by the
    most negative finite float (no ``inf``), so a teacher that is certain (``p_t = 1`` in float32) still gives
    a finite NCKD. The paper's CIFAR-100 setting is ``alpha=1, beta=8, T=4, warmup=20`` epochs; DKD is
    used together with the hard-label CE, which this function does not include.

    Args:
        student_logits, teacher_logits: ``(N, C)``, ``C >= 2``.
        target: ``(N,)`` class indices.
        alpha, beta: weights of TCKD and NCKD (``>= 0``).
        temperature: ``T > 0``.
        warmup, epoch: when ``warmup`` is given the loss is scaled by ``min(epoch / warmup, 1)``
            (``epoch`` then required; the reference code counts epochs from 1).
        reduction: ``'batchmean'`` (= ``'mean'`` here: mean over samples), ``'sum'`` or ``'none'`` (per sample).

    Example:
        >>> s = torch.tensor([[2.0, 0.0, -1.0]])
        >>> t = torch.tensor([[0.0, 2.0, -1.0]])
        >>> dkd_loss(s, t, torch.tensor([0]), temperature=1.0)
        tensor(2.6674)
        >>> dkd_loss(s, t, torch.tensor([0]), temperature=1.0, warmup=20, epoch=5)
        tensor(0.6668)
    """
    a = float(check_number("alpha", alpha, low=0.0))
    b = float(check_number("beta", beta, low=0.0))
    t = _check_temperature(temperature)
    check_reduction(reduction, _ROW_REDUCTIONS)
    factor = _warmup_factor(warmup, epoch)
    _check_logit_pair(student_logits, teacher_logits, target=target)
    check_ndim("student_logits", student_logits, 2, "2-D (N, C)")
    if student_logits.shape[1] < 2:
        raise LossValueError(
            f"student_logits has shape {shape_str(student_logits.shape)}, expected at least 2 classes"
        )
    check_class_target(student_logits, target, ignore_index=None, input_name="student_logits")

    gt = F.one_hot(target, student_logits.shape[1]).bool()
    log_s = _log_probs(student_logits, t, 1)
    log_t = _log_probs(teacher_logits, t, 1)
    tckd = _binary_kl(_target_vs_rest(log_t, gt), _target_vs_rest(log_s, gt))
    nckd = _kl_terms(_nontarget_log_probs(teacher_logits, gt, t), _nontarget_log_probs(student_logits, gt, t))
    nckd = torch.where(gt, torch.zeros_like(nckd), nckd).sum(1)
    rows = (a * tckd + b * nckd) * (t * t)
    if factor != 1.0:
        rows = rows * factor
    return _reduce_rows(rows, reduction, student_logits.shape[0])


def _warmup_factor(warmup: float | None, epoch: float | None) -> float:
    if warmup is None:
        return 1.0
    check_number("warmup", warmup, low=0.0, low_open=True)
    if epoch is None:
        raise LossValueError(
            "epoch is required when warmup is given (the loss is scaled by min(epoch / warmup, 1))"
        )
    check_number("epoch", epoch, low=0.0)
    return min(float(epoch) / float(warmup), 1.0)


def _target_vs_rest(log_p: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """``(N, 2)`` log-probabilities ``[log p_t, log(1 - p_t)]`` from ``(N, C)`` log-probabilities."""
    lowest = torch.finfo(log_p.dtype).min
    log_pt = log_p.masked_fill(~gt, lowest).logsumexp(1)
    log_rest = log_p.masked_fill(gt, lowest).logsumexp(1)
    return torch.stack((log_pt, log_rest), dim=1)


def _binary_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    return _kl_terms(log_p, log_q).sum(1)


def _nontarget_log_probs(logits: torch.Tensor, gt: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-probabilities renormalised over the non-target classes (target entry: a huge negative)."""
    x = _upcast_finite(logits, temperature) / temperature
    return F.log_softmax(x.masked_fill(gt, torch.finfo(x.dtype).min), dim=1)


class DKDLoss(nn.Module):
    """Module form of :func:`dkd_loss`; ``forward(student_logits, teacher_logits, target, epoch=None)``.

    Example:
        >>> loss_fn = DKDLoss(alpha=1.0, beta=8.0, temperature=4.0, warmup=20)
        >>> z = torch.tensor([[2.0, 0.0, -1.0]])
        >>> loss_fn(z, z, torch.tensor([0]), epoch=1)
        tensor(0.)
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup: float | None = None,
        reduction: str = "batchmean",
    ) -> None:
        super().__init__()
        self.alpha = float(check_number("alpha", alpha, low=0.0))
        self.beta = float(check_number("beta", beta, low=0.0))
        self.temperature = _check_temperature(temperature)
        self.warmup = (
            None if warmup is None else float(check_number("warmup", warmup, low=0.0, low_open=True))
        )
        self.reduction = check_reduction(reduction, _ROW_REDUCTIONS)

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        target: torch.Tensor,
        epoch: float | None = None,
    ) -> torch.Tensor:
        return dkd_loss(
            student_logits,
            teacher_logits,
            target,
            self.alpha,
            self.beta,
            self.temperature,
            warmup=self.warmup,
            epoch=epoch,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, temperature={self.temperature}, warmup={self.warmup}, "
            f"reduction={self.reduction!r}"
        )


# ----------------------------------------------------------------------------- generalised JSD (GKD)


def jsd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
    target: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    normalizer: Normalizer = None,
) -> torch.Tensor:
    r"""Generalised Jensen-Shannon divergence of GKD (Agarwal et al., ICLR 2024, "On-Policy Distillation
    of Language Models: Learning from Self-Generated Mistakes").

    .. math::
        M = \beta\, p_T + (1 - \beta)\, p_S,\qquad
        \mathrm{JSD}_\beta = \beta\, \mathrm{KL}(p_T \| M) + (1 - \beta)\, \mathrm{KL}(p_S \| M)

    per token, with ``p = softmax(z / T)`` over the vocabulary and ``log M`` computed as a logaddexp of
    the two log-probabilities plus ``log beta`` / ``log(1 - beta)``. ``beta = 0.5`` is the symmetric JSD.
    The two ends are special-cased to the KL divergences the GKD paper (and TRL) assign to them:
    ``beta = 0`` is the forward KL ``KL(p_T || p_S)`` and ``beta = 1`` the reverse KL ``KL(p_S || p_T)``.
    **The value jumps there**: for ``beta -> 0`` or ``-> 1`` the mixture tends to one of the two
    distributions and the JSD above tends to 0, so ``beta = 1e-3`` gives a tiny loss while ``beta = 0``
    gives the full forward KL. No ``T^2`` factor is applied (multiply by it yourself if you need one).

    Args:
        student_logits, teacher_logits: ``(N, V)`` or ``(B, L, V)`` (any leading dims): the vocabulary is
            the **last** axis, like language-model logits.
        beta: interpolation in ``[0, 1]``.
        temperature: ``T > 0``.
        target: optional labels of shape ``logits.shape[:-1]``; tokens equal to ``ignore_index`` are left
            out (their value is 0 and they leave the denominator).
        reduction: ``'mean'`` (over the counted tokens, not over ``B``), ``'sum'``, or ``'none'`` (per token).
        normalizer: with ``'mean'``, divide the sum by this instead (e.g. the token count of a whole
            gradient-accumulation window).

    Example:
        >>> s = torch.tensor([[2.0, 0.0, -1.0]])
        >>> t = torch.tensor([[0.0, 2.0, -1.0]])
        >>> jsd_loss(s, t, beta=0.0)  # forward KL(p_T || p_S)
        tensor(1.4592)
        >>> jsd_loss(s, t, beta=0.5)
        tensor(0.3140)
    """
    b = float(check_number("beta", beta, low=0.0, high=1.0))
    t = _check_temperature(temperature)
    check_reduction(reduction)
    check_normalizer(normalizer, reduction)
    _check_logit_pair(student_logits, teacher_logits, target=target)
    mask = None
    if target is not None:
        check_integer("target", target)
        if tuple(target.shape) != tuple(student_logits.shape[:-1]):
            raise LossValueError(
                f"target has shape {shape_str(target.shape)}, expected {shape_str(student_logits.shape[:-1])} "
                f"to match student_logits of shape {shape_str(student_logits.shape)} (vocabulary is the last axis)"
            )
        mask = target != ignore_index
    pair = _fused_rows_view(student_logits, teacher_logits, student_logits.dim() - 1)
    if pair is not None:
        s2, t2 = pair
        if b == 0.0:
            rows = kd_rows(s2, t2, t, scale=1.0)
        elif b == 1.0:
            rows = kd_rows(t2, s2, t, scale=1.0)
        else:
            rows = jsd_rows(s2, t2, b, t)
        per_token = rows.view(student_logits.shape[:-1])
        return reduce_loss(per_token, reduction, mask=mask, normalizer=normalizer)
    log_s = _log_probs(student_logits, t, -1)
    log_t = _log_probs(teacher_logits, t, -1)
    if b == 0.0:
        per_token = _kl_terms(log_t, log_s).sum(-1)
    elif b == 1.0:
        per_token = _kl_terms(log_s, log_t).sum(-1)
    else:
        log_m = torch.logaddexp(log_t + math.log(b), log_s + math.log1p(-b))
        per_token = (b * _kl_terms(log_t, log_m) + (1.0 - b) * _kl_terms(log_s, log_m)).sum(-1)
    return reduce_loss(per_token, reduction, mask=mask, normalizer=normalizer)


class JSDLoss(nn.Module):
    """Module form of :func:`jsd_loss`; ``forward(student_logits, teacher_logits, target=None, normalizer=None)``.

    Example:
        >>> JSDLoss(beta=0.5)(torch.zeros(2, 4, 8), torch.zeros(2, 4, 8))
        tensor(0.)
    """

    def __init__(
        self, beta: float = 0.5, temperature: float = 1.0, ignore_index: int = -100, reduction: str = "mean"
    ) -> None:
        super().__init__()
        self.beta = float(check_number("beta", beta, low=0.0, high=1.0))
        self.temperature = _check_temperature(temperature)
        self.ignore_index = check_int("ignore_index", ignore_index)
        self.reduction = check_reduction(reduction)

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        target: torch.Tensor | None = None,
        normalizer: Normalizer = None,
    ) -> torch.Tensor:
        return jsd_loss(
            student_logits,
            teacher_logits,
            self.beta,
            self.temperature,
            target,
            self.ignore_index,
            self.reduction,
            normalizer,
        )

    def extra_repr(self) -> str:
        return f"beta={self.beta}, temperature={self.temperature}, reduction={self.reduction!r}"


# ----------------------------------------------------------------------------- feature distillation

_FEATURE_KINDS = ("mse", "cosine")


def feature_distillation_loss(
    student_feat: torch.Tensor,
    teacher_feat: torch.Tensor,
    kind: str = "mse",
    reduction: str = "mean",
    *,
    dim: int = 1,
    eps: float = 1e-8,
) -> torch.Tensor:
    r"""Feature ("hint") distillation: match intermediate features (FitNets, Romero et al., ICLR 2015).

    .. math::
        \ell_\text{mse} = (f_S - f_T)^2 \ \text{(per element)},\qquad
        \ell_\text{cosine} = 1 - \frac{f_S \cdot f_T}{\max(\|f_S\|\,\|f_T\|, \epsilon)} \ \text{(per position, along dim)}

    ``'mse'`` reduced with ``'mean'`` is ``F.mse_loss``; ``'cosine'`` compares feature vectors along the
    channel axis ``dim`` and ignores their scale. Both inputs must have the same shape; when the widths
    differ use :class:`FeatureDistillationLoss`, which learns a projection of the student's features.

    Args:
        student_feat, teacher_feat: ``(N, D)``, ``(N, C, H, W)``, ... (channel axis ``dim``, default 1;
            ``dim=-1`` for ``(B, L, D)`` token features).
        kind: ``'mse'`` or ``'cosine'``.
        reduction: ``'mean' | 'sum' | 'none'`` over elements (mse) or positions (cosine).

    Example:
        >>> f = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        >>> feature_distillation_loss(f, 2 * f, kind="cosine")
        tensor(0.)
        >>> feature_distillation_loss(f, 2 * f, kind="mse")
        tensor(1.2500)
    """
    check_choice("kind", kind, _FEATURE_KINDS)
    check_reduction(reduction)
    check_number("eps", eps, low=0.0, low_open=True)
    check_floating("student_feat", student_feat)
    check_floating("teacher_feat", teacher_feat)
    check_same_device(("student_feat", student_feat), ("teacher_feat", teacher_feat))
    check_min_ndim("student_feat", student_feat, 1)
    check_same_shape("teacher_feat", teacher_feat, "student_feat", student_feat)
    s, t = upcast(student_feat), upcast(teacher_feat)
    if kind == "mse":
        return reduce_loss((s - t).square(), reduction)
    d = _norm_dim(dim, s.dim())
    cos = (s * t).sum(d) / (s.norm(dim=d) * t.norm(dim=d)).clamp_min(eps)
    return reduce_loss(1.0 - cos, reduction)


class FeatureDistillationLoss(nn.Module):
    """Feature distillation with an optional learnable projector (FitNets' regressor).

    When ``student_dim`` and ``teacher_dim`` are given and differ, the student's features go through a
    learnable linear map ``student_dim -> teacher_dim`` applied along the channel axis ``dim`` first (for
    ``(N, C, H, W)`` features this is a 1x1 convolution, for ``(N, D)`` a linear layer); otherwise they are
    compared as they are. Remember to give the projector's parameters to the optimizer
    (``loss_fn.parameters()``).

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> loss_fn = FeatureDistillationLoss(student_dim=8, teacher_dim=16, kind="mse")
        >>> loss_fn(torch.randn(2, 8, 4, 4), torch.randn(2, 16, 4, 4)).shape
        torch.Size([])
    """

    def __init__(
        self,
        student_dim: int | None = None,
        teacher_dim: int | None = None,
        kind: str = "mse",
        reduction: str = "mean",
        dim: int = 1,
    ) -> None:
        super().__init__()
        check_int("student_dim", student_dim, low=1, allow_none=True)
        check_int("teacher_dim", teacher_dim, low=1, allow_none=True)
        if (student_dim is None) != (teacher_dim is None):
            raise LossValueError(
                f"give both student_dim and teacher_dim (or neither), got student_dim={student_dim}, "
                f"teacher_dim={teacher_dim}"
            )
        self.kind = check_choice("kind", kind, _FEATURE_KINDS)
        self.reduction = check_reduction(reduction)
        self.dim = check_int("dim", dim)
        self.projector: nn.Linear | None = None
        if student_dim is not None and student_dim != teacher_dim:
            self.projector = nn.Linear(student_dim, int(teacher_dim))  # type: ignore[arg-type]

    def project(self, student_feat: torch.Tensor) -> torch.Tensor:
        """The student's features mapped to the teacher's width (unchanged without a projector)."""
        if self.projector is None:
            return student_feat
        check_floating("student_feat", student_feat)
        w, b = self.projector.weight, self.projector.bias
        check_same_device(("the projector's weight", w), ("student_feat", student_feat))
        d = _norm_dim(self.dim, student_feat.dim())
        width = self.projector.in_features
        if student_feat.shape[d] != width:
            raise LossValueError(
                f"student_feat has shape {shape_str(student_feat.shape)}, expected size {width} "
                f"(student_dim) along dim {self.dim}"
            )
        x = student_feat.movedim(d, -1)
        x = F.linear(upcast(x), w.to(upcast(x).dtype), b.to(upcast(x).dtype))
        return x.movedim(-1, d)

    def forward(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
        return feature_distillation_loss(
            self.project(student_feat), teacher_feat, self.kind, self.reduction, dim=self.dim
        )

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, reduction={self.reduction!r}, dim={self.dim}"


# ----------------------------------------------------------------------------- training helpers


class Distiller(nn.Module):
    """A student trained against a frozen teacher: ``loss = Distiller(student, teacher, loss)(x, target)``.

    * The teacher's parameters are frozen (``requires_grad=False``), it runs under ``torch.no_grad``
      and it **stays in eval mode**: ``distiller.train()`` puts only the student (and the loss, e.g. a
      feature projector) in training mode, so teacher BatchNorm statistics and dropout never change.
    * ``forward(x, target=None)`` returns the loss tensor: ``loss(student(x), teacher(x), target)``, or
      ``loss(student(x), teacher(x))`` when ``target`` is None (e.g. :class:`KDLoss`). The outputs of the
      last call are kept, detached, in :attr:`last_student_output` / :attr:`last_teacher_output` for
      metrics, so you do not run the student twice.
    * Optimise the student (and the loss's own parameters, if any), not the teacher:
      ``torch.optim.SGD([p for p in distiller.parameters() if p.requires_grad], lr=...)``.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> teacher = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
        >>> student = nn.Linear(4, 3)
        >>> distiller = Distiller(student, teacher, DistillationLoss(alpha=0.5, temperature=3.0))
        >>> opt = torch.optim.SGD(distiller.student.parameters(), lr=0.1)
        >>> x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        >>> loss = distiller(x, y)
        >>> loss.backward(); opt.step()
        >>> distiller.teacher.training, distiller.student.training
        (False, True)
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, loss: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        for name, mod in (("student", student), ("teacher", teacher)):
            if not isinstance(mod, nn.Module):
                raise LossTypeError(f"{name} must be an nn.Module, got {type(mod).__name__}")
        if not callable(loss):
            raise LossTypeError(f"loss must be callable, got {type(loss).__name__}")
        self.student = student
        self.teacher = teacher
        self.loss = loss
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.last_student_output: torch.Tensor | None = None
        self.last_teacher_output: torch.Tensor | None = None

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, x: Any, target: torch.Tensor | None = None) -> torch.Tensor:
        if self.teacher.training:  # someone called teacher.train() directly
            self.teacher.eval()
        with torch.no_grad():
            teacher_out = self.teacher(x)
        student_out = self.student(x)
        self.last_student_output = student_out.detach()
        self.last_teacher_output = teacher_out
        if target is None:
            return self.loss(student_out, teacher_out)
        return self.loss(student_out, teacher_out, target)


def distillation_step(
    student: nn.Module,
    teacher: nn.Module,
    data: torch.Tensor,
    target: torch.Tensor,
    optimizer: torch.optim.Optimizer | None = None,
    alpha: float = 0.1,
    T: float = 3,
) -> torch.Tensor:
    """One optimisation step of the seed's ``distillation_step`` (KD + CE, ``alpha`` on the KD term).

    Same objective as the seed (:func:`distillation_loss`, ``alpha=0.1, T=3``); the optimizer is passed
    in instead of read from a global. Differences from the seed code: the teacher runs under
    ``torch.no_grad`` and temporarily in eval mode (its previous mode is restored), so BatchNorm
    statistics and dropout of the teacher do not change. Returns the loss as a detached tensor
    (``float(...)`` it for logging; that is a device sync).

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
        >>> opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
        >>> loss = distillation_step(student, teacher, torch.randn(8, 4), torch.randint(0, 3, (8,)), opt)
        >>> loss.requires_grad
        False
    """
    if optimizer is None:
        raise LossTypeError(
            "distillation_step needs the optimizer: distillation_step(student, teacher, data, target, optimizer)"
        )
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise LossTypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    check_tensor("target", target)
    _check_alpha(alpha)
    check_number("T", T, low=0.0, low_open=True)  # the seed's name for the temperature
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad():
            teacher_out = teacher(data)
    finally:
        teacher.train(was_training)
    student_out = student(data)
    loss = distillation_loss(student_out, teacher_out, target, alpha, T)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()


_FAMILY = "distillation"
register(
    "kd",
    KDLoss,
    family=_FAMILY,
    functional=kd_loss,
    source="Hinton et al. 2015",
    notes="T^2 KL(p_teacher ‖ p_student); batchmean / mean / sum / none",
)
register(
    "distillation",
    DistillationLoss,
    family=_FAMILY,
    functional=distillation_loss,
    source="Hinton et al. 2015",
    notes="alpha * KD + (1 - alpha) * CE, alpha on the soft term (seed)",
)
register(
    "dkd",
    DKDLoss,
    family=_FAMILY,
    functional=dkd_loss,
    source="Zhao et al. CVPR 2022",
    notes="TCKD + NCKD in log-space; warm-up factor",
)
register(
    "jsd",
    JSDLoss,
    family=_FAMILY,
    functional=jsd_loss,
    source="Agarwal et al. ICLR 2024 (GKD)",
    notes="vocab last, token mean; beta=0 forward KL, beta=1 reverse KL (jump at the ends)",
)
register(
    "feature_distillation",
    FeatureDistillationLoss,
    family=_FAMILY,
    functional=feature_distillation_loss,
    source="Romero et al. 2015 (FitNets)",
    notes="mse / cosine, optional learnable projector",
)
