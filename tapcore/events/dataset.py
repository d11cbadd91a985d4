"""Crop-pair dataset for cell event recognition (paper section 2, "Dataset").

From a movie's event masks ``(T, Y, X)`` (0 none, 1 division, 2 death) we take random ``crop x crop``
windows at the same location of consecutive frames (t, t+1), ``pairs_per_frame`` per frame pair
(paper: 1,000 for each of 95 pairs = 95,000), and label each pair from its two mask crops:

- ``any_both``: positive if both crops contain event pixels;
- ``any_either``: positive if either crop contains event pixels;
- ``size_either`` (paper default): positive if either crop has MORE than ``min_area`` (40) event pixels,
  which keeps events that only touch the crop's edge negative.

With ``centre`` > 0 each criterion counts only the event pixels inside the central ``centre x centre``
window of each crop (not in the paper): a pair is an event when the event sits at the crop's centre,
so a head trained on such labels peaks where the event is and stays low on crops that merely hold an
event near their edge, which is what whole-movie detection (one peak per event) needs.

Tasks: ``"event"`` (binary: 0 none, 1 any event) or ``"three_class"`` (0 none, 1 division, 2 death).
In the three-class task a pair is an event exactly when it is one in the binary task (the criterion
is applied to all event pixels together); its class is the event value with more pixels in the two
crops together, and a tie goes to death (2), the rarer class.

Splits (``split``):

- ``"random"`` (paper): shuffle all pairs, cut 0.6 / 0.2 / 0.2. Random crops overlap, so the
  training set holds near-copies of test crops: an optimistic estimate.
- ``"time"``: frame pairs t in the first 60 % of the movie train, the next 20 % validate, the last
  20 % test; one frame pair is skipped at each boundary so no frame is shared between splits.
- ``"region"``: the frame is cut into three vertical bands along x (widths 0.6 / 0.2 / 0.2); every
  crop lies entirely inside its band (no crop straddles a boundary).

The training set is then subsampled to equal class counts (``balance_train``). Everything is
deterministic from ``seed``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

CRITERIA = ("size_either", "any_both", "any_either")
TASKS = ("event", "three_class")
SPLITS = ("random", "time", "region")
CLASS_NAMES = {"event": ["none", "event"], "three_class": ["none", "division", "death"]}
#: Fewest positive crop pairs each split needs (train, validation, test) for a meaningful run.
MIN_POSITIVES = (4, 1, 1)


@dataclass
class CropPairConfig:
    """How crop pairs are sampled, labelled and split (paper defaults)."""

    crop: int = 48  # side of the square crops (paper: 48)
    pairs_per_frame: int = 1000  # random crops per consecutive frame pair (paper: 1,000)
    criterion: str = "size_either"  # "size_either" (paper default) | "any_both" | "any_either"
    min_area: int = 40  # size_either: a crop is positive with MORE than this many event pixels (paper: 40)
    centre: int = 0  # > 0: the criterion counts only the event pixels in each crop's central centre x centre
    # window (event-centred labels, for detection: a pair is an event when the event sits at its centre);
    # 0: the whole crop (paper)
    border: int = 0  # crops may reach this many pixels beyond the frame edge (zeros there, as dense prediction
    # sees a cell near the edge); crop // 2 lets every pixel of the frame be a crop centre, so the head has seen
    # the windows it is applied to at the border; 0: crops inside the frame (paper)
    task: str = "event"  # "event" (binary, 1 = division or death) | "three_class" (0 none, 1 division, 2 death)
    split: str = "random"  # "random" (paper) | "time" | "region"
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)  # train / validation / test (paper)
    balance_train: bool = True  # subsample the training set to equal class counts (paper)
    balance_ratio: float = 1.0  # balance_train keeps at most this many times the rarest class's count of each
    # class (1 = equal counts, the paper; e.g. 5: five negatives per rare event, so the head sees more of what is
    # not an event; calibration's event bias corrects the prior either way)
    seed: int = 0  # sampling, shuffling and subsampling seed

    def validate(self) -> "CropPairConfig":
        if self.criterion not in CRITERIA:
            raise ValueError(f"unknown labelling criterion {self.criterion!r}; use one of {', '.join(CRITERIA)}")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; use one of {', '.join(TASKS)}")
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; use one of {', '.join(SPLITS)}")
        if int(self.crop) < 4:
            raise ValueError(f"crop must be at least 4 pixels, got {self.crop}")
        if int(self.pairs_per_frame) < 1:
            raise ValueError(f"pairs_per_frame must be at least 1, got {self.pairs_per_frame}")
        if int(self.min_area) < 0:
            raise ValueError(f"min_area must be >= 0 pixels, got {self.min_area}")
        if not float(self.balance_ratio) >= 1.0:
            raise ValueError(f"balance_ratio must be >= 1 (1 = equal class counts), got {self.balance_ratio}")
        if not 0 <= int(self.border) <= int(self.crop) // 2:
            raise ValueError(f"border must be between 0 and half the crop ({int(self.crop) // 2}), got {self.border}")
        if not 0 <= int(self.centre) <= int(self.crop):
            raise ValueError(f"centre must be between 0 (whole crop) and the crop size {self.crop}, got {self.centre}")
        fr = tuple(float(f) for f in self.fractions)
        if len(fr) != 3 or min(fr) <= 0 or abs(sum(fr) - 1.0) > 1e-6:
            raise ValueError(f"fractions must be three positive numbers summing to 1 (train, val, test); got {self.fractions}")
        self.fractions = fr  # type: ignore[assignment]
        return self


@dataclass
class CropSet:
    """One split: ``coords (N, 3) int64 [t, y, x]`` (top-left corner in frame t; the pair is t, t+1),
    ``labels (N,) int64``."""

    coords: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(len(self.labels))

    def counts(self, n_classes: int) -> np.ndarray:
        return np.bincount(self.labels, minlength=n_classes)[:n_classes]


@dataclass
class CropPairs:
    """The labelled, split crop pairs of one movie."""

    train: CropSet
    val: CropSet
    test: CropSet
    config: CropPairConfig
    class_names: list[str]
    movie_shape: tuple[int, int, int]
    total: int  # crop pairs sampled before balancing
    train_before_balance: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # class counts
    regions: dict[str, Any] = field(default_factory=dict)  # the time ranges / x bands of each split
    train_pool: Optional[CropSet] = None  # the training split before balancing (hard negatives come from it)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def split_info(self) -> dict[str, Any]:
        """Which split was used (for reports and bundles)."""
        return {"split": self.config.split, "fractions": list(self.config.fractions), "seed": self.config.seed,
                **self.regions}

    def summary(self) -> pd.DataFrame:
        """The paper's Table 1: total pairs, each split with its positives, threshold and crop size."""
        def row(s: CropSet) -> str:
            c = s.counts(self.n_classes)
            if self.n_classes == 2:
                return f"{len(s)} ({int(c[1])})"
            return f"{len(s)} ({', '.join(f'{n}: {int(k)}' for n, k in zip(self.class_names[1:], c[1:]))})"

        cfg = self.config
        pos = "positive samples" if self.n_classes == 2 else "per event class"
        rows = [
            ("total crop pairs", str(self.total)),
            (f"training set ({pos})", row(self.train)),
            (f"test set ({pos})", row(self.test)),
            (f"validation set ({pos})", row(self.val)),
            ("Annotation area threshold", str(cfg.min_area) if cfg.criterion == "size_either" else "none"),
            ("crop size", f"{cfg.crop}*{cfg.crop}"),
            ("labelling criterion", cfg.criterion),
            ("split", cfg.split),
        ]
        return pd.DataFrame(rows, columns=["item", "value"]).set_index("item")

    def to_dict(self) -> dict[str, Any]:
        """Counts per split and class (JSON-able), for manifests and reports."""
        return {
            "total": self.total,
            "class_names": self.class_names,
            "train": self.train.counts(self.n_classes).tolist(),
            "val": self.val.counts(self.n_classes).tolist(),
            "test": self.test.counts(self.n_classes).tolist(),
            "train_before_balance": np.asarray(self.train_before_balance).tolist(),
            **self.split_info(),
        }


