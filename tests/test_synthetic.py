"""Synthetic movies: determinism, exact event masks, and the arrow of time of their processes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from tapcore.synthetic import SynthConfig, make_synthetic

SMALL = dict(frames=24, height=128, width=128, cells=12, division_rate=0.06, death_rate=0.02)


@pytest.fixture(scope="module")
def default_movie():
    return make_synthetic(SynthConfig(seed=3))


def test_same_seed_same_movie_and_different_seed_differs():
    a = make_synthetic(SynthConfig(seed=1, **SMALL))
    b = make_synthetic(SynthConfig(seed=1, **SMALL))
    c = make_synthetic(SynthConfig(seed=2, **SMALL))
    np.testing.assert_array_equal(a.movie, b.movie)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert a.events.equals(b.events)
    assert not np.array_equal(a.movie, c.movie)
    assert not np.array_equal(a.masks, c.masks)


def test_default_config_shapes_values_and_events(default_movie):
    s = default_movie
    cfg = s.config
    assert s.movie.shape == (48, 256, 256) == s.masks.shape
    assert s.movie.dtype == np.uint16 and s.masks.dtype == np.uint8
    assert set(np.unique(s.masks).tolist()) == {0, 1, 2}
    counts = s.events["kind"].value_counts()
    assert counts["division"] > 5 and counts["death"] > 2
    assert list(s.events.columns[:6]) == ["frame", "last_frame", "y", "x", "kind", "cell_id"]
    assert (s.events["frame"] >= 0).all() and (s.events["last_frame"] < cfg.frames).all()
    assert (s.events["y"].between(0, cfg.height - 1)).all() and (s.events["x"].between(0, cfg.width - 1)).all()
    div = s.events[s.events.kind == "division"]
    assert (div["last_frame"] == div["frame"] + 1).all()
    assert s.movie.min() > 0 and s.movie.max() < 65535  # no clipping


def test_every_event_has_its_mask_and_every_mask_component_has_its_event(default_movie):
    s = default_movie
    r = s.config.radius_max
    ev = s.events
    for row in ev.itertuples():
        value = 1 if row.kind == "division" else 2
        y, x = int(round(row.y)), int(round(row.x))
        # the event's nucleus carries the mask at its centre in the event frame
        assert s.masks[row.frame, y, x] == value, row
        assert row.area > 20
        # every frame of the event has mask pixels of the right value near the nucleus
        for t in range(row.frame, row.last_frame + 1):
            win = s.masks[t, max(y - 3 * int(r), 0): y + 3 * int(r) + 1, max(x - 3 * int(r), 0): x + 3 * int(r) + 1]
            assert (win == value).sum() >= 10, (row, t)
    # conversely, each connected mask component lies at an event of its kind and frame
    for t in range(s.masks.shape[0]):
        for value, kind in ((1, "division"), (2, "death")):
            lab, n = ndimage.label(s.masks[t] == value)
            if n == 0:
                continue
            cands = ev[(ev.kind == kind) & (ev.frame <= t) & (ev.last_frame >= t)]
            assert len(cands) > 0, (t, value)
            centres = ndimage.center_of_mass(np.ones_like(lab), lab, range(1, n + 1))
            for cy, cx in centres:
                d = np.hypot(cands.y - cy, cands.x - cx).min()
                assert d < 3.5 * r, (t, value, cy, cx, d)
    # mask value 1 appears only in the mother's last frame and the daughters' first frame
    div = ev[ev.kind == "division"]
    marked_frames = set(div.frame) | set(div.last_frame)
    assert {t for t in range(s.masks.shape[0]) if (s.masks[t] == 1).any()} == marked_frames


def test_division_masks_are_mother_then_two_daughters(default_movie):
    s = default_movie
    r = int(s.config.radius_max)
    n_two = 0
    div = s.events[s.events.kind == "division"]
    for row in div.itertuples():
        y, x = int(round(row.y)), int(round(row.x))
        sl = np.s_[max(y - 3 * r, 0): y + 3 * r + 1, max(x - 3 * r, 0): x + 3 * r + 1]
        mother = ndimage.label(s.masks[row.frame][sl] == 1)[1]
        daughters = ndimage.label(s.masks[row.last_frame][sl] == 1)[1]
        assert mother >= 1
        n_two += daughters >= 2
    assert n_two >= 0.8 * len(div)  # daughters may touch right after the split


def test_processes_carry_an_arrow_of_time(default_movie):
    s = default_movie
    movie = s.movie.astype(np.float32)
    r = int(s.config.radius_max)
    m = s.config.mitosis_frames

    def peak(t, y, x):
        return movie[t, max(y - r, 0): y + r + 1, max(x - r, 0): x + r + 1].max()

    # mitotic condensation: the mother is brighter in her last frame than before mitosis
    div = s.events[(s.events.kind == "division") & (s.events.frame >= m)]
    brighter = [peak(e.frame, int(e.y), int(e.x)) > peak(e.frame - m, int(e.y), int(e.x)) for e in div.itertuples()]
    assert np.mean(brighter) >= 0.8
    # apoptosis is irreversible: a dying nucleus' mask shrinks and it is gone after its last death frame
    death = s.events[(s.events.kind == "death") & (s.events.last_frame < s.config.frames - 2)]
    assert len(death) > 0
    all_deaths = s.events[s.events.kind == "death"]
    checked = 0
    for e in death.itertuples():
        others = all_deaths[(all_deaths.cell_id != e.cell_id) & (all_deaths.frame <= e.last_frame + 1)
                            & (all_deaths.last_frame >= e.frame) & (np.hypot(all_deaths.y - e.y, all_deaths.x - e.x) < 6 * r)]
        if len(others):
            continue  # another death nearby at the same time would share the window
        checked += 1
        y, x = int(round(e.y)), int(round(e.x))
        sl = np.s_[max(y - 3 * r, 0): y + 3 * r + 1, max(x - 3 * r, 0): x + 3 * r + 1]
        first = (s.masks[e.frame][sl] == 2).sum()
        last = (s.masks[e.last_frame][sl] == 2).sum()
        assert last < first
        assert not (s.masks[e.last_frame + 1][sl] == 2).any()
    assert checked >= 3
    # photobleaching: the background-subtracted signal decays over the movie
    assert np.percentile(movie[-1], 99) < np.percentile(movie[0], 99)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_other_dtypes(dtype):
    s = make_synthetic(SynthConfig(seed=0, dtype=dtype, **SMALL))
    assert s.movie.dtype == np.dtype(dtype)
    assert np.isfinite(s.movie.astype(np.float32)).all()


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="frames must be at least 2"):
        make_synthetic(SynthConfig(frames=1))
    with pytest.raises(ValueError, match="division_rate"):
        make_synthetic(SynthConfig(division_rate=1.5))
    with pytest.raises(ValueError, match="dtype"):
        make_synthetic(SynthConfig(dtype="int64"))


def test_cli_synth_writes_movie_masks_events(tmp_path, capsys):
    import pandas as pd

    from tapcore import io
    from tapcore.cli import main

    out = tmp_path / "demo"
    rc = main(["synth", "--out", str(out), "--seed", "4", "--frames", "12", "--height", "96", "--width", "96",
               "--cells", "8", "--division-rate", "0.1"])
    assert rc == 0
    assert "divisions" in capsys.readouterr().out
    movie = io.read_movie(out / "movie.tif")
    masks = io.read_masks(out / "masks.tif", movie.shape)
    events = pd.read_csv(out / "events.csv")
    ref = make_synthetic(SynthConfig(seed=4, frames=12, height=96, width=96, cells=8, division_rate=0.1))
    np.testing.assert_array_equal(movie, ref.movie)
    np.testing.assert_array_equal(masks, ref.masks)
    assert len(events) == len(ref.events) and list(events.kind) == list(ref.events.kind)
    assert main(["synth", "--out", str(tmp_path / "bad"), "--frames", "1"]) == 2
    assert "frames must be at least 2" in capsys.readouterr().err
