"""Crop-level metrics of the paper: confusion matrix, per-class precision/recall, per-frame errors.

These are the paper's Table 3 and Figures 3-4 metrics, computed on labelled crop pairs. For
event-level accuracy against annotated events (what a lab counts) see :mod:`tapcore.evaluate`.

Conventions: ``cm[i, j]`` counts samples of true class ``i`` predicted as class ``j``. A ratio
whose denominator is zero (precision of a class never predicted, recall of a class absent from
the truth) is ``NaN``, never a silent 0; :func:`metrics_summary` writes such values as ``null``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd


def _labels(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.size and arr.dtype.kind == "f":
        if not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{name} must hold integer class indices, got non-integer values")
        arr = arr.astype(np.int64)
    if arr.size and arr.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integer class indices, got {arr.dtype}")
    return arr.astype(np.int64)


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int | None = None) -> np.ndarray:
    """``(K, K)`` int64 matrix with ``cm[i, j]`` = number of samples of true class i predicted as j.

    Args:
        y_true, y_pred: class indices ``0..K-1``, same length.
        n_classes: K; by default ``max(label) + 1`` (at least 2).
    """
    t, p = _labels("y_true", y_true), _labels("y_pred", y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred must have the same length, got {t.size} and {p.size}")
    if n_classes is None:
        n_classes = max(int(t.max(initial=0)), int(p.max(initial=0)), 1) + 1
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    for name, arr in (("y_true", t), ("y_pred", p)):
        if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
            raise ValueError(f"{name} holds labels outside 0..{n_classes - 1}: {sorted(set(arr[(arr < 0) | (arr >= n_classes)].tolist()))[:5]}")
    cm = np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    return cm.astype(np.int64)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def per_class_precision_recall(cm: np.ndarray, class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Precision, recall, F1 and support per class from a confusion matrix.

    Returns:
        DataFrame indexed by class (name or index) with columns ``precision``, ``recall``, ``f1``,
        ``support`` (true samples), ``predicted`` (predicted samples), ``tp``. 0/0 gives NaN.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"a confusion matrix is square (K, K), got shape {cm.shape}")
    k = cm.shape[0]
    names = list(class_names) if class_names is not None else list(range(k))
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}-class confusion matrix")
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    rows = []
    for i in range(k):
        rows.append({
            "precision": _ratio(tp[i], predicted[i]),
            "recall": _ratio(tp[i], support[i]),
            "f1": _ratio(2 * tp[i], support[i] + predicted[i]),
            "support": int(support[i]),
            "predicted": int(predicted[i]),
            "tp": int(tp[i]),
        })
    return pd.DataFrame(rows, index=pd.Index(names, name="class"))


def accuracy(cm: np.ndarray) -> float:
    """Fraction of correct predictions (NaN for an empty matrix)."""
    cm = np.asarray(cm)
    return _ratio(np.trace(cm), cm.sum())


def balanced_accuracy(cm: np.ndarray) -> float:
    """Mean recall over the classes present in the truth (NaN when none is)."""
    cm = np.asarray(cm)
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return float("nan")
    return float(np.mean(np.diag(cm)[present] / support[present]))


def per_frame_distributions(
    frames: Sequence[int],
    y_true: Sequence[int],
    y_pred: Sequence[int],
    positive: int = 1,
    all_frames: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Where in time positives, negatives and errors occur (the paper's Figures 3 and 4).

    Each sample is one crop pair with its frame index. For the ``positive`` class (one against the
    rest) it counts per frame ``gt_pos`` (true positives in the truth), ``gt_neg``, ``tp``, ``fp``,
    ``fn``, ``tn``, and gives each series as a percentage of its own total over all frames
    (``<name>_pct``; e.g. ``fp_pct`` at frame t = false positives at t / all false positives x
    100). A series with no samples at all has percentages 0.

    Args:
        frames: frame index of each sample.
        y_true, y_pred: class index of each sample.
        positive: the class counted as positive.
        all_frames: frames to list even without samples (default: the frames that occur).

    Returns:
        DataFrame indexed by ``frame`` with integer count columns and float ``*_pct`` columns.
    """
    f = _labels("frames", frames)
    t, p = _labels("y_true", y_true), _labels("y_pred", y_pred)
    if not (f.shape == t.shape == p.shape):
        raise ValueError(f"frames, y_true and y_pred must have one entry per sample, got {f.size}, {t.size}, {p.size}")
    pos_t, pos_p = t == positive, p == positive
    table = pd.DataFrame({
        "frame": f,
        "gt_pos": pos_t, "gt_neg": ~pos_t,
        "tp": pos_t & pos_p, "fp": ~pos_t & pos_p, "fn": pos_t & ~pos_p, "tn": ~pos_t & ~pos_p,
    })
    counts = table.groupby("frame").sum().astype(np.int64)
    index = sorted(set(all_frames)) if all_frames is not None else sorted(set(f.tolist()))
    if all_frames is not None:
        missing = set(f.tolist()) - set(index)
        if missing:
            raise ValueError(f"all_frames lacks frames that occur in the samples: {sorted(missing)[:5]}")
    counts = counts.reindex(index, fill_value=0)
    counts.index.name = "frame"
    for col in ["gt_pos", "gt_neg", "tp", "fp", "fn", "tn"]:
        total = counts[col].sum()
        counts[f"{col}_pct"] = counts[col] * (100.0 / total) if total else 0.0
    return counts


def metrics_summary(
    y_true: Sequence[int], y_pred: Sequence[int], n_classes: int, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """JSON-able summary for a bundle's ``metrics.json``: accuracy, balanced accuracy, confusion
    matrix and per-class precision/recall/F1/support (NaN written as ``None``)."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    table = per_class_precision_recall(cm, class_names)

    def clean(x: float) -> float | None:
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)

    return {
        "n": int(cm.sum()),
        "accuracy": clean(accuracy(cm)),
        "balanced_accuracy": clean(balanced_accuracy(cm)),
        "confusion_matrix": cm.tolist(),
        "per_class": {
            str(name): {
                "precision": clean(row.precision), "recall": clean(row.recall), "f1": clean(row.f1),
                "support": int(row.support),
            }
            for name, row in table.iterrows()
        },
    }
