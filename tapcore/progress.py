"""Progress reporting shared by every long-running workflow.

A workflow takes ``progress: ProgressFn | None`` and calls it with one plain dict per step or
epoch. The same dicts are appended to a run's ``metrics.jsonl`` (see :class:`MetricsLog`), which is
what the job worker and the app's live curves read. Standard keys:

- ``stage``: which workflow (``"pretrain"``, ``"train_head"``, ``"calibrate"``, ``"predict"``, ...)
- ``kind``: ``"step"`` (within an epoch) or ``"epoch"`` (end of epoch, with metrics) or ``"done"``
- ``epoch`` (1-based), ``epochs``, ``step`` (1-based within the epoch), ``steps``
- ``elapsed_s``: seconds since the workflow started
- metrics, each optional: ``train_loss``, ``train_decorr``, ``train_acc``, ``val_loss``,
  ``val_decorr``, ``val_acc``, ``lr``, ``pairs_per_s``
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

ProgressFn = Callable[[dict[str, Any]], None]


def fraction_done(record: dict[str, Any]) -> float:
    """Overall completion in [0, 1] of a progress record (epochs and steps within the epoch)."""
    if record.get("kind") == "done":
        return 1.0
    epochs = max(int(record.get("epochs") or 1), 1)
    epoch = int(record.get("epoch") or 0)
    steps = int(record.get("steps") or 0)
    step = int(record.get("step") or 0)
    if record.get("kind") == "epoch" or steps <= 0:
        done = epoch
    else:
        done = (epoch - 1) + min(step, steps) / steps
    return float(min(max(done / epochs, 0.0), 1.0))


class MetricsLog:
    """Append-only JSON-lines log (``metrics.jsonl``); each record is flushed and fsynced at once.

    Use it as a progress callback: ``log = MetricsLog(run_dir / "metrics.jsonl"); pretrain(..., progress=log)``.
    Chain several callbacks with :func:`chain`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, default=float) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def read(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete records of a ``metrics.jsonl`` (a partially written last line is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def chain(*callbacks: Optional[ProgressFn]) -> ProgressFn:
    """One callback that calls each non-None callback in turn."""
    active: Iterable[ProgressFn] = [c for c in callbacks if c is not None]

    def _call(record: dict[str, Any]) -> None:
        for cb in active:
            cb(record)

    return _call
