"""Every class of real-world input (issue 13): each test writes its own file, and every message a
user would see is quoted here. ``INPUT_CLASSES`` lists them with the expected outcome; the counts in
docs/results.md come from it (``python -m pytest tests/test_inputs.py -q -k classes_table -s``).
"""

from __future__ import annotations

import io as pyio
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tapcore import io
from tapcore.workspace import Workspace

# (input class, outcome): "accepted", "accepted with a warning", "refused with a clear message"
INPUT_CLASSES = [
    ("ImageJ hyperstack with channels, no channel given", "refused with a clear message"),
    ("ImageJ hyperstack with channels and z-planes, channel and plane given", "accepted"),
    ("OME-TIFF with z-planes, plane given", "accepted"),
    ("OME-TIFF with C and Z before T (CZTYX)", "accepted"),
    ("time axis after Y and X in the metadata (YXT)", "accepted"),
    ("two unlabelled non-spatial axes (QQYX)", "refused with a clear message"),
    ("3-frame stack written as planar samples (tifffile default)", "accepted with a warning"),
    ("4-frame stack written as planar samples (tifffile default)", "accepted with a warning"),
    ("interleaved RGB movie", "refused with a clear message"),
    ("mask stack with a different frame count", "refused with a clear message"),
    ("3-frame mask stack written as planar samples", "accepted with a warning"),
    ("some NaN / infinite pixels", "accepted with a warning"),
    ("a frame with no finite pixel", "refused with a clear message"),
    ("boolean movie", "accepted with a warning"),
    ("frames smaller than the training patch", "accepted with a warning"),
    ("a single frame", "refused with a clear message"),
    ("a constant movie", "refused with a clear message"),
    ("header declaring an enormous image", "refused with a clear message"),
    ("frame folder whose total is above the limit", "refused with a clear message"),
    ("upload larger than the upload limit", "refused with a clear message"),
    ("masks without events, head job submitted", "refused with a clear message"),
    ("masks with too few events, head job submitted", "refused with a clear message"),
    ("file names with unicode, spaces and ../", "accepted"),
    ("multi-channel upload, channel picked with a preview", "accepted"),
    ("identical re-upload", "accepted"),
    ("CTC parent with three daughters", "accepted"),
    ("CTC parent with one daughter", "accepted with a warning"),
    ("CTC-like folder with PNG frames", "accepted"),
]


def _movie(t=5, y=20, x=24, dtype=np.uint16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(1, 1000, size=(t, y, x)).astype(dtype)


def _bytes(write) -> bytes:
    buf = pyio.BytesIO()
    write(buf)
    return buf.getvalue()


def test_classes_table_counts(capsys):
    outcomes = [o for _, o in INPUT_CLASSES]
    assert set(outcomes) <= {"accepted", "accepted with a warning", "refused with a clear message"}
    counts = {o: outcomes.count(o) for o in sorted(set(outcomes))}
    print(json.dumps({"tried": len(INPUT_CLASSES), **counts}))
    assert len(INPUT_CLASSES) == sum(counts.values())


# -- channels, planes and axis order ----------------------------------------------------------------
def test_imagej_hyperstack_channel_and_plane(tmp_path):
    data = np.stack([np.stack([_movie(seed=10 * z + c) for c in range(3)], 1) for z in range(2)], 1)  # TZCYX
    tifffile.imwrite(tmp_path / "h.tif", data, imagej=True, metadata={"axes": "TZCYX"})
    with pytest.raises(ValueError) as err:
        io.read_movie(tmp_path / "h.tif")
    assert str(err.value) == (
        f"{tmp_path / 'h.tif'} has 3 channels (axes TZCYX, shape (5, 2, 3, 20, 24)); choose one with channel=0..2 "
        "(CLI: --channel N; on the Data page: pick the channel)")
    with pytest.raises(ValueError, match=r"has 2 z-planes \(axes TZCYX, shape \(5, 2, 20, 24\)\); choose one with "
                                         r"plane=0\.\.1"):
        io.read_movie(tmp_path / "h.tif", channel=1)
    np.testing.assert_array_equal(io.read_movie(tmp_path / "h.tif", channel=2, plane=1), data[:, 1, 2])
    layout = io.describe_file(tmp_path / "h.tif")
    assert (layout.channels, layout.planes, layout.needs_choice, layout.frames_if_picked()) == (3, 2, True, 5)


def test_cli_channel_and_plane(tmp_path, capsys):
    from tapcore.cli import main

    data = np.stack([_movie(seed=1), _movie(seed=2)], 1)  # TCYX
    tifffile.imwrite(tmp_path / "c.tif", data, imagej=True, metadata={"axes": "TCYX"})
    assert main(["info", str(tmp_path / "c.tif")]) == 2
    assert "has 2 channels" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "c.tif"), "--channel", "1", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["frames"], info["min"], info["max"]) == (5, float(data[:, 1].min()), float(data[:, 1].max()))


