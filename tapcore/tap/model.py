"""The TAP network: dense U-Net features, a projection, and an exactly time-equivariant head.

Layout (PAPER.md section 1, after tarrow):

- :class:`UNet`: ``depth`` 2x max-pool down-samplings (channels ``base * 2**level``, i.e.
  32/64/128/256 for the defaults), two 3x3 conv + BatchNorm + LeakyReLU(0.01) per block,
  nearest-neighbour 2x up-sampling + skip concatenation on the way up, then a 1x1 conv to
  ``features`` channels at input resolution.
- projection: 1x1 conv + BatchNorm (part of :attr:`TapModel.backbone`).
- :class:`TimeEquivariantHead`: two permutation-equivariant Deep-Sets blocks applied per pixel,
  ``y_t = L(x_t) + mean_s G(x_s)``, then spatial average pooling and a linear layer shared by the
  frames -> one logit per frame. Swapping the two input frames swaps the two logits *exactly*:
  every per-frame operation is the same function of its frame, and the mean over two frames is
  ``(a + b) / 2``, which is commutative in floating point.

Exactness in practice: the two time slots go through the backbone and the head in separate calls
with identical shapes (rather than folded into one batch, where a sample's result may depend on
its batch position through kernel blocking). Swapping the frames therefore swaps every
intermediate result bit for bit, in eval mode and in train mode: BatchNorm's batch statistics
are computed per slot (each slot holds a random mix of earlier and later frames because of the
order flip) and swap along with the frames.

Any input size works: :class:`Backbone` pads ``H, W`` up to a multiple of ``2**depth``
(zero padding, the same border convention as the 3x3 convs) and crops the output back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TapConfig", "UNet", "Backbone", "TimeEquivariantHead", "TapModel"]


@dataclass
class TapConfig:
    """Architecture of the TAP model (defaults: tarrow / the paper).

    Attributes:
        in_channels: image channels (grayscale movies: 1).
        base_channels: channels of the first U-Net level; level ``l`` has ``base * 2**l`` (32/64/128/256).
        depth: number of 2x max-pool down-samplings in the U-Net (3).
        features: channels of the dense feature map ``z`` (after the 1x1 output conv and projection) (32).
        head_channels: channels of the Deep-Sets blocks of the time-equivariant head (32).
        head_blocks: number of permutation-equivariant blocks in the head (2).
        negative_slope: LeakyReLU slope everywhere (0.01).
        n_frames: frames per TAP sample (2: t and t + dt).
    """

    in_channels: int = 1
    base_channels: int = 32
    depth: int = 3
    features: int = 32
    head_channels: int = 32
    head_blocks: int = 2
    negative_slope: float = 0.01
    n_frames: int = 2

    def validate(self) -> None:
        """Raise ValueError naming any option out of range."""
        for name in ("in_channels", "base_channels", "features", "head_channels", "head_blocks"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TapConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if not 0 <= int(self.depth) <= 6:
            raise ValueError(f"TapConfig.depth must be between 0 and 6, got {self.depth!r}")
        if int(self.n_frames) < 2:
            raise ValueError(f"TapConfig.n_frames must be >= 2, got {self.n_frames!r}")
        if not 0.0 <= float(self.negative_slope) < 1.0:
            raise ValueError(f"TapConfig.negative_slope must be in [0, 1), got {self.negative_slope!r}")


def _conv_block(c_in: int, c_out: int, slope: float) -> nn.Sequential:
    """Two 3x3 conv + BatchNorm + LeakyReLU layers (spatial size kept)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(slope, inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(slope, inplace=True),
    )


class UNet(nn.Module):
    """U-Net ``(N, in, H, W) -> (N, features, H, W)``; ``H, W`` must be multiples of ``2**depth``."""

    def __init__(self, in_channels: int = 1, base: int = 32, depth: int = 3, out_channels: int = 32,
                 slope: float = 0.01):
        super().__init__()
        chans = [base * 2**level for level in range(depth + 1)]  # e.g. [32, 64, 128, 256]
        self.depth = depth
        self.down = nn.ModuleList()
        c_prev = in_channels
        for c in chans:  # levels 0..depth (the last one is the bottleneck)
            self.down.append(_conv_block(c_prev, c, slope))
            c_prev = c
        self.up = nn.ModuleList()
        for level in reversed(range(depth)):  # depth-1 .. 0
            self.up.append(_conv_block(chans[level + 1] + chans[level], chans[level], slope))
        self.out = nn.Conv2d(chans[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.down):
            if level > 0:
                x = F.max_pool2d(x, 2)  # (N, c, H / 2**level, W / 2**level)
            x = block(x)
            if level < self.depth:
                skips.append(x)
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (N, c, h*2, w*2)
            x = block(torch.cat([x, skip], dim=1))
        return self.out(x)  # (N, out_channels, H, W)


class Backbone(nn.Module):
    """Dense TAP features: U-Net + projection (1x1 conv + BatchNorm), any input size.

    ``forward(x: (N, in, H, W)) -> z: (N, features, H, W)``. Inputs whose sides are not multiples of
    ``2**depth`` are zero-padded (bottom/right) and the output is cropped back.
    """

    def __init__(self, cfg: TapConfig):
        super().__init__()
        self.multiple = 2 ** int(cfg.depth)
        self.unet = UNet(cfg.in_channels, cfg.base_channels, cfg.depth, cfg.features, cfg.negative_slope)
        self.projection = nn.Sequential(nn.Conv2d(cfg.features, cfg.features, 1, bias=False),
                                        nn.BatchNorm2d(cfg.features))
        self.out_channels = int(cfg.features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"the TAP backbone takes (N, C, H, W) images, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        ph = (-h) % self.multiple
        pw = (-w) % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))  # (N, C, H + ph, W + pw)
        z = self.projection(self.unet(x))  # (N, features, H + ph, W + pw)
        if ph or pw:
            z = z[..., :h, :w]
        return z


