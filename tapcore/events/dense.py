"""The one dense path: backbone tiling, zero-padded windows and the head as a correlation.

Training features, calibration, whole-movie prediction and Grad-CAM all go through the functions
here, so a crop pair's logits are the same numbers wherever they are computed:

- :func:`backbone_tiles`: the ONE backbone tiler. Frames larger than ``tile`` are cut into
  near-equal spans whose origins are multiples of the U-Net's pooling factor (``multiple``), each run
  with ``overlap`` pixels of context that is discarded afterwards (tiling then changes nothing but
  float rounding when the overlap covers the receptive field).
- :func:`compute_frame_features` / :class:`FrameFeatures` / :class:`FeatureCache`: frozen
  whole-frame features ``(T, Y, X, C) float16`` (in RAM or an ``np.memmap``) and an explicit cache
  object a caller passes in (``tapcore.events.compare`` shares one across strategies and repeats).
- :func:`pair_windows`: the ONE zero-padded window cutter: crop pairs ``[t, y, x]`` (top-left of the
  crop) -> windows of frames t and t+1 with ``margin`` pixels of context, zeros outside the frame.
  :meth:`FrameFeatures.windows` (frozen heads) and :func:`image_windows` (end-to-end heads) use it.
- :class:`CropSource` / :func:`crop_logits`: network inputs and logits of crop pairs (training,
  hard-negative mining, validation, calibration).
- :func:`extended_encoding`, :func:`correlate`, :func:`combine_pairs`: the head's encoder on the
  zero-extended frame, its final linear layer as a cross-correlation (FFT or direct), and the
  combination of frames t and t+1; :func:`dense_event_logits` chains them differentiably (Grad-CAM),
  ``tapcore.predict.DensePredictor`` chains them with fast inference copies (prediction).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import shutil
import tempfile
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tapcore.progress import ProgressFn

logger = logging.getLogger(__name__)


# -- tiling ------------------------------------------------------------------------------------------
def spans(size: int, tile: int, multiple: int = 1) -> list[tuple[int, int]]:
    """Split ``[0, size)`` into ``ceil(size / tile)`` near-equal spans whose starts are multiples of
    ``multiple`` (even splits keep halos and FFT sizes small: 1100 px with tile 1024 -> 2 x 550)."""
    n = max(1, math.ceil(size / tile))
    step = max(multiple, math.ceil(math.ceil(size / n) / multiple) * multiple)
    return [(s, min(s + step, size)) for s in range(0, size, step)]


def backbone_multiple(backbone: nn.Module) -> int:
    """The backbone's pooling factor (tile origins on this grid keep a U-Net's tiling exact)."""
    return int(getattr(backbone, "multiple", 8))


def backbone_tiles(backbone: Callable[[torch.Tensor], torch.Tensor], frames: torch.Tensor, tile: int, overlap: int,
                   multiple: int = 1) -> Iterator[tuple[tuple[int, int, int, int], torch.Tensor]]:
    """Run ``backbone`` over ``frames (B, 1, Y, X)`` tile by tile.

    Yields:
        ``((y0, y1, x0, x1), z)`` with ``z (B, C, y1 - y0, x1 - x0)`` the backbone's output on the tile
        (computed with ``overlap`` pixels of context, rounded up to ``multiple``, then cut away). A frame
        no larger than ``tile`` (rounded up to ``multiple``) is one tile without context.
    """
    height, width = frames.shape[-2:]
    tile = max(multiple, int(math.ceil(tile / multiple)) * multiple)
    ov = int(math.ceil(overlap / multiple)) * multiple
    if height <= tile and width <= tile:
        yield (0, height, 0, width), backbone(frames)
        return
    for y0, y1 in spans(height, tile, multiple):
        for x0, x1 in spans(width, tile, multiple):
            ya, yb = max(0, y0 - ov), min(height, y1 + ov)
            xa, xb = max(0, x0 - ov), min(width, x1 + ov)
            z = backbone(frames[..., ya:yb, xa:xb])  # (B, C, yb-ya, xb-xa)
            yield (y0, y1, x0, x1), z[..., y0 - ya:y1 - ya, x0 - xa:x1 - xa]


def n_tiles(height: int, width: int, tile: int, multiple: int = 1) -> int:
    """How many tiles :func:`backbone_tiles` makes of a ``height x width`` frame."""
    tile = max(multiple, int(math.ceil(tile / multiple)) * multiple)
    if height <= tile and width <= tile:
        return 1
    return len(spans(height, tile, multiple)) * len(spans(width, tile, multiple))


# -- windows -------------------------------------------------------------------------------------------
def pair_windows(data: np.ndarray, coords: np.ndarray, crop: int, margin: int) -> np.ndarray:
    """Zero-padded windows of crop pairs.

    Args:
        data: ``(T, Y, X, ...)`` frames (images or channels-last features).
        coords: ``(N, 3) [t, y, x]``: top-left corner of the crop in frame t (the pair is t, t+1).
        crop: crop side; ``margin``: context pixels on each side.

    Returns:
        ``(N, 2, side, side, ...)`` of ``data.dtype`` with ``side = crop + 2*margin``, zeros outside the frame.
    """
    coords = np.asarray(coords, np.int64).reshape(-1, 3)
    height, width = data.shape[1:3]
    side = crop + 2 * margin
    out = np.zeros((len(coords), 2, side, side, *data.shape[3:]), data.dtype)
    for i, (t, y, x) in enumerate(coords):
        y0, x0 = y - margin, x - margin
        ys, xs = max(y0, 0), max(x0, 0)
        ye, xe = min(y0 + side, height), min(x0 + side, width)
        out[i, :, ys - y0:ye - y0, xs - x0:xe - x0] = data[t:t + 2, ys:ye, xs:xe]
    return out


def image_windows(movie_norm: np.ndarray, coords: np.ndarray, crop: int, margin: int = 0) -> np.ndarray:
    """Image crop pairs ``(N, 2, 1, crop + 2*margin, crop + 2*margin) float32`` from a normalised movie
    ``(T, Y, X)``; ``coords (N, 3) [t, y, x]`` are the crops' top-left corners, zeros outside the frame."""
    return pair_windows(np.asarray(movie_norm, np.float32), coords, crop, margin)[:, :, None]


