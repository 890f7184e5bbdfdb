"""Policy-gradient losses from the policy's last hidden states and LM head, without ``(tokens, vocab)`` logits."""

from __future__ import annotations

from typing import Any, overload

import torch
from torch import nn

from .._checks import LossTypeError, check_int, check_number
from .._kernels.linear_ce import auto_chunk_size
from .._kernels.token_loss import TokenLocalLinearLoss
from .._reduction import Normalizer
from ..language import _check_head, _check_tokens_target, _plan
from ..preference import linear_log_probs
from .policy_gradient import (
    _check_advantages,
    _check_mask,
    _check_options,
    _check_pg_normalizer,
    _check_token_tensor,
    _loss,
    _metrics,
    _Options,
    _token_weights,
    token_parts,
)

__all__ = ["LinearPolicyGradientLoss"]

# Logits buffer of the grads-in-forward path: larger than the log-prob kernel's 48 MiB because its
# chunks are GEMM operands streamed once per chunk against the whole (V, H) weight (on CPU, 128-row
# chunks ran the products at about half the speed of 512-row ones at V = 32000, H = 1024).
_CHUNK_BYTES = 64 * 2**20


def _option_kwargs(opts: _Options) -> dict[str, Any]:
    return {
        "loss_type": opts.loss_type,
        "epsilon": opts.epsilon,
        "epsilon_high": opts.epsilon_high,
        "delta": opts.delta,
        "beta": opts.beta,
        "entropy_coef": opts.entropy_coef,
    }