def test_ome_z_and_channels_before_time_are_reordered(tmp_path):
    data = np.stack([np.stack([_movie(seed=10 * c + z) for z in range(2)]) for c in range(3)])  # C, Z, T, Y, X
    tifffile.imwrite(tmp_path / "o.ome.tif", data, ome=True, metadata={"axes": "CZTYX"})
    assert io.describe_file(tmp_path / "o.ome.tif").axes == "CZTYX"
    movie = io.read_movie(tmp_path / "o.ome.tif", channel=2, plane=1)
    assert movie.shape == (5, 20, 24)
    np.testing.assert_array_equal(movie, data[2, 1])
    np.testing.assert_array_equal(io.read_frame(tmp_path / "o.ome.tif", 3, channel=2, plane=1), data[2, 1, 3])


def test_time_axis_after_y_and_x_is_moved_first():
    movie = _movie()
    yxt = np.ascontiguousarray(np.moveaxis(movie, 0, -1))  # (Y, X, T) as declared by the metadata
    out = io._select_axes(yxt, "YXT", Path("m.tif"), None, None)
    assert out.shape == (5, 20, 24) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, movie)


def test_unlabelled_axes_are_refused_with_the_reason(tmp_path):
    data = np.stack([_movie(seed=1), _movie(seed=2)])  # (2, 5, Y, X), axes unknown
    tifffile.imwrite(tmp_path / "q.tif", data, photometric="minisblack", metadata={"axes": "QQYX"})
    with pytest.raises(ValueError) as err:
        io.read_movie(tmp_path / "q.tif")
    assert str(err.value) == (
        f"{tmp_path / 'q.tif'} has 2 non-spatial axes: Q (unlabelled, 2), Q (unlabelled, 5) (axes 'QQYX', shape "
        "(2, 5, 20, 24)); its metadata does not say which one is time, so the frames cannot be told apart; re-save "
        "it with labelled axes (ImageJ: Image > Hyperstacks > Re-order Hyperstack) or as one plain multi-page TIFF "
        "per channel and position")


# -- small leading dimensions are frames, not colour ------------------------------------------------
@pytest.mark.parametrize("frames", [3, 4])
def test_three_or_four_frames_are_not_colour(tmp_path, frames):
    movie = _movie(t=frames, dtype=np.uint8)
    with pytest.warns(DeprecationWarning):  # tifffile itself stores this as planar RGB(A)
        tifffile.imwrite(tmp_path / "m.tif", movie)
    with tifffile.TiffFile(tmp_path / "m.tif") as tif:
        assert tif.series[0].axes == "SYX"  # what the file's tags say
    warnings: list[str] = []
    out = io.read_movie(tmp_path / "m.tif", warnings=warnings)
    np.testing.assert_array_equal(out, movie)
    assert ("its frames are stored as planar colour samples without colour metadata (as tifffile writes an array of "
            "shape (n, Y, X)); read as frames") in warnings


def test_interleaved_rgb_is_still_colour(tmp_path):
    tifffile.imwrite(tmp_path / "rgb.tif", np.ones((3, 8, 8, 3), np.uint8), photometric="rgb")
    with pytest.raises(ValueError, match=r"is an RGB/colour image \(3 samples per pixel\); RGB/colour images are not "
                                         r"supported; export a single grayscale channel"):
        io.read_movie(tmp_path / "rgb.tif")


def test_mask_frame_count_mismatch_and_three_frame_masks(tmp_path):
    movie = _movie(t=4, dtype=np.uint8)
    masks3 = np.zeros((3, 20, 24), np.uint8)
    masks3[1, 2:5, 2:5] = 1
    with pytest.warns(DeprecationWarning):
        tifffile.imwrite(tmp_path / "k3.tif", masks3)
    with pytest.raises(ValueError) as err:
        io.read_masks(tmp_path / "k3.tif", movie.shape)
    assert str(err.value) == (f"{tmp_path / 'k3.tif'}: masks have 3 frames but the movie has 4; they need one mask "
                              "frame per movie frame")
    np.testing.assert_array_equal(io.read_masks(tmp_path / "k3.tif", (3, 20, 24)), masks3)


