r"""Policy-gradient losses of the GRPO family on per-token log-probs: GRPO, Dr. GRPO, DAPO, BNPO, GSPO, CISPO.

Every loss here is a weighted sum of per-token terms,

.. math::
    L = \sum_{i,t} w_{it}\,\ell_{it}, \qquad
    \ell_{it} = \ell^{pg}_{it} + \beta\,\mathrm{KL}_{it} - c_H\,H_{it},

where :math:`i` runs over the ``B`` sequences, :math:`t` over the ``T`` token positions, the
weights :math:`w_{it}` are zero on masked tokens and carry the loss type's normaliser, and
:math:`\ell^{pg}` is the clipped surrogate of the loss type. Two private functions expose that
split so that other forms (a fused LM-head loss computing the log-probs chunk by chunk) reuse it:

- :func:`token_terms` returns :math:`\ell_{it}` as a ``(B, T)`` tensor (exactly ``0`` on masked
  tokens, with zero gradient there), the policy term plus the KL and entropy terms;
- :func:`token_weights` returns :math:`w_{it}` as a ``(B, T)`` tensor (no gradient);
- ``(token_weights(...) * token_terms(...)).sum()`` is :func:`policy_gradient_loss`.

The terms are token-local for every loss type but ``gspo``, whose term of token ``t`` uses the
sequence's mean log-ratio (detached, the GSPO-token form); :func:`token_parts` also returns the
ratios and clip flags the module's metrics are computed from.

Normalisers per loss type (``len_i`` = valid tokens of sequence ``i``, ``N`` = valid tokens of the
call, ``B`` = rows of the call, ``Z`` = ``normalizer`` when given):

=========  ======================================  ==================  ============================
loss type  weight :math:`w_{it}` (valid tokens)     ``normalizer=``      global ``Z`` for one step
=========  ======================================  ==================  ============================
grpo       :math:`1 / (len_i \cdot B)`               replaces ``B``     sequences of the step
gspo       :math:`1 / (len_i \cdot B)`               replaces ``B``     sequences of the step
dr_grpo    :math:`1 / (B \cdot max\_len)`            replaces it        sequences x ``max_len``
dapo       :math:`1 / N`                             replaces ``N``     valid tokens of the step
cispo      :math:`1 / N`                             replaces ``N``     valid tokens of the step
bnpo       :math:`1 / N`                             error              none (local by definition)
=========  ======================================  ==================  ============================

:func:`~losskit.rl.policy_gradient_normalizer` computes the global ``Z`` once per optimisation
step, divided by the DDP world size ``W`` (DDP averages gradients over ranks, i.e. divides by
``W``; the ``/ W`` in the normaliser cancels it). With it passed to every micro-batch call on
every rank, what is layout-invariant (same step for one batch, uneven accumulation micro-batches,
several ranks with different sequence lengths):

- ``dapo``, ``cispo``: everything (the token mean over the step).
- ``dr_grpo``: everything, provided every call uses the same ``max_len`` (the generation's
  maximum completion length; the default ``T`` of each call changes with its padding).
- ``grpo``, ``gspo``: everything. The per-sequence part (the token mean of each sequence, GSPO's
  sequence ratio) is per sequence by definition and a sequence is never split, so it never
  depends on the layout; only the mean over sequences needs the global count. Per-sequence
  normalisation still weighs a token of a long completion less than one of a short completion:
  that is the objective (the length bias Liu et al. 2025 point out), not a layout effect.
- ``bnpo``: nothing beyond one call: it is the token mean of each call's own batch by
  definition, so it fixes its own denominator and ``normalizer=`` raises (use ``dapo``).

Without the normaliser each call uses its own ``B`` / ``N`` (a per-micro-batch mean), and the
step changes with the layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._checks import (
    LossTypeError,
    LossValueError,
    check_floating,
    check_int,
    check_ndim,
    check_number,
    check_same_device,
    check_same_shape,
    check_tensor,
    shape_str,
)
from .._reduction import Normalizer, check_normalizer, compute_dtype

__all__ = ["POLICY_GRADIENT_LOSS_TYPES", "PolicyGradientLoss", "policy_gradient_loss"]

#: The ``loss_type`` values :func:`policy_gradient_loss` accepts.
POLICY_GRADIENT_LOSS_TYPES: tuple[str, ...] = ("grpo", "dr_grpo", "dapo", "bnpo", "gspo", "cispo")
# loss types whose normaliser counts sequences (per-sequence token mean, then a mean over sequences)
SEQUENCE_MEAN_TYPES = ("grpo", "gspo")
# loss types whose denominator is fixed by their definition: normalizer= is an error
FIXED_DENOMINATOR_TYPES = ("bnpo",)
#: Bound of every log-ratio before ``exp`` (ratios within ``[e^-20, e^20]``; finite for any input).
LOG_RATIO_CLAMP = 20.0


# ----------------------------------------------------------------------------- options


@dataclass(frozen=True)
class _Options:
    loss_type: str
    epsilon: float
    epsilon_high: float
    delta: float | None
    beta: float
    entropy_coef: float
    max_len: int | None


def _check_loss_type(loss_type: Any) -> str:
    if not isinstance(loss_type, str):
        raise LossTypeError(f"loss_type must be a string, got {type(loss_type).__name__} {loss_type!r}")
    if loss_type not in POLICY_GRADIENT_LOSS_TYPES:
        valid = ", ".join(repr(t) for t in POLICY_GRADIENT_LOSS_TYPES)
        raise LossValueError(f"loss_type must be one of {valid}, got {loss_type!r}")
    return loss_type


def _check_options(
    loss_type: Any,
    epsilon: Any,
    epsilon_high: Any,
    delta: Any,
    beta: Any,
    entropy_coef: Any,
    max_len: Any,
) -> _Options:
    lt = _check_loss_type(loss_type)
    eps = float(check_number("epsilon", epsilon, low=0.0, high=1.0))
    eps_high = float(
        check_number("epsilon_high", epsilon_high, low=0.0, high=math.inf, high_open=True, allow_none=True)
        if epsilon_high is not None
        else eps
    )
    if delta is not None:
        check_number("delta", delta, low=0.0, high=math.inf, high_open=True)
        if lt == "cispo":
            raise LossValueError(
                "delta must be None for loss_type 'cispo' (its weight is already capped at 1 + epsilon_high), "
                f"got {delta!r}"
            )
        if float(delta) < 1.0 + eps_high:
            raise LossValueError(
                f"delta must be >= 1 + epsilon_high = {1.0 + eps_high:g} (it bounds the ratio of tokens with "
                f"negative advantages above the clip range), got {delta!r}"
            )
        delta = float(delta)
    b = float(check_number("beta", beta, low=0.0, high=math.inf, high_open=True))
    ec = float(
        check_number(
            "entropy_coef", entropy_coef, low=-math.inf, high=math.inf, low_open=True, high_open=True
        )
    )
    check_int("max_len", max_len, low=1, allow_none=True)
    return _Options(lt, eps, eps_high, delta, b, ec, max_len)


# ----------------------------------------------------------------------------- inputs


def _check_token_tensor(name: str, value: Any, ref: torch.Tensor | None) -> torch.Tensor:
    tensor = check_floating(name, value)
    if ref is None:
        check_ndim(name, tensor, 2, "2-D (B, T): one value per token")
    else:
        check_same_shape(name, tensor, "logps", ref)
    return tensor


def _check_mask(mask: Any, logps: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return torch.ones(logps.shape, dtype=torch.bool, device=logps.device)
    tensor = check_tensor("mask", mask)
    if tensor.is_complex():
        raise LossTypeError(f"mask must be a bool (or 0/1) tensor, got dtype {tensor.dtype}")
    check_same_shape("mask", tensor, "logps", logps)
    return tensor if tensor.dtype == torch.bool else tensor != 0


def _check_advantages(advantages: Any, logps: torch.Tensor) -> torch.Tensor:
    adv = check_floating("advantages", advantages)
    if adv.dim() == 1 and adv.shape[0] == logps.shape[0]:
        return adv[:, None]
    if adv.shape == logps.shape:
        return adv
    raise LossValueError(
        f"advantages has shape {shape_str(adv.shape)}, expected ({logps.shape[0]},) (one per sequence) "
        f"or {shape_str(logps.shape)} (one per token) to match logps"
    )


@dataclass
class _Inputs:
    logps: torch.Tensor  # (B, T), compute dtype, 0 on masked tokens
    old_logps: torch.Tensor
    advantages: torch.Tensor  # (B, 1) or (B, T)
    mask: torch.Tensor  # (B, T) bool
    ref_logps: torch.Tensor | None
    entropy: torch.Tensor | None


def _prepare(
    logps: Any,
    old_logps: Any,
    advantages: Any,
    mask: Any,
    ref_logps: Any,
    entropy: Any,
) -> _Inputs:
    """Check shapes, dtypes and devices; upcast; replace masked entries by 0 (``torch.where``).

    After this no masked token holds a non-finite value, so nothing computed from them (``exp``)
    can poison the gradient of the valid ones.
    """
    _check_token_tensor("logps", logps, None)
    if old_logps is not None:
        _check_token_tensor("old_logps", old_logps, logps)
    adv = _check_advantages(advantages, logps)
    if ref_logps is not None:
        _check_token_tensor("ref_logps", ref_logps, logps)
    if entropy is not None:
        _check_token_tensor("entropy", entropy, logps)
    check_same_device(
        ("logps", logps),
        ("old_logps", old_logps),
        ("advantages", advantages),
        ("mask", mask),
        ("ref_logps", ref_logps),
        ("entropy", entropy),
    )
    m = _check_mask(mask, logps)
    dtype = compute_dtype(logps)
    for t in (old_logps, advantages, ref_logps, entropy):
        if t is not None:
            dtype = torch.promote_types(dtype, compute_dtype(t))
    zero = logps.new_zeros((), dtype=dtype)

    def clean(t: torch.Tensor | None, m_: torch.Tensor = m) -> torch.Tensor | None:
        return None if t is None else torch.where(m_, t.to(dtype), zero)

    lp = clean(logps)
    assert lp is not None
    old = lp.detach() if old_logps is None else clean(old_logps.detach())
    adv_m = m if adv.shape == m.shape else m.any(1, keepdim=True)
    a = clean(adv, adv_m)
    assert old is not None and a is not None
    return _Inputs(
        lp, old, a, m, clean(ref_logps.detach() if ref_logps is not None else None), clean(entropy)
    )


def _clamped(log_ratio: torch.Tensor) -> torch.Tensor:
    """``log_ratio`` clamped to ``[-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP]``, still NaN where it is not finite.

    The clamp keeps ``exp`` finite; adding ``x - x`` (0 for finite ``x``, NaN for ``+-inf``) keeps an
    infinite input visible instead of turning it into the clamp bound.
    """
    return log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP) + (log_ratio - log_ratio).detach()


# ----------------------------------------------------------------------------- per-token parts


@dataclass
class TokenParts:
    """What :func:`token_parts` computes: the per-token terms and the raw material of the metrics."""

    terms: torch.Tensor  # (B, T) loss term of every token, 0 on masked tokens
    mask: torch.Tensor  # (B, T) bool
    ratio: torch.Tensor  # (B, T) importance ratio (token or sequence level), detached
    low_clipped: torch.Tensor  # (B, T) bool
    high_clipped: torch.Tensor  # (B, T) bool
    kl: torch.Tensor | None  # (B, T) k3 estimate, detached; None without ref_logps
    entropy: torch.Tensor | None  # (B, T) detached; None without entropy


def _ppo_clip(
    log_ratio: torch.Tensor, adv: torch.Tensor, opts: _Options
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``-min(r A, clip(r, 1 - eps, 1 + eps_high) A)`` with ``r`` capped at ``delta`` in the first term."""
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1.0 - opts.epsilon, 1.0 + opts.epsilon_high)
    first = ratio if opts.delta is None else ratio.clamp(max=opts.delta)
    loss = -torch.minimum(first * adv, clipped * adv)
    r = ratio.detach()
    low = (r < 1.0 - opts.epsilon) & (adv < 0)
    high = (r > 1.0 + opts.epsilon_high) & (adv > 0)
    return loss, r, low, high


