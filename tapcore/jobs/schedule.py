"""Queue positions and estimated start / finish times of the active jobs (shown on the Jobs page).

How it is worked out:

- **order**: the waiting jobs in the order free workers will take them (:func:`tapcore.jobs.fairshare.claim_order`
  with today's running counts); jobs held back by a user's ``max_running`` limit come last.
- **durations**: from the jobs this workspace has finished (:class:`Durations`). A pretraining job's
  work is counted from its settings with :func:`tapcore.estimate.pretrain_work` (training pairs plus
  :data:`~tapcore.estimate.EVAL_COST` per validation pair) and divided by the recorded rate of earlier
  pretraining jobs (pairs per second of wall time, median); other kinds take the median wall time of
  earlier jobs of the same kind. No finished job of a kind yet: its duration is unknown (and so is
  every start after it on the same worker).
- **running jobs** end after their elapsed time scaled by their progress (``elapsed * (1 - p) / p``
  once ``p >= 2%``), else after their estimated duration.
- **start**: each waiting job goes to the worker that becomes free first (as many workers as are
  alive, at least one).

Estimates assume nothing else changes: no new submits, no cancels, no worker restarts.
"""

from __future__ import annotations

import heapq
import logging
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from tapcore.jobs.fairshare import Waiting, claim_order
from tapcore.jobs.queue import Job, JobQueue, iso

logger = logging.getLogger(__name__)

__all__ = ["Durations", "Planned", "plan_jobs", "plan", "MIN_PROGRESS", "HISTORY"]

#: below this progress a running job's remaining time comes from its estimated duration
MIN_PROGRESS = 0.02
#: finished jobs of each kind whose durations are used (the latest)
HISTORY = 20
UNKNOWN = math.inf


def _wall(job: Job) -> float | None:
    if job.started is None or job.ended is None or job.ended <= job.started:
        return None
    return float(job.ended - job.started)


def pretrain_pairs(spec: dict[str, Any]) -> float | None:
    """Work of a pretraining job in training-pair units (``train + EVAL_COST * val``), from its spec."""
    from tapcore.config import config_from_dict
    from tapcore.estimate import EVAL_COST, pretrain_work
    from tapcore.tap.train import PretrainConfig

    config = dict((spec.get("params") or {}).get("config") or {})
    try:
        if config.get("preset"):
            from tapcore.presets import apply_preset

            config.setdefault("device", "cpu")  # not used for the count; avoids probing for a GPU
            cfg = apply_preset(config["preset"], config)
        else:
            config.pop("device", None)
            cfg = config_from_dict(PretrainConfig, config)
        train, val = pretrain_work(cfg)
    except (ValueError, TypeError, KeyError) as exc:
        logger.debug("cannot count the work of %s: %s", spec, exc)
        return None
    return train + EVAL_COST * val


class Durations:
    """Estimated job durations from the finished jobs of a workspace."""

    def __init__(self, finished: Iterable[Job]):
        self.walls: dict[str, list[float]] = {}
        self.rates: list[float] = []  # pretraining: pairs per second of wall time
        for job in sorted(finished, key=lambda j: j.ended or 0.0, reverse=True):
            wall = _wall(job)
            if job.state != "done" or wall is None or len(self.walls.get(job.kind, [])) >= HISTORY:
                continue
            self.walls.setdefault(job.kind, []).append(wall)
            if job.kind == "pretrain":
                work = pretrain_pairs(job.spec)
                if work:
                    self.rates.append(work / wall)

    def estimate(self, job: Job) -> tuple[float | None, str]:
        """``(seconds or None, how)`` for a job of this workspace."""
        if job.kind == "pretrain" and self.rates:
            work = pretrain_pairs(job.spec)
            if work:
                rate = statistics.median(self.rates)
                return work / rate, (f"{work:,.0f} pairs at {rate:,.1f} pairs/s recorded over "
                                     f"{len(self.rates)} finished pretraining job(s)")
        walls = self.walls.get(job.kind)
        if walls:
            return statistics.median(walls), f"median of {len(walls)} finished {job.kind} job(s)"
        return None, f"no finished {job.kind} job yet to time it by"


