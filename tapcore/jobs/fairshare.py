"""Fair share between users: which waiting job a free worker takes next.

The queue used to be one first-come line: a user who queued 20 jobs held back everyone else's first
job for 20 jobs. Now a free worker picks the *user* first, then that user's oldest job:

1. users at their ``max_running`` limit (:mod:`tapcore.jobs.limits`) are skipped;
2. the user with the fewest jobs running now goes first;
3. ties: the user served least recently (whose last job started longest ago; never served = first);
4. ties: the user whose oldest waiting job was submitted first;
5. within a user: submission order (FIFO).

So with user A's 10 queued jobs followed by user B's 1, B's job starts as soon as a worker is free
and A has a job running (or A was served more recently), not after A's ten.

:func:`claim_order` is pure (no database): the queue passes it the waiting jobs and the running
counts; :mod:`tapcore.jobs.schedule` uses the same function to predict queue positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

__all__ = ["Waiting", "claim_order", "pick"]

# a pick in the simulated order counts as served "now + tick": later than any real UNIX time
_SERVED_NOW = 1e15


@dataclass(frozen=True)
class Waiting:
    """A job that waits for a worker (state ``queued`` or ``interrupted``).

    Attributes:
        id: job id.
        owner: the user who submitted it.
        seq: submission order (the queue's row number; smaller = earlier).
    """

    id: str
    owner: str
    seq: int


def _user_key(user: str, running: Mapping[str, int], last_start: Mapping[str, float],
              oldest: Mapping[str, int]) -> tuple[int, float, int]:
    return (int(running.get(user, 0)), float(last_start.get(user, float("-inf"))), int(oldest[user]))


def claim_order(waiting: Sequence[Waiting], running: Mapping[str, int] | None = None,
                last_start: Mapping[str, float] | None = None,
                max_running: Mapping[str, int | None] | None = None) -> list[Waiting]:
    """The order in which free workers would take ``waiting`` jobs, if nothing else changed.

    Each pick counts as one more running job of its owner and as that owner's latest service, so the
    order alternates between users (round robin, fewest running first).

    Args:
        waiting: jobs waiting for a worker, any order.
        running: jobs running now per user.
        last_start: per user, the UNIX time their latest job started (absent: never served).
        max_running: per user, the most jobs they may run at once (None or absent: no limit). A user at
            their limit gets no further pick; those jobs are left out of the returned order (they
            wait until one of the user's jobs ends).

    Returns:
        The jobs in claim order (a subset of ``waiting`` when limits hold some back).
    """
    running = dict(running or {})
    last = dict(last_start or {})
    limits = dict(max_running or {})
    per_user: dict[str, list[Waiting]] = {}
    for job in sorted(waiting, key=lambda j: j.seq):
        per_user.setdefault(job.owner, []).append(job)
    order: list[Waiting] = []
    tick = 0
    while per_user:
        allowed = [u for u in per_user if limits.get(u) is None or running.get(u, 0) < int(limits[u])]
        if not allowed:
            break
        oldest = {u: per_user[u][0].seq for u in allowed}
        user = min(allowed, key=lambda u: _user_key(u, running, last, oldest))
        job = per_user[user].pop(0)
        order.append(job)
        running[user] = running.get(user, 0) + 1
        tick += 1
        last[user] = _SERVED_NOW + tick  # served now: later than any recorded start
        if not per_user[user]:
            del per_user[user]
    return order


def pick(waiting: Sequence[Waiting], running: Mapping[str, int] | None = None,
         last_start: Mapping[str, float] | None = None,
         max_running: Mapping[str, int | None] | None = None) -> Waiting | None:
    """The job a free worker takes now (the first of :func:`claim_order`), or None."""
    if not waiting:
        return None
    order = claim_order(waiting, running, last_start, max_running)
    return order[0] if order else None


def waiting_state(con, home) -> tuple[list[Waiting], dict[str, int], dict[str, float], dict[str, int | None]]:
    """From an open queue connection: the waiting jobs, running counts and last start per user, and
    their ``max_running`` limits (the inputs of :func:`claim_order`). Slurm's jobs are left out."""
    from tapcore.jobs.limits import max_running_by_user

    rows = con.execute(
        "SELECT id, owner, seq FROM jobs WHERE state IN ('queued', 'interrupted') AND cancel_requested = 0 "
        "AND COALESCE(worker, '') NOT LIKE 'slurm:%' ORDER BY seq"
    ).fetchall()
    waiting = [Waiting(r[0], r[1], int(r[2])) for r in rows]
    running = {r[0]: int(r[1]) for r in con.execute(
        "SELECT owner, COUNT(*) FROM jobs WHERE state = 'running' AND COALESCE(worker, '') NOT LIKE 'slurm:%' "
        "GROUP BY owner").fetchall()}
    last = {r[0]: float(r[1]) for r in con.execute(
        "SELECT owner, MAX(started) FROM jobs WHERE started IS NOT NULL GROUP BY owner").fetchall()}
    limits = max_running_by_user(home, {w.owner for w in waiting}) if waiting else {}
    return waiting, running, last, limits


def load_and_pick(con, home) -> str | None:
    """The id of the job a free worker takes now (inside the claim's transaction), or None."""
    waiting, running, last, limits = waiting_state(con, home)
    job = pick(waiting, running, last, limits)
    return job.id if job else None