def _integral(frame_mask: np.ndarray) -> np.ndarray:
    """Summed-area table with a zero first row/column: ``(Y+1, X+1) int32``."""
    s = np.zeros((frame_mask.shape[0] + 1, frame_mask.shape[1] + 1), np.int32)
    np.cumsum(np.cumsum(frame_mask, axis=0, dtype=np.int32), axis=1, out=s[1:, 1:])
    return s


def _box_sum(s: np.ndarray, y: np.ndarray, x: np.ndarray, crop: int) -> np.ndarray:
    """Sum of the ``crop x crop`` boxes at top-left ``(y, x)``; the parts outside the frame count 0."""
    h, w = s.shape[0] - 1, s.shape[1] - 1
    y0, y1 = np.clip(y, 0, h), np.clip(y + crop, 0, h)
    x0, x1 = np.clip(x, 0, w), np.clip(x + crop, 0, w)
    return s[y1, x1] - s[y0, x1] - s[y1, x0] + s[y0, x0]


def label_pair(mask_t: np.ndarray, mask_t1: np.ndarray, criterion: str = "size_either", min_area: int = 40,
               task: str = "event", centre: int = 0) -> int:
    """Label one pair of mask crops (values 0, 1, 2) under a criterion; see the module docstring."""
    if centre:
        o = (mask_t.shape[0] - centre) // 2
        mask_t, mask_t1 = mask_t[o:o + centre, o:o + centre], mask_t1[o:o + centre, o:o + centre]
    a = np.array([[np.count_nonzero(mask_t == v), np.count_nonzero(mask_t1 == v)] for v in (1, 2)])  # (2 values, 2 frames)
    return int(_labels_from_areas(a[None], criterion, min_area, task)[0])


