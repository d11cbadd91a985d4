"""TAP validation accuracy against wall time for named presets on hela01 (train frames 0-31,
validate on 32-39), on the machine it runs on. Prints one JSON line per epoch and a summary per preset.

The issue-10 comparison (both presets side by side on the 2-core CPU, 30 minutes, one thread each)::

    python bench/cpu_preset_curves.py --preset cpu --budget 1800 --threads 1 --epoch-pairs 2048 > cpu.jsonl &
    python bench/cpu_preset_curves.py --preset paper --budget 1800 --threads 1 --epoch-pairs 304 --val-samples 256 > paper.jsonl

The learning rate schedule is held at its start value (the run is cut by time, not by epochs), so the
curve shows how fast a preset learns, not the end of a full schedule.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tapcore.io import read_input  # noqa: E402
from tapcore.presets import apply_preset, preset_names  # noqa: E402
from tapcore.tap.train import pretrain  # noqa: E402
from tapcore.utils import environment_info  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hela01"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=preset_names(), required=True)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CTC sequence folder (default ../shared/data/hela01)")
    p.add_argument("--train-frames", default="0:32")
    p.add_argument("--val-frames", default="32:40")
    p.add_argument("--budget", type=float, default=1800.0, help="training seconds")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epoch-pairs", type=int, default=2048, help="pairs between two validations")
    p.add_argument("--val-samples", type=int, default=1024)
    p.add_argument("--config", default="{}", help="extra PretrainConfig overrides as JSON (win over the preset)")
    args = p.parse_args(argv)
    if not args.data.is_dir():
        print(json.dumps({"skipped": f"{args.data} not found (the real movies live in ../shared/data)"}))
        return 0
    torch.set_num_threads(args.threads)
    movie = read_input(args.data).movie
    a, b = (int(v) for v in args.train_frames.split(":"))
    c, d = (int(v) for v in args.val_frames.split(":"))
    over = {"device": "cpu", "epochs": 100_000, "samples_per_epoch": args.epoch_pairs, "min_lr_ratio": 1.0,
            "val_samples": args.val_samples, "max_time_s": args.budget, "log_every": 10**9, **json.loads(args.config)}
    cfg = apply_preset(args.preset, over)
    t0 = time.perf_counter()
    first = {}

    def on(rec: dict) -> None:
        if rec.get("kind") != "epoch":
            return
        row = {"preset": args.preset, "epoch": rec["epoch"], "pairs": rec["epoch"] * cfg.samples_per_epoch,
               "wall_s": round(time.perf_counter() - t0, 1), "train_s": round(rec["train_time_s"], 1),
               "val_acc": round(rec["val_acc"], 4), "train_acc": round(rec["train_acc"], 4),
               "load1": round(os.getloadavg()[0], 2)}
        for target in (0.6, 0.7, 0.8):
            if rec["val_acc"] >= target and target not in first:
                first[target] = row["wall_s"]
        print(json.dumps(row), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        res = pretrain(movie[a:b], cfg, Path(tmp) / "tap", val_movie=movie[c:d], progress=on)
    print(json.dumps({"preset": args.preset, "summary": True, "device_name": environment_info("cpu").get("device_name"),
                      "threads": args.threads, "bin": cfg.bin, "patch": cfg.patch, "batch": cfg.batch_size, "lr": cfg.lr,
                      "model": {"base_channels": cfg.model.base_channels, "depth": cfg.model.depth},
                      "val_pairs": cfg.val_samples, "epochs": len(res.history),
                      "best_val_acc": res.metrics.get("best_val_acc"), "final_val_acc": res.history[-1]["val_acc"],
                      "first_wall_s_at": {str(k): v for k, v in first.items()}}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
