"""Spatial binning: the one place where movies and masks are binned and results are unbinned.

A TAP model may be trained on a movie binned by ``b`` in ``(1, 2, 4)`` (``PretrainConfig.bin``; stored
in the TAP bundle's config and copied into every event-head bundle made from it). Everything that
uses such a model bins its input with these helpers **before** normalisation and maps its output back
to the original pixel grid, so users always see original coordinates and sizes.

Conventions:

- **Movie**: mean pooling over ``b x b`` blocks of the raw movie (``float32`` out), the same as
  pre-binning a movie by block means. Frames whose side is not a multiple of ``b`` are **padded**, not
  cropped: the last, incomplete block of a row/column averages the pixels it has. So no pixel is
  dropped, and for sides that are multiples of ``b`` the result equals plain block-mean pooling.
- **Masks** (0 none, 1 division, 2 death): the **maximum** over each block, so a binned pixel is an
  event pixel when any pixel of its block is; an event region never disappears (it may only grow by
  less than one block). Where a division and a death pixel share a block, **death (2) wins**: deaths are
  the rarer class, and a division region (several blocks wide in practice) keeps its other blocks.
- **Coordinates**: binned pixel ``(y, x)`` covers original pixels ``y*b .. y*b + b - 1``; its centre is
  ``y*b + (b-1)/2``. Integer outputs (event tables) use ``y*b + b//2``, the original pixel at the centre
  (b odd) or just after it (b even): within half a pixel of the centre.
- **Maps** (heatmaps, Grad-CAM): each binned pixel is repeated ``b x b`` times (nearest neighbour) and
  the result is cropped to the original ``(Y, X)``.
- Sizes given to a binned model (event crop 48, ``min_area``, Grad-CAM region size) are in **binned**
  pixels: a 48 px crop at bin 2 covers 96 original pixels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np
import torch

from tapcore.io import check_movie

__all__ = ["BINS", "check_bin", "bin_movie", "bin_masks", "unbin_map", "unbin_coords", "binned_shape",
           "model_bin"]

#: the allowed bin factors
BINS = (1, 2, 4)


def check_bin(b: Any) -> int:
    """The bin factor as an int; ValueError naming the allowed values otherwise."""
    try:
        value = int(b)
    except (TypeError, ValueError):
        value = None
    if value is None or value != b or value not in BINS:
        raise ValueError(f"bin must be one of {', '.join(map(str, BINS))} (pixels per side averaged into one), "
                         f"got {b!r}")
    return value


def binned_shape(shape: tuple[int, ...], b: int) -> tuple[int, ...]:
    """``(..., Y, X) -> (..., ceil(Y / b), ceil(X / b))``."""
    b = check_bin(b)
    *lead, y, x = shape
    return (*lead, -(-int(y) // b), -(-int(x) // b))


def _pad_to_multiple(a: np.ndarray, b: int, value: float = 0) -> np.ndarray:
    py, px = (-a.shape[-2]) % b, (-a.shape[-1]) % b
    if py == 0 and px == 0:
        return a
    pad = [(0, 0)] * (a.ndim - 2) + [(0, py), (0, px)]
    return np.pad(a, pad, constant_values=value)


def bin_movie(movie: np.ndarray, b: int) -> np.ndarray:
    """Block-mean pooling of a raw ``(T, Y, X)`` movie -> ``float32 (T, ceil(Y/b), ceil(X/b))``.

    ``b == 1`` returns the movie unchanged (same array, native dtype). Incomplete edge blocks average
    the pixels they contain.
    """
    b = check_bin(b)
    movie = np.asarray(movie)
    if b == 1:
        return movie
    check_movie(movie)
    t, y, x = movie.shape
    ny, nx = binned_shape(movie.shape, b)[1:]
    out = np.empty((t, ny, nx), np.float32)
    ones = _pad_to_multiple(np.ones((y, x), np.float32), b)
    counts = ones.reshape(ny, b, nx, b).sum(axis=(1, 3))  # pixels per block (b*b except at the edges)
    for i in range(t):  # frame by frame: bounded memory for long movies
        f = _pad_to_multiple(movie[i].astype(np.float64), b)
        out[i] = f.reshape(ny, b, nx, b).sum(axis=(1, 3)) / counts
    return out


def bin_masks(masks: np.ndarray, b: int) -> np.ndarray:
    """Max pooling of event masks ``(T, Y, X)`` (0 none, 1 division, 2 death) -> ``uint8`` binned masks.

    A binned pixel takes the largest class of its block, so every event region survives; death (2)
    wins over division (1) inside one block.
    """
    b = check_bin(b)
    masks = np.asarray(masks)
    if b == 1:
        return masks
    if masks.ndim != 3:
        raise ValueError(f"the masks must be (T, Y, X) to bin them; got shape {masks.shape}")
    t = masks.shape[0]
    ny, nx = binned_shape(masks.shape, b)[1:]
    padded = _pad_to_multiple(masks.astype(np.uint8, copy=False), b)
    return padded.reshape(t, ny, b, nx, b).max(axis=(2, 4)).astype(np.uint8)


def unbin_map(maps: Union[np.ndarray, torch.Tensor], b: int, shape: tuple[int, int]):
    """Repeat each binned pixel ``b x b`` times and crop to the original ``shape = (Y, X)``.

    Works on ``(..., y, x)`` numpy arrays or torch tensors (returned as the same type).
    """
    b = check_bin(b)
    y, x = int(shape[0]), int(shape[1])
    if isinstance(maps, torch.Tensor):
        if b == 1:
            return maps[..., :y, :x]
        return maps.repeat_interleave(b, dim=-2).repeat_interleave(b, dim=-1)[..., :y, :x]
    maps = np.asarray(maps)
    if b == 1:
        return maps[..., :y, :x]
    return np.repeat(np.repeat(maps, b, axis=-2), b, axis=-1)[..., :y, :x]


def unbin_coords(coords: Any, b: int, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Integer binned pixel coordinates -> original pixel coordinates ``c * b + b // 2``.

    With ``shape = (Y, X)`` (for ``(..., 2)`` arrays of ``[y, x]``) the result is clipped into the
    original frame (an incomplete edge block's centre pixel may lie outside it).
    """
    b = check_bin(b)
    c = np.asarray(coords, dtype=np.int64) * b + (b // 2)
    if shape is not None and b > 1:
        c = c.copy()
        c[..., 0] = np.clip(c[..., 0], 0, int(shape[0]) - 1)
        c[..., 1] = np.clip(c[..., 1], 0, int(shape[1]) - 1)
    return c


def model_bin(source: Union[Mapping[str, Any], str, os.PathLike, None]) -> int:
    """The bin factor of a bundle (folder or its config dict); 1 for bundles made before binning existed."""
    if source is None:
        return 1
    if not isinstance(source, Mapping):
        from tapcore.utils import read_json

        path = Path(source) / "config.json"
        if not path.is_file():
            raise ValueError(f"{source} is not a model bundle (no config.json)")
        source = read_json(path)
    value = source.get("bin")
    if value is None:
        value = (source.get("pretrain") or {}).get("bin", 1)
    return check_bin(value)

