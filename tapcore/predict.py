"""Whole-movie event prediction: calibrated per-pixel event maps, an event list, a per-frame summary.

For every consecutive frame pair ``(t, t+1)`` we want the map

    P_t(y, x) = calibrated event probability of the 48x48 crop pair centred at (y, x)

i.e. exactly what the event head would say if every crop of the frame had been classified (the crop
whose top-left corner is ``(y0, x0)`` is centred at ``(y0 + crop//2, x0 + crop//2)``). It is computed
without any loop over crops, using the common head structure (``tapcore.events.heads``):

1. **features once per frame**: the backbone runs on each whole normalised frame (tiled with an
   overlap of context pixels when the frame is larger than ``tile``; tile origins are multiples of
   the U-Net's ``2**depth`` and the default overlap covers its receptive field, so tiling changes
   nothing but float rounding). Several frames per call (``batch``).
2. **encoder once per frame**: ``head.encode`` (3x3 convolutions only) runs on the frame's feature
   map zero-padded like training's feature windows, and each frame's encoding ``E_t`` serves both
   pairs ``(t-1, t)`` and ``(t, t+1)``.
3. **the final linear layer densely**: ``fc`` is a cross-correlation of ``E`` with
   ``head.kernels() (K, P, D, crop, crop)``, done with ``torch.fft`` (or ``conv2d`` for tiny crops).
   The layer is linear, so each frame is correlated once and pairs are combined afterwards:
   ``combine="mean"``: ``logits = (W * E_t + W * E_t+1) / 2 + b``; ``"concat"``:
   ``logits = W_a * E_t + W_b * E_t+1 + b``.
4. temperature / bias calibration (``calibration.json``, when present), softmax; the event
   probability is ``1 - p(class 0)``.

**Borders** (zero padding, as in training). Training windows are cut from whole-frame feature maps
with zeros outside the frame (``FrameFeatures.windows``). The dense computation reproduces this for
every crop position, also for crops that stick out of the frame: the feature map is treated as
zero outside the frame, so the encoder's output there is its response to zeros (within ``margin``
pixels of the edge it is computed; further out it is the constant ``encode(0)``), and the
correlation runs over the frame extended by ``crop//2`` on each side. So a border pixel's value is
the head's output on a crop centred there that is partly zero-padded features, exactly.

The map equals the head's output on feature windows of **whole-frame** features: exact for the
frozen strategies A and B (which train on such windows); for end-to-end heads (strategy C, trained
on image crops with ``feature_margin`` pixels of context) it is the whole-frame-context version.

**Speed and memory.** Everything runs on the model's device; BatchNorms are folded into the
convolutions of a private inference copy (channels-last). On a GPU, frames are normalised there
(``torch.quantile``), ``batch`` frames (default 8) share each call, host synchronisations happen once
per batch (peak list, summary, map copy), and ``amp="bf16"`` / ``"fp16"`` autocasts the backbone and
encoder (the FFT stays float32). Memory is bounded by ``tile`` (backbone), ``head_tile`` (encoder,
FFT) and ``batch``; only the per-frame responses ``(O, Y, X)`` of the previous frame are carried.

**Binning** (``tapcore.binning``): a model whose bundle records ``bin = b > 1`` sees each batch of
frames block-mean binned by ``b`` before normalisation, and everything above runs on the binned
grid. Results come back in **original** pixels: each map is repeated ``b x b`` times and cropped to
the movie's ``(Y, X)``; an event found at binned ``(y, x)`` is reported at ``(y*b + b//2, x*b + b//2)``
(within half a pixel of its block's centre); ``min_distance`` is in original pixels (the peak search
uses ``ceil(min_distance / b)`` binned pixels).

**Event list** (peak finding): local maxima of ``P_t`` found by max-pool non-maximum suppression
with a ``(2 * min_distance + 1)`` square window (two events are more than ``min_distance`` pixels
apart in y or x), with ``P_t >= threshold``; ties on a plateau keep one pixel. A division or death
shows in two or three neighbouring frame pairs, so an event within ``repeat_frames`` frame pairs and
``min_distance`` pixels of a more probable event of the same class is a repeat and is dropped
(:func:`drop_repeats`; ``repeat_frames=0`` keeps every peak).

Outputs (:func:`write_prediction`), all frames are 0-based indices of the movie as read:

``events.csv`` (one row per detected event; columns :data:`EVENT_COLUMNS`)
    ``frame`` (int, t), ``next_frame`` (int, t + 1), ``y``, ``x`` (int, pixels: row and column of the
    crop pair's centre, 0-based), ``probability`` (float in [0, 1]: calibrated event probability at the
    peak), ``class`` (str: the most probable event class there, ``event`` for binary heads or
    ``division`` / ``death``), ``model_id`` (str: the head bundle's id).
``per_frame.csv`` (one row per frame pair; columns :data:`PER_FRAME_COLUMNS`)
    ``frame``, ``next_frame``, ``n_events`` (int), ``max_probability``, ``mean_probability`` (float in
    [0, 1], over all pixels of the pair's map).
``heatmaps.tif``
    float32 ``(T-1, Y, X)``: page t is ``P_t``.
``prediction.json``
    the run record: config, model id and path, calibration used, movie shape and sha256, timing,
    versions and device; ``data_stats`` (:func:`tapcore.verdicts.movie_statistics` of the movie) and
    ``verdicts`` (whether the movie resembles the model's training movie,
    :func:`tapcore.verdicts.data_shift_verdict`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pandas as pd
import tifffile
import torch
import torch.nn.functional as F
from torch import nn

from tapcore.calibration import Calibration
from tapcore.detector import EventDetector
from tapcore.events import dense
from tapcore.progress import ProgressFn
from tapcore.binning import bin_movie, binned_shape, model_bin, unbin_coords, unbin_map
from tapcore.io import check_movie, normalization, normalize_movie, write_tiff
from tapcore.utils import (atomic_write_json, atomic_write_text, chmod_as_created, environment_info, read_json,
                           resolve_device, sha256_array)
from tapcore.verdicts import data_shift_verdict, movie_statistics

logger = logging.getLogger(__name__)

#: events.csv columns (stable; see the module docstring for units).
EVENT_COLUMNS = ["frame", "next_frame", "y", "x", "probability", "class", "model_id"]
#: per_frame.csv columns (stable).
PER_FRAME_COLUMNS = ["frame", "next_frame", "n_events", "max_probability", "mean_probability"]
AMP_MODES = ("none", "bf16", "fp16")
METHODS = ("auto", "fft", "conv")


@dataclass
class PredictConfig:
    """Whole-movie prediction options (ours; the paper has no whole-movie step)."""

    threshold: float = 0.5  # lowest calibrated event probability of a reported event (peak)
    min_distance: int = 24  # pixels; reported events are more than this apart in y or x (half a crop)
    repeat_frames: int = 2  # an event is a repeat of a more probable one of the same class within this many frame
    # pairs and min_distance pixels, and is dropped (one division shows in 2-3 neighbouring pairs); 0: keep all
    exclusive_classes: bool = True  # one event of one class per place and time: a division and a death within
    # min_distance pixels and repeat_frames frame pairs (the same pair when 0) -> only the more probable one
    tile: int = 1280  # frames larger than this (pixels) go through the backbone in tiles of this side
    overlap: int = 64  # context pixels around each backbone tile (the U-Net's receptive radius is ~51)
    head_tile: int = 1024  # output tile side of the encoder and the FFT correlation (bounds their memory)
    batch: Optional[int] = None  # frames per backbone / encoder call (None: 1 on CPU, 8 on GPU)
    device: str = "auto"  # "auto" | "cpu" | "cuda[:N]"
    amp: str = "none"  # "none" | "bf16" | "fp16": autocast the backbone and encoder (GPU); FFT stays float32
    method: str = "auto"  # dense linear layer: "fft", "conv" (direct), "auto" (conv only for crops <= 8)
    calibrate: bool = True  # apply the bundle's calibration.json when it has one
    pmin: Optional[float] = None  # normalisation percentiles; None = the bundle's (training) values
    pmax: Optional[float] = None
    num_threads: Optional[int] = None  # torch CPU threads (None: leave torch's setting)
    keep_maps: bool = True  # keep the (T-1, Y, X) probability maps in memory (False: events only)
    channels_last: bool = True  # channels-last convolutions (faster on CPU oneDNN and GPU tensor cores)

    def validate(self) -> "PredictConfig":
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"threshold must be a probability in [0, 1], got {self.threshold}")
        if int(self.min_distance) < 0:
            raise ValueError(f"min_distance must be >= 0 pixels, got {self.min_distance}")
        if int(self.repeat_frames) < 0:
            raise ValueError(f"repeat_frames must be >= 0 frame pairs, got {self.repeat_frames}")
        if int(self.tile) < 16 or int(self.head_tile) < 16:
            raise ValueError(f"tile and head_tile must be at least 16 pixels, got {self.tile}, {self.head_tile}")
        if int(self.overlap) < 0:
            raise ValueError(f"overlap must be >= 0 pixels, got {self.overlap}")
        if self.batch is not None and int(self.batch) < 1:
            raise ValueError(f"batch must be at least 1 frame, got {self.batch}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"unknown amp mode {self.amp!r}; use one of {', '.join(AMP_MODES)}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        if (self.pmin is None) != (self.pmax is None):
            raise ValueError("give both pmin and pmax (or neither, to use the bundle's normalisation)")
        return self


@dataclass
class Prediction:
    """What :func:`predict_movie` returns.

    Attributes:
        prob_maps: ``(T-1, Y, X) float32`` calibrated event probability of the crop pair centred at
            each pixel, for pairs ``(t, t+1)`` (empty ``(0, Y, X)`` when ``keep_maps`` is False).
        events: DataFrame with :data:`EVENT_COLUMNS`.
        per_frame: DataFrame with :data:`PER_FRAME_COLUMNS`.
        record: the run record (JSON-able) written as ``prediction.json``.
    """

    prob_maps: np.ndarray
    events: pd.DataFrame
    per_frame: pd.DataFrame
    record: dict[str, Any] = field(default_factory=dict)


class DensePredictor:
    """Dense event logits of an :class:`~tapcore.events.model.EventModel` over whole frames.

    Args:
        model: the event model (its ``head`` follows the common head structure).
        cfg: :class:`PredictConfig` (tile, overlap, head_tile, amp, method).
        device: torch device string.
        calibration: applied to the logits in :meth:`pair_probabilities`.
    """

    def __init__(self, model: nn.Module, cfg: Optional[PredictConfig] = None, device: str = "cpu",
                 calibration: Optional[Calibration] = None):
        self.cfg = dataclasses.replace(cfg or PredictConfig()).validate()
        self.device = torch.device(device)
        if self.cfg.batch is None:
            self.cfg.batch = 8 if self.device.type == "cuda" else 1
        self.model = model.to(self.device).eval()
        head = model.head
        self.head = head
        self.crop, self.margin = int(head.crop), int(head.margin)
        self.n_classes = int(head.n_classes)
        self.combine = head.combine
        self.lo = self.crop // 2  # output (y, x) <- crop top-left (y - lo, x - lo)
        self.hi = self.crop - 1 - self.lo
        self.calibration = calibration or Calibration()
        # fast eval copies (BN folded, channels-last); the model itself is left untouched
        self.backbone = dense.inference_copy(model.backbone, self.cfg.channels_last)
        enc = getattr(head, "encoder", None)
        self.encoder = dense.inference_copy(enc, self.cfg.channels_last) if isinstance(enc, nn.Module) else head.encode
        multiple = dense.backbone_multiple(model.backbone)
        self.multiple = multiple
        # tile origins and overlaps on the U-Net's pooling grid keep tiling exact
        self.tile = max(multiple, int(math.ceil(self.cfg.tile / multiple)) * multiple)
        self.overlap = int(math.ceil(self.cfg.overlap / multiple)) * multiple
        with torch.no_grad():
            w, bias = dense.linear_weight(head)  # (O, D, crop, crop), (K,)
            self.weight = w.detach().float().contiguous().to(self.device)
            self.bias = bias.detach().float().to(self.device)
            self.zero_code = dense.zero_code(self._encode, self._in_channels(), self.margin, self.device)  # (D,)
        method = self.cfg.method
        if method == "auto":
            method = "conv" if self.crop <= 8 else "fft"
        self.method = method
        self._kernel_fft: dict[tuple[int, int], torch.Tensor] = {}

    def _in_channels(self) -> int:
        first = next((m for m in self.head.encoder.modules() if isinstance(m, nn.Conv2d)), None)
        if first is not None:
            return int(first.in_channels)
        return int(self.head.out_channels)

    def _autocast(self):
        if self.cfg.amp == "none":
            return nullcontext()
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _encode(self, z: torch.Tensor) -> torch.Tensor:
        if self.cfg.channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            return self.encoder(z).float()

    def _backbone(self, frames: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.backbone(frames).float()

    # -- stage 1: backbone features ------------------------------------------------------------
    @torch.no_grad()
    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """``frames (B, 1, Y, X)`` normalised -> features ``(B, C, Y, X) float32`` (tiled with overlap)."""
        b, _, height, width = frames.shape
        if self.cfg.channels_last:
            frames = frames.contiguous(memory_format=torch.channels_last)
        out: Optional[torch.Tensor] = None
        for (y0, y1, x0, x1), z in dense.backbone_tiles(self._backbone, frames, self.tile, self.overlap,
                                                        self.multiple):
            if y0 == 0 and x0 == 0 and (y1, x1) == (height, width):
                return z  # one tile: the whole frame
            if out is None:
                out = torch.empty(b, z.shape[1], height, width, device=z.device, dtype=torch.float32)
            out[..., y0:y1, x0:x1] = z
        assert out is not None
        return out

    # -- stage 2: encoder on the zero-extended frame -------------------------------------------
    @torch.no_grad()
    def extended_encoding(self, z: torch.Tensor) -> torch.Tensor:
        """``z (B, C, Y, X)`` -> ``E (B, D, Y + crop - 1, X + crop - 1)`` (:func:`tapcore.events.dense.extended_encoding`)."""
        return dense.extended_encoding(self._encode, z, self.crop, self.margin, self.zero_code,
                                       int(self.cfg.head_tile))

    # -- stage 3: the linear layer as a correlation ---------------------------------------------
    def _kfft(self, fh: int, fw: int) -> torch.Tensor:
        key = (fh, fw)
        if key not in self._kernel_fft:
            if len(self._kernel_fft) >= 2:
                self._kernel_fft.clear()
            self._kernel_fft[key] = torch.conj(torch.fft.rfft2(self.weight, s=(fh, fw)))  # (O, D, fh, fw//2+1)
        return self._kernel_fft[key]

    @torch.no_grad()
    def correlate(self, ext: torch.Tensor) -> torch.Tensor:
        """``E (B, D, Y + crop - 1, X + crop - 1)`` -> ``R (B, O, Y, X)`` (:func:`tapcore.events.dense.correlate`)."""
        return dense.correlate(ext, self.weight, self.method, int(self.cfg.head_tile), self._kfft)

    @torch.no_grad()
    def responses(self, frames: torch.Tensor) -> torch.Tensor:
        """``frames (B, 1, Y, X)`` normalised -> per-frame linear responses ``R (B, O, Y, X)``."""
        return self.correlate(self.extended_encoding(self.features(frames)))

    def pair_logits(self, r_t: torch.Tensor, r_t1: torch.Tensor) -> torch.Tensor:
        """Responses of frames t and t+1 ``(N, O, Y, X)`` -> uncalibrated logits ``(N, K, Y, X)``."""
        return dense.combine_pairs(r_t, r_t1, self.combine, self.bias)

    def pair_probabilities(self, r_t: torch.Tensor, r_t1: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities ``(N, K, Y, X)`` of pairs."""
        return torch.softmax(self.calibration.apply(self.pair_logits(r_t, r_t1), dim=1), dim=1)

    @torch.no_grad()
    def movie_logits(self, movie_norm: np.ndarray) -> torch.Tensor:
        """Uncalibrated dense logits ``(T-1, K, Y, X)`` of a (small) normalised movie ``(T, Y, X)``."""
        frames = torch.from_numpy(np.ascontiguousarray(movie_norm, np.float32))[:, None].to(self.device)
        r = torch.cat([self.responses(frames[i:i + self.cfg.batch]) for i in range(0, len(frames), self.cfg.batch)])
        return self.pair_logits(r[:-1], r[1:])


