"""Benchmark: the CPU-sized event head (A2, ``resnet_lite``) beside A0 and A1: crop-level precision /
recall and training seconds, on the synthetic movie or a real CTC movie.

Pretrains TAP with a preset (default ``cpu``: binning 2, small U-Net) for a time budget (or reuses
``--tap``), then runs :func:`tapcore.events.compare.compare` over ``--strategies`` with the same crop
pairs for every strategy, and prints one JSON object: the table (mean precision / recall per class),
the mean training seconds per strategy, the ratio of each strategy's training time to A1's, and the
settings used (TAP validation accuracy included: a TAP at chance makes every A row a random-feature row).

    OMP_NUM_THREADS=1 .venv/bin/python bench/cpu_head.py --out /tmp/cpu_head            # synthetic movie
    .venv/bin/python bench/cpu_head.py --data hela01 --threads 2 --out /tmp/cpu_head_hela01
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"

from tapcore.runtime import configure_process  # noqa: E402

configure_process()  # before torch: huge-page CPU allocations (tapcore.runtime)


def _data(args: argparse.Namespace):
    if args.data == "synthetic":
        from tapcore.synthetic import SynthConfig, make_synthetic

        s = make_synthetic(SynthConfig(seed=args.seed, frames=args.frames, height=args.size, width=args.size))
        return s.movie, s.masks
    from tapcore.io import read_input

    folder = SHARED / args.data
    if not folder.is_dir():
        raise SystemExit(f"{folder} not found: real data lives in ../shared/data")
    inp = read_input(folder)
    return inp.movie, inp.masks


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="synthetic", help="'synthetic' or a dataset under ../shared/data (hela01, psc01)")
    p.add_argument("--frames", type=int, default=48, help="synthetic movie frames")
    p.add_argument("--size", type=int, default=256, help="synthetic movie side (px)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="/tmp/tapcore_cpu_head", help="work folder (outside the project)")
    p.add_argument("--tap", default=None, help="reuse this TAP bundle instead of pretraining")
    p.add_argument("--tap-preset", default="cpu", help="preset of the TAP pretraining (tapcore.presets)")
    p.add_argument("--tap-budget-s", type=float, default=180.0, help="TAP pretraining time budget (s)")
    p.add_argument("--strategies", default="A0,A1,A2")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--pairs-per-frame", type=int, default=40, help="paper: 1000")
    p.add_argument("--epochs", type=int, default=5, help="one epoch count for every head (paper: 10 linear / 30 ResNet)")
    p.add_argument("--criterion", default="size_either")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    import torch

    from tapcore.events.compare import CompareConfig, compare
    from tapcore.events.dataset import CropPairConfig
    from tapcore.events.train import HeadConfig
    from tapcore.presets import apply_preset
    from tapcore.tap.train import pretrain

    torch.set_num_threads(args.threads)
    movie, masks = _data(args)
    out = Path(args.out)
    t0 = time.time()
    if args.tap:
        tap_dir, tap_time = Path(args.tap), None
    else:
        tap_dir = out / "tap"
        cfg = apply_preset(args.tap_preset, {"device": args.device, "max_time_s": args.tap_budget_s,
                                             "seed": args.seed})
        pretrain(movie, cfg, tap_dir)
        tap_time = time.time() - t0
    tap_metrics = json.loads((tap_dir / "metrics.json").read_text())
    tap_config = json.loads((tap_dir / "config.json").read_text())
    head = HeadConfig(device=args.device, num_threads=args.threads, epochs=args.epochs, epoch_val_pairs=300,
                      dataset=CropPairConfig(pairs_per_frame=args.pairs_per_frame, criterion=args.criterion,
                                             seed=args.seed))
    ccfg = CompareConfig(strategies=tuple(args.strategies.split(",")), repeats=args.repeats, seed=args.seed, head=head)
    t1 = time.time()
    res = compare(movie, masks, tap_dir, ccfg, out / "compare",
                  progress=lambda r: print(json.dumps(r), file=sys.stderr, flush=True))
    runs = res.runs
    train_s = runs.groupby("strategy")["train_time_s"].mean().to_dict()
    table = {row["group"]: {"head": row["cls head"], **{k: round(float(row[f"{k.replace(' ', '_')}_mean"]), 3)
                                                       for k in ("prec 0", "rec 0", "prec 1", "rec 1")},
                            "train_s": round(float(train_s[row["group"]]), 1)}
             for _, row in res.table.iterrows()}
    a1 = train_s.get("A1")
    print(json.dumps({
        "data": args.data,
        "movie_shape": list(movie.shape),
        "table": table,
        "train_time_vs_A1": {k: round(v / a1, 3) for k, v in train_s.items()} if a1 else None,
        "settings": {
            "strategies": args.strategies, "repeats": args.repeats, "pairs_per_frame": args.pairs_per_frame,
            "epochs": args.epochs, "criterion": args.criterion, "crop": head.dataset.crop,
            "positives_train_test": str(res.table["positive samples"].iloc[0]),
            "tap_bundle": str(tap_dir), "tap_preset": (tap_config.get("pretrain") or {}).get("preset"),
            "tap_bin": tap_config.get("bin", 1), "tap_training_s": tap_time,
            "tap_best_val_acc": tap_metrics.get("best_val_acc"), "tap_epochs_done": tap_metrics.get("epochs_done"),
            "threads": args.threads, "device": res.info.get("device"), "compare_s": round(time.time() - t1, 1),
        },
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
