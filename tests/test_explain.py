"""Grad-CAM maps and top-k regions (tapcore.explain)."""

from __future__ import annotations

import gc
import json
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from tapcore.bundle import save_bundle
from tapcore.config import config_to_dict
from tapcore.events.dense import dense_event_logits
from tapcore.events.heads import build_head
from tapcore.events.model import EventModel
from tapcore.explain import (REGION_COLUMNS, ExplainConfig, box_scores, explain_frame, gradcam_event, gradcam_tap,
                             top_regions, write_explanation)
from tapcore.predict import DensePredictor, PredictConfig
from tapcore.tap.model import TapConfig, TapModel

TINY = TapConfig(base_channels=4, depth=2, features=8, head_channels=8)


def _tap(seed: int = 0) -> TapModel:
    torch.manual_seed(seed)
    return TapModel(TapConfig(**config_to_dict(TINY))).eval()


def _event(head: str = "resnet", crop: int = 16, seed: int = 0) -> EventModel:
    tap = _tap(seed)
    model = EventModel(tap.backbone, build_head(head, in_channels=TINY.features, n_classes=2, crop=crop))
    model.config = {"tap_config": config_to_dict(TINY), "head": head, "crop": crop, "in_channels": TINY.features,
                    "n_classes": 2, "class_names": ["none", "event"], "normalize": {"pmin": 1.0, "pmax": 99.8}}
    return model.eval()


def _frames(height: int = 64, width: int = 80, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((2, height, width)).astype(np.float32)


def _n_hooks(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) for m in module.modules())


def _manual_gradcam(wrapper: torch.nn.Module, layer: torch.nn.Module, frames: np.ndarray) -> np.ndarray:
    """Grad-CAM by hand: the pair's folded activation A (2C, Y, X), weights = spatial mean of
    d target / dA, map = ReLU(sum_c w_c A_c), min-max scaled twice with a 1e-7 guard (as
    pytorch_grad_cam does: once per layer, once after aggregating layers)."""
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    try:
        out = wrapper(torch.from_numpy(frames)[None])
    finally:
        handle.remove()
    a = store["a"]  # (2, C, Y, X)
    grad = torch.autograd.grad(out[0, 0], a)[0]
    a, grad = a.reshape(1, -1, *a.shape[2:]), grad.reshape(1, -1, *grad.shape[2:])  # (1, 2C, Y, X)
    cam = torch.relu((grad.mean(dim=(2, 3))[:, :, None, None] * a).sum(1))[0].detach().numpy()
    for _ in range(2):
        cam = cam - cam.min()
        cam = cam / (1e-7 + cam.max())
    return cam


@pytest.mark.slow  # TAP Grad-CAM by hand (the same hand computation for an event model stays fast below)
def test_gradcam_tap_has_frame_shape_and_matches_hand_computation():
    from tapcore.explain import _TapArrow

    tap = _tap(3)
    frames = _frames(64, 80)
    frames[1, 20:40, 30:50] += 2.0  # something changes between t and t+1
    cam = gradcam_tap(tap, frames)
    assert cam.shape == (64, 80) and cam.dtype == np.float32
    assert np.isfinite(cam).all() and cam.min() >= 0.0 and cam.max() <= 1.0 + 1e-6
    assert _n_hooks(tap) == 0  # hooks released
    wrapper = _TapArrow(tap)
    expected = _manual_gradcam(wrapper, wrapper.probe, frames)
    assert expected.max() > 0.5  # a non-trivial map for this seed
    np.testing.assert_allclose(cam, expected, atol=1e-4)


# "sum" stays in the fast loop; the location target: test_location_target_depends_on_the_location
@pytest.mark.parametrize("target", ["sum", pytest.param("location", marks=pytest.mark.slow)])
def test_gradcam_event_has_frame_shape_and_matches_hand_computation(target):
    from tapcore.explain import _EventEvidence

    model = _event(seed=1)
    frames = _frames(48, 60, 1)
    loc = (20, 30) if target == "location" else None
    cam = gradcam_event(model, frames, target=target, location=loc)
    assert cam.shape == (48, 60) and cam.dtype == np.float32 and np.isfinite(cam).all()
    assert _n_hooks(model) == 0
    assert all(p.grad is None for p in model.parameters())
    wrapper = _EventEvidence(model, target, loc)
    expected = _manual_gradcam(wrapper, wrapper.probe, frames)
    assert expected.max() > 0.5  # a non-trivial map for this seed
    np.testing.assert_allclose(cam, expected, atol=1e-4)


@pytest.mark.parametrize("head", ["resnet", pytest.param("linear", marks=pytest.mark.slow),
                                  pytest.param("resnet_order", marks=pytest.mark.slow)])
def test_dense_event_logits_match_prediction(head):
    """The differentiable evidence Grad-CAM explains is the map tapcore.predict computes."""
    model = _event(head)
    frames = _frames(40, 50, 2)
    with torch.no_grad():
        z = model.backbone(torch.from_numpy(frames)[:, None])[None]  # (1, 2, C, Y, X)
        dense = dense_event_logits(model.head, z)
    ref = DensePredictor(model, PredictConfig(), "cpu").movie_logits(frames)
    torch.testing.assert_close(dense, ref, atol=2e-5, rtol=1e-4)


