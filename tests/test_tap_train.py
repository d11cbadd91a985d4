"""TAP pretraining: learns the arrow of time on a synthetic movie, exact resume, metrics, bundle, CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from tapcore.bundle import load_bundle
from tapcore.detector import TapFeatures
from tapcore.progress import read_metrics
from tapcore.synthetic import SynthConfig, make_synthetic
from tapcore.tap.data import AugmentConfig
from tapcore.tap.model import TapConfig
from tapcore.tap.train import CHECKPOINT, PretrainConfig, load_checkpoint, pretrain

TINY_MODEL = TapConfig(base_channels=4, depth=1, features=4, head_channels=4)
# fast-cycling synthetic nuclei: they grow, brighten, divide and die within a few frames
FAST = dict(height=64, width=64, cells=10, radius_min=3, radius_max=7, division_rate=0.3, death_rate=0.05,
            min_cycle_frames=3, max_cells=40, mitosis_frames=3)


def _tiny_cfg(**kw) -> PretrainConfig:
    base = dict(patch=16, batch_size=4, epochs=2, samples_per_epoch=8, lr=1e-3, device="cpu", val_samples=8,
                val_batch_size=8, model=TINY_MODEL, log_every=1)
    base.update(kw)
    return PretrainConfig(**base)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def movie() -> np.ndarray:
    return make_synthetic(SynthConfig(seed=1, frames=8, **FAST)).movie


@pytest.mark.slow  # trains TAP until it beats chance
def test_short_cpu_pretraining_beats_chance_on_a_synthetic_movie(tmp_path):
    """48 steps of 16 pairs (32 px, all augmentations) on one synthetic movie, validated on another.

    Chance is 0.5. Measured on the development machine: val acc 0.645, 0.758, 0.758, 0.895 after
    epochs 1-4 (seed 0).
    """
    train = make_synthetic(SynthConfig(seed=1, frames=12, **FAST)).movie
    val = make_synthetic(SynthConfig(seed=2, frames=12, **FAST)).movie
    cfg = PretrainConfig(patch=32, batch_size=16, epochs=4, samples_per_epoch=16 * 12, lr=1e-2, device="cpu",
                         val_samples=256, model=TapConfig(base_channels=8, depth=2, features=16, head_channels=16),
                         log_every=100, seed=0)
    result = pretrain(train, cfg, tmp_path / "tap", val_movie=val)
    accs = [h["val_acc"] for h in result.history]
    assert accs[-1] >= 0.7, accs
    assert result.history[-1]["train_acc"] > 0.7


def test_resume_continues_exactly_where_it_stopped(tmp_path, movie):
    straight = pretrain(movie, _tiny_cfg(epochs=2), tmp_path / "a")
    # the same run, stopped after its first epoch (time budget), then resumed
    first = pretrain(movie, _tiny_cfg(epochs=2, max_time_s=1e-6), tmp_path / "b")
    assert len(first.history) == 1
    resumed = pretrain(movie, _tiny_cfg(epochs=2), tmp_path / "b", resume=True)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    keys = ("train_loss", "train_decorr", "train_acc", "val_loss", "val_decorr", "val_acc", "lr")
    assert [{k: h[k] for k in keys} for h in straight.history] == [{k: h[k] for k in keys} for h in resumed.history]
    epochs = [r["epoch"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert epochs == [1, 2]


def test_resume_restores_an_epoch_line_lost_between_checkpoint_and_log(tmp_path, movie):
    """A kill right after epoch 1's checkpoint and before its metrics line: the resumed run writes it."""
    pretrain(movie, _tiny_cfg(epochs=2, max_time_s=1e-6), tmp_path / "b")
    log = tmp_path / "b" / "metrics.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(x for x in lines if '"kind": "epoch"' not in x))  # the epoch-1 line never made it
    resumed = pretrain(movie, _tiny_cfg(epochs=2), tmp_path / "b", resume=True)
    epochs = [r for r in read_metrics(log) if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert epochs[0]["val_acc"] == resumed.history[0]["val_acc"]


def test_metrics_checkpoint_bundle_and_progress(tmp_path, movie):
    records = []
    result = pretrain(movie, _tiny_cfg(epochs=1, seed=5), tmp_path / "tap", progress=records.append)
    kinds = [r["kind"] for r in records]
    assert kinds == ["step", "step", "epoch", "done"]
    epoch = records[2]
    for key in ("train_loss", "train_decorr", "train_acc", "val_loss", "val_decorr", "val_acc", "lr", "epoch",
                "epochs", "elapsed_s", "pairs_per_s"):
        assert key in epoch, key
    assert 0.0 <= epoch["val_acc"] <= 1.0 and epoch["stage"] == "pretrain"
    assert read_metrics(tmp_path / "tap" / "metrics.jsonl") == json.loads(json.dumps(records))
    ckpt = load_checkpoint(tmp_path / "tap" / CHECKPOINT)  # weights_only=True inside
    assert ckpt["epoch"] == 1 and set(ckpt["rng"]) >= {"sampler", "torch"}
    assert {"model", "optimizer", "scheduler", "history"} <= set(ckpt)
    bundle = load_bundle(tmp_path / "tap", kind="tap")
    m = bundle.manifest
    from tapcore.utils import sha256_array

    assert m["data_sha256"] == sha256_array(movie) and m["seed"] == 5 and m["device"] == "cpu"
    assert {"torch", "numpy", "python", "tapcore", "created"} <= set(m)
    assert bundle.config["pretrain"]["seed"] == 5 and bundle.config["model"]["base_channels"] == 4
    assert bundle.metrics["final"]["val_acc"] == epoch["val_acc"]
    # held-out validation: the last ceil(0.1 * 8) = 2 frames (validation pairs come from frames 6-7 only)
    assert bundle.metrics["validation"]["frames"] == [6, 8] and m["train_frames"] == [0, 6]
    model = TapFeatures.load(tmp_path / "tap").model
    x = torch.randn(2, 2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), result.model(x))


