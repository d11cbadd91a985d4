"""Event-level matching: hand-checked precision/recall, truth from masks and from CTC tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tapcore import evaluate
from tapcore.synthetic import SynthConfig, make_synthetic


def _truth():
    return pd.DataFrame({
        "frame": [5, 5, 10, 20], "last_frame": [5, 5, 12, 20],
        "y": [10.0, 50.0, 100.0, 10.0], "x": [10.0, 50.0, 100.0, 10.0],
        "kind": ["division", "division", "death", "division"],
    }, index=[100, 101, 102, 103])


def _pred():
    return pd.DataFrame({
        "frame": [5, 6, 13, 14, 20, 5],
        "y": [12.0, 50.0, 100.0, 100.0, 40.0, 11.0],
        "x": [10.0, 55.0, 103.0, 100.0, 10.0, 11.0],
        "probability": [0.9, 0.8, 0.7, 0.6, 0.95, 0.85],
    })


def test_match_events_hand_checked():
    # A(100)<-p5 (1.4 px, closer than p0), B(101)<-p1 (5 px, 1 frame late), C(102)<-p2 (frame 13 = span end + 1);
    # p3 is 2 frames after C's span, p4 is 30 px from D, p0 loses A to p5: 3 TP, 3 FP, 1 FN (D)
    m = evaluate.match_events(_pred(), _truth(), radius=20, frame_tolerance=1)
    assert (m.tp, m.fp, m.fn) == (3, 3, 1)
    assert m.precision == pytest.approx(0.5) and m.recall == pytest.approx(0.75) and m.f1 == pytest.approx(0.6)
    pairs = sorted(zip(m.matches.pred_index, m.matches.true_index))
    assert pairs == [(1, 101), (2, 102), (5, 100)]
    assert sorted(m.false_alarms.pred_index) == [0, 3, 4]
    assert m.misses.true_index.tolist() == [103]
    row = m.matches.set_index("pred_index").loc[2]
    assert row.distance == pytest.approx(3.0) and row.frame_gap == 1 and row.kind == "death" and row.probability == 0.7
    # repeated predictions of a matched event can be set aside instead of counted as false alarms
    m2 = evaluate.match_events(_pred(), _truth(), radius=20, frame_tolerance=1, duplicates="ignore")
    assert (m2.tp, m2.fp, m2.fn) == (3, 2, 1) and m2.duplicates.pred_index.tolist() == [0]
    # stricter tolerances lose matches
    m3 = evaluate.match_events(_pred(), _truth(), radius=4, frame_tolerance=0)
    assert (m3.tp, m3.fp, m3.fn) == (1, 5, 3)  # only p5 -> A (B is 1 frame off, C is 1 frame off)
    assert evaluate.match_events(_pred(), _truth(), radius=20, kind="death").tp == 1


def test_matching_maximises_the_number_of_matches():
    # greedy nearest-first would give P1 to T1 and leave P2 unmatched; the assignment finds two matches
    truth = pd.DataFrame({"frame": [0, 0], "y": [0.0, 0.0], "x": [0.0, 25.0]})
    pred = pd.DataFrame({"frame": [0, 0], "y": [0.0, 0.0], "x": [12.0, -15.0]})
    m = evaluate.match_events(pred, truth, radius=20)
    assert m.tp == 2 and m.fp == 0 and m.fn == 0
    assert sorted(zip(m.matches.pred_index, m.matches.true_index)) == [(0, 1), (1, 0)]


def test_empty_tables_and_bad_input():
    empty = pd.DataFrame({"frame": [], "y": [], "x": []})
    m = evaluate.match_events(empty, _truth())
    assert (m.tp, m.fp, m.fn) == (0, 0, 4) and math.isnan(m.precision) and m.recall == 0 and m.f1 == 0
    assert m.summary()["precision"] is None
    m = evaluate.match_events(empty, empty)
    assert math.isnan(m.f1)
    with pytest.raises(ValueError, match="lacks column"):
        evaluate.match_events(pd.DataFrame({"t": [1], "y": [1], "x": [1]}), _truth())
    with pytest.raises(ValueError, match="radius"):
        evaluate.match_events(_pred(), _truth(), radius=0)


def test_ctc_table_uses_parent_rows():
    table = pd.DataFrame({
        "frame": [3, 4, 4], "last_frame": [4, 4, 4], "y": [10.0, 6.0, 14.0], "x": [10.0, 10.0, 10.0],
        "kind": ["division"] * 3, "role": ["parent", "daughter", "daughter"],
    })
    pred = pd.DataFrame({"frame": [3, 4], "y": [11.0, 14.0], "x": [10.0, 10.0]})
    m = evaluate.match_events(pred, table, radius=10)
    assert (m.tp, m.fp, m.fn) == (1, 1, 0)  # one division; the second prediction repeats it


def test_events_from_masks_links_mother_daughters_and_death_frames():
    masks = np.zeros((10, 64, 64), np.uint8)
    masks[2, 10:16, 10:16] = 1  # mother, last frame
    masks[3, 5:9, 10:15] = 1  # daughter 1 (no overlap with the mother)
    masks[3, 17:21, 10:15] = 1  # daughter 2
    masks[3, 50:54, 50:54] = 1  # another division's mother, far away
    masks[4, 50:53, 44:47] = 1
    masks[4, 50:53, 57:60] = 1
    for t, r in zip(range(5, 9), (5, 4, 3, 2)):
        masks[t, 40 - r: 40 + r, 20 - r: 20 + r] = 2  # a death over frames 5..8
    ev = evaluate.events_from_masks(masks, link_radius=15)
    assert len(ev) == 3
    div = ev[ev.kind == "division"].reset_index(drop=True)
    assert div[["frame", "last_frame"]].values.tolist() == [[2, 3], [3, 4]]
    assert (div.loc[0, "y"], div.loc[0, "x"], div.loc[0, "area"]) == (12.5, 12.5, 36)
    death = ev[ev.kind == "death"].iloc[0]
    assert (death.frame, death.last_frame, death.y, death.x, death.area) == (5, 8, 39.5, 19.5, 100)
    assert len(evaluate.events_from_masks(masks, value=2)) == 1


def test_synthetic_events_are_recovered_from_their_masks():
    s = make_synthetic(SynthConfig(seed=5, frames=24, height=128, width=128, cells=12,
                                   division_rate=0.06, death_rate=0.02))
    truth = evaluate.events_from_masks(s.masks, link_radius=2.5 * s.config.radius_max)
    # predictions placed exactly at the generator's events match the mask-derived truth
    m = evaluate.match_events(s.events, truth, radius=2 * s.config.radius_max, frame_tolerance=0)
    assert len(s.events) > 5
    assert m.recall >= 0.9 and m.precision >= 0.9, m.summary()


def test_write_and_read_csv(tmp_path):
    m = evaluate.match_events(_pred(), _truth(), radius=20)
    paths = m.write(tmp_path / "out")
    assert pd.read_csv(paths["matches"]).shape[0] == 3
    assert pd.read_csv(paths["false_alarms"]).shape[0] == 3
    _pred().to_csv(tmp_path / "pred.csv", index=False)
    assert evaluate.read_events_csv(tmp_path / "pred.csv").shape == (6, 4)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty"):
        evaluate.read_events_csv(tmp_path / "empty.csv")


def test_cli_evaluate_events(tmp_path, capsys):
    import json

    from tapcore import io
    from tapcore.cli import main

    _pred().to_csv(tmp_path / "pred.csv", index=False)
    _truth().to_csv(tmp_path / "truth.csv", index=False)
    out = tmp_path / "eval"
    rc = main(["evaluate-events", str(tmp_path / "pred.csv"), "--truth", str(tmp_path / "truth.csv"),
               "--radius", "20", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "precision 0.500  recall 0.750  F1 0.600" in text
    assert json.loads((out / "summary.json").read_text())["tp"] == 3
    assert len(pd.read_csv(out / "misses.csv")) == 1 and len(pd.read_csv(out / "false_alarms.csv")) == 3
    # truth from masks: one 2x2 division mark at frame 5 around (10, 10)
    masks = np.zeros((8, 32, 32), np.uint8)
    masks[5, 9:11, 9:11] = 1
    io.write_tiff(tmp_path / "masks.tif", masks)
    assert main(["evaluate-events", str(tmp_path / "pred.csv"), "--masks", str(tmp_path / "masks.tif")]) == 0
    assert "TP 1, false alarms 5, misses 0" in capsys.readouterr().out
    assert main(["evaluate-events", str(tmp_path / "missing.csv"), "--truth", str(tmp_path / "truth.csv")]) == 2


def test_kind_selection_keeps_generic_predictions():
    pred = _pred().assign(**{"class": "event"})  # a binary model's predictions name no kind
    m = evaluate.match_events(pred, _truth(), radius=20, kind="death")
    assert (m.tp, m.fn) == (1, 0)  # only the death is truth; p2 matches it
    pred_kinds = _pred().assign(**{"class": ["division", "division", "division", "death", "death", "division"]})
    m = evaluate.match_events(pred_kinds, _truth(), radius=20, kind="death")
    assert (m.tp, m.fp, m.fn) == (0, 2, 1)  # p3 (2 frames late) and p4 are the only death predictions