# -- frozen whole-frame features ---------------------------------------------------------------------
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
        out = pair_windows(self.data, coords, crop, margin)  # (N, 2, h, w, C) float16
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


@torch.no_grad()
def compute_frame_features(backbone: nn.Module, movie_norm: np.ndarray, cfg: Optional[FeatureConfig] = None,
                           device: str = "cpu", key: str = "", progress: Optional[ProgressFn] = None) -> FrameFeatures:
    """Run a frozen backbone over every frame of a normalised movie ``(T, Y, X) float32``
    (:func:`backbone_tiles`, ``cfg.batch`` frames per call).

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
    multiple = backbone_multiple(backbone)
    n_steps = len(range(0, t_len, cfg.batch)) * n_tiles(height, width, int(cfg.tile), multiple)
    step = 0
    for f0 in range(0, t_len, cfg.batch):
        frames = torch.from_numpy(np.ascontiguousarray(movie_norm[f0:f0 + cfg.batch], np.float32))
        frames = frames[:, None].to(device)  # (b, 1, Y, X)
        for (y0, y1, x0, x1), z in backbone_tiles(backbone, frames, int(cfg.tile), int(cfg.overlap), multiple):
            data[f0:f0 + len(frames), y0:y1, x0:x1] = z.permute(0, 2, 3, 1).to("cpu", torch.float16).numpy()
            step += 1
            if progress is not None:
                progress({"stage": "features", "kind": "step", "step": step, "steps": n_steps})
    if isinstance(data, np.memmap):
        data.flush()
    backbone.train(was_training)
    return FrameFeatures(data, key, tmpdir)


class FeatureCache:
    """The last ``size`` :class:`FrameFeatures` computed through it, keyed by the backbone's weights,
    the movie's hash and the tiling. A caller that runs several heads on one movie (``compare``)
    creates one and passes it to each ``train_head``; nothing is shared between callers."""

    def __init__(self, size: int = 3):  # e.g. TAP features + one random backbone + one spare
        self.size = int(size)
        self._items: "OrderedDict[str, FrameFeatures]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, backbone: nn.Module, movie_norm: np.ndarray, movie_hash: str, cfg: Optional[FeatureConfig] = None,
            device: str = "cpu", progress: Optional[ProgressFn] = None) -> FrameFeatures:
        """Cached :func:`compute_frame_features`."""
        cfg = cfg or FeatureConfig()
        key = f"{weights_hash(backbone)}:{movie_hash}:{cfg.tile}:{cfg.overlap}"
        if key in self._items:
            self._items.move_to_end(key)
            logger.info("reusing cached frame features")
            return self._items[key]
        feats = compute_frame_features(backbone, movie_norm, cfg, device, key, progress)
        self._items[key] = feats
        while len(self._items) > self.size:
            self._items.popitem(last=False)  # freed (memmap folder removed) once no caller holds it
        return feats

    def clear(self) -> None:
        """Forget every cached feature array (each is freed once no caller holds it)."""
        self._items.clear()


# -- crop-pair logits ----------------------------------------------------------------------------------
class CropSource:
    """Network inputs of crop pairs: feature windows ``(B, 2, C, w, w)`` cut from whole-frame features
    (frozen heads) or image windows ``(B, 2, 1, w', w')`` with ``feature_margin`` more context (end to end)."""

    def __init__(self, feats: Optional[FrameFeatures], movie_norm: Optional[np.ndarray], crop: int, head_margin: int,
                 feature_margin: int = 0):
        if feats is None and movie_norm is None:
            raise ValueError("a crop source needs frame features or the normalised movie")
        self.feats, self.movie_norm = feats, movie_norm
        self.crop, self.head_margin, self.feature_margin = int(crop), int(head_margin), int(feature_margin)

    def __call__(self, coords: np.ndarray, device: str) -> torch.Tensor:
        if self.feats is not None:
            x = self.feats.windows(coords, self.crop, self.head_margin)  # (B, 2, C, w, w)
        else:
            x = torch.from_numpy(image_windows(self.movie_norm, coords, self.crop,
                                               self.head_margin + self.feature_margin))  # (B, 2, 1, w', w')
        return x.to(device, non_blocking=True)


@torch.no_grad()
def crop_logits(net: nn.Module, source: CropSource, coords: np.ndarray, batch_size: int, device: str,
                n_classes: Optional[int] = None) -> np.ndarray:
    """Logits ``(N, K) float32`` of crop pairs ``coords (N, 3)`` (``net`` in eval mode)."""
    net.eval()
    out = [net(source(coords[i:i + batch_size], device)).float().cpu() for i in range(0, len(coords), batch_size)]
    if out:
        return torch.cat(out).numpy()
    k = n_classes or getattr(net, "n_classes", None) or getattr(getattr(net, "head", None), "n_classes", 2)
    return np.zeros((0, int(k)), np.float32)


# -- the head over whole frames ----------------------------------------------------------------------
def fast_len(n: int) -> int:
    """Smallest size >= n whose only prime factors are 2, 3, 5 (fast for pocketfft and cuFFT)."""
    m = max(int(n), 1)
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def _fuse_tree(module: nn.Module) -> nn.Module:
    """Fold eval-mode BatchNorms into the preceding convolutions (``torch.fx`` fusion), recursing
    into children where a module cannot be traced as a whole (e.g. shape-dependent padding)."""
    from torch.fx.experimental.optimization import fuse

    if not any(isinstance(m, nn.BatchNorm2d) for m in module.modules()):
        return module
    try:
        return fuse(module, inplace=True)
    except Exception:  # noqa: BLE001 - not traceable: fuse its parts instead
        for name, child in list(module.named_children()):
            setattr(module, name, _fuse_tree(child))
        return module


def inference_copy(module: nn.Module, channels_last: bool = True) -> nn.Module:
    """An eval-mode copy of ``module`` for fast inference: BatchNorm folded into convolutions and
    (optionally) channels-last weights. Outputs equal the original's up to float rounding."""
    m = copy.deepcopy(module).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    with torch.no_grad():  # traced in inference mode: modules with an in-place no-grad path keep it
        m = _fuse_tree(m).eval()
    for sub in m.modules():  # activations in place: inference never needs their inputs again
        if isinstance(sub, (nn.ReLU, nn.LeakyReLU)):
            sub.inplace = True
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    return m


