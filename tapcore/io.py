"""Reading and writing movies and event masks.

A movie is a ``numpy`` array ``(T, Y, X)`` in its native dtype (``uint8``, ``uint16`` or
``float32``; other integer types are kept, ``float64`` becomes ``float32``). Accepted inputs:

- a multi-page TIFF whose pages are the frames;
- an ImageJ or OME-TIFF hyperstack: the axes come from its metadata. When it holds several
  channels (``C``) or z-planes (``Z``) the caller chooses one explicitly (``channel=``,
  ``plane=``); colour (``S``, RGB) images are refused;
- a folder of single-frame images (``.tif``, ``.tiff``, ``.png``), in natural order
  (``t2`` before ``t10``), all of one shape and dtype.

Event masks are movies of the same shape with values ``0`` (no event), ``1`` (division) and
``2`` (death), returned as ``uint8``.

Every problem with the input raises ``ValueError`` naming the problem and what is accepted; a
missing path raises ``FileNotFoundError``. TIFF decoding uses ``tifffile``; pages compressed
with a codec tifffile cannot decode without the optional ``imagecodecs`` package (LZW, as in
the Cell Tracking Challenge files) are decoded with Pillow instead.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tapcore.utils import atomic_path

logger = logging.getLogger(__name__)

#: What :func:`read_movie` accepts, quoted in error messages.
ACCEPTED_MOVIES = (
    "a multi-page TIFF (frames as pages), an ImageJ/OME-TIFF with a time axis, "
    "or a folder of single-frame .tif/.tiff/.png images"
)
#: File extensions of frames inside a frame folder.
FRAME_EXTENSIONS = (".tif", ".tiff", ".png")
#: Mask values and their meaning.
MASK_VALUES = {0: "no event", 1: "division", 2: "death"}

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
class _InputError(ValueError):
    """A ValueError whose message already names the problem (not re-wrapped)."""


# tifffile axis codes that can hold the frames of a movie.
_TIME_LIKE = ("T", "I", "Q")


# --------------------------------------------------------------------------------------------
# single files


def _sniff(path: Path) -> str:
    """``"tiff"`` or ``"png"`` from the file's first bytes; ValueError for anything else."""
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path} is an empty file (0 bytes); accepted: {ACCEPTED_MOVIES}")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head[:4] in _TIFF_MAGIC:
        return "tiff"
    if head == _PNG_MAGIC:
        return "png"
    raise ValueError(
        f"{path} is not an image file this tool can read (it is neither a TIFF nor a PNG); "
        f"accepted: {ACCEPTED_MOVIES}"
    )


