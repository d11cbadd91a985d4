"""Peak memory of saving an uploaded movie through the same code path the Data page uses.

For each size, a uint16 TIFF of 2048 x 2048 frames is generated frame by frame (never whole in
memory), then saved with ``Workspace.save_upload`` in a fresh process, in two ways:

- ``bytes``: the file's bytes in a ``BytesIO`` first, as Streamlit hands an upload to the page
  (``UploadedFile`` is a ``BytesIO`` over the bytes Streamlit keeps in memory);
- ``file``: an open file on disk (what a framework that spools uploads to disk would hand over).

Peak resident memory is ``ru_maxrss`` of that process (anonymous memory plus mapped file pages);
``peak_anon`` is the largest ``RssAnon`` (memory that only this process holds; mapped file pages are
page cache the kernel can drop), sampled every 20 ms. ``baseline`` is the RSS after the imports,
``upload_held`` the RSS with the upload's bytes in memory, before saving. Modes ending in ``-copy``
decode the movie into memory instead of mapping the staged file (what the code did before).
Prints one JSON object.

    python bench/upload_memory.py --mb 256 1024 2048 [--modes bytes file bytes-copy file-copy] [--dir /tmp/x]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FRAME = (2048, 2048)  # uint16: 8 MiB per frame


def _rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


class _AnonPeak:
    """Samples RssAnon in a thread; ``stop()`` returns the largest value seen (MB)."""

    def __init__(self, every: float = 0.02):
        import threading

        self.peak, self._stop, self._every = _rss_mb("RssAnon"), False, every
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, _rss_mb("RssAnon"))
            time.sleep(self._every)

    def stop(self) -> float:
        self._stop = True
        self._thread.join()
        return max(self.peak, _rss_mb("RssAnon"))


def make_tiff(path: Path, mb: int) -> int:
    import numpy as np
    import tifffile

    frames = max(2, mb * 2**20 // (FRAME[0] * FRAME[1] * 2))
    rng = np.random.default_rng(0)
    base = rng.integers(100, 4000, FRAME, dtype=np.uint16)

    def gen():
        for t in range(frames):
            yield np.roll(base, t, axis=1)

    tifffile.imwrite(path, gen(), shape=(frames, *FRAME), dtype=np.uint16, photometric="minisblack",
                     metadata={"axes": "TYX"})
    return frames


def child(path: str, mode: str, home: str) -> None:
    import io

    import torch  # noqa: F401  (imported by the checks anyway: part of the baseline, not of the upload)

    from tapcore import io as tio
    from tapcore.workspace import Workspace

    source = mode.removesuffix("-copy")
    if mode.endswith("-copy"):  # for comparison: decode the movie into memory instead of mapping the file
        real = tio.read_movie
        tio.read_movie = lambda *a, **k: real(*a, **{**k, "mmap": False})
    ws = Workspace(home)
    baseline = _rss_mb()
    anon_baseline = _rss_mb("RssAnon")
    sampler = _AnonPeak()
    t0 = time.time()
    if source == "bytes":
        with open(path, "rb") as fh:
            src = io.BytesIO(fh.read())
    else:
        src = open(path, "rb")
    held = _rss_mb()
    info = ws.save_upload(src, name=Path(path).name, max_bytes=1 << 40)
    elapsed = time.time() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    anon = sampler.stop()
    print(json.dumps({"mode": mode, "baseline_mb": round(baseline), "upload_held_mb": round(held),
                      "peak_mb": round(peak), "peak_above_baseline_mb": round(peak - baseline),
                      "peak_anon_above_baseline_mb": round(anon - anon_baseline),
                      "seconds": round(elapsed, 1), "shape": list(info.shape)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, nargs="+", default=[256, 1024, 2048])
    ap.add_argument("--modes", nargs="+", default=["bytes", "file"])
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temporary one, removed at the end)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    scratch = Path(args.dir or tempfile.mkdtemp(prefix="tapcore-upload-mem-"))
    scratch.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for mb in args.mb:
            movie = scratch / f"movie-{mb}mb.tif"
            frames = make_tiff(movie, mb)
            for mode in args.modes:
                home = scratch / f"ws-{mb}-{mode}"
                out = subprocess.run([sys.executable, __file__, "--child", str(movie), mode, str(home)],
                                     capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
                if out.returncode != 0:
                    raise SystemExit(out.stderr[-3000:])
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row.update({"file_mb": round(movie.stat().st_size / 2**20), "frames": frames})
                results.append(row)
                print(json.dumps(row), file=sys.stderr)
                shutil.rmtree(home, ignore_errors=True)
            movie.unlink()
    finally:
        if args.dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps({"frame": list(FRAME), "dtype": "uint16", "results": results}, indent=1))


if __name__ == "__main__":
    main()