def linear_weight(head: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's final linear layer as correlation kernels: ``weight (O, D, crop, crop)`` (``O = K``
    for ``combine="mean"``, ``2K`` for ``"concat"``: parts for frame t, then frame t+1) and ``bias (K,)``."""
    k = head.kernels()  # (K, P, D, crop, crop)
    w = k[:, 0] if head.combine == "mean" else torch.cat([k[:, 0], k[:, 1]], dim=0)
    return w, head.fc.bias


def zero_code(encode: Callable[[torch.Tensor], torch.Tensor], in_channels: int, margin: int,
              device: torch.device | str) -> torch.Tensor:
    """``(D,)``: the encoder's output on zero features (its value far outside the frame)."""
    z = torch.zeros(1, in_channels, 2 * margin + 1, 2 * margin + 1, device=device)
    return encode(z)[0, :, margin, margin]


def extended_encoding(encode: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, crop: int, margin: int,
                      code: torch.Tensor, tile: int = 1 << 30) -> torch.Tensor:
    """``z (B, C, Y, X)`` -> ``E (B, D, Y + crop - 1, X + crop - 1)``: the encoding of the zero-padded
    feature map on the frame extended by ``crop//2`` (top/left) and ``crop-1-crop//2`` (bottom/right).

    Within ``margin`` pixels of the frame the encoder is run (in output tiles of side ``tile``); further
    out it sees only zeros, so ``code`` (:func:`zero_code`) is written there. Differentiable in ``z``.
    """
    b, _, height, width = z.shape
    m, lo = int(margin), int(crop) // 2
    d = int(code.shape[0])
    ext = torch.empty(b, d, height + crop - 1, width + crop - 1, device=z.device, dtype=code.dtype)
    # rows/columns beyond the frame + margin see only zero features: the constant zero code there
    a0, a1 = max(0, lo - m), lo + height + m
    b0, b1 = max(0, lo - m), lo + width + m
    c = code.view(1, d, 1, 1)
    ext[..., :a0, :] = c
    ext[..., a1:, :] = c
    ext[..., a0:a1, :b0] = c
    ext[..., a0:a1, b1:] = c
    zp = F.pad(z, (2 * m, 2 * m, 2 * m, 2 * m))  # (B, C, Y + 4m, X + 4m)
    inner_h, inner_w = height + 2 * m, width + 2 * m  # frame rows [-m, Y + m)
    for r0, r1 in spans(inner_h, max(int(tile), 16)):
        for c0, c1 in spans(inner_w, max(int(tile), 16)):
            # inner rows [r0, r1) <- zp rows [r0, r1 + 2m) (m halo on each side)
            e = encode(zp[..., r0:r1 + 2 * m, c0:c1 + 2 * m])[..., m:m + r1 - r0, m:m + c1 - c0]
            # inner row i <-> frame row i - m <-> ext row i - m + lo
            er0, ec0 = r0 - m + lo, c0 - m + lo
            cy0, cx0 = max(0, -er0), max(0, -ec0)
            cy1 = min(r1 - r0, ext.shape[-2] - er0)
            cx1 = min(c1 - c0, ext.shape[-1] - ec0)
            if cy1 > cy0 and cx1 > cx0:
                ext[..., er0 + cy0:er0 + cy1, ec0 + cx0:ec0 + cx1] = e[..., cy0:cy1, cx0:cx1]
    return ext


