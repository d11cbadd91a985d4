"""Data-parallel event-head training on the CPU: torchrun, 2 processes, gloo (tapcore.distributed).

One torchrun launch (tests/ddp_head_worker.py) trains two heads in one process group: A0 through
``tapcore train-head`` (frozen TAP backbone, linear head) and C0 through the library (backbone with
BatchNorm trained end to end, GlobalBatchNorm2d). Every rank takes its slice of the same shuffled
global batches, so the per-epoch train losses equal those of one process with the same global batch
within 1e-5 relative (float32 sums in another order; measured 5e-8 for A0, 4e-7 for C0), not bit
for bit. The last batch of each epoch splits 4 + 3 over the ranks (share-weighted loss and BatchNorm).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tapcore.bundle import load_bundle, save_bundle
from tapcore.config import config_to_dict
from tapcore.events.dataset import CropPairConfig
from tapcore.detector import EventDetector
from tapcore.events.train import HeadConfig, random_backbone, train_head
from tapcore.io import write_tiff
from tapcore.synthetic import SynthConfig, make_synthetic
from tapcore.tap.model import TapConfig, TapModel

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(frames=10, height=64, width=64, cells=10, radius_min=3, radius_max=7, division_rate=0.3,
            death_rate=0.05, min_cycle_frames=3, max_cells=40, mitosis_frames=3)
DATASET = dict(crop=16, pairs_per_frame=24, min_area=5, seed=0, task="three_class")  # 39 training pairs
BATCH = 16
RTOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _head_cfg(strategy: str, **kw) -> HeadConfig:
    return HeadConfig(strategy=strategy, epochs=2, batch_size=BATCH, seed=0, device="cpu",
                      dataset=CropPairConfig(**DATASET), **kw)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_head")
    synth = make_synthetic(SynthConfig(seed=2, **FAST))
    write_tiff(out / "movie.tif", synth.movie)
    write_tiff(out / "masks.tif", synth.masks)
    cfg = TapConfig(base_channels=4, depth=1, features=4, head_channels=4)
    model = TapModel(cfg)
    model.backbone.load_state_dict(random_backbone(config_to_dict(cfg), seed=0).state_dict())
    save_bundle(out / "tap", kind="tap", config={"model": config_to_dict(cfg)}, state_dict=model.state_dict(),
                manifest={"seed": 0})
    cli = ["--epochs", "2", "--batch-size", str(BATCH), "--crop", str(DATASET["crop"]), "--pairs-per-frame",
           str(DATASET["pairs_per_frame"]), "--min-area", str(DATASET["min_area"]), "--task", DATASET["task"], "--data-seed", "0", "--seed", "0"]
    c0 = {k: v for k, v in dataclasses.asdict(_head_cfg("C0", feature_margin=4)).items() if k in
          ("epochs", "batch_size", "seed", "device", "feature_margin")}
    (out / "head.json").write_text(json.dumps({"cli": cli, "c0": c0, "dataset": DATASET}))
    return out, synth


@pytest.fixture(scope="module")
def ddp_run(data) -> Path:
    out, _ = data
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(ROOT / "tests" / "ddp_head_worker.py"), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


#: zero gradient in exact arithmetic (a conv bias right before a BatchNorm), so Adam turns float noise
#: into steps of up to lr (6 steps x 1e-3), and the running mean fed by it follows; in eval mode
#: (validation) that moves C0's logits by ~5e-3 (measured val loss difference 3.3e-3 relative)
NOISE_DRIVEN = {"backbone.unet.out.bias", "backbone.projection.1.running_mean"}


@pytest.mark.parametrize("strategy", ["A0", "C0"])
def test_two_processes_follow_the_single_process_loss_curve(tmp_path, data, ddp_run, strategy):
    _, synth = data
    kw = {"feature_margin": 4} if strategy == "C0" else {}
    single = train_head(synth.movie, synth.masks, ddp_run / "tap", _head_cfg(strategy, **kw), tmp_path / "single")
    # the last batch of an epoch (39 = 2 x 16 + 7) splits unevenly over the 2 processes, 4 + 3 pairs
    # (share-weighted loss and BatchNorm statistics)
    assert len(single.pairs.train) % BATCH % 2 == 1, len(single.pairs.train)
    bundle = load_bundle(ddp_run / strategy.lower(), kind="event_head")
    h2, h1 = bundle.metrics["history"], single.history
    assert [h["epoch"] for h in h2] == [h["epoch"] for h in h1] == [1, 2]
    # measured: train loss 5e-8 (A0) and 4e-7 (C0) relative
    for key in ("train_loss", "train_acc"):
        np.testing.assert_allclose([h[key] for h in h2], [h[key] for h in h1], rtol=RTOL, err_msg=key)
    assert abs(h1[1]["train_loss"] - h1[0]["train_loss"]) > 1e-3  # it learned: not two untrained models compared
    exact_eval = strategy == "A0"  # C0's validation runs through the noise-driven running mean (NOISE_DRIVEN)
    np.testing.assert_allclose([h["val_loss"] for h in h2], [h["val_loss"] for h in h1],
                               rtol=RTOL if exact_eval else 1e-2)
    np.testing.assert_allclose(np.load(ddp_run / strategy.lower() / "val_logits.npy"), single.val_logits,
                               rtol=0, atol=1e-5 if exact_eval else 2e-2)
    a, b = single.model.state_dict(), EventDetector.load(ddp_run / strategy.lower()).model.state_dict()
    for k in a:
        if k in NOISE_DRIVEN:
            assert (b[k].float() - a[k].float()).abs().max() <= 6 * 1e-3, k
        else:
            # C0: its backbone weights after 6 Adam steps differ by up to 1.2e-5 (measured); A0: 6e-9
            np.testing.assert_allclose(b[k].float().numpy(), a[k].float().numpy(), rtol=1e-4,
                                       atol=1e-6 if exact_eval else 5e-5, err_msg=k)
    assert bundle.manifest["world_size"] == 2
    assert load_bundle(tmp_path / "single", kind="event_head").manifest["world_size"] == 1


def test_a_rank_with_an_empty_share_of_the_last_batch_still_follows_one_process(tmp_path, data, ddp_run):
    _, synth = data
    cfg = dataclasses.replace(_head_cfg("C0", feature_margin=4), batch_size=38, epochs=1)
    single = train_head(synth.movie, synth.masks, ddp_run / "tap", cfg, tmp_path / "single")
    assert len(single.pairs.train) == 39  # batches of 38 + 1: shares 19 + 19, then 1 + 0
    h2 = load_bundle(ddp_run / "c0-b38", kind="event_head").metrics["history"]
    np.testing.assert_allclose([h["train_loss"] for h in h2], [h["train_loss"] for h in single.history], rtol=RTOL)
    assert [h["train_acc"] for h in h2] == [h["train_acc"] for h in single.history]
    # the step on the last pair (its gradient and BatchNorm statistics come from rank 0 alone) moved the
    # weights and BatchNorm running statistics as in one process (measured <= 1.7e-6 apart)
    a, b = single.model.state_dict(), EventDetector.load(ddp_run / "c0-b38").model.state_dict()
    for k in a:
        if k not in NOISE_DRIVEN:
            np.testing.assert_allclose(b[k].float().numpy(), a[k].float().numpy(), rtol=1e-5, atol=1e-5, err_msg=k)


def test_only_rank_0_writes_the_bundle(ddp_run):
    assert not (ddp_run / "writes-rank1.jsonl").exists()
    writes = [json.loads(line) for line in (ddp_run / "writes-rank0.jsonl").read_text().splitlines()]
    for folder in ("a0", "c0"):
        assert sorted(w["what"] for w in writes if Path(w["path"]) == ddp_run / folder) == ["arrays", "bundle"]
    assert (ddp_run / "a0" / "metrics.jsonl").is_file()
    epochs = [json.loads(line)["epoch"] for line in (ddp_run / "a0" / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "epoch"]
    assert epochs == [1, 2]  # one log, each epoch once


def test_a_global_batch_that_does_not_split_is_refused_on_every_rank(ddp_run):
    for rank in (0, 1):
        msg = (ddp_run / f"odd-rank{rank}.txt").read_text()
        assert "batch_size 7" in msg and "divisible by the number of processes (2)" in msg
    assert not (ddp_run / "odd").exists()  # refused before anything was written
