"""Duration estimates (tapcore.estimate): known answers with recorded rates, scaling, the probe cache."""

from __future__ import annotations

import math

import pytest

import tapcore.estimate as E
from tapcore.events.dataset import CropPairConfig
from tapcore.events.train import HeadConfig
from tapcore.tap.model import TapConfig
from tapcore.tap.train import PretrainConfig

TINY = TapConfig(base_channels=4, depth=1, features=4, head_channels=4)


def _cfg(**kw) -> PretrainConfig:
    base = dict(patch=16, batch_size=100, epochs=2, samples_per_epoch=1000, val_samples=300, device="cpu", model=TINY)
    base.update(kw)
    return PretrainConfig(**base)


def test_pretrain_estimate_with_a_recorded_rate():
    est = E.estimate_pretrain(_cfg(), "cpu", pairs_per_s=100.0)
    # 2 epochs x 10 steps x 100 pairs = 2000 training pairs; 2 x 300 validation pairs at a third of the cost
    assert (est.train_pairs, est.eval_pairs) == (2000, 600)
    assert est.seconds == pytest.approx((2000 + 600 / 3) / 100)
    assert est.source == "recorded" and est.device == "cpu" and est.pairs_per_s == 100.0
    assert est.summary() == "Estimated duration on cpu: ~22 s (recorded: 100.0 pairs/s)"
    assert "2,000 training pairs" in est.explanation
    assert E.estimate_pretrain(_cfg(epochs=6), "cpu", pairs_per_s=100.0).seconds == pytest.approx(3 * est.seconds)
    with pytest.raises(ValueError, match="pairs_per_s must be > 0"):
        E.estimate_pretrain(_cfg(), "cpu", pairs_per_s=0.0)


def test_measured_estimate_scales_with_epochs_and_samples_and_measures_once(monkeypatch, one_torch_thread):
    E.clear_cache()
    calls = []
    real = E._timed
    monkeypatch.setattr(E, "_timed", lambda step, device, steps: calls.append(1) or real(step, device, steps))
    a = E.estimate_pretrain(_cfg(), "cpu", steps=1)
    assert a.source == "measured" and a.pairs_per_s > 0 and math.isfinite(a.seconds)
    b = E.estimate_pretrain(_cfg(epochs=4), "cpu", steps=1)
    c = E.estimate_pretrain(_cfg(samples_per_epoch=3000, val_samples=900), "cpu", steps=1)
    assert len(calls) == 1  # epochs and pairs per epoch do not change the rate: one probe serves all three
    assert b.seconds == pytest.approx(2 * a.seconds) and c.seconds == pytest.approx(3 * a.seconds)
    E.estimate_pretrain(_cfg(patch=24), "cpu", steps=1)  # another patch size: a new probe
    assert len(calls) == 2


def test_head_estimate_with_recorded_rates():
    cfg = HeadConfig(strategy="A0", epochs=10, device="cpu", dataset=CropPairConfig(crop=16))
    est = E.estimate_head(cfg, 500, "cpu", n_val=3000, n_test=100, movie_shape=(11, 100, 100), pairs_per_s=1000.0,
                          pixels_per_s=11_000.0)
    # training 10 x 500; evaluation 10 x 2000 (per-epoch validation subset) + 3000 + 100; features 110,000 px
    assert (est.train_pairs, est.eval_pairs) == (5000, 23_100)
    assert est.extra_seconds == pytest.approx(10.0)
    assert est.seconds == pytest.approx(5000 / 1000 + 23_100 / 3 / 1000 + 10.0)
    # end-to-end strategies have no separate feature pass; default epochs follow the head (30 for ResNet heads)
    c2 = E.estimate_head(HeadConfig(strategy="C2", device="cpu"), 500, "cpu", movie_shape=(11, 100, 100),
                         pairs_per_s=1000.0)
    assert c2.extra_seconds == 0 and c2.train_pairs == 30 * 500


def test_head_probe_runs_the_chosen_head(one_torch_thread):
    E.clear_cache()
    for strategy in ("A0", "A2", "C2"):
        cfg = HeadConfig(strategy=strategy, device="cpu", dataset=CropPairConfig(crop=16), feature_margin=4)
        rate = E.measure_head_rate(cfg, "cpu", {"base_channels": 4, "depth": 1, "features": 4}, steps=1, batch=2)
        assert rate > 0 and math.isfinite(rate)
    assert E.measure_feature_rate({"base_channels": 4, "depth": 1, "features": 4}, "cpu", side=32) > 0


def test_format_duration():
    assert [E.format_duration(s) for s in (0.2, 40, 600, 5400, 3 * 3600, 5 * 86400)] == \
        ["1 s", "40 s", "10 min", "1.5 h", "3.0 h", "5.0 days"]
    assert E.format_duration(float("inf")) == "unknown"


def test_worker_device_without_workers(tmp_path, monkeypatch):
    monkeypatch.setenv("TAPCORE_WORKER_DEVICE", "cpu")
    assert E.worker_device(tmp_path) == "cpu"
    assert E.worker_device(None) == "cpu"
