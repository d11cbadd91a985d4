"""Cell Tracking Challenge import: divisions from the lineage, masks exactly on the markers."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from tapcore import ctc, io


def _independent_divisions(man_track: Path, first: int, last: int) -> list[tuple[int, int, list[int]]]:
    """(parent, parent's last frame, children) for every division inside [first, last], from the text file."""
    table = np.loadtxt(man_track, dtype=np.int64, ndmin=2)  # (N, 4) L B E P
    out = []
    for label, _b, end, _p in table:
        kids = table[table[:, 3] == label]
        if len(kids) == 2 and (kids[:, 1] == end + 1).all() and end >= first and end + 1 <= last:
            out.append((int(label), int(end), sorted(int(k) for k in kids[:, 0])))
    return out


def _marker_union(tra: Path, frame_number: int, labels: list[int]) -> np.ndarray:
    marker = np.asarray(Image.open(tra / f"man_track{frame_number:03d}.tif"))
    return np.isin(marker, labels)


def _check_masks_on_markers(seq: ctc.CTCSequence, tra: Path, divisions) -> None:
    first = seq.first_frame
    by_frame: dict[int, list[int]] = {}
    for parent, end, kids in divisions:
        by_frame.setdefault(end, []).append(parent)
        by_frame.setdefault(end + 1, []).extend(kids)
    marked = {t for t in range(seq.masks.shape[0]) if seq.masks[t].any()}
    assert marked == {n - first for n in by_frame}
    for n, labels in by_frame.items():
        np.testing.assert_array_equal(seq.masks[n - first] == 1, _marker_union(tra, n, labels), err_msg=f"frame {n}")
    assert set(np.unique(seq.masks).tolist()) <= {0, 1}


@pytest.mark.shared_data
def test_hela01_94_divisions_masks_on_markers(hela01):
    start = time.perf_counter()
    seq = ctc.load_ctc(hela01)
    elapsed = time.perf_counter() - start
    assert seq.movie.shape == (92, 700, 1100) and seq.movie.dtype == np.uint16
    assert seq.first_frame == 0
    expected = _independent_divisions(hela01 / "01_GT/TRA/man_track.txt", 0, 91)
    assert len(expected) == 94
    div = seq.divisions
    assert len(div) == 94
    assert sorted(zip(div.track_id, div.frame)) == sorted((p, e) for p, e, _ in expected)
    assert (seq.events.role == "daughter").sum() == 188
    assert len(set(div.frame)) == 56  # README: 94 divisions in 56 distinct frames
    _check_masks_on_markers(seq, hela01 / "01_GT/TRA", expected)
    # a parent row's centroid lies on its marker
    row = div.iloc[0]
    marker = np.asarray(Image.open(hela01 / f"01_GT/TRA/man_track{int(row.frame):03d}.tif"))
    ys, xs = np.nonzero(marker == row.track_id)
    assert row.y == pytest.approx(ys.mean()) and row.x == pytest.approx(xs.mean()) and row.area == ys.size
    assert elapsed < 20, f"loading hela01 took {elapsed:.1f} s"


@pytest.mark.shared_data
def test_psc01_window_starts_at_150(psc01):
    seq = ctc.load_ctc(psc01)
    assert seq.first_frame == 150 and seq.movie.shape == (101, 576, 720) and seq.movie.dtype == np.uint8
    expected = _independent_divisions(psc01 / "01_GT/TRA/man_track.txt", 150, 250)
    assert len(expected) == 213
    div = seq.divisions
    assert len(div) == 213
    # movie frame indices are 0-based within the window
    assert sorted(zip(div.track_id, div.frame)) == sorted((p, e - 150) for p, e, _ in expected)
    _check_masks_on_markers(seq, psc01 / "01_GT/TRA", expected)


def _write_ctc(root: Path, lineage: str, markers: dict[int, dict[int, tuple[int, int]]], frames: range) -> None:
    """A tiny CTC folder: 24x24 frames, 3x3 square markers at the given (y, x) per frame and label."""
    (root / "01").mkdir(parents=True)
    tra = root / "01_GT" / "TRA"
    tra.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n in frames:
        tifffile.imwrite(root / "01" / f"t{n:03d}.tif", rng.integers(0, 255, (24, 24)).astype(np.uint8))
        lab = np.zeros((24, 24), np.uint16)
        for label, (y, x) in markers.get(n, {}).items():
            lab[y - 1: y + 2, x - 1: x + 2] = label
        tifffile.imwrite(tra / f"man_track{n:03d}.tif", lab)
    (tra / "man_track.txt").write_text(lineage)


def test_tiny_ctc_folder_exact(tmp_path):
    # frames 10..15; track 1 divides into 2 and 3 (1 ends at 12); track 4 has one child 5 (no division);
    # track 6 divides into 7, 8 after the window ends (15) -> not inside
    lineage = "1 10 12 0\n2 13 15 1\n3 13 15 1\n4 10 11 0\n5 12 15 4\n6 10 15 0\n7 16 16 6\n8 16 16 6\n"
    markers = {n: {} for n in range(10, 16)}
    for n in range(10, 13):
        markers[n][1] = (5, 5)
    for n in range(13, 16):
        markers[n][2], markers[n][3] = (3, 5), (8, 5)
    for n in range(10, 16):
        markers[n][6] = (18, 18)
        markers[n][4 if n < 12 else 5] = (12, 12)
    _write_ctc(tmp_path / "ds", lineage, markers, range(10, 16))
    seq = ctc.load_ctc(tmp_path / "ds")
    assert seq.first_frame == 10 and seq.movie.shape == (6, 24, 24)
    assert len(seq.divisions) == 1
    parent = seq.divisions.iloc[0]
    assert (parent.frame, parent.last_frame, parent.y, parent.x, parent.track_id) == (2, 3, 5.0, 5.0, 1)
    daughters = seq.events[seq.events.role == "daughter"]
    assert sorted(zip(daughters.track_id, daughters.frame, daughters.y)) == [(2, 3, 3.0), (3, 3, 8.0)]
    expected = np.zeros((6, 24, 24), np.uint8)
    expected[2, 4:7, 4:7] = 1
    expected[3, 2:5, 4:7] = 1
    expected[3, 7:10, 4:7] = 1
    np.testing.assert_array_equal(seq.masks, expected)
    # the same through read_input, from the dataset folder and from the sequence folder
    for path in (tmp_path / "ds", tmp_path / "ds" / "01"):
        got = io.read_input(path)
        assert got.source == "ctc" and got.meta["divisions"] == 1 and got.meta["first_frame"] == 10
        np.testing.assert_array_equal(got.masks, expected)
    # dilated markers grow the marked region and keep the events
    wide = ctc.load_ctc(tmp_path / "ds", dilate=1)
    assert (wide.masks == 1).sum() > (expected == 1).sum() and (wide.masks[expected == 1] == 1).all()


def test_bad_ctc_folders(tmp_path):
    _write_ctc(tmp_path / "ds", "1 0 2 0\nthis is not a lineage\n", {}, range(0, 3))
    with pytest.raises(ValueError, match="line 2.*not a lineage entry"):
        ctc.load_ctc(tmp_path / "ds")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="not a Cell Tracking Challenge folder"):
        ctc.load_ctc(tmp_path / "plain")
    with pytest.raises(FileNotFoundError):
        ctc.load_ctc(tmp_path / "missing")


