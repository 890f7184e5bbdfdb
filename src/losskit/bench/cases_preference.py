"""``losskit bench`` cases for the fused per-token log-probs and the fused DPO loss.

* ``linear_log_probs``, shape ``(N, H, V)``: ``N`` tokens (all counted), hidden size ``H``, vocabulary
  ``V``; the step is ``(logps * u).sum()`` with a fixed random ``u`` (a non-uniform upstream
  gradient, as a preference loss gives), gradients for the hidden states and the head weight.

  - ``losskit``: :func:`losskit.preference.linear_log_probs` (chunked; logits recomputed in backward);
  - ``eager``: ``log_softmax(hidden @ weight.T).gather(target)`` (materialises the ``(N, V)`` logits);
  - ``native``: ``-F.cross_entropy(hidden @ weight.T, target, reduction='none')``.

* ``linear_dpo``, shape ``(P, T, H, V)``: ``P`` preference pairs whose chosen and rejected
  completions have ``T`` counted tokens each (``2 P T`` rows), reference log-probs precomputed.

  - ``losskit``: :class:`losskit.preference.LinearDPOLoss` (``beta = 0.1``, sigmoid), with the default
    ``pair_bytes`` (a pair's logits above 96 MiB: the rejected completion's formed twice) and with
    ``pair_bytes`` raised so both completions' logits are held (three products per row, as eager);
  - ``eager``: logits of both completions, ``log_softmax``, ``gather``, per-sequence sums and
    ``-logsigmoid(beta * margin).mean()`` in plain torch.

* ``linear_dpo_reference_model``: the same pairs with the reference model given by its hidden states
  and head (a frozen copy with perturbed weights), run under ``no_grad`` by both variants.

One step at the full shapes takes seconds on a CPU, so both cases time at most 10 rounds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cases import Case, Inputs, Shape, Variant, register_case

__all__ = ["make_dpo", "make_dpo_reference_model", "make_log_probs"]

_BETA = 0.1


def make_log_probs(shape: Shape, dtype: torch.dtype, seed: int) -> Inputs:
    """``(hidden (N, H), weight (V, H), target (N,), upstream (N,))``."""
    n, h, v = shape
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype)
    weight = (torch.randn(v, h, generator=g) / h**0.5).to(dtype)
    target = torch.randint(0, v, (n,), generator=g)
    upstream = torch.randn(n, generator=g)
    return (hidden, weight, target, upstream), (0, 1)


def _log_probs_variants() -> list[Variant]:
    from losskit.preference import linear_log_probs

    def eager(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax((h @ w.T).float(), -1).gather(1, t.unsqueeze(1)).squeeze(1)
        return (logp * u).sum()

    def native(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return -(F.cross_entropy(h @ w.T, t, reduction="none") * u).sum()

    return [
        Variant(
            "losskit.linear_log_probs", "losskit", lambda h, w, t, u: (linear_log_probs(h, w, t) * u).sum()
        ),
        Variant("eager (log_softmax(hidden @ weight.T), gather)", "eager", eager),
        Variant("-F.cross_entropy(hidden @ weight.T, reduction='none')", "native", native),
    ]


def make_dpo(shape: Shape, dtype: torch.dtype, seed: int) -> Inputs:
    """``(chosen_hidden, rejected_hidden (P, T, H), weight (V, H), chosen_target, rejected_target (P, T),
    ref_chosen_logps, ref_rejected_logps (P,))``."""
    p, t, h, v = shape
    g = torch.Generator().manual_seed(seed)
    hw = torch.randn(p, t, h, generator=g).to(dtype)
    hl = torch.randn(p, t, h, generator=g).to(dtype)
    weight = (torch.randn(v, h, generator=g) / h**0.5).to(dtype)
    yw = torch.randint(0, v, (p, t), generator=g)
    yl = torch.randint(0, v, (p, t), generator=g)
    # reference log-probs near the policy's (random logits: about -t log v), with some spread
    base = -float(t) * float(torch.log(torch.tensor(float(v))))
    rw = base + torch.randn(p, generator=g)
    rl = base + torch.randn(p, generator=g)
    return (hw, hl, weight, yw, yl, rw, rl), (0, 1, 2)


def _dpo_variants() -> list[Variant]:
    from losskit.preference import LinearDPOLoss

    fused = LinearDPOLoss(beta=_BETA)
    held = LinearDPOLoss(beta=_BETA, pair_bytes=2**30)  # both completions' logits held: six products

    def eager(hw: torch.Tensor, hl: torch.Tensor, w: torch.Tensor, yw: torch.Tensor, yl: torch.Tensor, rw: torch.Tensor, rl: torch.Tensor) -> torch.Tensor:
        p = hw.shape[0]
        logits = torch.cat([hw, hl]) @ w.T
        logp = torch.log_softmax(logits.float(), -1).gather(2, torch.cat([yw, yl]).unsqueeze(2)).squeeze(2)
        seq = logp.sum(1)
        margin = (seq[:p] - rw) - (seq[p:] - rl)
        return -F.logsigmoid(_BETA * margin).mean()

    return [
        Variant(
            "losskit.LinearDPOLoss",
            "losskit",
            lambda hw, hl, w, yw, yl, rw, rl: fused(
                hw, hl, w, yw, yl, ref_chosen_logps=rw, ref_rejected_logps=rl
            ),
        ),
        Variant(
            "losskit.LinearDPOLoss(pair_bytes=1 GiB)",
            "losskit",
            lambda hw, hl, w, yw, yl, rw, rl: held(
                hw, hl, w, yw, yl, ref_chosen_logps=rw, ref_rejected_logps=rl
            ),
        ),
        Variant("eager (logits, log_softmax, gather, sums, logsigmoid)", "eager", eager),
    ]


def make_dpo_reference_model(shape: Shape, dtype: torch.dtype, seed: int) -> Inputs:
    """``(chosen_hidden, rejected_hidden (P, T, H), weight (V, H), chosen_target, rejected_target (P, T),
    ref_chosen_hidden, ref_rejected_hidden (P, T, H), ref_weight (V, H))``: the reference model's last
    hidden states and head instead of its log-probs."""
    (hw, hl, weight, yw, yl, _, _), wrt = make_dpo(shape, dtype, seed)
    g = torch.Generator().manual_seed(seed + 1)
    noise = [(0.1 * torch.randn(x.shape, generator=g)).to(dtype) for x in (hw, hl, weight)]
    return (hw, hl, weight, yw, yl, hw + noise[0], hl + noise[1], weight + noise[2]), wrt


def _seq_logps(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax((hidden @ weight.T).float(), -1)
    return logp.gather(2, target.unsqueeze(2)).squeeze(2).sum(1)


def _dpo_reference_variants() -> list[Variant]:
    from losskit.preference import LinearDPOLoss

    fused = LinearDPOLoss(beta=_BETA)

    def eager(hw: torch.Tensor, hl: torch.Tensor, w: torch.Tensor, yw: torch.Tensor, yl: torch.Tensor, rhw: torch.Tensor, rhl: torch.Tensor, rw: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ref_w, ref_l = _seq_logps(rhw, rw, yw), _seq_logps(rhl, rw, yl)
        margin = (_seq_logps(hw, w, yw) - ref_w) - (_seq_logps(hl, w, yl) - ref_l)
        return -F.logsigmoid(_BETA * margin).mean()

    return [
        Variant(
            "losskit.LinearDPOLoss (reference hidden states)",
            "losskit",
            lambda hw, hl, w, yw, yl, rhw, rhl, rw: fused(
                hw, hl, w, yw, yl, ref_chosen_hidden=rhw, ref_rejected_hidden=rhl, ref_weight=rw
            ),
        ),
        Variant("eager (reference logits under no_grad, then as linear_dpo)", "eager", eager),
    ]


register_case(
    Case(
        "linear_log_probs",
        make_log_probs,
        (4096, 1024, 32000),
        (64, 32, 128),
        _log_probs_variants,
        [],
        note="N tokens, hidden size H, vocabulary V; random upstream gradient on the log-probs",
        max_repeat=10,
    )
)
register_case(
    Case(
        "linear_dpo",
        make_dpo,
        (4, 512, 1024, 32000),
        (2, 8, 32, 128),
        _dpo_variants,
        [],
        note="P pairs x T tokens per completion (2 P T rows), hidden size H, vocabulary V; reference "
        "log-probs precomputed",
        max_repeat=10,
    )
)
register_case(
    Case(
        "linear_dpo_reference_model",
        make_dpo_reference_model,
        (4, 512, 1024, 32000),
        (2, 8, 32, 128),
        _dpo_reference_variants,
        [],
        note="as linear_dpo, with the reference model's hidden states and head (forward only, no_grad)",
        max_repeat=10,
    )
)
