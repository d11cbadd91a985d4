"""Temperature scaling, ECE and reliability data (tapcore.calibration)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tapcore import calibration as C
from tapcore.events.calibrate import calibrate_bundle


def _overconfident(n: int = 4000, scale: float = 5.0, offset: float = 0.0, seed: int = 0):
    """Binary data whose true logit is ``s + offset``; the model reports ``scale * s`` (over-confident)."""
    rng = np.random.default_rng(seed)
    s = rng.normal(0.0, 2.0, n)
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-(s + offset)))).astype(np.int64)
    logits = np.stack([np.zeros(n), scale * s], axis=1)  # (N, 2)
    return logits, labels


def test_temperature_keeps_argmax_and_lowers_nll():
    logits, labels = _overconfident()
    calib = C.fit_temperature(logits, labels)
    assert calib.bias == 0.0
    assert calib.temperature == pytest.approx(5.0, rel=0.1)  # the model's over-confidence factor
    after = calib.apply_numpy(logits)
    np.testing.assert_array_equal(after.argmax(1), logits.argmax(1))
    assert C.nll(logits, labels, calib) < C.nll(logits, labels) - 0.1
    p0, p1 = C.softmax_np(logits), C.softmax_np(after)
    assert C.ece(p1, labels, mode="top") < C.ece(p0, labels, mode="top")
    assert C.ece(p1, labels, mode="positive") < C.ece(p0, labels, mode="positive")


def test_temperature_three_classes_keeps_argmax():
    rng = np.random.default_rng(1)
    true = rng.normal(0, 1.5, (3000, 3))
    labels = np.array([rng.choice(3, p=np.exp(r) / np.exp(r).sum()) for r in true])
    logits = 4.0 * true
    calib = C.fit_temperature(logits, labels)
    assert calib.temperature > 2.0
    np.testing.assert_array_equal(calib.apply_numpy(logits).argmax(1), logits.argmax(1))
    assert C.nll(logits, labels, calib) < C.nll(logits, labels)


def test_bias_term_recovers_rare_event_offset():
    logits, labels = _overconfident(n=8000, scale=3.0, offset=-2.0, seed=2)
    t_only = C.fit_temperature(logits, labels)
    both = C.fit_temperature(logits, labels, bias=True)
    assert both.temperature == pytest.approx(3.0, rel=0.15)
    assert both.bias == pytest.approx(-2.0, abs=0.3)
    assert C.nll(logits, labels, both) < C.nll(logits, labels, t_only)


def test_well_calibrated_model_keeps_temperature_near_one():
    logits, labels = _overconfident(scale=1.0, seed=3)
    assert C.fit_temperature(logits, labels).temperature == pytest.approx(1.0, abs=0.1)


def test_apply_bias_on_event_classes_only():
    calib = C.Calibration(2.0, 0.5)
    out = calib.apply(torch.tensor([[2.0, 4.0, -2.0]]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 2.5, -0.5]]))
    # along a channel axis of dense maps (B, K, H, W)
    maps = torch.ones(1, 3, 2, 2)
    dense = calib.apply(maps, dim=1)
    torch.testing.assert_close(dense[0, :, 0, 0], torch.tensor([0.5, 1.0, 1.0]))
    # per-class biases (calibration.json may store a list)
    per_class = C.calibration_from_dict({"temperature": 2.0, "bias": [0.0, 1.0, -1.0]})
    torch.testing.assert_close(per_class.apply(torch.tensor([[2.0, 4.0, -2.0]])), torch.tensor([[1.0, 3.0, -2.0]]))
    with pytest.raises(ValueError, match="per-class"):
        per_class.apply(torch.zeros(1, 2))


# Hand-worked example: (p(event), label) pairs, 15 bins of width 1/15.
P1 = np.array([0.95, 0.94, 0.25, 0.62, 0.42, 0.05])
Y = np.array([1, 0, 0, 1, 1, 0])
PROBS = np.stack([1 - P1, P1], axis=1)


def test_ece_top_label_by_hand():
    # top-label confidence / correct: .95/1 .94/0 .75/1 .62/1 .58/0 .95/1
    # bin 14 (14/15, 1]: {.95, .94, .95} conf .946667 acc 2/3 -> gap .28 (x3)
    # bin 11: .75 vs 1 -> .25; bin 9: .62 vs 1 -> .38; bin 8: .58 vs 0 -> .58
    assert C.ece(PROBS, Y, mode="top") == pytest.approx((3 * 0.28 + 0.25 + 0.38 + 0.58) / 6)
    table = C.reliability(PROBS, Y, mode="top")
    assert len(table) == 15
    assert table["count"].tolist() == [0] * 8 + [1, 1, 0, 1, 0, 0, 3]
    assert table.loc[14, "confidence"] == pytest.approx(2.84 / 3)
    assert table.loc[14, "accuracy"] == pytest.approx(2 / 3)
    assert table.loc[8, "accuracy"] == 0.0 and table.loc[8, "confidence"] == pytest.approx(0.58)
    assert math.isnan(table.loc[0, "confidence"]) and math.isnan(table.loc[0, "accuracy"])
    assert table.loc[3, "bin_lower"] == pytest.approx(3 / 15) and table.loc[3, "bin_upper"] == pytest.approx(4 / 15)


def test_ece_positive_class_by_hand():
    # event probability / is event: .95/1 .94/0 .25/0 .62/1 .42/1 .05/0
    # bin 14: conf .945 acc .5 -> .445 (x2); bin 3: .25; bin 9: .38; bin 6: .58; bin 0: .05
    assert C.ece(PROBS, Y, mode="positive") == pytest.approx((2 * 0.445 + 0.25 + 0.38 + 0.58 + 0.05) / 6)
    table = C.reliability(PROBS, Y, mode="positive")
    assert table["count"].tolist() == [1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 2]
    assert table.loc[14, "confidence"] == pytest.approx(0.945)
    assert table.loc[14, "accuracy"] == pytest.approx(0.5)
    assert table.loc[6, "accuracy"] == 1.0


def test_bin_edges_are_right_closed():
    probs = np.array([[0.0, 1.0], [1.0, 0.0], [0.6, 0.4]])  # positive conf 1.0, 0.0, 0.4 (an edge: 6/15)
    table = C.reliability(probs, np.array([1, 0, 1]), n_bins=15, mode="positive")
    assert table.loc[14, "count"] == 1 and table.loc[0, "count"] == 1
    assert table.loc[5, "count"] == 1  # 0.4 lies in (5/15, 6/15]


def test_report_and_dict_round_trip():
    logits, labels = _overconfident(n=500)
    calib = C.fit_temperature(logits, labels)
    report = C.calibration_report(logits, labels, calib)
    assert report["nll_after"] < report["nll_before"]
    assert report["accuracy_after"] == report["accuracy_before"]
    assert set(report["ece_before"]) == {"top", "positive"}
    rel = report["reliability_after"]["top"]
    assert sum(rel["count"]) == 500 and len(rel["confidence"]) == 15
    frame = C.reliability_frame(rel)
    assert frame["count"].sum() == 500
    assert C.calibration_from_dict({"temperature": calib.temperature, "bias": 0.0}) == calib


@pytest.mark.parametrize("bad", [{"bias": 0.1}, {"temperature": -1.0}, {"temperature": "hot"},
                                 {"temperature": float("nan")}, [1.5]])
def test_invalid_calibration_dicts_rejected(bad):
    with pytest.raises(ValueError, match="calibrat"):
        C.calibration_from_dict(bad)


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="labels must lie"):
        C.fit_temperature(np.zeros((3, 2)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        C.fit_temperature(np.zeros(3), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="unknown ECE mode"):
        C.ece(PROBS, Y, mode="bottom")
    with pytest.raises(ValueError, match="empty"):
        C.fit_temperature(np.zeros((0, 2)), np.zeros(0, np.int64))


def test_calibrate_bundle_writes_validated_file_applied_by_prediction(tmp_path):
    """calibrate_bundle fits on the bundle's saved validation logits; load + predict apply it."""
    from tapcore.bundle import load_bundle
    from tapcore.detector import EventDetector
    from tapcore.predict import PredictConfig, predict_movie

    path = _head_bundle(tmp_path / "head", balance_train=None)
    logits, labels = _overconfident(n=2000, scale=4.0)
    np.save(path / "val_logits.npy", logits.astype(np.float32))
    np.save(path / "val_labels.npy", labels)
    res = calibrate_bundle(path)
    assert res.calibration.temperature == pytest.approx(4.0, rel=0.15)
    rep = res.report
    assert rep["source"] == "val_logits.npy" and rep["n_samples"] == 2000
    assert rep["nll_after"] < rep["nll_before"] and rep["ece_after"]["top"] < rep["ece_before"]["top"]
    assert len(rep["reliability_before"]["positive"]["count"]) == 15
    stored = load_bundle(path).calibration
    assert stored["temperature"] == pytest.approx(res.calibration.temperature)
    loaded = EventDetector.load(path)
    assert loaded.calibration["temperature"] == stored["temperature"]
    movie = (np.random.default_rng(0).random((2, 24, 24)) * 100).astype(np.float32)
    pred = predict_movie(movie, path, PredictConfig(threshold=1.0))
    assert pred.record["calibration"]["applied"] is True
    assert pred.record["calibration"]["temperature"] == pytest.approx(res.calibration.temperature)
    assert pred.record["model_id"].startswith("event_head-")
    # a damaged calibration.json is refused on load with a clear message
    (path / "calibration.json").write_text('{"temperature": -2}')
    with pytest.raises(ValueError, match="temperature"):
        load_bundle(path)


