"""CLI: ``tapcore calibrate``, ``tapcore predict``, ``tapcore explain``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

logger = logging.getLogger(__name__)


def _movie(path: str):
    from tapcore.io import read_input

    return read_input(path)


def _log_progress(record: dict) -> None:
    if record.get("kind") == "step" and record.get("frames"):
        logger.info("%s: frame %s / %s (%.0f s)", record.get("stage"), record.get("frames_done"), record.get("frames"),
                    record.get("elapsed_s", 0.0))


def cmd_calibrate(args: argparse.Namespace) -> int:
    from tapcore.calibration import calibrate_bundle

    movie = masks = None
    if args.movie:
        inp = _movie(args.movie)
        movie, masks = inp.movie, inp.masks
        if args.masks:
            from tapcore.io import read_masks

            masks = read_masks(args.masks, movie.shape)
        if masks is None:
            raise ValueError(f"{args.movie} has no event masks; give --masks (0 none, 1 division, 2 death)")
    res = calibrate_bundle(args.model, movie, masks, bias=args.bias, n_bins=args.bins, max_iter=args.max_iter,
                           device=args.device if args.device != "auto" else "cpu")
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
    cfg = PredictConfig(threshold=args.threshold, min_distance=args.min_distance,
                        repeat_frames=args.repeat_frames, tile=args.tile,
                        overlap=args.overlap, batch=args.batch, device=args.device, amp=args.amp,
                        calibrate=not args.no_calibration, keep_maps=not args.no_maps,
                        num_threads=args.threads).validate()
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
    cfg = ExplainConfig(frame=args.frame, k=args.k, size=args.size, target=target, y=args.y, x=args.x,
                        device=args.device).validate()
    exp = explain_frame(inp.movie, args.model, cfg)
    paths = write_explanation(exp, args.out)
    print(json.dumps({"target": exp.record["target"], "regions": [
        {"rank": r.rank, "y": r.y, "x": r.x, "score": round(r.score, 4)} for r in exp.regions],
        "files": {k: str(v) for k, v in paths.items()}}, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from tapcore.calibration import DEFAULT_BINS
    from tapcore.explain import ExplainConfig
    from tapcore.predict import AMP_MODES, PredictConfig

    p = subparsers.add_parser("calibrate", help="fit temperature scaling of an event head on its validation split "
                                                "and write calibration.json into the bundle",
                              description="Temperature scaling (Guo et al. 2017) by NLL on the head's validation "
                                          "logits (saved at training); with MOVIE (+ masks) they are recomputed on "
                                          "that movie's validation split.")
    p.add_argument("--model", required=True, help="event head bundle folder (tapcore train-head)")
    p.add_argument("--movie", default=None, help="optional movie (TIFF, frame folder or CTC folder) to calibrate on")
    p.add_argument("--masks", default=None, help="event masks for --movie (not needed for CTC folders)")
    p.add_argument("--bias", nargs="?", const="on", default="auto", choices=["auto", "on", "off"],
                   help="also fit a bias on the event logits (rare events): auto (default: when the head was "
                        "trained on balanced classes and the validation set is not balanced), on (--bias alone) "
                        "or off")
    p.add_argument("--bins", type=int, default=DEFAULT_BINS, help="ECE bins (paper %(default)s)")
    p.add_argument("--max-iter", type=int, default=100, help="LBFGS iterations (default %(default)s)")
    p.add_argument("--device", default="auto", help="device for recomputing logits (default cpu)")
    p.set_defaults(func=cmd_calibrate)

    d = PredictConfig()
    p = subparsers.add_parser("predict", help="calibrated event maps, event list (CSV) and per-frame summary of a "
                                              "whole movie",
                              description="Writes events.csv, per_frame.csv, heatmaps.tif (float32 (T-1, Y, X)) and "
                                          "prediction.json into --out. Columns are documented in tapcore.predict.")
    p.add_argument("movie", help="movie: TIFF, frame folder or Cell Tracking Challenge folder")
    p.add_argument("--model", required=True, help="event head bundle folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--threshold", type=float, default=d.threshold,
                   help="lowest calibrated event probability of a reported event (default %(default)s)")
    p.add_argument("--min-distance", type=int, default=d.min_distance,
                   help="reported events are more than this many pixels apart (default %(default)s)")
    p.add_argument("--repeat-frames", type=int, default=d.repeat_frames,
                   help="drop an event within this many frame pairs and --min-distance pixels of a more probable "
                        "one of the same class (a repeat of it); 0 keeps every peak (default %(default)s)")
    p.add_argument("--tile", type=int, default=d.tile, help="backbone tile side for large frames (default %(default)s)")
    p.add_argument("--overlap", type=int, default=d.overlap, help="context pixels around tiles (default %(default)s)")
    p.add_argument("--batch", type=int, default=None, help="frames per call (default 1 on CPU, 8 on GPU)")
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda[:N] (default %(default)s)")
    p.add_argument("--amp", default=d.amp, choices=AMP_MODES, help="mixed precision on GPU (default %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-calibration", action="store_true", help="ignore the bundle's calibration.json")
    p.add_argument("--no-maps", action="store_true", help="do not keep/write heatmaps.tif (events only)")
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

    e = ExplainConfig()
    p = subparsers.add_parser("explain", help="Grad-CAM map and top-k regions of a frame pair (TAP or event head)",
                              description="TAP bundles: the time arrow (logit of the true order). Event heads: the "
                                          "event evidence summed over the frame, or at --y/--x. Writes cam.tif, "
                                          "cam.png, regions.csv, regions.npz, regions.png, explain.json.")
    p.add_argument("movie", help="movie: TIFF, frame folder or Cell Tracking Challenge folder")
    p.add_argument("--model", required=True, help="TAP or event head bundle folder")
    p.add_argument("--frame", type=int, required=True, help="frame t (0-based); the pair (t, t+1) is explained")
    p.add_argument("--k", type=int, default=e.k, help="top regions (paper %(default)s)")
    p.add_argument("--size", type=int, default=e.size, help="region side in pixels (default %(default)s)")
    p.add_argument("--y", type=int, default=None, help="event heads: explain the crop pair centred at (y, x)")
    p.add_argument("--x", type=int, default=None)
    p.add_argument("--device", default=e.device, help="auto | cpu | cuda[:N] (default %(default)s)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_explain)