# -- pixel content --------------------------------------------------------------------------------
def test_nan_and_infinite_pixels(tmp_path):
    movie = _movie().astype(np.float32)
    movie[1, 0, :4] = np.nan
    movie[2, 5, 5] = np.inf
    tifffile.imwrite(tmp_path / "nan.tif", movie, photometric="minisblack")
    warnings: list[str] = []
    out = io.read_movie(tmp_path / "nan.tif", warnings=warnings)
    assert out.shape == movie.shape
    assert "5 pixels (0.21 %) are NaN or infinite; they count as 0 (background) after normalisation" in warnings
    assert np.isfinite(io.normalize_movie(out)).all()
    movie[3] = np.nan
    tifffile.imwrite(tmp_path / "nanframe.tif", movie, photometric="minisblack")
    with pytest.raises(ValueError) as err:
        io.read_movie(tmp_path / "nanframe.tif")
    assert str(err.value) == (f"{tmp_path / 'nanframe.tif'}: frame(s) 3 (1 of 5, numbered from 0) hold no finite pixel "
                              "(all NaN or infinite); remove those frames or re-export the movie")


def test_boolean_movie_warns(tmp_path):
    movie = _movie() > 500
    tifffile.imwrite(tmp_path / "b.tif", movie, photometric="minisblack")
    warnings: list[str] = []
    out = io.read_movie(tmp_path / "b.tif", warnings=warnings)
    assert out.dtype == np.uint8 and set(np.unique(out).tolist()) == {0, 1}
    assert ("its pixels are true/false (1 bit), read as 0/1: is this a mask rather than a microscope image?"
            in warnings)


def test_frames_smaller_than_the_training_patch_warn(tmp_path):
    io.write_tiff(tmp_path / "s.tif", _movie(y=40, x=64))
    got = io.read_input(tmp_path / "s.tif")
    assert got.warnings == [
        "frames are 40 x 64 px, smaller than the 96 x 96 px patch TAP pretraining uses by default; pretrain with a "
        "patch of at most 40 px (Pretrain page: patch size; CLI: --patch)",
        "frames are 40 x 64 px, smaller than the 48 x 48 px crops of the event head; train it with crops of at most "
        "40 px (--crop)",
    ]
    assert got.meta["warnings"] == got.warnings
    io.write_tiff(tmp_path / "big.tif", _movie(y=100, x=100))
    assert io.read_input(tmp_path / "big.tif").warnings == []


def test_single_frame_and_constant_movie(tmp_path):
    tifffile.imwrite(tmp_path / "one.tif", _movie(t=1)[0])
    with pytest.raises(ValueError) as err:
        io.read_movie(tmp_path / "one.tif")
    assert str(err.value) == (f"{tmp_path / 'one.tif'} is a single 2-D image (20 x 24, one frame), not a movie; a "
                              f"movie needs at least two frames; accepted: {io.ACCEPTED_MOVIES}")
    io.write_tiff(tmp_path / "c.tif", np.full((4, 20, 24), 7, np.uint16))
    with pytest.raises(ValueError) as err:
        io.read_movie(tmp_path / "c.tif")
    assert str(err.value) == (f"{tmp_path / 'c.tif'} is constant: every pixel of all 4 frames has the value 7, so it "
                              "holds no image; check the export (an empty acquisition or the wrong channel?)")


# -- sizes ----------------------------------------------------------------------------------------
def test_enormous_declared_image_is_refused_without_allocating_it(tmp_path):
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, np.ones((2, 8, 8), np.uint16), photometric="minisblack")
    with tifffile.TiffFile(path, mode="r+b") as tif:  # the header now claims 2 x 200000 x 200000 px
        for page in tif.pages:
            page.tags["ImageWidth"].overwrite(200_000)
            page.tags["ImageLength"].overwrite(200_000)
    assert path.stat().st_size < 10_000
    tracemalloc.start()
    try:
        for reader in (io.read_movie, io.describe_file):
            with pytest.raises(ValueError) as err:
                reader(path)
            assert str(err.value) == (
                f"{path} declares an image of 2 x 200000 x 200000 uint16 pixels = 149.0 GB in memory, above the limit "
                "of 16.0 GB (TAPCORE_MAX_MOVIE_GB); crop or bin the movie, or raise the limit if this computer has "
                "the memory")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"{peak / 2**20:.1f} MB allocated while refusing"


