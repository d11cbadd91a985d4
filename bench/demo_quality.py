"""Benchmark: how good is the shipped demo model (``models/demo``, made by ``scripts/make_demo_model.py``)?

Prints one JSON object:

- ``tap``: the demo TAP's validation accuracy (held-out last frames of the demo movie; chance 0.50);
- ``head``: crop-level test metrics of the event head (confusion, precision, recall per class) on
  the demo movie's held-out crop pairs;
- ``calibration``: temperature, bias and ECE (top-label and event-probability) before / after;
- ``events``: whole-movie prediction (``tapcore.predict.predict_movie``, the Predict page's defaults
  unless ``--threshold`` / ``--min-distance`` say otherwise) on a synthetic movie of **another seed**
  (``--seed``, default 1; the model never saw it), matched to that movie's event table with
  ``tapcore.evaluate.match_events`` (20 px, +-1 frame): precision / recall / F1 per class and for all
  events together, counted two ways: ``strict`` (every extra prediction of a matched event is a false
  alarm) and ``duplicates_ignored`` (a repeat of a matched event in a neighbouring frame pair is set
  aside); plus the events predicted on frame pairs that hold no annotated event;
- ``build``: the rebuild time and settings from ``models/demo/build.json``.

    .venv/bin/python bench/demo_quality.py [--model models/demo] [--seed 1] [--threads 1]

The same figures by hand with the CLI::

    tapcore synth --out /tmp/seed1 --seed 1
    tapcore predict /tmp/seed1/movie.tif --model models/demo --out /tmp/pred1
    tapcore evaluate-events /tmp/pred1/events.csv --truth /tmp/seed1/events.csv --kind division
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tapcore.runtime import configure_process  # noqa: E402

configure_process()  # before torch: huge-page CPU allocations (tapcore.runtime)


def _round(x, nd=4):
    if isinstance(x, float):
        return round(x, nd)
    if isinstance(x, list):
        return [_round(v, nd) for v in x]
    if isinstance(x, dict):
        return {k: _round(v, nd) for k, v in x.items()}
    return x


def event_scores(pred, truth, n_frames: int) -> dict:
    """Event-level P/R/F1 per class (strict and with duplicates ignored) and predictions on empty frame pairs."""
    from tapcore.evaluate import match_events

    out: dict = {}
    for kind in ("division", "death", None):
        name = kind or "all"
        strict = match_events(pred, truth, kind=kind).summary()
        lenient = match_events(pred, truth, kind=kind, duplicates="ignore").summary()
        out[name] = {"strict": strict, "duplicates_ignored": lenient}
    # frame pairs (t, t+1) with no annotated event within +-1 frame of either frame
    busy = set()
    for row in truth.itertuples():
        for t in range(int(row.frame) - 2, int(row.last_frame) + 2):
            busy.add(t)
    quiet = [t for t in range(n_frames - 1) if t not in busy]
    on_quiet = pred[pred["frame"].isin(quiet)]
    out["quiet_frame_pairs"] = {"n": len(quiet), "events_predicted": int(len(on_quiet))}
    out["first_pair_events"] = int((pred["frame"] == 0).sum())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "demo"), help="event-head bundle (default: models/demo)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the unseen synthetic movie (default 1; the demo is 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--threshold", type=float, default=None, help="event threshold (default: PredictConfig's)")
    parser.add_argument("--min-distance", type=int, default=None, help="peak distance in px (default: PredictConfig's)")
    args = parser.parse_args(argv)

    import torch

    from tapcore.predict import PredictConfig, predict_movie
    from tapcore.synthetic import SynthConfig, make_synthetic
    from tapcore.utils import read_json

    torch.set_num_threads(args.threads)
    model = Path(args.model)
    tap_metrics = read_json(model / "tap" / "metrics.json")
    metrics = read_json(model / "metrics.json")
    calib = read_json(model / "calibration.json") if (model / "calibration.json").is_file() else {}
    build = read_json(model / "build.json") if (model / "build.json").is_file() else None

    cfg = PredictConfig(device="cpu")
    if args.threshold is not None:
        cfg.threshold = args.threshold
    if args.min_distance is not None:
        cfg.min_distance = args.min_distance
    synth = make_synthetic(SynthConfig(seed=args.seed))
    t0 = time.time()
    pred = predict_movie(synth.movie, model, cfg)
    predict_s = time.time() - t0
    truth = synth.events
    result = {
        "model": str(model),
        "tap": {"val_acc": tap_metrics["final"]["val_acc"], "best_val_acc": tap_metrics.get("best_val_acc"),
                "epochs": tap_metrics.get("epochs_done"), "train_time_s": tap_metrics.get("train_time_s"),
                "chance": 0.5},
        "head": {"strategy": metrics.get("strategy"), "task": metrics.get("task"),
                 "class_names": metrics["test"]["class_names"], "test_accuracy": metrics["test"]["accuracy"],
                 "test_precision": metrics["test"]["precision"], "test_recall": metrics["test"]["recall"],
                 "test_confusion": metrics["test"]["confusion_matrix"], "train_time_s": metrics.get("train_time_s")},
        "calibration": {k: calib.get(k) for k in ("method", "temperature", "bias", "ece_before", "ece_after")},
        "events": {
            "movie": {"synth_seed": args.seed, "shape": list(synth.movie.shape),
                      "divisions": int((truth["kind"] == "division").sum()), "deaths": int((truth["kind"] == "death").sum())},
            "predict": {"threshold": cfg.threshold, "min_distance": cfg.min_distance, "n_events": int(len(pred.events)),
                        "seconds": predict_s, "threads": args.threads},
            **event_scores(pred.events, truth, synth.movie.shape[0]),
        },
        "build": build,
    }
    print(json.dumps(_round(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