def token_parts(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    ref_logps: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    loss_type: str = "grpo",
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    beta: float = 0.0,
    entropy_coef: float = 0.0,
) -> TokenParts:
    """Per-token terms :math:`\\ell_{it}` and the metric inputs (private; see the module docstring)."""
    opts = _check_options(loss_type, epsilon, epsilon_high, delta, beta, entropy_coef, None)
    return _token_parts(_prepare(logps, old_logps, advantages, mask, ref_logps, entropy), opts)


def _token_parts(x: _Inputs, opts: _Options) -> TokenParts:
    m, lp, adv = x.mask, x.logps, x.advantages
    log_ratio = _clamped(lp - x.old_logps)
    if opts.loss_type == "gspo":
        # GSPO-token (Zheng et al. 2025, eq. 13): s_it = sg(s_i) * pi_it / sg(pi_it), whose value is
        # the sequence ratio s_i = exp(mean_t log-ratio) and whose gradient is the paper's; no
        # gradient where the sequence log-ratio is beyond the clamp, as for the token ratios.
        lengths = m.sum(1, keepdim=True).clamp_min(1).to(lp.dtype)
        raw = (lp - x.old_logps).sum(1, keepdim=True) / lengths
        inside = (raw.abs() <= LOG_RATIO_CLAMP).detach()
        log_ratio = _clamped(raw).detach() + torch.where(inside, lp - lp.detach(), 0.0)
    if opts.loss_type == "cispo":
        # CISPO (MiniMax 2025): -sg(min(r, 1 + eps_high)) * A * log pi
        r = torch.exp(log_ratio).detach()
        cap = 1.0 + opts.epsilon_high
        pg = -r.clamp(max=cap) * adv * lp
        low, high = torch.zeros_like(m), r > cap
    else:
        pg, r, low, high = _ppo_clip(log_ratio, adv, opts)
    terms = pg
    kl = None
    if x.ref_logps is not None:
        d = _clamped(x.ref_logps - lp)  # k3 = exp(ref - logp) - (ref - logp) - 1 >= 0
        kl_t = torch.exp(d) - d - 1.0
        if opts.beta:
            terms = terms + opts.beta * kl_t
        kl = kl_t.detach()
    elif opts.beta:
        raise LossValueError(f"ref_logps is required when beta > 0 (the KL term), got beta={opts.beta}")
    if x.entropy is not None and opts.entropy_coef:
        terms = terms - opts.entropy_coef * x.entropy
    elif opts.entropy_coef and x.entropy is None:
        raise LossValueError(
            f"entropy is required when entropy_coef != 0, got entropy_coef={opts.entropy_coef}"
        )
    zero = terms.new_zeros(())
    return TokenParts(
        torch.where(m, terms, zero),
        m,
        r,
        low & m,
        high & m,
        kl,
        None if x.entropy is None else x.entropy.detach(),
    )


