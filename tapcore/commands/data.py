"""CLI for data: ``tapcore synth``, ``tapcore info``, ``tapcore import-ctc``, ``tapcore evaluate-events``."""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- synth


def _cmd_synth(args: argparse.Namespace) -> int:
    from tapcore.config import config_to_dict
    from tapcore.io import write_tiff
    from tapcore.synthetic import SynthConfig, make_synthetic
    from tapcore.utils import atomic_write_json, atomic_write_text, sha256_array

    overrides = {
        "seed": args.seed, "frames": args.frames, "height": args.height, "width": args.width, "cells": args.cells,
        "division_rate": args.division_rate, "death_rate": args.death_rate, "read_noise": args.noise,
        "illumination_drift": args.illumination_drift, "dtype": args.dtype,
    }
    cfg = SynthConfig(**{k: v for k, v in overrides.items() if v is not None})
    synth = make_synthetic(cfg)
    out = Path(args.out)
    write_tiff(out / "movie.tif", synth.movie)
    write_tiff(out / "masks.tif", synth.masks, compress=True)
    atomic_write_text(out / "events.csv", synth.events.to_csv(index=False, float_format="%.2f"))
    atomic_write_json(out / "config.json", {"kind": "synthetic", "config": config_to_dict(cfg),
                                            "movie_sha256": sha256_array(synth.movie)})
    counts = synth.events["kind"].value_counts()
    print(f"wrote {out}/movie.tif {synth.movie.shape} {synth.movie.dtype}, masks.tif, events.csv "
          f"({int(counts.get('division', 0))} divisions, {int(counts.get('death', 0))} deaths), config.json")
    return 0


# -------------------------------------------------------------------------------------------- info


def describe_input(path: str, masks: str | None = None, channel: int | None = None,
                   plane: int | str | None = None) -> dict[str, Any]:
    """A JSON-able description of a movie input (what ``tapcore info`` prints)."""
    from tapcore.io import read_input

    inp = read_input(path, masks=masks, channel=channel, plane=plane)
    movie = inp.movie
    sample = movie[:: max(1, movie.shape[0] // 8)]
    info: dict[str, Any] = {
        "path": str(path), "source": inp.source, "frames": int(movie.shape[0]),
        "height": int(movie.shape[1]), "width": int(movie.shape[2]), "dtype": str(movie.dtype),
        "min": float(movie.min()), "max": float(movie.max()),
        "p1": float(np.percentile(sample, 1)), "p99.8": float(np.percentile(sample, 99.8)),
    }
    for key in ("sequence", "first_frame", "divisions", "skipped", "warnings"):
        if key in inp.meta:
            info[key] = inp.meta[key]
    if inp.masks is not None:
        m = inp.masks
        counts = np.bincount(m.ravel(), minlength=3)
        info["masks"] = {
            "division_px": int(counts[1]), "death_px": int(counts[2]),
            "frames_with_division": int(((m == 1).reshape(m.shape[0], -1)).any(1).sum()),
            "frames_with_death": int(((m == 2).reshape(m.shape[0], -1)).any(1).sum()),
        }
    return info


def _cmd_info(args: argparse.Namespace) -> int:
    info = describe_input(args.path, masks=args.masks, channel=args.channel, plane=_plane(args.plane))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['path']}: {info['source']} movie, {info['frames']} frames of {info['height']} x {info['width']} "
          f"{info['dtype']}")
    print(f"  intensity: min {info['min']:g}, max {info['max']:g}, 1st-99.8th percentile "
          f"{info['p1']:g}-{info['p99.8']:g}")
    if "first_frame" in info:
        print(f"  Cell Tracking Challenge sequence {info['sequence']}: first frame {info['first_frame']}, "
              f"{info['divisions']} divisions inside the movie")
    if "masks" in info:
        m = info["masks"]
        print(f"  masks: division {m['division_px']} px in {m['frames_with_division']} frames, "
              f"death {m['death_px']} px in {m['frames_with_death']} frames")
    else:
        print("  masks: none")
    for warning in info.get("warnings", []):
        print(f"  warning: {warning}")
    return 0


