"""TAP training pairs: sampling and augmentation as batched tensor ops on the training device.

The normalised movie lives on the training device as one ``(T, Y, X)`` float32 tensor. A batch is
drawn with no per-sample Python loop and no host synchronisation:

1. random pairs ``(t, t + dt)`` and patch positions (``torch.randint`` on the device's generator);
2. one window per frame, larger than the patch, gathered around the patch by advanced indexing
   (reflected at the movie borders) -> ``(B, 2, S, S)``;
3. one sampling grid per frame that combines the **joint** arbitrary rotation, **joint** scaling,
   **joint** elastic deformation (the same for both frames of a pair) and a small **independent**
   translation of each frame, applied with a single ``F.grid_sample`` -> ``(B, 2, P, P)``;
4. intensity augmentation: additive Gaussian noise, intensity scale and shift, each **global**
   (joint for the pair) and **per frame**;
5. the order flip: with probability 0.5 the two frames are swapped; the label is the position of
   the earlier frame (0: in order, 1: flipped).

Geometry conventions (pixel units, ``y`` down, relative to the patch centre): an output pixel
``p`` is first displaced by the elastic field ``d(p)``, then sampled from the source offset
``q = R(-theta) (p + d(p)) / s + shift_frame``: the content appears rotated counter-clockwise on
screen by ``theta``, magnified by ``s`` and moved by ``-shift_frame``.

The amounts of each augmentation are documented in :class:`AugmentConfig` (tarrow's list; the
numeric ranges are ours where the papers are silent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = [
    "AugmentConfig",
    "AugmentParams",
    "PairSampler",
    "reflect_index",
    "gather_windows",
    "sample_augment_params",
    "build_grid",
    "warp_pairs",
    "augment_intensity",
    "flip_order",
    "window_size",
    "extract_pairs",
    "sample_pair_coords",
]


@dataclass
class AugmentConfig:
    """Augmentations of TAP training pairs (tarrow / PAPER.md section 1; ranges are ours).

    Attributes:
        enabled: master switch of the geometric and intensity augmentations (the order flip is
            governed by ``flip_order`` alone; validation pairs are never augmented).
        flip_order: swap the two frames with probability 0.5 (the TAP label).
        rotate: joint arbitrary rotation, angle uniform in [0, 2 pi).
        scale: joint spatial scaling (magnification) range, log-uniform (0.8, 1.25); (1, 1) disables.
        elastic_sigma: joint elastic deformation: std (px) of the displacement at the control points;
            0 disables.
        elastic_grid: control points per side of the elastic displacement field (smooth in between).
        translate: independent translation of each frame, uniform in [-translate, translate] px per axis.
        noise: additive Gaussian noise; per pair the std is uniform in [0, noise] (normalised units).
        intensity_scale_global: joint intensity scale range (uniform).
        intensity_scale_frame: per-frame intensity scale range (uniform).
        intensity_shift_global: joint intensity shift, uniform in [-v, v].
        intensity_shift_frame: per-frame intensity shift, uniform in [-v, v].
    """

    enabled: bool = True
    flip_order: bool = True
    rotate: bool = True
    scale: tuple[float, float] = (0.8, 1.25)
    elastic_sigma: float = 1.5
    elastic_grid: int = 4
    translate: float = 2.0
    noise: float = 0.05
    intensity_scale_global: tuple[float, float] = (0.8, 1.2)
    intensity_scale_frame: tuple[float, float] = (0.95, 1.05)
    intensity_shift_global: float = 0.1
    intensity_shift_frame: float = 0.02

    def validate(self) -> None:
        """Raise ValueError naming any option out of range."""
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ValueError(f"augment scale range must satisfy 0 < min <= max, got {self.scale}")
        for name in ("elastic_sigma", "translate", "noise", "intensity_shift_global", "intensity_shift_frame"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"augment {name} must be >= 0, got {getattr(self, name)}")
        if int(self.elastic_grid) < 2:
            raise ValueError(f"augment elastic_grid must be >= 2, got {self.elastic_grid}")
        for name in ("intensity_scale_global", "intensity_scale_frame"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"augment {name} must satisfy 0 < min <= max, got {getattr(self, name)}")


@dataclass
class AugmentParams:
    """Random parameters of one batch (all tensors on the device; B pairs, 2 frames).

    Attributes:
        angle: ``(B,)`` joint rotation (radians, counter-clockwise on screen).
        scale: ``(B,)`` joint magnification.
        elastic: ``(B, 2, g, g)`` joint displacement (dy, dx) at the control points (px), spread
            smoothly over the patch by a separable Gaussian interpolation kernel.
        shift: ``(B, 2, 2)`` per-frame source offset (dy, dx) in px.
        noise_std: ``(B,)`` std of the additive noise.
        gain_global, gain_frame: ``(B,)`` and ``(B, 2)`` intensity scales.
        offset_global, offset_frame: ``(B,)`` and ``(B, 2)`` intensity shifts.
        flip: ``(B,)`` long, 1 where the pair's order is swapped.
    """

    angle: torch.Tensor
    scale: torch.Tensor
    elastic: torch.Tensor
    shift: torch.Tensor
    noise_std: torch.Tensor
    gain_global: torch.Tensor
    gain_frame: torch.Tensor
    offset_global: torch.Tensor
    offset_frame: torch.Tensor
    flip: torch.Tensor

    @classmethod
    def identity(cls, batch: int, device: torch.device | str = "cpu", grid: int = 4) -> "AugmentParams":
        """Parameters that change nothing (for tests and to build custom transforms)."""
        z = torch.zeros(batch, device=device)
        o = torch.ones(batch, device=device)
        return cls(angle=z.clone(), scale=o.clone(), elastic=torch.zeros(batch, 2, grid, grid, device=device),
                   shift=torch.zeros(batch, 2, 2, device=device), noise_std=z.clone(), gain_global=o.clone(),
                   gain_frame=torch.ones(batch, 2, device=device), offset_global=z.clone(),
                   offset_frame=torch.zeros(batch, 2, device=device),
                   flip=torch.zeros(batch, dtype=torch.long, device=device))


def window_size(patch: int, aug: AugmentConfig) -> int:
    """Side ``S`` of the source window that holds every pixel a ``patch`` can sample (``S - patch`` even)."""
    if not aug.enabled:
        return patch
    # |p + d| <= (P/2) sqrt(2) + 3 sigma sqrt(2): corner of the patch plus the clamped elastic shift
    reach = (patch / 2) * (math.sqrt(2) if aug.rotate else 1.0) + 3 * math.sqrt(2) * float(aug.elastic_sigma)
    reach = reach / float(aug.scale[0]) + float(aug.translate) + 2  # +2: bilinear neighbours
    half = max(int(math.ceil(reach)), (patch + 1) // 2)
    size = 2 * half
    return size + ((size - patch) % 2)


def reflect_index(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Map integer indices into ``[0, n)`` by mirror reflection (``... 2 1 | 0 1 2 ... n-1 | n-2 ...``)."""
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    r = torch.remainder(idx, period)
    return torch.where(r >= n, period - r, r)