def correlate(ext: torch.Tensor, weight: torch.Tensor, method: str = "fft", tile: int = 1 << 30,
              kernel_fft: Optional[Callable[[int, int], torch.Tensor]] = None) -> torch.Tensor:
    """The linear layer densely: ``E (B, D, Y + crop - 1, X + crop - 1)``, ``weight (O, D, crop, crop)``
    -> ``R (B, O, Y, X)`` with ``R[o, y, x] = sum W[o] * E[:, y:y+crop, x:x+crop]``.

    ``method="conv"`` is a direct ``conv2d``; ``"fft"`` multiplies spectra in output tiles of side
    ``tile``. ``kernel_fft(fh, fw)`` may supply the cached ``conj(rfft2(weight, (fh, fw)))``.
    Differentiable in ``ext``.
    """
    b, _, eh, ew = ext.shape
    cs = int(weight.shape[-1])
    height, width = eh - cs + 1, ew - cs + 1
    if method == "conv":
        return F.conv2d(ext, weight)  # (B, O, Y, X)
    out = ext.new_empty(b, weight.shape[0], height, width)
    for y0, y1 in spans(height, tile):
        for x0, x1 in spans(width, tile):
            th, tw = y1 - y0, x1 - x0
            sh, sw = th + cs - 1, tw + cs - 1
            fh, fw = fast_len(sh), fast_len(sw)
            ef = torch.fft.rfft2(ext[..., y0:y0 + sh, x0:x0 + sw], s=(fh, fw))  # (B, D, fh, fw//2+1)
            kf = kernel_fft(fh, fw) if kernel_fft else torch.conj(torch.fft.rfft2(weight, s=(fh, fw)))  # (O, D, ...)
            if torch.is_grad_enabled() and (ef.requires_grad or kf.requires_grad):
                prod = torch.einsum("bdhw,odhw->bohw", ef, kf)  # Grad-CAM: one differentiable op
            else:
                # sum over D of ef * kf, one channel at a time: ~2.5x faster than einsum on CPU (cache-sized ops)
                prod = ef[:, 0:1] * kf[None, :, 0]  # (B, O, fh, fw//2+1)
                for d in range(1, ef.shape[1]):
                    prod += ef[:, d:d + 1] * kf[None, :, d]
            r = torch.fft.irfft2(prod, s=(fh, fw))  # (B, O, fh, fw)
            out[..., y0:y0 + th, x0:x0 + tw] = r[..., :th, :tw]
    return out


