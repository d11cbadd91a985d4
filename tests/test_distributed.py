"""Data-parallel TAP pretraining on the CPU: torchrun, 2 processes, gloo (tapcore.distributed).

One torchrun launch (tests/ddp_worker.py) runs three trainings in one process group; the tests
compare them with single-process runs of the same configuration:

- ``dist_sampling="shared"`` (every rank keeps its slice of the same global batch) gives the loss
  curve of one process with the same global batch: per-step train loss, validation loss and
  weights agree within 1e-5 relative (float32 sums in another order: measured differences are
  ~1e-7), not bit for bit;
- 2 epochs straight == 1 epoch + ``--resume`` + 1 epoch, bit for bit, under DDP;
- checkpoints, metrics and the bundle are written by rank 0 only, once per epoch / run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tapcore.bundle import load_bundle
from tapcore.detector import TapFeatures
from tapcore.config import config_from_dict
from tapcore.io import write_tiff
from tapcore.progress import read_metrics
from tapcore.synthetic import SynthConfig, make_synthetic
from tapcore.tap.train import CHECKPOINT, PretrainConfig, load_checkpoint, pretrain

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(height=64, width=64, cells=10, radius_min=3, radius_max=7, division_rate=0.3, death_rate=0.05,
            min_cycle_frames=3, max_cells=40, mitosis_frames=3)
CONFIG = dict(patch=16, batch_size=8, epochs=2, samples_per_epoch=16, lr=1e-3, device="cpu", val_samples=8,
              val_batch_size=8, log_every=1, seed=3,
              model=dict(base_channels=4, depth=1, features=4, head_channels=4))
RTOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    movie = make_synthetic(SynthConfig(seed=1, frames=8, **FAST)).movie
    write_tiff(out / "movie.tif", movie)
    (out / "config.json").write_text(json.dumps(CONFIG))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(ROOT / "tests" / "ddp_worker.py"), str(out / "movie.tif"), str(out / "config.json"), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _single(tmp_path: Path, ddp_run: Path, **kw):
    from tapcore.io import read_movie

    cfg = config_from_dict(PretrainConfig, {**CONFIG, **kw})
    return pretrain(read_movie(ddp_run / "movie.tif"), cfg, tmp_path / "single")


def test_two_processes_with_shared_batches_follow_the_single_process_loss_curve(tmp_path, ddp_run):
    single = _single(tmp_path, ddp_run)
    steps_1 = [r for r in read_metrics(tmp_path / "single" / "metrics.jsonl") if r["kind"] == "step"]
    steps_2 = [r for r in read_metrics(ddp_run / "shared" / "metrics.jsonl") if r["kind"] == "step"]
    assert [(r["epoch"], r["step"]) for r in steps_2] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert [(r["epoch"], r["step"]) for r in steps_1] == [(r["epoch"], r["step"]) for r in steps_2]
    for key in ("train_loss", "train_decorr", "train_acc"):
        np.testing.assert_allclose([r[key] for r in steps_2], [r[key] for r in steps_1], rtol=RTOL, err_msg=key)
    bundle = load_bundle(ddp_run / "shared", kind="tap")
    for key in ("val_loss", "val_decorr"):
        np.testing.assert_allclose([h[key] for h in bundle.metrics["history"]],
                                   [h[key] for h in single.history], rtol=RTOL, err_msg=key)
    # the loss moved (the comparison is not between two untrained models)
    assert abs(steps_1[-1]["train_loss"] - steps_1[0]["train_loss"]) > 1e-4
    # weights after 4 steps of Adam agree to ~1e-7, BatchNorm running statistics too, except two biases
    # whose gradient is zero in exact arithmetic (a conv bias before a BatchNorm; the logit bias shared by
    # both frames cancels in the softmax): Adam scales their float noise up to steps of ~lr, so there the
    # bound is the 4 steps x lr 1e-3 they may move, and the running mean fed by the first one follows it.
    noise_driven = {"backbone.unet.out.bias", "head.fc.bias", "backbone.projection.1.running_mean"}
    a, b = single.model.state_dict(), TapFeatures.load(ddp_run / "shared").model.state_dict()
    for k in a:
        diff = (b[k].float() - a[k].float()).abs().max().item()
        assert diff <= (4 * 1e-3 if k in noise_driven else 1e-6), (k, diff)
    # the same data split as one process, and the number of processes is recorded
    assert bundle.manifest["train_frames"] == [0, 6] and bundle.metrics["validation"]["frames"] == [6, 8]
    assert bundle.manifest["world_size"] == 2 and bundle.config["pretrain"]["dist_sampling"] == "shared"
    assert single.metrics["validation"] == bundle.metrics["validation"]


def test_per_rank_sampling_uses_distinct_generators_and_resumes_exactly(ddp_run):
    ckpt = load_checkpoint(ddp_run / "straight" / CHECKPOINT)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]["ranks"]) == 2
    s0, s1 = (r["sampler"] for r in ckpt["rng"]["ranks"])
    assert not torch.equal(s0, s1)  # seeds seed + 0 and seed + 1
    straight = TapFeatures.load(ddp_run / "straight").model.state_dict()
    resumed = TapFeatures.load(ddp_run / "resumed").model.state_dict()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")
    h1 = load_bundle(ddp_run / "straight", kind="tap").metrics["history"]
    h2 = load_bundle(ddp_run / "resumed", kind="tap").metrics["history"]
    assert len(h1) == 2 and [{k: h[k] for k in keys} for h in h1] == [{k: h[k] for k in keys} for h in h2]
    epochs = [r["epoch"] for r in read_metrics(ddp_run / "resumed" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert epochs == [1, 2]  # one log, each epoch once (rank 1 writes none)
    # per-rank data differ from the shared (single-process) pairs: another loss curve
    shared = load_bundle(ddp_run / "shared", kind="tap").metrics["history"]
    assert shared[0]["train_loss"] != h1[0]["train_loss"]


def test_only_rank_0_writes_checkpoints_and_bundles(ddp_run):
    assert not (ddp_run / "writes-rank1.jsonl").exists()
    writes = [json.loads(line) for line in (ddp_run / "writes-rank0.jsonl").read_text().splitlines()]
    def count(folder, what):
        return sum(1 for w in writes if w["what"] == what and Path(w["path"]).is_relative_to(ddp_run / folder))
    # shared and straight: 2 epochs -> 2 checkpoints, 1 bundle; resumed: 1 + 1 checkpoints, 2 bundles
    assert [count(f, "checkpoint") for f in ("shared", "straight", "resumed")] == [2, 2, 2]
    assert [count(f, "bundle") for f in ("shared", "straight", "resumed")] == [1, 1, 2]


def test_global_batch_must_split_evenly_and_resume_needs_the_same_process_count(tmp_path, ddp_run):
    from tapcore.distributed import DistInfo, local_batch

    assert local_batch(8, DistInfo(rank=1, world_size=2, enabled=True)) == 4
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        local_batch(9, DistInfo(rank=0, world_size=2, enabled=True))
    # a single process cannot resume a 2-process checkpoint (its per-rank generators would be lost)
    import shutil

    shutil.copytree(ddp_run / "resumed", tmp_path / "r")
    from tapcore.io import read_movie

    cfg = config_from_dict(PretrainConfig, {**CONFIG, "epochs": 3})
    with pytest.raises(ValueError, match="written by 2 process"):
        pretrain(read_movie(ddp_run / "movie.tif"), cfg, tmp_path / "r", resume=True)


def test_a_checkpoint_from_before_distributed_training_still_resumes(tmp_path, ddp_run):
    """Checkpoints written before ``dist_sampling`` / ``world_size`` existed resume as single-process ones."""
    import io

    from tapcore.io import read_movie

    movie = read_movie(ddp_run / "movie.tif")
    cfg = config_from_dict(PretrainConfig, {**CONFIG, "epochs": 1})
    pretrain(movie, cfg, tmp_path / "old")
    path = tmp_path / "old" / CHECKPOINT
    ckpt = load_checkpoint(path)
    del ckpt["world_size"], ckpt["config"]["dist_sampling"]
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    path.write_bytes(buf.getvalue())
    result = pretrain(movie, config_from_dict(PretrainConfig, {**CONFIG, "epochs": 2}), tmp_path / "old", resume=True)
    assert [h["epoch"] for h in result.history] == [1, 2]
