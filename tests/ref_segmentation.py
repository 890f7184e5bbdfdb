"""Plain float64 references for the segmentation option, MCC and preset tests (loops over images and classes).

Written from the formulas (Milletari et al. 2016, Salehi et al. 2017, Matthews 1975 / Abhishek &
Hamarneh 2021, MONAI's and kornia's documented conventions), never from the code under test.
"""

from __future__ import annotations

import torch


def probs(x: torch.Tensor, mode: str) -> torch.Tensor:
    x = x.double()
    if mode == "multiclass":
        e = torch.exp(x - x.max(dim=1, keepdim=True).values)
        return e / e.sum(dim=1, keepdim=True)
    return 1.0 / (1.0 + torch.exp(-x))


def dense(x: torch.Tensor, target: torch.Tensor, mode: str, ignore_index=None, mask=None):
    """Dense float64 target ``(N, C, ...)`` and the positions that count ``(N, ...)``."""
    n, c = x.shape[:2]
    if target.dim() == x.dim():
        g = target.double()
        valid = torch.ones((n, *x.shape[2:]), dtype=torch.bool)
    else:
        valid = torch.ones(target.shape, dtype=torch.bool) if ignore_index is None else target != ignore_index
        g = torch.zeros(x.shape, dtype=torch.float64)
        for k in range(c):
            g[:, k] = (target == (1 if mode == "binary" else k)).double()
    if mask is not None:
        valid = valid & (mask.squeeze(1) if mask.dim() == x.dim() else mask)
    return g * valid.unsqueeze(1), valid


def sums(p, g, valid):
    """Per (image, class) ``[TP, FP, FN, TN]`` with TP in the L1 form ``(|p| + |g| - |p - g|) / 2``."""
    n, c = p.shape[:2]
    out = torch.zeros(n, c, 4, dtype=torch.float64)
    rows = []
    for i in range(n):
        row = []
        for k in range(c):
            pv, gv = p[i, k][valid[i]], g[i, k][valid[i]]
            tp = (pv.sum() + gv.sum() - (pv - gv).abs().sum()) / 2
            fp, fn = pv.sum() - tp, gv.sum() - tp
            row.append(torch.stack([tp, fp, fn, valid[i].sum().double() - tp - fp - fn]))
        rows.append(torch.stack(row))
    return torch.stack(rows) if rows else out


def reduce(entries, reduction, weight=None):
    """The family's reductions: per-class weights scale the entries; ``'mean'`` is ``sum(w l) / sum(w)``."""
    w = torch.ones_like(entries) if weight is None else weight.double().expand_as(entries)
    if reduction == "none":
        return entries * w
    if reduction == "sum":
        return (entries * w).sum()
    return (entries * w).sum() / w.sum() if entries.numel() else entries.sum() * 0.0


def tversky(
    x,
    target,
    mode="multiclass",
    *,
    k=2.0,
    alpha=1.0,
    beta=1.0,
    gamma=None,
    snr=0.0,
    sdr=0.0,
    empty_smooth=1.0,
    eps=1e-7,
    average="macro",
    batch=False,
    weight=None,
    include_background=True,
    ignore_index=None,
    mask=None,
    reduction="mean",
):
    """``1 - (k TP + s_nr) / (k TP + alpha FP + beta FN + s_dr)`` per (image, class) or pooled (micro)."""
    p = probs(x, mode)
    g, valid = dense(x, target, mode, ignore_index, mask)
    s = sums(p * valid.unsqueeze(1), g, valid)  # (N, C, 4)
    if batch:
        s = s.sum(0, keepdim=True)
    w = None if weight is None else weight.double()
    if not include_background:
        s = s[:, 1:]
        w = None if w is None else w[1:]
    if average == "micro":
        s = (s * (1.0 if w is None else w.reshape(1, -1, 1))).sum(1, keepdim=True)
        w = None
    out = torch.zeros(s.shape[:2], dtype=torch.float64)
    vals = []
    for i in range(s.shape[0]):
        row = []
        for c in range(s.shape[1]):
            tp, fp, fn, _ = s[i, c]
            empty = float((tp + fn).detach()) <= 0
            nr, dr = (empty_smooth, empty_smooth) if empty and empty_smooth is not None else (snr, sdr)
            den = k * tp + alpha * fp + beta * fn + dr
            v = 1 - (k * tp + nr) / torch.clamp(den, min=eps)
            if gamma is not None:
                v = torch.clamp(v, min=eps) ** (1 / gamma)
            row.append(v)
        vals.append(torch.stack(row))
    out = torch.stack(vals)
    if average == "micro":
        out = out[:, 0]
    if batch:
        out = out[0]
    return reduce(out, reduction, w)


