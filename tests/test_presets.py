"""TAP pretraining presets (tapcore.presets): registry, precedence of explicit options, CLI --preset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tapcore.config import config_to_dict
from tapcore.presets import PRESET_HELP, PRESETS, apply_preset, default_preset, preset_overrides
from tapcore.tap.train import PretrainConfig


def test_paper_preset_is_the_paper_defaults():
    cfg = apply_preset("paper")
    expected = config_to_dict(PretrainConfig())
    got = config_to_dict(cfg)
    assert got.pop("preset") == "paper" and expected.pop("preset") is None
    assert got == expected
    assert (cfg.patch, cfg.batch_size, cfg.lr, cfg.bin, cfg.model.base_channels) == (96, 152, 1e-4, 1, 32)


def test_cpu_preset_bins_shrinks_and_softens_augmentation():
    cfg = apply_preset("cpu")
    assert cfg.preset == "cpu" and cfg.bin == 2 and cfg.patch == 48 and cfg.lr == 1e-3
    assert cfg.model.base_channels < PretrainConfig().model.base_channels
    assert cfg.batch_size < PretrainConfig().batch_size
    aug, paper_aug = cfg.augment, PretrainConfig().augment
    assert aug.translate < paper_aug.translate and aug.elastic_sigma < paper_aug.elastic_sigma
    assert aug.noise < paper_aug.noise
    # every value of the registry reaches the config (nested sections merge key by key)
    d = config_to_dict(cfg)
    for key, value in PRESETS["cpu"].items():
        if isinstance(value, dict):
            for k, v in value.items():
                assert d[key][k] == (list(v) if isinstance(v, tuple) else v), (key, k)
        else:
            assert d[key] == value, key
    assert set(PRESET_HELP) == set(PRESETS)


def test_explicit_options_override_the_preset():
    cfg = apply_preset("cpu", {"bin": 4, "epochs": 3, "model": {"depth": 2}, "augment": {"translate": 1.0},
                               "preset": "paper"})
    assert (cfg.bin, cfg.epochs, cfg.model.depth, cfg.augment.translate) == (4, 3, 2, 1.0)
    assert cfg.model.base_channels == PRESETS["cpu"]["model"]["base_channels"]  # untouched nested keys stay
    assert cfg.patch == 48 and cfg.preset == "cpu"  # the name argument wins over a "preset" key
    assert apply_preset(None).preset == "paper"
    PRESETS_BEFORE = json.dumps(PRESETS, sort_keys=True, default=str)
    apply_preset("cpu", {"augment": {"noise": 0.5}})
    assert json.dumps(PRESETS, sort_keys=True, default=str) == PRESETS_BEFORE  # the registry is never mutated
    preset_overrides("cpu")["bin"] = 4
    assert PRESETS["cpu"]["bin"] == 2


def test_unknown_preset_and_bad_values_are_named():
    with pytest.raises(ValueError, match="unknown preset 'gpu'; valid presets: paper, cpu"):
        apply_preset("gpu")
    with pytest.raises(ValueError, match="bin must be one of 1, 2, 4"):
        apply_preset("cpu", {"bin": 3})
    with pytest.raises(ValueError, match="unknown PretrainConfig option"):
        apply_preset("cpu", {"binning": 2})


def test_default_preset_follows_the_device():
    assert default_preset("cpu") == "cpu"
    assert default_preset("cuda") == "paper" and default_preset("cuda:1") == "paper"


@pytest.mark.slow  # pretrains TAP from the CLI
def test_cli_pretrain_with_a_preset_records_it_and_bins(tmp_path, capsys, one_torch_thread):
    from tapcore.bundle import load_bundle
    from tapcore.cli import main
    from tapcore.io import write_tiff

    rng = np.random.default_rng(0)
    write_tiff(tmp_path / "movie.tif", (rng.random((6, 70, 66)) * 1000).astype(np.uint16))
    rc = main(["pretrain", str(tmp_path / "movie.tif"), "--out", str(tmp_path / "tap"), "--preset", "cpu",
               "--epochs", "1", "--samples-per-epoch", "4", "--batch-size", "4", "--patch", "16", "--val-samples", "8",
               "--device", "cpu", "--val-fraction", "0.4"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "preset cpu: bin 2, U-Net base 8" in out
    bundle = load_bundle(tmp_path / "tap")
    assert bundle.config["bin"] == 2 and bundle.config["pretrain"]["preset"] == "cpu"
    assert bundle.config["model"]["base_channels"] == 8 and bundle.config["pretrain"]["patch"] == 16
    assert bundle.manifest["binned_shape"] == [6, 35, 33] and bundle.manifest["movie_shape"] == [6, 70, 66]
    rc = main(["pretrain", str(tmp_path / "movie.tif"), "--out", str(tmp_path / "x"), "--preset", "cpu", "--bin", "4",
               "--device", "cpu"])
    assert rc == 2 and "smaller than the 48 px patch" in capsys.readouterr().err  # 70 / 4 = 18 px frames