def test_location_target_depends_on_the_location():
    model = _event(seed=1)
    frames = _frames(64, 64, 3)
    a = gradcam_event(model, frames, "location", (12, 12))
    b = gradcam_event(model, frames, "location", (50, 50))
    assert not np.allclose(a, b)
    with pytest.raises(ValueError, match="outside"):
        gradcam_event(model, frames, "location", (70, 10))
    with pytest.raises(ValueError, match="needs location"):
        gradcam_event(model, frames, "location")


def test_box_scores_by_hand():
    cam = np.zeros((6, 7))
    cam[1:3, 2:4] = 1.0
    s = box_scores(cam, 2)  # box centred at (y, x) has top-left (y - 1, x - 1)
    assert s[2, 3] == 1.0 and s[1, 1] == 0.0 and s[3, 3] == 0.5 and s[5, 6] == 0.0
    assert s[0].tolist() == [-np.inf] * 7 and s[:, 0].tolist() == [-np.inf] * 6


def test_top_regions_find_planted_spots_without_overlap():
    cam = np.zeros((200, 240), np.float32)
    spots = [(30, 40, 1.0), (100, 150, 0.9), (160, 60, 0.8), (35, 200, 0.7)]
    for y, x, v in spots:
        cam[y - 24:y + 24, x - 24:x + 24] = v  # exactly one box position covers a spot fully
    regions = top_regions(cam, k=8, size=48)
    assert 4 < len(regions) <= 8
    assert [(r.y, r.x) for r in regions[:4]] == [(y, x) for y, x, _ in spots]
    scores = [r.score for r in regions]
    assert scores == sorted(scores, reverse=True) and [r.rank for r in regions] == list(range(1, len(regions) + 1))
    for i, a in enumerate(regions):
        assert 0 <= a.y0 and a.y0 + 48 <= 200 and 0 <= a.x0 and a.x0 + 48 <= 240
        for b in regions[i + 1:]:
            assert abs(a.y0 - b.y0) >= 48 or abs(a.x0 - b.x0) >= 48  # boxes do not overlap


def test_top_regions_on_random_cam_never_overlap():
    cam = np.random.default_rng(0).random((150, 170))
    regions = top_regions(cam, k=8, size=40)
    boxes = np.zeros(cam.shape, np.int64)
    for r in regions:
        boxes[r.y0:r.y0 + r.size, r.x0:r.x0 + r.size] += 1
    assert boxes.max() == 1 and len(regions) >= 5
    with pytest.raises(ValueError, match="does not fit"):
        top_regions(cam, size=200)


@pytest.mark.slow  # seven Grad-CAM calls under tracemalloc
def test_repeated_calls_do_not_grow_memory():
    model = _event()
    frames = _frames(32, 40, 4)
    for _ in range(2):  # warm-up (lazy imports, allocator caches)
        gradcam_event(model, frames)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(5):
            gradcam_event(model, frames)
            assert _n_hooks(model) == 0
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert grown < 2_000_000, f"memory grew by {grown} bytes over 5 Grad-CAM calls"


@pytest.mark.slow  # Grad-CAM of TAP and event bundles, with all files written
def test_explain_frame_on_bundles_and_written_files(tmp_path):
    rng = np.random.default_rng(5)
    movie = (rng.random((3, 72, 90)) * 4000).astype(np.uint16)
    tap = _tap(1)
    tap_dir = save_bundle(tmp_path / "tap", kind="tap", config={"model": config_to_dict(TINY),
                                                                "normalize": {"pmin": 1.0, "pmax": 99.8}},
                          state_dict=tap.state_dict(), metrics={}, manifest={})
    exp = explain_frame(movie, tap_dir, ExplainConfig(frame=1, k=4, size=24))
    assert exp.cam.shape == (72, 90) and exp.record["target"] == "time_arrow" and exp.record["next_frame"] == 2
    assert len(exp.regions) == 4
    r = exp.regions[0]
    assert r.crop_t.shape == (24, 24) and r.crop_t1.shape == (24, 24)
    np.testing.assert_allclose(r.crop_t1, exp.frames[1, r.y0:r.y0 + 24, r.x0:r.x0 + 24])

    model = _event("resnet", 16, seed=2)
    ev_dir = save_bundle(tmp_path / "head", kind="event_head", config=model.config,
                         state_dict=model.state_dict(), metrics={}, manifest={})
    exp2 = explain_frame(movie, ev_dir, ExplainConfig(frame=0, k=3, size=16, target="location", y=30, x=40))
    assert exp2.cam.shape == (72, 90) and exp2.record["location"] == [30, 40]
    paths = write_explanation(exp2, tmp_path / "out")
    assert tifffile.imread(paths["cam"]).shape == (72, 90)
    table = pd.read_csv(paths["regions"])
    assert list(table.columns) == REGION_COLUMNS and len(table) == 3
    npz = np.load(paths["npz"])
    assert npz["crops_t"].shape == (3, 16, 16) and npz["crops_t1"].shape == (3, 16, 16)
    assert paths["png"].read_bytes()[:4] == b"\x89PNG" and paths["regions_png"].is_file()
    record = json.loads(paths["record"].read_text())
    assert record["model_kind"] == "event_head" and len(record["regions"]) == 3
    with pytest.raises(ValueError, match="no next frame"):
        explain_frame(movie, ev_dir, ExplainConfig(frame=2))
