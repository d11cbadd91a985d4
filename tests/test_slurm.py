"""Slurm backend of the job queue (tapcore.jobs.slurm).

The first tests need no Slurm (configuration, the batch script, the squeue-state mapping, the
queue's hooks). The ``slurm``-marked tests run jobs on a real single-node cluster started by
``scripts/slurm_local.sh`` (``.ci/run`` does it): submit, state, cancel, a failed job's error and
resume after ``scontrol requeue``; they skip with the reason when no cluster answers.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tapcore.jobs import slurm
from tapcore.jobs.queue import JobQueue
from tapcore.jobs.worker import ensure_worker, wait_for
from tapcore.progress import read_metrics
from tapcore.workspace import Workspace
from waiting import wait_until



def _wait(cond, timeout: float, what: str, poll: float = 0.2):
    return wait_until(cond, timeout, what, poll)

pytestmark = pytest.mark.usefixtures("one_thread_per_job")

TOML = '''
[slurm]
partition = "debug"
cpus_per_job = 1
time_limit = "00:10:00"
setup = ["echo setup line ran"]
'''


def _tiny_pretrain(epochs: int, steps: int = 1) -> dict:
    return {"epochs": epochs, "samples_per_epoch": 8 * steps, "batch_size": 8, "patch": 32, "val_samples": 8,
            "augment": {"enabled": False}, "log_every": 1,
            "model": {"base_channels": 4, "depth": 1, "features": 4, "head_channels": 4}}


def _home(tmp_path: Path, toml: str = TOML) -> Path:
    home = tmp_path / "ws"
    movie = (np.random.default_rng(0).random((6, 32, 32)) * 1000).astype(np.uint16)
    Workspace(home).add_array(movie, name="tiny", source="test", dataset_id="tiny")
    (home / "tapcore.toml").write_text(toml)
    return home




def _log(run_dir: Path) -> str:
    log = run_dir / "log.txt"
    return log.read_text()[-3000:] if log.is_file() else "(no log)"


# -- without Slurm -----------------------------------------------------------------------------
def test_config_section_is_read_and_checked(tmp_path):
    assert slurm.load_config(tmp_path) is None
    (tmp_path / "tapcore.toml").write_text("[other]\nx = 1\n")
    assert slurm.load_config(tmp_path) is None  # no [slurm] section: the local queue
    (tmp_path / "tapcore.toml").write_text(TOML)
    cfg = slurm.load_config(tmp_path)
    assert (cfg.partition, cfg.cpus_per_job, cfg.time_limit, cfg.setup) == ("debug", 1, "00:10:00",
                                                                            ["echo setup line ran"])
    (tmp_path / "tapcore.toml").write_text("[slurm]\ngpus = 2\n")
    with pytest.raises(ValueError, match="unknown \\[slurm\\] setting.*gpus_per_job"):
        slurm.load_config(tmp_path)
    (tmp_path / "tapcore.toml").write_text("[slurm]\ngpus_per_job = -1\n")
    with pytest.raises(ValueError, match="gpus_per_job must be a whole number"):
        slurm.load_config(tmp_path)
    (tmp_path / "tapcore.toml").write_text("[slurm\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        slurm.load_config(tmp_path)


def test_sbatch_options_and_batch_script(tmp_path):
    cfg = slurm.SlurmConfig(partition="gpu", account="lab", gpus_per_job=2, cpus_per_job=8, mem="32G",
                            time_limit="08:00:00", setup=["module load cuda"], python="/opt/venv/bin/python",
                            sbatch_args=["--qos=long"])
    run_dir = tmp_path / "runs" / "j1"
    args = slurm.sbatch_args(cfg, "j1", run_dir)
    for expected in ("--requeue", "--partition=gpu", "--account=lab", "--gpus-per-node=2", "--cpus-per-task=8",
                     "--mem=32G", "--time=08:00:00", "--qos=long", f"--output={run_dir / 'log.txt'}",
                     "--open-mode=append"):
        assert expected in args, expected
    script = slurm.batch_script(cfg, tmp_path, run_dir)
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash" and "module load cuda" in lines
    assert lines.index("module load cuda") < lines.index(f"export TAPCORE_HOME={tmp_path}")
    assert f"exec /opt/venv/bin/python -m tapcore.jobs.slurm run {run_dir}" in lines
    # multi-GPU pretraining and head training run under torchrun, one process per GPU; other kinds as one process
    env = {"SLURM_GPUS_ON_NODE": "2"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        cmd = slurm.job_command({"kind": "pretrain"}, run_dir)
        assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
        assert slurm.job_command({"kind": "train_head"}, run_dir)[1:5] == cmd[1:5]
        assert slurm.job_command({"kind": "predict"}, run_dir)[1:3] == ["-m", "tapcore.jobs.run_job"]


def test_squeue_states_map_onto_the_queue(tmp_path):
    def job(state, cancel=False):
        return SimpleNamespace(state=state, run_dir=tmp_path, cancel_requested=cancel)

    assert slurm.reconcile(job("queued"), "PENDING") is None
    assert slurm.reconcile(job("running"), "RUNNING") is None
    assert slurm.reconcile(job("running"), "PENDING")[0] == "interrupted"  # requeued, runner killed hard
    assert slurm.reconcile(job("done"), None) is None
    state, error = slurm.reconcile(job("running"), "TIMEOUT")
    assert state == "failed" and "time limit" in error
    assert slurm.reconcile(job("running", cancel=True), "CANCELLED") == ("cancelled", "cancelled by the user")
    (tmp_path / "result.json").write_text('{"ok": false, "error": "no dataset with id \'x\'"}')
    assert slurm.reconcile(job("running"), None) == ("failed", "no dataset with id 'x'")
    (tmp_path / "result.json").write_text('{"ok": true, "outputs": {}}')
    assert slurm.reconcile(job("running"), "COMPLETED") == ("done", None)


def test_without_sbatch_a_submit_fails_clearly_and_no_local_worker_takes_slurm_jobs(tmp_path, monkeypatch):
    home = _home(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    q = JobQueue(home)
    with pytest.raises(ValueError, match="`sbatch` is not on PATH"):
        q.submit({"kind": "pretrain", "params": {"dataset": "tiny", "config": _tiny_pretrain(1)}})
    (job,) = q.list()
    assert job.state == "failed" and "sbatch" in job.error
    assert ensure_worker(home) is None  # the app starts no local worker for a Slurm workspace
    # a job row marked as Slurm's is never claimed by a local worker
    (home / "tapcore.toml").unlink()
    q2 = JobQueue(home)
    job_id = q2.submit({"kind": "pretrain", "params": {"dataset": "tiny", "config": _tiny_pretrain(1)}})
    with q2._tx() as con:
        con.execute("UPDATE jobs SET worker='slurm:42' WHERE id=?", (job_id,))
    assert q2.claim(q2.register_worker("cpu")) is None


# -- a real cluster ----------------------------------------------------------------------------
def _cluster_reason() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "Slurm is not installed (sinfo/sbatch not on PATH); .ci/run installs it and runs scripts/slurm_local.sh"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s"
    states = out.stdout.split()
    if out.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mixed", "allocated") for s in states):
        return f"no Slurm cluster answers (sinfo: {(out.stderr or out.stdout).strip()[:200]}); run scripts/slurm_local.sh"
    return None


@pytest.fixture(scope="module")
def cluster():
    reason = _cluster_reason()  # asked once: sinfo takes ~9 s to give up on a controller that is down
    if reason:
        pytest.skip(reason)


@pytest.mark.slurm
def test_slurm_runs_a_job_and_reports_a_failed_one(tmp_path, cluster):
    home = _home(tmp_path)
    q = JobQueue(home)
    ok = q.submit({"kind": "pretrain", "params": {"dataset": "tiny", "config": _tiny_pretrain(2)}})
    bad = q.submit({"kind": "pretrain", "params": {"dataset": "missing", "config": _tiny_pretrain(1)}})
    sid = slurm.slurm_id(q.get(ok))
    assert sid and sid.isdigit() and q.get(ok).state in ("queued", "running")
    assert (q.run_dir(ok) / "slurm.json").is_file()
    job = wait_for(q, ok, timeout=240)
    assert job.state == "done", (job.state, job.error, (job.run_dir / "log.txt").read_text()[-2000:])
    assert job.attempts == 1 and job.progress == 1.0
    assert (job.run_dir / "model" / "weights.pt").is_file() or any((job.run_dir / "model").iterdir())
    log = (job.run_dir / "log.txt").read_text()
    assert "setup line ran" in log and f"as Slurm job {sid}" in log  # Slurm's output file is the job log
    failed = wait_for(q, bad, timeout=240)
    assert failed.state == "failed" and "missing" in failed.error, failed.error


@pytest.mark.slurm
def test_slurm_refusing_a_job_is_reported(tmp_path, cluster):
    home = _home(tmp_path, TOML.replace('partition = "debug"', 'partition = "no-such-partition"'))
    q = JobQueue(home)
    with pytest.raises(ValueError, match="Slurm refused the job: .*(?i:partition)"):
        q.submit({"kind": "pretrain", "params": {"dataset": "tiny", "config": _tiny_pretrain(1)}})
    (job,) = q.list()
    assert job.state == "failed" and "tapcore.toml" in job.error


@pytest.mark.slurm
def test_slurm_cancel_stops_a_running_job(tmp_path, cluster):
    home = _home(tmp_path)
    q = JobQueue(home)
    job_id = q.submit({"kind": "pretrain", "params": {"dataset": "tiny", "config": _tiny_pretrain(500)}})
    _wait(lambda: q.get(job_id).state == "running", 120, "the job to start")
    _wait(lambda: (job_id and read_metrics(q.run_dir(job_id) / "metrics.jsonl")), 120, "the first step")
    q.cancel(job_id)
    job = wait_for(q, job_id, timeout=60)
    assert job.state == "cancelled" and job.error == "cancelled by the user"
    sid = slurm.slurm_id(job)
    _wait(lambda: slurm.squeue_states([sid]).get(sid, ("gone",))[0] in ("CANCELLED", "gone"), 30,
          "Slurm to record the cancellation")
    epochs = [r for r in read_metrics(job.run_dir / "metrics.jsonl") if r.get("kind") == "epoch"]
    assert len(epochs) < 500


@pytest.mark.slurm
def test_slurm_requeue_resumes_from_the_checkpoint(tmp_path, cluster):
    home = _home(tmp_path)
    q = JobQueue(home)
    epochs = 40
    job_id = q.submit({"kind": "pretrain", "params": {"dataset": "tiny", "config": _tiny_pretrain(epochs, 2)}})
    run_dir = q.run_dir(job_id)
    def first_checkpoint() -> bool:
        job = q.get(job_id)
        assert job.state not in ("failed", "cancelled", "done"), (job.state, job.error, _log(run_dir))
        return (run_dir / "model" / "checkpoint" / "last.pt").is_file()

    _wait(first_checkpoint, 180, "the first checkpoint", 0.05)
    sid = slurm.slurm_id(q.get(job_id))
    subprocess.run(["scontrol", "requeue", sid], check=True, capture_output=True)
    t_requeue = time.time()
    _wait(lambda: q.get(job_id).state == "interrupted", 60, "the job to be marked interrupted")
    done_before = max(r["epoch"] for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "epoch")
    assert done_before < epochs, "the job finished before it was requeued; make it longer"
    # Slurm holds a requeued job for ~2 minutes before it may start again; release it once it is pending,
    # and not within the second of the requeue: slurmd refuses a credential made in the same second as
    # the revocation of the old one ("Killing non-startable batch JobId=N: Job credential revoked")
    def restarted() -> bool:
        state = slurm.squeue_states([sid]).get(sid, ("", ""))[0]
        if state == "PENDING" and time.time() - t_requeue > 2.5:
            subprocess.run(["scontrol", "update", f"jobid={sid}", "StartTime=now"], capture_output=True)
        return state == "RUNNING" or q.get(job_id).state != "interrupted"

    t0 = time.time()
    _wait(restarted, 180, "Slurm to start the requeued job again", 0.5)
    print(f"requeued job restarted after {time.time() - t0:.1f} s")
    job = wait_for(q, job_id, timeout=240)
    assert job.state == "done" and job.attempts == 2, (job.state, job.error)
    log = (run_dir / "log.txt").read_text()
    assert "--- resuming job" in log and "restart 1" in log and "resuming TAP pretraining from epoch" in log
    epoch_records = [r["epoch"] for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "epoch"]
    assert epoch_records.count(1) == 1  # resumed from the checkpoint, not restarted from scratch
    assert sorted(set(epoch_records)) == list(range(1, epochs + 1))
