"""Crop-pair dataset: labelling criteria (incl. the paper's Table 4), splits, balance, errors."""

from __future__ import annotations

import numpy as np
import pytest

from tapcore.events.dataset import (
    CropPairConfig,
    build_crop_pairs,
    label_coords,
    label_pair,
)
from tapcore.events.dense import image_windows

C = 48


def _crop(*boxes, value=1):
    m = np.zeros((C, C), np.uint8)
    for y0, y1, x0, x1 in boxes:
        m[y0:y1, x0:x1] = value
    return m


EDGE = (0, 5, 10, 16)  # 30 px touching the top edge: below the 40 px threshold
CENTRE = (17, 27, 17, 27)  # 100 px in the middle
EMPTY = _crop()

# the paper's Table 4: (mask t, mask t+1) -> labels under (any_both, any_either, size_either)
TABLE4 = [
    ("edge in both crops, under threshold", _crop(EDGE), _crop((0, 6, 12, 17)), (1, 1, 0)),
    ("only the first crop, away from the edge", _crop(CENTRE), EMPTY, (0, 1, 1)),
    ("only the first crop, at the edge", _crop(EDGE), EMPTY, (0, 1, 0)),
    ("both crops, central", _crop(CENTRE), _crop((18, 28, 16, 26)), (1, 1, 1)),
]


@pytest.mark.parametrize("case", TABLE4, ids=[c[0] for c in TABLE4])
def test_table4_cases(case):
    _, m0, m1, expected = case
    got = tuple(label_pair(m0, m1, crit, 40) for crit in ("any_both", "any_either", "size_either"))
    assert got == expected
    # labels do not depend on which of the two frames holds the annotation for the "either" criteria
    assert label_pair(m1, m0, "any_either") == expected[1]
    assert label_pair(m1, m0, "size_either") == expected[2]


def test_size_threshold_is_strictly_more_than_min_area():
    forty = _crop((10, 15, 10, 18))  # 40 px
    assert label_pair(forty, EMPTY, "size_either", 40) == 0
    assert label_pair(_crop((10, 15, 10, 19)), EMPTY, "size_either", 40) == 1  # 45 px
    assert label_pair(forty, EMPTY, "size_either", 39) == 1
    # death pixels count as events in the binary task
    assert label_pair(_crop(CENTRE, value=2), EMPTY, "size_either") == 1


def test_three_class_labels_and_precedence():
    div, death = _crop(CENTRE, value=1), _crop((30, 40, 30, 40), value=2)
    assert label_pair(div, EMPTY, task="three_class") == 1
    assert label_pair(EMPTY, death, task="three_class") == 2
    both = div.copy()
    both[30:36, 30:40] = 2  # 100 division px vs 60 death px -> division
    assert label_pair(both, EMPTY, task="three_class") == 1
    tie = _crop((10, 15, 10, 20), value=1)
    tie[30:35, 30:40] = 2  # 50 vs 50 -> death
    assert label_pair(tie, EMPTY, task="three_class") == 2
    # 25 division + 20 death px: an event by the union (45 > 40), class division
    mixed = _crop((0, 5, 0, 5), value=1)
    mixed[40:44, 40:45] = 2
    assert label_pair(mixed, EMPTY, "size_either", 40, "event") == 1
    assert label_pair(mixed, EMPTY, "size_either", 40, "three_class") == 1


def _movie_masks(t=12, h=100, w=160, seed=0):
    rng = np.random.default_rng(seed)
    masks = np.zeros((t, h, w), np.uint8)
    for _ in range(40):
        tt, y, x = rng.integers(0, t), rng.integers(0, h - 12), rng.integers(0, w - 12)
        masks[tt, y:y + 12, x:x + 12] = rng.integers(1, 3)
    return masks


def test_label_coords_matches_label_pair():
    masks = _movie_masks()
    rng = np.random.default_rng(1)
    coords = np.stack([rng.integers(0, 11, 300), rng.integers(0, 100 - C + 1, 300), rng.integers(0, 160 - C + 1, 300)], 1)
    for crit in ("any_both", "any_either", "size_either"):
        for task in ("event", "three_class"):
            cfg = CropPairConfig(criterion=crit, task=task)
            fast = label_coords(masks, coords, cfg)
            slow = [label_pair(masks[t, y:y + C, x:x + C], masks[t + 1, y:y + C, x:x + C], crit, 40, task)
                    for t, y, x in coords]
            assert fast.tolist() == slow


