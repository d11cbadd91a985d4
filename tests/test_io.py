"""Movie and mask input: formats, axes from metadata, normalisation, and the clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from tapcore import io


def _movie(t=4, y=12, x=10, dtype=np.uint16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 200, size=(t, y, x)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_multipage_tiff_roundtrip_keeps_dtype(tmp_path, dtype):
    movie = _movie(dtype=dtype)
    tifffile.imwrite(tmp_path / "m.tif", movie, photometric="minisblack")
    out = io.read_movie(tmp_path / "m.tif")
    assert out.dtype == dtype and out.shape == (4, 12, 10)
    np.testing.assert_array_equal(out, movie)


def test_float64_becomes_float32(tmp_path):
    movie = _movie().astype(np.float64) / 7
    tifffile.imwrite(tmp_path / "m.tif", movie, photometric="minisblack")
    out = io.read_movie(tmp_path / "m.tif")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, movie, rtol=1e-6)


def test_pages_written_one_by_one_are_frames(tmp_path):
    movie = _movie(t=3)
    with tifffile.TiffWriter(tmp_path / "p.tif") as w:
        for frame in movie:
            w.write(frame, contiguous=False)
    np.testing.assert_array_equal(io.read_movie(tmp_path / "p.tif"), movie)


def test_write_tiff_is_readable_and_atomic(tmp_path):
    movie = _movie()
    io.write_tiff(tmp_path / "sub" / "m.tif", movie)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["m.tif"]  # no temp file left
    with tifffile.TiffFile(tmp_path / "sub" / "m.tif") as tif:
        assert tif.series[0].axes == "TYX"
    np.testing.assert_array_equal(io.read_movie(tmp_path / "sub" / "m.tif"), movie)


def test_imagej_channels_need_explicit_choice(tmp_path):
    data = np.stack([_movie(seed=1), _movie(seed=2)], axis=1)  # (T, C, Y, X)
    tifffile.imwrite(tmp_path / "ij.tif", data, imagej=True, metadata={"axes": "TCYX"})
    with pytest.raises(ValueError, match=r"2 channels.*channel=0\.\.1"):
        io.read_movie(tmp_path / "ij.tif")
    np.testing.assert_array_equal(io.read_movie(tmp_path / "ij.tif", channel=1), data[:, 1])
    with pytest.raises(ValueError, match="out of range"):
        io.read_movie(tmp_path / "ij.tif", channel=2)


def test_ome_z_planes_need_explicit_choice(tmp_path):
    data = np.stack([_movie(seed=1), _movie(seed=2), _movie(seed=3)], axis=1)  # (T, Z, Y, X)
    tifffile.imwrite(tmp_path / "o.ome.tif", data, ome=True, metadata={"axes": "TZYX"})
    with pytest.raises(ValueError, match=r"3 z-planes.*plane=0\.\.2"):
        io.read_movie(tmp_path / "o.ome.tif")
    np.testing.assert_array_equal(io.read_movie(tmp_path / "o.ome.tif", plane=2), data[:, 2])


def test_imagej_slices_without_time_can_be_read_as_frames(tmp_path):
    movie = _movie(t=5)
    tifffile.imwrite(tmp_path / "z.tif", movie, imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(ValueError, match="plane='time'"):
        io.read_movie(tmp_path / "z.tif")
    np.testing.assert_array_equal(io.read_movie(tmp_path / "z.tif", plane="time"), movie)
    with pytest.raises(ValueError, match="single 2-D image"):
        io.read_movie(tmp_path / "z.tif", plane=0)


def test_rgb_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((3, 8, 8, 3), np.uint8), photometric="rgb")
    with pytest.raises(ValueError, match="RGB/colour images are not supported; export a single grayscale channel"):
        io.read_movie(tmp_path / "rgb.tif")
    folder = tmp_path / "png"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / f"f{i}.png")
    with pytest.raises(ValueError, match="colour"):
        io.read_movie(folder)


def test_frame_folder_natural_order_png_and_tif(tmp_path):
    movie = _movie(t=12, dtype=np.uint8)
    for i, frame in enumerate(movie):
        Image.fromarray(frame).save(tmp_path / f"t{i}.png")  # t10 must come after t9
    (tmp_path / "notes.txt").write_text("not a frame")
    np.testing.assert_array_equal(io.read_movie(tmp_path), movie)
    tif_dir = tmp_path / "tif"
    tif_dir.mkdir()
    m16 = _movie(t=3)
    for i, frame in enumerate(m16):
        tifffile.imwrite(tif_dir / f"t{i:03d}.tif", frame)
    np.testing.assert_array_equal(io.read_movie(tif_dir), m16)


def test_frame_folder_mismatched_shapes(tmp_path):
    tifffile.imwrite(tmp_path / "a1.tif", np.zeros((8, 8), np.uint16))
    tifffile.imwrite(tmp_path / "a2.tif", np.zeros((8, 9), np.uint16))
    with pytest.raises(ValueError, match="same size"):
        io.read_movie(tmp_path)


def test_bad_inputs_have_clear_errors(tmp_path):
    tifffile.imwrite(tmp_path / "img2d.tif", np.zeros((8, 8), np.uint16))
    with pytest.raises(ValueError, match="single 2-D image.*not a movie"):
        io.read_movie(tmp_path / "img2d.tif")
    tifffile.imwrite(tmp_path / "one.tif", np.zeros((1, 8, 8), np.uint16), metadata={"axes": "TYX"})
    with pytest.raises(ValueError, match="single 2-D image|only one frame"):
        io.read_movie(tmp_path / "one.tif")
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(ValueError, match="empty file"):
        io.read_movie(tmp_path / "empty.tif")
    (tmp_path / "notes.tif").write_text("hello, these are my notes")
    with pytest.raises(ValueError, match="neither a TIFF nor a PNG"):
        io.read_movie(tmp_path / "notes.tif")
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, _movie(t=6, y=64, x=64))
    (tmp_path / "corrupt.tif").write_bytes(good.read_bytes()[:300])
    with pytest.raises(ValueError, match="corrupt|damaged"):
        io.read_movie(tmp_path / "corrupt.tif")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(ValueError, match="no image frames"):
        io.read_movie(tmp_path / "emptydir")
    with pytest.raises(FileNotFoundError):
        io.read_movie(tmp_path / "missing.tif")


def test_lzw_tiff_is_decoded(tmp_path):
    movie = _movie(t=3)
    Image.fromarray(movie[0]).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    frame = io.read_stack(tmp_path / "lzw.tif")
    np.testing.assert_array_equal(frame, movie[0])


def test_normalize_movie_per_frame_percentiles():
    rng = np.random.default_rng(0)
    movie = rng.normal(100, 10, size=(3, 50, 40)).astype(np.float32)
    movie[1] *= 5
    movie[2] = 7.0  # constant frame
    out = io.normalize_movie(movie)
    assert out.dtype == np.float32 and out.shape == movie.shape
    assert np.isfinite(out).all()
    for t in range(2):
        lo, hi = np.percentile(movie[t], [1, 99.8])
        np.testing.assert_allclose(out[t], (movie[t] - lo) / (hi - lo), rtol=1e-4, atol=1e-5)
        assert np.isclose(np.percentile(out[t], 1), 0, atol=1e-5)
        assert np.isclose(np.percentile(out[t], 99.8), 1, atol=1e-4)
    np.testing.assert_array_equal(out[2], 0)
    with pytest.raises(ValueError, match="percentiles"):
        io.normalize_movie(movie, pmin=50, pmax=10)


def test_masks_read_and_checked(tmp_path):
    movie = _movie()
    masks = np.zeros(movie.shape, np.uint16)
    masks[1, 2:4, 3:5] = 1
    masks[2, 5, 5] = 2
    io.write_tiff(tmp_path / "masks.tif", masks)
    out = io.read_masks(tmp_path / "masks.tif", movie.shape)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, masks)
    with pytest.raises(ValueError, match="3 frames but the movie has 4"):
        io.check_masks(masks[:3], movie)
    with pytest.raises(ValueError, match="11 x 10 pixels but movie frames are 12 x 10"):
        io.check_masks(masks[:, :11], movie)
    bad = masks.copy()
    bad[0, 0, 0] = 3
    bad[0, 0, 1] = 7
    with pytest.raises(ValueError, match=r"value\(s\) 3 \(1 px\), 7 \(1 px\) outside \{0, 1, 2\}"):
        io.check_masks(bad, movie)
    with pytest.raises(ValueError, match="divide it by 255"):
        io.check_masks((masks > 0).astype(np.uint8) * 255, movie)
    with pytest.raises(ValueError, match="non-integer"):
        io.check_masks(masks.astype(np.float32) * 0.5, movie)
    # float masks holding whole numbers are accepted
    np.testing.assert_array_equal(io.check_masks(masks.astype(np.float32), movie), masks)


def test_read_input_tiff_with_masks(tmp_path):
    movie = _movie()
    io.write_tiff(tmp_path / "m.tif", movie)
    io.write_tiff(tmp_path / "k.tif", np.zeros(movie.shape, np.uint8))
    got = io.read_input(tmp_path / "m.tif", masks=tmp_path / "k.tif")
    assert got.source == "tiff" and got.masks.shape == movie.shape and got.meta["shape"] == [4, 12, 10]
    io.write_tiff(tmp_path / "k2.tif", np.zeros((3, 12, 10), np.uint8))
    with pytest.raises(ValueError, match="3 frames but the movie has 4"):
        io.read_input(tmp_path / "m.tif", masks=tmp_path / "k2.tif")


def test_cli_info_describes_or_explains(tmp_path, capsys):
    import json

    from tapcore.cli import main

    movie = _movie(t=5)
    io.write_tiff(tmp_path / "m.tif", movie)
    masks = np.zeros(movie.shape, np.uint8)
    masks[2, 1:3, 1:3] = 1
    io.write_tiff(tmp_path / "k.tif", masks)
    assert main(["info", str(tmp_path / "m.tif"), "--masks", str(tmp_path / "k.tif"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["frames"], info["height"], info["width"], info["dtype"]) == (5, 12, 10, "uint16")
    assert info["min"] == movie.min() and info["max"] == movie.max()
    assert info["masks"] == {"division_px": 4, "death_px": 0, "frames_with_division": 1, "frames_with_death": 0}
    assert main(["info", str(tmp_path / "m.tif")]) == 0
    assert "5 frames of 12 x 10 uint16" in capsys.readouterr().out
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["info", str(tmp_path / "notes.txt")]) == 2
    err = capsys.readouterr().err
    assert "neither a TIFF nor a PNG" in err and "Traceback" not in err


def test_check_masks_accepts_shape_as_list_or_tuple():
    masks = np.zeros((3, 4, 5), np.uint8)
    for shape in ((3, 4, 5), [3, 4, 5]):
        assert io.check_masks(masks, shape).shape == (3, 4, 5)
    with pytest.raises(ValueError, match="3 frames but the movie has 2"):
        io.check_masks(masks, [2, 4, 5])


def test_mmap_maps_uncompressed_tiffs_and_reads_compressed_ones(tmp_path):
    movie = _movie(t=5, y=32, x=32)
    io.write_tiff(tmp_path / "plain.tif", movie)
    io.write_tiff(tmp_path / "zip.tif", movie, compress=True)
    mapped = io.read_movie(tmp_path / "plain.tif", mmap=True)
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable  # read-only view of the file
    np.testing.assert_array_equal(mapped, movie)
    decoded = io.read_movie(tmp_path / "zip.tif", mmap=True)
    assert not isinstance(decoded, np.memmap)
    np.testing.assert_array_equal(decoded, movie)
    assert not isinstance(io.read_movie(tmp_path / "plain.tif"), np.memmap)  # the default copies