def normalize_frames_torch(frames: torch.Tensor, pmin: float = 1.0, pmax: float = 99.8) -> torch.Tensor:
    """Per-frame percentile normalisation on the device, the same rule as ``tapcore.io.normalize_movie``.

    ``frames (B, Y, X)`` (any real dtype) -> float32 ``(B, Y, X)``: ``(x - p_min) / (p_max - p_min)``
    with linear-interpolated percentiles; constant frames get scale 1; non-finite pixels become 0 and
    are left out of the percentiles. Frames above ``torch.quantile``'s 16M-element limit are
    normalised with numpy instead.
    """
    x = frames.float()
    if x[0].numel() > 16_000_000 or not bool(torch.isfinite(x).all()):
        return torch.from_numpy(normalize_movie(frames.cpu().numpy(), pmin, pmax)).to(frames.device)
    q = torch.tensor([pmin / 100.0, pmax / 100.0], device=x.device, dtype=torch.float64)
    lo_hi = torch.quantile(x.flatten(1).double(), q, dim=1)  # (2, B)
    lo, hi = lo_hi[0], lo_hi[1]
    scale = hi - lo
    tiny = 1e-12 * torch.maximum(torch.maximum(hi.abs(), lo.abs()), torch.ones_like(hi))
    scale = torch.where(scale <= tiny, torch.ones_like(scale), scale)
    return ((x - lo.float().view(-1, 1, 1)) / scale.float().view(-1, 1, 1)).contiguous()  # (B, Y, X)


