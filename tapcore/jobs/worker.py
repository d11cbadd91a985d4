"""The job worker: claims queued jobs and runs each in its own fresh subprocess.

One worker per GPU (``tapcore worker --device cuda:0``; ``tapcore workers`` starts and supervises one
per GPU, :mod:`tapcore.jobs.supervisor`) or one for the CPU. Each job runs as
``python -m tapcore.jobs.run_job RUN_DIR`` in its own process group (a clean CUDA context per job;
cancel = kill the group), with stdout and stderr appended to ``runs/<id>/log.txt``. The worker
writes a heartbeat while it waits and while a job runs; a worker that dies leaves its job
``interrupted`` (seen by the next worker through the dead pid or the stale heartbeat), and the next
worker resumes it from its last checkpoint.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tapcore.jobs.queue import Job, JobQueue
from tapcore.progress import fraction_done, read_metrics
from tapcore.utils import disk_full_message, is_disk_full, read_json

logger = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 2.0
_PR_SET_PDEATHSIG = 1


def child_env(device: str) -> dict[str, str]:
    """Environment of a job process pinned to ``device`` (``cpu``, ``cpu:N``, ``cuda``, ``cuda:N`` or ``auto``)."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if device == "cpu" or device.startswith("cpu:"):
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["TAPCORE_DEVICE"] = "cpu"
    elif device.startswith("cuda:"):
        env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
        env["TAPCORE_DEVICE"] = "cuda"
    else:
        env["TAPCORE_DEVICE"] = device
    return env


def _die_with_parent() -> None:
    """Runs in the job process before exec: ask Linux to kill it when the worker dies."""
    os.setsid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # not Linux: run_job's parent watchdog covers this


def validate_device(device: str) -> str:
    """Check a worker device name: ``auto``, ``cpu``, ``cpu:N``, ``cuda`` or ``cuda:N``.

    ``cpu:N`` is CPU worker slot N: several workers on the CPU (stand-ins for GPUs in tests, or a CPU-only
    box that runs small jobs side by side); each records its own slot as the job's device.
    """
    if device in ("auto", "cpu", "cuda"):
        return device
    if device.startswith(("cuda:", "cpu:")) and device.split(":", 1)[1].isdigit():
        return device
    raise ValueError(f"unknown worker device {device!r}; use 'auto', 'cpu', 'cpu:N' (CPU slot N), 'cuda' or "
                     "'cuda:N' (N = GPU index)")


