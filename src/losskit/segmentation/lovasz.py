r"""Lovász losses (Berman, Rannen Triki & Blaschko 2018): the Jaccard index optimised directly.

The Jaccard loss ``1 - |y* ∩ ŷ| / |y* ∪ ŷ|`` of a class is a submodular set function of the set of
mispredicted pixels; its Lovász extension :math:`\bar\Delta` is convex, piecewise linear and exact
on 0/1 error vectors. For a vector of non-negative pixel errors ``m`` sorted in decreasing order
(:math:`m_{\pi_1} \ge m_{\pi_2} \ge \dots`),

.. math::
    \bar\Delta(m) = \sum_i m_{\pi_i}\, g_i, \qquad g_i = \Delta(\{\pi_1, \dots, \pi_i\}) -
    \Delta(\{\pi_1, \dots, \pi_{i-1}\}),

with :math:`\Delta(A) = 1 - \frac{|G| - |G \cap A|}{|G| + |A \setminus G|}` for the ground-truth set
``G``. The gradient with respect to ``m`` is the vector ``g`` scattered back through the sort, which
is what autograd computes here (one sort and two cumulative sums per class; no Python loop over
images or classes).

* :func:`lovasz_hinge_loss` (binary): ``m = relu(1 - x s)`` with the logit ``x`` and the sign
  ``s = 2 g - 1``.
* :func:`lovasz_softmax_loss` (multi-class): ``m_c = |g_c - p_c|`` on softmax probabilities,
  averaged over the classes (``'present'``: classes that occur in the target, the paper's default;
  ``'all'``; or an explicit list).

``per_image=True`` evaluates the loss on each image and averages (``reduction='none'`` returns the
``(N,)`` losses); ``per_image=False`` pools the pixels of the whole batch into one set (``'none'``
returns a 0-dim tensor). Ignored pixels (``ignore_index``) leave the sets entirely.

**Empty masks**: for an image with no foreground the hinge loss is the largest margin violation
``max_i relu(1 + x_i)``, so a predicted false positive costs a positive loss with gradient and a
confidently empty prediction (all logits ``<= -1``) costs 0. An image whose pixels are all ignored
contributes a graph-connected 0 (it still counts in the mean over images).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .._checks import LossTypeError, LossValueError, check_reduction, shape_str
from .._reduction import reduce_loss, upcast
from ..registry import register
from ._inputs import check_input, check_options, hard_target, probabilities, propagate_nonfinite

__all__ = ["LovaszHingeLoss", "LovaszSoftmaxLoss", "lovasz_hinge_loss", "lovasz_softmax_loss"]


def _lovasz_extension(
    errors: torch.Tensor, fg: torch.Tensor, valid: torch.Tensor | None, hinge: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lovász extension of the Jaccard loss along the last dim of ``(B, K, P)`` errors.

    Returns the ``(B, K)`` losses and the number of ground-truth pixels per set. Invalid pixels
    sort last (their error is set to ``-inf``) and contribute nothing.
    """
    if valid is not None:
        errors = errors.masked_fill(~valid, float("-inf"))
    err_sorted, perm = torch.sort(errors, dim=-1, descending=True)
    fg_sorted = fg.gather(-1, perm)
    gts = fg.sum(-1, keepdim=True)
    intersection = gts - fg_sorted.cumsum(-1)
    union = gts + (1.0 - fg_sorted).cumsum(-1)  # >= 1 at every position
    jaccard = 1.0 - intersection / union
    grad = torch.cat((jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]), dim=-1)
    if hinge:
        err_sorted = torch.relu(err_sorted)
    terms = err_sorted * grad
    if valid is not None:
        valid_sorted = valid.expand_as(errors).gather(-1, perm)
        terms = torch.where(valid_sorted, terms, terms.new_zeros(()))
    return terms.sum(-1), gts.squeeze(-1)


def _sets(t: torch.Tensor, per_image: bool) -> torch.Tensor:
    """``(N, K, d1, ...)`` -> ``(N, K, P)`` (per image) or ``(1, K, N * P)`` (the batch as one set)."""
    n, k = t.shape[:2]
    flat = t.reshape(n, k, math.prod(t.shape[2:]))
    return flat if per_image else flat.transpose(0, 1).reshape(1, k, -1)


