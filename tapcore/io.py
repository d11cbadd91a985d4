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
from typing import Any, Optional

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

#: Default of ``$TAPCORE_MAX_MOVIE_GB``: the largest decoded movie read into memory, in GB.
DEFAULT_MAX_MOVIE_GB = 16

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


def max_movie_bytes() -> int:
    """The largest decoded movie this tool reads: ``$TAPCORE_MAX_MOVIE_GB`` gigabytes (default 16)."""
    raw = os.environ.get("TAPCORE_MAX_MOVIE_GB", str(DEFAULT_MAX_MOVIE_GB))
    try:
        gb = float(raw)
    except ValueError:
        raise ValueError(f"TAPCORE_MAX_MOVIE_GB must be a number of gigabytes, got {raw!r}") from None
    return int(gb * 2**30)


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KB"`` (binary units, one decimal)."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} TB"


def _check_declared_size(path: Path, shape: tuple[int, ...], dtype: Any, what: str = "declares") -> int:
    """Refuse (before any pixel array exists) a file whose declared image is larger than the limit."""
    itemsize = np.dtype(dtype).itemsize if dtype is not None else 1
    nbytes = int(np.prod([int(s) for s in shape], dtype=object)) * itemsize
    limit = max_movie_bytes()
    if nbytes > limit:
        dims = " x ".join(str(int(s)) for s in shape)
        raise _InputError(
            f"{path} {what} an image of {dims} {np.dtype(dtype)} pixels = {human_bytes(nbytes)} in memory, above the "
            f"limit of {human_bytes(limit)} (TAPCORE_MAX_MOVIE_GB); crop or bin the movie, or raise the limit if "
            "this computer has the memory"
        )
    return nbytes


def _interpret_samples(tif: Any, axes: str) -> tuple[str, str | None]:
    """Re-label tifffile's ``S`` axis of planar stacks that are not colour images.

    tifffile (and tools built on it) store an ``(n, Y, X)`` array with n = 3 or 4 as one RGB(A) image
    with separate planes when no photometric is given. Such files carry tifffile's shape description
    without axes and planar (not interleaved) samples; a real colour image is interleaved (``YXS``).
    Those samples are frames (``I``) when they are the only non-spatial axis, else channels (``C``).
    Returns the new axes and a note saying what was decided (None when nothing changed).
    """
    if "S" not in axes or tif.is_imagej or tif.is_ome:
        return axes, None
    page = tif.pages[0]
    planar_separate = int(getattr(page, "planarconfig", 1)) == 2
    shaped = tif.is_shaped and all("axes" not in (md or {}) for md in (tif.shaped_metadata or ({},)))
    if not (planar_separate and shaped and axes.index("S") < axes.index("Y")):
        return axes, None
    others = [a for a in axes if a not in "SYX"]
    new = "I" if not others else "C"
    return axes.replace("S", new), (
        f"its {'frames' if new == 'I' else 'channels'} are stored as planar colour samples without colour "
        f"metadata (as tifffile writes an array of shape (n, Y, X)); read as {'frames' if new == 'I' else 'channels'}"
    )


def _tiff_array(path: Path, mmap: bool = False) -> tuple[np.ndarray, str, list[str]]:
    """The image data of a TIFF file, its axes string (tifffile codes, e.g. ``"TYX"``) and notes.

    The declared size (from the series' shape and dtype) is checked against :func:`max_movie_bytes`
    before any pixel array is allocated. ``mmap``: map an uncompressed, contiguous, native-byte-order
    series read-only from the file instead of copying it into memory (the file must stay in place
    while the array is used).
    """
    import tifffile

    notes: list[str] = []
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
                notes.append(f"the file holds {len(series)} image series (e.g. stage positions); the first one "
                             f"({' x '.join(map(str, shape))}) was read")
            _check_declared_size(path, shape, s0.dtype)
            axes, note = _interpret_samples(tif, axes)
            if note:
                notes.append(note)
            try:
                if mmap and not stack_pages and s0.dataoffset is not None and np.dtype(s0.dtype).isnative:
                    data = tifffile.memmap(path, series=0, mode="r")
                elif stack_pages:
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
    return data, axes, notes