# -- peak finding ----------------------------------------------------------------------------------
def find_peaks(prob: torch.Tensor | np.ndarray, threshold: float = 0.5, min_distance: int = 24) -> np.ndarray:
    """Local maxima of probability maps by max-pool non-maximum suppression.

    Args:
        prob: ``(N, Y, X)`` (or ``(Y, X)``) maps.
        threshold: lowest accepted value.
        min_distance: accepted peaks are more than this many pixels apart in y or x (Chebyshev);
            ties within the window keep the first pixel in raster order.

    Returns:
        ``(M, 3) int64`` rows ``[n, y, x]`` sorted by n, then by decreasing value.
    """
    p = torch.as_tensor(prob)
    squeeze = p.dim() == 2
    if squeeze:
        p = p[None]
    if p.dim() != 3:
        raise ValueError(f"probability maps must be (N, Y, X), got shape {tuple(p.shape)}")
    d = int(min_distance)
    p = p.float()
    if d > 0:
        # a square max filter is separable: rows then columns (2k instead of k^2 comparisons per pixel)
        pooled = F.max_pool2d(p[:, None], kernel_size=(1, 2 * d + 1), stride=1, padding=(0, d))
        pooled = F.max_pool2d(pooled, kernel_size=(2 * d + 1, 1), stride=1, padding=(d, 0))[:, 0]
        cand = (p >= pooled) & (p >= threshold)
    else:
        cand = p >= threshold
    idx = torch.nonzero(cand).cpu().numpy().astype(np.int64)  # (M, 3) raster order
    if len(idx) == 0:
        return np.zeros((0, 3), np.int64)
    vals = p[cand].cpu().numpy()
    out = []
    for n in np.unique(idx[:, 0]):
        sel = idx[:, 0] == n
        pts, v = idx[sel], vals[sel]
        order = np.argsort(-v, kind="stable")
        pts = pts[order]
        if d > 0 and len(pts) > 1:
            pts = _suppress_ties(pts, d)
        out.append(pts)
    return np.concatenate(out, axis=0)


