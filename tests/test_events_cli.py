"""CLI: tapcore events / train-head / compare through tapcore.cli.main."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from tapcore.bundle import save_bundle
from tapcore.cli import main
from tapcore.config import config_to_dict
from tapcore.events.train import random_backbone
from tapcore.tap.model import TapConfig, TapModel

from test_events_train import flash_movie


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    movie, masks = flash_movie(frames=10, size=64, seed=3)
    tifffile.imwrite(root / "movie.tif", movie)
    tifffile.imwrite(root / "masks.tif", masks)
    cfg = TapConfig(base_channels=4, depth=1, features=4, head_channels=4)
    model = TapModel(cfg)
    model.backbone.load_state_dict(random_backbone(config_to_dict(cfg), seed=0).state_dict())
    save_bundle(root / "tap", kind="tap", config={"model": config_to_dict(cfg)}, state_dict=model.state_dict())
    return root, masks


def test_events_prints_table1_summary(files, capsys):
    root, masks = files
    rc = main(["events", str(root / "movie.tif"), str(root / "masks.tif"), "--crop", "16", "--min-area", "20",
               "--pairs-per-frame", "30", "--seed", "1", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "total crop pairs" in out and "270" in out and "16*16" in out
    counts = json.loads(out.strip().splitlines()[-1])
    assert counts["total"] == 270 and counts["split"] == "random" and counts["seed"] == 1
    assert counts["train"][0] == counts["train"][1]  # balanced


def test_events_errors_exit_2(files, tmp_path, capsys):
    root, masks = files
    tifffile.imwrite(tmp_path / "short.tif", masks[:-2])
    assert main(["events", str(root / "movie.tif"), str(tmp_path / "short.tif")]) == 2
    assert "frames" in capsys.readouterr().err
    assert main(["events", str(root / "movie.tif")]) == 2
    assert "no event masks" in capsys.readouterr().err
    empty = np.zeros_like(masks)
    tifffile.imwrite(tmp_path / "empty.tif", empty)
    assert main(["events", str(root / "movie.tif"), str(tmp_path / "empty.tif"), "--crop", "16"]) == 2
    assert "contain 0 event crops" in capsys.readouterr().err


@pytest.mark.slow  # long training / many runs: CI only
def test_train_head_and_compare(files, tmp_path, capsys):
    root, _ = files
    common = [str(root / "movie.tif"), str(root / "masks.tif"), "--tap", str(root / "tap"), "--crop", "16",
              "--min-area", "20", "--pairs-per-frame", "30", "--epochs", "1", "--device", "cpu"]
    rc = main(["train-head", *common, "--strategy", "A0", "--out", str(tmp_path / "head")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "class 1 (event): precision" in out
    metrics = json.loads((tmp_path / "head" / "metrics.json").read_text())
    assert metrics["strategy"] == "A0" and metrics["split"]["split"] == "random" and metrics["epochs"] == 1
    rc = main(["compare", *common, "--strategies", "A0,B0", "--repeats", "2", "--out", str(tmp_path / "cmp")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| A0 | TAP | linear | 2 |" in out and "| B0 | random (fixed) | linear | 2 |" in out
    assert (tmp_path / "cmp" / "table.csv").is_file()
    assert main(["train-head", *common, "--strategy", "A0", "--out", str(tmp_path / "h2"), "--tap",
                 str(tmp_path / "missing")]) == 2