class _EquivariantBlock(nn.Module):
    """Per-pixel Deep-Sets layer over time: ``y_t = L(x_t) + mean_s G(x_s)``, then LeakyReLU.

    Works on a list of per-frame tensors ``[(B, C, H, W)] * T``: every frame goes through the same
    calls with the same shapes, so a frame's result does not depend on its position in time.
    """

    def __init__(self, c_in: int, c_out: int, slope: float):
        super().__init__()
        self.local = nn.Conv2d(c_in, c_out, 1)
        self.glob = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.slope = slope

    def forward(self, frames: list[torch.Tensor]) -> list[torch.Tensor]:
        glo = [self.glob(f) for f in frames]  # T x (B, C', H, W)
        # for T == 2 the sum is a + b, which is bitwise symmetric: exact permutation equivariance
        total = glo[0]
        for g in glo[1:]:
            total = total + g
        mean = total / len(frames)
        return [F.leaky_relu(self.local(f) + mean, self.slope) for f in frames]


class TimeEquivariantHead(nn.Module):
    """``z: (B, T, C, H, W) -> logits (B, T)``: Deep-Sets blocks per pixel, spatial mean, per-frame linear."""

    def __init__(self, cfg: TapConfig):
        super().__init__()
        blocks = []
        c = int(cfg.features)
        for _ in range(int(cfg.head_blocks)):
            blocks.append(_EquivariantBlock(c, int(cfg.head_channels), cfg.negative_slope))
            c = int(cfg.head_channels)
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(c, 1)

    def forward_frames(self, frames: list[torch.Tensor]) -> torch.Tensor:
        """Per-frame features ``[(B, C, H, W)] * T`` -> logits ``(B, T)``."""
        for block in self.blocks:
            frames = block(frames)
        pooled = [f.mean(dim=(-2, -1)) for f in frames]  # T x (B, Ch)
        return torch.cat([self.fc(p) for p in pooled], dim=1)  # (B, T)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.forward_frames([z[:, i] for i in range(z.shape[1])])


class TapModel(nn.Module):
    """Time arrow prediction model.

    Attributes:
        cfg: the :class:`TapConfig` it was built from (bundles store it).
        backbone: ``(N, 1, H, W) -> (N, C, H, W)`` dense features (U-Net + projection).
        head: the time-equivariant classifier ``(B, T, C, H, W) -> (B, T)``.
    """

    def __init__(self, cfg: TapConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else TapConfig()
        self.cfg.validate()
        self.backbone = Backbone(self.cfg)
        self.head = TimeEquivariantHead(self.cfg)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (N, 1, H, W)`` -> dense features ``(N, C, H, W)`` (the backbone)."""
        return self.backbone(x)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x: (B, T, 1, H, W)`` -> ``(logits (B, T), z (B, T, C, H, W))``; frames go through the backbone independently."""
        if x.ndim != 5:
            raise ValueError(f"TapModel takes (B, T, 1, H, W) frame pairs, got shape {tuple(x.shape)}")
        # One backbone call per time slot (not time folded into the batch): each slot is computed by
        # the same calls on the same shapes, so swapping the frames swaps the results bit for bit,
        # in eval mode and in train mode (BatchNorm statistics are per slot and swap with it).
        frames = [self.backbone(x[:, i].contiguous()) for i in range(x.shape[1])]  # T x (B, C, H, W)
        return self.head.forward_frames(frames), torch.stack(frames, dim=1)  # (B, T), (B, T, C, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, T, 1, H, W)`` -> logits ``(B, T)``.

        Logit ``k`` scores "frame ``k`` is the earliest frame"; the TAP label of a pair is the
        position of the earlier frame (0: given in true order ``(t, t+dt)``, 1: flipped).
        """
        return self.forward_with_features(x)[0]
