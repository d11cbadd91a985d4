"""TAP loss: cross-entropy on the time-arrow logits plus lambda x the decorrelation loss.

``L = CE(y, u([z_t, z_t+1])) + lam * L_decorr(z)`` with ``lam = 0.01`` and, for each frame's
feature map ``z`` with ``C`` channels flattened over its pixels (PAPER.md eq. 5):

    a_ij = softmax_j(z_i . z_j / tau),    L_decorr = -(1/C) sum_i log a_ii,    tau = 0.2.

Normalisation (as in tarrow, which uses the correlation matrix): every channel vector ``z_i`` is
centred over the pixels and scaled to unit L2 norm, so ``z_i . z_j`` is the Pearson correlation of
channels ``i`` and ``j`` (in [-1, 1]); ``a`` is the row-softmax of the correlation matrix / tau.
Perfectly decorrelated channels give ``log(1 + (C - 1) e^{-1/tau})`` (the minimum reachable with
orthogonal channels), ``C`` duplicated channels give ``log C``. The per-frame losses are averaged
over all frames in the batch. Computed in float32 even under autocast.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["decorrelation_loss", "tap_loss", "TapLoss"]


def decorrelation_loss(z: torch.Tensor, tau: float = 0.2, eps: float = 1e-8) -> torch.Tensor:
    """Decorrelation loss of dense features.

    Args:
        z: ``(N, C, H, W)`` feature maps (one per frame), or ``(B, T, C, H, W)`` (frames folded).
        tau: softmax temperature (0.2).
        eps: guards the normalisation of constant channels.

    Returns:
        Scalar: mean over frames of ``-(1/C) sum_i log a_ii``.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if z.ndim == 5:
        z = z.flatten(0, 1)  # (B*T, C, H, W)
    if z.ndim != 4:
        raise ValueError(f"decorrelation_loss takes (N, C, H, W) features, got shape {tuple(z.shape)}")
    n, c = z.shape[:2]
    with torch.autocast(device_type=z.device.type, enabled=False):  # bmm would otherwise run in bf16
        v = z.float().reshape(n, c, -1)  # (N, C, P)
        v = v - v.mean(dim=-1, keepdim=True)
        v = v / (v.norm(dim=-1, keepdim=True) + eps)  # unit-norm channel vectors
        corr = torch.bmm(v, v.transpose(1, 2)) / tau  # (N, C, C)
        log_a = F.log_softmax(corr, dim=-1)  # (N, C, C), row-normalised
        return -log_a.diagonal(dim1=-2, dim2=-1).mean()  # mean over frames and channels


class TapLoss(NamedTuple):
    """``total = ce + lam * decorr``; all scalars (``total`` carries the gradient)."""

    total: torch.Tensor
    ce: torch.Tensor
    decorr: torch.Tensor


def tap_loss(logits: torch.Tensor, target: torch.Tensor, z: torch.Tensor, lam: float = 0.01,
             tau: float = 0.2) -> TapLoss:
    """TAP training loss.

    Args:
        logits: ``(B, 2)`` time-arrow logits.
        target: ``(B,)`` long: position of the earlier frame (0 = given in order, 1 = flipped).
        z: ``(B, 2, C, H, W)`` or ``(2B, C, H, W)`` dense features of both frames.
        lam: weight of the decorrelation term (0.01).
        tau: decorrelation temperature (0.2).
    """
    ce = F.cross_entropy(logits.float(), target)
    decorr = decorrelation_loss(z, tau)
    return TapLoss(ce + lam * decorr, ce, decorr)
