"""Model bundles: save -> load round trip, atomic replacement, clear errors, calibration validation."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

import tapcore.bundle as bundle_mod
from tapcore.bundle import load_bundle, save_bundle, write_calibration
from tapcore.config import config_to_dict
from tapcore.detector import TapFeatures
from tapcore.tap.model import TapConfig, TapModel

SMALL = TapConfig(base_channels=4, depth=2, features=8, head_channels=8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(seed: int = 0) -> TapModel:
    torch.manual_seed(seed)
    model = TapModel(SMALL)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so they must round-trip too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _save(path, model: TapModel, **extra):
    return save_bundle(path, kind="tap", config={"model": config_to_dict(model.cfg)}, state_dict=model.state_dict(),
                       metrics={"val_acc": 0.75}, manifest={"seed": 3, "data_sha256": "ab" * 32, **extra})


def test_save_then_load_gives_identical_outputs(tmp_path):
    model = _model()
    _save(tmp_path / "tap", model)
    assert sorted(os.listdir(tmp_path / "tap")) == ["config.json", "manifest.json", "metrics.json", "weights.pt"]
    tap = TapFeatures.load(tmp_path / "tap")
    loaded = tap.model
    x = torch.randn(2, 2, 1, 20, 20)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert not loaded.training and loaded.cfg == SMALL
    b = load_bundle(tmp_path / "tap", kind="tap")
    assert b.kind == "tap" and b.metrics == {"val_acc": 0.75} and b.calibration is None
    assert b.manifest["seed"] == 3 and b.manifest["kind"] == "tap"
    assert b.id == b.manifest["bundle_id"] and b.id.startswith("tap-") and len(b.id) == 16
    assert tap.id == b.id and tap.manifest == b.manifest and tap.metrics == b.metrics
    cfg_json = json.loads((tmp_path / "tap" / "config.json").read_text())
    assert cfg_json["kind"] == "tap" and "kind" not in b.config


def test_resave_replaces_bundle_keeps_run_files_and_drops_old_calibration(tmp_path):
    path = tmp_path / "run"
    _save(path, _model(0))
    write_calibration(path, {"temperature": 1.5})
    (path / "checkpoint").mkdir()
    (path / "checkpoint" / "last.pt").write_bytes(b"ckpt")
    (path / "metrics.jsonl").write_text('{"epoch": 1}\n')
    new = _model(1)
    _save(path, new)
    assert (path / "checkpoint" / "last.pt").read_bytes() == b"ckpt"
    assert (path / "metrics.jsonl").read_text() == '{"epoch": 1}\n'
    assert not (path / "calibration.json").exists()
    assert torch.equal(load_bundle(path).state_dict["head.fc.weight"], new.state_dict()["head.fc.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary folders left


def test_failed_save_keeps_the_existing_bundle_intact(tmp_path, monkeypatch):
    path = tmp_path / "tap"
    old = _model(0)
    _save(path, old)
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(bundle_mod, "_write_file", boom)
    with pytest.raises(OSError, match="disk full"):
        _save(path, _model(1))
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tap"]
    monkeypatch.undo()
    with pytest.raises(OSError):  # and a failure on a fresh path leaves nothing behind
        monkeypatch.setattr(bundle_mod, "_write_file", boom)
        _save(tmp_path / "fresh", old)
    assert not (tmp_path / "fresh").exists()


def test_missing_corrupt_and_wrong_kind_bundles_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_bundle(tmp_path / "nothing")
    path = tmp_path / "tap"
    _save(path, _model())
    (path / "metrics.json").unlink()
    with pytest.raises(ValueError, match="metrics.json"):
        load_bundle(path)
    _save(path, _model())
    weights = (path / "weights.pt").read_bytes()
    (path / "weights.pt").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        load_bundle(path)
    _save(path, _model())
    (path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_bundle(path)
    _save(path, _model())
    with pytest.raises(ValueError, match="'event_head' bundle is needed"):
        load_bundle(path, kind="event_head")
    with pytest.raises(ValueError, match="unknown bundle kind"):
        save_bundle(tmp_path / "x", kind="magic", config={}, state_dict={"w": torch.zeros(1)})


def test_weights_that_are_not_tensors_are_rejected(tmp_path):
    path = tmp_path / "tap"
    _save(path, _model())
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.pop("weights_sha256")
    (path / "manifest.json").write_text(json.dumps(manifest))
    torch.save({"w": [1, 2, 3]}, path / "weights.pt")
    with pytest.raises(ValueError, match="state dict of tensors"):
        load_bundle(path)


def test_event_head_bundle_is_not_a_tap_model(tmp_path):
    save_bundle(tmp_path / "head", kind="event_head", config={"head": "linear"}, state_dict={"w": torch.ones(2)})
    with pytest.raises(ValueError, match="'tap' bundle is needed"):
        TapFeatures.load(tmp_path / "head")


@pytest.mark.parametrize("calib, message", [
    ({}, "no 'temperature'"),
    ({"temperature": 0.0}, "temperature must be"),
    ({"temperature": -1.0}, "temperature must be"),
    ({"temperature": math.inf}, "temperature must be"),
    ({"temperature": "2"}, "temperature must be"),
    ({"temperature": 1.0, "bias": [0.1, math.nan]}, "bias"),
    ([1.5], "JSON object"),
])
def test_invalid_calibrations_are_rejected(tmp_path, calib, message):
    path = tmp_path / "tap"
    _save(path, _model())
    with pytest.raises(ValueError, match=message):
        write_calibration(path, calib)
    assert not (path / "calibration.json").exists()


def test_calibration_round_trip_and_validation_on_load(tmp_path):
    path = tmp_path / "tap"
    _save(path, _model())
    calib = {"temperature": 1.7, "bias": [0.0, -0.4], "ece_before": 0.12, "ece_after": 0.03}
    write_calibration(path, calib)
    assert load_bundle(path).calibration == calib
    (path / "calibration.json").write_text(json.dumps({"temperature": -2}))
    with pytest.raises(ValueError, match="temperature"):
        load_bundle(path)
    with pytest.raises(ValueError, match="not a model bundle"):
        write_calibration(tmp_path / "empty", {"temperature": 1.0})
