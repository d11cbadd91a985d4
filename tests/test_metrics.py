"""Crop-level metrics against hand-computed small cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tapcore import metrics


def test_confusion_matrix_hand_example():
    y_true = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 1, 0, 1, 0, 2, 2, 1, 2]
    cm = metrics.confusion_matrix(y_true, y_pred, 3)
    np.testing.assert_array_equal(cm, [[2, 1, 0], [1, 1, 0], [0, 1, 3]])
    assert metrics.accuracy(cm) == pytest.approx(6 / 9)
    assert metrics.balanced_accuracy(cm) == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)


def test_confusion_matrix_rejects_bad_labels():
    with pytest.raises(ValueError, match="outside 0..1"):
        metrics.confusion_matrix([0, 2], [0, 1], 2)
    with pytest.raises(ValueError, match="same length"):
        metrics.confusion_matrix([0, 1], [0], 2)
    with pytest.raises(ValueError, match="integer"):
        metrics.confusion_matrix([0.5, 1], [0, 1], 2)


def test_per_class_precision_recall_hand_example():
    cm = np.array([[2, 1, 0], [1, 1, 0], [0, 1, 3]])
    table = metrics.per_class_precision_recall(cm, ["none", "division", "death"])
    assert list(table.index) == ["none", "division", "death"]
    assert table.loc["none", "precision"] == pytest.approx(2 / 3)
    assert table.loc["none", "recall"] == pytest.approx(2 / 3)
    assert table.loc["division", "precision"] == pytest.approx(1 / 3)
    assert table.loc["division", "recall"] == pytest.approx(1 / 2)
    assert table.loc["division", "f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert table.loc["death", "precision"] == pytest.approx(1.0)
    assert table.loc["death", "recall"] == pytest.approx(3 / 4)
    assert table["support"].tolist() == [3, 2, 4]
    assert table["predicted"].tolist() == [3, 3, 3]


def test_zero_denominators_are_nan():
    cm = np.array([[5, 0], [0, 0]])  # class 1 never occurs and is never predicted
    table = metrics.per_class_precision_recall(cm)
    assert math.isnan(table.loc[1, "precision"]) and math.isnan(table.loc[1, "recall"])
    summary = metrics.metrics_summary([0] * 5, [0] * 5, 2, ["none", "event"])
    assert summary["per_class"]["event"]["precision"] is None
    assert summary["accuracy"] == 1.0 and summary["confusion_matrix"] == [[5, 0], [0, 0]]


def test_per_frame_distributions_hand_example():
    frames = [0, 0, 0, 1, 1, 2, 2, 2]
    y_true = [1, 0, 1, 1, 0, 0, 0, 1]
    y_pred = [1, 1, 0, 1, 0, 1, 0, 1]
    # frame 0: tp 1, fp 1, fn 1; frame 1: tp 1, tn 1; frame 2: fp 1, tn 1, tp 1
    d = metrics.per_frame_distributions(frames, y_true, y_pred)
    assert list(d.index) == [0, 1, 2]
    assert d["gt_pos"].tolist() == [2, 1, 1] and d["gt_neg"].tolist() == [1, 1, 2]
    assert d["tp"].tolist() == [1, 1, 1]
    assert d["fp"].tolist() == [1, 0, 1]
    assert d["fn"].tolist() == [1, 0, 0]
    assert d["tn"].tolist() == [0, 1, 1]
    np.testing.assert_allclose(d["gt_pos_pct"], [50, 25, 25])
    np.testing.assert_allclose(d["tp_pct"], [100 / 3] * 3)
    np.testing.assert_allclose(d["fp_pct"], [50, 0, 50])
    np.testing.assert_allclose(d["fn_pct"], [100, 0, 0])
    np.testing.assert_allclose(d["tn_pct"], [0, 50, 50])
    for col in ["gt_pos_pct", "gt_neg_pct", "tp_pct", "fp_pct", "fn_pct", "tn_pct"]:
        assert d[col].sum() == pytest.approx(100)


def test_per_frame_distributions_all_frames_and_empty_series():
    d = metrics.per_frame_distributions([1, 3], [0, 0], [0, 0], all_frames=range(5))
    assert list(d.index) == [0, 1, 2, 3, 4]
    assert d["tn"].tolist() == [0, 1, 0, 1, 0]
    assert (d["gt_pos_pct"] == 0).all()  # no positives at all: percentages 0, not NaN
    # three-class labels: positive=2 counts class 2 against the rest
    d2 = metrics.per_frame_distributions([0, 0, 1], [2, 1, 2], [2, 2, 0], positive=2)
    assert d2["tp"].tolist() == [1, 0] and d2["fp"].tolist() == [1, 0] and d2["fn"].tolist() == [0, 1]
