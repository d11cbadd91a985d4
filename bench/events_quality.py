"""Benchmark: the paper's Table 2 (strategies A0..C1, mean ± std over repeats) on real CTC movies.

For each dataset (``../shared/data/hela01``, ``../shared/data/psc01``): pretrain TAP on the movie
(time budget ``--tap-budget-s``), then run :func:`tapcore.events.compare.compare` over the
strategies with ``--repeats`` seeds, and print one JSON line per dataset with our table, the paper's
Table 2 beside it, the settings actually used (pairs per frame, epochs, repeats, split, TAP training
time, device) and whether A1 beats C1 (mean class-1 precision and recall).

The paper's setting (1,000 pairs per frame, 30 ResNet epochs, 10 repeats) is far beyond a 2-core
CPU; the defaults here are CPU-feasible reductions and every reduction is printed in the output.

    nice .venv/bin/python bench/events_quality.py --data hela01 --out /tmp/events_bench
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

PAPER_TABLE2 = {
    "A0": {"prec 0": "0.98±0.00", "rec 0": "0.87±0.03", "prec 1": "0.50±0.04", "rec 1": "0.85±0.03"},
    "A1": {"prec 0": "0.98±0.00", "rec 0": "0.94±0.01", "prec 1": "0.70±0.03", "rec 1": "0.89±0.03"},
    "B0": {"prec 0": "0.95±0.04", "rec 0": "0.60±0.32", "prec 1": "0.34±0.20", "rec 1": "0.67±0.36"},
    "B1": {"prec 0": "0.97±0.01", "rec 0": "0.87±0.07", "prec 1": "0.50±0.08", "rec 1": "0.80±0.05"},
    "C0": {"prec 0": "0.97±0.00", "rec 0": "0.92±0.01", "prec 1": "0.60±0.02", "rec 1": "0.82±0.01"},
    "C1": {"prec 0": "0.98±0.01", "rec 0": "0.90±0.04", "prec 1": "0.57±0.08", "rec 1": "0.86±0.05"},
}


def run_dataset(name: str, args: argparse.Namespace) -> dict:
    import torch

    from tapcore.config import config_from_dict
    from tapcore.events.compare import CompareConfig, compare
    from tapcore.events.dataset import CropPairConfig
    from tapcore.events.train import HeadConfig
    from tapcore.io import read_input
    from tapcore.tap.train import PretrainConfig, pretrain
    from tapcore.utils import resolve_device

    device = resolve_device(args.device)
    folder = SHARED / name
    inp = read_input(folder)
    movie, masks = inp.movie, inp.masks
    out = Path(args.out) / name
    tap_dir = out / "tap"
    t0 = time.time()
    if args.tap and Path(args.tap).is_dir():
        tap_dir = Path(args.tap)
        tap_time = None
    else:
        pcfg = config_from_dict(PretrainConfig, {
            "device": device, "batch_size": args.tap_batch, "samples_per_epoch": args.tap_samples,
            "epochs": args.tap_epochs, "max_time_s": args.tap_budget_s, "seed": 0,
            "val_samples": args.tap_val_samples})
        pretrain(movie, pcfg, tap_dir)
        tap_time = time.time() - t0
    tap_metrics = json.loads((tap_dir / "metrics.json").read_text()) if (tap_dir / "metrics.json").is_file() else {}
    head = HeadConfig(
        device=device, num_threads=args.threads, epoch_val_pairs=args.epoch_val_pairs,
        feature_margin=args.feature_margin,
        dataset=CropPairConfig(pairs_per_frame=args.pairs_per_frame, split=args.split, seed=0))
    epochs_note = "paper (10 linear / 30 ResNet)"
    if args.epochs is not None:
        head.epochs = args.epochs
        epochs_note = f"{args.epochs} for every head"
    cfg = CompareConfig(strategies=tuple(args.strategies.split(",")), repeats=args.repeats, head=head)
    t1 = time.time()
    res = compare(movie, masks, tap_dir, cfg, out / "compare",
                  progress=lambda r: print(json.dumps({"dataset": name, **r}), file=sys.stderr, flush=True))
    table = res.table
    ours = {row["group"]: {k: row[k] for k in ("prec 0", "rec 0", "prec 1", "rec 1")} for _, row in table.iterrows()}
    verdict = None
    if {"A1", "C1"} <= set(table["group"]):
        a1 = table[table.group == "A1"].iloc[0]
        c1 = table[table.group == "C1"].iloc[0]
        verdict = {"a1_prec1": a1["prec_1_mean"], "c1_prec1": c1["prec_1_mean"], "a1_rec1": a1["rec_1_mean"],
                   "c1_rec1": c1["rec_1_mean"],
                   "a1_beats_c1": bool(a1["prec_1_mean"] > c1["prec_1_mean"] and a1["rec_1_mean"] >= c1["rec_1_mean"])}
    del torch
    return {
        "dataset": name,
        "movie_shape": list(movie.shape),
        "table": ours,
        "paper_table2": {k: v for k, v in PAPER_TABLE2.items() if k in ours},
        "a1_vs_c1": verdict,
        "settings": {
            "repeats": args.repeats, "pairs_per_frame": args.pairs_per_frame, "epochs": epochs_note,
            "split": res.info["split"],
            "positives_train_test": str(table["positive samples"].iloc[0]),
            "tap_training_s": tap_time, "tap_budget_s": args.tap_budget_s, "tap_metrics": {
                k: tap_metrics.get(k) for k in ("epochs_done", "best_val_acc", "val_acc", "train_time_s")
                if k in tap_metrics},
            "device": res.info.get("device"), "device_name": res.info.get("device_name"),
            "threads": args.threads, "compare_s": time.time() - t1,
            "paper_setting": "1,000 pairs/frame, 10 linear / 30 ResNet epochs, 10 repeats, random split",
        },
    }


def speed(args: argparse.Namespace) -> dict:
    """Time ResNet-head training steps on frozen float16 features (the paper-sized run extrapolated).

    Feature values do not change the cost, so the features are random float16 ``(T, Y, X, 32)``; the
    step is the real one (window gather, head forward/backward, Adam) at batch 108, crop 48.
    """
    import numpy as np
    import torch

    from tapcore.events.dense import CropSource, FrameFeatures
    from tapcore.events.heads import build_head
    from tapcore.events.train import train_one_epoch

    rng = np.random.default_rng(0)
    t_len, size, crop = 24, 256, 48
    feats = FrameFeatures(rng.standard_normal((t_len, size, size, 32)).astype(np.float16), "speed")
    n_pairs, batch = args.speed_steps * 108, 108
    coords = np.stack([rng.integers(0, t_len - 1, n_pairs), rng.integers(0, size - crop, n_pairs),
                       rng.integers(0, size - crop, n_pairs)], 1)
    labels = rng.integers(0, 2, n_pairs)
    head = build_head("resnet", 32, 2, crop)
    head.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    source = CropSource(feats, np.zeros((1, 1, 1), np.float32), crop, head.margin, 0)
    train_one_epoch(head, source, coords[:batch], labels[:batch], opt, batch, rng, "cpu")  # warm-up
    t, c = time.time(), time.process_time()
    train_one_epoch(head, source, coords, labels, opt, batch, rng, "cpu")
    wall, cpu = (time.time() - t) / args.speed_steps, (time.process_time() - c) / args.speed_steps
    steps_30 = 30 * int(np.ceil(14934 / batch))
    return {"speed": "resnet head, frozen features, batch 108, crop 48 (window 54), train step incl. gather",
            "steps_timed": args.speed_steps, "wall_s_per_step": wall, "cpu_s_per_step": cpu,
            "threads": torch.get_num_threads(), "load_avg_1min": os.getloadavg()[0],
            "paper_run_steps": steps_30, "paper_run_wall_h_at_this_rate": wall * steps_30 / 3600,
            "paper_run_h_if_cpu_time_spread_over_threads": cpu * steps_30 / 3600 / torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="hela01,psc01", help="comma-separated datasets under ../shared/data")
    p.add_argument("--out", default="/tmp/tapcore_events_bench", help="work folder (outside the project)")
    p.add_argument("--strategies", default="A0,A1,B0,B1,C0,C1")
    p.add_argument("--repeats", type=int, default=2, help="paper: 10")
    p.add_argument("--pairs-per-frame", type=int, default=200, help="paper: 1000")
    p.add_argument("--epochs", type=int, default=None, help="one epoch count for every head (default: paper's)")
    p.add_argument("--split", default="random", choices=["random", "time", "region"])
    p.add_argument("--epoch-val-pairs", type=int, default=300, help="per-epoch validation pairs")
    p.add_argument("--feature-margin", type=int, default=16, help="strategy C image context")
    p.add_argument("--tap", default=None, help="reuse this TAP bundle instead of pretraining")
    p.add_argument("--tap-budget-s", type=float, default=900.0, help="TAP pretraining time budget (seconds)")
    p.add_argument("--tap-epochs", type=int, default=40)
    p.add_argument("--tap-samples", type=int, default=512, help="TAP pairs per epoch")
    p.add_argument("--tap-batch", type=int, default=16)
    p.add_argument("--tap-val-samples", type=int, default=256, help="TAP validation pairs per epoch")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--speed", action="store_true", help="only time ResNet-head steps on frozen features")
    p.add_argument("--speed-steps", type=int, default=3, help="steps timed by --speed")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    import torch

    torch.set_num_threads(args.threads)
    if args.speed:
        print(json.dumps(speed(args)), flush=True)
        return 0
    for name in [d for d in args.data.split(",") if d]:
        if not (SHARED / name).is_dir():
            print(json.dumps({"dataset": name, "skipped": f"{SHARED / name} not found"}), flush=True)
            continue
        print(json.dumps(run_dataset(name, args), default=float), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