def _finish(loss: torch.Tensor, per_image: bool, reduction: str) -> torch.Tensor:
    """``loss`` is ``(B,)``: per image, or ``(1,)`` for the pooled batch (``'none'``: 0-dim)."""
    if not per_image:
        loss = loss.squeeze(0)
    return reduce_loss(loss, reduction)


def _check_classes(classes: str | Sequence[int]) -> str | tuple[int, ...]:
    if isinstance(classes, str):
        if classes not in ("present", "all"):
            raise LossValueError(
                f"classes must be 'present', 'all' or a list of class indices, got {classes!r}"
            )
        return classes
    values: object = classes.tolist() if isinstance(classes, torch.Tensor) else classes
    if not isinstance(values, Sequence) or not all(
        isinstance(c, int) and not isinstance(c, bool) for c in values
    ):
        raise LossTypeError(
            f"classes must be 'present', 'all' or a list of class indices, got {type(values).__name__} {values!r}"
        )
    if len(values) == 0:
        raise LossValueError("classes must name at least one class, got an empty list")
    return tuple(values)


def lovasz_hinge_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    per_image: bool = True,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Lovász hinge loss for binary segmentation (Berman et al. 2018, eq. 11).

    .. math::
        \ell = \bar\Delta_{J}\big(\mathrm{relu}(1 - x \odot s)\big), \quad s = 2 g - 1

    the Lovász extension of the Jaccard loss (module docstring) on the hinge errors of the logits
    ``x``, per image (``per_image=True``, the paper's setting for binary tasks) or over the batch.

    Args:
        input: logits ``(N, 1, d1, ...)``.
        target: 0/1 class indices ``(N, d1, ...)`` (or a 0/1 mask of ``input``'s shape).
        per_image: one Jaccard set per image (mean over images) instead of one for the batch.
        ignore_index: class-index value whose positions are left out.
        reduction: ``'none'`` (``(N,)`` per image, 0-dim otherwise), ``'mean'`` or ``'sum'``.

    Example:
        >>> logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])  # (N=1, C=1, 2, 2)
        >>> target = torch.tensor([[[1, 0], [1, 0]]])
        >>> lovasz_hinge_loss(logits, target)  # errors 0, 0, 0.5, 0: 0.5 * (1 - 1/2)
        tensor(0.2500)
    """
    check_reduction(reduction)
    check_options("binary", ignore_index, True)
    check_input(input, target, "binary")
    x = upcast(input)
    g, valid = hard_target(input, target, "binary", ignore_index, x.dtype)
    errors = 1.0 - x * (2.0 * g - 1.0)
    sets_valid = None if valid is None else _sets(valid, per_image)
    loss = _lovasz_extension(_sets(errors, per_image), _sets(g, per_image), sets_valid, True)[0].squeeze(-1)
    # relu(1 - x s) is 0 for x = +inf on a positive pixel: keep a non-finite logit visible
    loss = propagate_nonfinite(loss, _sets(x, per_image))
    return _finish(loss, per_image, reduction)


def lovasz_softmax_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    classes: str | Sequence[int] = "present",
    per_image: bool = False,
    ignore_index: int | None = None,
    from_logits: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Lovász-Softmax loss for multi-class segmentation (Berman et al. 2018, eq. 12).

    .. math::
        \ell = \frac{1}{|\mathcal C|} \sum_{c \in \mathcal C} \bar\Delta_{J_c}(m_c), \qquad
        m_{ic} = |g_{ic} - p_{ic}|

    on softmax probabilities ``p``: the Lovász extension of each class's Jaccard loss (module
    docstring), averaged over the classes ``C``: those present in the target of the set
    (``'present'``, the paper's default; 0 when none is), every class (``'all'``) or the given
    list. ``per_image=False`` (the paper's default) pools the batch into one set.

    Args:
        input: logits ``(N, C, d1, ...)`` (probabilities with ``from_logits=False``).
        target: class indices ``(N, d1, ...)``.
        classes: ``'present'``, ``'all'`` or a sequence of class indices.
        per_image: one Jaccard set per image (mean over images) instead of one for the batch.
        ignore_index: class-index value whose positions are left out.
        from_logits: apply the softmax over dim 1.
        reduction: ``'none'`` (``(N,)`` per image, 0-dim otherwise), ``'mean'`` or ``'sum'``.

    Example:
        >>> probs = torch.tensor([[[0.8, 0.4]], [[0.2, 0.6]]]).unsqueeze(0)  # (N=1, C=2, 1, 2)
        >>> target = torch.tensor([[[0, 1]]])
        >>> # class 0: errors (0.2, 0.4) -> 0.4 / 2 + 0.2 / 2; class 1: errors (0.2, 0.4) -> 0.4 * 1
        >>> lovasz_softmax_loss(probs, target, from_logits=False)
        tensor(0.3500)
    """
    check_reduction(reduction)
    check_options("multiclass", ignore_index, True)
    classes = _check_classes(classes)
    check_input(input, target, "multiclass")
    if target.dim() != input.dim() - 1:
        raise LossValueError(
            f"target has shape {shape_str(target.shape)}, expected class indices of shape "
            f"{shape_str((input.shape[0], *input.shape[2:]))} to match input"
        )
    p = probabilities(input, "multiclass", from_logits)
    g, valid = hard_target(input, target, "multiclass", ignore_index, p.dtype)
    num_classes = input.shape[1]
    if isinstance(classes, tuple):
        bad = [c for c in classes if not 0 <= c < num_classes]
        if bad:
            raise LossValueError(f"classes contains {bad[0]}, expected class indices in [0, {num_classes})")
        index = torch.tensor(classes, device=input.device)
        p, g = p.index_select(1, index), g.index_select(1, index)
    errors = (g - p).abs()
    sets_valid = None if valid is None else _sets(valid, per_image)
    loss, gts = _lovasz_extension(_sets(errors, per_image), _sets(g, per_image), sets_valid, False)
    if classes == "present":
        present = (gts > 0).to(loss.dtype)
        loss = (loss * present).sum(-1) / present.sum(-1).clamp_min(1.0)
    else:
        loss = loss.mean(-1)
    return _finish(loss, per_image, reduction)


