"""Frozen whole-frame features for the frozen strategies (A: TAP, B: random backbone).

The backbone runs ONCE per whole frame (tiled with overlap when frames are big, no gradients,
several frames per batch); the features are kept as float16 ``(T, Y, X, C)`` (channels last, so a
window is a few contiguous rows), in RAM or, for big movies (hela01: 92 x 700 x 1100 x 32 = 4.5 GB),
in an ``np.memmap`` in a temporary folder that is removed when the features are dropped.
Training and evaluation batches are then feature windows ``(B, 2, C, crop + 2*margin, ...)`` gathered
from it with zeros outside the frame, exactly what whole-movie prediction sees.

:func:`frame_features` caches the last few results in the process, keyed by the backbone weights'
hash, the movie's hash and the tiling, so epochs, repeats and strategies that share a backbone
reuse one computation.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from tapcore.progress import ProgressFn

logger = logging.getLogger(__name__)


@dataclass
class FeatureConfig:
    """How whole-frame features are computed and stored."""

    tile: int = 512  # frames larger than this are processed in tiles of this side (pixels)
    overlap: int = 32  # context pixels around each tile, discarded after the backbone
    batch: int = 4  # frames per backbone call
    max_ram_mb: int = 2048  # above this the features go to an np.memmap in a temporary folder
    memmap_dir: Optional[str] = None  # where that folder is made (default: the system temp folder)


class FrameFeatures:
    """Float16 features ``(T, Y, X, C)`` of every frame, with window gathering.

    Attributes:
        data: ``(T, Y, X, C) float16`` array or memmap.
        key: cache key (backbone hash + movie hash + tiling).
    """

    def __init__(self, data: np.ndarray, key: str, tmpdir: Optional[Path] = None):
        self.data = data
        self.key = key
        self._tmpdir = tmpdir
        if tmpdir is not None:
            self._finalizer = weakref.finalize(self, shutil.rmtree, str(tmpdir), True)

    @property
    def channels(self) -> int:
        return int(self.data.shape[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.data.shape)) * 2

    def windows(self, coords: np.ndarray, crop: int, margin: int) -> torch.Tensor:
        """Feature windows of crop pairs: ``coords (N, 3) [t, y, x]`` (top-left of the crop) ->
        ``(N, 2, C, crop + 2*margin, crop + 2*margin) float32``, zeros outside the frame."""
        coords = np.asarray(coords, np.int64).reshape(-1, 3)
        _, height, width, ch = self.data.shape
        side = crop + 2 * margin
        out = np.zeros((len(coords), 2, side, side, ch), np.float16)  # (N, 2, h, w, C)
        for i, (t, y, x) in enumerate(coords):
            y0, x0 = y - margin, x - margin
            ys, xs = max(y0, 0), max(x0, 0)
            ye, xe = min(y0 + side, height), min(x0 + side, width)
            out[i, :, ys - y0:ye - y0, xs - x0:xe - x0] = self.data[t:t + 2, ys:ye, xs:xe]
        return torch.from_numpy(out).permute(0, 1, 4, 2, 3).float()  # (N, 2, C, h, w)

    def close(self) -> None:
        """Drop the data (and the memmap folder, if any)."""
        self.data = np.zeros((0, 0, 0, 0), np.float16)
        if self._tmpdir is not None:
            self._finalizer()


def weights_hash(module: nn.Module) -> str:
    """SHA-256 over a module's state dict (names, shapes, values)."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def _tiles(size: int, tile: int) -> list[int]:
    return list(range(0, size, tile)) if size > tile else [0]


@torch.no_grad()
def compute_frame_features(backbone: nn.Module, movie_norm: np.ndarray, cfg: Optional[FeatureConfig] = None,
                           device: str = "cpu", key: str = "", progress: Optional[ProgressFn] = None) -> FrameFeatures:
    """Run a frozen backbone over every frame of a normalised movie ``(T, Y, X) float32``.

    Returns:
        :class:`FrameFeatures` with ``data (T, Y, X, C) float16``.
    """
    cfg = cfg or FeatureConfig()
    if movie_norm.ndim != 3:
        raise ValueError(f"expected a normalised movie (T, Y, X), got shape {movie_norm.shape}")
    t_len, height, width = movie_norm.shape
    was_training = backbone.training
    backbone.eval().to(device)
    probe = backbone(torch.zeros(1, 1, 16, 16, device=device))  # (1, C, 16, 16)
    ch = int(probe.shape[1])
    nbytes = t_len * height * width * ch * 2
    tmpdir: Optional[Path] = None
    if nbytes > cfg.max_ram_mb * 2**20:
        tmpdir = Path(tempfile.mkdtemp(prefix="tapcore-features-", dir=cfg.memmap_dir))
        data = np.lib.format.open_memmap(tmpdir / "features.npy", mode="w+", dtype=np.float16,
                                         shape=(t_len, height, width, ch))
        logger.info("features %.1f GB -> memmap in %s", nbytes / 1e9, tmpdir)
    else:
        data = np.empty((t_len, height, width, ch), np.float16)
    tile, ov = int(cfg.tile), int(cfg.overlap)
    ys, xs = _tiles(height, tile), _tiles(width, tile)
    n_steps = len(range(0, t_len, cfg.batch)) * len(ys) * len(xs)
    step = 0
    for f0 in range(0, t_len, cfg.batch):
        frames = torch.from_numpy(np.ascontiguousarray(movie_norm[f0:f0 + cfg.batch], np.float32))
        frames = frames[:, None].to(device)  # (b, 1, Y, X)
        for y0 in ys:
            for x0 in xs:
                y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
                if len(ys) == 1 and len(xs) == 1:
                    ya, yb, xa, xb = 0, height, 0, width
                else:
                    ya, yb = max(0, y0 - ov), min(height, y1 + ov)
                    xa, xb = max(0, x0 - ov), min(width, x1 + ov)
                z = backbone(frames[..., ya:yb, xa:xb])  # (b, C, yb-ya, xb-xa)
                z = z[..., y0 - ya:y1 - ya, x0 - xa:x1 - xa]
                data[f0:f0 + len(frames), y0:y1, x0:x1] = z.permute(0, 2, 3, 1).to("cpu", torch.float16).numpy()
                step += 1
                if progress is not None:
                    progress({"stage": "features", "kind": "step", "step": step, "steps": n_steps})
    if isinstance(data, np.memmap):
        data.flush()
    backbone.train(was_training)
    return FrameFeatures(data, key, tmpdir)


_CACHE: "OrderedDict[str, FrameFeatures]" = OrderedDict()
_CACHE_SIZE = 3  # e.g. TAP features + one random backbone + one spare


def frame_features(backbone: nn.Module, movie_norm: np.ndarray, movie_hash: str, cfg: Optional[FeatureConfig] = None,
                   device: str = "cpu", progress: Optional[ProgressFn] = None) -> FrameFeatures:
    """Cached :func:`compute_frame_features` (key: backbone weights + movie hash + tiling)."""
    cfg = cfg or FeatureConfig()
    key = f"{weights_hash(backbone)}:{movie_hash}:{cfg.tile}:{cfg.overlap}"
    if key in _CACHE:
        _CACHE.move_to_end(key)
        logger.info("reusing cached frame features")
        return _CACHE[key]
    feats = compute_frame_features(backbone, movie_norm, cfg, device, key, progress)
    _CACHE[key] = feats
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)  # freed (memmap folder removed) once no caller holds it
    return feats


def clear_feature_cache() -> None:
    """Forget every cached feature array (each is freed once no caller holds it)."""
    _CACHE.clear()
