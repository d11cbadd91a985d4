"""Event classification heads on dense per-frame features (paper section 2, "Model").

Every head has the same structure, which is what makes dense whole-movie prediction exact
(``docs/interfaces.md``, "Events"):

- ``encode(z: (N, C, H, W)) -> (N, D, H, W)``: a per-frame encoder made of 3x3 convolutions with
  padding 1 only (the identity for the linear heads);
- ``margin``: context pixels the encoder needs on each side (0 for linear heads, 3 for the ResNet
  encoders: three 3x3 convolutions). The centre ``crop x crop`` of an encoded window of side
  ``crop + 2 * margin`` equals the encoding of the whole (zero-padded) map at those pixels;
- ``combine``: ``"mean"`` (time-invariant: average the two frames' encoded crops) or ``"concat"``
  (order-aware: keep both frames);
- ``fc``: ``nn.Linear(P * D * crop * crop, K)`` with P = 1 (mean) or 2 (concat); its weight is
  ordered as the flatten of ``(P, D, crop, crop)``; ``kernels()`` returns it as ``(K, P, D, crop, crop)``.

``head(z: (B, 2, C, crop + 2*margin, crop + 2*margin)) -> logits (B, K)`` = encode each frame, take
the centre ``crop x crop``, combine over time, flatten, ``fc``.

Border rule: training windows are cut from whole-frame feature maps with zeros outside the frame
(``tapcore.events.dense``). Dense prediction reproduces exactly the same logits when it pads
each whole-frame feature map with ``margin`` zeros on every side before ``encode`` (BatchNorm in eval
mode) and correlates the centre of the result with ``kernels()``.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

COMBINE_MODES = ("mean", "concat")


class BasicBlock(nn.Module):
    """ResNet basic block with identity shortcut: two 3x3 conv + BN, ReLU after the sum."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, D, H, W) -> (N, D, H, W)
        # without autograd (dense whole-frame prediction) the same values are computed in place on the
        # fresh intermediate tensors, which saves two full-frame allocations and passes over memory
        inplace = not torch.is_grad_enabled()
        out = F.relu(self.bn1(self.conv1(x)), inplace=inplace)
        out = self.bn2(self.conv2(out))
        out = out.add_(x) if inplace else out + x
        return F.relu(out, inplace=inplace)