def _check_dtype(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype == np.float64 or array.dtype == np.float16:
        return array.astype(np.float32)
    if array.dtype.kind not in "uif":
        raise ValueError(
            f"{path} holds {array.dtype} pixels; accepted pixel types are 8-bit, 16-bit (or other integer) "
            "and floating point grayscale"
        )
    return array


def _pillow_pages(path: Path, n_pages: int) -> np.ndarray:
    """All pages of a TIFF decoded with Pillow: ``(n_pages, Y, X)`` (or with samples)."""
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        pages = [np.array(frame) for frame in ImageSequence.Iterator(im)]
    if len(pages) != n_pages:
        raise _InputError(f"{path}: Pillow decoded {len(pages)} pages where the file declares {n_pages}")
    return np.stack(pages)


def _tiff_array(path: Path) -> tuple[np.ndarray, str]:
    """The image data of a TIFF file and its axes string (tifffile codes, e.g. ``"TYX"``)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series
            if not series:
                raise _InputError(f"{path} is a TIFF file without any image; accepted: {ACCEPTED_MOVIES}")
            s0 = series[0]
            n_pages = len(tif.pages)
            axes, shape = s0.axes, tuple(s0.shape)
            # Pages written one by one without shape metadata show up as one 2-D series per page.
            stack_pages = (
                len(series) > 1
                and all(s.axes == axes and tuple(s.shape) == shape and s.dtype == s0.dtype for s in series)
                and axes.strip("S") in ("YX",)
            )
            if stack_pages:
                axes, shape = "I" + axes, (len(series),) + shape
            elif len(series) > 1:
                logger.warning("%s holds %d image series (e.g. stage positions); reading the first, %s %s",
                               path, len(series), axes, shape)
            try:
                if stack_pages:
                    data = np.stack([s.asarray() for s in series])
                else:
                    data = s0.asarray()
            except ValueError as exc:
                if "imagecodecs" not in str(exc):
                    raise
                n_in_series = int(np.prod(shape[: -(3 if axes.endswith("S") else 2)] or (1,)))
                if n_in_series != n_pages:
                    raise _InputError(
                        f"{path} uses a compression that needs the 'imagecodecs' package ({exc}); "
                        "re-save it uncompressed or install imagecodecs"
                    ) from exc
                logger.debug("decoding %s with Pillow (%s)", path, exc)
                data = _pillow_pages(path, n_pages).reshape(shape)
    except _InputError:
        raise
    except MemoryError as exc:
        raise ValueError(f"{path} is too large to load into memory ({exc}); crop or bin the movie first") from exc
    except Exception as exc:  # tifffile raises several error types on damaged files
        raise ValueError(
            f"{path} is a damaged or unsupported TIFF ({type(exc).__name__}: {exc}); re-export it as an "
            f"uncompressed TIFF; accepted: {ACCEPTED_MOVIES}"
        ) from exc
    if data.shape != shape:
        data = data.reshape(shape)
    return data, axes


def _png_array(path: Path) -> tuple[np.ndarray, str]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode = im.mode
            data = np.array(im)
    except Exception as exc:  # Pillow raises several error types on damaged files
        raise ValueError(f"{path} is a damaged PNG ({type(exc).__name__}: {exc}); re-export it") from exc
    if mode not in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
        raise ValueError(
            f"{path} is a colour image (PNG mode {mode}); RGB/colour images are not supported; "
            "export a single grayscale channel"
        )
    return data, "YX"


def _select_axes(
    data: np.ndarray, axes: str, path: Path, channel: int | None, plane: int | str | None
) -> np.ndarray:
    """Reduce a tifffile array with ``axes`` to ``(T, Y, X)`` (or ``(Y, X)`` for a single image)."""
    if len(axes) != data.ndim:
        raise ValueError(f"{path}: metadata axes {axes!r} do not match the data shape {data.shape}")
    if "S" in axes and data.shape[axes.index("S")] > 1:
        raise ValueError(
            f"{path} is an RGB/colour image ({data.shape[axes.index('S')]} samples per pixel); RGB/colour images "
            "are not supported; export a single grayscale channel"
        )
    sizes = dict(zip(axes, data.shape))

    def take(arr: np.ndarray, ax: str, index: int, what: str, option: str) -> tuple[np.ndarray, str]:
        n = arr.shape[cur_axes.index(ax)]
        if not 0 <= index < n:
            raise ValueError(f"{path}: {option}={index} is out of range; the file has {n} {what} (0..{n - 1})")
        return np.take(arr, index, axis=cur_axes.index(ax)), cur_axes.replace(ax, "")

    cur_axes = axes
    if "C" in cur_axes and sizes["C"] > 1:
        if channel is None:
            raise ValueError(
                f"{path} has {sizes['C']} channels (axes {axes}, shape {data.shape}); choose one with "
                f"channel=0..{sizes['C'] - 1} (CLI: --channel N)"
            )
        data, cur_axes = take(data, "C", int(channel), "channels", "channel")
    elif channel not in (None, 0):
        raise ValueError(f"{path} has a single channel; channel={channel} is not available (use 0 or leave it out)")
    has_time = any(a in cur_axes and sizes[a] > 1 for a in _TIME_LIKE)
    if "Z" in cur_axes and sizes["Z"] > 1:
        if plane == "time":
            if has_time:
                raise ValueError(f"{path} already has a time axis (axes {axes}); plane='time' is only for Z-only stacks")
            cur_axes = cur_axes.replace("Z", "T")
        elif plane is None:
            hint = (
                "" if has_time else
                "; if these planes are in fact time points (ImageJ labels an image sequence as slices), "
                "pass plane='time' (CLI: --plane time) to read them as frames"
            )
            raise ValueError(
                f"{path} has {sizes['Z']} z-planes (axes {axes}, shape {data.shape}); choose one with "
                f"plane=0..{sizes['Z'] - 1} (CLI: --plane N){hint}"
            )
        else:
            data, cur_axes = take(data, "Z", int(plane), "z-planes", "plane")
    elif plane not in (None, 0, "time"):
        raise ValueError(f"{path} has a single z-plane; plane={plane} is not available (leave it out)")
    # Drop singleton axes other than Y and X.
    keep = [i for i, a in enumerate(cur_axes) if a in "YX" or data.shape[i] > 1]
    data = data.reshape([data.shape[i] for i in keep])
    cur_axes = "".join(cur_axes[i] for i in keep)
    if not cur_axes.endswith("YX"):
        raise ValueError(f"{path}: unexpected axis order {axes!r}; frames must be stored as Y x X images")
    extra = cur_axes[:-2]
    if len(extra) > 1:
        raise ValueError(
            f"{path} has several non-spatial axes {extra!r} (shape {data.shape}); a movie has one time axis; "
            f"accepted: {ACCEPTED_MOVIES}"
        )
    return data


def _check_movie_shape(data: np.ndarray, path: Path) -> None:
    if data.ndim == 2:
        raise ValueError(
            f"{path} is a single 2-D image ({data.shape[0]} x {data.shape[1]}, one frame), not a movie; a movie "
            f"needs at least two frames; accepted: {ACCEPTED_MOVIES}"
        )
    if data.ndim != 3:
        raise ValueError(f"{path} has shape {data.shape}; a movie must be (T, Y, X); accepted: {ACCEPTED_MOVIES}")
    if data.shape[0] < 2:
        raise ValueError(
            f"{path} has only one frame; a movie needs at least two frames (time arrow prediction compares "
            "consecutive frames)"
        )
    if data.shape[1] < 1 or data.shape[2] < 1:
        raise ValueError(f"{path} has empty frames (shape {data.shape})")


def _read_image_file(path: Path, channel: int | None = None, plane: int | str | None = None) -> np.ndarray:
    kind = _sniff(path)
    if kind == "png":
        data, axes = _png_array(path)
    else:
        data, axes = _tiff_array(path)
    data = _select_axes(data, axes, path, channel, plane)
    return _check_dtype(data, path)


# --------------------------------------------------------------------------------------------
# frame folders


def natural_key(name: str) -> list[Any]:
    """Sort key that orders ``t2`` before ``t10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_frames(folder: str | os.PathLike) -> list[Path]:
    """Image files of a frame folder in natural order (hidden files ignored)."""
    folder = Path(folder)
    files = [
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in FRAME_EXTENSIONS
    ]
    return sorted(files, key=lambda p: natural_key(p.name))


def _read_frame_folder(folder: Path, channel: int | None, plane: int | str | None) -> np.ndarray:
    files = list_frames(folder)
    if not files:
        others = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))[:5]
        found = f" (found: {', '.join(others)})" if others else " (it is empty)"
        raise ValueError(
            f"{folder} contains no image frames{found}; a frame folder must hold one "
            f"{'/'.join(FRAME_EXTENSIONS)} file per frame"
        )
    frames = []
    for f in files:
        frame = _read_image_file(f, channel=channel, plane=plane)
        if frame.ndim != 2:
            raise ValueError(
                f"{f} holds {frame.shape[0]} images; every file of a frame folder must be one 2-D frame "
                "(or pass the multi-page file itself instead of the folder)"
            )
        if frames and (frame.shape != frames[0].shape or frame.dtype != frames[0].dtype):
            raise ValueError(
                f"{f} is {frame.shape[0]} x {frame.shape[1]} {frame.dtype} but {files[0].name} is "
                f"{frames[0].shape[0]} x {frames[0].shape[1]} {frames[0].dtype}; all frames of a movie must "
                "have the same size and pixel type"
            )
        frames.append(frame)
    return np.stack(frames)


