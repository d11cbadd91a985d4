"""One worker per device, started and kept alive: ``tapcore workers``.

The supervisor starts one ``tapcore worker --device D`` process per device and restarts any that dies
(after ``restart_delay`` seconds, doubling up to a minute while a worker keeps dying within
:data:`CRASH_LOOP_S` of its start). A restarted worker finds the dead worker's job (``recover_stale``
marks it ``interrupted``) and, like any worker, resumes it from its last checkpoint.

Devices (:func:`worker_devices`), first match wins:

1. ``devices`` given (``tapcore workers --devices cuda:0,cuda:1``);
2. ``$TAPCORE_WORKER_DEVICES``, comma-separated, e.g. ``cuda:0,cuda:1`` or ``cpu,cpu`` (two CPU slots,
   recorded as ``cpu:0`` and ``cpu:1``: stand-ins for two GPUs in tests);
3. ``$TAPCORE_WORKER_DEVICE`` (one worker, the single-worker setting of earlier versions) unless ``auto``;
4. every visible GPU: the indices in ``$CUDA_VISIBLE_DEVICES`` when set, else all that NVML sees
   (:mod:`tapcore.jobs.gpus`);
5. one CPU worker when there is no GPU.

Each worker runs each job with ``CUDA_VISIBLE_DEVICES`` set to its own GPU, so a job sees exactly one.
The workers are children of the supervisor and die with it (Linux ``PR_SET_PDEATHSIG``); on SIGTERM or
Ctrl-C the supervisor stops them, and their running jobs become ``interrupted`` (resumed by the next
worker). ``$TAPCORE_HOME/workers.json`` tells the app which workers run where and how often they were
restarted.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from tapcore.jobs.queue import JobQueue, pid_alive
from tapcore.utils import atomic_write_json, read_json

logger = logging.getLogger(__name__)

__all__ = ["Supervisor", "worker_devices", "visible_gpus", "ensure_supervisor", "read_status", "CRASH_LOOP_S"]

#: a worker that dies sooner than this after its start counts as crash-looping (its restart waits longer)
CRASH_LOOP_S = 30.0
MAX_RESTART_DELAY_S = 60.0
STATUS_FILE = "workers.json"
SPAWN_FILE = "worker.spawn"
_PR_SET_PDEATHSIG = 1


def visible_gpus(environ: Mapping[str, str] | None = None, nvml=None) -> list[int]:
    """Indices of the GPUs workers may use: ``$CUDA_VISIBLE_DEVICES`` (numeric entries) when set,
    else every GPU NVML reports (none without an NVIDIA driver)."""
    env = os.environ if environ is None else environ
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is not None:
        entries = [e.strip() for e in raw.split(",") if e.strip()]
        if not entries or entries[0] == "-1":
            return []
        bad = [e for e in entries if not e.isdigit()]
        if bad:
            raise ValueError(f"CUDA_VISIBLE_DEVICES={raw!r}: tapcore workers need GPU indices (e.g. 0,1), not "
                             f"{', '.join(bad)}; or list the devices in TAPCORE_WORKER_DEVICES")
        return [int(e) for e in entries]
    from tapcore.jobs.gpus import read_gpus

    return [g.index for g in read_gpus(nvml).gpus]


def worker_devices(devices: Sequence[str] | str | None = None, environ: Mapping[str, str] | None = None,
                   nvml=None) -> list[str]:
    """The device of each worker to run (see the module docstring for where it comes from).

    Repeated ``cpu`` entries become numbered CPU slots (``cpu,cpu`` -> ``cpu:0, cpu:1``) so each
    worker, and each job it runs, records its own slot.
    """
    from tapcore.jobs.worker import validate_device

    env = os.environ if environ is None else environ
    if isinstance(devices, str):
        devices = devices.split(",")
    where = "--devices"
    if not devices:
        raw = env.get("TAPCORE_WORKER_DEVICES", "").strip()
        single = env.get("TAPCORE_WORKER_DEVICE", "").strip()
        if raw:
            devices, where = raw.split(","), "TAPCORE_WORKER_DEVICES"
        elif single and single != "auto":
            devices, where = [single], "TAPCORE_WORKER_DEVICE"
        else:
            return [f"cuda:{i}" for i in visible_gpus(env, nvml)] or ["cpu"]
    entries = [d.strip() for d in devices if d.strip()]
    if not entries:
        raise ValueError(f"{where} lists no device; give e.g. cuda:0,cuda:1 or cpu,cpu")
    try:
        entries = [validate_device(d) for d in entries]
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if entries.count("cpu") > 1:
        n = iter(range(len(entries)))
        entries = [f"cpu:{next(n)}" if d == "cpu" else d for d in entries]
    return entries


def _die_with_supervisor() -> None:
    """Runs in a worker before exec: Linux sends it SIGTERM when the supervisor dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


