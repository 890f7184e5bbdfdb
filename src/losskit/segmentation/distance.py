r"""Distance-based segmentation losses: boundary loss and Hausdorff distance-transform loss.

Both need Euclidean distance transforms of masks; :func:`distance_transform` computes them in torch
on the input's device (no SciPy at run time, CPU or GPU), **exactly**: it equals
``scipy.ndimage.distance_transform_edt`` (with ``sampling=spacing``) up to float32 rounding. It is
separable: along the last spatial axis the distance to the nearest zero of the row comes from two
cumulative scans, and along every other axis the squared distances are combined by the exact
lower envelope ``D(q) = min_p f(p) + ((q - p) h)^2``, evaluated by shifting over ``|q - p| = 1, 2,
...`` and stopping once ``(|q - p| h)^2`` exceeds the largest distance found (no shift beyond it can
lower any value). The cost is ``O(M * s)`` for ``M`` elements and a largest distance of ``s``
pixels (at most the axis length), in tensor operations: well suited to GPUs; on a CPU SciPy's
sequential ``O(M)`` algorithm is faster, so for CPU training the maps of
:func:`signed_distance_map` can be computed once in the data pipeline and passed to
:func:`boundary_loss` as ``distance_maps``. The transforms are never differentiated (the targets
and the thresholded predictions they come from are constants).

**Empty masks**: a mask with no foreground (or no background) has no boundary. Its distances are
capped at the image diagonal ``D_max = sqrt(sum_i (n_i h_i)^2)``, so an empty target still makes
predicted foreground cost a positive loss with a gradient, growing with the predicted mass. Both
losses are finite for empty masks.

Inputs follow the Dice family (:mod:`losskit.segmentation.overlap`): ``(N, C, d1, ..., dk)``, class
axis 1, ``mode`` ``'multiclass'`` (softmax) / ``'binary'`` (``C == 1``) / ``'multilabel'``
(sigmoid, dense 0/1 target), ``from_logits``, ``include_background``, ``ignore_index`` (class-index
targets; ignored positions leave the means and count as background for the distance maps).
``reduction='none'`` returns the per-(image, class) means ``(N, C)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .._checks import (
    LossTypeError,
    LossValueError,
    can_read_values,
    check_number,
    check_reduction,
    check_same_device,
    check_tensor,
    shape_str,
)
from .._reduction import reduce_loss
from ..registry import register
from ._inputs import check_input, check_options, drop_background, hard_target, probabilities

__all__ = [
    "BoundaryLoss",
    "HausdorffDTLoss",
    "boundary_loss",
    "distance_transform",
    "hausdorff_dt_loss",
    "signed_distance_map",
]

_CHECK_EVERY = 4  # shifts between two early-stop checks (each is one device sync)


# ----------------------------------------------------------------------------- distance transform


def _spacing(spacing: float | Sequence[float] | None, k: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * k
    if isinstance(spacing, (int, float)) and not isinstance(spacing, bool):
        values: Sequence[float] = (float(spacing),) * k
    elif isinstance(spacing, Sequence) and not isinstance(spacing, str):
        values = spacing
    else:
        raise LossTypeError(
            f"spacing must be a number or a sequence of {k} numbers, got {type(spacing).__name__}"
        )
    if len(values) != k:
        raise LossValueError(f"spacing has {len(values)} entries, expected {k} (one per spatial dimension)")
    for v in values:
        check_number("spacing", v, low=0.0, low_open=True)
    return tuple(float(v) for v in values)


def _row_distance(feature: torch.Tensor, dim: int) -> torch.Tensor:
    """Index distance along ``dim`` to the nearest ``True`` of ``feature`` (> length where none)."""
    n = feature.shape[dim]
    shape = [1] * feature.dim()
    shape[dim] = n
    idx = torch.arange(n, device=feature.device).reshape(shape).expand(feature.shape)
    left = torch.where(feature, idx, -2 * n - 1).cummax(dim).values
    right = torch.where(feature, idx, 3 * n + 1).flip(dim).cummin(dim).values.flip(dim)
    return torch.minimum(idx - left, right - idx)


def _envelope(f: torch.Tensor, dim: int, h: float, far: float, stop: bool) -> torch.Tensor:
    """``D(q) = min_p f(p) + ((q - p) h)^2`` along ``dim`` (exact; see the module docstring)."""
    n = f.shape[dim]
    out = f.clone()
    # lines without any finite entry stay at `far`; in the others an entry still at `far` is not
    # reached yet, which keeps the loop going
    reachable = (f < far).any(dim, keepdim=True) if stop else None
    for s in range(1, n):
        step = (s * h) ** 2
        # positions q >= s take p = q - s; positions q < n - s take p = q + s
        head = out.narrow(dim, s, n - s)
        head.copy_(torch.minimum(head, f.narrow(dim, 0, n - s) + step))
        tail = out.narrow(dim, 0, n - s)
        tail.copy_(torch.minimum(tail, f.narrow(dim, s, n - s) + step))
        if reachable is not None and s % _CHECK_EVERY == 0:  # set exactly when stop
            largest = torch.where(reachable, out, out.new_zeros(())).amax()
            if ((s + 1) * h) ** 2 > float(largest):
                break
    return out


def distance_transform(
    mask: torch.Tensor, spatial_dims: int | None = None, spacing: float | Sequence[float] | None = None
) -> torch.Tensor:
    r"""Exact Euclidean distance transform: for every non-zero element, the distance to the nearest zero.

    The same quantity as ``scipy.ndimage.distance_transform_edt(mask, sampling=spacing)``,
    computed in torch on ``mask``'s device (algorithm and cost: module docstring). Zero elements get
    0; in an image without a zero element every element gets ``inf``.

    Args:
        mask: boolean (or 0/1) tensor; its last ``spatial_dims`` dimensions form one image, the
            leading ones index images.
        spatial_dims: number of trailing spatial dimensions (default: all of ``mask``'s).
        spacing: element size along each spatial dimension (a number for all of them).

    Returns:
        float32 distances of ``mask``'s shape (float64 for a float64 mask).

    Example:
        >>> distance_transform(torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]))
        tensor([[0.0000, 1.0000, 2.0000, 3.0000],
                [1.0000, 1.4142, 2.2361, 3.1623]])
    """
    check_tensor("mask", mask)
    if mask.is_complex():
        raise LossTypeError(f"mask must be real, got dtype {mask.dtype}")
    k = mask.dim() if spatial_dims is None else spatial_dims
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= mask.dim():
        raise LossValueError(f"spatial_dims must be an int in [1, {mask.dim()}], got {spatial_dims!r}")
    h = _spacing(spacing, k)
    dtype = torch.float64 if mask.dtype == torch.float64 else torch.float32
    dims = list(range(mask.dim() - k, mask.dim()))
    feature = mask == 0
    if mask.numel() == 0:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    # beyond any real squared distance: the image diagonal squared, plus one
    far = sum((mask.shape[d] * hd) ** 2 for d, hd in zip(dims, h)) + 1.0
    rows = _row_distance(feature, dims[-1]).to(dtype)
    f = torch.where(rows <= mask.shape[dims[-1]], (rows * h[-1]) ** 2, far)
    stop = can_read_values(mask)
    for d, hd in zip(dims[:-1], h[:-1]):
        f = _envelope(f, d, hd, far, stop)
    return torch.where(f < far, f, float("inf")).sqrt()


def _capped_distance(mask: torch.Tensor, k: int, h: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``distance_transform`` of both ``mask`` and ``~mask`` in one call, capped at the diagonal."""
    both = torch.stack((mask, ~mask))
    diagonal = math.sqrt(sum((n * hd) ** 2 for n, hd in zip(mask.shape[-k:], h)))
    dist = distance_transform(both, k, h).clamp_max(diagonal)
    return dist[0], dist[1]