def test_temperature_stays_bounded_on_uninformative_scores(caplog):
    """Scores unrelated to the labels would send an unbounded T to ~1e10 (a flat map); it stops at the bound."""
    from tapcore.calibration import MAX_TEMPERATURE, fit_temperature

    rng = np.random.default_rng(0)
    logits = rng.normal(scale=50.0, size=(400, 2))
    labels = rng.integers(0, 2, size=400)
    with caplog.at_level("WARNING", logger="tapcore.calibration"):
        cal = fit_temperature(logits, labels)
    assert cal.temperature == pytest.approx(MAX_TEMPERATURE)
    assert "upper bound" in caplog.text
    # the ranking of scores survives calibration
    calibrated = cal.apply_numpy(logits)
    assert np.array_equal(np.argsort(logits[:, 1] - logits[:, 0]), np.argsort(calibrated[:, 1] - calibrated[:, 0]))


def _head_bundle(path, balance_train: bool | None):
    """A tiny linear event-head bundle whose config records (or not) a class-balanced training set."""
    from tapcore.bundle import save_bundle
    from tapcore.config import config_to_dict
    from tapcore.events.heads import build_head
    from tapcore.events.model import EventModel
    from tapcore.tap.model import TapConfig, TapModel

    tiny = TapConfig(base_channels=4, depth=2, features=8)
    torch.manual_seed(0)
    model = EventModel(TapModel(tiny).backbone, build_head("linear", in_channels=8, n_classes=2, crop=16))
    config = {"tap_config": config_to_dict(tiny), "head": "linear", "crop": 16, "in_channels": 8, "n_classes": 2,
              "class_names": ["none", "event"], "normalize": {"pmin": 1.0, "pmax": 99.8}}
    if balance_train is not None:
        config["head_config"] = {"dataset": {"balance_train": balance_train}}
    return save_bundle(path, kind="event_head", config=config, state_dict=model.state_dict(), metrics={},
                       manifest={"movie_sha256": "abc"})