def _labels_from_areas(areas: np.ndarray, criterion: str, min_area: int, task: str) -> np.ndarray:
    """``areas (N, 2 values [division, death], 2 frames)`` event pixel counts -> labels ``(N,)``."""
    total = areas.sum(axis=1)  # (N, 2 frames): event pixels per crop
    if criterion == "any_both":
        pos = (total[:, 0] > 0) & (total[:, 1] > 0)
    elif criterion == "any_either":
        pos = (total[:, 0] > 0) | (total[:, 1] > 0)
    elif criterion == "size_either":
        pos = (total[:, 0] > min_area) | (total[:, 1] > min_area)
    else:
        raise ValueError(f"unknown labelling criterion {criterion!r}; use one of {', '.join(CRITERIA)}")
    if task == "event":
        return pos.astype(np.int64)
    per_value = areas.sum(axis=2)  # (N, 2 values)
    cls = np.where(per_value[:, 0] > per_value[:, 1], 1, 2)  # tie -> death (2)
    return np.where(pos, cls, 0).astype(np.int64)


def label_coords(masks: np.ndarray, coords: np.ndarray, cfg: CropPairConfig) -> np.ndarray:
    """Labels ``(N,)`` of crop pairs at ``coords (N, 3) [t, y, x]`` from masks ``(T, Y, X)``."""
    coords = np.asarray(coords, np.int64).reshape(-1, 3)
    labels = np.zeros(len(coords), np.int64)
    c = int(cfg.crop)
    w = int(cfg.centre) or c  # side of the window whose event pixels count
    off = (c - w) // 2  # its offset from the crop's top-left corner
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def tables(t: int) -> tuple[np.ndarray, np.ndarray]:
        if t not in cache:
            if len(cache) > 2:
                cache.pop(min(cache))
            cache[t] = (_integral(masks[t] == 1), _integral(masks[t] == 2))
        return cache[t]

    order = np.argsort(coords[:, 0], kind="stable")
    ts = coords[order, 0]
    for t in np.unique(ts):
        idx = order[ts == t]
        y, x = coords[idx, 1] + off, coords[idx, 2] + off
        areas = np.empty((len(idx), 2, 2), np.int64)
        for f, tt in enumerate((int(t), int(t) + 1)):
            s1, s2 = tables(tt)
            areas[:, 0, f] = _box_sum(s1, y, x, w)
            areas[:, 1, f] = _box_sum(s2, y, x, w)
        labels[idx] = _labels_from_areas(areas, cfg.criterion, int(cfg.min_area), cfg.task)
    return labels