def resnet_encoder(in_channels: int, width: int = 64) -> nn.Sequential:
    """The paper's per-frame encoder: 3x3 conv ``in -> width`` + BN + ReLU, one basic block ``width -> width``.

    Receptive field: 7x7 (three 3x3 convolutions), so its margin is 3.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=False),
        BasicBlock(width),
    )


class EventHead(nn.Module):
    """A head = per-frame encoder + centre crop + temporal combine + one linear layer.

    Args:
        name: registry name (stored in bundles).
        encoder: per-frame module ``(N, C, H, W) -> (N, D, H, W)`` of 3x3 convs with padding 1 (or identity).
        out_channels: D, the encoder's output channels.
        margin: context pixels the encoder needs on each side of the crop.
        combine: ``"mean"`` (time-invariant) or ``"concat"`` (order-aware).
        n_classes: K.
        crop: side of the crop the linear layer sees.
    """

    def __init__(self, name: str, encoder: nn.Module, out_channels: int, margin: int, combine: str,
                 n_classes: int, crop: int):
        super().__init__()
        if combine not in COMBINE_MODES:
            raise ValueError(f"unknown combine mode {combine!r}; use one of {', '.join(COMBINE_MODES)}")
        self.name = name
        self.encoder = encoder
        self.out_channels = int(out_channels)
        self.margin = int(margin)
        self.combine = combine
        self.n_classes = int(n_classes)
        self.crop = int(crop)
        self.parts = 1 if combine == "mean" else 2  # P
        self.fc = nn.Linear(self.parts * self.out_channels * self.crop * self.crop, self.n_classes)

    @property
    def window(self) -> int:
        """Side of the feature window the head expects: ``crop + 2 * margin``."""
        return self.crop + 2 * self.margin

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """Per-frame encoder: ``(N, C, H, W) -> (N, D, H, W)``."""
        return self.encoder(z)

    def centre(self, e: torch.Tensor) -> torch.Tensor:
        """The centre ``crop x crop`` of ``(..., H, W)`` (H, W >= crop)."""
        h, w = e.shape[-2:]
        if h < self.crop or w < self.crop:
            raise ValueError(f"feature window {h}x{w} is smaller than the head's crop {self.crop}; "
                             f"feed windows of side crop + 2*margin = {self.window}")
        y0, x0 = (h - self.crop) // 2, (w - self.crop) // 2
        return e[..., y0:y0 + self.crop, x0:x0 + self.crop]

    def combine_frames(self, e: torch.Tensor) -> torch.Tensor:
        """``(B, 2, D, crop, crop) -> (B, P, D, crop, crop)``: mean over time or keep both frames."""
        if self.combine == "mean":
            return e.mean(dim=1, keepdim=True)  # (B, 1, D, crop, crop)
        return e  # (B, 2, D, crop, crop)

    def kernels(self) -> torch.Tensor:
        """The linear layer's weight as ``(K, P, D, crop, crop)`` (a view)."""
        return self.fc.weight.view(self.n_classes, self.parts, self.out_channels, self.crop, self.crop)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z: (B, 2, C, H, W)`` feature windows (H = W = crop + 2*margin) -> logits ``(B, K)``."""
        if z.dim() != 5 or z.shape[1] != 2:
            raise ValueError(f"expected feature windows of shape (B, 2, C, H, W), got {tuple(z.shape)}")
        b, t, c, h, w = z.shape
        e = self.encode(z.reshape(b * t, c, h, w))  # (B*2, D, H, W)
        e = self.centre(e)  # (B*2, D, crop, crop)
        e = e.reshape(b, t, self.out_channels, self.crop, self.crop)  # (B, 2, D, crop, crop)
        e = self.combine_frames(e)  # (B, P, D, crop, crop)
        return self.fc(e.flatten(1))  # (B, K)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, margin={self.margin}, combine={self.combine!r}, crop={self.crop}"


def _linear(in_channels: int, n_classes: int, crop: int) -> EventHead:
    return EventHead("linear", nn.Identity(), in_channels, 0, "concat", n_classes, crop)


def _linear_invariant(in_channels: int, n_classes: int, crop: int) -> EventHead:
    return EventHead("linear_invariant", nn.Identity(), in_channels, 0, "mean", n_classes, crop)


def _resnet(in_channels: int, n_classes: int, crop: int) -> EventHead:
    return EventHead("resnet", resnet_encoder(in_channels, 64), 64, 3, "mean", n_classes, crop)


def _resnet_order(in_channels: int, n_classes: int, crop: int) -> EventHead:
    return EventHead("resnet_order", resnet_encoder(in_channels, 64), 64, 3, "concat", n_classes, crop)


#: channels of the CPU-sized ResNet head (the paper's uses 64)
LITE_WIDTH = 16


def _resnet_lite(in_channels: int, n_classes: int, crop: int) -> EventHead:
    # ours: the paper's ResNet head at 16 instead of 64 channels. Same layers, same 7x7 receptive field
    # and margin 3, full resolution (no stride, so dense prediction stays exact); per pixel it costs
    # 32*16*9 + 2*16*16*9 = 9,216 multiply-adds instead of 92,160 (10x fewer), and its linear layer
    # is 4x smaller: it trains in minutes on a CPU.
    return EventHead("resnet_lite", resnet_encoder(in_channels, LITE_WIDTH), LITE_WIDTH, 3, "mean", n_classes, crop)


def _resnet_lite_order(in_channels: int, n_classes: int, crop: int) -> EventHead:
    # ours: resnet_lite with the two frames' encodings concatenated (as resnet_order) instead of averaged.
    # A time-invariant head sees the mean of "mother condensed at t" and "daughters at t+1", half of which
    # is what the daughters look like for frames after the split; keeping the order lets it require the
    # mother (docs/results.md, "Demo model"). Linear layer 2x resnet_lite's, same encoder cost.
    return EventHead("resnet_lite_order", resnet_encoder(in_channels, LITE_WIDTH), LITE_WIDTH, 3, "concat", n_classes,
                     crop)


#: name -> (builder(in_channels, n_classes, crop), one-line description)
HEADS: dict[str, tuple[Callable[[int, int, int], EventHead], str]] = {
    "linear": (_linear, "paper: one linear layer on the flattened features of both frames (order-aware)"),
    "resnet": (_resnet, "paper: per-frame conv+BN+ReLU + one basic residual block, temporal mean, linear "
                        "(time-invariant, ~0.39 M parameters at crop 48)"),
    "linear_invariant": (_linear_invariant, "mean of the two frames' features, then one linear layer (time-invariant)"),
    "resnet_order": (_resnet_order, "the ResNet encoder per frame, both maps concatenated, then linear (order-aware)"),
    "resnet_lite": (_resnet_lite, f"ours, for CPUs: the paper's ResNet head at {LITE_WIDTH} instead of 64 channels "
                                  "(time-invariant; ~10x fewer operations per crop, exact dense prediction)"),
    "resnet_lite_order": (_resnet_lite_order, f"ours, for CPUs: resnet_order at {LITE_WIDTH} channels (order-aware: "
                                              "frame t and t+1 kept apart; the demo model's head)"),
}


def build_head(name: str, in_channels: int = 32, n_classes: int = 2, crop: int = 48) -> EventHead:
    """Build a registered head by name; unknown names raise ValueError listing the valid ones."""
    if name not in HEADS:
        raise ValueError(f"unknown event head {name!r}; valid heads: {', '.join(HEADS)}")
    if in_channels < 1 or n_classes < 2 or crop < 1:
        raise ValueError(f"invalid head size (in_channels={in_channels}, n_classes={n_classes}, crop={crop}); "
                         "need in_channels >= 1, n_classes >= 2, crop >= 1")
    return HEADS[name][0](int(in_channels), int(n_classes), int(crop))