@dataclass
class Planned:
    """One active job's place in the plan (times are UNIX seconds; None = unknown)."""

    job: str
    owner: str
    kind: str
    state: str
    device: str | None
    position: int  # 0 = running now; 1, 2, ... = waiting, in the order workers will take them
    duration_s: float | None
    start: float | None
    finish: float | None
    basis: str

    def as_row(self, now: float | None = None) -> dict[str, Any]:
        """Table columns: queue position, estimated start / finish (UTC, and how far from now), device."""
        now = time.time() if now is None else now
        return {"job": self.job,
                "queue position": "running" if self.position == 0 else str(self.position),
                "est. start (UTC)": _when(self.start, now, self.position == 0),
                "est. finish (UTC)": _when(self.finish, now),
                "device": self.device or ""}


def _when(ts: float | None, now: float, past_ok: bool = False) -> str:
    if ts is None:
        return "unknown"
    from tapcore.estimate import format_duration

    if past_ok and ts <= now:
        return iso(ts)
    return f"{iso(ts)} (in ~{format_duration(max(ts - now, 0.0))})"


def _finite(x: float) -> float | None:
    return None if math.isinf(x) else x


def plan_jobs(active: Sequence[Job], durations: Durations, *, slots: int, now: float,
              last_start: dict[str, float] | None = None, max_running: dict[str, int | None] | None = None,
              seq: dict[str, int] | None = None) -> list[Planned]:
    """The plan of ``active`` jobs (running, queued, interrupted) on ``slots`` workers at time ``now``.

    Args:
        seq: submission order per job id (default: order of ``created``).
        last_start, max_running: as for :func:`tapcore.jobs.fairshare.claim_order`.

    Returns:
        Running jobs first (position 0), then waiting jobs by position.
    """
    seq = seq or {j.id: i for i, j in enumerate(sorted(active, key=lambda j: (j.created, j.id)))}
    running = [j for j in active if j.state == "running"]
    waiting = [j for j in active if j.state in ("queued", "interrupted") and not j.cancel_requested]
    out: list[Planned] = []
    free: list[float] = []
    counts: dict[str, int] = {}
    for j in running:
        counts[j.owner] = counts.get(j.owner, 0) + 1
        total, basis = durations.estimate(j)
        elapsed = max(now - (j.started or now), 0.0)
        if j.progress >= MIN_PROGRESS and elapsed > 0:
            remaining = elapsed * (1.0 - j.progress) / j.progress
            basis = f"{j.progress:.0%} done in {elapsed:.0f} s"
        elif total is not None:
            remaining = max(total - elapsed, 0.0)
        else:
            remaining = UNKNOWN
        out.append(Planned(j.id, j.owner, j.kind, j.state, j.device, 0, _finite(elapsed + remaining),
                           j.started, _finite(now + remaining), basis))
        free.append(now + remaining)
    free += [now] * max(int(slots) - len(free), 0)
    if not free:
        free = [now]
    heapq.heapify(free)
    by_id = {j.id: j for j in waiting}
    order = claim_order([Waiting(j.id, j.owner, seq[j.id]) for j in waiting], counts, last_start or {},
                        max_running or {})
    picked = {w.id for w in order}
    held = sorted((j for j in waiting if j.id not in picked), key=lambda j: seq[j.id])
    for pos, job_id in enumerate([w.id for w in order] + [j.id for j in held], start=1):
        j = by_id[job_id]
        total, basis = durations.estimate(j)
        if job_id not in picked:
            basis = f"held back: {j.owner} is at their max_running limit; " + basis
        start = heapq.heappop(free)
        finish = start + total if total is not None else UNKNOWN
        heapq.heappush(free, finish)
        out.append(Planned(j.id, j.owner, j.kind, j.state, None, pos, total, _finite(start), _finite(finish), basis))
    return out


def plan(queue: JobQueue, now: float | None = None) -> list[Planned]:
    """The plan of a workspace's active local jobs (Slurm's jobs are left to Slurm)."""
    from tapcore.jobs.limits import max_running_by_user

    now = time.time() if now is None else now
    jobs = queue.list(limit=1000)
    active = [j for j in jobs if j.state in ("queued", "running", "interrupted")
              and not (j.worker or "").startswith("slurm:")]
    seq = {j.id: len(jobs) - i for i, j in enumerate(jobs)}  # list() is newest first
    last: dict[str, float] = {}
    for j in jobs:
        if j.started is not None:
            last[j.owner] = max(last.get(j.owner, 0.0), j.started)
    durations = Durations(queue.list(states=("done",), limit=500))
    slots = max(len(queue.alive_workers()), 1)
    limits = max_running_by_user(queue.home, {j.owner for j in active})
    return plan_jobs(active, durations, slots=slots, now=now, last_start=last, max_running=limits, seq=seq)