def test_cli_import_ctc(tmp_path, capsys):
    import pandas as pd

    from tapcore.cli import main

    lineage = "1 0 1 0\n2 2 3 1\n3 2 3 1\n"
    markers = {0: {1: (10, 10)}, 1: {1: (10, 11)}, 2: {2: (6, 11), 3: (15, 11)}, 3: {2: (5, 11), 3: (16, 11)}}
    _write_ctc(tmp_path / "ds", lineage, markers, range(0, 4))
    out = tmp_path / "imported"
    assert main(["import-ctc", str(tmp_path / "ds"), "--out", str(out)]) == 0
    assert "1 divisions" in capsys.readouterr().out
    seq = ctc.load_ctc(tmp_path / "ds")
    np.testing.assert_array_equal(io.read_movie(out / "movie.tif"), seq.movie)
    np.testing.assert_array_equal(io.read_masks(out / "masks.tif"), seq.masks)
    events = pd.read_csv(out / "events.csv")
    assert events.role.tolist() == ["parent", "daughter", "daughter"] and events.frame.tolist() == [1, 2, 2]
    assert main(["import-ctc", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    # the lineage as truth for event evaluation: the imported table's parent row matches it, and its
    # daughter rows repeat the same division (false alarms unless duplicates are ignored)
    from tapcore import evaluate

    truth = evaluate.events_from_ctc(tmp_path / "ds")
    assert truth[["frame", "last_frame", "y", "x"]].values.tolist() == [[1, 2, 10.0, 11.0]]
    assert main(["evaluate-events", str(out / "events.csv"), "--ctc", str(tmp_path / "ds")]) == 0
    assert "TP 1, false alarms 2, misses 0" in capsys.readouterr().out
    assert main(["evaluate-events", str(out / "events.csv"), "--ctc", str(tmp_path / "ds"),
                 "--duplicates", "ignore"]) == 0
    assert "TP 1, false alarms 0, misses 0, duplicates ignored 2" in capsys.readouterr().out


def test_multipolar_division_is_a_division_and_one_daughter_is_reported(tmp_path, capsys):
    # track 1 ends at frame 1 and has three daughters 2, 3, 4 (multipolar mitosis);
    # track 5 ends at frame 1 and continues as its single child 6 (re-labelled, not a division)
    lineage = "1 0 1 0\n2 2 3 1\n3 2 3 1\n4 2 3 1\n5 0 1 0\n6 2 3 5\n"
    markers = {n: {1: (5, 5), 5: (18, 18)} for n in (0, 1)}
    for n in (2, 3):
        markers[n] = {2: (3, 4), 3: (8, 4), 4: (5, 10), 6: (18, 18)}
    _write_ctc(tmp_path / "ds", lineage, markers, range(0, 4))
    seq = ctc.load_ctc(tmp_path / "ds")
    assert len(seq.divisions) == 1 and seq.meta["multipolar_divisions"] == 1
    daughters = seq.events[seq.events.role == "daughter"]
    assert sorted(daughters.track_id) == [2, 3, 4] and set(daughters.parent_id) == {1}
    expected = np.zeros((4, 24, 24), np.uint8)
    expected[1, 4:7, 4:7] = 1
    for y, x in ((3, 4), (8, 4), (5, 10)):
        expected[2, y - 1: y + 2, x - 1: x + 2] = 1
    np.testing.assert_array_equal(seq.masks, expected)
    assert seq.meta["skipped"] == [
        {"track_id": 5, "children": [6], "reason": "one child (track 6): a re-labelled cell, not a division"}]
    assert ctc.skipped_summary(seq.meta["skipped"]) == (
        "1 parent track(s) of the lineage are not counted as divisions (track 5: one child (track 6): a re-labelled "
        "cell, not a division)")
    got = io.read_input(tmp_path / "ds")
    assert got.meta["skipped"][0]["track_id"] == 5 and ctc.skipped_summary(seq.meta["skipped"]) in got.warnings

    from tapcore.cli import main

    assert main(["import-ctc", str(tmp_path / "ds"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "1 of the divisions have three or more daughters (multipolar)" in out
    assert "note: 1 parent track(s) of the lineage are not counted as divisions (track 5: one child (track 6)" in out


def test_ctc_like_folder_with_png_frames_and_markers(tmp_path):
    root = tmp_path / "png"
    (root / "01").mkdir(parents=True)
    tra = root / "01_GT" / "TRA"
    tra.mkdir(parents=True)
    rng = np.random.default_rng(3)
    movie = rng.integers(0, 255, (3, 24, 24)).astype(np.uint8)
    markers = {0: {1: (6, 6)}, 1: {2: (4, 6), 3: (10, 6)}, 2: {2: (4, 7), 3: (11, 6)}}
    for n in range(3):
        Image.fromarray(movie[n]).save(root / "01" / f"t{n:03d}.png")
        lab = np.zeros((24, 24), np.uint16)
        for label, (y, x) in markers[n].items():
            lab[y - 1: y + 2, x - 1: x + 2] = label
        Image.fromarray(lab).save(tra / f"man_track{n:03d}.png")
    (tra / "man_track.txt").write_text("1 0 0 0\n2 1 2 1\n3 1 2 1\n")
    got = io.read_input(root)
    assert got.source == "ctc" and got.meta["divisions"] == 1
    np.testing.assert_array_equal(got.movie, movie)
    assert got.masks[0, 5:8, 5:8].all() and got.masks[1, 3:6, 5:8].all() and got.masks[1, 9:12, 5:8].all()
    assert int(got.masks.sum()) == 27
