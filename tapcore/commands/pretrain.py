"""CLI: ``tapcore pretrain MOVIE --out DIR`` and ``tapcore content-view MOVIE --model DIR --out DIR``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tapcore.config import add_config_options
from tapcore.utils import read_json

#: PretrainConfig fields that are command-line options (unset ones keep the preset's value).
PRETRAIN_OPTIONS = ("bin", "epochs", "batch_size", "samples_per_epoch", "patch", "lr", "weight_decay", "dt", "seed",
                    "device", "val_fraction", "val_samples", "max_time_s", "log_every")


def _read(path: str, channel, plane):
    from tapcore.io import read_input

    if isinstance(plane, str) and plane.lstrip("-").isdigit():
        plane = int(plane)
    return read_input(path, channel=channel, plane=plane)


def _overrides(args: argparse.Namespace) -> dict:
    """PretrainConfig fields set on the command line (plus a --config JSON file underneath)."""
    cfg: dict = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; --config takes a JSON file of PretrainConfig options")
        cfg = read_json(path)
        if not isinstance(cfg, dict):
            raise ValueError(f"{path} must hold a JSON object of PretrainConfig options")
    for name in PRETRAIN_OPTIONS:
        value = getattr(args, name)
        if value is not None:
            cfg[name] = value
    if args.no_amp:
        cfg["amp"] = False
    if args.compile:
        cfg["compile"] = True
    if args.no_augment:
        cfg.setdefault("augment", {})["enabled"] = False
    return cfg


def _print_epoch(record: dict) -> None:
    if record.get("kind") != "epoch":
        return
    print(f"epoch {record['epoch']:>3}/{record['epochs']}  "
          f"train loss {record['train_loss']:.4f} decorr {record['train_decorr']:.4f} acc {record['train_acc']:.3f} | "
          f"val loss {record['val_loss']:.4f} decorr {record['val_decorr']:.4f} acc {record['val_acc']:.3f} | "
          f"lr {record['lr']:.2e}  {record['pairs_per_s']:.0f} pairs/s  {record['elapsed_s']:.0f} s", flush=True)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from tapcore.presets import apply_preset
    from tapcore.tap.train import pretrain

    overrides = _overrides(args)
    # the preset: --preset, else one named in the --config file, else the paper's settings
    cfg = apply_preset(args.preset or overrides.get("preset") or "paper", overrides)
    movie = _read(args.movie, args.channel, args.plane).movie
    val_movie = _read(args.val, args.channel, args.plane).movie if args.val else None
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 talks (and writes)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the rest of this process
    print(f"preset {cfg.preset}: bin {cfg.bin}, U-Net base {cfg.model.base_channels} depth {cfg.model.depth}, "
          f"patch {cfg.patch} px, batch {cfg.batch_size}, lr {cfg.lr:g}, {cfg.epochs} epochs x "
          f"{cfg.samples_per_epoch} pairs", flush=True)
    print(f"movie {args.movie}: {movie.shape[0]} frames of {movie.shape[1]} x {movie.shape[2]} px ({movie.dtype})"
          + (f"; validation movie {args.val}" if args.val else f"; validation: last {cfg.val_fraction:.0%} of frames"),
          flush=True)
    result = pretrain(movie, cfg, args.out, val_movie=val_movie, progress=_print_epoch, resume=args.resume)
    final = result.metrics["final"]
    print(f"TAP bundle written to {result.out_dir} (val acc {final.get('val_acc', float('nan')):.3f} "
          f"after {result.metrics['epochs_done']} epochs)")
    from tapcore.verdicts import bundle_verdicts

    for verdict in bundle_verdicts(result.out_dir):  # can these features be trusted?
        print(verdict.line())
    return 0


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


def _frames(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a frame range LO:HI, got {text!r}") from None
    return lo, hi


def cmd_content_view(args: argparse.Namespace) -> int:
    from tapcore.tap.content_view import ContentViewConfig, content_view, write_content_view

    cfg = ContentViewConfig(repeats=args.repeats, samples=args.samples, seed=args.seed, device=args.device,
                            batch_size=args.batch_size, frames=args.frames)
    if args.crops:
        cfg.crops = args.crops
    if args.resolutions:
        cfg.resolutions = args.resolutions
    if args.base_crop:
        cfg.base_crop = args.base_crop
    movie = _read(args.movie, args.channel, args.plane).movie

    def _line(rec: dict) -> None:
        if rec.get("kind") == "step":
            print(f"[{rec['step']}/{rec['steps']}] {rec['setting']}: acc {rec['val_acc']:.3f}", flush=True)

    result = content_view(movie, args.model, cfg, progress=_line)
    paths = write_content_view(result, args.out)
    sys.stdout.write(result.markdown())
    print(f"written: {', '.join(str(p) for p in paths.values())}")
    return 0


def register(subparsers) -> None:
    from tapcore.presets import PRESET_HELP, PRESETS
    from tapcore.tap.train import PretrainConfig

    p = subparsers.add_parser(
        "pretrain", help="pretrain TAP features on a movie (self-supervised)",
        description="Pretrain a time arrow prediction (TAP) model on a movie and write a TAP bundle. MOVIE is a "
                    "multi-page TIFF, a folder of frames or a Cell Tracking Challenge folder. Defaults are the "
                    "paper's (96 px patches, batch 152, 40 epochs of 50,000 pairs, lr 1e-4); --preset cpu picks "
                    "settings for computers without a GPU. Explicit options override the preset.")
    p.add_argument("movie", help="movie: TIFF, frame folder or CTC folder")
    p.add_argument("--val", help="validation movie (another location); default: hold out the last frames")
    p.add_argument("--out", required=True, help="output bundle folder (also gets metrics.jsonl and checkpoint/)")
    p.add_argument("--preset", choices=list(PRESETS),
                   help="; ".join(f"{k}: {v}" for k, v in PRESET_HELP.items()) + " (default paper)")
    # unset options keep the preset's value; the defaults shown are the paper preset's (PretrainConfig)
    options = {name: {"default": None} for name in PRETRAIN_OPTIONS}
    options["bin"]["choices"] = (1, 2, 4)
    options["max_time_s"].update(flag="--max-time", metavar="SECONDS")
    options["log_every"]["help"] = argparse.SUPPRESS
    add_config_options(p, PretrainConfig, PRETRAIN_OPTIONS, **options)
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    p.add_argument("--no-augment", action="store_true", help="no geometric/intensity augmentation (order flip stays)")
    p.add_argument("--config", help="JSON file of PretrainConfig options (command-line options win)")
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint/last.pt")
    p.add_argument("--channel", type=int, help="channel index for multi-channel TIFFs")
    p.add_argument("--plane", help="z-plane index for stacks with several planes")
    p.set_defaults(func=cmd_pretrain)

    p = subparsers.add_parser(
        "content-view", help="TAP validation accuracy vs crop size and resolution (paper Table 6)",
        description="Validate a TAP bundle on a (validation) movie at crop sizes 48/96/192 and at 0.5x/1x/2x "
                    "resolution, each repeated; writes content_view.csv/.md/.json to --out.")
    p.add_argument("movie", help="validation movie: TIFF, frame folder or CTC folder")
    p.add_argument("--model", required=True, help="TAP bundle folder (from tapcore pretrain)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--repeats", type=int, default=3, help="runs per setting (default 3)")
    p.add_argument("--samples", type=int, default=1000, help="validation pairs per run (default 1000)")
    p.add_argument("--crops", type=_ints, help="crop sizes at 1x, comma-separated (default 48,96,192)")
    p.add_argument("--resolutions", type=_floats, help="resolution factors, comma-separated (default 0.5,1,2)")
    p.add_argument("--base-crop", dest="base_crop", type=int, help="the training crop size (default 96)")
    p.add_argument("--frames", type=_frames, help="frame range LO:HI of the validation pairs (default all)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--channel", type=int, help="channel index for multi-channel TIFFs")
    p.add_argument("--plane", help="z-plane index for stacks with several planes")
    p.set_defaults(func=cmd_content_view)