# --------------------------------------------------------------------------------------------
# public API


def _resolve(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; accepted: {ACCEPTED_MOVIES}")
    return path


def read_stack(path: str | os.PathLike, *, channel: int | None = None, plane: int | str | None = None) -> np.ndarray:
    """Read a TIFF/PNG file or a frame folder as ``(T, Y, X)`` or ``(Y, X)``, without movie checks."""
    path = _resolve(path)
    if path.is_dir():
        return _read_frame_folder(path, channel, plane)
    return _read_image_file(path, channel=channel, plane=plane)


def read_movie(path: str | os.PathLike, *, channel: int | None = None, plane: int | str | None = None) -> np.ndarray:
    """Read a movie as ``(T, Y, X)`` in its native dtype.

    Args:
        path: a multi-page TIFF, an ImageJ/OME-TIFF, or a folder of single-frame tif/png images.
        channel: the channel to read when the file has several (``C`` axis).
        plane: the z-plane to read when the file has several (``Z`` axis); ``"time"`` reads the
            z-planes of a stack without time axis as frames (ImageJ saves image sequences as slices).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the input is not a readable grayscale movie of at least two frames.
    """
    path = _resolve(path)
    data = read_stack(path, channel=channel, plane=plane)
    _check_movie_shape(data, path)
    return data


def normalize_movie(movie: np.ndarray, pmin: float = 1.0, pmax: float = 99.8) -> np.ndarray:
    """Per-frame percentile normalisation: ``(x - p_min) / (p_max - p_min)`` as float32.

    Each frame is scaled on its own (the paper's preprocessing), so a slow illumination drift does
    not leak into the normalised intensities. Constant frames become 0; non-finite pixels become 0.

    Args:
        movie: ``(T, Y, X)`` (or any ``(..., Y, X)``) array.
        pmin, pmax: lower and upper percentiles, ``0 <= pmin < pmax <= 100``.

    Returns:
        float32 array of the same shape.
    """
    if not 0.0 <= pmin < pmax <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= pmin < pmax <= 100, got pmin={pmin}, pmax={pmax}")
    movie = np.asarray(movie)
    if movie.ndim < 2:
        raise ValueError(f"expected frames (..., Y, X), got an array of shape {movie.shape}")
    frames = movie.reshape((-1,) + movie.shape[-2:])
    out = np.empty(frames.shape, dtype=np.float32)
    for i, frame in enumerate(frames):
        f = frame.astype(np.float32)
        finite = np.isfinite(f)
        all_finite = bool(finite.all())
        values = f if all_finite else f[finite]
        if values.size == 0:
            out[i] = 0.0
            continue
        lo, hi = np.percentile(values, [pmin, pmax])
        scale = float(hi - lo)
        if not np.isfinite(scale) or scale <= 1e-12 * max(abs(float(hi)), abs(float(lo)), 1.0):
            scale = 1.0
        np.subtract(f, np.float32(lo), out=out[i])
        out[i] /= np.float32(scale)
        if not all_finite:
            out[i][~finite] = 0.0
    return out.reshape(movie.shape)


def check_masks(masks: np.ndarray, movie: np.ndarray | tuple[int, ...] | list[int] | None = None) -> np.ndarray:
    """Validate event masks (against a movie or its shape ``(T, Y, X)``) and return them as ``uint8``.

    Masks must be whole numbers in {0 (none), 1 (division), 2 (death)} with the movie's shape.
    """
    masks = np.asarray(masks)
    if masks.dtype.kind == "b":
        masks = masks.astype(np.uint8)
    if masks.dtype.kind not in "uif":
        raise ValueError(f"masks hold {masks.dtype} values; masks must be integer images with values 0, 1, 2")
    if masks.dtype.kind == "f":
        if not np.isfinite(masks).all() or not np.array_equal(masks, np.round(masks)):
            bad = masks[~np.isfinite(masks) | (masks != np.round(masks))]
            raise ValueError(
                f"masks contain non-integer values (e.g. {bad.flat[0]!r}); masks must be integer images with "
                "values 0 = no event, 1 = division, 2 = death"
            )
    in_range = masks.size == 0 or (masks.min() >= 0 and masks.max() <= 2)  # fast path for valid masks
    bad_values = [] if in_range else [v for v in np.unique(masks).tolist() if v not in MASK_VALUES]
    if bad_values:
        counts = {v: int(np.count_nonzero(masks == v)) for v in bad_values[:5]}
        shown = ", ".join(f"{v:g} ({n} px)" for v, n in counts.items())
        more = f" and {len(bad_values) - 5} more" if len(bad_values) > 5 else ""
        if bad_values == [255]:
            hint = " (for a binary 0/255 mask, divide it by 255)"
        elif len(bad_values) > 5:
            hint = (" (this looks like a label image with one number per cell, e.g. CTC markers; for a Cell Tracking "
                    "Challenge folder pass the folder itself and the divisions are derived from its lineage)")
        else:
            hint = ""
        raise ValueError(
            f"masks contain value(s) {shown}{more} outside {{0, 1, 2}}; use 0 = no event, 1 = division, "
            f"2 = death{hint}"
        )
    if masks.ndim != 3:
        raise ValueError(f"masks must be a movie (T, Y, X); got shape {masks.shape}")
    if movie is not None:
        is_shape = isinstance(movie, (tuple, list)) and all(isinstance(n, (int, np.integer)) for n in movie)
        shape = tuple(int(n) for n in movie) if is_shape else tuple(np.shape(movie))
        if len(shape) != 3:
            raise ValueError(f"the movie must be (T, Y, X); got shape {shape}")
        if masks.shape[0] != shape[0]:
            raise ValueError(
                f"masks have {masks.shape[0]} frames but the movie has {shape[0]}; they need one mask frame per "
                "movie frame"
            )
        if masks.shape[1:] != shape[1:]:
            raise ValueError(
                f"mask frames are {masks.shape[1]} x {masks.shape[2]} pixels but movie frames are "
                f"{shape[1]} x {shape[2]}; masks must have the movie's frame size"
            )
    return masks.astype(np.uint8, copy=False)


def read_masks(path: str | os.PathLike, movie_shape: tuple[int, ...] | np.ndarray | None = None) -> np.ndarray:
    """Read event masks (TIFF or frame folder) as ``uint8 (T, Y, X)`` with values 0, 1, 2.

    Args:
        path: a multi-page TIFF or a folder of frames, like a movie.
        movie_shape: the movie's shape (or the movie itself) to check against.
    """
    path = _resolve(path)
    data = read_stack(path)
    if data.ndim == 2:
        raise ValueError(
            f"{path} is a single 2-D mask image; event masks must be a stack with one frame per movie frame"
        )
    try:
        return check_masks(data, movie_shape)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def write_tiff(path: str | os.PathLike, array: np.ndarray, *, axes: str | None = None, compress: bool = False) -> Path:
    """Write ``array`` as a TIFF atomically (temporary file in the same folder + ``os.replace``).

    3-D arrays are written with axes ``TYX`` and 2-D ones with ``YX`` in the metadata, so
    :func:`read_movie` reads them back unchanged. ``compress`` uses zlib (deflate).
    """
    import tifffile

    path = Path(path)
    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if axes is None:
        axes = {2: "YX", 3: "TYX", 4: "TCYX"}.get(array.ndim)
    kwargs: dict[str, Any] = {"metadata": {"axes": axes} if axes else {}}
    if compress:
        kwargs["compression"] = "zlib"
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, photometric="minisblack", **kwargs)
    return path