def _plane(value: str | None) -> int | str | None:
    if value is None or value == "time":
        return value
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--plane must be a z-plane number or 'time', got {value!r}") from None


# ---------------------------------------------------------------------------------------- import-ctc


def _cmd_import_ctc(args: argparse.Namespace) -> int:
    from tapcore.ctc import load_ctc
    from tapcore.io import write_tiff
    from tapcore.utils import atomic_write_json, atomic_write_text, sha256_array

    seq = load_ctc(args.folder, sequence=args.sequence, dilate=args.dilate)
    out = Path(args.out)
    write_tiff(out / "movie.tif", seq.movie)
    write_tiff(out / "masks.tif", seq.masks, compress=True)
    atomic_write_text(out / "events.csv", seq.events.to_csv(index=False, float_format="%.2f"))
    atomic_write_json(out / "meta.json", {**seq.meta, "movie_sha256": sha256_array(seq.movie),
                                          "shape": list(seq.movie.shape), "dtype": str(seq.movie.dtype)})
    print(f"wrote {out}/movie.tif {seq.movie.shape} {seq.movie.dtype}, masks.tif, events.csv "
          f"({seq.meta['divisions']} divisions; CTC frames {seq.meta['first_frame']}-{seq.meta['last_frame']} "
          f"are movie frames 0-{seq.movie.shape[0] - 1}), meta.json")
    if seq.meta.get("multipolar_divisions"):
        print(f"  {seq.meta['multipolar_divisions']} of the divisions have three or more daughters (multipolar)")
    if seq.meta.get("skipped"):
        from tapcore.ctc import skipped_summary

        print(f"  note: {skipped_summary(seq.meta['skipped'])}")
    return 0


# ------------------------------------------------------------------------------------ evaluate-events


def _cmd_evaluate_events(args: argparse.Namespace) -> int:
    from tapcore import evaluate

    pred = evaluate.read_events_csv(args.events)
    truth, truth_source = evaluate.load_truth(masks=args.masks, ctc=args.ctc, table=args.truth,
                                              sequence=args.sequence, link_radius=args.link_radius)
    result = evaluate.match_events(pred, truth, radius=args.radius, frame_tolerance=args.frame_tolerance,
                                   kind=args.kind, duplicates=args.duplicates)
    s = result.summary()

    def fmt(x: float | None) -> str:
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"

    print(f"truth: {truth_source} ({s['n_true']} events); predictions: {args.events} ({s['n_pred']} events)")
    print(f"matching: within {args.radius:g} px and +-{args.frame_tolerance} frame(s)"
          + (f", kind {args.kind}" if args.kind else ""))
    print(f"precision {fmt(s['precision'])}  recall {fmt(s['recall'])}  F1 {fmt(s['f1'])}  "
          f"(TP {s['tp']}, false alarms {s['fp']}, misses {s['fn']}"
          + (f", duplicates ignored {s['duplicates_ignored']}" if args.duplicates == "ignore" else "") + ")")
    if args.out:
        paths = result.write(args.out)
        print(f"wrote {', '.join(Path(p).name for p in paths.values())} to {args.out}")
    return 0


# ----------------------------------------------------------------------------------------- register


