"""Verdicts (tapcore.verdicts): known answers for TAP accuracy, event heads, calibration and data shift."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tapcore.verdicts import (Verdict, bundle_verdicts, calibration_verdict, data_shift_verdict, head_verdict,
                              movie_statistics, tap_verdict, worst)


# -- TAP ------------------------------------------------------------------------------------------
def test_tap_accuracy_against_chance_with_its_standard_error():
    v = tap_verdict(0.50, 2048, 0.696)
    assert (v.level, v.title) == ("bad", "at chance")
    assert "0.500 ± 0.011 on 2048 pairs" in v.explanation and "0.696" in v.explanation
    assert "epochs" in v.next_step and "GPU" in v.next_step
    # 0.53 is 2.7 standard errors above chance on 2048 pairs, but within 1 on 256 pairs
    assert tap_verdict(0.53, 2048).title == "barely above chance"
    assert tap_verdict(0.53, 2048).level == "warn"
    assert tap_verdict(0.53, 256).title == "at chance"
    assert tap_verdict(0.80, 256).level == "ok"
    assert tap_verdict(None, None).level == "warn"


def _save(path, kind, config, metrics, calibration=None):
    from tapcore.bundle import save_bundle, write_calibration

    import torch

    save_bundle(path, kind=kind, config=config, state_dict={"w": torch.zeros(1)}, metrics=metrics, manifest={})
    if calibration is not None:
        write_calibration(path, calibration)
    return path


def test_chance_level_tap_bundle_is_at_chance(tmp_path):
    path = _save(tmp_path / "tap", "tap", {"pretrain": {"val_samples": 2048}},
                 {"final": {"val_acc": 0.50, "val_loss": 0.696}, "val_pairs": 2048})
    (v,) = bundle_verdicts(path)
    assert (v.level, v.title, v.subject) == ("bad", "at chance", "TAP features")
    assert v.line().startswith("[BAD] TAP features: at chance.")


# -- event heads ----------------------------------------------------------------------------------
def test_head_that_calls_every_window_an_event_has_collapsed():
    cm = [[0, 900], [0, 100]]  # every test window predicted class 1
    v = head_verdict({"confusion_matrix": cm, "class_names": ["none", "event"]})
    assert (v.level, v.title) == ("bad", "collapsed")
    assert "100% of the 1000 test windows 'event'" in v.explanation


def test_head_precision_at_the_base_rate_and_a_useful_head():
    # base rate 0.1; the head calls 300 windows events, 30 of them right: precision 0.10 = base rate
    at_base = head_verdict({"confusion_matrix": [[630, 270], [70, 30]], "class_names": ["none", "event"]})
    assert (at_base.level, at_base.title) == ("bad", "precision at the base rate")
    assert "precision 0.10 vs base rate 0.10" in at_base.explanation
    weak = head_verdict({"confusion_matrix": [[780, 120], [88, 12 + 0]], "class_names": ["none", "event"]})
    assert weak.level == "bad"  # 12/132 = 0.09 < base 0.10
    slight = head_verdict({"confusion_matrix": [[1700, 500], [150, 70]], "class_names": ["none", "event"]})
    # precision 70/570 = 0.123 vs base 220/2420 = 0.091 (se 0.012): 2.6 se above, but under 1.5x
    assert (slight.level, slight.title) == ("warn", "barely above the base rate")
    good = head_verdict({"confusion_matrix": [[880, 20], [20, 80]], "class_names": ["none", "event"]})
    assert (good.level, good.title) == ("ok", "learned")
    never = head_verdict({"confusion_matrix": [[800, 100, 0], [20, 60, 0], [5, 5, 0]],
                          "class_names": ["none", "division", "death"]})
    assert (never.level, never.title) == ("bad", "never predicts death")


# -- calibration ----------------------------------------------------------------------------------
def test_calibration_at_its_temperature_bound_warns():
    from tapcore.calibration import MAX_TEMPERATURE, fit_temperature

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (2000, 2))  # scores that carry no information about the labels
    labels = rng.integers(0, 2, 2000)
    calib = fit_temperature(logits, labels)
    assert calib.temperature == pytest.approx(MAX_TEMPERATURE)
    v = calibration_verdict({"temperature": calib.temperature, "bias": 0.0})
    assert (v.level, v.title) == ("warn", "hit its bound")
    assert "upper limit 100" in v.explanation
    ok = calibration_verdict({"temperature": 1.7, "bias": -1.2, "ece_before": {"top": 0.3},
                              "ece_after": {"top": 0.02}, "nll_after": 0.4})
    assert ok.level == "ok" and "ECE 0.300 → 0.020" in ok.explanation
    rejected = calibration_verdict({"temperature": 1.0, "bias": 0.0, "nll_after": 0.7})
    assert rejected.title == "fit rejected"
    assert calibration_verdict({"temperature": 2.0, "bias": 9.5}).title == "extreme bias"
    assert calibration_verdict(None).title == "not calibrated"


def test_bundle_verdicts_of_a_head_with_bound_calibration(tmp_path):
    path = _save(tmp_path / "head", "event_head", {},
                 {"test": {"confusion_matrix": [[880, 20], [20, 80]], "class_names": ["none", "event"]}},
                 {"temperature": 100.0, "bias": 0.0})
    head, calib = bundle_verdicts(path)
    assert head.level == "ok" and calib.title == "hit its bound"
    assert worst([head, calib]) is calib and worst([]) is None


# -- data shift -----------------------------------------------------------------------------------
def _blobs(seed: int, radius: float, frames: int = 6, size: int = 128, step: float = 0.5) -> np.ndarray:
    """Gaussian blobs of one radius drifting by ``step`` px per frame (uint16)."""
    rng = np.random.default_rng(seed)
    n = max(4, int(size * size / (radius * 12) ** 2))
    pos = rng.uniform(0, size, (n, 2))
    vel = rng.normal(0, step, (n, 2))
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((frames, size, size), np.float64)
    for t in range(frames):
        f = np.zeros((size, size))
        for y, x in pos + t * vel:
            f += np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * radius ** 2))
        out[t] = 100 + 1000 * f + rng.normal(0, 5, (size, size))
    return out.clip(0, 65535).astype(np.uint16)


def test_movie_statistics_measure_structure_size():
    small, large = movie_statistics(_blobs(0, 3.0)), movie_statistics(_blobs(0, 9.0))
    assert small["frames"] == 6 and small["height"] == 128 and small["dtype"] == "uint16"
    assert 2.0 < small["structure_px"] < 6.0
    assert large["structure_px"] / small["structure_px"] == pytest.approx(3.0, rel=0.3)
    assert small["skewness"] > 0  # bright blobs on a dark background
    json.dumps(small)  # JSON-able: it goes into manifest.json


def test_movie_unlike_the_training_movie_gets_a_warning():
    train = movie_statistics(_blobs(0, 3.0))
    alike = data_shift_verdict(train, movie_statistics(_blobs(1, 3.0)))
    assert (alike.level, alike.title) == ("ok", "like the training movie")
    bigger = data_shift_verdict(train, movie_statistics(_blobs(1, 9.0)))
    assert bigger.level in ("warn", "bad") and bigger.title == "unlike the training movie"
    assert "times larger" in bigger.explanation and "rescale" in bigger.next_step
    moving = data_shift_verdict(train, movie_statistics(_blobs(1, 3.0, step=6.0)))
    assert "change" in moving.explanation and moving.level in ("warn", "bad")
    assert data_shift_verdict(None, train).title == "training movie unknown"
    assert data_shift_verdict(train, train, same_movie=True).title == "the training movie"


def test_verdict_round_trip_and_levels():
    v = Verdict("warn", "t", "e.", "n", "s")
    assert Verdict.from_dict(v.to_dict()) == v
    with pytest.raises(ValueError, match="level"):
        Verdict("green", "t", "e")


# -- wiring: manifests, prediction record, CLI ----------------------------------------------------
@pytest.fixture(scope="module")
def tiny_head(tmp_path_factory):
    """A tiny A0 head trained on a small synthetic movie, the movie and masks as TIFFs."""
    from tapcore.bundle import save_bundle
    from tapcore.config import config_from_dict, config_to_dict
    from tapcore.events.train import HeadConfig, train_head
    from tapcore.io import write_tiff
    from tapcore.synthetic import SynthConfig, make_synthetic
    from tapcore.tap.model import TapConfig, TapModel

    tmp = tmp_path_factory.mktemp("tiny_head")
    tiny = TapConfig(base_channels=4, depth=1, features=4, head_channels=4)
    tap = save_bundle(tmp / "tap", kind="tap", config={"model": config_to_dict(tiny)},
                      state_dict=TapModel(tiny).state_dict())
    synth = make_synthetic(SynthConfig(frames=8, height=64, width=64, cells=6, division_rate=0.1, seed=2))
    cfg = config_from_dict(HeadConfig, {"strategy": "A0", "epochs": 1, "device": "cpu", "dataset": {
        "crop": 16, "pairs_per_frame": 20, "criterion": "any_either"}})
    res = train_head(synth.movie, synth.masks, tap, cfg, tmp / "head")
    write_tiff(tmp / "movie.tif", synth.movie)
    write_tiff(tmp / "masks.tif", synth.masks)
    return res.path, synth, tmp


def test_head_training_records_movie_statistics_and_prediction_compares(tiny_head):
    from tapcore.predict import PredictConfig, predict_movie

    head, synth, _ = tiny_head
    manifest = json.loads((head / "manifest.json").read_text())
    assert manifest["data_stats"]["frames"] == 8 and manifest["data_stats"]["structure_px"] > 0
    same = predict_movie(synth.movie, head, PredictConfig(device="cpu"))
    assert [v["title"] for v in same.record["verdicts"]] == ["the training movie"]
    other = _blobs(3, 15.0, frames=4, size=64, step=8.0)
    pred = predict_movie(other, head, PredictConfig(device="cpu"))
    (v,) = pred.record["verdicts"]
    assert v["title"] == "unlike the training movie" and v["level"] in ("warn", "bad")


def test_cli_predict_checks_itself_like_evaluate_events(tiny_head, capsys):
    """`tapcore predict --masks` reports the precision / recall / F1 that `tapcore evaluate-events`
    gives for the same events.csv and masks, and prints the verdicts."""
    from tapcore.cli import main

    head, _, tmp = tiny_head
    out = tmp / "pred"
    assert main(["predict", str(tmp / "movie.tif"), "--model", str(head), "--out", str(out), "--threshold", "0.3",
                 "--min-distance", "6", "--masks", str(tmp / "masks.tif")]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    check = printed["check"]
    assert check["n_pred"] == printed["events"] and check["n_true"] > 0
    assert any(line.startswith("[") and "event head:" in line for line in printed["verdicts"])
    assert "check against masks" in captured.err and "[OK] data: the training movie." in captured.err
    assert json.loads((out / "prediction.json").read_text())["check"] == check
    assert main(["evaluate-events", str(out / "events.csv"), "--masks", str(tmp / "masks.tif"), "--out",
                 str(tmp / "ev")]) == 0
    capsys.readouterr()
    summary = json.loads((tmp / "ev" / "summary.json").read_text())
    for key in ("tp", "fp", "fn", "precision", "recall", "f1", "n_true", "n_pred"):
        assert check[key] == summary[key], key
    # a bad masks file fails before the (long) prediction, with a one-line message
    assert main(["predict", str(tmp / "movie.tif"), "--model", str(head), "--out", str(tmp / "p2"),
                 "--masks", str(tmp / "nope.tif")]) == 2
    assert not (tmp / "p2").exists()


@pytest.mark.slow  # pretrain + train-head through the CLI
def test_cli_pretrain_and_train_head_print_a_verdict(tmp_path, capsys):
    from tapcore.cli import main
    from tapcore.io import write_tiff
    from tapcore.synthetic import SynthConfig, make_synthetic

    synth = make_synthetic(SynthConfig(frames=8, height=64, width=64, cells=6, division_rate=0.1, seed=2))
    write_tiff(tmp_path / "movie.tif", synth.movie)
    write_tiff(tmp_path / "masks.tif", synth.masks)
    (tmp_path / "cfg.json").write_text(json.dumps({"model": {"base_channels": 4, "depth": 1, "features": 4,
                                                             "head_channels": 4}}))
    assert main(["pretrain", str(tmp_path / "movie.tif"), "--out", str(tmp_path / "tap"), "--epochs", "1",
                 "--samples-per-epoch", "8", "--batch-size", "4", "--patch", "16", "--val-samples", "16",
                 "--device", "cpu", "--config", str(tmp_path / "cfg.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    # one epoch on 8 pairs cannot beat chance by 2 standard errors of 16 validation pairs (0.125)
    assert any(line.startswith("[BAD] TAP features: at chance.") for line in lines), lines[-3:]
    assert main(["train-head", str(tmp_path / "movie.tif"), str(tmp_path / "masks.tif"), "--tap", str(tmp_path / "tap"),
                 "--strategy", "A0", "--epochs", "1", "--crop", "16", "--pairs-per-frame", "20", "--criterion",
                 "any_either", "--device", "cpu", "--out", str(tmp_path / "head")]) == 0
    lines = capsys.readouterr().out.splitlines()
    from tapcore.verdicts import bundle_verdicts

    assert lines[-1] == bundle_verdicts(tmp_path / "head")[0].line() and lines[-1].startswith("[")
