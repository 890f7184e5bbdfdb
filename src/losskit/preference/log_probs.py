"""Per-token and per-sequence log-probabilities, from logits or fused from hidden states.

Preference losses (DPO, SimPO, ORPO, KTO, ...) score a completion by the sum (or length-normalised
mean) of its tokens' log-probabilities under the policy. With a vocabulary of ``V`` tokens the
logits of ``N`` completion tokens are an ``(N, V)`` matrix that, with what eager autograd keeps for
``log_softmax``, dominates training memory. :func:`linear_log_probs` takes the last hidden states and
the LM-head weight instead and never builds that matrix; the ``Linear*Loss`` modules of
:mod:`losskit.preference.fused` compose it with :func:`sum_per_sequence` and the losses of
:mod:`losskit.preference.losses`.

Conventions: ``target[..., t]`` is the token scored by ``hidden[..., t, :]`` / ``logits[..., t, :]``
(for a causal LM shift first: ``hidden[:, :-1]`` with ``labels[:, 1:]``); positions whose target is
``ignore_index`` (prompt and padding) contribute nothing.
"""

from __future__ import annotations

import torch

from .._checks import (
    LossTypeError,
    LossValueError,
    check_floating,
    check_int,
    check_ndim,
    check_number,
    check_same_device,
    check_tensor,
    shape_str,
)
from .._kernels.log_probs import linear_log_probs_rows
from .._reduction import compute_dtype
from ..language import _check_head, _check_tokens_target, _plan

__all__ = [
    "linear_log_probs",
    "sequence_log_probs",
    "sum_per_sequence",
]


def _check_options(ignore_index: int, temperature: float, chunk_size: int | None) -> None:
    check_int("ignore_index", ignore_index)
    check_number("temperature", temperature, low=0.0, low_open=True)
    check_int("chunk_size", chunk_size, low=1, allow_none=True)