def _cut(n: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    """Sizes of train and validation parts of ``n`` items (test gets the rest)."""
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    return n_train, min(n_val, n - n_train)


def _time_ranges(n_pairs: int, fractions: tuple[float, float, float]) -> list[tuple[int, int]]:
    """Frame-pair index ranges [start, stop) of train/val/test, skipping one pair at each boundary."""
    a = int(round(fractions[0] * n_pairs))
    b = int(round((fractions[0] + fractions[1]) * n_pairs))
    ranges = [(0, a), (a + 1, b), (b + 1, n_pairs)]
    if any(stop - start < 1 for start, stop in ranges):
        raise ValueError(f"the movie has {n_pairs + 1} frames: too few for a time split into {fractions} with a "
                         "frame pair skipped at each boundary; use split 'random' or 'region', or a longer movie")
    return ranges


def _region_bands(width: int, crop: int, fractions: tuple[float, float, float]) -> list[tuple[int, int]]:
    """x ranges [start, stop) of train/val/test bands; each must hold at least one crop."""
    a = int(round(fractions[0] * width))
    b = int(round((fractions[0] + fractions[1]) * width))
    bands = [(0, a), (a, b), (b, width)]
    if any(stop - start < crop for start, stop in bands):
        raise ValueError(f"frames are {width} px wide: a region split {fractions} gives bands "
                         f"{[s - e for e, s in bands]} px wide, narrower than the crop ({crop}); use split 'random' "
                         "or 'time', or a smaller crop")
    return bands


def _sample(rng: np.random.Generator, ts: np.ndarray, n_per: int, y_lo: int, y_hi: int, x_lo: int,
            x_hi: int) -> np.ndarray:
    """``n_per`` random top-left corners (``y_lo..y_hi``, ``x_lo..x_hi``, inclusive) for each frame pair in
    ``ts``: ``(len(ts)*n_per, 3)``."""
    t = np.repeat(ts.astype(np.int64), n_per)
    y = rng.integers(y_lo, y_hi + 1, size=len(t))
    x = rng.integers(x_lo, x_hi + 1, size=len(t))
    return np.stack([t, y, x], axis=1)


def _balance(rng: np.random.Generator, s: CropSet, n_classes: int, ratio: float = 1.0) -> CropSet:
    """Subsample each class to at most ``ratio`` x the rarest present class's count (1: equal counts)."""
    counts = s.counts(n_classes)
    present = [k for k in range(n_classes) if counts[k] > 0]
    n = int(min(counts[k] for k in present) * float(ratio))
    keep = np.concatenate([rng.choice(np.flatnonzero(s.labels == k), size=min(n, int(counts[k])), replace=False)
                           for k in present])
    keep = rng.permutation(keep)
    return CropSet(s.coords[keep], s.labels[keep])


def mine_hard_negatives(train: CropSet, pool: CropSet, pool_event_prob: np.ndarray, fraction: float,
                        rng: np.random.Generator) -> tuple[CropSet, dict[str, Any]]:
    """Swap a fraction of the training negatives for the pool's hardest negatives (hard negative mining).

    ``pool`` holds the training split's crop pairs before balancing and ``pool_event_prob (len(pool),)``
    the current head's probability that each is an event. The new negatives are the
    ``k = round(fraction * n_neg)`` pool negatives with the highest event probability (ties: lower
    index first) plus ``n_neg - k`` of the current negatives not among them, drawn at random; positives,
    the training set's size and its class counts stay as they were. Every crop pair comes from the
    training split, so no validation or test crop is looked at. Returns the new training set and a
    summary: ``mined`` (k), ``pool_negatives``, ``train_negatives``, and the mean event probability of
    the mined negatives and of the negatives they replaced.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the hard-negative fraction must be in [0, 1], got {fraction}")
    prob = np.asarray(pool_event_prob, np.float64).reshape(-1)
    if len(prob) != len(pool):
        raise ValueError(f"{len(prob)} pool probabilities for {len(pool)} pool crop pairs")
    neg_train = np.flatnonzero(train.labels == 0)
    neg_pool = np.flatnonzero(pool.labels == 0)
    k = min(int(round(fraction * len(neg_train))), len(neg_pool))
    info: dict[str, Any] = {"mined": int(k), "pool_negatives": int(len(neg_pool)),
                            "train_negatives": int(len(neg_train))}
    if k == 0:
        return train, info
    hard = neg_pool[np.lexsort((neg_pool, -prob[neg_pool]))[:k]]  # highest event probability first
    hard_keys = _coord_keys(pool.coords[hard])
    rest = neg_train[~np.isin(_coord_keys(train.coords[neg_train]), hard_keys)]
    kept = np.sort(rng.choice(rest, size=min(len(neg_train) - k, len(rest)), replace=False))
    replaced = np.setdiff1d(rest, kept)
    pos = np.flatnonzero(train.labels != 0)
    coords = np.concatenate([train.coords[pos], train.coords[kept], pool.coords[hard]]).astype(np.int64)
    labels = np.concatenate([train.labels[pos], train.labels[kept], np.zeros(k, np.int64)])
    perm = rng.permutation(len(labels))
    pool_prob = dict(zip(_coord_keys(pool.coords).tolist(), prob.tolist()))
    replaced_prob = [pool_prob[v] for v in _coord_keys(train.coords[replaced]).tolist() if v in pool_prob]
    info.update({"mined_mean_event_prob": float(prob[hard].mean()),
                 "replaced_mean_event_prob": float(np.mean(replaced_prob)) if replaced_prob else None})
    return CropSet(coords[perm], labels[perm]), info


def resample_negatives(train: CropSet, pool: CropSet, rng: np.random.Generator) -> CropSet:
    """The training set with its negatives (label 0) drawn afresh from ``pool`` (the training split before
    balancing), as many as before; the positives stay. Over the epochs the head then sees many more of the
    split's negatives than one balanced subsample holds, at the same cost per epoch."""
    pos = np.flatnonzero(train.labels != 0)
    n_neg = int((train.labels == 0).sum())
    neg_pool = np.flatnonzero(pool.labels == 0)
    pick = rng.choice(neg_pool, size=min(n_neg, len(neg_pool)), replace=False)
    coords = np.concatenate([train.coords[pos], pool.coords[pick]]).astype(np.int64)
    labels = np.concatenate([train.labels[pos], np.zeros(len(pick), np.int64)])
    perm = rng.permutation(len(labels))
    return CropSet(coords[perm], labels[perm])


def _coord_keys(coords: np.ndarray) -> np.ndarray:
    """One integer per ``[t, y, x]`` row (frames and pixels below 10**6)."""
    c = np.asarray(coords, np.int64).reshape(-1, 3)
    return (c[:, 0] * 10**6 + c[:, 1]) * 10**6 + c[:, 2]


def build_crop_pairs(masks: np.ndarray, cfg: Optional[CropPairConfig] = None,
                     movie_shape: Optional[tuple[int, ...]] = None) -> CropPairs:
    """Sample, label and split crop pairs from event masks.

    Args:
        masks: ``(T, Y, X)`` with 0 none, 1 division, 2 death.
        cfg: sampling/labelling/split options (paper defaults when None).
        movie_shape: the movie's ``(T, Y, X)``; when given the masks must match it.

    Returns:
        :class:`CropPairs` with ``.train/.val/.test`` (coords ``[t, y, x]`` and labels) and ``.summary()``.

    Raises:
        ValueError: masks not matching the movie, frames smaller than the crop, too few event crops.
    """
    from tapcore.io import check_masks

    cfg = dataclasses.replace(cfg or CropPairConfig()).validate()
    masks = check_masks(masks, movie_shape)
    t_len, height, width = masks.shape
    c = int(cfg.crop)
    if t_len < 2:
        raise ValueError(f"masks have {t_len} frame; crop pairs need at least 2 consecutive frames")
    if height < c or width < c:
        raise ValueError(f"frames are {height} x {width} px, smaller than the crop {c} x {c}; use a smaller --crop")
    class_names = list(CLASS_NAMES[cfg.task])
    n_classes = len(class_names)
    rng = np.random.default_rng(cfg.seed)
    n_pairs = t_len - 1
    regions: dict[str, Any] = {}
    e = int(cfg.border)  # crops may start this far outside the frame

    if cfg.split == "random":
        coords = _sample(rng, np.arange(n_pairs), int(cfg.pairs_per_frame), -e, height - c + e, -e, width - c + e)
        labels = label_coords(masks, coords, cfg)
        perm = rng.permutation(len(coords))
        n_train, n_val = _cut(len(coords), cfg.fractions)
        parts = np.split(perm, [n_train, n_train + n_val])
        sets = [CropSet(coords[p], labels[p]) for p in parts]
        total = len(coords)
    elif cfg.split == "time":
        ranges = _time_ranges(n_pairs, cfg.fractions)
        regions["time_ranges"] = {name: [a, b] for name, (a, b) in zip(("train", "val", "test"), ranges)}
        sets = []
        for a, b in ranges:
            co = _sample(rng, np.arange(a, b), int(cfg.pairs_per_frame), -e, height - c + e, -e, width - c + e)
            sets.append(CropSet(co, label_coords(masks, co, cfg)))
        total = sum(len(s) for s in sets)
    else:  # region
        bands = _region_bands(width, c, cfg.fractions)
        regions["x_bands"] = {name: [a, b] for name, (a, b) in zip(("train", "val", "test"), bands)}
        sets = []
        for (a, b), frac in zip(bands, cfg.fractions):
            n_per = max(1, int(round(cfg.pairs_per_frame * frac)))
            co = _sample(rng, np.arange(n_pairs), n_per, -e, height - c + e, a, b - c)  # x stays in its band
            sets.append(CropSet(co, label_coords(masks, co, cfg)))
        total = sum(len(s) for s in sets)

    train, val, test = sets
    _check_enough(train, val, test, cfg, n_classes, class_names)
    before = train.counts(n_classes)
    pool = train
    if cfg.balance_train:
        train = _balance(rng, train, n_classes, cfg.balance_ratio)
    pairs = CropPairs(train, val, test, cfg, class_names, (t_len, height, width), int(total), before, regions,
                      train_pool=pool)
    logger.debug("crop pairs: %s", pairs.to_dict())
    return pairs


def _check_enough(train: CropSet, val: CropSet, test: CropSet, cfg: CropPairConfig, n_classes: int,
                  class_names: list[str]) -> None:
    hint = "annotate more events" + ("" if cfg.criterion == "any_either" else " or use criterion any_either")
    if cfg.split != "random":
        hint += " or split 'random'"
    total_pos = sum(int((s.labels > 0).sum()) for s in (train, val, test))
    need = sum(MIN_POSITIVES)
    for name, s, n_min in zip(("training", "validation", "test"), (train, val, test), MIN_POSITIVES):
        n_pos = int((s.labels > 0).sum())
        if n_pos < n_min:
            raise ValueError(
                f"the masks contain {total_pos} event crops (criterion {cfg.criterion}, {cfg.split} split) and the "
                f"{name} set gets {n_pos}; need at least {need} ({n_min} in the {name} set); {hint}"
            )
    if cfg.task == "three_class":
        counts = train.counts(n_classes)
        missing = [class_names[k] for k in (1, 2) if counts[k] == 0]
        if missing:
            raise ValueError(f"the training set has no {' or '.join(missing)} crops for the three-class task; "
                             f"{hint}, or use task 'event'")
    if (train.labels == 0).sum() == 0:
        raise ValueError("every training crop is an event: there are no negative crops; use more pairs per frame "
                         "or criterion size_either")
