"""Cell Tracking Challenge (CTC) sequences -> movie, division masks and event table.

Layout of a CTC dataset folder (``<root>``) and sequence ``NN``::

    <root>/NN/tXXX.tif                     raw frames (XXX = frame number, 3 or 4 digits)
    <root>/NN_GT/TRA/man_trackXXX.tif      marker label images (label = track id)
    <root>/NN_GT/TRA/man_track.txt         lineage, one track per line: "L B E P"
                                           (label, first frame, last frame, parent; 0 = no parent)

Frame numbers may start above 0 (PhC-C2DL-PSC's annotated window starts at frame 150): the movie
holds the frames present in ``NN/`` in order, and ``first_frame`` is the number of its frame 0.

Frames and marker images may be TIFF (``tXXX.tif``, ``man_trackXXX.tif``) or PNG (``tXXX.png``,
``man_trackXXX.png``), as some CTC-like exports write them.

A **division** is a parent track with two or more children, each starting the frame after the
parent ends: two daughters is the usual mitosis, three or more a multipolar mitosis (frequent in
HeLa). A parent with a single child (the tracker re-labelled a cell without dividing) or whose
children start later is not a division: it is *skipped* and reported, with its track id, in
``meta["skipped"]`` and the log. A division is inside the movie when the parent's last frame and
the children's first frame are both in it. For each such division the mask movie gets value ``1``
on the parent's marker pixels in its last frame and on each daughter's marker pixels in its first
frame (CTC markers are markers, not full segmentations). The lineage has no death annotations, so
value 2 never occurs.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from tapcore import io

logger = logging.getLogger(__name__)

#: Columns of :attr:`CTCSequence.events`.
EVENT_COLUMNS = ["frame", "last_frame", "y", "x", "kind", "track_id", "role", "parent_id", "division_id", "area"]
_FRAME_RE = re.compile(r"^t(\d+)\.(?:tiff?|png)$", re.IGNORECASE)
_MARKER_RE = re.compile(r"^man_track(\d+)\.(?:tiff?|png)$", re.IGNORECASE)


@dataclass
class CTCSequence:
    """A loaded CTC sequence.

    Attributes:
        movie: ``(T, Y, X)`` raw frames in their native dtype.
        masks: ``uint8 (T, Y, X)``: 1 on the markers of dividing parents (last frame) and their
            daughters (first frame), else 0.
        events: rows with columns :data:`EVENT_COLUMNS`: for every division inside the movie one
            ``role == "parent"`` row (``frame`` = the parent's last frame as a 0-based movie index,
            ``last_frame`` = the daughters' first frame, ``y``, ``x`` = the parent marker's centroid
            in that frame) and one ``role == "daughter"`` row per daughter (two, or more for a
            multipolar division) (``frame`` = ``last_frame`` = the
            daughter's first frame, centroid of its marker). ``kind`` is ``"division"``;
            ``track_id`` the CTC label; ``parent_id`` the parent's label (0 on parent rows);
            ``division_id`` numbers the divisions; ``area`` is the marker's pixel count.
        first_frame: the CTC frame number of movie frame 0.
        tracks: the lineage table (columns ``L, B, E, P``, CTC frame numbers).
        meta: JSON-able summary (root, sequence, counts).
    """

    movie: np.ndarray
    masks: np.ndarray
    events: pd.DataFrame
    first_frame: int
    tracks: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["L", "B", "E", "P"]))
    meta: dict = field(default_factory=dict)

    @property
    def divisions(self) -> pd.DataFrame:
        """One row per division (the parent rows of :attr:`events`)."""
        return self.events[self.events["role"] == "parent"].reset_index(drop=True)


def read_lineage(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``man_track.txt`` as a DataFrame with integer columns ``L, B, E, P``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; a CTC ground-truth folder holds TRA/man_track.txt")
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4 or not all(re.fullmatch(r"\d+", p) for p in parts):
            raise ValueError(
                f"{path}, line {i}: {line.strip()!r} is not a lineage entry; each line must be four whole numbers "
                "'L B E P' (label, first frame, last frame, parent label or 0)"
            )
        rows.append([int(p) for p in parts])
    tracks = pd.DataFrame(rows, columns=["L", "B", "E", "P"], dtype=np.int64)
    if tracks.empty:
        raise ValueError(f"{path} is empty; it must list one track per line as 'L B E P'")
    bad = tracks[tracks["E"] < tracks["B"]]
    if len(bad):
        raise ValueError(f"{path}: track {int(bad.iloc[0]['L'])} ends before it begins (B > E)")
    if tracks["L"].duplicated().any():
        raise ValueError(f"{path}: track label {int(tracks[tracks['L'].duplicated()].iloc[0]['L'])} appears twice")
    return tracks


def lineage_divisions(tracks: pd.DataFrame, skipped: list[dict] | None = None) -> pd.DataFrame:
    """Divisions encoded in a lineage: parents with two or more children starting right after them.

    Args:
        tracks: the lineage (columns ``L, B, E, P``).
        skipped: when given, one dict ``{"track_id", "children", "reason"}`` is appended for every
            parent that is not counted as a division (one child, children starting later, no track
            of its own).

    Returns:
        DataFrame with columns ``parent, parent_end, child1, child2, child_start, children``
        (CTC frame numbers; ``children`` is the tuple of all daughter labels, sorted; ``child1`` and
        ``child2`` are its first two).
    """
    ends = dict(zip(tracks["L"], tracks["E"]))
    rows = []
    notes: list[dict] = []
    for parent, kids in tracks[tracks["P"] > 0].groupby("P"):
        parent = int(parent)
        labels = tuple(sorted(int(k) for k in kids["L"]))
        if parent not in ends:
            notes.append({"track_id": parent, "children": list(labels),
                          "reason": "the lineage names it as a parent but has no track of its own"})
            continue
        end = int(ends[parent])
        if len(kids) == 1:
            notes.append({"track_id": parent, "children": list(labels),
                          "reason": f"one child (track {labels[0]}): a re-labelled cell, not a division"})
            continue
        if not (kids["B"] == end + 1).all():
            notes.append({"track_id": parent, "children": list(labels),
                          "reason": f"its children do not all start the frame after it ends (frame {end + 1})"})
            continue
        if len(labels) > 2:
            logger.info("track %d divides into %d daughters (multipolar division)", parent, len(labels))
        rows.append({"parent": parent, "parent_end": end, "child1": labels[0], "child2": labels[1],
                     "child_start": end + 1, "children": labels})
    for note in notes:
        logger.warning("lineage: track %d skipped: %s", note["track_id"], note["reason"])
    if skipped is not None:
        skipped.extend(notes)
    return pd.DataFrame(rows, columns=["parent", "parent_end", "child1", "child2", "child_start", "children"])


def skipped_summary(skipped: list[dict], limit: int = 5) -> str:
    """One sentence listing the lineage parents not counted as divisions, with their track ids."""
    shown = "; ".join(f"track {d['track_id']}: {d['reason']}" for d in skipped[:limit])
    more = f"; and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return f"{len(skipped)} parent track(s) of the lineage are not counted as divisions ({shown}{more})"


def _numbered_files(folder: Path, pattern: re.Pattern) -> dict[int, Path]:
    files = {}
    for p in folder.iterdir():
        m = pattern.match(p.name)
        if m:
            n = int(m.group(1))
            if n in files:
                raise ValueError(f"{folder} holds two files for frame {n}: {files[n].name} and {p.name}")
            files[n] = p
    return files


def resolve_sequence(folder: str | os.PathLike, sequence: str | None = "01") -> tuple[Path, str]:
    """``(root, sequence)`` from a CTC dataset folder or one of its sequence folders."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"{folder} does not exist; expected a Cell Tracking Challenge folder")
    found = io.find_ctc_sequence(folder) if sequence is None else None
    if found is not None:
        return found
    if sequence is not None and (folder / sequence).is_dir():
        return folder, sequence
    if (folder.parent / f"{folder.name}_GT").is_dir():
        return folder.parent, folder.name
    raise ValueError(
        f"{folder} is not a Cell Tracking Challenge folder: expected {folder}/{sequence or 'NN'}/tXXX.tif frames and "
        f"{folder}/{sequence or 'NN'}_GT/TRA/man_track.txt"
    )


def load_ctc(folder: str | os.PathLike, sequence: str | None = "01", *, dilate: int = 0) -> CTCSequence:
    """Load a CTC sequence: movie, division masks and event table (see the module docstring).

    Args:
        folder: the dataset folder (holding ``01/`` and ``01_GT/``) or the sequence folder itself.
        sequence: the sequence name (``"01"``); None picks the only annotated sequence.
        dilate: grow each marked marker by this many pixels (disk) in the masks, for datasets whose
            markers are much smaller than the nuclei (PhC-C2DL-PSC: 3 x 3 px); 0 keeps the exact
            markers. The event table's centroids and areas always describe the markers themselves.
    """
    if dilate < 0:
        raise ValueError(f"dilate must be a number of pixels >= 0, got {dilate}")
    root, seq = resolve_sequence(folder, sequence)
    img_dir, tra_dir = root / seq, root / f"{seq}_GT" / "TRA"
    if not img_dir.is_dir():
        raise FileNotFoundError(f"{img_dir} not found; a CTC sequence keeps its frames in {seq}/tXXX.tif")
    tracks = read_lineage(tra_dir / "man_track.txt")
    frame_files = _numbered_files(img_dir, _FRAME_RE)
    if len(frame_files) < 2:
        raise ValueError(f"{img_dir} holds {len(frame_files)} frame(s) named tXXX.tif or tXXX.png; a movie needs at "
                         "least two")
    numbers = sorted(frame_files)
    first, last = numbers[0], numbers[-1]
    if numbers != list(range(first, last + 1)):
        missing = sorted(set(range(first, last + 1)) - set(numbers))[:5]
        raise ValueError(f"{img_dir}: frames {missing} are missing between t{first} and t{last}; CTC frames are consecutive")

    frames = []
    for n in numbers:
        frame = io.read_stack(frame_files[n])
        if frame.ndim != 2:
            raise ValueError(f"{frame_files[n]} is not a single 2-D frame (shape {frame.shape})")
        if frames and (frame.shape != frames[0].shape or frame.dtype != frames[0].dtype):
            raise ValueError(f"{frame_files[n]} is {frame.shape} {frame.dtype}, unlike frame t{first} "
                             f"{frames[0].shape} {frames[0].dtype}")
        frames.append(frame)
    movie = np.stack(frames)  # (T, Y, X)
    T = movie.shape[0]
    masks = np.zeros(movie.shape, np.uint8)

    skipped: list[dict] = []
    divs = lineage_divisions(tracks, skipped)
    inside = divs[(divs["parent_end"] >= first) & (divs["child_start"] <= last)].reset_index(drop=True)
    logger.debug("%s: %d divisions in the lineage, %d inside frames %d-%d", root, len(divs), len(inside), first, last)

    marker_files = _numbered_files(tra_dir, _MARKER_RE)
    needed: dict[int, list[int]] = {}
    for d in inside.itertuples():
        needed.setdefault(d.parent_end, []).append(d.parent)
        needed.setdefault(d.child_start, []).extend(d.children)
    pixels: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for n, labels in sorted(needed.items()):
        if n not in marker_files:
            raise ValueError(f"{tra_dir} has no marker image man_track{n:03d}.tif (or .png) for frame {n}, which the "
                             "lineage needs")
        marker = io.read_stack(marker_files[n])
        if marker.shape != movie.shape[1:]:
            raise ValueError(f"{marker_files[n]} is {marker.shape} but the frames are {movie.shape[1:]}")
        index = ndimage.value_indices(marker, ignore_value=0)
        for label in labels:
            yx = index.get(label)
            if yx is None:
                logger.warning("track %d has no marker in frame %d (%s)", label, n, marker_files[n].name)
                yx = (np.zeros(0, np.intp), np.zeros(0, np.intp))
            pixels[(n, label)] = yx
            masks[n - first][yx] = 1
    if dilate > 0:
        yy, xx = np.mgrid[-dilate: dilate + 1, -dilate: dilate + 1]
        disk = yy**2 + xx**2 <= dilate**2
        for n in needed:
            masks[n - first] = ndimage.binary_dilation(masks[n - first] > 0, structure=disk).astype(np.uint8)

    rows = []
    for i, d in enumerate(inside.itertuples()):
        members = [(d.parent, d.parent_end, "parent", 0)] + [(c, d.child_start, "daughter", d.parent)
                                                              for c in d.children]
        for label, n, role, parent in members:
            ys, xs = pixels[(n, label)]
            rows.append({
                "frame": n - first,
                "last_frame": (d.child_start - first) if role == "parent" else n - first,
                "y": float(ys.mean()) if ys.size else float("nan"),
                "x": float(xs.mean()) if xs.size else float("nan"),
                "kind": "division", "track_id": int(label), "role": role, "parent_id": int(parent),
                "division_id": i, "area": int(ys.size),
            })
    events = pd.DataFrame(rows, columns=EVENT_COLUMNS)
    meta = {
        "root": str(root), "sequence": seq, "first_frame": first, "last_frame": last, "frames": T,
        "tracks": len(tracks), "divisions_in_lineage": len(divs), "divisions": len(inside), "dilate": int(dilate),
        "multipolar_divisions": int(sum(len(c) > 2 for c in inside["children"])),
        "skipped": skipped,
    }
    return CTCSequence(movie=movie, masks=masks, events=events, first_frame=first, tracks=tracks, meta=meta)