# ----------------------------------------------------------------------------- modules


class LovaszHingeLoss(nn.Module):
    """Module form of :func:`lovasz_hinge_loss`.

    Example:
        >>> loss_fn = LovaszHingeLoss()
        >>> loss_fn(torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]]), torch.tensor([[[1, 0], [1, 0]]]))
        tensor(0.2500)
    """

    def __init__(
        self, per_image: bool = True, ignore_index: int | None = None, reduction: str = "mean"
    ) -> None:
        super().__init__()
        check_options("binary", ignore_index, True)
        self.reduction = check_reduction(reduction)
        self.per_image = bool(per_image)
        self.ignore_index = ignore_index

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return lovasz_hinge_loss(input, target, self.per_image, self.ignore_index, self.reduction)

    def extra_repr(self) -> str:
        return f"per_image={self.per_image}, reduction={self.reduction!r}"


class LovaszSoftmaxLoss(nn.Module):
    """Module form of :func:`lovasz_softmax_loss`.

    Example:
        >>> loss_fn = LovaszSoftmaxLoss(classes="all", per_image=True)
        >>> loss_fn(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))).shape
        torch.Size([])
    """

    def __init__(
        self,
        classes: str | Sequence[int] = "present",
        per_image: bool = False,
        ignore_index: int | None = None,
        from_logits: bool = True,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        check_options("multiclass", ignore_index, True)
        self.reduction = check_reduction(reduction)
        self.classes = _check_classes(classes)
        self.per_image = bool(per_image)
        self.ignore_index = ignore_index
        self.from_logits = bool(from_logits)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return lovasz_softmax_loss(
            input, target, self.classes, self.per_image, self.ignore_index, self.from_logits, self.reduction
        )

    def extra_repr(self) -> str:
        return f"classes={self.classes!r}, per_image={self.per_image}, reduction={self.reduction!r}"


_FAMILY = "segmentation"
register(
    "lovasz_hinge",
    LovaszHingeLoss,
    family=_FAMILY,
    functional=lovasz_hinge_loss,
    source="Berman et al. 2018",
    notes="binary; Lovász extension of the Jaccard loss on hinge errors, per image or per batch",
)
register(
    "lovasz_softmax",
    LovaszSoftmaxLoss,
    family=_FAMILY,
    functional=lovasz_softmax_loss,
    source="Berman et al. 2018",
    notes="multi-class; classes 'present' / 'all' / list; exact gradient through one sort per class",
)