def test_frame_folder_total_above_the_limit(tmp_path, monkeypatch):
    monkeypatch.setenv("TAPCORE_MAX_MOVIE_GB", str(3 * 20 * 24 * 2 / 2**30))  # room for 3 frames
    for i, frame in enumerate(_movie(t=4)):
        tifffile.imwrite(tmp_path / f"t{i}.tif", frame)
    with pytest.raises(ValueError, match=r"holds an image of 4 x 20 x 24 uint16 pixels = 3\.8 KB in memory, above "
                                         r"the limit of 2\.8 KB \(TAPCORE_MAX_MOVIE_GB\)"):
        io.read_movie(tmp_path)
    monkeypatch.setenv("TAPCORE_MAX_MOVIE_GB", "1")
    assert io.read_movie(tmp_path).shape == (4, 20, 24)


def test_upload_above_the_limit_is_refused_and_nothing_is_kept(tmp_path):
    ws = Workspace(tmp_path / "ws")
    data = _bytes(lambda b: tifffile.imwrite(b, _movie(), photometric="minisblack"))
    with pytest.raises(ValueError) as err:
        ws.save_upload(pyio.BytesIO(data), name="cells.tif", max_bytes=1024)
    assert str(err.value) == (
        "cells.tif is larger than the upload limit of 1.0 KB; for bigger movies use 'Import from a folder' (a path "
        "on this computer) or `tapcore` on the command line, or raise TAPCORE_MAX_UPLOAD_MB and server.maxUploadSize")
    assert list(ws.datasets_dir.iterdir()) == []
    assert ws.save_upload(pyio.BytesIO(data), name="cells.tif", max_bytes=len(data)).shape == (5, 20, 24)


# -- masks not enough for a head job ------------------------------------------------------------
@pytest.mark.parametrize("events, message", [
    (0, "the event masks of dataset 'cells' contain no events (every pixel is 0); an event head learns from "
        "annotated events: mark dividing cells with 1 and dying cells with 2, or choose a dataset with events"),
    (2, "the event masks of dataset 'cells' contain 2 events (separate regions of event pixels); training and "
        "calibrating an event head needs at least 3, one each for its training, validation and test windows; "
        "annotate more events"),
])
def test_head_job_on_masks_without_enough_events_is_refused_at_submit(tmp_path, events, message):
    from tapcore.jobs.queue import JobQueue

    ws = Workspace(tmp_path)
    movie = _movie(t=6, y=64, x=64)
    masks = np.zeros(movie.shape, np.uint8)
    for k in range(events):
        masks[1 + 2 * k, 10:20, 10 + 20 * k: 20 + 20 * k] = 1
    info = ws.add_array(movie, masks, name="cells", source="test")
    q = JobQueue(tmp_path)
    for kind, params in (("train_head", {"tap_model": "shipped:demo/tap"}), ("calibrate", {"model": "shipped:demo"}),
                         ("compare", {})):
        with pytest.raises(ValueError) as err:
            q.submit({"kind": kind, "params": {"dataset": info.id, **params}})
        assert str(err.value) == message
    assert q.list() == [] and list(q.runs_dir.iterdir()) == []  # nothing queued, no run folder


def test_head_job_with_enough_events_but_too_few_windows_names_the_setting(tmp_path):
    from tapcore.events.readiness import check_head_masks
    from tapcore.jobs.queue import JobQueue

    ws = Workspace(tmp_path)
    movie = _movie(t=8, y=64, x=64)
    masks = np.zeros(movie.shape, np.uint8)
    for k in range(3):
        masks[1 + 2 * k, 30:32, 30:32] = 1  # three tiny events: 4 px each, below min_area 40
    info = ws.add_array(movie, masks, name="cells", source="test")
    with pytest.raises(ValueError, match=r"^the event masks of dataset 'cells' are not enough with these settings: the "
                                         r"masks contain 0 event crops \(criterion size_either, random split\)"):
        JobQueue(tmp_path).submit({"kind": "train_head", "params": {
            "dataset": info.id, "tap_model": "shipped:demo/tap", "config": {"dataset": {"crop": 16}}}})
    counts = check_head_masks(masks, None, build_windows=False)
    assert counts == {"event_pixels": 12, "events": 3}