def gather_windows(movie: torch.Tensor, t: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, size: int,
                   dt: int = 1) -> torch.Tensor:
    """Windows ``(B, 2, size, size)`` of frames ``t`` and ``t + dt`` with top-left corners ``(y0, x0)``.

    Args:
        movie: ``(T, Y, X)`` tensor.
        t, y0, x0: ``(B,)`` long tensors (windows may extend past the borders: indices are reflected).
    """
    _, ny, nx = movie.shape
    ar = torch.arange(size, device=movie.device)
    iy = reflect_index(y0[:, None] + ar[None, :], ny)  # (B, S)
    ix = reflect_index(x0[:, None] + ar[None, :], nx)  # (B, S)
    tt = torch.stack([t, t + dt], dim=1)  # (B, 2)
    return movie[tt[:, :, None, None], iy[:, None, :, None], ix[:, None, None, :]]  # (B, 2, S, S)


def _uniform(shape, lo: float, hi: float, gen: torch.Generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen, device=device)


def sample_augment_params(batch: int, aug: AugmentConfig, gen: torch.Generator,
                          device: torch.device | str) -> AugmentParams:
    """Draw one batch of augmentation parameters on ``device`` from ``gen`` (no host sync)."""
    b = batch
    if not aug.enabled:  # no geometric / intensity change; the order flip (the TAP label) stays
        params = AugmentParams.identity(b, device, int(aug.elastic_grid))
        if aug.flip_order:
            params.flip = torch.randint(0, 2, (b,), generator=gen, device=device)
        return params
    angle = (_uniform((b,), 0.0, 2 * math.pi, gen, device) if aug.rotate else torch.zeros(b, device=device))
    lo, hi = (float(v) for v in aug.scale)
    scale = torch.exp(_uniform((b,), math.log(lo), math.log(hi), gen, device))
    g = int(aug.elastic_grid)
    elastic = torch.randn((b, 2, g, g), generator=gen, device=device) * float(aug.elastic_sigma)
    shift = _uniform((b, 2, 2), -float(aug.translate), float(aug.translate), gen, device)
    noise_std = _uniform((b,), 0.0, float(aug.noise), gen, device)
    gain_global = _uniform((b,), *aug.intensity_scale_global, gen, device)
    gain_frame = _uniform((b, 2), *aug.intensity_scale_frame, gen, device)
    offset_global = _uniform((b,), -float(aug.intensity_shift_global), float(aug.intensity_shift_global), gen, device)
    offset_frame = _uniform((b, 2), -float(aug.intensity_shift_frame), float(aug.intensity_shift_frame), gen, device)
    if aug.flip_order:
        flip = torch.randint(0, 2, (b,), generator=gen, device=device)
    else:
        flip = torch.zeros(b, dtype=torch.long, device=device)
    return AugmentParams(angle, scale, elastic, shift, noise_std, gain_global, gain_frame, offset_global,
                         offset_frame, flip)