class LinearPolicyGradientLoss(nn.Module):
    r""":func:`~losskit.rl.policy_gradient_loss` on the per-token log-probs (and entropies) of a linear
    LM head, computed chunk by chunk from the hidden states: the ``(B T, V)`` logits never exist.

    ``logps, entropy = linear_log_probs(hidden, weight, target, bias, temperature=temperature,
    return_entropy=True)`` and then ``policy_gradient_loss(logps, old_logps, advantages, mask,
    entropy=entropy, ...)``: values and gradients equal that composition on the full logits.

    For every loss type but ``gspo`` each token's term depends only on that token's log-prob and
    entropy, and the weights (the normaliser) are known from ``mask`` before the logits are formed,
    so the gradients are formed during the forward pass, chunk by chunk (three matrix products per
    token, as eager autograd; one backward per forward). ``gspo`` (a sequence-level ratio) and
    ``torch.compile`` take :func:`~losskit.preference.linear_log_probs` (logits recomputed in the
    backward pass, one more product).

    Args:
        loss_type, epsilon, epsilon_high, delta, beta, entropy_coef, max_len: as
            :class:`~losskit.rl.PolicyGradientLoss`.
        temperature: the sampling temperature; logits are divided by it.
        ignore_index: ``target`` value of positions that do not count (besides ``mask``).
        chunk_size: tokens per chunk (default: as many as fit a 64 MiB float32 logits buffer on the
            grads-in-forward path, 48 MiB on the other).

    Shapes: ``hidden (B, T, H)``, ``weight (V, H)``, ``target (B, T)`` (the sampled tokens),
    ``old_logps``, ``ref_logps``, ``mask (B, T)``, ``advantages (B,)`` or ``(B, T)``.
    :attr:`last_metrics` as :class:`~losskit.rl.PolicyGradientLoss`, always with ``entropy_mean``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> hidden, weight = torch.randn(2, 3, 4, generator=g), torch.randn(10, 4, generator=g, requires_grad=True)
        >>> target = torch.randint(0, 10, (2, 3), generator=g)
        >>> old = torch.full((2, 3), -2.3)
        >>> loss = LinearPolicyGradientLoss("dapo")(hidden, weight, target, old, torch.tensor([1.0, -1.0]))
        >>> from losskit.rl import policy_gradient_loss
        >>> logps = torch.log_softmax(hidden @ weight.T, -1).gather(2, target[..., None])[..., 0]
        >>> torch.allclose(loss, policy_gradient_loss(logps, old, torch.tensor([1.0, -1.0]), loss_type="dapo"))
        True
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
        *,
        temperature: float = 1.0,
        ignore_index: int = -100,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self._opts = _check_options(loss_type, epsilon, epsilon_high, delta, beta, entropy_coef, max_len)
        check_number("temperature", temperature, low=0.0, low_open=True)
        check_int("ignore_index", ignore_index)
        check_int("chunk_size", chunk_size, low=1, allow_none=True)
        self.loss_type, self.epsilon, self.epsilon_high = loss_type, float(epsilon), epsilon_high
        self.delta, self.beta, self.entropy_coef = delta, float(beta), float(entropy_coef)
        self.max_len = max_len
        self.temperature, self.ignore_index, self.chunk_size = float(temperature), ignore_index, chunk_size
        self.last_metrics: dict[str, torch.Tensor] = {}

    def forward(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        target: torch.Tensor,
        old_logps: torch.Tensor | None,
        advantages: torch.Tensor,
        mask: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        ref_logps: torch.Tensor | None = None,
        normalizer: Normalizer = None,
    ) -> torch.Tensor:
        _check_head("hidden", hidden, "weight", weight, "bias", bias)
        if hidden.dim() != 3:
            raise LossTypeError(
                f"hidden must be 3-D (B, T, H), got {hidden.dim()}-D of shape {tuple(hidden.shape)}"
            )
        flat_t = _check_tokens_target(target, hidden, weight.shape[0], self.ignore_index, "hidden")
        shape = target.shape
        probe = hidden.new_empty(shape)  # (B, T): the per-token tensors' expected shape
        for name, t in (("old_logps", old_logps), ("ref_logps", ref_logps)):
            if t is not None:
                _check_token_tensor(name, t, probe)
        _check_advantages(advantages, probe)
        m = _check_mask(mask, probe) & (target != self.ignore_index)
        _check_pg_normalizer(normalizer, self._opts.loss_type)
        opts = self._opts
        grad_on = torch.is_grad_enabled() and any(
            x is not None and x.requires_grad for x in (hidden, weight, bias)
        )
        if opts.loss_type == "gspo" or not grad_on or torch.compiler.is_compiling():
            logps, ent = linear_log_probs(
                hidden,
                weight,
                target.masked_fill(~m, self.ignore_index),
                bias,
                self.ignore_index,
                self.temperature,
                return_entropy=True,
                chunk_size=self.chunk_size,
            )
            loss, parts = _loss(opts, logps, old_logps, advantages, m, ref_logps, ent, normalizer)
        else:
            loss, logps, ent = self._fused(
                hidden, weight, bias, flat_t, m, old_logps, advantages, ref_logps, normalizer
            )
            with torch.no_grad():
                parts = token_parts(
                    logps, old_logps, advantages, m, ref_logps=ref_logps, entropy=ent, **_option_kwargs(opts)
                )
        with torch.no_grad():
            self.last_metrics = _metrics(parts)
        return loss

    def _fused(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        flat_t: torch.Tensor,
        m: torch.Tensor,
        old_logps: torch.Tensor | None,
        advantages: torch.Tensor,
        ref_logps: torch.Tensor | None,
        normalizer: Normalizer,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss, ``(B, T)`` log-probs and entropies through the grads-in-forward token kernel."""
        opts = self._opts
        shape = m.shape
        n = m.numel()
        w = _token_weights(m, opts.loss_type, opts.max_len, normalizer, torch.float64).reshape(1, n)
        adv = advantages if advantages.dim() == 2 else advantages[:, None].expand(shape)
        old_flat = None if old_logps is None else old_logps.detach().reshape(1, n)
        adv_flat = adv.detach().reshape(1, n)
        ref_flat = None if ref_logps is None else ref_logps.detach().reshape(1, n)
        mask_flat = m.reshape(1, n)
        kwargs = _option_kwargs(opts)

        @overload
        def cols(x: torch.Tensor, rows: Any) -> torch.Tensor: ...

        @overload
        def cols(x: None, rows: Any) -> None: ...

        def cols(x: torch.Tensor | None, rows: Any) -> torch.Tensor | None:
            if x is None:
                return None
            return x[:, rows] if isinstance(rows, slice) else x.index_select(1, rows)

        def row_loss(rows: Any, lp: torch.Tensor, ent: torch.Tensor | None) -> torch.Tensor:
            terms = token_parts(
                lp[None],
                cols(old_flat, rows),
                cols(adv_flat, rows),
                cols(mask_flat, rows),
                ref_logps=cols(ref_flat, rows),
                entropy=None if ent is None else ent[None],
                **kwargs,
            ).terms
            return (cols(w, rows).to(terms.dtype) * terms).sum()

        masked_t = torch.where(m.reshape(-1), flat_t, self.ignore_index)
        h2 = hidden.reshape(n, hidden.shape[-1])
        vocab = weight.shape[0]
        chunk = self.chunk_size
        if chunk is None:  # a probabilities buffer only for an entropy term
            chunk = auto_chunk_size(n, vocab, 2 if opts.entropy_coef else 1, _CHUNK_BYTES)
        plan = _plan(m.reshape(-1), n, vocab, 1, chunk, hidden.device)
        options = (1.0 / self.temperature, self.ignore_index, True)
        out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = TokenLocalLinearLoss.apply(  # type: ignore[no-untyped-call]  # Function.apply is unannotated in torch
            h2, weight, bias, masked_t, plan, options, row_loss
        )
        loss, logps, ent = out
        return loss, logps.reshape(shape), ent.reshape(shape)

    def extra_repr(self) -> str:
        return (
            f"loss_type={self.loss_type!r}, epsilon={self.epsilon}, epsilon_high={self.epsilon_high}, "
            f"delta={self.delta}, beta={self.beta}, entropy_coef={self.entropy_coef}, max_len={self.max_len}, "
            f"temperature={self.temperature}, ignore_index={self.ignore_index}, chunk_size={self.chunk_size}"
        )
