"""Slurm backend of the job queue: jobs go to the lab's cluster with ``sbatch`` instead of a local worker.

Selected by a ``[slurm]`` section in ``$TAPCORE_HOME/tapcore.toml`` (the workspace lives on the
cluster's shared file system, so the app on a login or web node, the CLI and the compute nodes see
the same queue and run folders)::

    [slurm]
    partition = "gpu"              # sbatch --partition (optional)
    account = "my-lab"             # sbatch --account (optional)
    gpus_per_job = 1               # --gpus-per-node; >1 runs pretraining and head training under torchrun (DDP)
    cpus_per_job = 8               # --cpus-per-task
    mem = "32G"                    # --mem (optional)
    time_limit = "08:00:00"        # --time
    setup = ["module load cuda/12.4", "source /shared/tapcore/.venv/bin/activate"]
    python = "python"              # the interpreter after `setup` (default: the one submitting)
    sbatch_args = ["--qos=normal"] # anything else sbatch should get

Without the section the local queue (``tapcore worker``) is used, as before.

How a job travels: :meth:`JobQueue.submit` stores the job, then :func:`send` writes
``runs/<id>/slurm.sh`` and calls ``sbatch --requeue`` with its output going to ``runs/<id>/log.txt``
(the log the app and ``tapcore jobs --log`` already show). The job row gets ``worker =
"slurm:<Slurm job id>"``, which local workers never claim. On the compute node the script runs
``python -m tapcore.jobs.slurm run RUN_DIR``: it marks the job running (one attempt more each time
Slurm starts it), runs ``tapcore.jobs.run_job`` in a child process, and records done / failed from
its ``result.json``. When Slurm stops the job (``scancel``, preemption, ``scontrol requeue``, the
time limit) the child is killed and the job is marked ``cancelled`` (when the user cancelled it) or
``interrupted``; a requeued job starts again and its task resumes from the run folder's checkpoint.

:func:`refresh` reconciles the queue with ``squeue`` (called when jobs are listed): a job that Slurm
ended without the runner recording it (killed hard, node failure, time limit) is marked failed with
Slurm's state as the reason. No accounting database (``sacct``) is needed.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from tapcore.utils import atomic_write_json, read_json

logger = logging.getLogger(__name__)

CONFIG_FILE = "tapcore.toml"
PREFIX = "slurm:"
# squeue states -> what the queue shows while Slurm holds the job
PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED",
           "PREEMPTED", "STOPPED", "RESIZING", "SIGNALING", "SPECIAL_EXIT"}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT"}
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
         "REVOKED"}
_WHY = {"TIMEOUT": "it reached the Slurm time limit (time_limit in tapcore.toml); resubmit it to continue "
                   "from its checkpoint",
        "NODE_FAIL": "its node failed", "OUT_OF_MEMORY": "it ran out of memory (raise mem in tapcore.toml)",
        "BOOT_FAIL": "its node failed to boot", "DEADLINE": "it passed its deadline",
        "CANCELLED": "Slurm cancelled it", "FAILED": "the Slurm job failed", "COMPLETED": "the Slurm job ended",
        "REVOKED": "Slurm revoked it"}


@dataclass
class SlurmConfig:
    """The ``[slurm]`` section of ``$TAPCORE_HOME/tapcore.toml`` (see the module docstring)."""

    partition: str = ""
    account: str = ""
    gpus_per_job: int = 0
    cpus_per_job: int = 0
    mem: str = ""
    time_limit: str = ""
    setup: list[str] = field(default_factory=list)
    python: str = ""
    sbatch_args: list[str] = field(default_factory=list)

    def validate(self, where: str = "[slurm]") -> None:
        for name in ("gpus_per_job", "cpus_per_job"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{where}: {name} must be a whole number >= 0, got {value!r}")
        for name in ("partition", "account", "mem", "time_limit", "python"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{where}: {name} must be a string, got {getattr(self, name)!r}")
        for name in ("setup", "sbatch_args"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f'{where}: {name} must be a list of strings, e.g. {name} = ["..."]')


def load_config(home: str | os.PathLike) -> Optional[SlurmConfig]:
    """The workspace's Slurm settings; None when ``tapcore.toml`` has no ``[slurm]`` section."""
    path = Path(home) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid TOML ({exc}); fix it or remove it") from None
    section = data.get("slurm")
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ValueError(f"{path}: [slurm] must be a table of settings")
    known = {f.name for f in fields(SlurmConfig)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"{path}: unknown [slurm] setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    cfg = SlurmConfig(**section)
    cfg.validate(f"{path} [slurm]")
    return cfg


def slurm_id(job: Any) -> Optional[str]:
    """The Slurm job id of a queue job sent to Slurm, else None."""
    worker = getattr(job, "worker", None) or ""
    return worker[len(PREFIX):] if worker.startswith(PREFIX) else None


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ValueError(f"`{name}` is not on PATH: this machine is not a Slurm login node. Run the app where "
                         f"Slurm's commands work, or remove the [slurm] section of {CONFIG_FILE} to use a local worker")
    return path


def _run(args: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


# -- the batch script -----------------------------------------------------------------------------
def sbatch_args(cfg: SlurmConfig, job_id: str, run_dir: Path) -> list[str]:
    """The ``sbatch`` options of one job."""
    args = ["--parsable", "--requeue", "--open-mode=append", f"--job-name=tapcore-{job_id}",
            f"--output={run_dir / 'log.txt'}", f"--chdir={run_dir}", "--nodes=1", "--ntasks=1"]
    if cfg.partition:
        args.append(f"--partition={cfg.partition}")
    if cfg.account:
        args.append(f"--account={cfg.account}")
    if cfg.gpus_per_job:
        args.append(f"--gpus-per-node={cfg.gpus_per_job}")
    if cfg.cpus_per_job:
        args.append(f"--cpus-per-task={cfg.cpus_per_job}")
    if cfg.mem:
        args.append(f"--mem={cfg.mem}")
    if cfg.time_limit:
        args.append(f"--time={cfg.time_limit}")
    return args + list(cfg.sbatch_args)


def batch_script(cfg: SlurmConfig, home: Path, run_dir: Path) -> str:
    """The script sbatch runs: the setup lines, then the job runner on this workspace."""
    python = cfg.python or sys.executable
    package_root = Path(__file__).resolve().parents[2]  # the tapcore checkout that submitted the job
    lines = ["#!/bin/bash", "# written by tapcore (tapcore/jobs/slurm.py); runs one job of the queue", "set -e",
             *cfg.setup,
             f"export TAPCORE_HOME={shlex.quote(str(home))}",
             f"export PYTHONPATH={shlex.quote(str(package_root))}${{PYTHONPATH:+:$PYTHONPATH}}",
             "export PYTHONUNBUFFERED=1",
             f"exec {shlex.quote(python)} -m tapcore.jobs.slurm run {shlex.quote(str(run_dir))}", ""]
    return "\n".join(lines)


def send(queue: Any, job_id: str, cfg: SlurmConfig) -> str:
    """Submit a queued job to Slurm; returns the Slurm job id. A refused job is marked failed (ValueError)."""
    try:
        sbatch = _tool("sbatch")
    except ValueError as exc:
        queue.finish(job_id, "failed", str(exc))
        raise
    run_dir = queue.run_dir(job_id)
    script = run_dir / "slurm.sh"
    script.write_text(batch_script(cfg, queue.home, run_dir), encoding="utf-8")
    script.chmod(0o755)
    try:
        proc = _run([sbatch, *sbatch_args(cfg, job_id, run_dir), str(script)], timeout=60)
    except subprocess.TimeoutExpired:
        proc = subprocess.CompletedProcess([], 1, "", "sbatch did not answer within 60 s")
    sid = proc.stdout.strip().split(";")[0].strip()
    if proc.returncode != 0 or not sid.isdigit():
        error = (f"Slurm refused the job: {proc.stderr.strip() or proc.stdout.strip() or 'sbatch failed'}; "
                 f"check the [slurm] section of {queue.home / CONFIG_FILE}")
        queue.finish(job_id, "failed", error)
        raise ValueError(error)
    with queue._tx() as con:  # the job stays queued; the worker column marks it as Slurm's
        con.execute("UPDATE jobs SET worker=? WHERE id=?", (PREFIX + sid, job_id))
    atomic_write_json(run_dir / "slurm.json", {"slurm_job_id": sid, "sbatch": sbatch_args(cfg, job_id, run_dir)})
    logger.info("job %s sent to Slurm as job %s", job_id, sid)
    return sid


def cancel(job: Any) -> None:
    """``scancel`` a job sent to Slurm (the queue has already recorded the request)."""
    sid = slurm_id(job)
    if sid is None:
        return
    proc = _run([_tool("scancel"), sid])
    if proc.returncode != 0:
        logger.warning("scancel %s: %s", sid, proc.stderr.strip())


# -- following Slurm ------------------------------------------------------------------------------
def squeue_states(ids: list[str]) -> Optional[dict[str, tuple[str, str]]]:
    """``{slurm id: (state, reason)}`` for the ids squeue still knows; None when squeue fails."""
    squeue = shutil.which("squeue")
    if squeue is None or not ids:
        return None if squeue is None else {}
    try:
        proc = _run([squeue, "-h", "-t", "all", "-o", "%i|%T|%r"])
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        logger.warning("squeue failed: %s", proc.stderr.strip())
        return None
    wanted, out = set(ids), {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[0] in wanted:
            out[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "")
    return out


def reconcile(job: Any, state: Optional[str], reason: str = "") -> Optional[tuple[str, Optional[str]]]:
    """The queue state a Slurm job should have given its squeue ``state`` (None: unknown to squeue).

    Returns ``(state, error)`` when the queue row must change, None when it is right as it is. The
    runner records running / done / failed / interrupted itself; this only covers what it could not
    (it was killed hard, or Slurm never started it).
    """
    if job.state in ("done", "failed", "cancelled"):
        return None
    if state in RUNNING:
        return None  # the runner marks it running when it starts
    if state in PENDING:
        if job.state == "running":  # requeued, and its runner died before saying so
            return "interrupted", "Slurm requeued it; it resumes from its last checkpoint"
        return None
    # ended, or gone from squeue
    result_path = job.run_dir / "result.json"
    result: dict[str, Any] = {}
    if result_path.is_file():
        try:
            result = read_json(result_path)
        except ValueError:
            result = {}
    if job.cancel_requested:
        return "cancelled", "cancelled by the user"
    if result.get("ok"):
        return "done", None
    if result.get("error"):
        return "failed", result["error"]
    why = _WHY.get(state or "", "Slurm no longer lists it")
    extra = f" ({reason})" if reason and reason != "None" else ""
    return "failed", f"{why}{extra} before it recorded a result; see the log"


_last_refresh: dict[str, float] = {}
REFRESH_EVERY_S = 3.0  # the app lists jobs every few seconds; squeue need not answer each time


def refresh(queue: Any, force: bool = False) -> list[str]:
    """Bring the queue's Slurm jobs up to date with squeue; returns the ids whose state changed.

    At most once per :data:`REFRESH_EVERY_S` per workspace unless ``force`` (the runners on the nodes
    record every normal transition themselves; this catches the jobs Slurm ended without them).
    """
    key = str(queue.db_path)
    if not force and time.time() - _last_refresh.get(key, 0.0) < REFRESH_EVERY_S:
        return []
    _last_refresh[key] = time.time()
    con = queue._connect()
    try:
        rows = con.execute("SELECT id FROM jobs WHERE worker LIKE ? AND state IN ('queued', 'running', "
                           "'interrupted')", (PREFIX + "%",)).fetchall()
    finally:
        con.close()
    jobs = [queue.get(r["id"]) for r in rows]
    if not jobs:
        return []
    states = squeue_states([slurm_id(j) for j in jobs])
    if states is None:
        return []  # Slurm does not answer: leave the rows as they are
    changed = []
    for job in jobs:
        state, reason = states.get(slurm_id(job), (None, ""))
        update = reconcile(job, state, reason)
        if update is None:
            continue
        new, error = update
        if new == "interrupted":
            queue.requeue(job.id, error or "")
        else:
            queue.finish(job.id, new, error)
        changed.append(job.id)
    return changed


# -- on the compute node --------------------------------------------------------------------------
DDP_KINDS = ("pretrain", "train_head")  # job kinds that run data-parallel over the GPUs of one job


def job_command(spec: dict[str, Any], run_dir: Path) -> list[str]:
    """The job process: ``run_job``, under torchrun with one process per GPU for multi-GPU pretraining
    and head training."""
    gpus = _allocated_gpus()
    if spec.get("kind") in DDP_KINDS and gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
                "-m", "tapcore.jobs.run_job", str(run_dir)]
    return [sys.executable, "-m", "tapcore.jobs.run_job", str(run_dir)]


def _allocated_gpus() -> int:
    for name in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        value = os.environ.get(name, "").split(":")[-1]
        if value.isdigit():
            return int(value)
    return 0


def run(run_dir: Path) -> int:
    """Run one job as a Slurm batch job (see the module docstring); returns the exit status."""
    from tapcore.jobs.queue import JobQueue
    from tapcore.progress import fraction_done, read_metrics

    run_dir = Path(run_dir).resolve()
    queue = JobQueue(run_dir.parent.parent)
    job_id = run_dir.name
    job = queue.get(job_id)
    sid = os.environ.get("SLURM_JOB_ID", slurm_id(job) or "?")
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    if job.state in ("done", "failed", "cancelled") or job.cancel_requested:
        print(f"--- job {job_id} is {job.state}; nothing to run ---", flush=True)
        return 0
    with queue._tx(immediate=True) as con:
        con.execute("UPDATE jobs SET state='running', worker=?, started=COALESCE(started, ?), ended=NULL, "
                    "attempts=attempts+1, error=NULL, pid=? WHERE id=?",
                    (PREFIX + sid, time.time(), os.getpid(), job_id))
    job = queue.get(job_id)
    queue._write_state(job_id, "running", attempt=job.attempts, resumed=job.attempts > 1, slurm_job_id=sid)
    note = "resuming" if job.attempts > 1 else "starting"
    print(f"--- {note} job {job_id} (attempt {job.attempts}) as Slurm job {sid} (restart {restarts}) on "
          f"{os.uname().nodename} ---", flush=True)
    result_path = run_dir / "result.json"
    if result_path.exists():
        result_path.unlink()
    env = dict(os.environ)
    env["TAPCORE_DEVICE"] = "cuda" if _allocated_gpus() else "cpu"
    proc = subprocess.Popen(job_command(job.spec, run_dir), env=env, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    stopped: list[int] = []

    def on_signal(signum, frame):  # noqa: ARG001 - Slurm is stopping the job (scancel, requeue, time limit)
        stopped.append(signum)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    last = 0.0
    while True:
        try:
            rc = proc.wait(timeout=1.0)
            break
        except subprocess.TimeoutExpired:
            pass
        if time.time() - last > 2.0:
            last = time.time()
            records = read_metrics(run_dir / "metrics.jsonl")
            if records:
                queue.set_progress(job_id, fraction_done(records[-1]))
    if stopped:
        if queue.cancel_requested(job_id):
            queue.finish(job_id, "cancelled", "cancelled by the user")
        else:
            queue.requeue(job_id, "Slurm stopped it (preempted, requeued or out of time); it resumes from its "
                                  "last checkpoint when Slurm starts it again")
        print(f"--- job {job_id} stopped by Slurm (signal {stopped[0]}) ---", flush=True)
        return 143
    result = read_json(result_path) if result_path.exists() else {}
    if rc == 0 and result.get("ok"):
        queue.finish(job_id, "done")
        return 0
    error = result.get("error") or f"the job process exited with code {rc}; see the log"
    queue.finish(job_id, "failed", error)
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "run":
        print("usage: python -m tapcore.jobs.slurm run RUN_DIR", file=sys.stderr)
        return 2
    return run(Path(argv[1]))


if __name__ == "__main__":
    sys.exit(main())
