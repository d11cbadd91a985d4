"""CLI: ``tapcore events`` (build + summarise crop pairs), ``tapcore train-head``, ``tapcore compare``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from tapcore.config import add_config_options, config_from_args

logger = logging.getLogger(__name__)


def _load(movie_path: str, masks_path: str | None):
    """Movie and masks from a TIFF/frame folder + masks file, or a CTC folder (masks optional)."""
    from tapcore.io import read_input, read_masks

    inp = read_input(movie_path)
    movie = inp.movie
    if masks_path:
        masks = read_masks(masks_path, movie.shape)
    elif inp.masks is not None:
        masks = inp.masks
    else:
        raise ValueError(f"{movie_path} carries no event masks: give a MASKS file (0 none, 1 division, 2 death) "
                         "or a Cell Tracking Challenge folder with lineage ground truth")
    return movie, masks


def _add_dataset_args(p: argparse.ArgumentParser, criterion: bool = True, data_seed: bool = True) -> None:
    from tapcore.events.dataset import CRITERIA, SPLITS, TASKS, CropPairConfig

    names = (["criterion"] if criterion else []) + ["min_area", "centre", "split", "task", "pairs_per_frame", "crop",
                                                           "balance_ratio", "border"] + \
        (["seed"] if data_seed else [])
    add_config_options(p, CropPairConfig, names, criterion={"choices": CRITERIA}, split={"choices": SPLITS},
                       task={"choices": TASKS}, seed={"flag": "--data-seed", "dest": "data_seed"})


def _dataset_cfg(args: argparse.Namespace):
    from tapcore.events.dataset import CropPairConfig

    cfg = config_from_args(CropPairConfig, args)  # its seed: --data-seed, else the run's --seed
    return dataclasses.replace(cfg, seed=args.data_seed if hasattr(args, "data_seed") else args.seed).validate()


def _add_training_args(p: argparse.ArgumentParser) -> None:
    from tapcore.events.train import HeadConfig

    p.add_argument("--tap", default=None, help="TAP bundle folder (tapcore pretrain); required for A strategies")
    add_config_options(p, HeadConfig, ["epochs", "lr", "batch_size", "device", "num_threads", "feature_margin",
                                       "hard_negatives", "resample_negatives", "keep_best"], num_threads={"flag": "--threads"})
    p.add_argument("--out", required=True, help="output folder")


def _head_cfg(args: argparse.Namespace, strategy: str, seed: int):
    from tapcore.events.train import HeadConfig

    cfg = config_from_args(HeadConfig, args)
    return dataclasses.replace(cfg, strategy=strategy, head=getattr(args, "head", None), seed=seed,
                               dataset=_dataset_cfg(args)).validate()


def _cmd_events(args: argparse.Namespace) -> int:
    from tapcore.events.dataset import build_crop_pairs

    movie, masks = _load(args.movie, args.masks)
    pairs = build_crop_pairs(masks, _dataset_cfg(args), movie.shape)
    print(pairs.summary().to_string())
    if args.json:
        print(json.dumps(pairs.to_dict()))
    return 0


def _cmd_train_head(args: argparse.Namespace) -> int:
    from tapcore.events.train import train_head

    movie, masks = _load(args.movie, args.masks)
    cfg = _head_cfg(args, args.strategy, args.seed)

    def show(rec: dict[str, Any]) -> None:
        if rec.get("kind") == "epoch":
            print(f"epoch {rec['epoch']}/{rec['epochs']}: train loss {rec['train_loss']:.4f} acc {rec['train_acc']:.3f}"
                  f" | val loss {rec['val_loss']:.4f} acc {rec['val_acc']:.3f} | {rec['elapsed_s']:.0f} s", flush=True)

    res = train_head(movie, masks, args.tap, cfg, args.out, progress=show)
    from tapcore.distributed import env_world

    world = env_world()
    if world is not None and world[0] != 0:
        return 0  # under torchrun rank 0 reports (and wrote the bundle)
    t = res.metrics["test"]
    print(f"test ({res.metrics['split']['split']} split, {t['n']} pairs): confusion matrix {t['confusion_matrix']}")
    for k, name in enumerate(t["class_names"]):
        print(f"  class {k} ({name}): precision {t['precision'][k]:.3f} recall {t['recall'][k]:.3f}")
    print(f"head bundle: {Path(args.out).resolve()} (metrics.json, val_logits.npy for calibration)")
    from tapcore.verdicts import head_verdict

    print(head_verdict(t).line())  # can this head be trusted?
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from tapcore.events.compare import CompareConfig, compare

    movie, masks = _load(args.movie, args.masks)
    strategies = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
    criteria = tuple(c.strip() for c in args.criteria.split(",") if c.strip())
    cfg = CompareConfig(strategies=strategies, criteria=criteria, repeats=args.repeats, seed=args.seed,
                        head=_head_cfg(args, strategies[0] if strategies else "A1", args.seed),
                        keep_bundles=args.keep_bundles)

    def show(rec: dict[str, Any]) -> None:
        print(f"[{rec['step']}/{rec['steps']}] {rec['criterion']} {rec['strategy']} repeat {rec['repeat']}: "
              + " ".join(f"{k} {v:.3f}" for k, v in rec.items() if k.startswith(("prec_", "rec_"))), flush=True)

    res = compare(movie, masks, args.tap, cfg, args.out, progress=show)
    print((res.out_dir / "table.md").read_text(encoding="utf-8"))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from tapcore.events.compare import CompareConfig
    from tapcore.events.dataset import CropPairConfig
    from tapcore.events.heads import HEADS
    from tapcore.events.train import STRATEGIES, HeadConfig

    p = subparsers.add_parser("events", help="build event crop pairs from a movie and masks and print a summary",
                              description="Sample crop pairs (t, t+1), label them and print the paper's Table 1.")
    p.add_argument("movie", help="movie TIFF, frame folder, or Cell Tracking Challenge folder")
    p.add_argument("masks", nargs="?", default=None, help="event masks TIFF (optional for a CTC folder)")
    _add_dataset_args(p, data_seed=False)
    add_config_options(p, CropPairConfig, ["seed"])
    p.add_argument("--json", action="store_true", help="also print the counts as JSON")
    p.set_defaults(func=_cmd_events)

    p = subparsers.add_parser("train-head", help="train an event head (strategy A0..C1) and write a head bundle",
                              description="Train one event head on crop pairs; writes config.json, weights.pt, "
                                          "metrics.json, val_logits.npy/val_labels.npy (for calibration).")
    p.add_argument("movie", help="movie TIFF, frame folder, or Cell Tracking Challenge folder")
    p.add_argument("masks", nargs="?", default=None, help="event masks TIFF (optional for a CTC folder)")
    add_config_options(p, HeadConfig, ["strategy", "head", "seed"], strategy={"choices": list(STRATEGIES)},
                       head={"choices": list(HEADS)})
    _add_dataset_args(p)
    _add_training_args(p)
    p.set_defaults(func=_cmd_train_head)

    p = subparsers.add_parser("compare", help="strategies x criteria x repeats -> mean ± std tables (paper Table 2/5)",
                              description="Writes runs.csv, table.csv, table.md and table.json to --out.")
    p.add_argument("movie", help="movie TIFF, frame folder, or Cell Tracking Challenge folder")
    p.add_argument("masks", nargs="?", default=None, help="event masks TIFF (optional for a CTC folder)")
    p.add_argument("--strategies", default="A0,A1,B0,B1,C0,C1", help="comma-separated (default %(default)s)")
    p.add_argument("--criteria", default="size_either", help="comma-separated labelling criteria (default %(default)s)")
    add_config_options(p, CompareConfig, ["repeats", "seed", "keep_bundles"],
                       keep_bundles={"action": "store_true"})
    _add_dataset_args(p, criterion=False)
    _add_training_args(p)
    p.set_defaults(func=_cmd_compare)