def _suppress_ties(pts: np.ndarray, d: int) -> np.ndarray:
    """Greedy: keep a candidate unless a kept one lies within ``d`` pixels (Chebyshev). ``pts`` sorted by value.

    Kept peaks block the square of radius ``d`` around them in a boolean grid, so each candidate is one
    lookup: a flat map with every pixel a candidate stays linear in the number of pixels.
    """
    yx = pts[:, 1:]
    lo = yx.min(axis=0)
    shape = yx.max(axis=0) - lo + 1
    blocked = np.zeros(tuple(shape), dtype=bool)
    keep: list[int] = []
    for i, (y, x) in enumerate((yx - lo).tolist()):
        if blocked[y, x]:
            continue
        keep.append(i)
        blocked[max(y - d, 0):y + d + 1, max(x - d, 0):x + d + 1] = True
    return pts[keep]


def drop_repeats(events: pd.DataFrame, frames: int, distance: int, exclusive: bool = False) -> pd.DataFrame:
    """Keep one event per event: drop an event when a more probable one of the same class lies within
    ``frames`` frame pairs and ``distance`` pixels (Chebyshev, as :func:`find_peaks`); with ``exclusive``
    of any class (one event, of one class, per place and time: the dense maps of a division also rise,
    less, for death in the same and neighbouring frame pairs, and the other way round).

    A division or death changes a cell over two or three consecutive frame pairs, and each of them can
    peak; greedy in order of decreasing probability (ties: earlier frame, then raster order), each kept
    event suppresses its neighbours in space and time. ``events`` needs ``frame, y, x, probability,
    class``; the kept rows come back in their original order and index.
    """
    if (frames <= 0 and not exclusive) or len(events) < 2:
        return events
    order = np.lexsort((events["x"].to_numpy(), events["y"].to_numpy(), events["frame"].to_numpy(),
                        -events["probability"].to_numpy()))
    f = events["frame"].to_numpy(np.int64)
    yx = events[["y", "x"]].to_numpy(np.int64)
    cls = events["class"].astype(str).to_numpy()
    keep = np.zeros(len(events), bool)
    kept: list[int] = []
    for i in order:
        near = [j for j in kept if np.abs(yx[j] - yx[i]).max() <= distance
                and abs(f[j] - f[i]) <= frames and (exclusive or cls[j] == cls[i])]
        if not near:
            keep[i] = True
            kept.append(i)
    return events[keep]


