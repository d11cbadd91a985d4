"""Grad-CAM attribution maps (Selvaraju et al. 2017, via ``pytorch_grad_cam``) and top-k regions.

Paper (Figure 2): Grad-CAM on the TAP classifier shows which regions of a frame drive the time
arrow prediction; the **top 8 regions** ranked by Grad-CAM score are shown as crops at t and t+1.

Maps are full-frame: the model sees the whole frame pair ``(t, t+1)``; the target layer is the
backbone's output (dense features, one map per frame). Both frames go through the backbone in one
call and pass an identity ``probe`` module that Grad-CAM hooks; the activation ``(2, C, Y, X)`` is reshaped to ``(1, 2C, Y, X)``: the CAM weighs
both frames' feature channels together and yields one ``(Y, X)`` map for the pair, scaled to [0, 1]
by ``pytorch_grad_cam``.

Targets (what is explained):

- **TAP** (:func:`gradcam_tap`): the logit of the true order. The pair is given in true order
  ``(t, t+1)``, and TAP's logit ``k`` scores "frame k is the earlier one", so the target is logit 0.
- **event head** (:func:`gradcam_event`): the event evidence, the log-odds of "any event"
  ``logsumexp(logits[1:]) - logits[0]`` (binary heads: ``logit_event - logit_none``) of the crop pair

  - centred at a chosen pixel ``(y, x)`` (``target="location"``), or
  - averaged over every crop position of the frame (``target="sum"``, the default: the frame's
    summed event evidence divided by the number of pixels), computed densely and exactly as in
    ``tapcore.predict`` (zero-padded features, the linear layer as an FFT correlation).

  Calibration is not applied: temperature scaling is monotone and Grad-CAM maps are rescaled.

Top-k regions (:func:`top_regions`): the CAM is box-filtered with a ``size x size`` mean filter
(only boxes entirely inside the frame); greedy non-maximum suppression then takes the highest box,
removes every box that would overlap it, and repeats. Regions never overlap; each has its score
(mean CAM inside the box), its box, and its crops at t and t+1.

Hooks are owned by the ``GradCAM`` object used as a context manager, so they are removed after
every call (no memory growth over repeated calls).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from tapcore.binning import bin_movie, model_bin, unbin_map
from tapcore.detector import EventDetector, TapFeatures, load_model
from tapcore.events.dense import dense_event_logits
from tapcore.io import check_movie, normalization, normalize_movie, write_tiff
from tapcore.utils import (atomic_write_bytes, atomic_write_json, atomic_write_text, environment_info, resolve_device,
                           sha256_array)

logger = logging.getLogger(__name__)

EVENT_TARGETS = ("sum", "location")
REGION_COLUMNS = ["rank", "y", "x", "y0", "x0", "size", "score"]


# -- models seen by Grad-CAM: input (B, 2, Y, X) normalised frames t, t+1 -------------------------
class _TapArrow(nn.Module):
    """``(B, 2, Y, X)`` -> TAP logits ``(B, 2)`` (logit 0: the given order is the true one).

    The backbone runs on both frames in one call and its output passes ``probe`` (an identity),
    the layer Grad-CAM hooks; then the TAP head ``(B, 2, C, Y, X) -> (B, 2)``.
    """

    def __init__(self, tap: nn.Module):
        super().__init__()
        self.tap = tap
        self.probe = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, height, width = x.shape
        z = self.probe(self.tap.backbone(x.reshape(b * t, 1, height, width)))  # (B*2, C, Y, X)
        return self.tap.head(z.reshape(b, t, *z.shape[1:]))  # (B, 2)


def _event_evidence(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Log-odds of any event: ``logsumexp(logits[1:]) - logits[0]`` along ``dim``."""
    rest = logits.narrow(dim, 1, logits.shape[dim] - 1)
    return torch.logsumexp(rest, dim=dim) - logits.select(dim, 0)