@dataclass
class MovieInput:
    """What :func:`read_input` found at a path.

    Attributes:
        movie: ``(T, Y, X)`` native dtype.
        masks: ``uint8 (T, Y, X)`` event masks, or None.
        source: ``"tiff"``, ``"png"``, ``"frames"`` or ``"ctc"``.
        meta: JSON-able description (path, shape, dtype, and for CTC the sequence and frame window).
        events: the event table of a CTC sequence (``tapcore.ctc`` columns), else None.
    """

    movie: np.ndarray
    masks: np.ndarray | None
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    events: Any = None


def find_ctc_sequence(path: str | os.PathLike) -> tuple[Path, str] | None:
    """``(root, sequence)`` when ``path`` is a CTC dataset folder or one of its sequence folders.

    A dataset folder holds ``NN/`` and ``NN_GT/TRA/man_track.txt``; a sequence folder is ``NN/``
    with the ``NN_GT`` folder beside it. Several annotated sequences raise ValueError (choose one
    by passing its sequence folder).
    """
    path = Path(path)
    if not path.is_dir():
        return None
    if (path.parent / f"{path.name}_GT" / "TRA" / "man_track.txt").is_file():
        return path.parent, path.name
    seqs = sorted(
        p.name for p in path.iterdir()
        if p.is_dir() and re.fullmatch(r"\d+", p.name) and (path / f"{p.name}_GT" / "TRA" / "man_track.txt").is_file()
    )
    if not seqs:
        return None
    if len(seqs) > 1:
        raise ValueError(
            f"{path} holds several annotated Cell Tracking Challenge sequences ({', '.join(seqs)}); "
            f"pass one sequence folder, e.g. {path / seqs[0]}"
        )
    return path, seqs[0]