def signed_distance_map(
    mask: torch.Tensor, spatial_dims: int | None = None, spacing: float | Sequence[float] | None = None
) -> torch.Tensor:
    r"""Signed distance map of a 0/1 mask (Kervadec et al. 2019), as :func:`boundary_loss` uses it.

    .. math::
        \phi(q) = d(q, G) \text{ outside } G, \qquad \phi(q) = -(d(q, \bar G) - h) \text{ inside}

    with Euclidean distances and ``h`` the smallest element spacing (1 by default: the
    discretisation of the authors' code, where the innermost boundary pixels get 0; their code
    subtracts 1 also with a spacing, which makes the inside positive for spacings below 1).
    Distances are capped at the image diagonal ``D_max``: a mask without foreground gives
    ``D_max`` everywhere, one without background ``-(D_max - h)``.

    Args:
        mask: boolean or 0/1 tensor, the last ``spatial_dims`` dimensions one image (e.g. a
            ``(N, C, H, W)`` one-hot target with ``spatial_dims=2``).
        spatial_dims: number of trailing spatial dimensions (default: all).
        spacing: element size per spatial dimension.

    Example:
        >>> signed_distance_map(torch.tensor([0, 1, 1, 1, 0, 0]))
        tensor([ 1.,  0., -1.,  0.,  1.,  2.])
    """
    check_tensor("mask", mask)
    k = mask.dim() if spatial_dims is None else spatial_dims
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= mask.dim():
        raise LossValueError(f"spatial_dims must be an int in [1, {mask.dim()}], got {spatial_dims!r}")
    fg = mask != 0
    h = _spacing(spacing, k)
    inside, outside = _capped_distance(fg, k, h)
    # outside = distance of background elements to the foreground, inside = of foreground to background
    return torch.where(fg, min(h) - inside, outside)


