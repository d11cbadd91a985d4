"""Persistent job queue: one SQLite file (``$TAPCORE_HOME/jobs.sqlite``) shared by app, CLI and workers.

Every operation opens its own connection and runs one short transaction, so several processes
(the app, ``tapcore submit``, one worker per GPU) can use the queue at once. Claiming a job is an
``UPDATE ... WHERE state IN ('queued', 'interrupted')`` inside ``BEGIN IMMEDIATE``: two workers never
get the same job. Which job a free worker takes is fair between users (:mod:`tapcore.jobs.fairshare`:
the user with the fewest running jobs first, FIFO within a user), within the per-user limits of
:mod:`tapcore.jobs.limits` (also checked at submit). The job records the device its worker runs on.

Job states::

    queued -> running -> done | failed | cancelled
                      -> interrupted (its worker died) -> running (resumed by a new worker) -> ...

With a ``[slurm]`` section in ``$TAPCORE_HOME/tapcore.toml`` jobs are sent to Slurm on submit
(:mod:`tapcore.jobs.slurm`; their ``worker`` is ``slurm:<id>`` and local workers never claim them).

Each job has a run folder ``runs/<job id>/`` with ``spec.json``, ``state.json``, ``metrics.jsonl``,
``log.txt``, ``checkpoint/`` and its outputs.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from tapcore import audit
from tapcore.access import AccessDenied, User, can_read, check_change, check_read, run_access, write_access
from tapcore.utils import (DiskFullError, atomic_write_json, create_file, explain_disk_full, read_json,
                           newest_first, sqlite_connect)

logger = logging.getLogger(__name__)

STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
ACTIVE_STATES = ("queued", "running", "interrupted")
FINAL_STATES = ("done", "failed", "cancelled")

# A worker that has not written a heartbeat for this long is considered dead (seconds).
HEARTBEAT_STALE_S = 30.0
# How long a writer waits for the SQLite lock held by another process before giving up (seconds).
BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    ended REAL,
    pid INTEGER,
    worker TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    device TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    device TEXT NOT NULL,
    started REAL NOT NULL,
    heartbeat REAL NOT NULL,
    job TEXT
);
"""


def _now() -> float:
    return time.time()