def mcc(
    x,
    target,
    mode="binary",
    *,
    empty_smooth=1.0,
    eps=1e-7,
    batch=False,
    weight=None,
    include_background=True,
    ignore_index=None,
    mask=None,
    reduction="mean",
):
    """``1 - (TP TN - FP FN) / sqrt((TP + FP)(TP + FN)(TN + FP)(TN + FN))``; empty / full targets:
    ``FP / (FP + s)`` and ``FN / (FN + s)``."""
    p = probs(x, mode)
    g, valid = dense(x, target, mode, ignore_index, mask)
    s = sums(p * valid.unsqueeze(1), g, valid)
    if batch:
        s = s.sum(0, keepdim=True)
    w = None if weight is None else weight.double()
    if not include_background:
        s = s[:, 1:]
        w = None if w is None else w[1:]
    vals = []
    for i in range(s.shape[0]):
        row = []
        for c in range(s.shape[1]):
            tp, fp, fn, tn = s[i, c]
            if float((tp + fn).detach()) <= 0:
                row.append(fp / (fp + empty_smooth))
            elif float((tn + fp).detach()) <= 0:
                row.append(fn / (fn + empty_smooth))
            else:
                n = tp + fp + fn + tn
                tp, fp, fn, tn = tp / n, fp / n, fn / n, tn / n
                num = tp * tn - fp * fn
                den = torch.sqrt(torch.clamp((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn), min=eps * eps))
                row.append(1 - num / den)
        vals.append(torch.stack(row))
    out = torch.stack(vals)
    if batch:
        out = out[0]
    return reduce(out, reduction, w)


def bce(x, y):
    """Element-wise binary cross-entropy of logits, log-sigmoid form."""
    x = x.double()
    return -(y * torch.nn.functional.logsigmoid(x) + (1 - y) * torch.nn.functional.logsigmoid(-x))


def soft_bce_target(y, smooth_factor):
    """segmentation_models_pytorch's SoftBCEWithLogitsLoss: ``(1 - y) s + y (1 - s)``."""
    return (1 - y) * smooth_factor + y * (1 - smooth_factor)


def ce_pixels(x, target, weight=None, label_smoothing=0.0, ignore_index=None):
    """Per-pixel cross-entropy ``(N, ...)`` of class-index targets and the per-pixel weight (torch semantics)."""
    logp = torch.log_softmax(x.double(), 1)
    c = x.shape[1]
    w = torch.ones(c, dtype=torch.float64) if weight is None else weight.double()
    valid = torch.ones(target.shape, dtype=torch.bool) if ignore_index is None else target != ignore_index
    t = torch.where(valid, target, torch.zeros_like(target))
    onehot = torch.stack([(t == k).double() for k in range(c)], 1)
    q = (1 - label_smoothing) * onehot + label_smoothing / c
    loss = -(q * w.reshape(1, -1, *([1] * (x.dim() - 2))) * logp).sum(1)
    return loss * valid, w[t] * valid


def exp_weights(levels):
    """MONAI's DeepSupervisionLoss 'exp' weights: ``max(0.5 ** l, 0.0625)``."""
    return [max(0.5**i, 0.0625) for i in range(levels)]


def nearest_resize(t, size):
    """Nearest-neighbour ('nearest-exact') resize of ``(N, ...)`` or ``(N, C, ...)`` by index arithmetic."""
    in_size = t.shape[-len(size) :]
    idx = [
        torch.clamp(torch.floor((torch.arange(o, dtype=torch.float64) + 0.5) * (i / o)).long(), max=i - 1)
        for i, o in zip(in_size, size)
    ]
    out = t
    for d, ix in enumerate(idx):
        out = out.index_select(t.dim() - len(size) + d, ix)
    return out


__all__ = [
    "bce",
    "ce_pixels",
    "dense",
    "exp_weights",
    "mcc",
    "nearest_resize",
    "probs",
    "reduce",
    "soft_bce_target",
    "sums",
    "tversky",
]