def read_input(
    path: str | os.PathLike,
    *,
    masks: str | os.PathLike | None = None,
    channel: int | None = None,
    plane: int | str | None = None,
    ctc_dilate: int = 0,
) -> MovieInput:
    """Read a movie (and event masks when available) from a TIFF, a frame folder or a CTC folder.

    Args:
        path: a movie file, a frame folder, or a Cell Tracking Challenge dataset/sequence folder
            (then the masks and event table come from its lineage, see :mod:`tapcore.ctc`).
        masks: optional event-mask file or folder for a TIFF / frame-folder movie.
        channel, plane: see :func:`read_movie`.
        ctc_dilate: for a CTC folder, grow the marked markers by this many pixels in the masks
            (see :func:`tapcore.ctc.load_ctc`; PhC-C2DL-PSC markers are 3 x 3 px).
    """
    path = _resolve(path)
    ctc_seq = find_ctc_sequence(path) if path.is_dir() else None
    if ctc_seq is not None:
        from tapcore import ctc

        if masks is not None:
            raise ValueError(f"{path} is a Cell Tracking Challenge folder whose masks come from its lineage; "
                             "leave out the separate masks")
        root, seq = ctc_seq
        loaded = ctc.load_ctc(root, sequence=seq, dilate=ctc_dilate)
        meta = {
            "path": str(path), "shape": list(loaded.movie.shape), "dtype": str(loaded.movie.dtype),
            "sequence": seq, "first_frame": int(loaded.first_frame),
            "divisions": int((loaded.events["role"] == "parent").sum()) if len(loaded.events) else 0,
        }
        return MovieInput(loaded.movie, loaded.masks, "ctc", meta, loaded.events)
    movie = read_movie(path, channel=channel, plane=plane)
    source = "frames" if path.is_dir() else _sniff(path)
    mask_arr = read_masks(masks, movie.shape) if masks is not None else None
    meta = {"path": str(path), "shape": list(movie.shape), "dtype": str(movie.dtype)}
    if masks is not None:
        meta["masks_path"] = str(masks)
    return MovieInput(movie, mask_arr, source, meta)