def _png_array(path: Path) -> tuple[np.ndarray, str]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode = im.mode
            _check_declared_size(path, (im.height, im.width, len(im.getbands())),
                                 np.uint16 if mode.startswith("I;16") else np.float32 if mode in ("I", "F") else np.uint8)
            data = np.array(im)
    except _InputError:
        raise
    except Exception as exc:  # Pillow raises several error types on damaged files
        raise ValueError(f"{path} is a damaged PNG ({type(exc).__name__}: {exc}); re-export it") from exc
    if mode not in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
        raise ValueError(
            f"{path} is a colour image (PNG mode {mode}); RGB/colour images are not supported; "
            "export a single grayscale channel"
        )
    return data, "YX", []


_AXIS_NAMES = {"T": "time", "I": "image sequence", "Q": "unlabelled", "Z": "z-plane", "C": "channel",
               "S": "colour sample", "P": "position", "R": "tile", "H": "lifetime histogram", "E": "lambda",
               "V": "view", "L": "exposure", "A": "angle", "M": "mosaic"}


def _select_axes(
    data: np.ndarray, axes: str, path: Path, channel: int | None, plane: int | str | None
) -> np.ndarray:
    """Reduce a tifffile array with ``axes`` to ``(T, Y, X)`` (or ``(Y, X)`` for a single image).

    The channel (``C``) and z-plane (``Z``) are taken as asked; the one remaining non-spatial axis
    is time, wherever the metadata puts it, and is moved first. Two or more remaining axes that the
    metadata does not tell apart are refused.
    """
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
                f"channel=0..{sizes['C'] - 1} (CLI: --channel N; on the Data page: pick the channel)"
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
                f"plane=0..{sizes['Z'] - 1} (CLI: --plane N; on the Data page: pick the plane){hint}"
            )
        else:
            data, cur_axes = take(data, "Z", int(plane), "z-planes", "plane")
    elif plane not in (None, 0, "time"):
        raise ValueError(f"{path} has a single z-plane; plane={plane} is not available (leave it out)")
    # Drop singleton axes other than Y and X.
    keep = [i for i, a in enumerate(cur_axes) if a in "YX" or data.shape[i] > 1]
    data = data.reshape([data.shape[i] for i in keep])
    cur_axes = "".join(cur_axes[i] for i in keep)
    if "Y" not in cur_axes or "X" not in cur_axes:
        raise ValueError(f"{path}: the metadata axes {axes!r} name no Y and X (image rows and columns); "
                         "re-export it as a plain multi-page TIFF")
    extra = [i for i, a in enumerate(cur_axes) if a not in "YX"]  # positions (axis letters may repeat: QQYX)
    if len(extra) > 1:
        named = ", ".join(f"{cur_axes[i]} ({_AXIS_NAMES.get(cur_axes[i], 'unknown')}, {data.shape[i]})" for i in extra)
        raise ValueError(
            f"{path} has {len(extra)} non-spatial axes: {named} (axes {axes!r}, shape {tuple(data.shape)}); its "
            "metadata does not say which one is time, so the frames cannot be told apart; re-save it with "
            "labelled axes (ImageJ: Image > Hyperstacks > Re-order Hyperstack) or as one plain multi-page TIFF "
            "per channel and position"
        )
    order = extra + [cur_axes.index("Y"), cur_axes.index("X")]
    if order != sorted(order):
        logger.info("%s: axes %r reordered to time, Y, X", path, cur_axes)
        data = np.ascontiguousarray(np.transpose(data, order))
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


