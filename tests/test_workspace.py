"""Workspace: datasets saved by streaming, validated before anything is kept; model references."""

from __future__ import annotations

import io as pyio
import json

import numpy as np
import pytest
import tifffile

from tapcore.workspace import Workspace, stream_to_file
from tapcore.utils import sha256_array


def _movie(t=4, y=24, x=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4000, size=(t, y, x), dtype=np.uint16)


def _tiff_bytes(array) -> bytes:
    buf = pyio.BytesIO()
    tifffile.imwrite(buf, array, photometric="minisblack")
    return buf.getvalue()


class ChunkCounter(pyio.BytesIO):
    """A file object that records the size of every read, to check uploads are streamed."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.reads: list[int] = []

    def read(self, size=-1):
        self.reads.append(size)
        return super().read(size)


def test_stream_to_file_reads_in_chunks(tmp_path):
    data = bytes(range(256)) * 1000
    src = ChunkCounter(data)
    n = stream_to_file(src, tmp_path / "out.bin", chunk=4096)
    assert n == len(data)
    assert (tmp_path / "out.bin").read_bytes() == data
    assert all(0 < s <= 4096 for s in src.reads)  # never one unbounded read
    assert len(src.reads) >= len(data) // 4096


def test_upload_movie_and_masks_roundtrip(tmp_path):
    ws = Workspace(tmp_path / "ws")
    movie = _movie()
    masks = np.zeros(movie.shape, np.uint8)
    masks[1, 5:9, 5:9] = 1
    masks[2, 10:12, 20:24] = 2
    info = ws.save_upload(pyio.BytesIO(_tiff_bytes(movie)), pyio.BytesIO(_tiff_bytes(masks)),
                          name="my movie.tif", masks_name="masks.tif")
    assert info.shape == (4, 24, 32) and info.dtype == "uint16" and info.has_masks
    assert info.sha256 == sha256_array(movie)
    meta = json.loads((info.path / "meta.json").read_text())
    assert meta["source"] == "upload" and meta["original_file"] == "my movie.tif"
    assert meta["event_pixels"] == {"division": 16, "death": 8}
    np.testing.assert_array_equal(ws.load_movie(info.id), movie)
    np.testing.assert_array_equal(ws.load_masks(info.id), masks)
    # only the normalised files are kept, no raw upload copies or staging folders
    assert sorted(p.name for p in info.path.iterdir()) == ["access.json", "masks.tif", "meta.json", "movie.tif"]
    assert [d.id for d in Workspace(tmp_path / "ws").list_datasets()] == [info.id]  # persists


@pytest.mark.parametrize(
    "payload, fragment",
    [
        (b"this is not an image at all", "bad.tif"),
        (b"", "empty"),
    ],
)
def test_bad_upload_is_rejected_and_nothing_saved(tmp_path, payload, fragment):
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(ValueError) as err:
        ws.save_upload(pyio.BytesIO(payload), name="bad.tif")
    assert fragment in str(err.value)
    assert str(ws.datasets_dir) not in str(err.value)  # no internal staging path in the message
    assert list(ws.datasets_dir.iterdir()) == []


def test_single_image_upload_rejected(tmp_path):
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(ValueError, match="frame"):
        ws.save_upload(pyio.BytesIO(_tiff_bytes(_movie()[0])), name="one.tif")
    assert list(ws.datasets_dir.iterdir()) == []


def test_masks_that_do_not_fit_are_rejected(tmp_path):
    ws = Workspace(tmp_path / "ws")
    movie = _movie()
    wrong = np.zeros((4, 10, 10), np.uint8)
    with pytest.raises(ValueError, match="masks.tif"):
        ws.save_upload(pyio.BytesIO(_tiff_bytes(movie)), pyio.BytesIO(_tiff_bytes(wrong)),
                       name="m.tif", masks_name="masks.tif")
    assert list(ws.datasets_dir.iterdir()) == []


def test_add_list_delete_and_unknown_ids(tmp_path):
    ws = Workspace(tmp_path / "ws")
    a = ws.add_array(_movie(seed=1), name="first", source="test")
    b = ws.add_array(_movie(seed=2), name="second", source="test", dataset_id="second-id")
    assert {d.id for d in ws.list_datasets()} == {a.id, "second-id"}
    assert b.label().startswith("second (4 frames, 24x32 px")
    ws.delete_dataset(a.id)
    assert [d.id for d in ws.list_datasets()] == ["second-id"]
    with pytest.raises(ValueError, match="known datasets: second-id"):
        ws.dataset("nope")
    with pytest.raises(ValueError, match="not valid"):
        ws.dataset("../etc")


def test_import_path_missing_and_tiff(tmp_path):
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(ValueError, match="does not exist"):
        ws.import_path(tmp_path / "missing.tif")
    movie = _movie()
    tifffile.imwrite(tmp_path / "movie.tif", movie, photometric="minisblack")
    info = ws.import_path(tmp_path / "movie.tif")
    assert info.name == "movie" and info.source == "tiff" and not info.has_masks
    np.testing.assert_array_equal(ws.load_movie(info.id), movie)


def test_model_references(tmp_path):
    ws = Workspace(tmp_path / "ws")
    run_model = ws.runs_dir / "job1" / "model"
    run_model.mkdir(parents=True)
    (run_model / "config.json").write_text(json.dumps({"kind": "tap"}))
    (run_model / "checkpoint").mkdir()
    (run_model / "checkpoint" / "last.pt").write_bytes(b"x")
    assert ws.resolve_model("run:job1") == run_model.resolve()
    refs = {m.ref: m for m in ws.list_models(kind="tap")}
    assert "run:job1" in refs and refs["run:job1"].kind == "tap"
    saved = ws.save_model("run:job1", "My TAP")
    assert saved == "saved:my-tap"
    assert not (ws.resolve_model(saved) / "checkpoint").exists()  # kept bundles drop checkpoints
    with pytest.raises(ValueError, match="already exists"):
        ws.save_model("run:job1", "My TAP")
    with pytest.raises(ValueError, match="not found"):
        ws.resolve_model("run:nope")
    with pytest.raises(ValueError, match="no model chosen"):
        ws.resolve_model("")