# -- names --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, shown", [
    ("Zellen – Mitose 1µm.tif", "Zellen – Mitose 1µm"),
    ("my movie (copy).TIFF", "my movie (copy)"),
    ("../../etc/passwd.tif", "passwd"),
    ("..\\..\\windows\\evil name.tif", "evil name"),
    ("..", "upload"),
])
def test_file_names_are_stored_under_safe_names(tmp_path, name, shown):
    ws = Workspace(tmp_path / "ws")
    data = _bytes(lambda b: tifffile.imwrite(b, _movie(seed=len(name)), photometric="minisblack"))
    info = ws.save_upload(pyio.BytesIO(data), name=name)
    assert info.name == shown and info.meta["original_file"] == name
    assert info.path.parent == ws.datasets_dir and (info.path.name[0].isalnum())
    assert all(ch.isascii() and (ch.isalnum() or ch in "-_.") for ch in info.id)
    assert sorted(p.name for p in info.path.iterdir()) == ["access.json", "meta.json", "movie.tif"]
    # nothing was written outside the workspace (its folders and the audit trail of the upload)
    assert sorted(p.name for p in (tmp_path / "ws").iterdir()) == ["audit.sqlite", "datasets", "models", "runs"]
    assert not (tmp_path / "etc").exists()


# -- uploads: channel pick with preview, identical re-upload ------------------------------------------
def test_multichannel_upload_pick_channel_with_preview(tmp_path):
    ws = Workspace(tmp_path / "ws")
    data = np.stack([_movie(seed=1), _movie(seed=2)], 1)  # TCYX
    raw = _bytes(lambda b: tifffile.imwrite(b, data, imagej=True, metadata={"axes": "TCYX"}))
    with pytest.raises(ValueError, match=r"^two\.tif: the file has 2 channels"):
        ws.save_upload(pyio.BytesIO(raw), name="two.tif")
    staged = ws.stage_upload(pyio.BytesIO(raw), name="two.tif")
    assert staged.layout.channels == 2 and staged.layout.needs_choice
    assert ws.staged_upload(staged.token).movie_path == staged.movie_path  # found again after a page rerun
    np.testing.assert_array_equal(ws.preview_upload(staged, channel=1, frame=2), data[2, 1])
    info = ws.finish_upload(staged, channel=1)
    np.testing.assert_array_equal(ws.load_movie(info.id), data[:, 1])
    assert info.meta["channel"] == 1 and info.meta["file_axes"] == "TCYX"
    assert not staged.folder.exists()  # staging removed after saving
    assert [p.name for p in ws.datasets_dir.iterdir()] == [info.id]


def test_identical_reupload_reuses_the_dataset(tmp_path):
    ws = Workspace(tmp_path / "ws")
    raw = _bytes(lambda b: tifffile.imwrite(b, _movie(), photometric="minisblack"))
    first = ws.save_upload(pyio.BytesIO(raw), name="a.tif")
    again = ws.save_upload(pyio.BytesIO(raw), name="a copy.tif")
    assert again.id == first.id and again.reused and not first.reused
    assert [d.id for d in ws.list_datasets()] == [first.id]
    masks = np.zeros((5, 20, 24), np.uint8)
    raw_masks = _bytes(lambda b: tifffile.imwrite(b, masks, photometric="minisblack"))
    other = ws.save_upload(pyio.BytesIO(raw), pyio.BytesIO(raw_masks), name="a.tif", masks_name="m.tif")
    assert other.id != first.id and not other.reused  # same movie with masks is another dataset


def test_cli_info_prints_the_warnings(tmp_path, capsys):
    from tapcore.cli import main

    movie = _movie().astype(np.float32)
    movie[0, 0, 0] = np.nan
    tifffile.imwrite(tmp_path / "m.tif", movie, photometric="minisblack")
    assert main(["info", str(tmp_path / "m.tif")]) == 0
    out = capsys.readouterr().out
    assert "  warning: 1 pixel (0.042 %) is NaN or infinite; it counts as 0 (background) after normalisation" in out
    assert "  warning: frames are 20 x 24 px, smaller than the 96 x 96 px patch" in out