def check_movie_content(movie: np.ndarray, name: str | os.PathLike = "the movie") -> list[str]:
    """Check the pixels of a ``(T, Y, X)`` movie; returns warnings, raises ValueError when it is unusable.

    Refused: a frame with no finite pixel (all NaN / infinite), and a constant movie (one value
    everywhere: no image). Warned: some NaN / infinite pixels (they become 0 after normalisation),
    frames smaller than the training patch of TAP pretraining or the event head's crop.
    """
    warnings: list[str] = []
    if movie.dtype.kind == "f":
        finite = np.isfinite(movie)
        n_bad = int(finite.size - np.count_nonzero(finite))
        if n_bad:
            per_frame = finite.reshape(movie.shape[0], -1).any(axis=1)
            if not per_frame.all():
                bad = np.flatnonzero(~per_frame)
                listed = ", ".join(str(int(t)) for t in bad[:5]) + (" ..." if len(bad) > 5 else "")
                raise ValueError(
                    f"{name}: frame(s) {listed} ({len(bad)} of {movie.shape[0]}, numbered from 0) hold no finite "
                    "pixel (all NaN or infinite); remove those frames or re-export the movie"
                )
            warnings.append(
                f"{n_bad} pixel{'s' if n_bad != 1 else ''} ({100.0 * n_bad / finite.size:.2g} %) "
                f"{'are' if n_bad != 1 else 'is'} NaN or infinite; {'they count' if n_bad != 1 else 'it counts'} "
                "as 0 (background) after normalisation"
            )
            lo, hi = float(np.min(movie, where=finite, initial=np.inf)), float(np.max(movie, where=finite,
                                                                                  initial=-np.inf))
        else:
            lo, hi = float(movie.min()), float(movie.max())
    else:
        lo, hi = float(movie.min()), float(movie.max())
    if lo == hi:
        raise ValueError(
            f"{name} is constant: every pixel of all {movie.shape[0]} frames has the value {lo:g}, so it holds no "
            "image; check the export (an empty acquisition or the wrong channel?)"
        )
    warnings.extend(training_size_warnings(movie.shape))
    return warnings


def training_size_warnings(shape: tuple[int, ...]) -> list[str]:
    """Warnings when frames ``(.., Y, X)`` are smaller than the default TAP patch or event-head crop."""
    from tapcore.events.dataset import CropPairConfig
    from tapcore.tap.train import PretrainConfig

    height, width = int(shape[-2]), int(shape[-1])
    patch, crop = PretrainConfig().patch, CropPairConfig().crop
    out = []
    if min(height, width) < patch:
        out.append(
            f"frames are {height} x {width} px, smaller than the {patch} x {patch} px patch TAP pretraining uses by "
            f"default; pretrain with a patch of at most {min(height, width)} px (Pretrain page: patch size; CLI: "
            "--patch)"
        )
    if min(height, width) < crop:
        out.append(
            f"frames are {height} x {width} px, smaller than the {crop} x {crop} px crops of the event head; train "
            f"it with crops of at most {min(height, width)} px (--crop)"
        )
    return out


def _read_image_file(path: Path, channel: int | None = None, plane: int | str | None = None,
                     notes: list[str] | None = None, mmap: bool = False) -> np.ndarray:
    kind = _sniff(path)
    if kind == "png":
        data, axes, found = _png_array(path)
    else:
        data, axes, found = _tiff_array(path, mmap=mmap)
    if data.dtype == np.bool_ and notes is not None:
        found.append("its pixels are true/false (1 bit), read as 0/1: is this a mask rather than a microscope image?")
    data = _select_axes(data, axes, path, channel, plane)
    if notes is not None:
        notes.extend(n for n in found if n not in notes)
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