# -- the workflow ----------------------------------------------------------------------------------
def predict_movie(movie: np.ndarray, model: Union[str, os.PathLike, EventDetector], cfg: Optional[PredictConfig] = None,
                  progress: Optional[ProgressFn] = None) -> Prediction:
    """Calibrated event maps, event list and per-frame summary of a whole movie.

    Args:
        movie: raw movie ``(T, Y, X)`` (any dtype; normalised per frame inside with the bundle's
            percentiles).
        model: an ``event_head`` bundle folder or an :class:`~tapcore.detector.EventDetector` (its
            ``calibration``, if any, is applied).
        cfg: :class:`PredictConfig`.
        progress: callback; one ``{"stage": "predict", "kind": "step", "step", "steps", ...}`` record per
            batch of frames and a ``"done"`` record.

    Returns:
        :class:`Prediction`.
    """
    cfg = dataclasses.replace(cfg or PredictConfig()).validate()
    movie = check_movie(movie, 2, purpose="event prediction")
    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    t0 = time.time()
    detector = model if isinstance(model, EventDetector) else EventDetector.load(model, device=device)
    net, config, manifest = detector.model, detector.config, detector.manifest
    model_id, bundle_path = detector.id, (str(detector.path) if detector.path is not None else None)
    applied = cfg.calibrate and detector.calibration is not None
    calibration = detector.calibration_or_identity() if applied else Calibration()
    pmin, pmax = normalization(config, cfg.pmin, cfg.pmax)
    class_names = detector.class_names
    predictor = DensePredictor(net, cfg, device, calibration)
    b = model_bin(config)  # the model works on the movie binned by b; results are unbinned below
    min_distance = -(-int(cfg.min_distance) // b)  # original pixels -> binned pixels (ceil)

    t_len, height, width = movie.shape
    n_pairs = t_len - 1
    maps = np.empty((n_pairs if cfg.keep_maps else 0, height, width), np.float32)
    rows: list[tuple] = []
    summary: list[tuple] = []
    prev: Optional[torch.Tensor] = None  # R of the last frame of the previous batch, (1, O, Y, X)
    batch = int(predictor.cfg.batch)
    steps = (t_len + batch - 1) // batch
    for step, f0 in enumerate(range(0, t_len, batch), start=1):
        f1 = min(f0 + batch, t_len)
        if predictor.device.type == "cuda":  # percentiles on the GPU: the host only copies raw frames
            raw = torch.from_numpy(np.asarray(bin_movie(movie[f0:f1], b), np.float32)).pin_memory()  # (b, Y, X)
            frames = normalize_frames_torch(raw.to(predictor.device, non_blocking=True), pmin, pmax)[:, None]
        else:
            frames = torch.from_numpy(normalize_movie(bin_movie(movie[f0:f1], b), pmin, pmax))[:, None]  # (b, 1, Y, X)
        r = predictor.responses(frames)  # (b, O, Y, X)
        seq = r if prev is None else torch.cat([prev, r], dim=0)
        first = f0 if prev is None else f0 - 1  # frame index of seq[0]
        prev = r[-1:]
        if len(seq) < 2:
            continue
        with torch.no_grad():
            probs = predictor.pair_probabilities(seq[:-1], seq[1:])  # (n, K, Y, X)
            event = 1.0 - probs[:, 0]  # (n, Y, X)
            peaks = find_peaks(event, cfg.threshold, min_distance)  # (M, 3) [n, y, x] (binned pixels)
            maxes = event.flatten(1).amax(1).cpu().numpy()
            means = event.flatten(1).mean(1).cpu().numpy()
            if len(peaks):
                pk = torch.from_numpy(peaks).to(event.device)
                pk_prob = event[pk[:, 0], pk[:, 1], pk[:, 2]].cpu().numpy()
                pk_cls = (probs[pk[:, 0], 1:, pk[:, 1], pk[:, 2]].argmax(1) + 1).cpu().numpy()  # (M,)
            event_np = event.cpu().numpy() if cfg.keep_maps else None
        for n in range(len(seq) - 1):
            t = first + n
            sel = peaks[:, 0] == n
            yx = unbin_coords(peaks[sel][:, 1:], b, (height, width))  # original pixels
            for (y, x), p, c in zip(yx, pk_prob[sel] if len(peaks) else [], pk_cls[sel] if len(peaks) else []):
                rows.append((t, t + 1, int(y), int(x), float(p), class_names[int(c)], model_id))
            summary.append((t, t + 1, int(sel.sum()), float(maxes[n]), float(means[n])))
            if event_np is not None:
                maps[t] = unbin_map(event_np[n], b, (height, width))
        if progress is not None:
            progress({"stage": "predict", "kind": "step", "epoch": 1, "epochs": 1, "step": step, "steps": steps,
                      "frames_done": f1,
                      "frames": t_len, "events": len(rows), "elapsed_s": time.time() - t0})
    elapsed = time.time() - t0
    events = pd.DataFrame(rows, columns=EVENT_COLUMNS)
    events = events.astype({"frame": np.int64, "next_frame": np.int64, "y": np.int64, "x": np.int64,
                            "probability": np.float64})
    per_frame = pd.DataFrame(summary, columns=PER_FRAME_COLUMNS).astype(
        {"frame": np.int64, "next_frame": np.int64, "n_events": np.int64})
    if (int(cfg.repeat_frames) > 0 or cfg.exclusive_classes) and len(events) > 1:
        events = drop_repeats(events, int(cfg.repeat_frames), int(cfg.min_distance),
                              bool(cfg.exclusive_classes)).reset_index(drop=True)
        counts = events["frame"].value_counts()
        per_frame["n_events"] = per_frame["frame"].map(counts).fillna(0).astype(np.int64)
    movie_sha = sha256_array(movie)
    stats = movie_statistics(movie)
    shift = data_shift_verdict(manifest.get("data_stats"), stats,
                               same_movie=bool(manifest) and movie_sha == manifest.get("movie_sha256"))
    record = {
        "model_id": model_id,
        "model_path": bundle_path,
        "model_manifest": {k: manifest.get(k) for k in ("bundle_id", "weights_sha256", "movie_sha256", "strategy")
                           if k in manifest},
        "head": getattr(net.head, "name", None),
        "class_names": class_names,
        "config": dataclasses.asdict(predictor.cfg),
        "device": device,
        "calibration": {**calibration.to_dict(), "applied": applied},
        "normalize": {"pmin": pmin, "pmax": pmax},
        "movie_shape": list(movie.shape),
        "movie_dtype": str(movie.dtype),
        "movie_sha256": movie_sha,
        "bin": int(b),
        "binned_shape": list(binned_shape(movie.shape, b)),
        "data_stats": stats,
        "verdicts": [shift.to_dict()],  # is the movie like the model's training movie? (tapcore.verdicts)
        "method": predictor.method,
        "n_pairs": n_pairs,
        "n_events": len(events),
        "elapsed_s": elapsed,
        "frames_per_s": t_len / max(elapsed, 1e-9),
        "environment": environment_info(device),
        "columns": {"events.csv": EVENT_COLUMNS, "per_frame.csv": PER_FRAME_COLUMNS},
    }
    if progress is not None:
        progress({"stage": "predict", "kind": "done", "frames": t_len, "events": len(events), "elapsed_s": elapsed})
    logger.info("predicted %d frame pairs (%d x %d) in %.1f s: %d events", n_pairs, height, width, elapsed, len(events))
    return Prediction(maps, events, per_frame, record)


def write_prediction(pred: Prediction, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``events.csv``, ``per_frame.csv``, ``heatmaps.tif`` and ``prediction.json`` into ``out_dir``.

    Returns:
        name -> path of each written file (``heatmaps.tif`` only when the maps were kept).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "events": atomic_write_text(out / "events.csv", pred.events[EVENT_COLUMNS].to_csv(index=False)),
        "per_frame": atomic_write_text(out / "per_frame.csv", pred.per_frame[PER_FRAME_COLUMNS].to_csv(index=False)),
    }
    if pred.prob_maps.shape[0] > 0:
        paths["heatmaps"] = write_tiff(out / "heatmaps.tif", pred.prob_maps.astype(np.float32, copy=False))
    record = dict(pred.record)
    record["files"] = {k: p.name for k, p in paths.items()}
    paths["record"] = atomic_write_json(out / "prediction.json", record)
    return paths


def read_prediction(out_dir: str | os.PathLike) -> Prediction:
    """Read a prediction folder written by :func:`write_prediction` (maps empty without ``heatmaps.tif``)."""
    out = Path(out_dir)
    record = read_json(out / "prediction.json") if (out / "prediction.json").is_file() else {}
    events, per_frame = pd.read_csv(out / "events.csv"), pd.read_csv(out / "per_frame.csv")
    maps = np.asarray(tifffile.imread(out / "heatmaps.tif"), np.float32) if (out / "heatmaps.tif").is_file() else \
        np.zeros((0, 0, 0), np.float32)
    return Prediction(prob_maps=maps, events=events, per_frame=per_frame, record=record)


def prediction_key(movie_sha256: str, model_path: str | os.PathLike, cfg: PredictConfig) -> str:
    """Identity of a stored prediction: the movie's content, the model bundle's weights, calibration and
    config (their bytes), and the prediction options (24 hex digits)."""
    h = hashlib.sha256(movie_sha256.encode())
    for name in ("weights.pt", "calibration.json", "config.json"):
        f = Path(model_path) / name
        h.update(f.read_bytes() if f.is_file() else b"-")
    h.update(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode())
    return h.hexdigest()[:24]


def stored_prediction(store: str | os.PathLike, movie: np.ndarray, movie_sha256: str, model_path: str | os.PathLike,
                      cfg: Optional[PredictConfig] = None, progress: Optional[ProgressFn] = None) -> Path:
    """The prediction folder ``store/<prediction_key>``, computed and written once (atomically: into a
    temporary sibling, then renamed; when two callers race, the first finished one is kept)."""
    cfg = dataclasses.replace(cfg or PredictConfig()).validate()
    out = Path(store) / prediction_key(movie_sha256, model_path, cfg)
    if (out / "events.csv").is_file():
        return out
    pred = predict_movie(movie, model_path, cfg, progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    chmod_as_created(tmp)  # mkdtemp's 0700 would hide the prediction from the lab's group
    write_prediction(pred, tmp)
    if out.exists():  # another caller finished the same prediction first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(out)
    return out


def run_record(model_path: str | os.PathLike, model_ref: Optional[str] = None, **context: Any) -> dict[str, Any]:
    """What is needed to reproduce a prediction: the model bundle's config, manifest, calibration and
    test metrics (under ``model``, with ``model_ref``, the name it was chosen by), the given
    ``context`` (dataset, prediction, ...) and the environment."""
    path = Path(model_path)

    def read(name: str) -> Any:
        return read_json(path / name) if (path / name).is_file() else None

    return {"model": {"ref": model_ref, "config": read("config.json"), "manifest": read("manifest.json"),
                      "calibration": read("calibration.json"), "test_metrics": (read("metrics.json") or {}).get("test")},
            **context, "environment": environment_info("cpu")}