def test_random_split_fractions_and_balance_exact():
    masks = _movie_masks()
    cfg = CropPairConfig(pairs_per_frame=100, criterion="any_either", seed=3)
    pairs = build_crop_pairs(masks, cfg)
    total = 11 * 100
    assert pairs.total == total
    n_train_before = int(pairs.train_before_balance.sum())
    assert n_train_before == 660 and len(pairs.val) == 220 and len(pairs.test) == 220
    c = pairs.train.counts(2)
    assert c[0] == c[1] == min(pairs.train_before_balance)  # subsampled to the minority count
    assert 0 < min(pairs.train_before_balance) < max(pairs.train_before_balance)
    assert len(pairs.train) == 2 * c[1]
    # train/val/test come from one shuffled set: no pair index repeats across the three
    all_coords = np.concatenate([pairs.train.coords, pairs.val.coords, pairs.test.coords])
    assert all_coords[:, 0].max() <= 10 and all_coords[:, 1].max() <= 100 - C and all_coords[:, 2].max() <= 160 - C
    # labels agree with the criterion
    assert (label_coords(masks, pairs.test.coords, cfg) == pairs.test.labels).all()
    # deterministic from the seed, different with another seed
    again = build_crop_pairs(masks, cfg)
    assert np.array_equal(again.train.coords, pairs.train.coords) and np.array_equal(again.test.labels, pairs.test.labels)
    other = build_crop_pairs(masks, CropPairConfig(pairs_per_frame=100, criterion="any_either", seed=4))
    assert not np.array_equal(other.test.coords, pairs.test.coords)


def test_three_class_balance():
    masks = _movie_masks(seed=2)
    pairs = build_crop_pairs(masks, CropPairConfig(pairs_per_frame=200, criterion="any_either", task="three_class"))
    c = pairs.train.counts(3)
    assert c[0] == c[1] == c[2] == min(pairs.train_before_balance)
    assert pairs.class_names == ["none", "division", "death"]


def test_balance_ratio_keeps_that_many_times_the_rarest_class():
    masks = _movie_masks(seed=2)
    base = dict(pairs_per_frame=200, criterion="any_either", task="three_class", centre=16)
    before = build_crop_pairs(masks, CropPairConfig(**base)).train_before_balance
    n_min = int(min(before))
    pairs = build_crop_pairs(masks, CropPairConfig(**base, balance_ratio=3))
    assert pairs.train.counts(3).tolist() == [min(int(k), 3 * n_min) for k in before]
    assert pairs.train.counts(3)[0] == 3 * n_min < before[0]  # negatives capped at 3 x the rarest event class
    assert pairs.train.counts(3)[2] == before[2] < 3 * n_min  # a class under the cap keeps all its pairs
    # every kept crop pair comes from the training split, with its label
    pool = {tuple(c): int(lab) for c, lab in zip(pairs.train_pool.coords.tolist(), pairs.train_pool.labels)}
    assert all(pool[tuple(c)] == int(lab) for c, lab in zip(pairs.train.coords.tolist(), pairs.train.labels))
    with pytest.raises(ValueError, match="balance_ratio"):
        CropPairConfig(balance_ratio=0.5).validate()


def test_resample_negatives_draws_fresh_negatives_from_the_pool_and_keeps_the_positives():
    from tapcore.events.dataset import CropSet, resample_negatives

    rng = np.random.default_rng(0)
    pool_coords = np.stack([np.arange(200), np.zeros(200), np.arange(200)], 1).astype(np.int64)
    pool_labels = np.zeros(200, np.int64)
    pool_labels[:10] = 1
    pool_labels[10:15] = 2
    pool = CropSet(pool_coords, pool_labels)
    keep = np.r_[0:15, 15:30]  # all 15 events and 15 negatives
    train = CropSet(pool_coords[keep], pool_labels[keep])
    seen: set[int] = set()
    for _ in range(5):
        new = resample_negatives(train, pool, rng)
        assert new.counts(3).tolist() == train.counts(3).tolist()  # same size and class counts
        pos = new.coords[new.labels != 0, 2]
        assert sorted(pos.tolist()) == list(range(15))  # the positives stay
        neg = new.coords[new.labels == 0, 2]
        assert len(set(neg.tolist())) == 15 and (pool_labels[neg] == 0).all()  # distinct pool negatives
        seen.update(neg.tolist())
    assert len(seen) > 30  # fresh draws over the epochs reach beyond the first 15 negatives