def _read_frame_folder(folder: Path, channel: int | None, plane: int | str | None,
                       notes: list[str] | None = None) -> np.ndarray:
    files = list_frames(folder)
    if not files:
        others = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))[:5]
        found = f" (found: {', '.join(others)})" if others else " (it is empty)"
        raise ValueError(
            f"{folder} contains no image frames{found}; a frame folder must hold one "
            f"{'/'.join(FRAME_EXTENSIONS)} file per frame"
        )
    out: np.ndarray | None = None
    for i, f in enumerate(files):
        frame = _read_image_file(f, channel=channel, plane=plane, notes=notes)
        if frame.ndim != 2:
            raise ValueError(
                f"{f} holds {frame.shape[0]} images; every file of a frame folder must be one 2-D frame "
                "(or pass the multi-page file itself instead of the folder)"
            )
        if out is None:
            # the whole movie's size is known from its first frame: check it before allocating it
            _check_declared_size(folder, (len(files),) + frame.shape, frame.dtype, what="holds")
            out = np.empty((len(files),) + frame.shape, frame.dtype)
        elif frame.shape != out.shape[1:] or frame.dtype != out.dtype:
            raise ValueError(
                f"{f} is {frame.shape[0]} x {frame.shape[1]} {frame.dtype} but {files[0].name} is "
                f"{out.shape[1]} x {out.shape[2]} {out.dtype}; all frames of a movie must "
                "have the same size and pixel type"
            )
        out[i] = frame
    return out  # type: ignore[return-value]  (files is not empty, so out was allocated)


# --------------------------------------------------------------------------------------------
# public API


