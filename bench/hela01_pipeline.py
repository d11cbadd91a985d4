"""Benchmark: the end-to-end hela01 pipeline (issue 4's headline figures).

On the Cell Tracking Challenge movie ``../shared/data/hela01`` (92 frames, 700 x 1100, divisions from
the CTC lineage), with a split by frames:

1. pretrain TAP on the training frames (default 0-63; the last 10 % of them validate TAP),
2. train an A1 event head (TAP frozen, ResNet head) on the head frames (default 40-63, inside the
   training range) with the head's own time split (train / val / test frame ranges inside them),
3. calibrate it by temperature scaling on its validation crops (ECE before/after, top-label and
   positive-class, on the validation crops and on the head's held-out test crops),
4. predict whole-frame calibrated event maps on the test frames (default 64-91) and find peaks,
   timed (frames/s),
5. match the predicted events to the CTC divisions of the test frames (radius in px, +-1 frame):
   precision, recall, F1, matches / misses / false alarms, at several thresholds.

One JSON line per stage on stdout, then a summary line (config, seed, device, timings). Every
reduction from the paper's setting (TAP width, pairs, epochs, head frames) is an option and is
printed. Outputs (bundles, prediction, matches) go to ``--out`` (outside the project).

    nice -n 10 .venv/bin/python bench/hela01_pipeline.py --out /tmp/hela01_pipeline

On a loaded 2-core CPU a TAP run can be reused (``--tap DIR``) and the frames cut to a region
(``--region 0:700,0:552``: left half; divisions outside it are left out of the truth), e.g.

    nice -n 10 .venv/bin/python bench/hela01_pipeline.py --out /tmp/hela01_pipeline/run2 \
        --tap /tmp/hela01_pipeline/run1/tap --region 0:700,0:552 --head-frames 48:64 \
        --pairs-per-frame 1000 --head-val-pairs 800 --head-test-pairs 400 --head-epochs 3
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hela01"


def _frames(text: str, n: int, name: str) -> tuple[int, int]:
    """Parse ``"a:b"`` (half-open frame range) and check it against ``n`` frames."""
    try:
        a, b = (int(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"--{name} must look like START:STOP (half-open frame range), got {text!r}") from None
    if not 0 <= a < b <= n or b - a < 2:
        raise ValueError(f"--{name} {text} must be a range of at least 2 frames inside 0:{n}")
    return a, b


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record, default=_json_default), flush=True)


def _json_default(x: Any) -> Any:
    import numpy as np

    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return str(x)


def _log_progress(record: dict[str, Any]) -> None:
    """Epoch and done records of the library's progress callback, as JSON on stderr."""
    if record.get("kind") in ("epoch", "done") or record.get("stage") in ("features", "predict"):
        print(json.dumps(record, default=_json_default), file=sys.stderr, flush=True)


def _clean(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _scores(tp: int, fp: int, fn: int) -> dict[str, Any]:
    prec = tp / (tp + fp) if tp + fp else float("nan")
    rec = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else float("nan")
    return {"tp": tp, "fp": fp, "fn": fn, "precision": _clean(prec), "recall": _clean(rec), "f1": _clean(f1)}


def evaluate_at(pred_events, truth, test_range: tuple[int, int], threshold: float, radius: float,
                frame_tolerance: int):
    """Match predictions with probability >= threshold to the divisions of the test pairs.

    ``truth`` holds the divisions (parent rows, movie frame indices) of pairs ``(t, t+1)`` with both
    frames in the test range. A division straddling the range's first frame (parent in the frame
    before it) could be hit by a prediction at the first test pair within the frame tolerance: such
    divisions are matched too but counted neither as hits nor misses ("don't care"), so a correct
    prediction of them is not a false alarm.
    """
    from tapcore.evaluate import match_events

    a, b = test_range
    core = truth[(truth["frame"] >= a) & (truth["frame"] <= b - 2)]
    edge = truth[(truth["frame"] >= a - frame_tolerance) & (truth["frame"] < a)]
    both = truth.loc[core.index.union(edge.index)]
    pred = pred_events[pred_events["probability"] >= threshold]
    m = match_events(pred, both, radius=radius, frame_tolerance=frame_tolerance)
    tp = int((m.matches["frame_true"] >= a).sum()) if len(m.matches) else 0
    neutral = int(len(m.matches) - tp)
    fn = int((m.misses["frame"] >= a).sum()) if len(m.misses) else 0
    fp = int(len(m.false_alarms))
    out = {"threshold": threshold, "n_pred": int(len(pred)), "n_true": int(len(core)),
           **_scores(tp, fp, fn), "edge_matches_ignored": neutral,
           "radius_px": radius, "frame_tolerance": frame_tolerance}
    return out, m


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="CTC dataset folder (default ../shared/data/hela01)")
    p.add_argument("--out", default="/tmp/hela01_pipeline", help="work folder for bundles and outputs (outside the project)")
    p.add_argument("--train-frames", default="0:64", help="TAP pretraining frames START:STOP (half-open)")
    p.add_argument("--head-frames", default="40:64", help="event-head frames START:STOP, inside --train-frames")
    p.add_argument("--test-frames", default="64:92", help="prediction/evaluation frames START:STOP")
    p.add_argument("--region", default=None,
                   help="Y0:Y1,X0:X1: use only this part of every frame (CPU budgets); default the whole frame")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    # TAP
    p.add_argument("--tap", default=None, help="reuse this TAP bundle instead of pretraining")
    p.add_argument("--tap-budget-s", type=float, default=600.0, help="TAP training time budget (s)")
    p.add_argument("--tap-epochs", type=int, default=40, help="paper: 40")
    p.add_argument("--tap-samples", type=int, default=128, help="TAP pairs per epoch (tarrow: 50,000+)")
    p.add_argument("--tap-batch", type=int, default=16, help="paper: 152")
    p.add_argument("--tap-val-samples", type=int, default=128)
    p.add_argument("--tap-lr", type=float, default=1e-3, help="paper: 1e-4 (a short CPU run needs more)")
    p.add_argument("--tap-base-channels", type=int, default=16, help="U-Net width (paper: 32)")
    # head
    p.add_argument("--head-epochs", type=int, default=3, help="paper: 30 for the ResNet head")
    p.add_argument("--head", default=None, help="reuse this event-head bundle instead of training one")
    p.add_argument("--pairs-per-frame", type=int, default=400, help="paper: 1000")
    p.add_argument("--epoch-val-pairs", type=int, default=200, help="per-epoch validation pairs")
    p.add_argument("--head-val-pairs", type=int, default=800,
                   help="uniform random subsample of the head's validation crops (calibration set); 0 = all")
    p.add_argument("--head-test-pairs", type=int, default=600,
                   help="uniform random subsample of the head's test crops; 0 = all")
    p.add_argument("--head-fractions", default="0.6,0.2,0.2", help="head time split train,val,test inside --head-frames")
    # calibration / prediction / evaluation
    p.add_argument("--bias", nargs="?", const="on", default="auto", choices=["auto", "on", "off"],
                   help="event bias in calibration: auto (default; on for a balanced-trained head and an "
                        "unbalanced validation set), on, off")
    p.add_argument("--predict-uncalibrated", action="store_true",
                   help="predict with the head's raw probabilities (calibration.json is still fitted and reported)")
    p.add_argument("--min-distance", type=int, default=24, help="peak finding: px between reported events")
    p.add_argument("--thresholds", default="0.3,0.5,0.7,0.9", help="event probability thresholds to evaluate")
    p.add_argument("--main-threshold", type=float, default=0.5)
    p.add_argument("--radius", type=float, default=20.0, help="match radius (px)")
    p.add_argument("--frame-tolerance", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)

    import numpy as np
    import torch

    from tapcore import calibration as C
    from tapcore.events.calibrate import calibrate_bundle
    from tapcore.config import config_from_dict, config_to_dict
    from tapcore.events.dataset import CropPairConfig, CropSet, build_crop_pairs
    from tapcore.events.train import HeadConfig, HeadInputs, train_head
    from tapcore.io import read_input
    from tapcore.predict import PredictConfig, predict_movie, write_prediction
    from tapcore.tap.train import PretrainConfig, pretrain
    from tapcore.utils import environment_info, resolve_device, seed_everything, sha256_array

    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    thresholds = sorted(float(t) for t in args.thresholds.split(",") if t)
    if args.main_threshold not in thresholds:
        thresholds = sorted(thresholds + [args.main_threshold])
    fractions = tuple(float(f) for f in args.head_fractions.split(","))
    timings: dict[str, float] = {}
    t_all = time.time()

    # -- data and split ------------------------------------------------------------------------
    t0 = time.time()
    inp = read_input(args.data)
    if inp.masks is None:
        raise ValueError(f"{args.data} has no event masks; this benchmark needs a CTC folder with a lineage")
    movie, masks = inp.movie, inp.masks
    # one row per division (as tapcore.evaluate.events_from_ctc, without reading the folder twice):
    # frame = the parent's last frame, last_frame = the daughters' first frame, y, x = parent marker centroid
    ev = inp.events
    truth = ev[(ev["role"] == "parent") & np.isfinite(ev["y"]) & np.isfinite(ev["x"])].reset_index(drop=True)
    region = None
    if args.region:
        try:
            (y0, y1), (x0, x1) = (tuple(int(v) for v in part.split(":")) for part in args.region.split(","))
        except ValueError:
            raise ValueError(f"--region must look like Y0:Y1,X0:X1, got {args.region!r}") from None
        if not (0 <= y0 < y1 <= movie.shape[1] and 0 <= x0 < x1 <= movie.shape[2]):
            raise ValueError(f"--region {args.region} is outside the {movie.shape[1]} x {movie.shape[2]} frame")
        region = [y0, y1, x0, x1]
        movie, masks = movie[:, y0:y1, x0:x1], masks[:, y0:y1, x0:x1]
        truth = truth[(truth["y"] >= y0) & (truth["y"] < y1) & (truth["x"] >= x0) & (truth["x"] < x1)].copy()
        truth["y"] -= y0
        truth["x"] -= x0
    n = movie.shape[0]
    tr = _frames(args.train_frames, n, "train-frames")
    hd = _frames(args.head_frames, n, "head-frames")
    te = _frames(args.test_frames, n, "test-frames")
    if not (tr[0] <= hd[0] and hd[1] <= tr[1]):
        raise ValueError(f"--head-frames {args.head_frames} must lie inside --train-frames {args.train_frames}")
    if te[0] < tr[1]:
        raise ValueError(f"--test-frames {args.test_frames} overlap the training frames {args.train_frames}")
    test_truth = truth[(truth["frame"] >= te[0]) & (truth["frame"] <= te[1] - 2)]
    timings["load_s"] = time.time() - t0
    _emit({"stage": "split", "data": str(args.data), "movie_shape": list(movie.shape), "region": region, "dtype": str(movie.dtype),
           "movie_sha256": sha256_array(movie), "divisions_total": int(len(truth)),
           "tap_frames": list(tr), "head_frames": list(hd), "head_time_fractions": list(fractions),
           "test_frames": list(te), "test_pairs": te[1] - te[0] - 1,
           "divisions_in_train_frames": int(((truth["frame"] >= tr[0]) & (truth["frame"] <= tr[1] - 2)).sum()),
           "divisions_in_test_pairs": int(len(test_truth)),
           "divisions_straddling_test_start": int((truth["frame"] == te[0] - 1).sum()),
           "load_s": timings["load_s"]})

    # -- 1. TAP pretraining --------------------------------------------------------------------
    t0 = time.time()
    pcfg = config_from_dict(PretrainConfig, {
        "device": device, "batch_size": args.tap_batch, "samples_per_epoch": args.tap_samples,
        "epochs": args.tap_epochs, "max_time_s": args.tap_budget_s, "seed": args.seed, "lr": args.tap_lr,
        "val_samples": args.tap_val_samples, "model": {"base_channels": args.tap_base_channels}})
    if args.tap:
        tap_dir = Path(args.tap)
        tap_metrics = json.loads((tap_dir / "metrics.json").read_text())
        saved = json.loads((tap_dir / "config.json").read_text())
        pcfg_dict = saved.get("pretrain") or saved.get("train") or saved  # as recorded by the bundle
        reused = True
    else:
        tap_dir = out / "tap"
        res = pretrain(movie[tr[0]:tr[1]], pcfg, tap_dir, progress=_log_progress)
        tap_metrics = res.metrics
        pcfg_dict = config_to_dict(pcfg)
        reused = False
    timings["tap_s"] = time.time() - t0
    hist = tap_metrics.get("history") or []
    _emit({"stage": "tap", "reused": reused, "bundle": str(tap_dir),
           "val_acc": (tap_metrics.get("final") or {}).get("val_acc"), "best_val_acc": tap_metrics.get("best_val_acc"),
           "val_acc_per_epoch": [h.get("val_acc") for h in hist],
           "epochs_done": tap_metrics.get("epochs_done"), "train_time_s": tap_metrics.get("train_time_s"),
           "validation": tap_metrics.get("validation"), "pairs_seen": None if reused else (tap_metrics.get("epochs_done") or 0) * args.tap_samples,
           "seconds": timings["tap_s"], "config": pcfg_dict})

    # -- 2. A1 head ----------------------------------------------------------------------------
    t0 = time.time()
    hcfg = HeadConfig(strategy="A1", epochs=args.head_epochs, seed=args.seed, device=device,
                      num_threads=args.threads, epoch_val_pairs=args.epoch_val_pairs,
                      dataset=CropPairConfig(pairs_per_frame=args.pairs_per_frame, split="time",
                                             fractions=fractions, seed=args.seed))
    if args.head:
        head_dir = Path(args.head)
        head_metrics = json.loads((head_dir / "metrics.json").read_text())
        head_train_s = head_metrics.get("train_time_s")
    else:
        head_dir = out / "head_A1"
        pairs = build_crop_pairs(masks[hd[0]:hd[1]], hcfg.dataset, movie[hd[0]:hd[1]].shape)
        # the validation and test crops are not balanced (thousands of mostly negative crops); a CPU
        # run evaluates a uniform random subsample of them, which keeps their class frequencies
        rng = np.random.default_rng(args.seed + 1)
        subsampled = {}
        for name, limit in (("val", args.head_val_pairs), ("test", args.head_test_pairs)):
            cs = getattr(pairs, name)
            if limit and len(cs) > limit:
                pick = np.sort(rng.choice(len(cs), limit, replace=False))
                setattr(pairs, name, CropSet(cs.coords[pick], cs.labels[pick]))
            subsampled[name] = {"before": int(len(cs)), "after": int(len(getattr(pairs, name))),
                                "positives": int((getattr(pairs, name).labels != 0).sum())}
        subsampled["train"] = {"pairs": int(len(pairs.train)), "positives": int((pairs.train.labels != 0).sum())}
        _emit({"stage": "head_pairs", "pairs": subsampled, "table1": pairs.summary()["value"].astype(str).to_dict()})
        hres = train_head(movie[hd[0]:hd[1]], masks[hd[0]:hd[1]], tap_dir, hcfg, head_dir, progress=_log_progress,
                          inputs=HeadInputs(pairs=pairs))
        head_metrics, head_train_s = hres.metrics, hres.train_time_s
    timings["head_s"] = time.time() - t0
    test_m = head_metrics.get("test") or {}
    split_info = head_metrics.get("split") or {}
    _emit({"stage": "head", "strategy": "A1", "head": hcfg.head_name, "bundle": str(head_dir),
           "reused": bool(args.head), "frame_offset": hd[0], "split": split_info,
           "crop_test_precision": test_m.get("precision"), "crop_test_recall": test_m.get("recall"),
           "crop_test_confusion": test_m.get("confusion_matrix"),
           "val_history": [{k: h.get(k) for k in ("epoch", "train_loss", "val_loss", "val_acc", "val_precision",
                                                   "val_recall") if k in h}
                           for h in head_metrics.get("history") or []],
           "train_time_s": head_train_s, "seconds": timings["head_s"], "config": config_to_dict(hcfg)})

    # -- 3. calibration ------------------------------------------------------------------------
    t0 = time.time()
    cres = calibrate_bundle(head_dir, bias=args.bias, device=device)
    timings["calibrate_s"] = time.time() - t0
    c = cres.report  # the calibration.json content
    test_logits = np.load(head_dir / "test_logits.npy")
    test_labels = np.load(head_dir / "test_labels.npy")
    p_before = C.softmax_np(test_logits)
    p_after = C.softmax_np(cres.calibration.apply_numpy(test_logits))
    test_ece = {
        tag: {mode: float(C.ece(pr, test_labels, 15, mode)) for mode in ("top", "positive")}
        for tag, pr in (("before", p_before), ("after", p_after))}
    # the other variant (temperature + event bias, or temperature only), fitted on the same crops, not written
    alt = calibrate_bundle(head_dir, bias="off" if cres.report["bias_fitted"] else "on", device=device, write=False)
    p_alt = C.softmax_np(alt.calibration.apply_numpy(test_logits))
    alt_summary = {"method": alt.report["method"], **alt.calibration.to_dict(),
                   "val_nll_after": alt.report["nll_after"], "val_ece_after": alt.report["ece_after"],
                   "test_crops_nll_after": C.nll(test_logits, test_labels, alt.calibration),
                   "test_crops_ece_after": {mode: float(C.ece(p_alt, test_labels, 15, mode))
                                            for mode in ("top", "positive")}}
    _emit({"stage": "calibrate", "temperature": c["temperature"], "bias": c["bias"], "method": c["method"],
           "val_n": c["n_samples"], "val_positives": c["n_positive"],
           "val_nll_before": c["nll_before"], "val_nll_after": c["nll_after"],
           "val_ece_before": c["ece_before"], "val_ece_after": c["ece_after"],
           "test_crops_n": int(len(test_labels)), "test_crops_positives": int((test_labels != 0).sum()),
           "test_crops_nll_before": C.nll(test_logits, test_labels),
           "test_crops_nll_after": C.nll(test_logits, test_labels, cres.calibration),
           "test_crops_ece_before": test_ece["before"], "test_crops_ece_after": test_ece["after"],
           "bias_reason": c.get("bias_reason"), "seconds": timings["calibrate_s"], "not_applied_variant": alt_summary})

    # -- 4. prediction -------------------------------------------------------------------------
    t0 = time.time()
    pred_cfg = PredictConfig(threshold=thresholds[0], min_distance=args.min_distance, device=device,
                             num_threads=args.threads, calibrate=not args.predict_uncalibrated)
    pred = predict_movie(movie[te[0]:te[1]], head_dir, pred_cfg, progress=_log_progress)
    timings["predict_s"] = time.time() - t0
    pred_dir = out / "prediction"
    write_prediction(pred, pred_dir)
    events = pred.events.copy()
    events["frame"] += te[0]
    events["next_frame"] += te[0]
    events.to_csv(out / "events_movie_frames.csv", index=False)
    _emit({"stage": "predict", "frames": te[1] - te[0], "pairs": te[1] - te[0] - 1,
           "frame_shape": list(movie.shape[1:]), "seconds": pred.record.get("elapsed_s"),
           "frames_per_s": pred.record.get("frames_per_s"), "method": pred.record.get("method"),
           "calibration_applied": pred.record.get("calibration"), "peak_threshold": thresholds[0],
           "min_distance": args.min_distance, "n_events_at_lowest_threshold": int(len(events)),
           "max_prob_per_pair": [round(float(v), 4) for v in pred.per_frame.iloc[:, 3]],
           "out": str(pred_dir)})

    # -- 5. event-level evaluation -------------------------------------------------------------
    t0 = time.time()
    per_threshold = []
    main_eval = None
    for thr in thresholds:
        summ, match = evaluate_at(events, truth, te, thr, args.radius, args.frame_tolerance)
        per_threshold.append(summ)
        if thr == args.main_threshold:
            main_eval = summ
            match.write(out / "evaluation")
    timings["evaluate_s"] = time.time() - t0
    _emit({"stage": "evaluate", "kind": "division", "main_threshold": args.main_threshold, "main": main_eval,
           "per_threshold": per_threshold, "out": str(out / "evaluation"), "seconds": timings["evaluate_s"]})

    timings["total_s"] = time.time() - t_all
    _emit({"stage": "summary", "command": " ".join(sys.argv), "seed": args.seed, "device": device,
           "threads": args.threads, "environment": environment_info(device), "config": vars(args),
           "split": {"tap": list(tr), "head": list(hd), "test": list(te), "region": region},
           "tap_val_acc": (tap_metrics.get("final") or {}).get("val_acc"),
           "tap_best_val_acc": tap_metrics.get("best_val_acc"),
           "ece_val": {"before": c["ece_before"], "after": c["ece_after"]},
           "ece_test_crops": test_ece, "temperature": c["temperature"],
           "predict_frames_per_s": pred.record.get("frames_per_s"),
           "events": main_eval, "events_per_threshold": per_threshold, "timings_s": timings,
           "paper_deviations": {
               "tap": f"base_channels {args.tap_base_channels} (32), batch {args.tap_batch} (152), "
                      f"{args.tap_samples} pairs/epoch, lr {args.tap_lr} (1e-4), budget {args.tap_budget_s} s",
               "head": f"{args.head_epochs} epochs (30), frames {args.head_frames}, time split {args.head_fractions}"}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
