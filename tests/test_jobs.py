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
from waiting import wait_until as _wait

from tapcore.jobs.queue import JobQueue, pid_alive
from tapcore.jobs.tasks import validate_spec
from tapcore.jobs.worker import Worker, wait_for
from tapcore.progress import read_metrics
from tapcore.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread_per_job")


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


def test_cli_submit_and_jobs(tmp_path, monkeypatch, capsys):
    from tapcore.cli import main

    monkeypatch.setenv("TAPCORE_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("TAPCORE_USER", "bo")  # the acting user of the CLI (no accounts: the box's own admin)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"kind": "pretrain", "params": {"dataset": "nope"}}))
    assert main(["submit", str(spec)]) == 0
    job_id = capsys.readouterr().out.strip()
    assert main(["jobs", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["job"], r["owner"], r["state"]) for r in rows] == [(job_id, "bo", "queued")]
    assert main(["jobs", "--cancel", job_id]) == 0
    assert capsys.readouterr().out.strip() == f"{job_id}: cancelled"
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "fly"}')
    assert main(["submit", str(bad)]) == 2
    assert "unknown job kind 'fly'" in capsys.readouterr().err


# -- real jobs (tiny pretraining runs in their own processes) -------------------------------------
def _tiny_pretrain(epochs: int) -> dict:
    """Pretraining small enough for a CPU test: a 4-channel one-level U-Net, one step per epoch."""
    return {"epochs": epochs, "samples_per_epoch": 8, "batch_size": 8, "patch": 32, "val_samples": 8,
            "augment": {"enabled": False},
            "model": {"base_channels": 4, "depth": 1, "features": 4, "head_channels": 4}}


def _pretrain_spec(dataset: str, epochs: int) -> dict:
    return {"kind": "pretrain", "params": {"dataset": dataset, "config": _tiny_pretrain(epochs)}}




def _start_worker(home: Path) -> subprocess.Popen:
    env = {**os.environ, "TAPCORE_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "tapcore.cli", "worker", "--device", "cpu", "--poll", "0.1"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


@pytest.mark.slow  # worker subprocesses run two training jobs
def test_two_jobs_finish_in_order_and_survive_a_restart(tmp_path):
    home = tmp_path / "ws"
    ds = _dataset(home)
    q = JobQueue(home)
    first = q.submit(_pretrain_spec(ds, 1), owner="ann")
    second = q.submit(_pretrain_spec(ds, 1), owner="bo")
    assert Worker(home, device="cpu", poll=0.05).run(once=True) == 2
    fresh = JobQueue(home)  # a restarted app sees everything that happened
    a, b = fresh.get(first), fresh.get(second)
    assert (a.state, b.state) == ("done", "done")
    assert a.started <= a.ended <= b.started <= b.ended  # FIFO, one after the other
    assert a.progress == 1.0 and a.error is None
    for job in (a, b):
        assert (job.run_dir / "model" / "config.json").is_file()
        records = read_metrics(job.run_dir / "metrics.jsonl")
        assert records[-1]["kind"] == "done" and any(r.get("train_loss") is not None for r in records)
        state = json.loads((job.run_dir / "state.json").read_text())
        result = json.loads((job.run_dir / "result.json").read_text())
        assert state["state"] == "done"
        assert (result["ok"], result["outputs"]) == (True, {"model": "model"})
        # the verdict on the model (tapcore.verdicts) is stored with the result and the state
        from tapcore.verdicts import bundle_verdicts

        verdicts = bundle_verdicts(job.run_dir / "model")
        assert result["verdicts"] == [v.to_dict() for v in verdicts] and verdicts[0].subject == "TAP features"
        assert result["verdict"] == state["verdict"] == verdicts[0].to_dict()
    refs = [m.ref for m in Workspace(home).list_models(kind="tap")]
    assert f"run:{first}" in refs and f"run:{second}" in refs


@pytest.mark.slow  # a worker subprocess runs a job
def test_cancel_running_job_kills_its_process_group(tmp_path):
    home = tmp_path / "ws"
    ds = _dataset(home)
    q = JobQueue(home)
    job_id = q.submit(_pretrain_spec(ds, 500))
    worker = _start_worker(home)
    try:
        pid = _wait(lambda: q.get(job_id).pid, 60, "the job to start")
        assert q.cancel(job_id) == "running"  # the worker stops it
        job = _wait(lambda: (j := q.get(job_id)).state == "cancelled" and j, 30, "the cancel")
        assert job.error == "cancelled by the user"
        _wait(lambda: not pid_alive(pid), 10, "the job process to end")
        assert worker.poll() is None  # the worker itself keeps running
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)


@pytest.mark.slow  # kills a worker mid-training, resumes
def test_killed_worker_leaves_job_interrupted_and_a_new_worker_resumes_it(tmp_path):
    home = tmp_path / "ws"
    ds = _dataset(home)
    q = JobQueue(home)
    epochs = 8
    job_id = q.submit(_pretrain_spec(ds, epochs))
    run_dir = q.run_dir(job_id)
    worker = _start_worker(home)
    try:
        _wait(lambda: (run_dir / "model" / "checkpoint" / "last.pt").is_file()
              and any(r.get("kind") == "epoch" for r in read_metrics(run_dir / "metrics.jsonl")),
              120, "the first checkpoint")
        child = q.get(job_id).pid
        os.kill(worker.pid, signal.SIGKILL)  # the worker dies hard, mid-job
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    _wait(lambda: not pid_alive(child), 10, "the orphaned job process to stop")
    assert q.get(job_id).state == "running"  # nobody has noticed yet
    assert q.recover_stale() == [job_id]
    assert q.get(job_id).state == "interrupted"
    done_before = max(r["epoch"] for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "epoch")
    assert done_before < epochs, "the job finished before the worker was killed; make it longer"

    assert Worker(home, device="cpu", poll=0.05).run(once=True) == 1
    job = q.get(job_id)
    assert job.state == "done" and job.attempts == 2
    epoch_records = [r["epoch"] for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "epoch"]
    assert epoch_records.count(1) == 1  # resumed from the checkpoint, not restarted from scratch
    assert sorted(set(epoch_records)) == list(range(1, epochs + 1))
    log = (run_dir / "log.txt").read_text()
    assert "--- resuming job" in log


def test_child_env_pins_the_device():
    from tapcore.jobs.worker import child_env, validate_device

    assert child_env("cuda:1")["CUDA_VISIBLE_DEVICES"] == "1" and child_env("cuda:1")["TAPCORE_DEVICE"] == "cuda"
    assert child_env("cpu")["CUDA_VISIBLE_DEVICES"] == "" and child_env("cpu")["TAPCORE_DEVICE"] == "cpu"
    assert child_env("auto")["TAPCORE_DEVICE"] == "auto"
    with pytest.raises(ValueError, match="unknown worker device 'gpu0'"):
        validate_device("gpu0")