def register(subparsers: argparse._SubParsersAction) -> None:
    from tapcore.evaluate import DEFAULT_LINK_RADIUS, DEFAULT_RADIUS
    from tapcore.synthetic import SynthConfig

    d = SynthConfig()
    p = subparsers.add_parser("synth", help="write a synthetic movie with division/death masks and an event table",
                              description="Synthetic nuclei that drift, grow, divide (mask 1) and die (mask 2). "
                                          "Writes movie.tif, masks.tif, events.csv and config.json.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=None, help=f"random seed (default {d.seed})")
    p.add_argument("--frames", type=int, default=None, help=f"frames (default {d.frames})")
    p.add_argument("--height", type=int, default=None, help=f"frame height in px (default {d.height})")
    p.add_argument("--width", type=int, default=None, help=f"frame width in px (default {d.width})")
    p.add_argument("--cells", type=int, default=None, help=f"nuclei in the first frame (default {d.cells})")
    p.add_argument("--division-rate", type=float, default=None,
                   help=f"probability per frame that a grown nucleus enters mitosis (default {d.division_rate})")
    p.add_argument("--death-rate", type=float, default=None,
                   help=f"probability per frame that a nucleus starts dying (default {d.death_rate})")
    p.add_argument("--noise", type=float, default=None, help=f"Gaussian read noise in counts (default {d.read_noise})")
    p.add_argument("--illumination-drift", type=float, default=None,
                   help=f"amplitude of the drifting illumination gradient (default {d.illumination_drift})")
    p.add_argument("--dtype", choices=("uint16", "uint8", "float32"), default=None,
                   help=f"pixel type (default {d.dtype})")
    p.set_defaults(func=_cmd_synth)

    p = subparsers.add_parser("info", help="describe a movie (TIFF, frame folder or CTC folder) or explain why it "
                                           "cannot be read")
    p.add_argument("path", help="movie TIFF, folder of frames, or Cell Tracking Challenge folder")
    p.add_argument("--masks", default=None, help="event masks to check against the movie")
    p.add_argument("--channel", type=int, default=None, help="channel to read when the file has several")
    p.add_argument("--plane", default=None, help="z-plane to read when the file has several, or 'time'")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)

    p = subparsers.add_parser("import-ctc", help="Cell Tracking Challenge folder -> movie.tif, masks.tif, events.csv",
                              description="Divisions come from the lineage (man_track.txt): the parent's marker in "
                                          "its last frame and the daughters' markers in their first frame get mask "
                                          "value 1.")
    p.add_argument("folder", help="CTC dataset folder (holding 01/ and 01_GT/) or a sequence folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--sequence", default="01", help="sequence name (default %(default)s)")
    p.add_argument("--dilate", type=int, default=0,
                   help="grow the marked markers by this many pixels in masks.tif (default %(default)s: exact markers)")
    p.set_defaults(func=_cmd_import_ctc)

    p = subparsers.add_parser("evaluate-events", help="match predicted events to annotated events: precision, "
                                                      "recall, F1, misses and false alarms",
                              description="A prediction matches an annotated event within --radius pixels and "
                                          "--frame-tolerance frames of its frames; matching is one-to-one.")
    p.add_argument("events", help="predicted events CSV (columns frame, y, x; e.g. tapcore predict's events.csv)")
    truth = p.add_mutually_exclusive_group(required=True)
    truth.add_argument("--masks", help="event masks TIFF (1 division, 2 death) as the truth")
    truth.add_argument("--ctc", help="Cell Tracking Challenge folder: its lineage's divisions as the truth")
    truth.add_argument("--truth", help="annotated events CSV (frame, y, x[, last_frame]; e.g. from synth/import-ctc)")
    p.add_argument("--sequence", default="01", help="CTC sequence (default %(default)s)")
    p.add_argument("--radius", type=float, default=DEFAULT_RADIUS, help="matching radius in px (default %(default)s)")
    p.add_argument("--frame-tolerance", type=int, default=1, help="frames of tolerance (default %(default)s)")
    p.add_argument("--kind", default=None, help="evaluate only this kind (division or death)")
    p.add_argument("--link-radius", type=float, default=DEFAULT_LINK_RADIUS,
                   help="--masks: px linking a mother to her daughters in the next frame (default %(default)s)")
    p.add_argument("--duplicates", choices=("false_alarm", "ignore"), default="false_alarm",
                   help="extra predictions of a matched event: count as false alarms (default) or ignore")
    p.add_argument("--out", default=None, help="folder for matches.csv, misses.csv, false_alarms.csv, summary.json")
    p.set_defaults(func=_cmd_evaluate_events)
