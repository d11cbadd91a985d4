"""The prepared GPU run (bench/gpu_suite.py) and its data pack (scripts/pack_device_data.py).

The suite's CPU dry run runs here in full, on a pack made from a small fake CTC folder, so the GPU
minutes never go to a crash or a typo: every stage must print its result lines with their keys, and
no stage may fail or run out of time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

ROOT = Path(__file__).resolve().parents[1]


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


packer = _module("pack_device_data", ROOT / "scripts" / "pack_device_data.py")
installer = _module("install_hela_nuclei", ROOT / "scripts" / "install_hela_nuclei.py")

#: frames at which a parent track ends in the fake movie (its daughters start the next frame)
DIVISION_FRAMES = list(range(2, 30, 2))


def write_fake_ctc(root: Path, frames: int = 32, side: int = 128) -> list[tuple[int, int, int]]:
    """A CTC folder with uint16 noise frames, bright nuclei and one division every other frame.

    Every division's parent is an 11 x 11 marker (label = track id) near the frame centre for the
    two frames before it ends; its daughters are 9 x 9 markers 8 px above and below from the next
    frame on. Returns the divisions as ``(parent's last frame, y, x)``.
    """
    rng = np.random.default_rng(0)
    (root / "01").mkdir(parents=True)
    tra = root / "01_GT" / "TRA"
    tra.mkdir(parents=True)
    movie = rng.normal(1000, 20, (frames, side, side))
    labels = np.zeros((frames, side, side), np.uint16)
    lineage, divisions, next_id = [], [], 1
    for i, d in enumerate(DIVISION_FRAMES):
        if d + 1 >= frames:
            break
        y, x = 44 + 12 * (i % 3), 40 + 16 * (i % 4)
        parent, kids = next_id, (next_id + 1, next_id + 2)
        next_id += 3
        start, end = max(0, d - 1), min(frames - 1, d + 2)
        lineage.append(f"{parent} {start} {d} 0")
        for t in range(start, d + 1):
            labels[t, y - 5:y + 6, x - 5:x + 6] = parent
            movie[t, y - 5:y + 6, x - 5:x + 6] += 800
        for kid, dy in zip(kids, (-8, 8)):
            lineage.append(f"{kid} {d + 1} {end} {parent}")
            for t in range(d + 1, end + 1):
                labels[t, y + dy - 4:y + dy + 5, x - 4:x + 5] = kid
                movie[t, y + dy - 4:y + dy + 5, x - 4:x + 5] += 800
        divisions.append((d, y, x))
    for t in range(frames):
        tifffile.imwrite(root / "01" / f"t{t:03d}.tif", np.clip(movie[t], 0, 65535).astype(np.uint16))
        tifffile.imwrite(tra / f"man_track{t:03d}.tif", labels[t])
    (tra / "man_track.txt").write_text("\n".join(lineage) + "\n")
    return divisions


@pytest.fixture
def fake_pack(tmp_path) -> Path:
    divisions = write_fake_ctc(tmp_path / "ctc")
    meta = packer.pack(tmp_path / "ctc", tmp_path / "pack", log=lambda msg: None)
    assert meta["divisions"] == len(divisions)
    return tmp_path / "pack"


def test_quantize_roundtrip_error_is_at_most_half_a_step():
    rng = np.random.default_rng(1)
    movie = rng.integers(30000, 40000, (3, 17, 19)).astype(np.uint16)
    for step in (1, 2, 4):
        lo, hi, offset, err = packer.quantize(movie, step)
        back = packer.dequantize(lo, hi, step, offset)
        diff = np.abs(back.astype(np.int64) - movie.astype(np.int64))
        assert back.dtype == np.uint16 and int(diff.max()) == err <= step // 2
        assert offset == int(movie.min())
    lo, hi, _, err = packer.quantize(movie, 1)
    assert err == 0


def test_pack_of_a_fake_ctc_folder_reads_back_exactly(tmp_path, fake_pack):
    from tapcore.ctc import load_ctc

    seq = load_ctc(tmp_path / "ctc")
    got = packer.read_pack(fake_pack)
    meta = got["meta"]
    assert meta["movie"]["step"] == 1 and meta["movie"]["lossless"]  # tiny: the lossless step fits
    np.testing.assert_array_equal(got["movie"], seq.movie)
    np.testing.assert_array_equal(got["masks"], seq.masks)
    parents = got["events"][got["events"]["role"] == "parent"]
    assert sorted(parents["frame"]) == DIVISION_FRAMES
    assert meta["pack_bytes"] == sum(p.stat().st_size for p in fake_pack.iterdir())
    # a damaged file is refused with the fix named
    (fake_pack / "masks.npz").write_bytes(b"broken")
    with pytest.raises(ValueError, match="pack_device_data"):
        packer.read_pack(fake_pack)


def test_pack_refuses_a_limit_no_step_meets(tmp_path):
    write_fake_ctc(tmp_path / "ctc", frames=6)
    with pytest.raises(ValueError, match="does not fit"):
        packer.pack(tmp_path / "ctc", tmp_path / "pack", step=1, max_mib=0.01, log=lambda msg: None)
    assert not (tmp_path / "pack").exists()


def test_hela01_pack_fits_45_mib(tmp_path, hela01):
    """Four hela01 frames packed as the script packs all 92: the step it picks keeps 92 frames under 45 MiB."""
    src = tmp_path / "hela4"
    (src / "01").mkdir(parents=True)
    (src / "01_GT" / "TRA").mkdir(parents=True)
    for t in range(4):
        shutil.copy(hela01 / "01" / f"t{t:03d}.tif", src / "01")
        shutil.copy(hela01 / "01_GT" / "TRA" / f"man_track{t:03d}.tif", src / "01_GT" / "TRA")
    lineage = np.loadtxt(hela01 / "01_GT" / "TRA" / "man_track.txt", dtype=np.int64, ndmin=2)
    keep = lineage[lineage[:, 1] <= 3].copy()
    keep[:, 2] = np.minimum(keep[:, 2], 3)
    keep[~np.isin(keep[:, 3], keep[:, 0]), 3] = 0
    np.savetxt(src / "01_GT" / "TRA" / "man_track.txt", keep, fmt="%d")
    meta = packer.pack(src, tmp_path / "pack", step=4, max_mib=45 * 4 / 92, log=lambda msg: None)
    assert meta["movie"]["shape"] == [4, 700, 1100] and meta["movie"]["max_abs_error"] <= 2
    assert meta["files"]["movie.npz"]["bytes"] * 92 / 4 < 45 * 2**20
    got = packer.read_pack(tmp_path / "pack")
    from tapcore.ctc import load_ctc

    diff = np.abs(got["movie"].astype(np.int64) - load_ctc(src).movie.astype(np.int64))
    assert int(diff.max()) <= 2


def test_shipped_hela_nuclei_missing_names_folder_and_fix(tmp_path, monkeypatch):
    from tapcore import workspace

    monkeypatch.setattr(workspace, "PROJECT_MODELS", tmp_path / "models")
    with pytest.raises(ValueError, match=r"hela-nuclei.*holds no config.json.*install_hela_nuclei.py"):
        workspace.shipped_model_path("hela-nuclei")
    with pytest.raises(ValueError, match="install_hela_nuclei.py"):
        workspace.Workspace(tmp_path / "ws").resolve_model("shipped:hela-nuclei")


#: result lines each stage must print (a "what"/"config" value and the keys that line must hold)
EXPECTED = {
    "smoke": [("what", "environment", ["torch", "device_name", "packages"]),
              ("what", "pipeline", ["ok", "adam_fused", "tap_val_acc", "temperature", "events", "predict_frames_per_s"])],
    "data": [("what", "hela01", ["kind", "sha256_original", "movie_shape", "divisions", "region"])],
    "throughput": [("config", "data_only", ["pairs_per_s"]),
                   ("config", "eager_fp32", ["what", "pairs_per_s", "precision"]),
                   ("config", "eager_bf16_cl", ["what", "pairs_per_s", "channels_last"]),
                   ("config", "compiled_bf16_cl", ["what", "pairs_per_s", "compiled", "warmup_s"]),
                   ("what", "summary", ["end_to_end_pairs_per_s", "model_step_pairs_per_s", "best_config"])],
    "tta": [("what", "plan", ["train_frames", "val_frames", "steps_per_epoch"]),
            ("what", "epoch", ["train_s", "wall_s", "val_acc"]),
            ("what", "summary", ["time_to_target", "val_acc_at", "final_val_acc"])],
    "real": [("what", "tap", ["train_s", "val_acc", "epochs"]),
             ("what", "crop_pairs", ["train", "val", "test", "frames_between_train_and_test"]),
             ("what", "head", ["strategy", "confusion_test", "precision_class1", "recall_class1", "train_s"]),
             ("what", "calibration", ["val_ece_before", "val_ece_after", "test_crops_ece_after"]),
             ("what", "events", ["main", "per_threshold"]),
             ("what", "shipped_bundle", ["zips", "bytes"]),
             ("what", "a1_vs_c1", ["equal_labels", "a1_beats_c1_events"])],
    "speed": [("data", "synthetic64", ["frames_per_s", "seconds"]), ("data", "hela01", ["frames_per_s"])],
}


@pytest.mark.slow  # runs every stage of bench/gpu_suite.py in a subprocess
def test_dry_run_runs_every_stage_without_errors(tmp_path, fake_pack):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("OUT", None)
    # the GPU machine has no grad-cam, streamlit or plotly: the suite must run with them unimportable
    blocked = ("import runpy, sys\n"
               "for name in ('pytorch_grad_cam', 'streamlit', 'plotly'):\n"
               "    sys.modules[name] = None\n"
               f"sys.argv = [{str(ROOT / 'bench' / 'gpu_suite.py')!r}, '--dry-run', '--out', {str(out)!r}, "
               f"'--data', {str(fake_pack)!r}]\n"
               "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", blocked], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    saved = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert lines == saved  # every stdout line is in results.jsonl
    problems = [r for r in lines if "error" in r or "timeout" in r or "skipped" in r]
    assert not problems, problems
    for stage, wanted in EXPECTED.items():
        got = [r for r in lines if r["stage"] == stage]
        assert any(r.get("kind") == "end" and r["status"] == "ok" for r in got), stage
        for key, value, keys in wanted:
            match = [r for r in got if r.get(key) == value]
            assert match, f"{stage}: no line with {key}={value}"
            for r in match:
                missing = [k for k in keys if k not in r]
                assert not missing, f"{stage} {value}: missing {missing}"
    heads = {r["strategy"] for r in lines if r.get("what") == "head"}
    assert heads == {"A1", "C1", "A0", "B1"}
    crop_pairs = next(r for r in lines if r.get("what") == "crop_pairs")
    assert crop_pairs["split"] == "time" and crop_pairs["frames_between_train_and_test"] > 1
    done = lines[-1]
    assert done["stage"] == "suite" and done["kind"] == "done"
    assert set(done["status"].values()) == {"ok"}
    # what a device run can send back: at most 8 files in the output folder, none over 16 MiB
    files = [p for p in out.iterdir() if p.is_file()]
    assert {"results.jsonl", "suite.log", "hela_nuclei_head.zip", "hela_nuclei_tap.zip",
            "suite_records.zip"} <= {p.name for p in files}
    assert len(files) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in files)
    # the returned zips install as models/hela-nuclei (here into tmp) and load as a calibrated model
    summary = installer.install([out / "hela_nuclei_head.zip", out / "hela_nuclei_tap.zip"],
                                tmp_path / "models" / "hela-nuclei")
    from tapcore.bundle import load_bundle

    bundle = load_bundle(tmp_path / "models" / "hela-nuclei", "event_head")
    assert bundle.calibration is not None and summary["head_bundle_id"] == bundle.id
    assert load_bundle(tmp_path / "models" / "hela-nuclei" / "tap", "tap").kind == "tap"
    readme = (tmp_path / "models" / "hela-nuclei" / "README.md").read_text()
    assert "Dry-run bundle" in readme and "shipped:hela-nuclei" in readme


def test_install_refuses_foreign_zip_entries(tmp_path):
    import zipfile

    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("../evil.txt", "x")
    with pytest.raises(ValueError, match="hela-nuclei/"):
        installer.install([bad], tmp_path / "models" / "hela-nuclei")
    assert not (tmp_path / "models" / "hela-nuclei").exists()
