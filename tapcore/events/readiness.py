"""Are a dataset's event masks enough to train and calibrate an event head? Checked at job submission.

A head job splits the crop pairs of a movie into training, validation and test sets
(:mod:`tapcore.events.dataset`), trains on the first, calibrates on the second and reports on the
third. So the masks need:

- at least one event pixel;
- at least :data:`MIN_EVENTS` separate events (connected regions of event pixels in space and
  time: a dividing cell's last frame and its daughters' first frame form one region), one for each
  of the three sets. With fewer, the validation or test windows can only be windows of the events
  the head was trained on (or none at all), and the calibration and the test figures mean nothing;
- at least :data:`tapcore.events.dataset.MIN_POSITIVES` event windows in the training, validation
  and test sets with the job's window settings (checked by building the windows exactly as the job
  will, which takes about a second rather than the minutes a job would run before failing).

:func:`check_head_masks` raises ValueError with the counts and the minimum; the job queue calls it
when a ``train_head``, ``compare`` or ``calibrate`` job is submitted, so a form says so before
anything is queued.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from tapcore.events.dataset import MIN_POSITIVES, CropPairConfig, build_crop_pairs

#: Fewest separate events (connected regions of event pixels) a head job needs: one per split.
MIN_EVENTS = len(MIN_POSITIVES)


def count_events(masks: np.ndarray) -> int:
    """Number of separate events: connected regions of event pixels (values 1 or 2) in ``(T, Y, X)``.

    Regions touching in consecutive frames at the same place (a mother and her daughters) are one event.
    """
    from scipy import ndimage

    _, n = ndimage.label(np.asarray(masks) > 0)  # face connectivity in (t, y, x)
    return int(n)


def check_head_masks(masks: np.ndarray, dataset: Optional[CropPairConfig] = None, *, name: str = "the dataset",
                     build_windows: bool = True) -> dict[str, Any]:
    """Raise ValueError when ``masks`` cannot train and calibrate an event head; return counts otherwise.

    Args:
        masks: ``(T, Y, X)`` event masks (0 none, 1 division, 2 death).
        dataset: the job's window settings (crop, pairs per frame, criterion, split); defaults when None.
        name: how the dataset is called in messages.
        build_windows: also build the crop pairs exactly as the job will (the exact rule).

    Returns:
        ``{"event_pixels", "events", "positive_windows"}`` (the last only with ``build_windows``).
    """
    masks = np.asarray(masks)
    event_pixels = int(np.count_nonzero(masks))
    if event_pixels == 0:
        raise ValueError(
            f"the event masks of {name} contain no events (every pixel is 0); an event head learns from annotated "
            "events: mark dividing cells with 1 and dying cells with 2, or choose a dataset with events"
        )
    events = count_events(masks)
    if events < MIN_EVENTS:
        raise ValueError(
            f"the event masks of {name} contain {events} event{'s' if events != 1 else ''} (separate regions of event "
            f"pixels); training and calibrating an event head needs at least {MIN_EVENTS}, one each for its "
            "training, validation and test windows; annotate more events"
        )
    out: dict[str, Any] = {"event_pixels": event_pixels, "events": events}
    if build_windows:
        try:
            pairs = build_crop_pairs(masks, dataset)
        except ValueError as exc:
            raise ValueError(f"the event masks of {name} are not enough with these settings: {exc}") from None
        out["positive_windows"] = {s: int((getattr(pairs, s).labels > 0).sum()) for s in ("train", "val", "test")}
    return out