@dataclass
class Slot:
    """One device and the worker process serving it."""

    device: str
    proc: subprocess.Popen | None = None
    started: float = 0.0
    restarts: int = 0
    fast_deaths: int = 0
    next_start: float = 0.0
    exits: list[int] = field(default_factory=list)


class Supervisor:
    """Keeps one worker per device alive for the workspace ``home``.

    Args:
        home: the workspace (``$TAPCORE_HOME``).
        devices: one worker per entry (default: :func:`worker_devices`).
        poll: seconds between checks of the workers.
        worker_poll: each worker's queue poll interval (seconds).
        restart_delay: seconds before a dead worker is restarted (doubles while it crash-loops).
    """

    def __init__(self, home: str | os.PathLike, devices: Sequence[str] | str | None = None, poll: float = 1.0,
                 worker_poll: float = 1.0, restart_delay: float = 1.0):
        self.queue = JobQueue(home)
        self.home = self.queue.home
        self.slots = [Slot(d) for d in worker_devices(devices)]
        self.poll = max(float(poll), 0.05)
        self.worker_poll = max(float(worker_poll), 0.05)
        self.restart_delay = max(float(restart_delay), 0.0)
        self._stop = False
        self.logs = self.home / "workers"

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        logger.info("supervisor got signal %d: stopping its workers", signum)
        self._stop = True

    def _spawn(self, slot: Slot) -> None:
        self.logs.mkdir(exist_ok=True)
        log_path = self.logs / f"{slot.device.replace(':', '')}.log"
        with open(log_path, "a", encoding="utf-8") as log:
            slot.proc = subprocess.Popen(
                [sys.executable, "-m", "tapcore.cli", "worker", "--device", slot.device,
                 "--poll", str(self.worker_poll)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "TAPCORE_HOME": str(self.home)}, preexec_fn=_die_with_supervisor,
            )
        slot.started = time.time()
        logger.info("worker for %s started (pid %d, log %s)", slot.device, slot.proc.pid, log_path)

    def _check(self, slot: Slot) -> bool:
        """Restart the slot's worker when it has died (after its delay). Returns whether anything changed."""
        now = time.time()
        if slot.proc is not None:
            rc = slot.proc.poll()
            if rc is None:
                return False
            slot.exits.append(rc)
            lived = now - slot.started
            slot.fast_deaths = slot.fast_deaths + 1 if lived < CRASH_LOOP_S else 0
            delay = min(self.restart_delay * (2 ** max(slot.fast_deaths - 1, 0)), MAX_RESTART_DELAY_S)
            logger.warning("worker for %s (pid %d) exited with status %s after %.0f s; restarting it in %.1f s",
                           slot.device, slot.proc.pid, rc, lived, delay)
            slot.proc = None
            slot.next_start = now + delay
            return True
        if now >= slot.next_start:
            slot.restarts += 1
            self._spawn(slot)
            return True
        return False

    def status(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "updated": time.time(),
                "workers": [{"device": s.device, "pid": s.proc.pid if s.proc else None, "restarts": s.restarts,
                             "exits": s.exits[-5:]} for s in self.slots]}

    def _write_status(self) -> None:
        try:
            atomic_write_json(self.home / STATUS_FILE, self.status())
        except OSError as exc:
            logger.warning("could not write %s (%s)", self.home / STATUS_FILE, exc)

    def run(self) -> None:
        """Start the workers and keep them running until SIGTERM / SIGINT (then stop them)."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        logger.info("supervising %d worker(s) on %s for %s", len(self.slots), ", ".join(s.device for s in self.slots),
                    self.home)
        for slot in self.slots:
            self._spawn(slot)
        self._write_status()
        try:
            while not self._stop:
                if not self.home.is_dir():  # the workspace was deleted: nothing left to work for
                    logger.error("the workspace %s is gone: stopping the workers", self.home)
                    break
                if any([self._check(s) for s in self.slots]):
                    self._write_status()
                time.sleep(self.poll)
        finally:
            self.stop_workers()

    def stop_workers(self, timeout: float = 30.0) -> None:
        """SIGTERM every worker (their jobs become ``interrupted``), SIGKILL those still alive after ``timeout``."""
        procs = [s.proc for s in self.slots if s.proc is not None and s.proc.poll() is None]
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + timeout
        for p in procs:
            try:
                p.wait(timeout=max(deadline - time.time(), 0.1))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for s in self.slots:
            s.proc = None
        try:
            (self.home / STATUS_FILE).unlink()
        except FileNotFoundError:
            pass


def read_status(home: str | os.PathLike) -> dict | None:
    """The running supervisor's ``workers.json`` (None when there is none or its process is gone)."""
    path = Path(home) / STATUS_FILE
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except ValueError:
        return None
    if data.get("host") == socket.gethostname() and not pid_alive(int(data.get("pid") or 0)):
        return None
    return data