def test_border_crops_reach_beyond_the_frame_and_are_labelled_on_zero_padded_masks():
    """border=b: crop corners from -b to size - crop + b; labels as if the masks were zero-padded (what
    pair_windows gives the head), so an event at the very edge becomes a crop centre."""
    masks = _movie_masks()
    b = C // 2
    cfg = CropPairConfig(pairs_per_frame=400, criterion="any_either", task="three_class", centre=16, border=b)
    pairs = build_crop_pairs(masks, cfg)
    co = np.concatenate([pairs.train_pool.coords, pairs.val.coords, pairs.test.coords])
    assert co[:, 1].min() == -b and co[:, 2].min() == -b  # 4,400 draws: every extreme is hit
    assert co[:, 1].max() == 100 - C + b and co[:, 2].max() == 160 - C + b
    padded = np.pad(masks, ((0, 0), (b, b), (b, b)))
    for split in (pairs.train_pool, pairs.val, pairs.test):
        slow = [label_pair(padded[t, y + b:y + b + C, x + b:x + b + C], padded[t + 1, y + b:y + b + C, x + b:x + b + C],
                           "any_either", 40, "three_class", centre=16) for t, y, x in split.coords]
        assert split.labels.tolist() == slow
    # border 0: every crop inside the frame (paper)
    inside = build_crop_pairs(masks, CropPairConfig(pairs_per_frame=400, criterion="any_either", task="three_class"))
    co0 = inside.test.coords
    assert co0[:, 1:].min() >= 0 and co0[:, 1].max() <= 100 - C and co0[:, 2].max() <= 160 - C
    with pytest.raises(ValueError, match="border"):
        CropPairConfig(border=C // 2 + 1).validate()


def test_time_split_no_shared_frames():
    masks = _movie_masks(t=21, seed=5)
    pairs = build_crop_pairs(masks, CropPairConfig(pairs_per_frame=50, criterion="any_either", split="time"))
    frames = {}
    for name, s in (("train", pairs.train), ("val", pairs.val), ("test", pairs.test)):
        frames[name] = set(s.coords[:, 0].tolist()) | set((s.coords[:, 0] + 1).tolist())
    assert not frames["train"] & frames["val"] and not frames["val"] & frames["test"] and not frames["train"] & frames["test"]
    assert pairs.split_info()["split"] == "time" and pairs.split_info()["time_ranges"]["train"] == [0, 12]
    assert len(pairs.val) == 3 * 50 and len(pairs.test) == 3 * 50


def test_region_split_crops_stay_in_their_band():
    masks = _movie_masks(w=400, seed=6)
    pairs = build_crop_pairs(masks, CropPairConfig(pairs_per_frame=100, criterion="any_either", split="region"))
    bands = pairs.split_info()["x_bands"]
    assert bands == {"train": [0, 240], "val": [240, 320], "test": [320, 400]}
    for name, s in (("train", pairs.train), ("val", pairs.val), ("test", pairs.test)):
        a, b = bands[name]
        assert s.coords[:, 2].min() >= a and (s.coords[:, 2] + C).max() <= b


def test_summary_table1_format():
    pairs = build_crop_pairs(_movie_masks(), CropPairConfig(pairs_per_frame=100, criterion="any_either"))
    s = pairs.summary()
    assert s.loc["total crop pairs", "value"] == "1100"
    assert s.loc["test set (positive samples)", "value"] == f"220 ({int(pairs.test.counts(2)[1])})"
    assert s.loc["crop size", "value"] == "48*48"
    assert s.loc["split", "value"] == "random"


def test_errors():
    masks = np.zeros((5, 60, 60), np.uint8)
    masks[2, 10:12, 10:12] = 1
    with pytest.raises(ValueError, match=r"contain \d+ event crops.*need at least.*any_either"):
        build_crop_pairs(masks, CropPairConfig(pairs_per_frame=20))
    with pytest.raises(ValueError, match="frames"):
        build_crop_pairs(masks, CropPairConfig(), movie_shape=(6, 60, 60))
    with pytest.raises(ValueError, match="smaller than the crop"):
        build_crop_pairs(masks[:, :40], CropPairConfig())
    with pytest.raises(ValueError, match="criterion"):
        build_crop_pairs(masks, CropPairConfig(criterion="big"))
    with pytest.raises(ValueError, match="fractions"):
        build_crop_pairs(masks, CropPairConfig(fractions=(0.5, 0.2, 0.2)))
    with pytest.raises(ValueError, match="region split"):
        build_crop_pairs(masks, CropPairConfig(split="region"))


def test_image_windows_with_margin():
    movie = np.arange(3 * 50 * 60, dtype=np.float32).reshape(3, 50, 60)
    out = image_windows(movie, np.array([[1, 0, 5], [0, 2, 12]]), crop=C, margin=2)
    assert out.shape == (2, 2, 1, C + 4, C + 4)
    assert np.array_equal(out[0, 1, 0, 2:-2, 2:-2], movie[2, 0:C, 5:5 + C])
    assert (out[0, :, 0, :2] == 0).all()  # above the frame: zero
    assert np.array_equal(out[1, 0, 0, 2:-2, 2:-2], movie[0, 2:2 + C, 12:12 + C])


def test_mine_hard_negatives_swaps_in_the_highest_scored_training_negatives():
    from tapcore.events.dataset import CropSet, mine_hard_negatives

    # pool: 10 negatives at t = 0..9 (event probability rising with t) and 2 positives
    pool = CropSet(np.array([[t, 0, 0] for t in range(10)] + [[20, 0, 0], [21, 0, 0]], np.int64),
                   np.array([0] * 10 + [1, 1], np.int64))
    prob = np.array([0.01 * t for t in range(10)] + [0.9, 0.9])
    prob[3] = 0.95  # the hardest negative
    # training set: 4 easy negatives (t = 0, 1, 2, 9) and both positives
    train = CropSet(np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [9, 0, 0], [20, 0, 0], [21, 0, 0]], np.int64),
                    np.array([0, 0, 0, 0, 1, 1], np.int64))
    new, info = mine_hard_negatives(train, pool, prob, 0.5, np.random.default_rng(0))
    assert info["mined"] == 2 and info["pool_negatives"] == 10 and info["train_negatives"] == 4
    neg_t = sorted(new.coords[new.labels == 0, 0].tolist())
    assert len(neg_t) == 4 and len(new) == 6  # size and class counts kept
    assert 3 in neg_t and 9 in neg_t  # the two hardest (0.95 and 0.09) are in
    assert len(set(neg_t) & {0, 1, 2}) == 2  # two of the easy ones stay, one was replaced
    assert sorted(new.coords[new.labels == 1, 0].tolist()) == [20, 21]  # positives untouched
    assert info["mined_mean_event_prob"] == pytest.approx((0.95 + 0.09) / 2)
    same, info0 = mine_hard_negatives(train, pool, prob, 0.0, np.random.default_rng(0))
    assert same is train and info0["mined"] == 0
    with pytest.raises(ValueError, match="fraction"):
        mine_hard_negatives(train, pool, prob, 1.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="pool probabilities"):
        mine_hard_negatives(train, pool, prob[:3], 0.5, np.random.default_rng(0))


def test_build_crop_pairs_keeps_the_unbalanced_training_pool():
    from tapcore.events.dataset import CropPairConfig, build_crop_pairs

    masks = np.zeros((4, 64, 64), np.uint8)
    masks[:, 20:30, 20:30] = 1
    pairs = build_crop_pairs(masks, CropPairConfig(crop=16, pairs_per_frame=200, min_area=10))
    pool = pairs.train_pool
    assert pool is not None and len(pool) > len(pairs.train)
    assert pool.counts(2)[1] == pairs.train.counts(2)[1]  # balancing drops negatives only
    keys = {tuple(c) for c in pool.coords.tolist()}
    assert all(tuple(c) in keys for c in pairs.train.coords.tolist())


def test_centre_window_labels_only_events_at_the_crop_centre():
    # a 48 px crop; centre 16 -> the window is rows/cols 16..31
    at_centre = _crop((18, 28, 16, 26))  # 100 px, all inside the central window
    at_edge = _crop((0, 10, 0, 10))  # 100 px, all outside it
    straddling = _crop((10, 20, 10, 20))  # 100 px, 16 of them (rows/cols 16..19) inside
    assert label_pair(at_centre, EMPTY, "size_either", 40, centre=16) == 1
    assert label_pair(at_edge, EMPTY, "size_either", 40, centre=16) == 0
    assert label_pair(at_edge, EMPTY, "size_either", 40) == 1  # the whole crop (paper) counts it
    assert label_pair(straddling, EMPTY, "size_either", 15, centre=16) == 1
    assert label_pair(straddling, EMPTY, "size_either", 16, centre=16) == 0
    assert label_pair(at_edge, at_centre, "any_both", centre=16) == 0
    assert label_pair(at_centre, at_centre, "any_both", centre=16) == 1
    # label_coords (integral images over whole frames) agrees with label_pair on every crop of a movie
    rng = np.random.default_rng(3)
    masks = np.zeros((3, 80, 90), np.uint8)
    masks[0, 20:34, 30:44] = 1
    masks[1, 40:52, 10:25] = 2
    masks[2, 5:15, 60:75] = 1
    coords = np.stack([rng.integers(0, 2, 300), rng.integers(0, 80 - 48 + 1, 300), rng.integers(0, 90 - 48 + 1, 300)], 1)
    for crit in ("size_either", "any_both", "any_either"):
        cfg = CropPairConfig(crop=48, criterion=crit, min_area=20, centre=16, task="three_class")
        got = label_coords(masks, coords, cfg)
        want = [label_pair(masks[t, y:y + 48, x:x + 48], masks[t + 1, y:y + 48, x:x + 48], crit, 20, "three_class", 16)
                for t, y, x in coords]
        assert got.tolist() == want
        assert 0 < (got > 0).sum() < len(got)
    with pytest.raises(ValueError, match="centre must be between"):
        CropPairConfig(crop=48, centre=64).validate()
