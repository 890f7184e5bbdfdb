r"""Topology-preserving segmentation losses: soft skeleton and clDice (Shit et al. 2021, CVPR).

The soft skeleton of a (probability) mask is built from morphological operations approximated by
pooling: the erosion is a min-pool over the axis-aligned 3-neighbourhoods (a cross: ``(3, 1)`` and
``(1, 3)`` in 2-D, three such windows in 3-D), the dilation a ``3^k`` max-pool, the opening a
dilation of the erosion. With ``I_0`` the mask and ``I_{j+1} = erode(I_j)``,

.. math::
    S_0 = \mathrm{relu}(I_0 - \mathrm{open}(I_0)), \qquad
    S_{j+1} = S_j + \mathrm{relu}(\delta_{j+1} - S_j \delta_{j+1}),\ \
    \delta_{j+1} = \mathrm{relu}(I_{j+1} - \mathrm{open}(I_{j+1}))

for ``iterations`` steps (the paper's Algorithm 1; the number of iterations should reach half the
largest structure width in pixels). On a 0/1 mask it is a morphological skeleton; on probabilities
it is differentiable (sub-gradients of the pooling). clDice compares the skeleton of each mask with
the other mask:

.. math::
    T_{prec} = \frac{|S_P \odot G| + s}{|S_P| + s}, \quad
    T_{sens} = \frac{|S_G \odot P| + s}{|S_G| + s}, \quad
    \ell = 1 - \frac{2\, T_{prec} T_{sens}}{T_{prec} + T_{sens}}

per image and class (the batch too with ``batch_dice``). ``s = smooth`` (default 1, the authors'
code) also settles empty masks: an empty target has ``T_sens = 1`` and a predicted skeleton lowers
``T_prec``, so false positives cost a positive loss with a gradient; an empty prediction of an
empty target costs 0.

Inputs follow the Dice family: ``(N, C, H, W)`` or ``(N, C, D, H, W)``, ``mode``, ``from_logits``,
``include_background``, ``ignore_index`` (ignored positions are zeroed in prediction and target
before the skeletons are taken), ``reduction='none'`` returning ``(N, C)`` (``(C,)`` with
``batch_dice``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import LossValueError, check_floating, check_int, check_number, check_reduction, shape_str
from .._reduction import reduce_loss
from ..registry import register
from ._inputs import check_input, check_options, drop_background, hard_target, probabilities
from .overlap import dice_loss

__all__ = ["ClDiceLoss", "DiceClDiceLoss", "cl_dice_loss", "dice_cl_dice_loss", "soft_skeleton"]


def _erode(x: torch.Tensor) -> torch.Tensor:
    """Min over the axis-aligned 3-neighbourhoods (a cross)."""
    k = x.dim() - 2
    pool = F.max_pool2d if k == 2 else F.max_pool3d
    out = None
    for axis in range(k):
        kernel = tuple(3 if a == axis else 1 for a in range(k))
        padding = tuple(1 if a == axis else 0 for a in range(k))
        eroded = -pool(-x, kernel, 1, padding)
        out = eroded if out is None else torch.minimum(out, eroded)
    assert out is not None
    return out


def _dilate(x: torch.Tensor) -> torch.Tensor:
    pool = F.max_pool2d if x.dim() == 4 else F.max_pool3d
    return pool(x, 3, 1, 1)


def _skeleton(x: torch.Tensor, iterations: int) -> torch.Tensor:
    skel = torch.relu(x - _dilate(_erode(x)))
    for _ in range(iterations):
        x = _erode(x)
        delta = torch.relu(x - _dilate(_erode(x)))
        skel = skel + torch.relu(delta - skel * delta)
    return skel


def _check_iterations(iterations: int) -> None:
    check_int("iterations", iterations, low=0)


def soft_skeleton(input: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    r"""Soft skeleton of masks or probabilities (Shit et al. 2021, Algorithm 1; module docstring).

    Args:
        input: values in ``[0, 1]``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``.
        iterations: erosion steps (about half the widest structure, in pixels).

    Example:
        >>> bar = torch.zeros(1, 1, 5, 7)
        >>> bar[0, 0, 1:4, 1:6] = 1.0  # a 3-pixel-thick bar
        >>> soft_skeleton(bar)[0, 0]
        tensor([[0., 0., 0., 0., 0., 0., 0.],
                [0., 0., 0., 0., 0., 0., 0.],
                [0., 1., 1., 1., 1., 1., 0.],
                [0., 0., 0., 0., 0., 0., 0.],
                [0., 0., 0., 0., 0., 0., 0.]])
    """
    check_floating("input", input)
    _check_iterations(iterations)
    if input.dim() not in (4, 5):
        raise LossValueError(
            f"input must be (N, C, H, W) or (N, C, D, H, W), got shape {shape_str(input.shape)}"
        )
    return _skeleton(input, iterations)


def _cl_dice_entries(
    input: torch.Tensor,
    target: torch.Tensor,
    mode: str,
    from_logits: bool,
    iterations: int,
    smooth: float,
    include_background: bool,
    batch_dice: bool,
    ignore_index: int | None,
) -> torch.Tensor:
    """Per-(image, class) clDice losses ``(N, C)`` (``(C,)`` with ``batch_dice``)."""
    check_options(mode, ignore_index, include_background)
    _check_iterations(iterations)
    check_number("smooth", smooth, low=0.0, low_open=True)
    check_input(input, target, mode, spatial=(2, 3))
    p = probabilities(input, mode, from_logits)
    g, valid = hard_target(input, target, mode, ignore_index, p.dtype)
    if valid is not None:
        p = p * valid.to(p.dtype)
    p, g = drop_background(p, include_background), drop_background(g, include_background)
    skel_p, skel_g = _skeleton(p, iterations), _skeleton(g, iterations)
    dims = (0, *range(2, p.dim())) if batch_dice else tuple(range(2, p.dim()))
    s = float(smooth)
    t_prec = ((skel_p * g).sum(dims) + s) / (skel_p.sum(dims) + s)
    t_sens = ((skel_g * p).sum(dims) + s) / (skel_g.sum(dims) + s)
    return 1.0 - 2.0 * t_prec * t_sens / (t_prec + t_sens)


def cl_dice_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    from_logits: bool = True,
    iterations: int = 3,
    smooth: float = 1.0,
    include_background: bool = True,
    batch_dice: bool = False,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Soft clDice loss (Shit et al. 2021): centerline Dice of soft skeletons, 2-D and 3-D.

    ``1 - 2 T_prec T_sens / (T_prec + T_sens)`` with the topology precision (the predicted skeleton
    inside the target) and sensitivity (the target's skeleton covered by the prediction); formulas,
    skeleton and empty masks in the module docstring. The authors train with
    :func:`dice_cl_dice_loss` (clDice alone does not penalise thickness).

    Args:
        input: logits ``(N, C, H, W)`` or ``(N, C, D, H, W)`` (probabilities with ``from_logits=False``).
        target: class indices ``(N, H, W)`` / ``(N, D, H, W)`` or a 0/1 mask of ``input``'s shape.
        mode: ``'multiclass'``, ``'binary'`` or ``'multilabel'``.
        from_logits: apply softmax / sigmoid.
        iterations: skeleton iterations (about half the widest structure, in pixels).
        smooth: added to numerators and denominators (``> 0``).
        include_background: ``False`` drops channel 0 (the authors' code does).
        batch_dice: sum over the batch before the ratios.
        ignore_index: class-index value whose positions are zeroed in prediction and target.
        reduction: ``'none'`` (``(N, C)`` or ``(C,)``), ``'mean'`` or ``'sum'``.

    Example:
        >>> target = torch.zeros(1, 7, 7, dtype=torch.long)
        >>> target[0, 3, :] = 1  # a one-pixel line
        >>> probs = target.unsqueeze(1).float()
        >>> cl_dice_loss(probs, target, mode="binary", from_logits=False)
        tensor(0.)
        >>> # nothing found: T_prec = 1, T_sens = (0 + 1) / (7 + 1)
        >>> cl_dice_loss(torch.zeros(1, 1, 7, 7), target, mode="binary", from_logits=False)
        tensor(0.7778)
    """
    check_reduction(reduction)
    loss = _cl_dice_entries(
        input, target, mode, from_logits, iterations, smooth, include_background, batch_dice, ignore_index
    )
    return reduce_loss(loss, reduction)