def _elastic_kernel(grid: int, patch: int, device) -> torch.Tensor:
    """``(P, g)`` separable interpolation weights from ``g`` control points to ``P`` pixels.

    Control points sit evenly from the first to the last pixel; weights are a Gaussian of the
    distance (width: one control spacing), normalised per pixel, so the field is smooth.
    """
    u = torch.linspace(0.0, 1.0, patch, device=device)  # (P,)
    c = torch.linspace(0.0, 1.0, grid, device=device)  # (g,)
    w = torch.exp(-0.5 * ((u[:, None] - c[None, :]) * (grid - 1)) ** 2)  # (P, g)
    return w / w.sum(dim=1, keepdim=True)


def build_grid(params: AugmentParams, patch: int, window: int, elastic_sigma: float = math.inf) -> torch.Tensor:
    """Sampling grids ``(B, 2, P, P, 2)`` (x, y in ``grid_sample``'s [-1, 1], align_corners=False).

    ``elastic_sigma`` bounds the displacement to +-3 sigma (keeps every sample inside the window).
    """
    b = params.angle.shape[0]
    device = params.angle.device
    c = torch.arange(patch, device=device, dtype=torch.float32) - (patch - 1) / 2  # (P,)
    py = c.view(1, patch, 1).expand(b, patch, patch)  # (B, P, P)
    px = c.view(1, 1, patch).expand(b, patch, patch)
    elastic = params.elastic.float()
    k = _elastic_kernel(elastic.shape[-1], patch, device)  # (P, g)
    d = k @ elastic @ k.T  # (B, 2, P, P): smooth displacement field
    if math.isfinite(elastic_sigma):
        d = d.clamp(-3 * elastic_sigma, 3 * elastic_sigma)
    py = py + d[:, 0]  # joint elastic displacement (output space)
    px = px + d[:, 1]
    cos = torch.cos(params.angle).view(b, 1, 1) / params.scale.view(b, 1, 1)
    sin = torch.sin(params.angle).view(b, 1, 1) / params.scale.view(b, 1, 1)
    qx = cos * px - sin * py  # (B, P, P): joint rotation + scaling
    qy = sin * px + cos * py
    qy = qy[:, None] + params.shift[:, :, 0].view(b, 2, 1, 1)  # (B, 2, P, P): + per-frame translation
    qx = qx[:, None] + params.shift[:, :, 1].view(b, 2, 1, 1)
    return torch.stack([qx, qy], dim=-1) * (2.0 / window)  # (B, 2, P, P, 2)


