"""Job queue and worker: FIFO, cancel, failures, killed workers, resume, persistence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tapcore.jobs.queue import JobQueue, pid_alive
from tapcore.jobs.tasks import validate_spec
from tapcore.jobs.worker import Worker, wait_for
from tapcore.progress import read_metrics
from tapcore.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]


def _dataset(home: Path, frames: int = 6, size: int = 32) -> str:
    rng = np.random.default_rng(0)
    movie = (rng.random((frames, size, size)) * 1000).astype(np.uint16)
    return Workspace(home).add_array(movie, name="tiny", source="test", dataset_id="tiny").id


# -- queue only ---------------------------------------------------------------------------------
def test_spec_validation_messages():
    with pytest.raises(ValueError, match="unknown job kind 'train'; valid kinds: calibrate, compare, predict, pretrain"):
        validate_spec({"kind": "train", "params": {}})
    with pytest.raises(ValueError, match="needs dataset"):
        validate_spec({"kind": "pretrain", "params": {}})
    with pytest.raises(ValueError, match="unknown pretrain param"):
        validate_spec({"kind": "pretrain", "params": {"dataset": "a", "epochs": 3}})
    with pytest.raises(ValueError, match="JSON object"):
        validate_spec(["pretrain"])


def test_fifo_claims_never_duplicate(tmp_path):
    q = JobQueue(tmp_path)
    ids = [q.submit({"kind": "pretrain", "params": {"dataset": f"d{i}"}}, owner="ann") for i in range(12)]
    workers = [JobQueue(tmp_path).register_worker("cpu") for _ in range(4)]
    claimed: dict[str, list[str]] = {w: [] for w in workers}

    def grab(worker_id: str) -> None:
        mine = JobQueue(tmp_path)  # own connections, like separate processes
        while (job := mine.claim(worker_id)) is not None:
            claimed[worker_id].append(job.id)

    threads = [threading.Thread(target=grab, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [j for lst in claimed.values() for j in lst]
    assert sorted(everything) == sorted(ids) and len(everything) == len(set(everything))
    for lst in claimed.values():  # each worker got its jobs in submission order
        assert lst == sorted(lst, key=ids.index)
    assert {j.state for j in q.list()} == {"running"}
    assert (q.run_dir(ids[0]) / "spec.json").is_file()
    assert json.loads((q.run_dir(ids[0]) / "spec.json").read_text())["owner"] == "ann"


def test_cancel_queued_job_is_never_run(tmp_path):
    q = JobQueue(tmp_path)
    a = q.submit({"kind": "pretrain", "params": {"dataset": "x"}})
    b = q.submit({"kind": "pretrain", "params": {"dataset": "y"}})
    assert q.cancel(a) == "cancelled"
    w = q.register_worker("cpu")
    assert q.claim(w).id == b
    assert q.claim(w) is None
    assert q.get(a).state == "cancelled"
    assert json.loads((q.run_dir(a) / "state.json").read_text())["state"] == "cancelled"
    assert q.cancel(a) == "cancelled"  # cancelling again changes nothing


def test_dead_worker_leaves_job_interrupted_then_it_is_claimed_again(tmp_path):
    q = JobQueue(tmp_path)
    job_id = q.submit({"kind": "pretrain", "params": {"dataset": "x"}})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    con_worker = q.register_worker("cpu")
    # pretend the finished process above was the worker that claimed the job
    import sqlite3

    with sqlite3.connect(q.db_path) as con:
        con.execute("UPDATE workers SET pid = ? WHERE id = ?", (dead.pid, con_worker))
    assert q.claim(con_worker).id == job_id
    assert q.recover_stale() == [job_id]
    job = q.get(job_id)
    assert job.state == "interrupted" and "resumes" in job.error
    assert q.workers() == []  # the dead worker is forgotten
    fresh = q.register_worker("cpu")
    again = q.claim(fresh)
    assert again.id == job_id and again.attempts == 2 and again.state == "running"
    assert q.recover_stale() == []  # a live worker's job is left alone


def test_unknown_dataset_fails_with_message_and_log(tmp_path):
    q = JobQueue(tmp_path)
    job_id = q.submit({"kind": "pretrain", "params": {"dataset": "nope"}})
    assert Worker(tmp_path, device="cpu", poll=0.1).run(once=True) == 1
    job = q.get(job_id)
    assert job.state == "failed"
    assert job.error.startswith("no dataset 'nope'")
    log = (q.run_dir(job_id) / "log.txt").read_text()
    assert "Traceback" in log and "no dataset 'nope'" in log
    assert json.loads((q.run_dir(job_id) / "state.json").read_text())["error"] == job.error


def test_cli_submit_and_jobs(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"kind": "pretrain", "params": {"dataset": "nope"}}))
    env = {**os.environ, "TAPCORE_HOME": str(tmp_path / "ws")}
    out = subprocess.run([sys.executable, "-m", "tapcore.cli", "submit", str(spec), "--owner", "bo"],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    listed = subprocess.run([sys.executable, "-m", "tapcore.cli", "jobs", "--json"],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    rows = json.loads(listed.stdout)
    assert [(r["job"], r["owner"], r["state"]) for r in rows] == [(job_id, "bo", "queued")]
    cancel = subprocess.run([sys.executable, "-m", "tapcore.cli", "jobs", "--cancel", job_id],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    assert cancel.stdout.strip() == f"{job_id}: cancelled"
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "fly"}')
    out = subprocess.run([sys.executable, "-m", "tapcore.cli", "submit", str(bad)],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 2 and "unknown job kind 'fly'" in out.stderr
