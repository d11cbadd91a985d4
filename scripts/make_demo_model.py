"""Train the small demo model shipped in ``models/demo/`` (CPU: 295 s at 2 threads on this 2-core machine, load 1-2).

The app opens on the synthetic demo movie (``tapcore.synthetic.SynthConfig()``, seed 0) and this
model, so a new user sees predictions at once. Steps, all with the library's public functions:

1. pretrain TAP features on the demo movie with a *small* TAP network (``SMALL_TAP`` below: 8 base
   channels, 2 U-Net levels, 16 feature channels, instead of the paper's 32 / 3 / 32), so every file
   stays well under 2 MiB and CPU inference takes seconds. ``PRETRAIN``: 48 px patches, Adam at
   1e-3 and **no geometric / intensity augmentation** (the order flip, i.e. the TAP label, stays):
   with the paper's full augmentation and 1e-4 this tiny network stayed at chance (val acc 0.50)
   for the whole CPU budget, on the demo movie as on real data; without it it learns the movie's
   time arrows (nuclei grow through their cycle, condense before they split, shrink and fragment
   when they die) within a few minutes;
2. train an A1 head (frozen TAP features + a ResNet head) to tell divisions and deaths from nothing
   (``three_class``). The head is ``resnet_lite_order``: the paper's ResNet head at 16 instead of 64
   channels that keeps the two frames apart (``concat``) instead of averaging them, so that a division
   needs the condensed mother at t *and* the daughters at t+1 (a time-invariant head also fired on
   daughters for frames after the split). Its crop pairs (32 px) are labelled **event-centred**: a pair
   is an event when event pixels lie in the central 16 x 16 window of both crops (``any_both``,
   ``centre=16``: exactly the pair whose centre sees the mother before and the daughters after the
   split), crops may reach 16 px beyond the frame edge (``border=16``: dense prediction applies the
   head there too, and a head that never saw a zero-padded window reported deaths along the edges),
   the training set keeps 3 negatives per rare event (``balance_ratio=3``) drawn afresh every epoch
   (``resample_negatives``), and the epoch with the lowest validation loss is kept (``keep_best``).
   docs/results.md ("Demo model") has the experiments behind each choice;
3. fit temperature (+ event bias) scaling on the validation crop pairs (``calibration.json``).

Output: ``models/demo/`` (the self-contained event-head bundle, referred to as ``shipped:demo``),
``models/demo/tap/`` (the TAP bundle it was trained from, ``shipped:demo/tap``) and
``models/demo/build.json`` (how it was built: settings, seconds, threads, machine load).
``bench/demo_quality.py`` measures the result on a synthetic movie of another seed.

Usage: ``python scripts/make_demo_model.py [--out models/demo] [--threads 1]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tapcore.presets import HEAD_CPU

ROOT = Path(__file__).resolve().parents[1]

#: The demo's TAP network (documented above): small enough for CPU and for git.
SMALL_TAP = {"base_channels": 8, "depth": 2, "features": 16, "head_channels": 16}
#: Pretraining settings for the demo (paper defaults for everything not listed).
PRETRAIN = {"epochs": 8, "samples_per_epoch": 1024, "batch_size": 32, "patch": 48, "lr": 1e-3, "val_samples": 512,
            "seed": 0, "augment": {"enabled": False}}
#: Head settings: A1 (TAP features frozen + ResNet head) with the library's CPU recipe (``tapcore.presets.HEAD_CPU``,
#: also the Event head page's "CPU settings"): the ResNet head at 16 instead of 64 channels, order-aware
#: (``resnet_lite_order``; the paper's 64-channel head needs ~0.12 s per training pair on one CPU thread, i.e.
#: an hour for this run), division / death / nothing.
HEAD = {"strategy": "A1", "seed": 0, "epoch_val_pairs": 1000, **HEAD_CPU, "dataset": {**HEAD_CPU["dataset"], "seed": 0}}
MAX_FILE_BYTES = 2 * 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "models" / "demo"), help="output folder (default: models/demo)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1; more only on an idle machine)")
    parser.add_argument("--strategy", default=HEAD["strategy"], choices=["A0", "A1"],
                        help="head on the frozen TAP features: A1 (16-channel ResNet, default) or A0 (linear; "
                             "cheaper, but it overfits the demo's few crops)")
    parser.add_argument("--tap", default=None, metavar="DIR",
                        help="reuse this TAP bundle (made by step 1 of an earlier run) instead of pretraining again")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import torch

    from tapcore.events.calibrate import calibrate_bundle
    from tapcore.utils import chmod_as_created
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
    load_start = list(os.getloadavg())  # 1, 5, 15 min load averages: other work slows the run down
    demo = make_synthetic(SynthConfig())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.tap:
            shutil.copytree(args.tap, tmp / "tap")
        else:
            pcfg = config_from_dict(PretrainConfig, {**PRETRAIN, "device": "cpu", "model": SMALL_TAP})
            pretrain(demo.movie, pcfg, tmp / "tap", progress=report)
        head = HEAD["head"] if args.strategy == HEAD["strategy"] else None  # A0: the paper's linear head
        hcfg = config_from_dict(HeadConfig, {**HEAD, "strategy": args.strategy, "head": head, "device": "cpu"})
        result = train_head(demo.movie, demo.masks, tmp / "tap", hcfg, tmp / "head", progress=report)
        calib = calibrate_bundle(tmp / "head")
        shutil.rmtree(tmp / "tap" / "checkpoint", ignore_errors=True)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(tmp / "head", out)
        shutil.copytree(tmp / "tap", out / "tap")
    for path in (out, *out.rglob("*")):  # what was written through mkstemp/mkdtemp is private (0600/0700):
        chmod_as_created(path)  # open it as a plain open/mkdir would (the image and other users read models/demo)
    too_big = [p for p in out.rglob("*") if p.is_file() and p.stat().st_size > MAX_FILE_BYTES]
    if too_big:
        raise SystemExit(f"files over 2 MiB in {out}: {too_big}; make SMALL_TAP smaller")
    tap_metrics = json.loads((out / "tap" / "metrics.json").read_text())
    summary = {
        "out": str(out),
        "strategy": args.strategy,
        "head": hcfg.head_name,
        "seconds": round(time.time() - t0, 1),
        "threads": args.threads,
        "load_average_at_start": load_start,
        "load_average_at_end": list(os.getloadavg()),
        "tap_reused": bool(args.tap),
        "tap_val_acc": tap_metrics["final"]["val_acc"],
        "test_precision": [round(float(x), 3) for x in result.precision],
        "test_recall": [round(float(x), 3) for x in result.recall],
        "temperature": round(float(calib.calibration.temperature), 3),
        "ece_before": round(calib.report["ece_before"]["top"], 4),
        "ece_after": round(calib.report["ece_after"]["top"], 4),
        "largest_file_bytes": max(p.stat().st_size for p in out.rglob("*") if p.is_file()),
        "settings": {"synthetic": "SynthConfig() (seed 0)", "tap_model": SMALL_TAP, "pretrain": PRETRAIN,
                     "head": {**HEAD, "strategy": args.strategy, "head": hcfg.head_name}},
        "command": "python scripts/make_demo_model.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    (out / "build.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