def dice_cl_dice_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    from_logits: bool = True,
    alpha: float = 0.5,
    iterations: int = 3,
    smooth: float = 1.0,
    include_background: bool = True,
    batch_dice: bool = False,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Soft Dice + clDice (Shit et al. 2021): ``(1 - alpha) * dice + alpha * cl_dice``.

    The Dice term is :func:`losskit.segmentation.dice_loss` with its defaults (``smooth=0``, empty
    masks with ``empty_smooth=1``) on the same ``mode`` / ``include_background`` / ``batch_dice`` /
    ``ignore_index``; ``smooth`` and ``iterations`` are clDice's. Combined per (image, class)
    before the reduction. ``alpha`` in ``[0, 1]`` (0.5 in the paper's code).

    Example:
        >>> target = torch.zeros(1, 7, 7, dtype=torch.long)
        >>> target[0, 3, :] = 1
        >>> dice_cl_dice_loss(torch.zeros(1, 1, 7, 7), target, mode="binary", from_logits=False)
        tensor(0.8889)
    """
    check_reduction(reduction)
    check_number("alpha", alpha, low=0.0, high=1.0)
    cl = _cl_dice_entries(
        input, target, mode, from_logits, iterations, smooth, include_background, batch_dice, ignore_index
    )
    dice = dice_loss(
        input,
        target,
        mode=mode,
        from_logits=from_logits,
        include_background=include_background,
        batch_dice=batch_dice,
        ignore_index=ignore_index,
        reduction="none",
    )
    return reduce_loss((1.0 - float(alpha)) * dice + float(alpha) * cl, reduction)


# ----------------------------------------------------------------------------- modules


class ClDiceLoss(nn.Module):
    """Module form of :func:`cl_dice_loss`.

    Example:
        >>> loss_fn = ClDiceLoss(iterations=5)
        >>> loss_fn(torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16))).shape
        torch.Size([])
    """

    def __init__(
        self,
        mode: str = "multiclass",
        from_logits: bool = True,
        iterations: int = 3,
        smooth: float = 1.0,
        include_background: bool = True,
        batch_dice: bool = False,
        ignore_index: int | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        check_options(mode, ignore_index, include_background)
        _check_iterations(iterations)
        check_number("smooth", smooth, low=0.0, low_open=True)
        self.reduction = check_reduction(reduction)
        self.mode = mode
        self.from_logits = bool(from_logits)
        self.iterations = iterations
        self.smooth = float(smooth)
        self.include_background = bool(include_background)
        self.batch_dice = bool(batch_dice)
        self.ignore_index = ignore_index

    def _options(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "from_logits": self.from_logits,
            "iterations": self.iterations,
            "smooth": self.smooth,
            "include_background": self.include_background,
            "batch_dice": self.batch_dice,
            "ignore_index": self.ignore_index,
            "reduction": self.reduction,
        }

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cl_dice_loss(input, target, **self._options())

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, iterations={self.iterations}, reduction={self.reduction!r}"


class DiceClDiceLoss(ClDiceLoss):
    """Module form of :func:`dice_cl_dice_loss`.

    Example:
        >>> loss_fn = DiceClDiceLoss(alpha=0.3)
        >>> loss_fn(torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16))).shape
        torch.Size([])
    """

    def __init__(self, *args: Any, alpha: float = 0.5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_number("alpha", alpha, low=0.0, high=1.0)
        self.alpha = float(alpha)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return dice_cl_dice_loss(input, target, alpha=self.alpha, **self._options())

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, " + super().extra_repr()


_FAMILY = "segmentation"
register(
    "cl_dice",
    ClDiceLoss,
    family=_FAMILY,
    functional=cl_dice_loss,
    source="Shit et al. 2021",
    notes="centerline Dice on soft skeletons (iterated min/max pooling), 2-D and 3-D",
)
register(
    "dice_cl_dice",
    DiceClDiceLoss,
    family=_FAMILY,
    functional=dice_cl_dice_loss,
    source="Shit et al. 2021",
    notes="(1 - alpha) soft Dice + alpha clDice",
)