def _resolve(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; accepted: {ACCEPTED_MOVIES}")
    return path


def read_stack(path: str | os.PathLike, *, channel: int | None = None, plane: int | str | None = None,
               notes: list[str] | None = None, mmap: bool = False) -> np.ndarray:
    """Read a TIFF/PNG file or a frame folder as ``(T, Y, X)`` or ``(Y, X)``, without movie checks.

    ``notes``: when given, decisions taken while reading (e.g. planar samples read as frames) are
    appended to it as sentences. ``mmap``: see :func:`read_movie`.
    """
    path = _resolve(path)
    if path.is_dir():
        return _read_frame_folder(path, channel, plane, notes)
    return _read_image_file(path, channel=channel, plane=plane, notes=notes, mmap=mmap)


def read_movie(path: str | os.PathLike, *, channel: int | None = None, plane: int | str | None = None,
               warnings: list[str] | None = None, mmap: bool = False) -> np.ndarray:
    """Read a movie as ``(T, Y, X)`` in its native dtype.

    Args:
        path: a multi-page TIFF, an ImageJ/OME-TIFF, or a folder of single-frame tif/png images.
        channel: the channel to read when the file has several (``C`` axis).
        plane: the z-plane to read when the file has several (``Z`` axis); ``"time"`` reads the
            z-planes of a stack without time axis as frames (ImageJ saves image sequences as slices).
        warnings: when given, the movie's warnings (:func:`check_movie_content` and reading notes)
            are appended to it; they are always logged.
        mmap: map an uncompressed single-file TIFF read-only instead of reading it into memory (a
            ``numpy.memmap`` while no channel/plane is taken; the file must stay while it is used).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the input is not a readable grayscale movie of at least two frames, its declared
            size is above :func:`max_movie_bytes`, a frame has no finite pixel, or it is constant.
    """
    path = _resolve(path)
    notes: list[str] = []
    data = read_stack(path, channel=channel, plane=plane, notes=notes, mmap=mmap)
    _check_movie_shape(data, path)
    notes.extend(check_movie_content(data, path))
    for note in notes:
        logger.warning("%s: %s", path, note)
    if warnings is not None:
        warnings.extend(notes)
    return data


def check_movie(movie: Any, min_frames: int = 1, name: str = "the movie", purpose: str = "this step") -> np.ndarray:
    """THE "(T, Y, X) movie" rule for arrays handed to the library: returns ``np.asarray(movie)``.

    Raises:
        ValueError: not 3-D, fewer than ``min_frames`` frames (``purpose`` says what needs them), or
            empty frames.
    """
    movie = np.asarray(movie)
    if movie.ndim != 3:
        raise ValueError(f"{name} must be (T, Y, X); got shape {movie.shape}")
    if movie.shape[0] < min_frames:
        words = {1: "one frame", 2: "two frames"}.get(min_frames, f"{min_frames} frames")
        raise ValueError(f"{name} has {movie.shape[0]} frame(s); {purpose} needs at least {words}")
    if min(movie.shape[1:]) < 1:
        raise ValueError(f"{name}'s frames are empty ({movie.shape[1]} x {movie.shape[2]} pixels)")
    return movie


#: Default per-frame normalisation percentiles (paper: 1 and 99.8).
PMIN, PMAX = 1.0, 99.8


def normalization(model_config: Optional[dict[str, Any]], pmin: Optional[float] = None,
                  pmax: Optional[float] = None) -> tuple[float, float]:
    """THE pmin/pmax fallback: the given percentiles, else the model's (``config["normalize"]``, the
    training values), else :data:`PMIN` / :data:`PMAX`."""
    norm = (model_config or {}).get("normalize") or {}
    return (float(pmin if pmin is not None else norm.get("pmin", PMIN)),
            float(pmax if pmax is not None else norm.get("pmax", PMAX)))


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
        warnings: sentences about what may not work well (NaN pixels, small frames, ...); also in
            ``meta["warnings"]`` when there are any.
    """

    movie: np.ndarray
    masks: np.ndarray | None
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    events: Any = None
    warnings: list[str] = field(default_factory=list)


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
        warnings = check_movie_content(loaded.movie, path)
        skipped = loaded.meta.get("skipped") or []
        if skipped:
            meta["skipped"] = skipped
            warnings.append(ctc.skipped_summary(skipped))
        if warnings:
            meta["warnings"] = warnings
        return MovieInput(loaded.movie, loaded.masks, "ctc", meta, loaded.events, warnings)
    warnings: list[str] = []
    movie = read_movie(path, channel=channel, plane=plane, warnings=warnings)
    source = "frames" if path.is_dir() else _sniff(path)
    mask_arr = read_masks(masks, movie.shape) if masks is not None else None
    meta: dict[str, Any] = {"path": str(path), "shape": list(movie.shape), "dtype": str(movie.dtype)}
    if channel is not None:
        meta["channel"] = int(channel)
    if plane is not None:
        meta["plane"] = plane
    if masks is not None:
        meta["masks_path"] = str(masks)
    if warnings:
        meta["warnings"] = warnings
    return MovieInput(movie, mask_arr, source, meta, warnings=warnings)


# --------------------------------------------------------------------------------------------
# layout of a file before reading it (for pickers and previews)


@dataclass
class FileLayout:
    """What a movie file holds, from its metadata alone (no pixel data is read).

    Attributes:
        path: the file.
        kind: ``"tiff"`` or ``"png"``.
        axes: tifffile axis codes of the (first) series, e.g. ``"TCYX"`` (after re-labelling planar
            samples that are not colour, see :func:`_interpret_samples`).
        shape: its shape.
        dtype: its pixel type.
        nbytes: decoded size in bytes.
        channels: number of channels (``C``), 1 when none.
        planes: number of z-planes (``Z``), 1 when none.
    """

    path: Path
    kind: str
    axes: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    channels: int = 1
    planes: int = 1

    @property
    def needs_choice(self) -> bool:
        """True when the user must pick a channel or a plane before the movie can be read."""
        return self.channels > 1 or self.planes > 1

    def frames_if_picked(self) -> int:
        """Frames of the movie once one channel and plane are picked (z-planes as time when no T)."""
        sizes = dict(zip(self.axes, self.shape))
        n = 1
        for a in self.axes:
            if a not in "CZYXS":
                n *= sizes[a]
        return n


def describe_file(path: str | os.PathLike) -> FileLayout:
    """The layout of a movie file (axes, shape, channels, planes, size) from its metadata only.

    Raises ValueError like :func:`read_movie` for a file that is not a TIFF/PNG, is damaged, or
    declares an image larger than :func:`max_movie_bytes`.
    """
    import tifffile

    path = _resolve(path)
    kind = _sniff(path)
    if kind == "png":
        from PIL import Image

        try:
            with Image.open(path) as im:
                shape, dtype = (im.height, im.width), np.dtype(np.uint16 if im.mode.startswith("I;16") else np.uint8)
        except Exception as exc:  # Pillow raises several error types on damaged files
            raise ValueError(f"{path} is a damaged PNG ({type(exc).__name__}: {exc}); re-export it") from exc
        return FileLayout(path, kind, "YX", shape, str(dtype), int(np.prod(shape)) * dtype.itemsize)
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise _InputError(f"{path} is a TIFF file without any image; accepted: {ACCEPTED_MOVIES}")
            s0 = tif.series[0]
            axes, shape = s0.axes, tuple(int(n) for n in s0.shape)
            if len(tif.series) > 1 and all(tuple(s.shape) == shape for s in tif.series) and axes.strip("S") == "YX":
                axes, shape = "I" + axes, (len(tif.series),) + shape
            nbytes = _check_declared_size(path, shape, s0.dtype)
            axes, _ = _interpret_samples(tif, axes)
            dtype = str(np.dtype(s0.dtype))
    except _InputError:
        raise
    except Exception as exc:  # tifffile raises several error types on damaged files
        raise ValueError(
            f"{path} is a damaged or unsupported TIFF ({type(exc).__name__}: {exc}); re-export it as an "
            f"uncompressed TIFF; accepted: {ACCEPTED_MOVIES}"
        ) from exc
    sizes = dict(zip(axes, shape))
    return FileLayout(path, kind, axes, shape, dtype, nbytes, channels=sizes.get("C", 1), planes=sizes.get("Z", 1))


def read_frame(path: str | os.PathLike, frame: int = 0, *, channel: int | None = None,
               plane: int | str | None = None) -> np.ndarray:
    """One frame ``(Y, X)`` of a movie file with the given channel / plane, for previews.

    For a TIFF whose pages are single 2-D planes only the needed page is decoded; other files are
    read whole (with the same checks as :func:`read_movie`) and the frame is taken from the movie.
    """
    import tifffile

    layout = describe_file(path)
    axes, shape = layout.axes, layout.shape
    page_axes = axes[:-2] if axes.endswith("YX") else None
    if layout.kind == "tiff" and page_axes is not None and "S" not in axes:
        sizes = dict(zip(page_axes, shape[:-2]))
        if "C" in sizes and sizes["C"] > 1 and channel is None:
            read_movie(path, channel=channel, plane=plane)  # raises the "choose a channel" message
        index = {}
        for a in page_axes:
            if a == "C":
                index[a] = int(channel or 0)
            elif a == "Z" and plane != "time":
                index[a] = int(plane or 0) if sizes[a] > 1 else 0
            else:
                index[a] = None  # the time axis (or a singleton)
        time_axes = [a for a in page_axes if index[a] is None and sizes[a] > 1]
        if len(time_axes) <= 1:
            for a in page_axes:
                if index[a] is None:
                    index[a] = int(frame) if a in time_axes else 0
                if not 0 <= index[a] < sizes[a]:
                    what = {"C": "channel", "Z": "plane"}.get(a, "frame")
                    raise ValueError(f"{path}: {what} {index[a]} is out of range; the file has {sizes[a]} (0..{sizes[a] - 1})")
            key = int(np.ravel_multi_index([index[a] for a in page_axes], [sizes[a] for a in page_axes])) \
                if page_axes else 0
            try:
                with tifffile.TiffFile(path) as tif:
                    if len(tif.series) > 1 and page_axes.startswith("I") and len(tif.series) == sizes["I"]:
                        data = tif.series[key].asarray()
                    else:
                        data = tif.series[0].asarray(key=key)
                return _check_dtype(np.asarray(data).reshape(shape[-2:]), Path(path))
            except Exception as exc:  # fall back to reading the whole movie below
                logger.debug("page-wise read of %s failed (%s); reading it whole", path, exc)
    movie = read_movie(path, channel=channel, plane=plane)
    if not 0 <= frame < movie.shape[0]:
        raise ValueError(f"{path}: frame {frame} is out of range; the movie has {movie.shape[0]} frames")
    return movie[frame]