class Worker:
    """A worker bound to one device, working through the queue in ``home``."""

    def __init__(self, home: str | os.PathLike, device: str = "auto", poll: float = 1.0):
        self.queue = JobQueue(home)
        self.device = validate_device(device)
        self.poll = max(float(poll), 0.05)
        self.worker_id: str | None = None
        self._stop = False
        self._proc: subprocess.Popen | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        logger.warning("worker got signal %d: stopping (a running job becomes 'interrupted')", signum)
        self._stop = True

    def run(self, once: bool = False) -> int:
        """Work through the queue. ``once``: stop when the queue is empty. Returns jobs run."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.worker_id = self.queue.register_worker(self.device)
        logger.info("worker %s on %s watching %s", self.worker_id, self.device, self.queue.home)
        count = 0
        try:
            while not self._stop:
                self.queue.recover_stale()
                self.queue.heartbeat(self.worker_id)
                job = self.queue.claim(self.worker_id)
                if job is None:
                    if once:
                        break
                    time.sleep(self.poll)
                    continue
                self.run_job(job)
                count += 1
        finally:
            self.queue.unregister_worker(self.worker_id)
        return count

    # -- one job --------------------------------------------------------------------------------
    def run_job(self, job: Job) -> str:
        """Run one claimed job to its end; returns its final state."""
        run_dir = job.run_dir
        result_path = run_dir / "result.json"
        if result_path.exists():
            result_path.unlink()
        log_path = run_dir / "log.txt"
        try:
            proc = self._start(job, run_dir, log_path)
        except OSError as exc:  # e.g. the disk is full: the job cannot even start its log
            error = disk_full_message(exc, run_dir) if is_disk_full(exc) else f"the job could not start: {exc}"
            self.queue.finish(job.id, "failed", error)
            logger.warning("job %s failed to start: %s", job.id, error)
            return "failed"
        self._proc = proc
        self.queue.set_pid(job.id, proc.pid)
        logger.info("job %s (%s) started as pid %d", job.id, job.kind, proc.pid)
        return self._watch(job, proc, run_dir, result_path)

    def _start(self, job: Job, run_dir: Path, log_path: Path) -> subprocess.Popen:
        with open(log_path, "a", encoding="utf-8") as log:
            note = "resuming" if job.attempts > 1 else "starting"
            log.write(f"--- {note} job {job.id} (attempt {job.attempts}) on {self.device} ---\n")
            log.flush()
            env = child_env(self.device)
            env["TAPCORE_WORKER_PID"] = str(os.getpid())
            proc = subprocess.Popen(
                [sys.executable, "-m", "tapcore.jobs.run_job", str(run_dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=_die_with_parent,
            )
        return proc

    def _watch(self, job: Job, proc: subprocess.Popen, run_dir: Path, result_path: Path) -> str:
        cancelled = False
        last_beat = 0.0
        while True:
            try:
                rc = proc.wait(timeout=min(self.poll, 0.5))
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.time()
            if now - last_beat >= HEARTBEAT_EVERY_S:
                last_beat = now
                self.queue.heartbeat(self.worker_id, job.id)
                records = read_metrics(run_dir / "metrics.jsonl")
                if records:
                    self.queue.set_progress(job.id, fraction_done(records[-1]))
            if self.queue.cancel_requested(job.id):
                cancelled = True
                kill_group(proc.pid)
            if self._stop:
                kill_group(proc.pid)
                proc.wait()
                self.queue.requeue(job.id, "its worker was stopped; it resumes from its last checkpoint")
                self._proc = None
                return "interrupted"
        self._proc = None
        if cancelled:
            self.queue.finish(job.id, "cancelled", "cancelled by the user")
            return "cancelled"
        try:
            result = read_json(result_path) if result_path.exists() else {}
        except ValueError as exc:  # a result.json cut short: the job is not trusted to be done
            result = {"ok": False, "error": str(exc)}
        if rc == 0 and result.get("ok"):
            missing = [name for name, rel in (result.get("outputs") or {}).items() if not (run_dir / rel).exists()]
            if not missing:
                self.queue.finish(job.id, "done", verdict=result.get("verdict"))
                logger.info("job %s done", job.id)
                return "done"
            result = {"ok": False, "error": f"the job reported success but its output(s) {', '.join(missing)} are "
                                            "missing from its run folder; run it again"}
        error = result.get("error")
        if not error:
            if rc < 0:
                error = f"the job process was stopped by signal {-rc}"
                if -rc == signal.SIGKILL:
                    error += " (often: the machine ran out of memory)"
            else:
                error = f"the job process exited with code {rc}"
            error += "; see the log"
        self.queue.finish(job.id, "failed", error)
        logger.warning("job %s failed: %s", job.id, error)
        return "failed"


def kill_group(pid: int) -> None:
    """Kill the process group led by ``pid`` (a job process and everything it started)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def ensure_worker(home: str | os.PathLike, device: str | None = None) -> int | None:
    """Start the worker supervisor (``tapcore workers``: one worker per GPU) for ``home`` unless workers
    are alive; returns its pid (or None).

    Used by the app so that ``streamlit run app.py`` alone is a working install. ``device`` (one device
    or a comma-separated list) overrides ``$TAPCORE_WORKER_DEVICES`` / ``$TAPCORE_WORKER_DEVICE`` and the
    visible GPUs (:func:`tapcore.jobs.supervisor.worker_devices`). Nothing starts when the workspace's
    ``tapcore.toml`` has a ``[slurm]`` section.
    """
    from tapcore.jobs.supervisor import ensure_supervisor

    return ensure_supervisor(home, device)


def wait_for(queue: JobQueue, job_id: str, timeout: float = 600.0, poll: float = 0.2) -> Job:
    """Block until a job reaches a final state (or ``timeout`` seconds pass); returns the job."""
    deadline = time.time() + timeout
    last_refresh = 0.0
    while True:
        if time.time() - last_refresh >= 2.0:  # Slurm jobs: follow squeue (runners record the rest)
            last_refresh = time.time()
            queue.refresh_slurm()
        job = queue.get(job_id)
        if job.state in ("done", "failed", "cancelled") or time.time() > deadline:
            return job
        time.sleep(poll)


__all__ = ["Worker", "child_env", "ensure_worker", "kill_group", "validate_device", "wait_for"]