def iso(ts: float | None) -> str:
    """A UNIX time as ``YYYY-MM-DD HH:MM:SS`` UTC ('' when None)."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this id exists on this machine (zombies count as dead)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().split(")")[-1].split()[0] != "Z"
        except OSError:
            return True
    return True


@dataclass
class Job:
    """One row of the queue."""

    id: str
    owner: str
    kind: str
    spec: dict[str, Any]
    state: str
    progress: float
    created: float
    started: float | None
    ended: float | None
    pid: int | None
    worker: str | None
    attempts: int
    cancel_requested: bool
    error: str | None
    run_dir: Path = field(default=Path("."))
    device: str | None = None  # the device of the worker that ran it last (cpu, cuda:N, ...)

    def as_row(self) -> dict[str, Any]:
        """A flat dict for tables (times as UTC strings)."""
        return {
            "job": self.id,
            "kind": self.kind,
            "owner": self.owner,
            "state": self.state,
            "progress": round(self.progress * 100.0, 1),
            "created": iso(self.created),
            "started": iso(self.started),
            "ended": iso(self.ended),
            "attempts": self.attempts,
            "device": self.device or "",
            "error": self.error or "",
        }


@dataclass
class WorkerInfo:
    """One registered worker process."""

    id: str
    host: str
    pid: int
    device: str
    started: float
    heartbeat: float
    job: str | None

    def alive(self, stale_s: float = HEARTBEAT_STALE_S) -> bool:
        """Alive = recent heartbeat, and (on this machine) its process still exists."""
        if _now() - self.heartbeat > stale_s:
            return False
        if self.host == socket.gethostname():
            return pid_alive(self.pid)
        return True


class JobQueue:
    """The job queue of one workspace (``home``: the ``$TAPCORE_HOME`` folder).

    ``user``: the acting user (:class:`tapcore.access.User`). With one, :meth:`submit` files jobs
    under that user, and :meth:`get`, :meth:`list`, :meth:`cancel`, :meth:`delete` and
    :meth:`set_shared` see and act only on that user's jobs and those shared with the lab (read-only),
    raising :class:`tapcore.access.AccessDenied` for anything else; admins see all. Without one
    (the workers and the app's own bookkeeping) nothing is filtered.
    """

    def __init__(self, home: str | os.PathLike, user: User | None = None):
        self.user = user
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.db_path = self.home / "jobs.sqlite"
        self.runs_dir = self.home / "runs"
        self.runs_dir.mkdir(exist_ok=True)
        self._init_db()

    def _init_db(self) -> None:
        """WAL mode and the schema, retried while another process does the same on a new file.

        Switching a fresh database to WAL can fail at once with "database is locked" (SQLite's busy
        handler does not cover it) when two processes open a new workspace together: retry it.
        """
        create_file(self.db_path)  # under the umask (0664 under 0002); its -wal/-shm files get its mode
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                con = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
                try:
                    con.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
                    con.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the database file
                    con.executescript(_SCHEMA)  # idempotent (IF NOT EXISTS); runs its own transaction
                    _add_missing_columns(con)
                finally:
                    con.close()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the job queue {self.db_path} stayed locked for {BUSY_TIMEOUT_S:.0f} s "
                                       "(another program holds it); try again in a moment") from exc
                time.sleep(0.05)

    # -- plumbing -------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        con = sqlite_connect(self.db_path, BUSY_TIMEOUT_S)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    @contextmanager
    def _tx(self, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            yield con
            con.execute("COMMIT")
        except BaseException:
            try:
                con.execute("ROLLBACK")
            except sqlite3.Error:  # a failed COMMIT (e.g. a full disk) may have ended the transaction already
                pass
            raise
        finally:
            con.close()

    def run_dir(self, job_id: str) -> Path:
        return self.runs_dir / job_id

    def _job(self, row: sqlite3.Row) -> Job:
        return Job(
            id=row["id"],
            owner=row["owner"],
            kind=row["kind"],
            spec=json.loads(row["spec"]),
            state=row["state"],
            progress=float(row["progress"] or 0.0),
            created=row["created"],
            started=row["started"],
            ended=row["ended"],
            pid=row["pid"],
            worker=row["worker"],
            attempts=int(row["attempts"]),
            cancel_requested=bool(row["cancel_requested"]),
            error=row["error"],
            run_dir=self.run_dir(row["id"]),
            device=row["device"] if "device" in row.keys() else None,
        )

    # -- submitting and reading -----------------------------------------------------------------
    def submit(self, spec: dict[str, Any], owner: str = "", *, dedupe: bool = True) -> str:
        """Validate a job spec (``{"kind": ..., "params": {...}}``), create its run folder, enqueue it.

        Returns the job id. Raises ValueError for an unknown kind, a malformed spec, or inputs that
        cannot work (:func:`tapcore.jobs.tasks.preflight`, e.g. masks without enough events). With
        ``dedupe``, the same owner submitting the same spec again while it is still queued, running
        or interrupted (two browser tabs, a double click) gets the existing job's id; see
        :meth:`submit_once`.
        """
        return self.submit_once(spec, owner, dedupe=dedupe)[0]

    def submit_once(self, spec: dict[str, Any], owner: str = "", *, dedupe: bool = True) -> tuple[str, bool]:
        """Like :meth:`submit`; returns ``(job id, reused)``, ``reused`` True when an identical active job
        of the same owner was found and nothing new was queued.

        The duplicate check, the run folder (``spec.json``, ``state.json``) and the row are made inside
        one ``BEGIN IMMEDIATE`` transaction: concurrent submits never create the same job twice, and a
        failure (a full disk, a busy database) leaves neither a row without its folder nor a folder
        without its row.
        """
        from tapcore.jobs.tasks import preflight, validate_spec

        spec = validate_spec(spec)
        if self.user is not None:
            if owner and owner != self.user.name and not self.user.is_admin:
                raise AccessDenied(f"{self.user.name} may not submit a job for {owner!r}; jobs are filed under "
                                   "the signed-in user")
            owner = owner or self.user.name
            self._check_inputs(spec)
        preflight(spec, self.home)
        owner = (owner or os.environ.get("USER") or "anonymous").strip()[:64]
        spec_json = json.dumps(spec, sort_keys=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        job_id = f"{stamp}-{spec['kind']}-{secrets.token_hex(3)}"
        run_dir = self.run_dir(job_id)
        try:
            with explain_disk_full(self.home):
                try:
                    return self._insert(spec, spec_json, owner, job_id, run_dir, dedupe)
                except sqlite3.OperationalError as exc:
                    raise _database_error(exc, self.db_path) from exc
        except BaseException:
            if run_dir.exists():
                shutil.rmtree(run_dir, ignore_errors=True)
            raise

    def _insert(self, spec: dict[str, Any], spec_json: str, owner: str, job_id: str, run_dir: Path,
                dedupe: bool) -> tuple[str, bool]:
        with self._tx(immediate=True) as con:
            if dedupe:
                row = con.execute(
                    "SELECT id FROM jobs WHERE owner = ? AND kind = ? AND spec = ? AND cancel_requested = 0 "
                    "AND state IN ('queued', 'running', 'interrupted') ORDER BY seq LIMIT 1",
                    (owner, spec["kind"], spec_json),
                ).fetchone()
                if row is not None:
                    logger.info("job %s (%s) for %s is already queued or running: not submitted twice",
                                row["id"], spec["kind"], owner)
                    return row["id"], True
            from tapcore.jobs.limits import check_submit

            check_submit(self.home, owner, con)  # per-user limits: LimitError (a ValueError) names the limit
            run_dir.mkdir(parents=True)
            atomic_write_json(run_dir / "spec.json", {"id": job_id, "owner": owner, **spec})
            atomic_write_json(run_dir / "state.json", {"state": "queued", "created": iso(_now())})
            con.execute(
                "INSERT INTO jobs (id, owner, kind, spec, state, created) VALUES (?, ?, ?, ?, 'queued', ?)",
                (job_id, owner, spec["kind"], spec_json, _now()),
            )
        logger.info("submitted job %s (%s) for %s", job_id, spec["kind"], owner)
        audit.record(self.home, self.user.name if self.user is not None else owner, "submit", "job", job_id,
                     spec["kind"] + (f" for {owner}" if self.user is not None and owner != self.user.name else ""))
        slurm_cfg = _slurm_config(self.home)
        if slurm_cfg is not None:
            from tapcore.jobs import slurm

            slurm.send(self, job_id, slurm_cfg)
        return job_id, False

    def get(self, job_id: str) -> Job:
        """The job with this id; ValueError when there is none."""
        con = self._connect()
        try:
            row = con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        finally:
            con.close()
        if row is None:
            raise ValueError(f"no job with id {job_id!r}; list the jobs with `tapcore jobs`")
        if self.user is not None:
            check_read(self.user, row["owner"], self._shared(row["id"]), f"job {job_id!r}")
        return self._job(row)

    def _shared(self, job_id: str) -> bool:
        return run_access(self.run_dir(job_id))[1]

    def is_shared(self, job_id: str) -> bool:
        """Whether the job is shared with the lab (read-only for the others)."""
        self.get(job_id)
        return self._shared(job_id)

    def find(self, job_id: str) -> Job | None:
        """Like :meth:`get` but None when the id is unknown."""
        try:
            return self.get(job_id)
        except ValueError:
            return None

    def list(self, states: tuple[str, ...] | None = None, kind: str | None = None, limit: int = 500) -> list[Job]:
        """Jobs, newest first, optionally filtered by state and kind (Slurm jobs follow squeue first)."""
        self.refresh_slurm()
        filters = []
        if states:
            filters.append((f"state IN ({','.join('?' * len(states))})", list(states)))
        if kind:
            filters.append(("kind = ?", [kind]))
        sql, args = newest_first("jobs", filters, limit)
        con = self._connect()
        try:
            rows = con.execute(sql, args).fetchall()
        finally:
            con.close()
        if self.user is not None:  # the acting user's own jobs and those shared with the lab
            rows = [r for r in rows if can_read(self.user, r["owner"], r["owner"] != self.user.name and self._shared(r["id"]))]
        return [self._job(r) for r in rows]

    def refresh_slurm(self) -> list[str]:
        """Bring jobs sent to Slurm up to date with squeue (nothing to do without a [slurm] section)."""
        if _slurm_config(self.home) is None:
            return []
        from tapcore.jobs import slurm

        return slurm.refresh(self)

    # -- worker side ----------------------------------------------------------------------------
    def register_worker(self, device: str) -> str:
        worker_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        with self._tx(immediate=True) as con:
            con.execute(
                "INSERT INTO workers (id, host, pid, device, started, heartbeat) VALUES (?, ?, ?, ?, ?, ?)",
                (worker_id, socket.gethostname(), os.getpid(), device, _now(), _now()),
            )
        return worker_id

    def heartbeat(self, worker_id: str, job_id: str | None = None) -> None:
        with self._tx() as con:
            con.execute("UPDATE workers SET heartbeat = ?, job = ? WHERE id = ?", (_now(), job_id, worker_id))

    def unregister_worker(self, worker_id: str) -> None:
        with self._tx() as con:
            con.execute("DELETE FROM workers WHERE id = ?", (worker_id,))

    def workers(self) -> list[WorkerInfo]:
        con = self._connect()
        try:
            rows = con.execute("SELECT * FROM workers ORDER BY started").fetchall()
        finally:
            con.close()
        return [WorkerInfo(**dict(r)) for r in rows]

    def alive_workers(self) -> list[WorkerInfo]:
        return [w for w in self.workers() if w.alive()]

    def recover_stale(self) -> list[str]:
        """Mark running jobs whose worker is gone as ``interrupted``; forget dead workers.

        Returns the ids of the jobs marked interrupted. A job's child process that is somehow
        still alive on this machine is killed first, so a resumed job never runs twice.
        """
        alive = {w.id for w in self.alive_workers()}
        marked: list[str] = []
        with self._tx(immediate=True) as con:
            rows = con.execute("SELECT * FROM jobs WHERE state = 'running' AND COALESCE(worker, '') "
                               "NOT LIKE 'slurm:%'").fetchall()  # Slurm's jobs: tapcore.jobs.slurm.refresh
            for row in rows:
                if row["worker"] in alive:
                    continue
                _kill_group(row["pid"])
                if row["cancel_requested"]:
                    con.execute(
                        "UPDATE jobs SET state='cancelled', ended=?, pid=NULL, error=? WHERE id=?",
                        (_now(), "cancelled by the user", row["id"]),
                    )
                    continue
                con.execute(
                    "UPDATE jobs SET state='interrupted', pid=NULL, "
                    "error='its worker stopped; it resumes from its last checkpoint' WHERE id=?",
                    (row["id"],),
                )
                marked.append(row["id"])
            con.execute("DELETE FROM workers WHERE heartbeat < ?", (_now() - HEARTBEAT_STALE_S,))
            for w in con.execute("SELECT id, host, pid FROM workers").fetchall():
                if w["host"] == socket.gethostname() and not pid_alive(w["pid"]):
                    con.execute("DELETE FROM workers WHERE id = ?", (w["id"],))
        for job_id in marked:
            self._write_state(job_id, "interrupted")
            logger.warning("job %s marked interrupted (its worker is gone)", job_id)
        return marked

    def claim(self, worker_id: str) -> Job | None:
        """Atomically take the next waiting job in fair-share order; None when there is none.

        The order is :func:`tapcore.jobs.fairshare.pick` over the queued and interrupted jobs (the user
        with the fewest running jobs, then the one served least recently, FIFO within a user); users at
        their ``max_running`` limit wait. The job records the worker's device.
        """
        with self._tx(immediate=True) as con:
            from tapcore.jobs.fairshare import load_and_pick

            job_id = load_and_pick(con, self.home)
            if job_id is None:
                return None
            device = con.execute("SELECT device FROM workers WHERE id = ?", (worker_id,)).fetchone()
            con.execute(
                "UPDATE jobs SET state='running', worker=?, started=COALESCE(started, ?), ended=NULL, "
                "attempts=attempts+1, error=NULL, device=? WHERE id=?",
                (worker_id, _now(), device["device"] if device else None, job_id),
            )
            con.execute("UPDATE workers SET job=?, heartbeat=? WHERE id=?", (job_id, _now(), worker_id))
        job = self.get(job_id)
        self._write_state(job.id, "running", attempt=job.attempts, resumed=job.attempts > 1, device=job.device)
        return job

    def set_pid(self, job_id: str, pid: int | None) -> None:
        with self._tx() as con:
            con.execute("UPDATE jobs SET pid=? WHERE id=?", (pid, job_id))

    def set_progress(self, job_id: str, fraction: float) -> None:
        with self._tx() as con:
            con.execute("UPDATE jobs SET progress=? WHERE id=?", (float(min(max(fraction, 0.0), 1.0)), job_id))

    def finish(self, job_id: str, state: str, error: str | None = None, verdict: dict[str, Any] | None = None) -> None:
        """Record a final state (done / failed / cancelled), its error message, and (done jobs) the
        verdict on the result (``tapcore.verdicts``; kept in ``state.json``)."""
        if state not in FINAL_STATES:
            raise ValueError(f"final state must be one of {', '.join(FINAL_STATES)}, got {state!r}")
        with self._tx() as con:
            con.execute(
                "UPDATE jobs SET state=?, ended=?, pid=NULL, error=?, "
                "progress=CASE WHEN ?='done' THEN 1.0 ELSE progress END WHERE id=?",
                (state, _now(), error, state, job_id),
            )
        self._write_state(job_id, state, error=error, verdict=verdict)

    def requeue(self, job_id: str, reason: str) -> None:
        """Put a running job back as ``interrupted`` (its worker is stopping); it resumes later."""
        with self._tx() as con:
            con.execute(
                "UPDATE jobs SET state='interrupted', pid=NULL, error=? WHERE id=? AND state='running'",
                (reason, job_id),
            )
        self._write_state(job_id, "interrupted")

    def cancel(self, job_id: str) -> str:
        """Cancel a job: a queued/interrupted one at once, a running one by its worker (kills its group).

        Returns the job's state after the request. Finished jobs are left as they are. AccessDenied
        when the acting user is neither its owner nor an admin.
        """
        job = self.get(job_id)
        if self.user is not None:
            check_change(self.user, job.owner, self._shared(job_id), f"job {job_id!r}", "cancel")
        if job.state in FINAL_STATES:
            return job.state
        audit.record(self.home, self.user.name if self.user is not None else job.owner, "cancel", "job", job_id,
                     job.kind)
        with self._tx(immediate=True) as con:
            con.execute("UPDATE jobs SET cancel_requested=1 WHERE id=?", (job_id,))
            con.execute(
                "UPDATE jobs SET state='cancelled', ended=?, error='cancelled by the user' "
                "WHERE id=? AND state IN ('queued', 'interrupted')",
                (_now(), job_id),
            )
        job = self.get(job_id)
        if job.state == "cancelled":
            self._write_state(job_id, "cancelled", error=job.error)
        if job.worker and job.worker.startswith("slurm:"):
            from tapcore.jobs import slurm

            slurm.cancel(job)  # a running one is recorded cancelled by its runner as Slurm stops it
        return job.state

    def cancel_requested(self, job_id: str) -> bool:
        return self.get(job_id).cancel_requested

    # -- the acting user's checks (ownership: tapcore.access) -------------------------------------
    def _check_inputs(self, spec: dict[str, Any]) -> None:
        """AccessDenied when a job would read another user's private dataset or model."""
        from tapcore.workspace import Workspace

        ws = Workspace(self.home, self.user)
        params = spec.get("params") or {}
        for key in ("dataset", "val_dataset"):
            value = params.get(key)
            if isinstance(value, str) and (ws.datasets_dir / value / "meta.json").is_file():
                ws.dataset(value)
        for key in ("model", "tap_model"):
            value = params.get(key)
            if isinstance(value, str) and value.strip():
                ws.resolve_model(value)

    def set_shared(self, job_id: str, shared: bool) -> None:
        """Share a job (its log, curves, model and prediction) with the lab, read-only, or make it private."""
        job = self.get(job_id)
        if self.user is not None:
            check_change(self.user, job.owner, self._shared(job_id), f"job {job_id!r}", "share or un-share")
        write_access(job.run_dir, job.owner, bool(shared))
        audit.record(self.home, self.user.name if self.user is not None else job.owner,
                     "share" if shared else "unshare", "job", job_id, job.kind)

    def delete(self, job_id: str) -> None:
        """Remove a finished job and its run folder (its model and outputs); its owner or an admin only.

        ValueError for a job still queued or running (cancel it first).
        """
        job = self.get(job_id)
        if self.user is not None:
            check_change(self.user, job.owner, self._shared(job_id), f"job {job_id!r}", "delete")
        if job.state not in FINAL_STATES:
            raise ValueError(f"job {job_id} is {job.state}; cancel it first, then delete it")
        with self._tx(immediate=True) as con:
            con.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        shutil.rmtree(job.run_dir, ignore_errors=True)
        audit.record(self.home, self.user.name if self.user is not None else job.owner, "delete", "job", job_id,
                     job.kind)

    def _write_state(self, job_id: str, state: str, **extra: Any) -> None:
        path = self.run_dir(job_id) / "state.json"
        data: dict[str, Any] = {}
        if path.exists():
            try:
                data = read_json(path)
            except ValueError:
                data = {}
        data.update({"state": state, "updated": iso(_now())}, **{k: v for k, v in extra.items() if v is not None})
        if extra.get("error") is None:
            data.pop("error", None)
        try:
            atomic_write_json(path, data)
        except OSError as exc:  # state.json mirrors the database, which stays the truth: never stop a worker
            logger.warning("could not update %s (%s); the job queue database has the job's state", path, exc)


def _add_missing_columns(con: sqlite3.Connection) -> None:
    """Bring a queue made by an older tapcore up to date (``ALTER TABLE`` for columns it lacks)."""
    have = {r[1] for r in con.execute("PRAGMA table_info(jobs)").fetchall()}
    for name, decl in (("device", "TEXT"),):
        if name not in have:
            try:
                con.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")
            except sqlite3.OperationalError as exc:  # another process added it a moment ago
                if "duplicate column" not in str(exc):
                    raise


def _database_error(exc: sqlite3.OperationalError, db_path: Path) -> Exception:
    """A plain-words error for SQLite's full-disk and still-locked failures (others unchanged)."""
    text = str(exc).lower()
    if "disk is full" in text or "disk i/o error" in text:
        return DiskFullError(f"the disk holding the job queue {db_path} is full (or failing), so the job was not "
                             "queued; free some space and submit it again")
    if "locked" in text or "busy" in text:
        return RuntimeError(f"the job queue {db_path} stayed busy for {BUSY_TIMEOUT_S:.0f} s (another program holds "
                            "it); the job was not queued; submit it again in a moment")
    return exc


def _slurm_config(home: Path):
    """The workspace's ``[slurm]`` settings, or None (the local queue)."""
    if not (home / "tapcore.toml").is_file():
        return None
    from tapcore.jobs.slurm import load_config

    return load_config(home)


def _kill_group(pid: int | None) -> None:
    """Kill a job's process group (it was started in its own session) if it still exists here."""
    if not pid or not pid_alive(pid):
        return
    try:
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass

