"""Event-level evaluation: predicted events matched one-to-one to annotated events.

A predicted event (``frame, y, x``; e.g. a row of ``predict``'s ``events.csv``) matches an
annotated event when it lies within ``radius`` pixels of it and its frame is within
``frame_tolerance`` frames of the annotated event's frames. Annotated events may span several
frames (``frame`` .. ``last_frame``: a division covers the mother's last frame and the daughters'
first frame, a death all its frames); the frame distance is 0 inside that span. Each annotated
event is matched at most once and each prediction at most once; among all one-to-one pairings
the matching maximises the number of matches, then minimises the total distance (Hungarian
assignment, ``scipy.optimize.linear_sum_assignment``, per connected group of candidates).

Truth comes from masks (:func:`events_from_masks`), from a CTC lineage (:func:`events_from_ctc`)
or from any table with ``frame, y, x`` columns (``last_frame`` optional).

Units: frames are 0-based movie indices, ``y``/``x`` and ``radius`` are pixels.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

logger = logging.getLogger(__name__)

#: Mask value -> event kind.
KIND_NAMES = {1: "division", 2: "death"}
#: Default matching radius in pixels (under half of the paper's 48-pixel crop).
DEFAULT_RADIUS = 20.0
#: Default largest distance (px) between a mother's centroid and her daughters' in
#: :func:`events_from_masks` (HeLa daughters lie up to 35 px from their mother in the CTC markers).
DEFAULT_LINK_RADIUS = 40.0
#: Columns of :func:`events_from_masks`.
MASK_EVENT_COLUMNS = ["frame", "last_frame", "y", "x", "kind", "area", "event_id"]


@dataclass
class EventMatch:
    """Result of :func:`match_events`.

    Attributes:
        tp: matched predictions (= matched annotated events).
        fp: predictions without an annotated event (false alarms).
        fn: annotated events without a prediction (misses).
        precision: ``tp / (tp + fp)`` (NaN without predictions).
        recall: ``tp / (tp + fn)`` (NaN without annotated events).
        f1: ``2 tp / (2 tp + fp + fn)`` (NaN when both tables are empty).
        matches: one row per match: ``pred_index``, ``true_index`` (row labels in the inputs),
            ``frame_pred, y_pred, x_pred, frame_true, last_frame_true, y_true, x_true``,
            ``distance`` (px), ``frame_gap`` (frames outside the annotated span), plus the prediction's
            ``probability`` / ``class`` and the truth's ``kind`` when present.
        misses: the unmatched annotated events (input rows, ``true_index`` column added).
        false_alarms: the unmatched predictions (input rows, ``pred_index`` column added).
        duplicates: predictions not counted as false alarms because they repeat a matched event
            (only with ``duplicates="ignore"``; otherwise empty).
        radius, frame_tolerance: the matching criteria used.
    """

    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    matches: pd.DataFrame
    misses: pd.DataFrame
    false_alarms: pd.DataFrame
    duplicates: pd.DataFrame = field(default_factory=pd.DataFrame)
    radius: float = DEFAULT_RADIUS
    frame_tolerance: int = 1

    def summary(self) -> dict[str, Any]:
        """JSON-able counts and scores (NaN written as None)."""

        def clean(x: float) -> float | None:
            return None if math.isnan(x) else float(x)

        return {
            "tp": self.tp, "fp": self.fp, "fn": self.fn,
            "precision": clean(self.precision), "recall": clean(self.recall), "f1": clean(self.f1),
            "n_pred": self.tp + self.fp + len(self.duplicates), "n_true": self.tp + self.fn,
            "duplicates_ignored": len(self.duplicates),
            "radius_px": float(self.radius), "frame_tolerance": int(self.frame_tolerance),
        }

    def write(self, out_dir: str | os.PathLike) -> dict[str, str]:
        """Write ``matches.csv``, ``misses.csv``, ``false_alarms.csv`` and ``summary.json`` atomically."""
        from pathlib import Path

        from tapcore.utils import atomic_write_json, atomic_write_text

        out = Path(out_dir)
        paths = {}
        for name, table in (("matches", self.matches), ("misses", self.misses), ("false_alarms", self.false_alarms)):
            paths[name] = str(atomic_write_text(out / f"{name}.csv", table.to_csv(index=False)))
        paths["summary"] = str(atomic_write_json(out / "summary.json", self.summary()))
        return paths


def _check_table(name: str, table: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"{name} must be a table (DataFrame) with columns frame, y, x")
    missing = [c for c in ("frame", "y", "x") if c not in table.columns]
    if missing:
        raise ValueError(
            f"{name} lacks column(s) {', '.join(missing)}; event tables need frame, y, x "
            f"(found: {', '.join(map(str, table.columns)) or 'no columns'})"
        )
    for c in ("frame", "y", "x"):
        if len(table) and not np.isfinite(pd.to_numeric(table[c], errors="coerce")).all():
            raise ValueError(f"{name}: column {c} must hold finite numbers")
    return table


def _select_kind(table: pd.DataFrame, kind: str | None, name: str, *, predictions: bool = False) -> pd.DataFrame:
    """Rows of one event kind, by the ``kind`` or ``class`` column.

    Predictions of a binary model carry a generic class (e.g. ``"event"``) rather than an event
    kind: when none of a prediction table's values names a kind, all its rows are kept.
    """
    if kind is None:
        return table
    for col in ("kind", "class"):
        if col in table.columns:
            values = table[col].astype(str)
            if predictions and not values.isin(list(KIND_NAMES.values())).any():
                logger.info("%s name no event kinds in column %r; all rows are kept", name, col)
                return table
            if not (values == kind).any() and len(table):
                logger.warning("%s has no rows of kind %r (values: %s)", name, kind, sorted(set(values))[:5])
            return table[values == kind]
    return table


def match_events(
    pred_events: pd.DataFrame,
    true_events: pd.DataFrame,
    radius: float = DEFAULT_RADIUS,
    frame_tolerance: int = 1,
    *,
    kind: str | None = None,
    duplicates: str = "false_alarm",
) -> EventMatch:
    """Match predicted to annotated events one-to-one (see the module docstring).

    Args:
        pred_events: predictions with columns ``frame, y, x`` (others are carried along).
        true_events: annotated events with ``frame, y, x`` and optionally ``last_frame``. A CTC
            event table (with a ``role`` column) contributes its ``parent`` rows, one per division.
        radius: largest distance in pixels between a prediction and its annotated event.
        frame_tolerance: largest number of frames a prediction may lie outside the event's span.
        kind: evaluate only this kind (``"division"``, ``"death"``), selecting rows by the
            ``kind`` or ``class`` column of each table that has one.
        duplicates: ``"false_alarm"`` (default, strict one-to-one) counts extra predictions of an
            already matched event as false alarms; ``"ignore"`` sets them aside in ``duplicates``.
    """
    if not radius > 0:
        raise ValueError(f"radius must be a positive number of pixels, got {radius}")
    if frame_tolerance < 0 or int(frame_tolerance) != frame_tolerance:
        raise ValueError(f"frame_tolerance must be a whole number of frames >= 0, got {frame_tolerance}")
    if duplicates not in ("false_alarm", "ignore"):
        raise ValueError(f"duplicates must be 'false_alarm' or 'ignore', got {duplicates!r}")
    frame_tolerance = int(frame_tolerance)
    pred = _check_table("predicted events", pred_events)
    truth = _check_table("annotated events", true_events)
    if "role" in truth.columns:
        truth = truth[truth["role"] == "parent"]
    pred = _select_kind(pred, kind, "predicted events", predictions=True)
    truth = _select_kind(truth, kind, "annotated events")

    pf = pred["frame"].to_numpy(np.float64)
    pyx = pred[["y", "x"]].to_numpy(np.float64).reshape(-1, 2)
    tf0 = truth["frame"].to_numpy(np.float64)
    tf1 = truth["last_frame"].to_numpy(np.float64) if "last_frame" in truth.columns else tf0.copy()
    tf1 = np.maximum(tf1, tf0)
    tyx = truth[["y", "x"]].to_numpy(np.float64).reshape(-1, 2)

    # candidate pairs: within radius in space and frame_tolerance outside the event's span in time
    pi_list, ti_list, cost_list, dist_list, dt_list = [], [], [], [], []
    if len(pred) and len(truth):
        tree = cKDTree(pyx)
        for ti, near in enumerate(tree.query_ball_point(tyx, r=radius)):
            if not near:
                continue
            near = np.asarray(near)
            dt = np.maximum(np.maximum(tf0[ti] - pf[near], pf[near] - tf1[ti]), 0.0)
            ok = dt <= frame_tolerance
            near, dt = near[ok], dt[ok]
            dist = np.hypot(pyx[near, 0] - tyx[ti, 0], pyx[near, 1] - tyx[ti, 1])
            pi_list.append(near)
            ti_list.append(np.full(near.size, ti))
            dist_list.append(dist)
            dt_list.append(dt)
            cost_list.append(dist / radius + 0.01 * dt / (frame_tolerance + 1))
    if pi_list:
        cand_p = np.concatenate(pi_list).astype(np.int64)
        cand_t = np.concatenate(ti_list).astype(np.int64)
        cand_c = np.concatenate(cost_list)
        cand_d = np.concatenate(dist_list)
        cand_dt = np.concatenate(dt_list)
    else:
        cand_p = cand_t = np.zeros(0, np.int64)
        cand_c = cand_d = cand_dt = np.zeros(0)

    matched: list[tuple[int, int, float, float]] = []  # (pred row, truth row, distance, dt)
    if cand_p.size:
        n_p, n_t = len(pred), len(truth)
        graph = coo_matrix((np.ones(cand_p.size), (cand_p, n_p + cand_t)), shape=(n_p + n_t, n_p + n_t))
        _, comp = connected_components(graph, directed=False)
        edge_comp = comp[cand_p]
        for c in np.unique(edge_comp):
            sel = edge_comp == c
            ps, p_idx = np.unique(cand_p[sel], return_inverse=True)
            ts, t_idx = np.unique(cand_t[sel], return_inverse=True)
            big = 2.0 * (min(ps.size, ts.size) + 1) * 1.02  # any extra match outweighs all distances
            cost = np.full((ps.size, ts.size), big)
            cost[p_idx, t_idx] = cand_c[sel]
            rows, cols = linear_sum_assignment(cost)
            lookup = {(a, b): (d, t) for a, b, d, t in zip(p_idx, t_idx, cand_d[sel], cand_dt[sel])}
            for r, k in zip(rows, cols):
                if (r, k) in lookup:
                    d, t = lookup[(r, k)]
                    matched.append((int(ps[r]), int(ts[k]), float(d), float(t)))

    matched_p = {m[0] for m in matched}
    matched_t = {m[1] for m in matched}
    unmatched_p = [i for i in range(len(pred)) if i not in matched_p]
    dup_rows: list[int] = []
    if duplicates == "ignore" and cand_p.size:
        dup_set = set(cand_p[np.isin(cand_t, list(matched_t))].tolist()) - matched_p
        dup_rows = [i for i in unmatched_p if i in dup_set]
        unmatched_p = [i for i in unmatched_p if i not in dup_set]
    unmatched_t = [i for i in range(len(truth)) if i not in matched_t]

    match_rows = []
    for pi, ti, d, dt in sorted(matched, key=lambda m: (tf0[m[1]], m[1])):
        row = {
            "pred_index": pred.index[pi], "true_index": truth.index[ti],
            "frame_pred": pred["frame"].iloc[pi], "y_pred": float(pyx[pi, 0]), "x_pred": float(pyx[pi, 1]),
            "frame_true": truth["frame"].iloc[ti], "last_frame_true": int(tf1[ti]),
            "y_true": float(tyx[ti, 0]), "x_true": float(tyx[ti, 1]), "distance": d, "frame_gap": int(dt),
        }
        for col in ("probability", "class"):
            if col in pred.columns:
                row[col] = pred[col].iloc[pi]
        if "kind" in truth.columns:
            row["kind"] = truth["kind"].iloc[ti]
        match_rows.append(row)
    base_cols = ["pred_index", "true_index", "frame_pred", "y_pred", "x_pred", "frame_true", "last_frame_true",
                 "y_true", "x_true", "distance", "frame_gap"]
    matches = pd.DataFrame(match_rows, columns=base_cols + [c for c in ("probability", "class", "kind")
                                                            if match_rows and c in match_rows[0]])
    misses = truth.iloc[unmatched_t].copy()
    misses.insert(0, "true_index", truth.index[unmatched_t])
    false_alarms = pred.iloc[unmatched_p].copy()
    false_alarms.insert(0, "pred_index", pred.index[unmatched_p])
    dups = pred.iloc[dup_rows].copy()
    dups.insert(0, "pred_index", pred.index[dup_rows])

    tp, fp, fn = len(matched), len(unmatched_p), len(unmatched_t)
    nan = float("nan")
    return EventMatch(
        tp=tp, fp=fp, fn=fn,
        precision=tp / (tp + fp) if tp + fp else nan,
        recall=tp / (tp + fn) if tp + fn else nan,
        f1=2 * tp / (2 * tp + fp + fn) if tp + fp + fn else nan,
        matches=matches.reset_index(drop=True), misses=misses.reset_index(drop=True),
        false_alarms=false_alarms.reset_index(drop=True), duplicates=dups.reset_index(drop=True),
        radius=float(radius), frame_tolerance=frame_tolerance,
    )


def events_from_masks(
    masks: np.ndarray,
    value: int | None = None,
    *,
    link_radius: float = DEFAULT_LINK_RADIUS,
    max_frames: dict[int, int | None] | None = None,
) -> pd.DataFrame:
    """Annotated events from event masks: one row per event.

    Each connected mask component (8-connectivity) of one value in one frame is an object. Objects
    of frame t+1 continue events of frame t: a mother in her last frame and her two daughters in
    their first frame form one division; a death's objects (fragments too) over its frames form one
    death. Continuations are chosen by a minimum-distance assignment (overlapping objects count as
    distance 0): an object links to an object of the previous frame only when their centroids are
    within ``link_radius`` pixels, and a division's mother takes at most two daughters. An event
    never spans more than ``max_frames[value]`` frames (default: 2 for divisions, as the CTC import
    and the synthetic movies mark them; unlimited for deaths), so a daughter that is itself marked
    as a mother in the next frame starts a new event.

    Masks cannot tell a daughter from an unrelated mother marked in the same frame; when the event
    table is available (``tapcore import-ctc`` / ``tapcore synth`` write ``events.csv``; or
    :func:`events_from_ctc`), prefer it as the truth.

    Args:
        masks: ``(T, Y, X)`` with 0 = none, 1 = division, 2 = death.
        value: only this mask value (default: every non-zero value).
        link_radius: largest centroid distance (px) linking objects of consecutive frames.
        max_frames: longest event per mask value (None = unlimited).

    Returns:
        DataFrame with columns ``frame`` (first frame), ``last_frame``, ``y``, ``x`` (area-weighted
        centroid in the first frame), ``kind``, ``area`` (pixels in the first frame), ``event_id``.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (T, Y, X), got shape {masks.shape}")
    limits: dict[int, int | None] = {1: 2, 2: None}
    limits.update(max_frames or {})
    capacity = {1: 2}  # continuations one object can take (None = any)
    if value is not None:
        values = [int(value)]
    elif masks.dtype == np.uint8:
        values = [int(v) for v in np.flatnonzero(np.bincount(masks.ravel(), minlength=3)) if v != 0]
    else:
        values = [int(v) for v in np.unique(masks) if v != 0]
    structure = np.ones((3, 3), bool)
    rows = []
    for v in values:
        limit, cap = limits.get(v), capacity.get(v)
        groups: list[dict[str, Any]] = []  # frame, last_frame, first-frame objects (cy, cx, area)
        prev: list[tuple[float, float, int, set[tuple[int, int]]]] = []  # (cy, cx, group, pixels) of frame t-1
        for t in range(masks.shape[0]):
            sel = masks[t] == v
            if not sel.any():
                prev = []
                continue
            lab, _ = ndimage.label(sel, structure=structure)
            objs = []  # (cy, cx, area, pixel set)
            for k, sl in enumerate(ndimage.find_objects(lab), start=1):
                ys, xs = np.nonzero(lab[sl] == k)
                ys, xs = ys + sl[0].start, xs + sl[1].start
                objs.append((float(ys.mean()), float(xs.mean()), int(ys.size), set(zip(ys.tolist(), xs.tolist()))))
            # previous-frame objects whose event may still grow, each with its capacity in slots
            slots = []
            for j, (py, px, g, _pix) in enumerate(prev):
                if limit is not None and t - groups[g]["frame"] + 1 > limit:
                    continue
                slots.extend([j] * (cap if cap is not None else len(objs)))
            assign: dict[int, int] = {}
            if slots:
                big = 1e9
                cost = np.full((len(objs), len(slots) + len(objs)), big)
                for i, (cy, cx, _a, pix) in enumerate(objs):
                    cost[i, len(slots) + i] = link_radius  # "starts a new event"
                    for s_i, j in enumerate(slots):
                        py, px, _g, ppix = prev[j]
                        d = 0.0 if pix & ppix else math.hypot(py - cy, px - cx)
                        if d <= link_radius:
                            cost[i, s_i] = d
                r_idx, c_idx = linear_sum_assignment(cost)
                for i, c in zip(r_idx, c_idx):
                    if c < len(slots) and cost[i, c] < big:
                        assign[int(i)] = slots[c]
            cur = []
            for i, (cy, cx, a, pix) in enumerate(objs):
                if i in assign:
                    g = prev[assign[i]][2]
                else:
                    g = len(groups)
                    groups.append({"frame": t, "last_frame": t, "first": []})
                groups[g]["last_frame"] = t
                if groups[g]["frame"] == t:
                    groups[g]["first"].append((cy, cx, a))
                cur.append((cy, cx, g, pix))
            prev = cur
        for grp in groups:
            area = sum(o[2] for o in grp["first"])
            rows.append({
                "frame": grp["frame"], "last_frame": grp["last_frame"],
                "y": sum(o[0] * o[2] for o in grp["first"]) / area, "x": sum(o[1] * o[2] for o in grp["first"]) / area,
                "kind": KIND_NAMES.get(v, f"value_{v}"), "area": area,
            })
    table = pd.DataFrame(rows, columns=MASK_EVENT_COLUMNS[:-1])
    table = table.sort_values(["frame", "y", "x"], kind="stable").reset_index(drop=True)
    table["event_id"] = np.arange(len(table))
    return table.astype({"frame": int, "last_frame": int, "area": int})


def events_from_ctc(folder: str | os.PathLike, sequence: str | None = "01") -> pd.DataFrame:
    """Divisions of a CTC sequence as annotated events (one row per division, movie frame indices)."""
    from tapcore import ctc

    divisions = ctc.load_ctc(folder, sequence).divisions
    located = divisions[np.isfinite(divisions["y"]) & np.isfinite(divisions["x"])]
    if len(located) < len(divisions):
        logger.warning("%d division(s) without a parent marker in its last frame are left out",
                       len(divisions) - len(located))
    return located.reset_index(drop=True)


def read_events_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read an events CSV (``frame, y, x`` at least) with a clear error when it is not one."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; expected an events CSV with columns frame, y, x")
    try:
        table = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path} is empty; an events CSV needs a header line with frame, y, x") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a readable CSV ({exc}); expected columns frame, y, x") from exc
    return _check_table(f"{path}", table)


def load_truth(*, masks: str | os.PathLike | None = None, ctc: str | os.PathLike | None = None,
               table: str | os.PathLike | None = None, sequence: str | None = "01",
               link_radius: float = DEFAULT_LINK_RADIUS) -> tuple[pd.DataFrame, str]:
    """Annotated events from exactly one source, and a description of it.

    ``masks``: an event-mask TIFF (:func:`events_from_masks`); ``ctc``: a Cell Tracking Challenge
    folder (:func:`events_from_ctc`); ``table``: an events CSV (``frame, y, x[, last_frame]``).
    ``tapcore evaluate-events``, ``tapcore predict`` and the app's Predict page all take their truth
    from here, so the same files give the same numbers everywhere.
    """
    given = [name for name, v in (("masks", masks), ("ctc", ctc), ("table", table)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one source of annotated events (masks, CTC folder or events table), "
                         f"got {', '.join(given) or 'none'}")
    if masks is not None:
        from tapcore.io import read_masks

        return events_from_masks(read_masks(masks), link_radius=link_radius), f"masks {masks}"
    if ctc is not None:
        return events_from_ctc(ctc, sequence=sequence), f"CTC lineage {ctc}"
    return read_events_csv(table), f"event table {table}"


def threshold_curve(pred_events: pd.DataFrame, true_events: pd.DataFrame, thresholds: Any,
                    radius: float = DEFAULT_RADIUS, frame_tolerance: int = 1) -> pd.DataFrame:
    """Precision, recall and F1 of the predictions kept at each probability threshold.

    A prediction is kept at threshold ``t`` when its ``probability`` is at least ``t`` (as the app's
    slider and ``tapcore predict --threshold`` do); each row is :func:`match_events` on those.

    Returns:
        DataFrame with columns ``threshold, n_pred, tp, fp, fn, precision, recall, f1``.
    """
    _check_table("predicted events", pred_events)
    if "probability" not in pred_events.columns:
        raise ValueError("predicted events need a probability column to sweep thresholds")
    prob = pred_events["probability"].to_numpy(np.float64)
    rows = []
    for t in np.asarray(thresholds, dtype=np.float64):
        m = match_events(pred_events[prob >= t], true_events, radius=radius, frame_tolerance=frame_tolerance)
        rows.append({"threshold": float(t), "n_pred": m.tp + m.fp, "tp": m.tp, "fp": m.fp, "fn": m.fn,
                     "precision": m.precision, "recall": m.recall, "f1": m.f1})
    return pd.DataFrame(rows, columns=["threshold", "n_pred", "tp", "fp", "fn", "precision", "recall", "f1"])