# ----------------------------------------------------------------------------- losses


def _per_image_mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean over the spatial positions that count: ``(N, C, d...) -> (N, C)``."""
    spatial = tuple(range(2, values.dim()))
    if valid is None:
        size = math.prod(values.shape[2:])
        return values.sum(spatial) / max(size, 1)
    w = valid.to(values.dtype)
    total = torch.where(valid, values, values.new_zeros(())).sum(spatial)
    return total / w.sum(spatial).clamp_min(1.0)


def _prepare(
    input: torch.Tensor,
    target: torch.Tensor | None,
    mode: str,
    from_logits: bool,
    include_background: bool,
    ignore_index: int | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Probabilities, hard target (None without a target) and valid mask, background dropped."""
    check_options(mode, ignore_index, include_background)
    check_input(input, target, mode)
    p = probabilities(input, mode, from_logits)
    g = valid = None
    if target is not None:
        g, valid = hard_target(input, target, mode, ignore_index, p.dtype)
        g = drop_background(g, include_background)
    return drop_background(p, include_background), g, valid


def boundary_loss(
    input: torch.Tensor,
    target: torch.Tensor | None = None,
    mode: str = "multiclass",
    from_logits: bool = True,
    include_background: bool = True,
    ignore_index: int | None = None,
    reduction: str = "mean",
    *,
    distance_maps: torch.Tensor | None = None,
    spacing: float | Sequence[float] | None = None,
) -> torch.Tensor:
    r"""Boundary loss (Kervadec et al. 2019, MIDL / Medical Image Analysis 2021).

    .. math::
        \ell_{nc} = \frac{1}{|\Omega|} \sum_{q \in \Omega} \phi_{nc}(q)\, p_{nc}(q)

    the predicted probabilities weighted by the signed distance map ``phi`` of the target class
    (:func:`signed_distance_map`; negative inside, positive outside), so mass predicted far from
    the target costs in proportion to its distance. The loss is negative at its optimum (the
    probabilities fill the target); the paper adds it to a region loss (Dice) with a weight that
    grows during training, and its code uses the foreground classes only
    (``include_background=False``). The maps are computed from ``target`` on the input's device
    (module docstring), or passed precomputed as ``distance_maps``.

    Args:
        input: logits ``(N, C, d1, ...)`` (probabilities with ``from_logits=False``).
        target: class indices ``(N, d1, ...)`` or a 0/1 mask of ``input``'s shape; optional when
            ``distance_maps`` is given (then it only supplies the ignored positions).
        mode: ``'multiclass'``, ``'binary'`` or ``'multilabel'``.
        from_logits: apply softmax / sigmoid.
        include_background: ``False`` drops channel 0.
        ignore_index: class-index value whose positions are left out of the mean.
        reduction: ``'none'`` (``(N, C)``), ``'mean'`` or ``'sum'``.
        distance_maps: precomputed ``phi``, ``input``'s shape (every channel, also with
            ``include_background=False``).
        spacing: element size per spatial dimension for the computed maps.

    Example:
        >>> probs = torch.tensor([[[0.0, 1.0, 1.0, 0.0, 0.0, 0.0]]])  # (N=1, C=1, 6)
        >>> target = torch.tensor([[0, 1, 1, 1, 0, 0]])  # phi = (1, 0, -1, 0, 1, 2)
        >>> boundary_loss(probs, target, mode="binary", from_logits=False)  # (0 - 1) / 6
        tensor(-0.1667)
    """
    check_reduction(reduction)
    if target is None and distance_maps is None:
        raise LossValueError("boundary_loss needs a target or precomputed distance_maps, got neither")
    p, g, valid = _prepare(input, target, mode, from_logits, include_background, ignore_index)
    if distance_maps is not None:
        check_tensor("distance_maps", distance_maps)
        check_same_device(("input", input), ("distance_maps", distance_maps))
        if distance_maps.shape != input.shape:
            raise LossValueError(
                f"distance_maps has shape {shape_str(distance_maps.shape)}, expected {shape_str(input.shape)} "
                "to match input"
            )
        if not distance_maps.is_floating_point():
            raise LossTypeError(
                f"distance_maps must be a floating-point tensor, got dtype {distance_maps.dtype}"
            )
        phi = drop_background(distance_maps.to(p.dtype), include_background)
    else:
        assert g is not None
        phi = signed_distance_map(g, input.dim() - 2, spacing).to(p.dtype)
    loss = _per_image_mean(p * phi, valid)
    return reduce_loss(loss, reduction)