class _EventEvidence(nn.Module):
    """``(B, 2, Y, X)`` -> event evidence ``(B, 1)`` of an event model (see module docstring)."""

    def __init__(self, model: nn.Module, target: str = "sum", location: Optional[tuple[int, int]] = None):
        super().__init__()
        self.model = model
        self.target = target
        self.location = location
        self.probe = nn.Identity()  # the layer Grad-CAM hooks: the backbone's output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, height, width = x.shape
        z = self.probe(self.model.backbone(x.reshape(b * t, 1, height, width)))  # (B*2, C, Y, X)
        z = z.reshape(b, t, *z.shape[1:])  # (B, 2, C, Y, X)
        head = self.model.head
        if self.target == "sum":
            return _event_evidence(dense_event_logits(head, z)).mean(dim=(-2, -1))[:, None]  # (B, 1)
        y, xx = self.location  # type: ignore[misc]
        win = head.crop + 2 * head.margin
        y0, x0 = y - head.crop // 2 - head.margin, xx - head.crop // 2 - head.margin  # window top-left
        zp = F.pad(z, (win, win, win, win))  # zeros outside the frame, as in training windows
        window = zp[..., y0 + win:y0 + 2 * win, x0 + win:x0 + 2 * win]  # (B, 2, C, win, win)
        return _event_evidence(head(window))[:, None]  # (B, 1)


def _fold_frames(t: torch.Tensor) -> torch.Tensor:
    """Grad-CAM reshape: ``(B*2, C, Y, X)`` -> ``(B, 2C, Y, X)`` (both frames' channels together)."""
    return t.reshape(t.shape[0] // 2, 2 * t.shape[1], *t.shape[2:])


def _pair_tensor(frames: np.ndarray, device: str) -> torch.Tensor:
    frames = np.asarray(frames, np.float32)
    if frames.ndim != 3 or frames.shape[0] != 2:
        raise ValueError(f"expected a normalised frame pair (2, Y, X), got shape {frames.shape}")
    return torch.from_numpy(np.ascontiguousarray(frames))[None].to(device)  # (1, 2, Y, X)


def _run_cam(wrapper: nn.Module, layer: nn.Module, x: torch.Tensor, target_index: int) -> np.ndarray:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with torch.enable_grad():
        with GradCAM(model=wrapper, target_layers=[layer], reshape_transform=_fold_frames) as cam:
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(target_index)])  # (1, Y, X)
            cam.activations_and_grads.clear()
    wrapper.zero_grad(set_to_none=True)
    return np.asarray(maps[0], np.float32)