def linear_log_probs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    temperature: float = 1.0,
    return_entropy: bool = False,
    chunk_size: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Per-token ``log p(target)`` of a linear head, ``log_softmax((hidden @ weight.T + bias) / T)``,
    without the ``(N, V)`` logits.

    .. math::
        z = (h W^\top + b) / T,\qquad \log p_t = z_t - \log\sum_j e^{z_j},\qquad
        H = -\sum_j p_j \log p_j

    The forward pass keeps one ``(C, V)`` chunk of logits at a time and saves only the per-token
    log-normaliser (and entropy); the backward pass recomputes each chunk, so the gradients w.r.t.
    ``hidden``, ``weight`` and ``bias`` are exact for **any** upstream gradient (the losses built on
    log-probs are non-linear in them). This is the scheme of Cut Your Losses (Wijmans et al. 2024).

    Args:
        hidden: ``(N, H)`` or ``(B, T, H)`` hidden states (float32/float64/bfloat16/float16).
        weight: ``(V, H)`` head weight, same dtype as ``hidden`` (e.g. ``lm_head.weight``).
        target: ``(N,)`` / ``(B, T)`` token indices in ``[0, V)`` or ``ignore_index``.
        bias: optional ``(V,)`` head bias.
        ignore_index: target value whose position gets log-prob 0 (and entropy 0), and no gradient.
        temperature: ``T > 0``; the logits are divided by it (sampling temperature of the rollout).
        return_entropy: also return the per-token entropy of the softmax (a second output, so the
            return type is a tuple ``(logps, entropy)`` only when this is True).
        chunk_size: tokens per chunk; default: as many as fit a 48 MiB float32 logits buffer.

    Returns:
        ``logps`` of ``target``'s shape, float32 (float64 for float64 inputs); with
        ``return_entropy=True`` the tuple ``(logps, entropy)`` of two such tensors.

    Memory and time: besides the inputs, autograd keeps two (three with entropy) float32 vectors of
    ``N`` entries. The backward pass costs one more ``(N, H) x (H, V)`` product than eager autograd
    (the logits are recomputed). Half-precision inputs run their matrix products in their own dtype;
    softmax, outputs and the weight gradient (accumulated across chunks) are float32. On CPU the
    ignored tokens are skipped before any matrix product.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> hidden = torch.randn(5, 4, generator=g, requires_grad=True)
        >>> weight = torch.randn(10, 4, generator=g, requires_grad=True)
        >>> target = torch.tensor([1, 2, -100, 4, 9])
        >>> logps, entropy = linear_log_probs(hidden, weight, target, return_entropy=True, chunk_size=2)
        >>> eager = torch.log_softmax(hidden @ weight.T, -1)
        >>> torch.allclose(logps[[0, 1, 3, 4]], eager[[0, 1, 3, 4], [1, 2, 4, 9]]), logps[2].item()
        (True, 0.0)
        >>> torch.allclose(entropy[0], -(eager[0].exp() * eager[0]).sum())
        True
        >>> (logps.square().sum() + entropy.sum()).backward()  # any function of the outputs
        >>> weight.grad.shape
        torch.Size([10, 4])
    """
    _check_options(ignore_index, temperature, chunk_size)
    if not isinstance(return_entropy, bool):
        raise LossTypeError(f"return_entropy must be a bool, got {type(return_entropy).__name__}")
    _check_head("hidden", hidden, "weight", weight, "bias", bias)
    vocab = weight.shape[0]
    flat_t = _check_tokens_target(target, hidden, vocab, ignore_index, "hidden")
    h2 = hidden.reshape(-1, hidden.shape[-1])
    plan = _plan(
        flat_t != ignore_index, h2.shape[0], vocab, 2 if return_entropy else 1, chunk_size, hidden.device
    )
    logps, ent = linear_log_probs_rows(
        h2,
        weight,
        bias,
        flat_t,
        plan,
        inv_temperature=1.0 / float(temperature),
        ignore_index=ignore_index,
        entropy=return_entropy,
    )
    logps = logps.reshape(target.shape)
    if not return_entropy:
        return logps
    assert ent is not None
    return logps, ent.reshape(target.shape)


def _check_mask(name: str, mask: torch.Tensor, ref_name: str, ref: torch.Tensor) -> torch.Tensor:
    check_tensor(name, mask)
    if mask.is_floating_point() or mask.is_complex():
        raise LossTypeError(f"{name} must be a bool (or 0/1 integer) tensor, got dtype {mask.dtype}")
    if tuple(mask.shape) != tuple(ref.shape):
        raise LossValueError(
            f"{name} has shape {shape_str(mask.shape)}, expected {shape_str(ref.shape)} to match {ref_name}"
        )
    check_same_device((ref_name, ref), (name, mask))
    return mask if mask.dtype == torch.bool else mask != 0


def sum_per_sequence(values: torch.Tensor, mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    r"""Per-sequence sum (or length-normalised mean) of per-token values: ``(B, T) -> (B,)``.

    .. math::
        s_b = \sum_t m_{bt} v_{bt}, \qquad \bar s_b = s_b / \max(1, \textstyle\sum_t m_{bt})

    Masked-out entries are never read (a ``-inf`` or NaN there does not leak into the result or its
    gradient); a row with no unmasked entry gives 0 with a zero, finite gradient.

    Args:
        values: ``(B, T)`` floating per-token values (e.g. :func:`linear_log_probs` output).
        mask: ``(B, T)`` bool (or 0/1 integer) tensor, True where the token counts.
        average: divide each row's sum by its number of counted tokens (SimPO, IPO convention).

    Returns:
        ``(B,)`` tensor in ``values``' compute dtype (float32 for half inputs).

    Example:
        >>> v = torch.tensor([[-1.0, -2.0, float("-inf")], [-3.0, 0.0, 0.0]])
        >>> m = torch.tensor([[True, True, False], [False, False, False]])
        >>> sum_per_sequence(v, m), sum_per_sequence(v, m, average=True)
        (tensor([-3., 0.]), tensor([-1.5000, 0.0000]))
    """
    check_floating("values", values)
    check_ndim("values", values, 2, "(B, T)")
    mask = _check_mask("mask", mask, "values", values)
    if not isinstance(average, bool):
        raise LossTypeError(f"average must be a bool, got {type(average).__name__}")
    v = values.to(compute_dtype(values))
    total = torch.where(mask, v, v.new_zeros(())).sum(1)
    if not average:
        return total
    return total / mask.sum(1).clamp_min(1).to(total.dtype)


def sequence_log_probs(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -100, average: bool = False
) -> torch.Tensor:
    r"""Per-sequence log-probability ``(B,)`` of ``target`` under ``(B, T, V)`` logits.

    .. math::
        \log \pi(y_b) = \sum_{t:\, y_{bt} \ne \text{ignore}} \log \operatorname{softmax}(z_{bt})_{y_{bt}}

    (divided by the number of counted tokens with ``average=True``). ``target[b, t]`` is scored by
    ``logits[b, t]``: for a causal LM pass ``logits[:, :-1]`` and ``labels[:, 1:]``. This is the eager
    form (it holds the ``(B, T, V)`` log-softmax); :func:`linear_log_probs` with
    :func:`sum_per_sequence` gives the same values and gradients from hidden states.

    Example:
        >>> logits = torch.zeros(2, 3, 4)
        >>> target = torch.tensor([[0, 1, -100], [2, -100, -100]])
        >>> sequence_log_probs(logits, target) / torch.log(torch.tensor(0.25))
        tensor([2., 1.])
    """
    check_floating("logits", logits)
    check_ndim("logits", logits, 3, "(B, T, V)")
    check_int("ignore_index", ignore_index)
    flat_t = _check_tokens_target(target, logits, logits.shape[-1], ignore_index, "logits")
    valid = target != ignore_index
    logp = torch.log_softmax(logits.to(compute_dtype(logits)), dim=-1)
    safe = flat_t.masked_fill(flat_t == ignore_index, 0).reshape(target.shape)
    per_token = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return sum_per_sequence(per_token, valid, average=average)