def hausdorff_dt_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    from_logits: bool = True,
    alpha: float = 2.0,
    include_background: bool = True,
    ignore_index: int | None = None,
    reduction: str = "mean",
    *,
    log: bool = False,
    spacing: float | Sequence[float] | None = None,
) -> torch.Tensor:
    r"""Hausdorff distance loss, distance-transform form (Karimi & Salcudean 2019, IEEE TMI).

    .. math::
        \ell_{nc} = \frac{1}{|\Omega|} \sum_{q} (p(q) - g(q))^2 \,\big(d_p(q)^\alpha + d_g(q)^\alpha\big)

    where ``d_g`` is the distance of each position to the boundary of the target (the distance
    transform of the mask plus that of its complement) and ``d_p`` the same for the prediction
    thresholded at 0.5; errors far from the boundaries are weighted up, a proxy for the Hausdorff
    distance. Distance maps are constants (no gradient), as in the paper and MONAI's
    ``HausdorffDTLoss``. Unlike MONAI, which sets them to 0 for an empty (or full) mask, they are
    capped at the image diagonal there, so false positives on an empty target are penalised even
    when the whole image is predicted. ``log=True`` returns ``log(1 + loss)`` (MONAI's
    ``LogHausdorffDTLoss``), applied after the reduction (per entry for ``'none'``).

    Args:
        input: logits ``(N, C, d1, ...)`` (probabilities with ``from_logits=False``).
        target: class indices ``(N, d1, ...)`` or a 0/1 mask of ``input``'s shape.
        mode: ``'multiclass'``, ``'binary'`` or ``'multilabel'``.
        from_logits: apply softmax / sigmoid.
        alpha: exponent of the distances (2 in the paper).
        include_background: ``False`` drops channel 0.
        ignore_index: class-index value whose positions are left out of the mean.
        reduction: ``'none'`` (``(N, C)``), ``'mean'`` or ``'sum'``.
        log: return ``log1p`` of the loss.
        spacing: element size per spatial dimension.

    Example:
        >>> probs = torch.tensor([[[0.0, 1.0, 0.0, 0.0]]])  # (N=1, C=1, 4): predicts pixel 1
        >>> target = torch.tensor([[0, 0, 0, 1]])  # d_p = (1, 1, 1, 2), d_g = (3, 2, 1, 1)
        >>> hausdorff_dt_loss(probs, target, mode="binary", from_logits=False)  # (1 (1 + 4) + 1 (4 + 1)) / 4
        tensor(2.5000)
    """
    check_reduction(reduction)
    check_number("alpha", alpha, low=0.0, low_open=True)
    p, g, valid = _prepare(input, target, mode, from_logits, include_background, ignore_index)
    assert g is not None
    k = input.dim() - 2
    h = _spacing(spacing, k)
    both = torch.stack((g > 0.5, p.detach() > 0.5))
    inside, outside = _capped_distance(both, k, h)
    field = (inside + outside) ** float(alpha)
    loss = _per_image_mean((p - g) ** 2 * (field[0] + field[1]).to(p.dtype), valid)
    loss = reduce_loss(loss, reduction)
    return torch.log1p(loss) if log else loss