def test_auto_bias_corrects_the_class_prior_of_a_balanced_trained_head(tmp_path):
    """A head trained on balanced classes but validated on rare events (true logit s - 4, reported 3 s):
    "auto" fits T ~ 3 and b ~ -4; temperature alone cannot move the prior and stays badly calibrated."""
    logits, labels = _overconfident(n=6000, scale=3.0, offset=-4.0, seed=1)
    assert 0.02 < labels.mean() < 0.2  # rare events
    path = _head_bundle(tmp_path / "head", balance_train=True)
    np.save(path / "val_logits.npy", logits.astype(np.float32))
    np.save(path / "val_labels.npy", labels)
    auto = calibrate_bundle(path)
    assert auto.report["bias_fitted"] is True and auto.report["method"] == "temperature+bias"
    assert "balanced" in auto.report["bias_reason"]
    assert auto.calibration.temperature == pytest.approx(3.0, rel=0.15)
    assert auto.calibration.bias == pytest.approx(-4.0, abs=0.4)
    off = calibrate_bundle(path, bias="off", write=False)
    assert off.report["bias_fitted"] is False and off.calibration.bias == 0.0
    assert auto.report["ece_after"]["positive"] < 0.02 < off.report["ece_after"]["positive"]
    assert auto.report["nll_after"] < off.report["nll_after"]
    # the written file is the auto fit, and prediction applies its bias
    assert C.calibration_from_dict(json.loads((path / "calibration.json").read_text())).bias == pytest.approx(
        auto.calibration.bias)


def test_auto_bias_stays_off_without_a_prior_shift(tmp_path):
    logits, labels = _overconfident(n=2000, scale=4.0)  # about half events
    path = _head_bundle(tmp_path / "balanced", balance_train=True)
    np.save(path / "val_logits.npy", logits.astype(np.float32))
    np.save(path / "val_labels.npy", labels)
    res = calibrate_bundle(path, write=False)
    assert res.report["bias_fitted"] is False and "close to balanced" in res.report["bias_reason"]
    # a head whose config does not say it was trained on balanced classes gets no automatic bias
    rare_logits, rare_labels = _overconfident(n=2000, scale=3.0, offset=-4.0)
    path = _head_bundle(tmp_path / "unknown", balance_train=None)
    np.save(path / "val_logits.npy", rare_logits.astype(np.float32))
    np.save(path / "val_labels.npy", rare_labels)
    assert calibrate_bundle(path, write=False).report["bias_fitted"] is False
    assert calibrate_bundle(path, bias="on", write=False).report["bias_fitted"] is True
    with pytest.raises(ValueError, match="'auto', 'on' or 'off'"):
        calibrate_bundle(path, bias="maybe", write=False)