def test_same_seed_gives_the_same_model(tmp_path, movie):
    a = pretrain(movie, _tiny_cfg(epochs=1), tmp_path / "a").model.state_dict()
    # a fresh (not resumed) run into the same folder replaces the bundle and starts a fresh metrics log
    b = pretrain(movie, _tiny_cfg(epochs=1), tmp_path / "a").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["kind"] for r in read_metrics(tmp_path / "a" / "metrics.jsonl")] == ["step", "step", "epoch", "done"]


def test_bad_inputs_raise_clear_errors(tmp_path, movie):
    with pytest.raises(ValueError, match="smaller patch"):
        pretrain(movie, _tiny_cfg(patch=128), tmp_path / "x")
    with pytest.raises(ValueError, match=r"\(T, Y, X\)"):
        pretrain(movie[0], _tiny_cfg(), tmp_path / "x")
    with pytest.raises(ValueError, match="validation movie"):
        pretrain(movie[:3], _tiny_cfg(), tmp_path / "x")
    with pytest.raises(ValueError, match="batch_size"):
        pretrain(movie, _tiny_cfg(batch_size=0), tmp_path / "x")
    pretrain(movie, _tiny_cfg(epochs=1), tmp_path / "r")
    with pytest.raises(ValueError, match="another movie"):
        pretrain(movie[::-1].copy(), _tiny_cfg(epochs=2), tmp_path / "r", resume=True)
    with pytest.raises(ValueError, match="lr"):
        pretrain(movie, _tiny_cfg(epochs=2, lr=5e-4), tmp_path / "r", resume=True)


def test_cli_pretrain_and_content_view(tmp_path, movie, capsys):
    from tapcore.cli import main
    from tapcore.io import write_tiff

    path = tmp_path / "movie.tif"
    write_tiff(path, movie)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": dataclasses.asdict(TINY_MODEL), "val_batch_size": 8}))
    rc = main(["pretrain", str(path), "--out", str(tmp_path / "tap"), "--epochs", "1", "--batch-size", "4",
               "--samples-per-epoch", "4", "--patch", "16", "--val-samples", "8", "--device", "cpu",
               "--config", str(cfg)])
    out = capsys.readouterr().out
    assert rc == 0 and "epoch   1/1" in out and "val" in out and "TAP bundle written" in out
    assert load_bundle(tmp_path / "tap").kind == "tap"
    rc = main(["content-view", str(path), "--model", str(tmp_path / "tap"), "--out", str(tmp_path / "cv"),
               "--repeats", "2", "--samples", "8", "--crops", "8,16,32", "--base-crop", "16", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0 and "halved crop size" in out
    assert (tmp_path / "cv" / "content_view.csv").is_file() and (tmp_path / "cv" / "content_view.md").is_file()
    rc = main(["pretrain", str(tmp_path / "missing.tif"), "--out", str(tmp_path / "x")])
    assert rc == 2 and "error" in capsys.readouterr().err


def test_content_view_table6(tmp_path, movie):
    from tapcore.tap.content_view import ContentViewConfig, content_view, write_content_view

    pretrain(movie, _tiny_cfg(epochs=1), tmp_path / "tap")
    cfg = ContentViewConfig(crops=(8, 16, 32), base_crop=16, repeats=3, samples=16, device="cpu")
    res = content_view(movie, tmp_path / "tap", cfg)
    s = res.summary.set_index("setting")
    assert list(res.table6().columns) == ["same crop size", "halved crop size", "doubled resolution",
                                          "doubled crop size", "halved resolution"]
    assert s.loc["halved resolution", "content_view_px"] == 32 and s.loc["doubled resolution", "content_view_px"] == 8
    assert (s["repeats"] == 3).all() and len(res.runs) == 15
    runs = res.runs[res.runs.setting == "same crop size"]["acc"].to_numpy()
    assert s.loc["same crop size", "mean"] == pytest.approx(runs.mean())
    assert s.loc["same crop size", "std"] == pytest.approx(runs.std(ddof=1))
    assert "±" in res.table6().iloc[0]["same crop size"]
    paths = write_content_view(res, tmp_path / "cv")
    assert json.loads(paths["json"].read_text())["table6"]["halved crop size"].count("±") == 1
    with pytest.raises(ValueError, match="larger than"):
        content_view(movie, tmp_path / "tap", ContentViewConfig(crops=(128,), base_crop=16, device="cpu"))
