"""CLI: ``tapcore calibrate``, ``tapcore predict``, ``tapcore explain``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time

from tapcore.config import add_config_options, config_from_args

logger = logging.getLogger(__name__)


def _movie(path: str):
    from tapcore.io import read_input

    return read_input(path)


def _log_progress(record: dict) -> None:
    if record.get("kind") == "step" and record.get("frames"):
        logger.info("%s: frame %s / %s (%.0f s)", record.get("stage"), record.get("frames_done"), record.get("frames"),
                    record.get("elapsed_s", 0.0))


def cmd_calibrate(args: argparse.Namespace) -> int:
    from tapcore.events.calibrate import CalibrateConfig, calibrate_bundle

    movie = masks = None
    if args.movie:
        inp = _movie(args.movie)
        movie, masks = inp.movie, inp.masks
        if args.masks:
            from tapcore.io import read_masks

            masks = read_masks(args.masks, movie.shape)
        if masks is None:
            raise ValueError(f"{args.movie} has no event masks; give --masks (0 none, 1 division, 2 death)")
    res = calibrate_bundle(args.model, movie, masks, config_from_args(CalibrateConfig, args))
    r = res.report
    print(json.dumps({"temperature": r["temperature"], "bias": r["bias"], "n_samples": r["n_samples"],
                      "nll_before": r["nll_before"], "nll_after": r["nll_after"],
                      "ece_before": r["ece_before"], "ece_after": r["ece_after"], "source": r["source"],
                      "bias_reason": r.get("bias_reason"),
                      "written": str(res.path / "calibration.json")}, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from tapcore.predict import PredictConfig, predict_movie, write_prediction

    inp = _movie(args.movie)
    cfg = config_from_args(PredictConfig, args).validate()
    from tapcore import evaluate
    from tapcore.verdicts import Verdict, bundle_verdicts

    truth = truth_source = None
    if args.masks or args.truth or inp.source == "ctc":  # read before predicting: a bad file fails fast
        truth, truth_source = evaluate.load_truth(
            masks=args.masks, table=args.truth, ctc=args.movie if inp.source == "ctc" and not (args.masks or args.truth)
            else None, sequence=inp.meta.get("sequence", "01"))
    t0 = time.time()
    pred = predict_movie(inp.movie, args.model, cfg, progress=_log_progress)
    pred.record["input"] = inp.meta
    check = None
    if truth is not None:  # the prediction checks itself against the annotation it was given
        check = evaluate.match_events(pred.events, truth, radius=args.radius, frame_tolerance=args.frame_tolerance)
        pred.record["check"] = {"truth": truth_source, **check.summary()}
    paths = write_prediction(pred, args.out)
    verdicts = [*bundle_verdicts(args.model), *(Verdict.from_dict(v) for v in pred.record["verdicts"])]
    out = {"events": len(pred.events), "frames": int(inp.movie.shape[0]),
           "seconds": round(time.time() - t0, 2), "frames_per_s": round(pred.record["frames_per_s"], 3),
           "files": {k: str(v) for k, v in paths.items()}}
    if check is not None:
        out["check"] = pred.record["check"]
    out["verdicts"] = [v.line() for v in verdicts]
    print(json.dumps(out, indent=2))  # stdout stays one JSON document; the same lines go to stderr for people
    if check is not None:
        s = check.summary()
        fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
        print(f"check against {truth_source} ({s['n_true']} events) at threshold {cfg.threshold:g}: precision "
              f"{fmt(s['precision'])}  recall {fmt(s['recall'])}  F1 {fmt(s['f1'])}  (TP {s['tp']}, false alarms "
              f"{s['fp']}, misses {s['fn']}; within {args.radius:g} px and +-{args.frame_tolerance} frame(s))",
              file=sys.stderr)
    for verdict in verdicts:
        print(verdict.line(), file=sys.stderr)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from tapcore.explain import ExplainConfig, explain_frame, write_explanation

    inp = _movie(args.movie)
    target = "location" if args.y is not None or args.x is not None else "sum"
    cfg = dataclasses.replace(config_from_args(ExplainConfig, args), target=target).validate()
    exp = explain_frame(inp.movie, args.model, cfg)
    paths = write_explanation(exp, args.out)
    print(json.dumps({"target": exp.record["target"], "regions": [
        {"rank": r.rank, "y": r.y, "x": r.x, "score": round(r.score, 4)} for r in exp.regions],
        "files": {k: str(v) for k, v in paths.items()}}, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from tapcore.events.calibrate import CalibrateConfig
    from tapcore.explain import ExplainConfig
    from tapcore.predict import AMP_MODES, METHODS, PredictConfig

    p = subparsers.add_parser("calibrate", help="fit temperature scaling of an event head on its validation split "
                                                "and write calibration.json into the bundle",
                              description="Temperature scaling (Guo et al. 2017) by NLL on the head's validation "
                                          "logits (saved at training); with MOVIE (+ masks) they are recomputed on "
                                          "that movie's validation split.")
    p.add_argument("--model", required=True, help="event head bundle folder (tapcore train-head)")
    p.add_argument("--movie", default=None, help="optional movie (TIFF, frame folder or CTC folder) to calibrate on")
    p.add_argument("--masks", default=None, help="event masks for --movie (not needed for CTC folders)")
    add_config_options(p, CalibrateConfig, ["bias", "n_bins", "max_iter", "device"],
                       bias={"nargs": "?", "const": "on", "choices": ["auto", "on", "off"]},
                       n_bins={"flag": "--bins"})
    p.set_defaults(func=cmd_calibrate)

    p = subparsers.add_parser("predict", help="calibrated event maps, event list (CSV) and per-frame summary of a "
                                              "whole movie",
                              description="Writes events.csv, per_frame.csv, heatmaps.tif (float32 (T-1, Y, X)) and "
                                          "prediction.json into --out. Columns are documented in tapcore.predict.")
    p.add_argument("movie", help="movie: TIFF, frame folder or Cell Tracking Challenge folder")
    p.add_argument("--model", required=True, help="event head bundle folder")
    p.add_argument("--out", required=True, help="output folder")
    add_config_options(p, PredictConfig, ["threshold", "min_distance", "repeat_frames", "exclusive_classes", "tile", "overlap", "head_tile", "batch",
                                          "device", "amp", "method", "pmin", "pmax", "num_threads"],
                       amp={"choices": AMP_MODES}, method={"choices": METHODS}, num_threads={"flag": "--threads"})
    add_config_options(p, PredictConfig, ["calibrate", "keep_maps"],
                       calibrate={"flag": "--no-calibration", "action": "store_false",
                                  "help": "ignore the bundle's calibration.json"},
                       keep_maps={"flag": "--no-maps", "action": "store_false",
                                  "help": "do not keep/write heatmaps.tif (events only)"})
    truth = p.add_mutually_exclusive_group()
    truth.add_argument("--masks", default=None, help="event masks TIFF of the movie: also report precision, recall "
                                                     "and F1 of the events against them (as tapcore evaluate-events)")
    truth.add_argument("--truth", default=None, help="annotated events CSV (frame, y, x[, last_frame]) to check "
                                                     "against instead; a CTC folder is checked against its lineage")
    from tapcore.evaluate import DEFAULT_RADIUS

    p.add_argument("--radius", type=float, default=DEFAULT_RADIUS,
                   help="check: matching radius in px (default %(default)s)")
    p.add_argument("--frame-tolerance", type=int, default=1, help="check: frames of tolerance (default %(default)s)")
    p.set_defaults(func=cmd_predict)

    p = subparsers.add_parser("explain", help="Grad-CAM map and top-k regions of a frame pair (TAP or event head)",
                              description="TAP bundles: the time arrow (logit of the true order). Event heads: the "
                                          "event evidence summed over the frame, or at --y/--x. Writes cam.tif, "
                                          "cam.png, regions.csv, regions.npz, regions.png, explain.json.")
    p.add_argument("movie", help="movie: TIFF, frame folder or Cell Tracking Challenge folder")
    p.add_argument("--model", required=True, help="TAP or event head bundle folder")
    add_config_options(p, ExplainConfig, ["frame", "k", "size", "y", "x", "device", "pmin", "pmax"],
                       frame={"required": True})
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_explain)
