"""Spatial binning (tapcore.binning) and binned models end to end: inputs binned like training, results
reported in original pixel coordinates and sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from tapcore.binning import bin_masks, bin_movie, binned_shape, check_bin, model_bin, unbin_coords, unbin_map
from tapcore.bundle import save_bundle
from tapcore.config import config_to_dict
from tapcore.detector import EventDetector
from tapcore.events.heads import build_head
from tapcore.events.model import EventModel
from tapcore.predict import PredictConfig, predict_movie
from tapcore.tap.model import TapConfig, TapModel
from tapcore.tap.train import PretrainConfig


# -- helpers --------------------------------------------------------------------------------------
def test_check_bin_accepts_1_2_4_and_names_the_valid_values():
    assert [check_bin(b) for b in (1, 2, 4)] == [1, 2, 4]
    for bad in (0, 3, 8, -2, 2.5, "two", None):
        with pytest.raises(ValueError, match="bin must be one of 1, 2, 4"):
            check_bin(bad)
    with pytest.raises(ValueError, match="bin must be one of"):
        PretrainConfig(bin=3).validate()
    PretrainConfig(bin=4).validate()


def test_bin_movie_is_block_mean_and_pads_incomplete_edge_blocks():
    movie = np.arange(2 * 5 * 7, dtype=np.uint16).reshape(2, 5, 7)
    out = bin_movie(movie, 2)
    assert out.shape == (2, 3, 4) == binned_shape(movie.shape, 2) and out.dtype == np.float32
    assert out[0, 0, 0] == pytest.approx(movie[0, :2, :2].mean())
    assert out[1, 1, 2] == pytest.approx(movie[1, 2:4, 4:6].mean())
    # the incomplete last row/column average the pixels they have (nothing is dropped)
    assert out[0, 2, 1] == pytest.approx(movie[0, 4, 2:4].mean())
    assert out[1, 0, 3] == pytest.approx(movie[1, 0:2, 6].mean())
    assert out[0, 2, 3] == pytest.approx(float(movie[0, 4, 6]))
    # sides that are multiples of b: exactly plain block-mean pooling (the lead's pre-binning)
    even = np.random.default_rng(0).random((3, 8, 12)).astype(np.float32)
    np.testing.assert_allclose(bin_movie(even, 4), even.reshape(3, 2, 4, 3, 4).mean(axis=(2, 4)), rtol=1e-6)
    assert bin_movie(movie, 1) is movie


def _events_per_class(masks: np.ndarray) -> list[tuple[int, int]]:
    """(divisions, deaths) connected regions per frame."""
    return [(ndimage.label(m == 1)[1], ndimage.label(m == 2)[1]) for m in masks]


def test_bin_masks_keeps_every_event():
    rng = np.random.default_rng(1)
    masks = np.zeros((6, 101, 99), np.uint8)
    # single-pixel and small events anywhere (also on block borders and the incomplete edge), 12 px apart
    # so that binning by 4 never merges two of them
    for t in range(6):
        for i, y in enumerate(range(2, 100, 12)):
            for j, x in enumerate(range(3, 98, 12)):
                if rng.random() < 0.5:
                    continue
                h, w = rng.integers(1, 4, 2)
                masks[t, y:y + h, x:x + w] = 1 + (i + j + t) % 2
    masks[0, 100, 98] = 2  # the very last pixel, inside an incomplete block
    before = _events_per_class(masks)
    assert sum(d + e for d, e in before) > 100
    for b in (2, 4):
        binned = bin_masks(masks, b)
        assert binned.shape == binned_shape(masks.shape, b) and binned.dtype == np.uint8
        assert _events_per_class(binned) == before
        # a binned pixel is an event exactly when its block has one (max pooling)
        padded = np.pad(masks, ((0, 0), (0, -masks.shape[1] % b), (0, -masks.shape[2] % b)))
        t, y, x = padded.shape
        np.testing.assert_array_equal(binned > 0, (padded > 0).reshape(t, y // b, b, x // b, b).any(axis=(2, 4)))


def test_bin_masks_death_wins_inside_a_block():
    masks = np.zeros((1, 4, 4), np.uint8)
    masks[0, 0, 0], masks[0, 1, 1] = 1, 2
    masks[0, 2, 3] = 1
    np.testing.assert_array_equal(bin_masks(masks, 2)[0], [[2, 0], [0, 1]])


def test_unbin_map_and_coords():
    m = np.arange(6, dtype=np.float32).reshape(2, 3)
    up = unbin_map(m, 2, (3, 5))
    assert up.shape == (3, 5)
    np.testing.assert_array_equal(up, [[0, 0, 1, 1, 2], [0, 0, 1, 1, 2], [3, 3, 4, 4, 5]])
    t = unbin_map(torch.from_numpy(m)[None], 2, (4, 6))
    assert isinstance(t, torch.Tensor) and t.shape == (1, 4, 6) and float(t[0, 3, 5]) == 5
    np.testing.assert_array_equal(unbin_coords([[0, 0], [3, 5]], 2), [[1, 1], [7, 11]])
    np.testing.assert_array_equal(unbin_coords([[0, 0], [3, 5]], 4), [[2, 2], [14, 22]])
    np.testing.assert_array_equal(unbin_coords([[2, 2]], 4, (10, 9)), [[9, 8]])  # clipped into the frame
    np.testing.assert_array_equal(unbin_coords([[3, 4]], 1), [[3, 4]])


def test_model_bin_reads_bundles_and_defaults_to_1(tmp_path):
    assert model_bin(None) == 1 and model_bin({}) == 1 and model_bin({"pretrain": {"bin": 4}}) == 4
    assert model_bin({"bin": 2, "pretrain": {"bin": 4}}) == 2
    with pytest.raises(ValueError, match="bin must be one of"):
        model_bin({"bin": 3})
    cfg = TapConfig(base_channels=4, depth=1, features=4, head_channels=4)
    save_bundle(tmp_path / "tap", kind="tap", config={"model": config_to_dict(cfg), "bin": 2},
                state_dict=TapModel(cfg).state_dict(), manifest={})
    assert model_bin(tmp_path / "tap") == 2


# -- a binned model's predictions come back in original coordinates -------------------------------
def _bright_spot_model(bin_: int) -> EventDetector:
    """Known answer: backbone = identity (1x1 conv, weight 1), linear head whose only weight is the crop's
    centre pixel, so the event logit at (y, x) is 2 * (normalised intensity at (y, x)) - 1: the event map
    is brightest exactly on bright spots of the (binned) movie."""  # logit: 2 * intensity - 1
    backbone = nn.Conv2d(1, 1, 1)
    head = build_head("linear_invariant", in_channels=1, n_classes=2, crop=9)
    with torch.no_grad():
        backbone.weight.fill_(1.0)
        backbone.bias.zero_()
        head.fc.weight.zero_()
        head.fc.bias.copy_(torch.tensor([0.0, -1.0]))
        head.kernels()[1, 0, 0, 4, 4] = 2.0
    model = EventModel(backbone, head).eval()
    return EventDetector(model, config={"bin": bin_, "class_names": ["none", "event"],
                                        "normalize": {"pmin": 1.0, "pmax": 99.8}})


@pytest.mark.parametrize("bin_,spot", [(1, (37, 51)), (2, (37, 51)), (4, (37, 51)), (2, (10, 80)), (4, (61, 2))])
def test_binned_prediction_reports_original_coordinates(bin_, spot):
    height, width = 66, 90  # not multiples of 4: the incomplete edge blocks are handled too
    movie = np.full((3, height, width), 100, np.uint16)
    movie += np.random.default_rng(0).integers(0, 3, movie.shape).astype(np.uint16)
    cy, cx = spot
    # a peaked 5x5 bright spot centred at (cy, cx) (over 0.2% of the frame, so the 99.8th percentile is in it)
    for r, value in ((2, 300), (1, 600), (0, 1000)):
        movie[:, max(cy - r, 0):cy + r + 1, max(cx - r, 0):cx + r + 1] = value
    # repeat_frames=0: the spot sits still, so each frame pair keeps its own event (no repeats dropped)
    pred = predict_movie(movie, _bright_spot_model(bin_), PredictConfig(threshold=0.5, min_distance=8, repeat_frames=0))
    assert pred.prob_maps.shape == (2, height, width)  # original size, whatever the bin
    assert pred.record["bin"] == bin_ and pred.record["binned_shape"] == list(binned_shape(movie.shape, bin_))
    assert len(pred.events) == 2  # one event per frame pair, at the spot
    for _, ev in pred.events.iterrows():
        assert abs(ev.y - cy) <= bin_ and abs(ev.x - cx) <= bin_, (ev.y, ev.x)
        assert pred.prob_maps[ev.frame, ev.y, ev.x] == pytest.approx(ev.probability, abs=1e-6)
    # the map is high on the spot and low far from it, in original pixels
    assert pred.prob_maps[0, cy, cx] > 0.5
    assert pred.prob_maps[0, (cy + height // 2) % height, (cx + width // 2) % width] < 0.3  # sigmoid(-1) = 0.27
    # each binned pixel covers a b x b block of the original map
    if bin_ > 1:
        m = pred.prob_maps[0]
        y0, x0 = (cy // bin_) * bin_, (cx // bin_) * bin_
        block = m[y0:y0 + bin_, x0:x0 + bin_]
        assert np.all(block == block[0, 0])


# -- a binned TAP bundle through head training, calibration, prediction and Grad-CAM --------------
def _flash_movie(frames=8, size=96, seed=0):
    """Dim noise; an event is a bright disk present in one frame (mask 1 there)."""
    rng = np.random.default_rng(seed)
    movie = rng.normal(100, 8, (frames, size, size)).astype(np.float32)
    masks = np.zeros((frames, size, size), np.uint8)
    yy, xx = np.ogrid[:size, :size]
    for t in range(frames):
        for _ in range(2):
            cy, cx = rng.integers(8, size - 8, 2)
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= 16
            movie[t][disk] = 900
            masks[t][disk] = 1
    return movie.clip(0, 65535).astype(np.uint16), masks


@pytest.fixture(scope="module")
def binned_head(tmp_path_factory):
    from tapcore.events.dataset import CropPairConfig
    from tapcore.events.train import HeadConfig, random_backbone, train_head

    root = tmp_path_factory.mktemp("binned")
    cfg = TapConfig(base_channels=4, depth=1, features=4, head_channels=4)
    model = TapModel(cfg)
    model.backbone.load_state_dict(random_backbone(config_to_dict(cfg), seed=0).state_dict())
    save_bundle(root / "tap", kind="tap", config={"model": config_to_dict(cfg), "bin": 2},
                state_dict=model.state_dict(), manifest={"seed": 0})
    movie, masks = _flash_movie()
    hcfg = HeadConfig(strategy="A0", epochs=2, device="cpu", seed=0,
                      dataset=CropPairConfig(crop=16, pairs_per_frame=60, criterion="any_either", seed=0))
    res = train_head(movie, masks, root / "tap", hcfg, root / "head")
    return root, movie, masks, res


def test_head_on_a_binned_tap_model_trains_on_binned_crops(binned_head):
    from tapcore.bundle import load_bundle

    root, movie, masks, res = binned_head
    bundle = load_bundle(root / "head")
    assert bundle.config["bin"] == 2 and bundle.manifest["bin"] == 2
    for split in (res.pairs.train, res.pairs.val, res.pairs.test):
        # crop top-left corners lie in the binned frame (48 x 48): a 16 px crop fits there
        assert split.coords[:, 1:].max() <= 48 - 16
    # labels come from the binned masks: every positive crop holds a binned event pixel in t or t+1
    bm = bin_masks(masks, 2)
    for (t, y, x), lab in zip(res.pairs.train.coords, res.pairs.train.labels):
        has = bm[t:t + 2, y:y + 16, x:x + 16].any()
        assert bool(has) == bool(lab)


def test_calibration_recomputes_the_saved_validation_logits_of_a_binned_head(binned_head):
    from tapcore.events.calibrate import validation_logits

    root, movie, masks, res = binned_head
    logits, labels = validation_logits(root / "head", movie, masks)
    np.testing.assert_array_equal(labels, res.val_labels)
    np.testing.assert_allclose(logits, res.val_logits, atol=1e-3)  # features stored as float16


@pytest.mark.slow  # a prediction and two Grad-CAMs (binned coordinates: test_binned_prediction_reports_...)
def test_prediction_and_gradcam_of_a_binned_bundle_are_in_original_pixels(binned_head):
    from tapcore.explain import ExplainConfig, explain_frame

    root, movie, _, _ = binned_head
    pred = predict_movie(movie, root / "head", PredictConfig(threshold=0.0, min_distance=8, device="cpu"))
    assert pred.prob_maps.shape == (movie.shape[0] - 1, *movie.shape[1:])
    assert pred.record["bin"] == 2
    assert pred.events["y"].between(0, movie.shape[1] - 1).all() and pred.events["x"].between(0, movie.shape[2] - 1).all()
    exp = explain_frame(movie, root / "head", ExplainConfig(frame=1, k=3, size=16, device="cpu"))
    assert exp.cam.shape == movie.shape[1:] and exp.frames.shape == (2, *movie.shape[1:])
    assert exp.record["bin"] == 2 and exp.record["region_size_px"] == 32  # 16 model px = 32 original px
    assert all(r.crop_t.shape == (32, 32) for r in exp.regions)
    loc = explain_frame(movie, root / "head", ExplainConfig(frame=1, target="location", y=50, x=61, device="cpu"))
    assert loc.cam.shape == movie.shape[1:]