def gradcam_tap(tap_model: nn.Module, frames: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Grad-CAM map of the TAP model's time arrow for a normalised frame pair.

    Args:
        tap_model: a ``TapModel`` (``.backbone``; forward ``(B, 2, 1, Y, X) -> (B, 2)``).
        frames: ``(2, Y, X)`` normalised frames t, t+1 (true order).
        device: torch device.

    Returns:
        ``(Y, X) float32`` in [0, 1]; target: the logit of the true order (logit 0).
    """
    x = _pair_tensor(frames, device)
    wrapper = _TapArrow(tap_model.to(device)).eval()
    return _run_cam(wrapper, wrapper.probe, x, 0)


def gradcam_event(event_model: nn.Module, frames: np.ndarray, target: str = "sum",
                  location: Optional[tuple[int, int]] = None, device: str = "cpu") -> np.ndarray:
    """Grad-CAM map of an event model's event evidence for a normalised frame pair.

    Args:
        event_model: an ``EventModel`` (``.backbone``, ``.head``).
        frames: ``(2, Y, X)`` normalised frames t, t+1.
        target: ``"sum"`` (mean event evidence over all crop positions) or ``"location"``.
        location: ``(y, x)`` centre of the crop pair to explain (``target="location"``).
        device: torch device.

    Returns:
        ``(Y, X) float32`` in [0, 1].
    """
    if target not in EVENT_TARGETS:
        raise ValueError(f"unknown Grad-CAM target {target!r}; use one of {', '.join(EVENT_TARGETS)}")
    x = _pair_tensor(frames, device)
    height, width = x.shape[-2:]
    if target == "location":
        if location is None:
            raise ValueError("target='location' needs location=(y, x), the centre of the crop pair to explain")
        y, xx = int(location[0]), int(location[1])
        if not (0 <= y < height and 0 <= xx < width):
            raise ValueError(f"location ({y}, {xx}) lies outside the {height} x {width} frame")
        location = (y, xx)
    wrapper = _EventEvidence(event_model.to(device), target, location).eval()
    return _run_cam(wrapper, wrapper.probe, x, 0)


# -- top-k regions ---------------------------------------------------------------------------------
@dataclass
class Region:
    """One top-k region: a ``size x size`` box with top-left ``(y0, x0)`` and centre ``(y, x)``.

    ``crop_t`` / ``crop_t1``: the movie's crops at t and t+1 (normalised, float32), when requested.
    """

    rank: int
    y: int
    x: int
    y0: int
    x0: int
    size: int
    score: float
    crop_t: Optional[np.ndarray] = field(default=None, repr=False)
    crop_t1: Optional[np.ndarray] = field(default=None, repr=False)


def box_scores(cam: np.ndarray, size: int) -> np.ndarray:
    """Mean of ``cam`` over the ``size x size`` box centred at each pixel (top-left ``(y - size//2,
    x - size//2)``); ``-inf`` where the box does not lie entirely inside the frame. ``(Y, X) float64``."""
    cam = np.asarray(cam, np.float64)
    height, width = cam.shape
    out = np.full((height, width), -np.inf)
    if size > height or size > width:
        return out
    s = np.zeros((height + 1, width + 1))
    s[1:, 1:] = cam.cumsum(0).cumsum(1)
    box = (s[size:, size:] - s[:-size, size:] - s[size:, :-size] + s[:-size, :-size]) / (size * size)
    lo = size // 2  # box with top-left (i, j) is centred at (i + lo, j + lo)
    out[lo:lo + box.shape[0], lo:lo + box.shape[1]] = box
    return out


def top_regions(cam: np.ndarray, k: int = 8, size: int = 48) -> list[Region]:
    """The ``k`` highest-scoring non-overlapping ``size x size`` regions of a CAM (greedy NMS).

    Args:
        cam: ``(Y, X)`` attribution map.
        k: number of regions (paper: 8); fewer are returned when no more fit.
        size: box side in pixels (the crop size, 48).

    Returns:
        regions ranked by score (rank 1 = highest), without crops (see :func:`attach_crops`).
    """
    cam = np.asarray(cam)
    if cam.ndim != 2:
        raise ValueError(f"a CAM must be a 2-D map (Y, X), got shape {cam.shape}")
    if int(k) < 1:
        raise ValueError(f"k must be at least 1 region, got {k}")
    size = int(size)
    if size < 1 or size > min(cam.shape):
        raise ValueError(f"region size {size} does not fit the {cam.shape[0]} x {cam.shape[1]} frame; "
                         f"use a size between 1 and {min(cam.shape)}")
    scores = box_scores(cam, size)
    lo = size // 2
    regions: list[Region] = []
    for rank in range(1, int(k) + 1):
        flat = int(np.argmax(scores))
        y, x = divmod(flat, scores.shape[1])
        best = scores[y, x]
        if not np.isfinite(best):
            break
        regions.append(Region(rank, int(y), int(x), int(y - lo), int(x - lo), size, float(best)))
        # any box whose centre is within size-1 of this one (in y and x) would overlap it
        scores[max(0, y - size + 1):y + size, max(0, x - size + 1):x + size] = -np.inf
    return regions


def attach_crops(regions: list[Region], movie_norm: np.ndarray, t: int) -> list[Region]:
    """Fill each region's ``crop_t`` / ``crop_t1`` from a normalised movie ``(T, Y, X)``."""
    for r in regions:
        r.crop_t = np.asarray(movie_norm[t, r.y0:r.y0 + r.size, r.x0:r.x0 + r.size], np.float32).copy()
        r.crop_t1 = np.asarray(movie_norm[t + 1, r.y0:r.y0 + r.size, r.x0:r.x0 + r.size], np.float32).copy()
    return regions


def regions_frame(regions: list[Region]) -> pd.DataFrame:
    """Regions as a DataFrame with :data:`REGION_COLUMNS` (pixels; score = mean CAM in the box)."""
    return pd.DataFrame([[getattr(r, c) for c in REGION_COLUMNS] for r in regions], columns=REGION_COLUMNS)


# -- the workflow ----------------------------------------------------------------------------------
@dataclass
class ExplainConfig:
    """Options of :func:`explain_frame` (paper: top 8 regions of crop size 48)."""

    frame: int = 0  # t: the pair (t, t+1) is explained
    k: int = 8  # number of top regions (paper: 8)
    size: int = 48  # region side in the model's pixels (the crop size); a model binned by b shows size * b px
    target: str = "sum"  # event heads: "sum" (whole-frame event evidence) | "location"
    y: Optional[int] = None  # target="location": centre of the crop pair to explain
    x: Optional[int] = None
    device: str = "auto"  # "auto" | "cpu" | "cuda[:N]"
    pmin: Optional[float] = None  # normalisation percentiles; None = the bundle's
    pmax: Optional[float] = None

    def validate(self) -> "ExplainConfig":
        if self.target not in EVENT_TARGETS:
            raise ValueError(f"unknown Grad-CAM target {self.target!r}; use one of {', '.join(EVENT_TARGETS)}")
        if int(self.k) < 1 or int(self.size) < 1:
            raise ValueError(f"k and size must be positive, got k={self.k}, size={self.size}")
        if self.target == "location" and (self.y is None or self.x is None):
            raise ValueError("target='location' needs y and x (the centre of the crop pair to explain)")
        return self


@dataclass
class Explanation:
    """What :func:`explain_frame` returns."""

    cam: np.ndarray  # (Y, X) float32 in [0, 1]
    regions: list[Region]
    frames: np.ndarray  # (2, Y, X) normalised frames t, t+1
    record: dict[str, Any]


def explain_frame(movie: np.ndarray, model: Union[str, os.PathLike, TapFeatures, EventDetector],
                  cfg: Optional[ExplainConfig] = None) -> Explanation:
    """Grad-CAM of a TAP or event-head model on the frame pair ``(cfg.frame, cfg.frame + 1)`` of a movie.

    Args:
        movie: raw movie ``(T, Y, X)``.
        model: a bundle folder (``kind`` ``tap`` or ``event_head``) or its facade
            (:class:`~tapcore.detector.TapFeatures`, :class:`~tapcore.detector.EventDetector`).
        cfg: :class:`ExplainConfig`.

    Returns:
        :class:`Explanation` with the map, the top-k regions (with crops) and a run record.
    """
    cfg = dataclasses.replace(cfg or ExplainConfig()).validate()
    movie = check_movie(movie, 2, purpose="Grad-CAM of a frame pair")
    t = int(cfg.frame)
    if not 0 <= t < movie.shape[0] - 1:
        raise ValueError(f"frame {t} has no next frame in a movie of {movie.shape[0]} frames; "
                         f"choose a frame between 0 and {movie.shape[0] - 2}")
    device = resolve_device(cfg.device)
    t0 = time.time()
    facade = model if isinstance(model, (TapFeatures, EventDetector)) else load_model(model, device=device)
    is_tap = isinstance(facade, TapFeatures)
    pmin, pmax = normalization(facade.config, cfg.pmin, cfg.pmax)
    frames = normalize_movie(movie[t:t + 2], pmin, pmax)  # (2, Y, X), original pixels (display, crops)
    # a binned model (bundle "bin" = b) sees the pair binned; its map is repeated back to (Y, X), a
    # location is given in original pixels, and a region of ``size`` model pixels spans size * b pixels
    b = model_bin(facade.config)
    seen = frames if b == 1 else normalize_movie(bin_movie(movie[t:t + 2], b), pmin, pmax)  # (2, Y/b, X/b)
    if is_tap:
        cam = gradcam_tap(facade.model, seen, device)
        target = "time_arrow"
    else:
        loc = (int(cfg.y) // b, int(cfg.x) // b) if cfg.target == "location" else None
        cam = gradcam_event(facade.model, seen, cfg.target, loc, device)
        target = cfg.target
    cam = np.ascontiguousarray(unbin_map(cam, b, frames.shape[1:]), dtype=np.float32)  # (Y, X)
    size = min(int(cfg.size) * b, *frames.shape[1:])
    regions = attach_crops(top_regions(cam, cfg.k, size), frames, 0)
    record = {
        "model_id": facade.id,
        "model_path": str(facade.path) if facade.path is not None else None,
        "model_kind": "tap" if is_tap else "event_head",
        "target": target,
        "location": [cfg.y, cfg.x] if cfg.target == "location" and not is_tap else None,
        "frame": t,
        "next_frame": t + 1,
        "config": dataclasses.asdict(cfg),
        "normalize": {"pmin": pmin, "pmax": pmax},
        "movie_shape": list(movie.shape),
        "movie_sha256": sha256_array(movie),
        "bin": int(b),
        "region_size_px": int(size),
        "elapsed_s": time.time() - t0,
        "environment": environment_info(device),
    }
    return Explanation(cam, regions, frames, record)


def write_explanation(exp: Explanation, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``cam.tif`` (float32 (Y, X)), ``cam.png`` (the map over frame t), ``regions.csv``,
    ``regions.npz`` (crops ``crops_t``/``crops_t1`` (k, size, size) and the table), ``regions.png``
    (each region's crops at t and t+1) and ``explain.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = regions_frame(exp.regions)
    paths = {"cam": write_tiff(out / "cam.tif", exp.cam.astype(np.float32)),
             "regions": atomic_write_text(out / "regions.csv", table.to_csv(index=False))}
    import io as _io

    buf = _io.BytesIO()
    size = exp.regions[0].size if exp.regions else 0
    np.savez_compressed(
        buf,
        crops_t=np.stack([r.crop_t for r in exp.regions]) if exp.regions else np.zeros((0, size, size), np.float32),
        crops_t1=np.stack([r.crop_t1 for r in exp.regions]) if exp.regions else np.zeros((0, size, size), np.float32),
        table=table.to_numpy(np.float64), columns=np.array(REGION_COLUMNS), cam=exp.cam.astype(np.float32))
    paths["npz"] = atomic_write_bytes(out / "regions.npz", buf.getvalue())
    paths["png"] = atomic_write_bytes(out / "cam.png", _png(overlay(exp.frames[0], exp.cam, exp.regions)))
    if exp.regions:
        paths["regions_png"] = atomic_write_bytes(out / "regions.png", _png(region_strip(exp.regions)))
    record = dict(exp.record)
    record["files"] = {k: p.name for k, p in paths.items()}
    record["regions"] = table.to_dict(orient="records")
    paths["record"] = atomic_write_json(out / "explain.json", record)
    return paths


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255).round().astype(np.uint8)


def overlay(frame: np.ndarray, cam: np.ndarray, regions: Optional[list[Region]] = None, alpha: float = 0.45) -> np.ndarray:
    """RGB ``(Y, X, 3) uint8``: the normalised frame in grey, the CAM as a jet colour map on top, and
    each region's box outlined in white."""
    import cv2

    grey = _to_uint8(frame)
    heat = cv2.applyColorMap(_to_uint8(cam), cv2.COLORMAP_JET)[..., ::-1]  # BGR -> RGB
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    img = ((1 - alpha) * rgb + alpha * heat.astype(np.float32)).round().astype(np.uint8)
    for r in regions or []:
        img = np.ascontiguousarray(img)
        cv2.rectangle(img, (r.x0, r.y0), (r.x0 + r.size - 1, r.y0 + r.size - 1), (255, 255, 255), 1)
        cv2.putText(img, str(r.rank), (r.x0 + 2, r.y0 + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    return img


def region_strip(regions: list[Region]) -> np.ndarray:
    """Grey ``uint8`` image: the regions' crops at t (top row) and t+1 (bottom row), by rank, 2 px gaps."""
    size = regions[0].size
    gap = 2
    img = np.full((2 * size + gap, len(regions) * (size + gap) - gap), 255, np.uint8)
    for i, r in enumerate(regions):
        x = i * (size + gap)
        img[:size, x:x + size] = _to_uint8(r.crop_t)
        img[size + gap:, x:x + size] = _to_uint8(r.crop_t1)
    return img


def _png(img: np.ndarray) -> bytes:
    import io as _io

    from PIL import Image

    buf = _io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()