def combine_pairs(r_t: torch.Tensor, r_t1: torch.Tensor, combine: str, bias: torch.Tensor) -> torch.Tensor:
    """Per-frame responses of frames t and t+1 ``(N, O, Y, X)`` -> logits ``(N, K, Y, X)``."""
    k = int(bias.shape[0])
    logits = (r_t + r_t1) * 0.5 if combine == "mean" else r_t[:, :k] + r_t1[:, k:]
    return logits + bias.view(1, k, 1, 1)


def dense_event_logits(head: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Differentiable dense logits of an event head over whole frames (Grad-CAM).

    Args:
        head: an event head (``encode``, ``margin``, ``combine``, ``kernels()``, ``fc``).
        z: ``(B, 2, C, Y, X)`` features of frames t and t+1.

    Returns:
        ``(B, K, Y, X)``: at ``(y, x)`` the head's logits on the crop pair centred there, the
        features zero-padded outside the frame (the values ``tapcore.predict`` computes).
    """
    b, t, c, height, width = z.shape
    crop, m = int(head.crop), int(head.margin)
    code = zero_code(head.encode, c, m, z.device)
    ext = extended_encoding(head.encode, z.reshape(b * t, c, height, width), crop, m, code)  # (B*2, D, ...)
    weight, bias = linear_weight(head)
    r = correlate(ext, weight).reshape(b, t, weight.shape[0], height, width)  # (B, 2, O, Y, X)
    return combine_pairs(r[:, 0], r[:, 1], head.combine, bias)