def token_terms(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor | None = None,
    **options: Any,
) -> torch.Tensor:
    """The ``(B, T)`` per-token terms :math:`\\ell_{it}` (0 on masked tokens), before normalisation.

    Keyword options as :func:`token_parts` (``ref_logps``, ``entropy``, ``loss_type``, ``epsilon``,
    ``epsilon_high``, ``delta``, ``beta``, ``entropy_coef``). Private API.
    """
    return token_parts(logps, old_logps, advantages, mask, **options).terms


def token_weights(
    mask: torch.Tensor,
    loss_type: str = "grpo",
    *,
    max_len: int | None = None,
    normalizer: Normalizer = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The ``(B, T)`` weights :math:`w_{it}` of the loss type (0 on masked tokens, no gradient).

    ``mask`` is the bool ``(B, T)`` completion mask. ``normalizer`` replaces the loss type's
    denominator (table in the module docstring); ``bnpo`` refuses one. Private API.
    """
    lt = _check_loss_type(loss_type)
    check_tensor("mask", mask)
    m = mask if mask.dtype == torch.bool else mask != 0
    check_ndim("mask", m, 2, "2-D (B, T)")
    check_int("max_len", max_len, low=1, allow_none=True)
    _check_pg_normalizer(normalizer, lt)
    return _token_weights(m, lt, max_len, normalizer, dtype or torch.get_default_dtype())


def _check_pg_normalizer(normalizer: Normalizer, loss_type: str) -> None:
    if normalizer is None:
        return
    if loss_type in FIXED_DENOMINATOR_TYPES:
        raise LossValueError(
            f"normalizer cannot be used with loss_type {loss_type!r}: it fixes its own denominator (the "
            "valid tokens of each call); use loss_type='dapo' for the token mean over the whole step"
        )
    check_normalizer(normalizer, "mean")


def _token_weights(
    m: torch.Tensor, loss_type: str, max_len: int | None, normalizer: Normalizer, dtype: torch.dtype
) -> torch.Tensor:
    valid = m.to(dtype)
    if loss_type in SEQUENCE_MEAN_TYPES:
        denom: float | torch.Tensor = normalizer if normalizer is not None else max(m.shape[0], 1)
        per_seq = valid / valid.sum(1, keepdim=True).clamp_min(1.0)
        return per_seq / denom
    if loss_type == "dr_grpo":
        denom = normalizer if normalizer is not None else max(m.shape[0] * (max_len or m.shape[1]), 1)
        return valid / denom
    denom = normalizer if normalizer is not None else valid.sum().clamp_min(1.0)
    return valid / denom


# ----------------------------------------------------------------------------- the loss


def _masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    x = x.detach()
    x = x.to(torch.float32) if x.dtype == torch.bool else x
    return torch.where(m, x, 0.0).sum() / m.sum().clamp_min(1)


def _metrics(p: TokenParts) -> dict[str, torch.Tensor]:
    m = p.mask
    out = {
        "clip_ratio/low_mean": _masked_mean(p.low_clipped, m),
        "clip_ratio/high_mean": _masked_mean(p.high_clipped, m),
        "clip_ratio/region_mean": _masked_mean(p.low_clipped | p.high_clipped, m),
        "ratio_mean": _masked_mean(p.ratio, m),
    }
    if p.kl is not None:
        out["kl_mean"] = _masked_mean(p.kl, m)
    if p.entropy is not None:
        out["entropy_mean"] = _masked_mean(p.entropy, m)
    return out


def _loss(
    opts: _Options,
    logps: Any,
    old_logps: Any,
    advantages: Any,
    mask: Any,
    ref_logps: Any,
    entropy: Any,
    normalizer: Normalizer,
) -> tuple[torch.Tensor, TokenParts]:
    _check_pg_normalizer(normalizer, opts.loss_type)
    x = _prepare(logps, old_logps, advantages, mask, ref_logps, entropy)
    parts = _token_parts(x, opts)
    w = _token_weights(x.mask, opts.loss_type, opts.max_len, normalizer, parts.terms.dtype)
    return (w.to(parts.terms.dtype) * parts.terms).sum(), parts


def policy_gradient_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    ref_logps: torch.Tensor | None = None,
    loss_type: str = "grpo",
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    beta: float = 0.0,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    max_len: int | None = None,
    normalizer: Normalizer = None,
) -> torch.Tensor:
    r"""Clipped policy-gradient loss of the GRPO family on per-token log-probs.

    With the token log-ratio :math:`\log r_{it} = \log\pi_\theta(y_{it}) - \log\pi_{old}(y_{it})`
    (clamped to :math:`\pm 20` before ``exp``) and the advantage :math:`A_{it}` (one per sequence,
    broadcast over its tokens, or one per token), the per-token policy term is

    .. math::
        \ell^{pg}_{it} = -\min\big(\min(r_{it}, \delta)\,A_{it},\
            \operatorname{clip}(r_{it}, 1-\epsilon, 1+\epsilon_{high})\,A_{it}\big)

    (PPO's clipped surrogate; ``epsilon_high`` is DAPO's clip-higher; ``delta`` caps the ratio of
    tokens with negative advantages, the two-sided clipping of TRL; no cap when ``None``), except:

    - ``gspo`` (Zheng et al. 2025): :math:`r_{it}` is the sequence ratio
      :math:`s_i = \exp(\frac{1}{|y_i|}\sum_t \log r_{it})`, in the GSPO-token form
      :math:`s_{it} = \mathrm{sg}(s_i)\,\pi_\theta(y_{it}) / \mathrm{sg}(\pi_\theta(y_{it}))`, whose
      value is :math:`s_i` and whose gradient is the paper's (per-sequence advantages);
    - ``cispo`` (MiniMax-M1, 2025): :math:`\ell^{pg}_{it} = -\mathrm{sg}(\min(r_{it}, 1+\epsilon_{high}))
      \,A_{it}\log\pi_\theta(y_{it})` (no lower bound; TRL's ``epsilon_high`` for cispo is our
      ``1 + epsilon_high``).

    The full token term adds :math:`\beta\,\mathrm{KL}_{it}` with the k3 estimator
    :math:`e^{x} - x - 1`, :math:`x = \log\pi_{ref} - \log\pi_\theta` (float32 or wider, ``x`` clamped
    to :math:`\pm 20`), and subtracts ``entropy_coef * entropy``. The loss is
    :math:`\sum_{it} w_{it}\ell_{it}` with the weights of the loss type:

    - ``grpo`` (Shao et al. 2024): token mean of each sequence, then mean over the ``B`` sequences;
    - ``dr_grpo`` (Liu et al. 2025): sum over tokens divided by ``B * max_len`` (``max_len``
      defaults to ``T``; pass the generation's maximum completion length);
    - ``dapo`` (Yu et al. 2025): sum over tokens divided by the number of valid tokens;
    - ``bnpo``: the same token mean of this call's batch, always local (``normalizer=`` is an error);
    - ``gspo``: mean over sequences of the sequence loss (the GRPO weights);
    - ``cispo``: sum over tokens divided by the number of valid tokens (as ``dapo``).

    ``normalizer=`` replaces the denominator (``B`` for grpo / gspo, ``B * max_len`` for dr_grpo,
    the token count for dapo / cispo): pass :func:`~losskit.rl.policy_gradient_normalizer` to every
    micro-batch call of a step and the step's gradient no longer depends on how its batch is spread
    over micro-batches and DDP ranks.

    Masked tokens contribute exactly 0 to the value and the gradient, whatever they hold (``-inf``
    old log-probs of padding included): they are replaced with ``torch.where`` before any ``exp``.
    A NaN or infinite input on a valid token gives a non-finite loss. An all-masked batch gives a
    zero connected to the graph.

    Args:
        logps: ``(B, T)`` log-probs of the sampled tokens under the policy (differentiable).
        old_logps: ``(B, T)`` the same under the sampling policy (detached); ``None`` means
            on-policy (``logps.detach()``: ratio 1, the gradient of :math:`A\log\pi`).
        advantages: ``(B,)`` or ``(B, T)``.
        mask: ``(B, T)`` bool (or 0/1) completion mask; ``None`` counts every token.
        ref_logps: ``(B, T)`` reference-model log-probs; required when ``beta > 0``.
        loss_type: one of :data:`POLICY_GRADIENT_LOSS_TYPES`.
        epsilon: lower clip ``1 - epsilon``, in ``[0, 1]``.
        epsilon_high: upper clip ``1 + epsilon_high`` (default ``epsilon``).
        delta: ``>= 1 + epsilon_high`` or ``None``; not with ``cispo``.
        beta: KL coefficient ``>= 0``.
        entropy: ``(B, T)`` per-token entropy of the policy; required when ``entropy_coef != 0``.
        entropy_coef: entropy bonus coefficient.
        max_len: ``dr_grpo``'s length constant (default ``T``).
        normalizer: the loss type's denominator, a positive number or scalar tensor.

    Returns:
        a 0-d tensor (float32 for half inputs).

    Example:
        >>> logps = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.5, 0.0]])
        >>> mask = torch.tensor([[True, True, True], [True, True, False]])
        >>> adv = torch.tensor([1.0, -1.0])
        >>> policy_gradient_loss(logps, None, adv, mask)  # on-policy: ratio 1, -(mean A) = 0
        tensor(0.)
        >>> policy_gradient_loss(logps, logps - 0.5, adv, mask, loss_type="dapo")  # (3 * -1.2 + 2 * e^0.5) / 5
        tensor(-0.0605)
    """
    opts = _check_options(loss_type, epsilon, epsilon_high, delta, beta, entropy_coef, max_len)
    return _loss(opts, logps, old_logps, advantages, mask, ref_logps, entropy, normalizer)[0]


class PolicyGradientLoss(nn.Module):
    r"""Module form of :func:`policy_gradient_loss`; the last call's metrics are in :attr:`last_metrics`.

    ``last_metrics`` (detached 0-d tensors, means over this call's valid tokens):
    ``clip_ratio/low_mean`` (ratio below ``1 - epsilon`` with a negative advantage),
    ``clip_ratio/high_mean`` (above ``1 + epsilon_high`` with a positive advantage; for ``cispo``
    any weight at its cap), ``clip_ratio/region_mean`` (either), ``ratio_mean``, and ``kl_mean`` /
    ``entropy_mean`` when ``ref_logps`` / ``entropy`` are given. Under DDP they are this rank's.

    Example:
        >>> loss_fn = PolicyGradientLoss("dapo", epsilon=0.2, epsilon_high=0.28)
        >>> logps = torch.tensor([[-1.0, -2.0], [-0.5, -1.5]], requires_grad=True)
        >>> loss = loss_fn(logps, logps.detach() - 0.5, torch.tensor([1.0, -1.0]))
        >>> loss_fn.last_metrics["clip_ratio/high_mean"]
        tensor(0.5000)
    """

    def __init__(
        self,
        loss_type: str = "grpo",
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        delta: float | None = None,
        beta: float = 0.0,
        entropy_coef: float = 0.0,
        max_len: int | None = None,
    ) -> None:
        super().__init__()
        self._opts = _check_options(loss_type, epsilon, epsilon_high, delta, beta, entropy_coef, max_len)
        self.loss_type, self.epsilon, self.epsilon_high = loss_type, float(epsilon), epsilon_high
        self.delta, self.beta, self.entropy_coef = delta, float(beta), float(entropy_coef)
        self.max_len = max_len
        self.last_metrics: dict[str, torch.Tensor] = {}

    def forward(
        self,
        logps: torch.Tensor,
        old_logps: torch.Tensor | None,
        advantages: torch.Tensor,
        mask: torch.Tensor | None = None,
        ref_logps: torch.Tensor | None = None,
        entropy: torch.Tensor | None = None,
        normalizer: Normalizer = None,
    ) -> torch.Tensor:
        loss, parts = _loss(self._opts, logps, old_logps, advantages, mask, ref_logps, entropy, normalizer)
        with torch.no_grad():
            self.last_metrics = _metrics(parts)
        return loss

    def extra_repr(self) -> str:
        return (
            f"loss_type={self.loss_type!r}, epsilon={self.epsilon}, epsilon_high={self.epsilon_high}, "
            f"delta={self.delta}, beta={self.beta}, entropy_coef={self.entropy_coef}, max_len={self.max_len}"
        )
