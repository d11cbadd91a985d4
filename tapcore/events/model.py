"""The event model: a dense feature backbone (TAP or random) plus an event head.

``EventModel(backbone, head, feature_margin)`` maps a pair of normalised image windows
``(B, 2, 1, H, W)`` to event logits ``(B, K)``. The backbone turns each frame into dense features
``(B, 2, C, H, W)``; the head sees the centre ``crop + 2 * head.margin`` window of them.
``feature_margin`` is the image context (pixels on each side of the head's window) given to the
backbone when the model is run on image crops (strategy C, trained end to end); frozen strategies
(A, B) compute features once per whole frame instead (``tapcore.events.dense``), exactly what
whole-movie prediction sees.

The head bundle (``kind="event_head"``) is self-contained: the state dict holds ``backbone.*`` and
``head.*``; ``config.json`` holds the TAP config, head name, crop, margins, class names, dataset
config, split and strategy. :func:`event_model_from_config` rebuilds the model from it alone;
``tapcore.detector.EventDetector.load`` loads a bundle folder with its metadata.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from tapcore.config import config_from_dict, config_to_dict
from tapcore.events.heads import EventHead, build_head
from tapcore.tap.model import TapConfig, TapModel

logger = logging.getLogger(__name__)


class EventModel(nn.Module):
    """Backbone + event head.

    Args:
        backbone: ``(N, 1, H, W) -> (N, C, H, W)`` dense features (``TapModel.backbone``).
        head: an :class:`~tapcore.events.heads.EventHead`.
        feature_margin: image context in pixels on each side of the head's window when the model is
            run on image crops; the expected input side is ``head.crop + 2*head.margin + 2*feature_margin``.
    """

    def __init__(self, backbone: nn.Module, head: EventHead, feature_margin: int = 0):
        super().__init__()
        if feature_margin < 0:
            raise ValueError(f"feature_margin must be >= 0, got {feature_margin}")
        self.backbone = backbone
        self.head = head
        self.feature_margin = int(feature_margin)

    @property
    def input_size(self) -> int:
        """Side of the image windows :meth:`forward` expects."""
        return self.head.window + 2 * self.feature_margin

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, 2, 1, H, W)`` normalised image pairs -> features ``(B, 2, C, H, W)``."""
        if x.dim() != 5 or x.shape[1] != 2:
            raise ValueError(f"expected image pairs of shape (B, 2, 1, H, W), got {tuple(x.shape)}")
        b, t = x.shape[:2]
        z = self.backbone(x.flatten(0, 1))  # (B*2, C, H, W)
        return z.reshape(b, t, *z.shape[1:])  # (B, 2, C, H, W)

    def forward_head(self, z: torch.Tensor) -> torch.Tensor:
        """``z: (B, 2, C, H, W)`` features (H, W >= head.window) -> logits ``(B, K)`` (centre window)."""
        h, w = z.shape[-2:]
        win = self.head.window
        if h < win or w < win:
            raise ValueError(f"feature window {h}x{w} is smaller than the head's window {win}")
        y0, x0 = (h - win) // 2, (w - win) // 2
        return self.head(z[..., y0:y0 + win, x0:x0 + win])  # (B, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, 2, 1, H, W)`` -> logits ``(B, K)``."""
        return self.forward_head(self.forward_features(x))


def tap_config_dict(tap_model: nn.Module) -> dict[str, Any]:
    """The TAP model's config as a plain dict (what an event bundle stores to rebuild the backbone)."""
    cfg = getattr(tap_model, "cfg", None)
    if cfg is None:
        raise ValueError("the TAP model carries no config (.cfg); cannot make a self-contained event bundle")
    return config_to_dict(cfg)


def build_backbone(tap_config: dict[str, Any]) -> nn.Module:
    """A fresh (randomly initialised) TAP backbone from a TAP config dict."""
    return TapModel(config_from_dict(TapConfig, tap_config)).backbone


def event_model_from_config(config: dict[str, Any]) -> EventModel:
    """Rebuild an (untrained) :class:`EventModel` from an event bundle's config dict."""
    missing = [k for k in ("tap_config", "head", "crop", "in_channels", "n_classes") if k not in config]
    if missing:
        raise ValueError(f"event bundle config lacks {', '.join(missing)}; re-create the bundle with tapcore train-head")
    backbone = build_backbone(config["tap_config"])
    head = build_head(config["head"], in_channels=int(config["in_channels"]),
                      n_classes=int(config["n_classes"]), crop=int(config["crop"]))
    return EventModel(backbone, head, feature_margin=int(config.get("feature_margin", 0)))
