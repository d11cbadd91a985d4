"""Training event heads: an A1 head learns a synthetic event, bundles are self-contained, compare tables."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tapcore.bundle import save_bundle
from tapcore.config import config_to_dict
from tapcore.events.compare import CompareConfig, compare
from tapcore.events.dataset import CropPairConfig
from tapcore.detector import EventDetector
from tapcore.events.train import HeadConfig, random_backbone, train_head
from tapcore.tap.model import TapConfig, TapModel

CROP = 16


def _disk(img, cy, cx, r, value):
    yy, xx = np.ogrid[:img.shape[0], :img.shape[1]]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = value


def flash_movie(frames=14, size=64, seed=0):
    """Dim static cells; an event is a small, very bright cell present for one frame (marked 1 in the mask).

    Known answer: a crop pair is an event exactly when it holds a bright flash, which any
    intensity-sensitive feature separates from the dim cells.
    """
    rng = np.random.default_rng(seed)
    movie = rng.normal(100, 8, (frames, size, size)).astype(np.float32)
    masks = np.zeros((frames, size, size), np.uint8)
    for _ in range(6):
        cy, cx = rng.integers(6, size - 6, 2)
        for t in range(frames):
            _disk(movie[t], cy, cx, 5, 300)
    for t in range(frames):
        for _ in range(2):
            cy, cx = rng.integers(5, size - 5, 2)
            _disk(movie[t], cy, cx, 4, 900)
            _disk(masks[t], cy, cx, 4, 1)
    return movie.clip(0, 65535).astype(np.uint16), masks


@pytest.fixture(scope="module")
def tap_bundle(tmp_path_factory):
    """A tiny TAP bundle with Kaiming-uniform backbone weights (the test needs features, not TAP quality)."""
    path = tmp_path_factory.mktemp("tap") / "tap"
    cfg = TapConfig(base_channels=4, depth=1, features=4, head_channels=4)
    model = TapModel(cfg)
    model.backbone.load_state_dict(random_backbone(config_to_dict(cfg), seed=0).state_dict())
    save_bundle(path, kind="tap", config={"model": config_to_dict(cfg)}, state_dict=model.state_dict(),
                manifest={"seed": 0})
    return path


@pytest.fixture(scope="module")
def data():
    return flash_movie()


def _cfg(strategy, epochs, **kw):
    ds = CropPairConfig(crop=CROP, pairs_per_frame=40, min_area=20, seed=0)
    return HeadConfig(strategy=strategy, epochs=epochs, batch_size=32, device="cpu", epoch_val_pairs=64,
                      dataset=ds, **kw)


@pytest.mark.slow  # long training / many runs: CI only
def test_a1_head_learns_synthetic_events_and_bundle_roundtrips(tmp_path, tap_bundle, data):
    movie, masks = data
    torch.manual_seed(0)
    records = []
    res = train_head(movie, masks, tap_bundle, _cfg("A1", 5), tmp_path / "head", progress=records.append)
    test_pos_rate = float((res.test_labels == 1).mean())
    # chance: a classifier that ignores the input has precision = positive rate (~0.2 here), and
    # recall equal to its positive-prediction rate; we require both to be far above that.
    assert 0.05 < test_pos_rate < 0.5
    assert res.precision[1] > max(0.6, 2 * test_pos_rate), (res.precision, test_pos_rate)
    assert res.recall[1] > 0.6, res.recall
    assert res.confusion.sum() == len(res.test_labels)
    epochs = [r for r in records if r.get("kind") == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4, 5]
    assert records[-1]["kind"] == "done"

    out = tmp_path / "head"
    for name in ("config.json", "weights.pt", "metrics.json", "manifest.json", "metrics.jsonl", "val_logits.npy",
                 "val_labels.npy", "test_logits.npy", "per_frame.csv"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "event_head" and config["head"] == "resnet" and config["strategy"] == "A1"
    assert config["crop"] == CROP and config["margin"] == 3 and config["class_names"] == ["none", "event"]
    assert config["split"]["split"] == "random" and config["dataset"]["criterion"] == "size_either"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["confusion_matrix"] == res.confusion.tolist()
    assert metrics["split"]["split"] == "random"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 0 and len(manifest["movie_sha256"]) == 64 and manifest["device"] == "cpu"
    val_logits = np.load(out / "val_logits.npy")
    assert val_logits.shape == (len(res.pairs.val), 2) and np.array_equal(np.load(out / "val_labels.npy"),
                                                                           res.pairs.val.labels)

    # the bundle alone rebuilds the model: same test logits from whole-frame features
    from tapcore.events.dense import compute_frame_features
    from tapcore.io import normalize_movie

    model = EventDetector.load(out).model
    feats = compute_frame_features(model.backbone, normalize_movie(movie))
    with torch.no_grad():
        z = feats.windows(res.pairs.test.coords, CROP, model.head.margin)
        logits = model.head(z).numpy()
    assert np.allclose(logits, res.test_logits, atol=1e-4)


@pytest.mark.slow  # trains strategy C end to end
def test_end_to_end_strategy_trains_backbone(tmp_path, tap_bundle, data):
    movie, masks = data
    res = train_head(movie, masks, tap_bundle, _cfg("C0", 1, feature_margin=4), tmp_path / "c0")
    detector = EventDetector.load(tmp_path / "c0")
    model = detector.model
    init = random_backbone(detector.config["tap_config"], seed=0)
    changed = any(not torch.equal(a, b) for a, b in zip(model.backbone.state_dict().values(),
                                                      init.state_dict().values()))
    assert changed, "strategy C must train the backbone"
    assert detector.config["frozen_backbone"] is False and model.feature_margin == 4
    x = torch.zeros(1, 2, 1, model.input_size, model.input_size)
    assert model(x).shape == (1, 2)
    assert res.confusion.sum() == len(res.pairs.test)


def test_strategy_a_needs_tap_bundle(tmp_path, data):
    movie, masks = data
    with pytest.raises(ValueError, match="TAP bundle"):
        train_head(movie, masks, None, _cfg("A0", 1), tmp_path / "x")
    with pytest.raises(ValueError, match="unknown strategy"):
        train_head(movie, masks, None, _cfg("D1", 1), tmp_path / "x")
    with pytest.raises(ValueError, match="frames"):
        train_head(movie, masks[:-1], None, _cfg("B0", 1), tmp_path / "x")


@pytest.mark.slow  # long training / many runs: CI only
def test_compare_writes_mean_std_tables(tmp_path, tap_bundle, data):
    movie, masks = data
    cfg = CompareConfig(strategies=("A0", "B0"), criteria=("size_either", "any_either"), repeats=2,
                        head=_cfg("A0", 2))
    res = compare(movie, masks, tap_bundle, cfg, tmp_path / "cmp")
    assert len(res.runs) == 2 * 2 * 2
    assert list(res.table["group"]) == ["A0", "B0", "A0", "B0"]
    for name in ("runs.csv", "table.csv", "table.md", "table.json"):
        assert (tmp_path / "cmp" / name).is_file()
    row = res.table.iloc[0]
    a0 = res.runs[(res.runs.strategy == "A0") & (res.runs.criterion == "size_either")]
    assert row["prec_1_mean"] == pytest.approx(a0["prec_1"].mean())
    assert row["rec 1"] == f"{a0['rec_1'].mean():.2f}±{a0['rec_1'].std(ddof=0):.2f}"
    md = (tmp_path / "cmp" / "table.md").read_text()
    assert "| group |" in md and "split: random" in md and "2 runs" in md


def test_a_single_run_shows_no_spread():
    """With one repeat there is no std: the cell shows the value alone (never a made-up "±0.00")."""
    import pandas as pd

    from tapcore.events.compare import summarise, to_markdown

    runs = pd.DataFrame([{"criterion": "size_either", "strategy": "A1", "head": "resnet", "repeat": 0,
                          "train_pos": 10, "test_pos": 5, "prec_0": 0.9, "rec_0": 0.8, "prec_1": 0.4, "rec_1": float("nan")}])
    table = summarise(runs, 2)
    row = table.iloc[0]
    assert row["prec 1"] == "0.40" and row["rec 0"] == "0.80" and row["rec 1"] == "nan"
    assert np.isnan(row["prec_1_std"]) and row["prec_1_mean"] == pytest.approx(0.4)
    md = to_markdown(table, {"repeats": 1, "runs_done": 1, "split": {"split": "time"}})
    assert "±" not in md and "One run per row (no std)" in md


@pytest.mark.slow  # trains a head twice
def test_hard_negative_mining_swaps_in_the_negatives_the_head_scored_highest(tmp_path, tap_bundle, data):
    movie, masks = data
    records = []
    res = train_head(movie, masks, tap_bundle, _cfg("A0", 4, hard_negatives=0.5), tmp_path / "hn",
                     progress=records.append)
    mined = [r for r in records if r.get("kind") == "hard_negatives"]
    assert len(mined) == 1 and mined[0]["after_epoch"] == 2  # once, after half the epochs
    info = res.metrics["hard_negatives"]
    n_neg = int((res.pairs.train.labels == 0).sum())
    assert info["mined"] == round(0.5 * n_neg) and info["train_negatives"] == n_neg
    assert info["pool_negatives"] == int((res.pairs.train_pool.labels == 0).sum()) > n_neg
    # the mined negatives are the ones the head found hardest: above the ones they replaced
    assert info["mined_mean_event_prob"] > info["replaced_mean_event_prob"]
    assert [r["epoch"] for r in records if r.get("kind") == "epoch"] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="hard_negatives"):
        HeadConfig(hard_negatives=2.0).validate()


def test_keep_best_restores_the_epoch_with_the_lowest_validation_loss(tmp_path, tap_bundle, data):
    """keep_best: the saved head is the lowest-val-loss epoch's (its per-epoch validation logits are
    recomputed from the bundle and match that epoch's recorded loss); resampled negatives train too."""
    import torch.nn.functional as F

    from tapcore.events.calibrate import validation_logits

    movie, masks = data
    records = []
    # lr 0.05 on a linear head: the validation loss jumps around (this seeded run: lowest at epoch 2 of 4)
    cfg = _cfg("A0", 4, lr=0.05, keep_best=True, resample_negatives=True)
    res = train_head(movie, masks, tap_bundle, cfg, tmp_path / "best", progress=records.append)
    losses = [r["val_loss"] for r in res.history]
    best = int(np.argmin(losses)) + 1
    assert res.metrics["best_epoch"] == best
    restored = [r for r in records if r.get("kind") == "best_epoch"]
    assert [r["epoch"] for r in restored] == [best]
    assert best != 4 and losses[best - 1] < losses[-1]  # (seeded: this run's best epoch is not its last)
    # the saved head scores the per-epoch validation pairs (64 fixed pairs of the val split) with the best
    # epoch's loss, not the last one's
    n_val = len(res.pairs.val)
    pick = np.sort(np.random.default_rng(cfg.seed + 7919).choice(n_val, 64, replace=False))
    logits, labels = validation_logits(tmp_path / "best", movie, masks)
    assert np.array_equal(labels, res.pairs.val.labels)
    loss = float(F.cross_entropy(torch.from_numpy(logits[pick]), torch.from_numpy(labels[pick])))
    assert loss == pytest.approx(losses[best - 1], rel=1e-4, abs=1e-5)
    # without keep_best the last epoch's head is kept
    last = train_head(movie, masks, tap_bundle, _cfg("A0", 4, lr=0.05), tmp_path / "last")
    assert last.metrics["best_epoch"] is None