# ----------------------------------------------------------------------------- modules


class _DistanceLoss(nn.Module):
    def __init__(
        self,
        mode: str,
        from_logits: bool,
        include_background: bool,
        ignore_index: int | None,
        reduction: str,
        spacing: float | Sequence[float] | None,
    ) -> None:
        super().__init__()
        check_options(mode, ignore_index, include_background)
        self.reduction = check_reduction(reduction)
        if spacing is not None:
            _spacing(spacing, len(spacing) if isinstance(spacing, Sequence) else 1)
        self.mode = mode
        self.from_logits = bool(from_logits)
        self.include_background = bool(include_background)
        self.ignore_index = ignore_index
        self.spacing = tuple(spacing) if isinstance(spacing, Sequence) else spacing

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, include_background={self.include_background}, reduction={self.reduction!r}"
        )


class BoundaryLoss(_DistanceLoss):
    """Module form of :func:`boundary_loss`; ``forward(input, target=None, distance_maps=None)``.

    Example:
        >>> loss_fn = BoundaryLoss(mode="binary", from_logits=False)
        >>> loss_fn(torch.tensor([[[0.0, 1.0, 1.0, 0.0, 0.0, 0.0]]]), torch.tensor([[0, 1, 1, 1, 0, 0]]))
        tensor(-0.1667)
    """

    def __init__(
        self,
        mode: str = "multiclass",
        from_logits: bool = True,
        include_background: bool = True,
        ignore_index: int | None = None,
        reduction: str = "mean",
        spacing: float | Sequence[float] | None = None,
    ) -> None:
        super().__init__(mode, from_logits, include_background, ignore_index, reduction, spacing)

    def forward(
        self,
        input: torch.Tensor,
        target: torch.Tensor | None = None,
        distance_maps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return boundary_loss(
            input,
            target,
            self.mode,
            self.from_logits,
            self.include_background,
            self.ignore_index,
            self.reduction,
            distance_maps=distance_maps,
            spacing=self.spacing,
        )


class HausdorffDTLoss(_DistanceLoss):
    """Module form of :func:`hausdorff_dt_loss` (``log=True``: the log variant).

    Example:
        >>> loss_fn = HausdorffDTLoss(mode="binary", from_logits=False)
        >>> loss_fn(torch.tensor([[[0.0, 1.0, 0.0, 0.0]]]), torch.tensor([[0, 0, 0, 1]]))
        tensor(2.5000)
    """

    def __init__(
        self,
        mode: str = "multiclass",
        from_logits: bool = True,
        alpha: float = 2.0,
        include_background: bool = True,
        ignore_index: int | None = None,
        reduction: str = "mean",
        log: bool = False,
        spacing: float | Sequence[float] | None = None,
    ) -> None:
        super().__init__(mode, from_logits, include_background, ignore_index, reduction, spacing)
        check_number("alpha", alpha, low=0.0, low_open=True)
        self.alpha = float(alpha)
        self.log = bool(log)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return hausdorff_dt_loss(
            input,
            target,
            self.mode,
            self.from_logits,
            self.alpha,
            self.include_background,
            self.ignore_index,
            self.reduction,
            log=self.log,
            spacing=self.spacing,
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, log={self.log}, " + super().extra_repr()


_FAMILY = "segmentation"
register(
    "boundary",
    BoundaryLoss,
    family=_FAMILY,
    functional=boundary_loss,
    source="Kervadec et al. 2019",
    notes="probabilities times the target's signed distance map (exact torch EDT, or precomputed maps)",
)
register(
    "hausdorff_dt",
    HausdorffDTLoss,
    family=_FAMILY,
    functional=hausdorff_dt_loss,
    source="Karimi & Salcudean 2019",
    notes="(p - g)^2 (d_p^alpha + d_g^alpha); log=True for log(1 + loss); empty masks capped at the diagonal",
)
