"""Whole-movie dense prediction (tapcore.predict): exactness, tiling, peaks, outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from tapcore.calibration import Calibration
from tapcore.config import config_to_dict
from tapcore.detector import EventDetector
from tapcore.events.heads import build_head
from tapcore.events.model import EventModel
from tapcore.io import normalize_movie
from tapcore.predict import (EVENT_COLUMNS, PER_FRAME_COLUMNS, DensePredictor, PredictConfig, drop_repeats,
                             find_peaks, predict_movie, write_prediction)
from tapcore.tap.model import TapConfig, TapModel

TINY = TapConfig(base_channels=4, depth=2, features=8)


def _randomize_bn(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics, so the encoder's response to zero padding is not zero."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(1 + 0.3 * torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(0.5 * torch.randn(m.num_features, generator=g))


def _model(head: str = "resnet", crop: int = 48, n_classes: int = 2, seed: int = 0) -> EventModel:
    torch.manual_seed(seed)
    tap = TapModel(TapConfig(**config_to_dict(TINY)))
    model = EventModel(tap.backbone, build_head(head, in_channels=TINY.features, n_classes=n_classes, crop=crop))
    _randomize_bn(model, seed)
    with torch.no_grad():
        model.head.fc.weight.mul_(30.0)  # logits of order 1, so probabilities are not all ~0.5
    return model.eval()


def _detector(model: EventModel, **fields) -> EventDetector:
    """The model with the bundle config train-head would write for it."""
    head = model.head
    config = {"tap_config": config_to_dict(TINY), "head": head.name, "crop": head.crop, "in_channels": TINY.features,
              "n_classes": head.n_classes, "class_names": ["none", "event"] if head.n_classes == 2
              else ["none", "division", "death"], "normalize": {"pmin": 1.0, "pmax": 99.8}}
    return EventDetector(model, config=config, **fields)


def _reference_logits(model: EventModel, movie_norm: np.ndarray, points: np.ndarray) -> torch.Tensor:
    """The head's logits on the crop pair centred at each ``[t, y, x]``: feature windows cut from
    whole-frame features with zeros outside the frame (what training feeds the head)."""
    head = model.head
    crop, m = head.crop, head.margin
    side = crop + 2 * m
    with torch.no_grad():
        z = model.backbone(torch.from_numpy(movie_norm)[:, None])  # (T, C, Y, X)
    _, c, height, width = z.shape
    win = torch.zeros(len(points), 2, c, side, side)
    for i, (t, y, x) in enumerate(points):
        y0, x0 = y - crop // 2 - m, x - crop // 2 - m  # window top-left
        ys, xs, ye, xe = max(y0, 0), max(x0, 0), min(y0 + side, height), min(x0 + side, width)
        win[i, :, :, ys - y0:ye - y0, xs - x0:xe - x0] = z[t:t + 2, :, ys:ye, xs:xe]
    with torch.no_grad():
        return model.forward_head(win)  # (N, K)


def _points(t_len: int, height: int, width: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, t_len - 1, n), rng.integers(0, height, n), rng.integers(0, width, n)], 1)


# the fast loop keeps one 2-class and one 3-class head; the other heads run in the full suite
@pytest.mark.parametrize("head,crop,n_classes", [("resnet", 48, 2),
                                                 pytest.param("linear", 48, 2, marks=pytest.mark.slow),
                                                 ("resnet_order", 16, 3),
                                                 pytest.param("linear_invariant", 16, 2, marks=pytest.mark.slow),
                                                 pytest.param("resnet_lite", 48, 2, marks=pytest.mark.slow),
                                                 pytest.param("resnet_lite", 16, 3, marks=pytest.mark.slow)])
def test_dense_map_equals_head_on_centred_crops(head, crop, n_classes):
    model = _model(head, crop, n_classes)
    rng = np.random.default_rng(1)
    movie_norm = rng.random((3, 60, 75)).astype(np.float32)
    logits = DensePredictor(model, PredictConfig(), "cpu").movie_logits(movie_norm)  # (2, K, Y, X)
    assert logits.shape == (2, n_classes, 60, 75)
    # away from the borders, and (zero padding like training) also at them
    inner = _points(3, 60, 75, 40, 2)
    inner[:, 1] = 24 + inner[:, 1] % 12
    inner[:, 2] = 24 + inner[:, 2] % 27
    border = np.array([[0, 0, 0], [1, 59, 74], [0, 3, 70], [1, 58, 1], [0, 30, 0]])
    for pts in (inner, border):
        ref = _reference_logits(model, movie_norm, pts)
        got = logits[pts[:, 0], :, pts[:, 1], pts[:, 2]]
        assert float(ref.std()) > 0.05  # a real test: logits vary across the frame
        torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)


def test_fft_and_direct_correlation_agree():
    model = _model("resnet", 16)
    movie_norm = np.random.default_rng(3).random((2, 40, 52)).astype(np.float32)
    a = DensePredictor(model, PredictConfig(method="fft"), "cpu").movie_logits(movie_norm)
    b = DensePredictor(model, PredictConfig(method="conv"), "cpu").movie_logits(movie_norm)
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_tiling_gives_the_same_map():
    model = _model("resnet", 16)
    movie_norm = np.random.default_rng(4).random((3, 100, 130)).astype(np.float32)
    whole = DensePredictor(model, PredictConfig(tile=2048, head_tile=2048), "cpu").movie_logits(movie_norm)
    # tiny U-Net (depth 2): receptive radius ~23 px, so 32 px of overlap make tiling exact
    tiled = DensePredictor(model, PredictConfig(tile=48, overlap=32, head_tile=40, batch=3), "cpu")
    assert tiled.tile == 48
    torch.testing.assert_close(tiled.movie_logits(movie_norm), whole, atol=1e-5, rtol=1e-4)


def test_predict_movie_applies_calibration_and_matches_reference():
    model = _model("resnet", 48)
    detector = _detector(model, calibration={"temperature": 2.0, "bias": -0.5})
    movie = (np.random.default_rng(5).random((3, 64, 70)) * 1000).astype(np.uint16)
    pred = predict_movie(movie, detector, PredictConfig(threshold=0.0, min_distance=10))
    assert pred.prob_maps.shape == (2, 64, 70) and pred.prob_maps.dtype == np.float32
    pts = _points(3, 64, 70, 12, 6)
    ref = _reference_logits(model, normalize_movie(movie), pts)
    expected = torch.softmax(Calibration(2.0, -0.5).apply(ref), dim=1)[:, 1].numpy()
    np.testing.assert_allclose(pred.prob_maps[pts[:, 0], pts[:, 1], pts[:, 2]], expected, atol=1e-5)
    assert pred.record["calibration"] == {"temperature": 2.0, "bias": -0.5, "applied": True}
    raw = predict_movie(movie, detector, PredictConfig(calibrate=False, threshold=1.0))
    expected_raw = torch.softmax(ref, dim=1)[:, 1].numpy()
    np.testing.assert_allclose(raw.prob_maps[pts[:, 0], pts[:, 1], pts[:, 2]], expected_raw, atol=1e-5)
    # per-frame summary matches the maps; events are peaks of the maps
    np.testing.assert_allclose(pred.per_frame["max_probability"], pred.prob_maps.reshape(2, -1).max(1), rtol=1e-6)
    np.testing.assert_allclose(pred.per_frame["mean_probability"], pred.prob_maps.reshape(2, -1).mean(1), rtol=1e-5)
    for _, row in pred.events.iterrows():
        assert pred.prob_maps[row.frame, row.y, row.x] == pytest.approx(row.probability, abs=1e-6)
    assert (pred.events["next_frame"] == pred.events["frame"] + 1).all()
    assert pred.per_frame["n_events"].sum() == len(pred.events) > 0


def _blob(height: int, width: int, cy: int, cx: int, amp: float, sigma: float = 4.0) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))


def test_peak_finding_recovers_planted_peaks():
    maps = np.zeros((2, 100, 120), np.float32)
    planted = [(0, 20, 30, 0.9), (0, 70, 90, 0.7), (0, 22, 95, 0.6), (1, 50, 60, 0.95), (1, 5, 5, 0.8)]
    for n, y, x, a in planted:
        maps[n] = np.maximum(maps[n], _blob(100, 120, y, x, a))
    maps[0] = np.maximum(maps[0], _blob(100, 120, 80, 20, 0.3))  # below threshold
    maps[1] = np.maximum(maps[1], _blob(100, 120, 50, 72, 0.9))  # 12 px from a higher peak: merged
    peaks = find_peaks(maps, threshold=0.5, min_distance=15)
    got = {(int(n), int(y), int(x)) for n, y, x in peaks}
    assert got == {(n, y, x) for n, y, x, _ in planted}
    # sorted by decreasing value within a map
    assert [tuple(p) for p in peaks[peaks[:, 0] == 0]] == [(0, 20, 30), (0, 70, 90), (0, 22, 95)]
    # a smaller distance separates the two close peaks
    close = find_peaks(maps[1], threshold=0.5, min_distance=5)
    assert {(int(y), int(x)) for _, y, x in close} == {(50, 60), (50, 72), (5, 5)}


def test_drop_repeats_keeps_the_most_probable_event_of_each_neighbourhood():
    ev = pd.DataFrame([
        (10, 50, 50, 0.90, "division"),  # kept: the strongest
        (9, 52, 47, 0.70, "division"),  # 1 pair earlier, 3 px away: a repeat
        (11, 50, 74, 0.80, "division"),  # 1 pair later, 24 px away (= distance): a repeat
        (13, 45, 55, 0.95, "division"),  # 3 pairs later, stronger: kept (too far in time to touch the 0.90)
        (13, 46, 56, 0.60, "death"),  # same place, other class: kept
        (16, 50, 50, 0.85, "division"),  # 3 pairs after the 0.95 one: kept
        (10, 50, 75, 0.50, "division"),  # 25 px from the strongest, 1 px from the dropped 0.80: kept
    ], columns=["frame", "y", "x", "probability", "class"])
    got = drop_repeats(ev, frames=2, distance=24)
    assert sorted(got.index.tolist()) == [0, 3, 4, 5, 6]
    assert drop_repeats(ev, frames=0, distance=24).equals(ev)
    assert sorted(drop_repeats(ev, frames=1, distance=24).index.tolist()) == [0, 3, 4, 5, 6]
    # 2 px: the near repeats are too far, but the 0.50 one lies 1 px from the (now kept) 0.80 one
    assert sorted(drop_repeats(ev, frames=2, distance=2).index.tolist()) == [0, 1, 2, 3, 4, 5]


def test_exclusive_classes_keep_one_event_of_one_class_per_place_and_time():
    ev = pd.DataFrame([
        (10, 50, 50, 0.90, "division"),  # kept: the strongest
        (11, 55, 52, 0.80, "death"),  # 1 pair later, 5 px away, other class: dropped when exclusive
        (10, 50, 90, 0.60, "death"),  # 40 px away: kept
        (13, 50, 50, 0.70, "death"),  # 3 pairs after the division: kept when exclusive (the 0.80 death it
        # repeats is dropped then); without exclusive it is a repeat of that 0.80 death
        (13, 60, 60, 0.65, "division"),  # same pair and 10 px from the 0.70 death: dropped when exclusive
    ], columns=["frame", "y", "x", "probability", "class"])
    assert sorted(drop_repeats(ev, frames=2, distance=24).index.tolist()) == [0, 1, 2, 4]
    assert sorted(drop_repeats(ev, frames=2, distance=24, exclusive=True).index.tolist()) == [0, 2, 3]
    # frames=0 with exclusive: only the same frame pair counts (the 0.80 death one pair later stays)
    assert sorted(drop_repeats(ev, frames=0, distance=24, exclusive=True).index.tolist()) == [0, 1, 2, 3]


@pytest.mark.slow  # two whole-movie predictions (drop_repeats itself: the test above)
def test_predict_movie_drops_repeats_across_frame_pairs():
    model = _detector(_model("resnet", 48))
    movie = (np.random.default_rng(5).random((4, 64, 70)) * 1000).astype(np.uint16)
    every = predict_movie(movie, model, PredictConfig(threshold=0.0, min_distance=10, repeat_frames=0))
    kept = predict_movie(movie, model, PredictConfig(threshold=0.0, min_distance=10, repeat_frames=1))
    assert len(kept.events) < len(every.events)
    want = drop_repeats(every.events, 1, 10, exclusive=True).reset_index(drop=True)
    pd.testing.assert_frame_equal(kept.events, want)
    assert kept.per_frame["n_events"].tolist() == [int((want["frame"] == t).sum()) for t in range(3)]


def test_peak_finding_plateau_keeps_one():
    m = np.zeros((30, 30), np.float32)
    m[10:13, 10:14] = 0.8  # a flat top
    peaks = find_peaks(m, threshold=0.5, min_distance=3)
    assert len(peaks) == 1 and 10 <= peaks[0, 1] <= 12 and 10 <= peaks[0, 2] <= 13
    assert len(find_peaks(m, threshold=0.9, min_distance=3)) == 0


def test_written_outputs_have_stable_documented_columns(tmp_path):
    assert EVENT_COLUMNS == ["frame", "next_frame", "y", "x", "probability", "class", "model_id"]
    assert PER_FRAME_COLUMNS == ["frame", "next_frame", "n_events", "max_probability", "mean_probability"]
    import tapcore.predict as P

    for col in EVENT_COLUMNS + PER_FRAME_COLUMNS:
        assert f"``{col}``" in P.__doc__  # every column is documented with its unit
    detector = _detector(_model("linear", 16, n_classes=3), manifest={"bundle_id": "event_head-abc"})
    movie = (np.random.default_rng(7).random((3, 40, 44)) * 255).astype(np.uint8)
    pred = predict_movie(movie, detector, PredictConfig(threshold=0.3, min_distance=8))
    paths = write_prediction(pred, tmp_path / "out")
    events = pd.read_csv(paths["events"])
    per_frame = pd.read_csv(paths["per_frame"])
    assert list(events.columns) == EVENT_COLUMNS
    assert list(per_frame.columns) == PER_FRAME_COLUMNS
    assert len(events) == len(pred.events) > 0
    assert set(events["class"]) <= {"division", "death"} and set(events["model_id"]) == {"event_head-abc"}
    assert per_frame["frame"].tolist() == [0, 1]
    maps = tifffile.imread(paths["heatmaps"])
    assert maps.shape == (2, 40, 44) and maps.dtype == np.float32
    np.testing.assert_array_equal(maps, pred.prob_maps)
    record = json.loads(paths["record"].read_text())
    assert record["model_id"] == "event_head-abc" and record["movie_shape"] == [3, 40, 44]
    assert record["columns"]["events.csv"] == EVENT_COLUMNS
    for key in ("movie_sha256", "config", "environment", "calibration", "elapsed_s"):
        assert key in record


def test_bad_inputs_raise_value_error():
    model = _detector(_model("linear", 16))
    with pytest.raises(ValueError, match="at least two frames"):
        predict_movie(np.zeros((1, 20, 20), np.float32), model)
    with pytest.raises(ValueError, match=r"\(T, Y, X\)"):
        predict_movie(np.zeros((20, 20), np.float32), model)
    with pytest.raises(ValueError, match="threshold"):
        PredictConfig(threshold=1.5).validate()
    with pytest.raises(ValueError, match="amp"):
        PredictConfig(amp="fp8").validate()


@pytest.mark.slow  # three CLI workflows end to end
def test_cli_calibrate_predict_explain(tmp_path, capsys):
    from tapcore.bundle import save_bundle
    from tapcore.cli import main
    from tapcore.io import write_tiff

    model = _model("resnet", 16)
    bundle = save_bundle(tmp_path / "head", kind="event_head", config=_detector(model).config,
                         state_dict=model.state_dict(), metrics={}, manifest={})
    rng = np.random.default_rng(8)
    n = 400
    s = rng.normal(0, 2, n)
    np.save(bundle / "val_logits.npy", np.stack([np.zeros(n), 3 * s], 1).astype(np.float32))
    np.save(bundle / "val_labels.npy", (rng.random(n) < 1 / (1 + np.exp(-s))).astype(np.int64))
    movie = tmp_path / "movie.tif"
    write_tiff(movie, (rng.random((3, 40, 48)) * 1000).astype(np.uint16))

    assert main(["calibrate", "--model", str(bundle)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["temperature"] > 1.5 and (bundle / "calibration.json").is_file()
    assert main(["predict", str(movie), "--model", str(bundle), "--out", str(tmp_path / "pred"),
                 "--threshold", "0.2", "--min-distance", "6"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["frames"] == 3
    events = pd.read_csv(tmp_path / "pred" / "events.csv")
    assert list(events.columns) == EVENT_COLUMNS and len(events) == out["events"]
    record = json.loads((tmp_path / "pred" / "prediction.json").read_text())
    assert record["calibration"]["applied"] and record["input"]["shape"] == [3, 40, 48]
    assert main(["explain", str(movie), "--model", str(bundle), "--frame", "1", "--k", "2", "--size", "16",
                 "--out", str(tmp_path / "cam")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target"] == "sum" and len(out["regions"]) == 2
    assert (tmp_path / "cam" / "cam.png").is_file() and (tmp_path / "cam" / "regions.csv").is_file()
    # bad input: one line on stderr, exit status 2
    assert main(["predict", str(movie), "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "not found" in capsys.readouterr().err


def test_device_normalisation_matches_io():
    """The GPU path normalises frames with torch.quantile; it must match tapcore.io.normalize_movie."""
    from tapcore.predict import normalize_frames_torch

    rng = np.random.default_rng(9)
    movie = (rng.gamma(2.0, 300.0, (3, 50, 61))).astype(np.uint16)
    movie[2] = 7  # a constant frame
    got = normalize_frames_torch(torch.from_numpy(movie))  # uint16, as the GPU path copies it
    np.testing.assert_allclose(got.numpy(), normalize_movie(movie), atol=1e-5)


def test_peaks_on_a_flat_map_are_a_grid():
    """A constant map makes every pixel a candidate; ties keep the first pixel in raster order, d apart."""
    from tapcore.predict import find_peaks

    flat = np.full((1, 300, 400), 0.7, np.float32)
    peaks = find_peaks(flat, threshold=0.5, min_distance=24)
    ys, xs = np.unique(peaks[:, 1]), np.unique(peaks[:, 2])
    assert ys.tolist() == list(range(0, 300, 25)) and xs.tolist() == list(range(0, 400, 25))
    assert len(peaks) == len(ys) * len(xs)
