"""Train the small demo model shipped in ``models/demo/`` (CPU, a few minutes).

The app opens on the synthetic demo movie (``tapcore.synthetic.SynthConfig()``, seed 0) and this
model, so a new user sees predictions at once. Steps, all with the library's public functions:

1. pretrain TAP features on the demo movie with a *small* TAP network (``SMALL_TAP`` below: 8 base
   channels, 2 U-Net levels, 16 feature channels, instead of the paper's 32 / 3 / 32), so every file
   stays well under 2 MiB and CPU inference takes seconds;
2. train an A1-style head (frozen TAP features + small ResNet head) to tell divisions and deaths
   from nothing (``three_class``);
3. fit temperature scaling on the validation windows (``calibration.json``).

Output: ``models/demo/`` (the self-contained event-head bundle, referred to as ``shipped:demo``)
and ``models/demo/tap/`` (the TAP bundle it was trained from, ``shipped:demo/tap``).

Usage: ``python scripts/make_demo_model.py [--out models/demo] [--threads 1]``
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The demo's TAP network (documented above): small enough for CPU and for git.
SMALL_TAP = {"base_channels": 8, "depth": 2, "features": 16, "head_channels": 16}
#: Pretraining settings for the demo (paper defaults for everything not listed).
PRETRAIN = {"epochs": 10, "samples_per_epoch": 512, "batch_size": 32, "patch": 64, "val_samples": 256, "seed": 0}
#: Head settings: A1 (TAP features frozen + ResNet head), division / death / nothing.
HEAD = {"strategy": "A1", "epochs": 12, "seed": 0,
        "dataset": {"task": "three_class", "criterion": "size_either", "pairs_per_frame": 400, "seed": 0}}
MAX_FILE_BYTES = 2 * 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "models" / "demo"), help="output folder (default: models/demo)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1; more only on an idle machine)")
    parser.add_argument("--strategy", default=HEAD["strategy"], choices=["A0", "A1"],
                        help="head on the frozen TAP features: A1 (ResNet, default) or A0 (linear; ~100x cheaper on a CPU)")
    parser.add_argument("--tap", default=None, metavar="DIR",
                        help="reuse this TAP bundle (made by step 1 of an earlier run) instead of pretraining again")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import torch

    from tapcore.calibration import calibrate_bundle
    from tapcore.config import config_from_dict
    from tapcore.events.train import HeadConfig, train_head
    from tapcore.synthetic import SynthConfig, make_synthetic
    from tapcore.tap.train import PretrainConfig, pretrain

    torch.set_num_threads(args.threads)

    def report(rec: dict) -> None:  # one line per epoch, so a long run shows where it is
        if rec.get("kind") in ("epoch", "done"):
            keys = ("stage", "kind", "epoch", "epochs", "train_loss", "train_acc", "val_acc", "elapsed_s")
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items() if k in keys}),
                  flush=True)

    out = Path(args.out).resolve()
    t0 = time.time()
    demo = make_synthetic(SynthConfig())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.tap:
            shutil.copytree(args.tap, tmp / "tap")
        else:
            pcfg = config_from_dict(PretrainConfig, {**PRETRAIN, "device": "cpu", "model": SMALL_TAP})
            pretrain(demo.movie, pcfg, tmp / "tap", progress=report)
        hcfg = config_from_dict(HeadConfig, {**HEAD, "strategy": args.strategy, "device": "cpu"})
        result = train_head(demo.movie, demo.masks, tmp / "tap", hcfg, tmp / "head", progress=report)
        calib = calibrate_bundle(tmp / "head")
        shutil.rmtree(tmp / "tap" / "checkpoint", ignore_errors=True)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(tmp / "head", out)
        shutil.copytree(tmp / "tap", out / "tap")
    too_big = [p for p in out.rglob("*") if p.is_file() and p.stat().st_size > MAX_FILE_BYTES]
    if too_big:
        raise SystemExit(f"files over 2 MiB in {out}: {too_big}; make SMALL_TAP smaller")
    summary = {
        "out": str(out),
        "strategy": args.strategy,
        "seconds": round(time.time() - t0, 1),
        "test_precision": [round(float(x), 3) for x in result.precision],
        "test_recall": [round(float(x), 3) for x in result.recall],
        "temperature": round(float(calib.calibration.temperature), 3),
        "ece_before": round(calib.report["ece_before"]["top"], 4),
        "ece_after": round(calib.report["ece_after"]["top"], 4),
        "largest_file_bytes": max(p.stat().st_size for p in out.rglob("*") if p.is_file()),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