def _is_supervisor(pid: int) -> bool:
    """Whether ``pid`` is a live ``tapcore workers`` process (not a recycled pid)."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: trust the pid
    return b"workers" in cmdline and any(b"tapcore" in part for part in cmdline)


def ensure_supervisor(home: str | os.PathLike, devices: Sequence[str] | str | None = None) -> int | None:
    """Start ``tapcore workers`` for ``home`` unless workers are alive; returns its pid (or None).

    Used by the app (:func:`tapcore.jobs.worker.ensure_worker`) so that ``streamlit run app.py`` alone
    runs one worker per GPU. A lock file keeps two browser sessions from starting two supervisors; a
    supervisor that is alive (even while it restarts its workers) is not started twice. With a
    ``[slurm]`` section in the workspace's ``tapcore.toml`` nothing is started (jobs go to Slurm).
    """
    queue = JobQueue(home)
    if queue.alive_workers():
        return None
    from tapcore.jobs.queue import _slurm_config

    if _slurm_config(queue.home) is not None:
        return None
    device_list = worker_devices(devices)  # checked here: a bad setting is reported to the caller
    lock_path = queue.home / "worker.lock"
    with open(lock_path, "a+", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if queue.alive_workers():
                return None
            spawn_file = queue.home / SPAWN_FILE
            if spawn_file.exists():
                try:
                    pid = int(spawn_file.read_text().split()[0])
                except (ValueError, IndexError):
                    pid = 0
                if _is_supervisor(pid):
                    return None  # starting up, or restarting its workers
            with open(queue.home / "worker.log", "a", encoding="utf-8") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "tapcore.cli", "workers", "--devices", ",".join(device_list)],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env={**os.environ, "TAPCORE_HOME": str(queue.home)}, start_new_session=True,
                )
            spawn_file.write_text(f"{proc.pid}\n")
            logger.info("started the worker supervisor (pid %d) on %s", proc.pid, ", ".join(device_list))
            return proc.pid
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
