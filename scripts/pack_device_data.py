"""Pack what ``bench/gpu_suite.py`` needs from a CTC sequence into one small, ignored folder.

A GPU machine receives only the project's working tree and a few carried ignored paths (64 MiB in
all); ``../shared/data`` does not travel. This script packs the hela01 movie, its division masks, the
CTC event table and the lineage into ``.devdata/hela01/`` (ignored by git), at most ``--max-mib``
(45 MiB) in all. The suite reads the pack when ``../shared/data/hela01`` is absent.

Files of a pack (format ``tapcore-device-pack-v1``)::

    pack.json     what was packed: source, shapes, sha256 of the original and the packed movie,
                  quantisation step and its largest error, file hashes, versions, the command
    movie.npz     "lo", "hi": uint8 (T, Y, X) low and high bytes of q = round((x - offset) / step);
                  the movie is q * step + offset (uint16); split bytes deflate far better than uint16
    masks.npz     "masks": uint8 (T, Y, X), 1 on division markers (tapcore.ctc.load_ctc)
    events.csv    the CTC event table (tapcore.ctc.EVENT_COLUMNS; one parent + two daughter rows per division)
    man_track.txt the CTC lineage, copied as it is

Lossless packing does not fit: hela01 is 92 x 700 x 1100 uint16 (142 MB); its noise leaves about 5.4
bits per pixel after the best simple predictor (about 48 MB). ``--step auto`` (default) takes the
smallest step of 1, 2, 4, 8 whose estimated pack fits in 95 % of the limit. Measured on hela01: step 2
gives 44.5 MiB (every pixel within 1 count), step 4 gives 35.9 MiB (within 2 counts); auto picks 4,
which also leaves room under the device's 64 MiB for the rest of the tree (a committed
models/hela-nuclei adds about 18 MB). The background noise is about 6 counts (standard deviation;
values 33,000-37,000): an error of at most 2 counts is far below it. The step and the largest error are
in ``pack.json`` and in every suite result that uses the pack.

Usage::

    python scripts/pack_device_data.py                        # ../shared/data/hela01 -> .devdata/hela01
    python scripts/pack_device_data.py --src DIR --out DIR --step 2
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SRC = ROOT.parent / "shared" / "data" / "hela01"
DEFAULT_OUT = ROOT / ".devdata" / "hela01"
FORMAT = "tapcore-device-pack-v1"
STEPS = (1, 2, 4, 8)
FILES = ("pack.json", "movie.npz", "masks.npz", "events.csv", "man_track.txt")


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def quantize(movie: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """``movie`` (integer, T, Y, X) -> (lo, hi) uint8 byte planes of ``q = round((x - offset) / step)``,
    the offset and the largest absolute reconstruction error."""
    if movie.dtype.kind not in "ui":
        raise ValueError(f"the movie is {movie.dtype}; the pack stores integer movies (CTC frames are uint8/uint16)")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    offset = int(movie.min())
    q = np.rint((movie.astype(np.int64) - offset) / step).astype(np.int64)
    if q.max() > 0xFFFF:
        raise ValueError(f"the movie spans {int(movie.max()) - offset} counts: too many for 16 bits at step {step}")
    q16 = q.astype(np.uint16)
    err = int(np.abs(q16.astype(np.int64) * step + offset - movie.astype(np.int64)).max())
    return (q16 & 0xFF).astype(np.uint8), (q16 >> 8).astype(np.uint8), offset, err


def dequantize(lo: np.ndarray, hi: np.ndarray, step: int, offset: int, dtype: str = "uint16") -> np.ndarray:
    """Inverse of :func:`quantize` (up to its error)."""
    q = lo.astype(np.int64) | (hi.astype(np.int64) << 8)
    return (q * int(step) + int(offset)).astype(dtype)


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _estimate(movie: np.ndarray, step: int, sample: int = 6) -> int:
    """Compressed size of the movie at ``step``, estimated from ``sample`` evenly spaced frames."""
    idx = np.unique(np.linspace(0, len(movie) - 1, min(sample, len(movie))).round().astype(int))
    lo, hi, _, _ = quantize(movie[idx], step)
    return int(len(_npz_bytes(lo=lo, hi=hi)) * len(movie) / len(idx))


def pack(src: str | os.PathLike, out: str | os.PathLike, *, step: int | str = "auto", max_mib: float = 45.0,
         sequence: str = "01", log=print) -> dict[str, Any]:
    """Pack CTC sequence ``src`` into folder ``out`` (replaced atomically); returns ``pack.json``'s content.

    Raises:
        FileNotFoundError / ValueError: ``src`` missing or not a CTC folder; no step fits ``max_mib``.
    """
    sys.path.insert(0, str(ROOT))
    import tapcore  # noqa: F401
    from tapcore.ctc import load_ctc, resolve_sequence
    from tapcore.utils import environment_info, sha256_array

    src, out = Path(src), Path(out)
    if not src.exists():
        raise FileNotFoundError(f"{src} not found: give the CTC dataset folder (holding 01/ and 01_GT/) with --src")
    t0 = time.time()
    seq = load_ctc(src, sequence)
    root, seq_name = resolve_sequence(src, sequence)
    movie, masks = seq.movie, seq.masks
    limit = int(max_mib * 2**20)
    masks_b = _npz_bytes(masks=masks)
    events_b = seq.events.to_csv(index=False).encode()
    lineage_b = (root / f"{seq_name}_GT" / "TRA" / "man_track.txt").read_bytes()
    fixed = len(masks_b) + len(events_b) + len(lineage_b) + 8192
    if step == "auto":
        candidates = [s for s in STEPS if _estimate(movie, s) + fixed <= 0.95 * limit] or [STEPS[-1]]
        steps = [s for s in STEPS if s >= candidates[0]]
    else:
        steps = [int(step)]
    for s in steps:
        lo, hi, offset, err = quantize(movie, s)
        movie_b = _npz_bytes(lo=lo, hi=hi)
        total = len(movie_b) + fixed
        log(f"step {s}: movie {len(movie_b) / 2**20:.1f} MiB, pack about {total / 2**20:.1f} MiB "
            f"(limit {max_mib} MiB), largest error {err} counts")
        if total <= limit:
            break
    else:
        raise ValueError(f"the pack of {src} does not fit into {max_mib} MiB even at step {steps[-1]}; "
                         "raise --max-mib or pass a larger --step")
    packed = dequantize(lo, hi, s, offset, str(movie.dtype))
    noise = float(np.median(np.abs(np.diff(movie[len(movie) // 2].astype(np.int64), axis=1))) / 0.6745 / np.sqrt(2))
    meta: dict[str, Any] = {
        "format": FORMAT,
        "name": root.name,
        "source": str(root),
        "sequence": seq_name,
        "first_frame": int(seq.first_frame),
        "ctc_meta": seq.meta,
        "movie": {"shape": list(movie.shape), "dtype": str(movie.dtype), "sha256_original": sha256_array(movie),
                  "sha256_packed": sha256_array(packed), "step": int(s), "offset": int(offset),
                  "max_abs_error": int(err), "lossless": bool(err == 0),
                  "noise_std_estimate": round(noise, 2)},
        "masks": {"shape": list(masks.shape), "sha256": sha256_array(masks), "event_pixels": int((masks > 0).sum())},
        "divisions": int((seq.events["role"] == "parent").sum()),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "environment": environment_info(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for name, data in (("movie.npz", movie_b), ("masks.npz", masks_b), ("events.csv", events_b),
                           ("man_track.txt", lineage_b)):
            (tmp / name).write_bytes(data)
        meta["files"] = {name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256_file(tmp / name)}
                         for name in FILES[1:]}
        data_bytes = sum(f["bytes"] for f in meta["files"].values())
        meta["pack_bytes"], meta["pack_mib"] = data_bytes, 0.0
        for _ in range(4):  # pack.json counts itself: repeat until its size stops changing
            text = json.dumps(meta, indent=1)
            total = data_bytes + len(text.encode())
            if total == meta["pack_bytes"]:
                break
            meta["pack_bytes"], meta["pack_mib"] = total, round(total / 2**20, 2)
        (tmp / "pack.json").write_text(json.dumps(meta, indent=1))
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"packed {src} -> {out}: {meta['pack_mib']} MiB, step {s}, {time.time() - t0:.0f} s")
    return meta


def read_pack(folder: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """Read a pack: ``{"movie", "masks", "events" (DataFrame), "meta"}``.

    ``verify`` checks every file's sha256 against ``pack.json`` (a truncated or edited pack raises
    ValueError naming the file and how to rebuild it).
    """
    import pandas as pd

    folder = Path(folder)
    meta_path = folder / "pack.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder} is not a device data pack (no pack.json); make one with "
                                "python scripts/pack_device_data.py")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path} has format {meta.get('format')!r}, expected {FORMAT!r}; "
                         "rebuild it with python scripts/pack_device_data.py")
    if verify:
        for name, info in meta["files"].items():
            path = folder / name
            if not path.is_file() or _sha256_file(path) != info["sha256"]:
                raise ValueError(f"{path} is missing or differs from pack.json (truncated copy?); rebuild the pack "
                                 "with python scripts/pack_device_data.py")
    m = meta["movie"]
    with np.load(folder / "movie.npz", allow_pickle=False) as z:
        movie = dequantize(z["lo"], z["hi"], m["step"], m["offset"], m["dtype"])
    with np.load(folder / "masks.npz", allow_pickle=False) as z:
        masks = z["masks"]
    if list(movie.shape) != m["shape"] or list(masks.shape) != meta["masks"]["shape"]:
        raise ValueError(f"{folder}: arrays do not have the shapes pack.json records; rebuild the pack")
    events = pd.read_csv(folder / "events.csv")
    return {"movie": movie, "masks": masks, "events": events, "meta": meta}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", default=str(DEFAULT_SRC), help="CTC dataset folder (default ../shared/data/hela01)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="pack folder (default .devdata/hela01, git-ignored)")
    p.add_argument("--sequence", default="01")
    p.add_argument("--step", default="auto", help="quantisation step: auto (default: smallest that fits), 1 (lossless), 2, 4, 8")
    p.add_argument("--max-mib", type=float, default=45.0, help="largest pack size (default 45 MiB)")
    args = p.parse_args(argv)
    step: int | str = args.step if args.step == "auto" else int(args.step)
    try:
        meta = pack(args.src, args.out, step=step, max_mib=args.max_mib, sequence=args.sequence,
                    log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except (FileNotFoundError, ValueError) as exc:
        print(f"pack_device_data: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"pack": args.out, "pack_mib": meta["pack_mib"], "step": meta["movie"]["step"],
                      "max_abs_error": meta["movie"]["max_abs_error"], "movie_shape": meta["movie"]["shape"],
                      "divisions": meta["divisions"], "sha256_original": meta["movie"]["sha256_original"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