def warp_pairs(windows: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Resample windows ``(B, 2, S, S)`` on grids ``(B, 2, P, P, 2)`` -> ``(B, 2, P, P)`` (one grid_sample)."""
    b, t, s, _ = windows.shape
    p = grid.shape[2]
    out = F.grid_sample(windows.reshape(b * t, 1, s, s), grid.reshape(b * t, p, p, 2), mode="bilinear",
                        padding_mode="border", align_corners=False)  # (B*2, 1, P, P)
    return out.view(b, t, p, p)


def augment_intensity(x: torch.Tensor, params: AugmentParams, gen: Optional[torch.Generator] = None) -> torch.Tensor:
    """``x: (B, 2, P, P)`` -> ``x * gain_global * gain_frame + offset_global + offset_frame + noise``."""
    b = x.shape[0]
    gain = params.gain_global.view(b, 1) * params.gain_frame  # (B, 2)
    offset = params.offset_global.view(b, 1) + params.offset_frame  # (B, 2)
    x = x * gain[..., None, None] + offset[..., None, None]
    if gen is not None:
        noise = torch.randn(x.shape, generator=gen, device=x.device)
        x = x + noise * params.noise_std.view(b, 1, 1, 1)
    return x


def flip_order(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Swap the two frames of ``x: (B, 2, ...)`` where ``flip: (B,)`` is 1."""
    mask = flip.bool().view((-1,) + (1,) * (x.ndim - 1))
    return torch.where(mask, x.flip(1), x)


def sample_pair_coords(n: int, shape: tuple[int, int, int], region: int, dt: int, frames: tuple[int, int],
                       gen: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """Random pair coordinates ``(n, 3)`` long ``[t, y0, x0]``: frames ``t, t + dt`` inside ``frames``
    (``lo <= t`` and ``t + dt < hi``), a ``region x region`` square inside the frame."""
    _, ny, nx = shape
    lo, hi = frames
    if hi - lo <= dt:
        raise ValueError(f"the frame range [{lo}, {hi}) holds no pair of frames {dt} apart; use a longer movie")
    if region > ny or region > nx:
        raise ValueError(f"a {region} x {region} px patch does not fit into {ny} x {nx} px frames; "
                         "choose a smaller patch size")
    t = torch.randint(lo, hi - dt, (n,), generator=gen, device=device)
    y = torch.randint(0, ny - region + 1, (n,), generator=gen, device=device)
    x = torch.randint(0, nx - region + 1, (n,), generator=gen, device=device)
    return torch.stack([t, y, x], dim=1)  # (n, 3)


def extract_pairs(movie: torch.Tensor, coords: torch.Tensor, crop: int, resolution: float = 1.0,
                  dt: int = 1) -> torch.Tensor:
    """Unaugmented pairs ``(N, 2, 1, crop, crop)`` at ``coords (N, 3) [t, y0, x0]``.

    ``resolution != 1`` views the movie rescaled by that factor: the ``round(crop / resolution)``
    source square at ``(y0, x0)`` is resized to ``crop x crop`` (area average when shrinking,
    bilinear when enlarging), i.e. the
    crop the rescaled movie would give at the same place.
    """
    region = int(round(crop / resolution))
    w = gather_windows(movie, coords[:, 0], coords[:, 1], coords[:, 2], region, dt)  # (N, 2, R, R)
    if region != crop:
        n = w.shape[0]
        flat = w.reshape(n * 2, 1, region, region)
        if region > crop:  # shrinking: average the source pixels (box filter, no aliasing)
            flat = F.interpolate(flat, size=(crop, crop), mode="area")
        else:
            flat = F.interpolate(flat, size=(crop, crop), mode="bilinear", align_corners=False)
        w = flat.view(n, 2, crop, crop)
    return w.unsqueeze(2)  # (N, 2, 1, crop, crop)


class PairSampler:
    """Draws augmented TAP pairs from a movie tensor on the training device.

    Args:
        movie: ``(T, Y, X)`` float32 normalised movie (on the training device).
        patch: patch side P (96).
        dt: frame distance of a pair (1).
        frames: ``(lo, hi)`` frame range the pairs come from (default: the whole movie).
        augment: :class:`AugmentConfig` (default: all augmentations).
        generator: a ``torch.Generator`` on the movie's device (its state is the sampler's state).
    """

    def __init__(self, movie: torch.Tensor, patch: int = 96, dt: int = 1, frames: Optional[tuple[int, int]] = None,
                 augment: Optional[AugmentConfig] = None, generator: Optional[torch.Generator] = None):
        if movie.ndim != 3:
            raise ValueError(f"PairSampler takes a (T, Y, X) movie, got shape {tuple(movie.shape)}")
        self.movie = movie
        self.patch = int(patch)
        self.dt = int(dt)
        self.frames = tuple(frames) if frames is not None else (0, movie.shape[0])
        self.augment = augment if augment is not None else AugmentConfig()
        self.augment.validate()
        self.window = window_size(self.patch, self.augment)
        if generator is None:
            generator = torch.Generator(device=movie.device)
            generator.manual_seed(0)
        self.gen = generator
        # validates the frame range / patch size once, up front
        sample_pair_coords(1, tuple(movie.shape), self.patch, self.dt, self.frames, self.gen, movie.device)

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One augmented batch: ``x (B, 2, 1, P, P)`` float32 and labels ``(B,)`` long."""
        dev = self.movie.device
        coords = sample_pair_coords(batch, tuple(self.movie.shape), self.patch, self.dt, self.frames, self.gen, dev)
        params = sample_augment_params(batch, self.augment, self.gen, dev)
        if self.augment.enabled:
            margin = (self.window - self.patch) // 2
            windows = gather_windows(self.movie, coords[:, 0], coords[:, 1] - margin, coords[:, 2] - margin,
                                     self.window, self.dt)  # (B, 2, S, S)
            grid = build_grid(params, self.patch, self.window, float(self.augment.elastic_sigma))
            x = warp_pairs(windows, grid)  # (B, 2, P, P)
            x = augment_intensity(x, params, self.gen)
        else:
            x = gather_windows(self.movie, coords[:, 0], coords[:, 1], coords[:, 2], self.patch, self.dt)
        x = flip_order(x, params.flip)
        return x.unsqueeze(2), params.flip  # (B, 2, 1, P, P), (B,)
