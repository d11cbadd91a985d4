"""Issue 14, second half: a fair queue over all devices.

Fair share between users (known claim orders), per-user limits refused at submit, the device each job
runs on, GPU readings through a fake NVML, queue positions and estimated start / finish, and a real
supervisor with two CPU stand-in devices: two jobs at once, a killed worker restarted and its job
resumed from its checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from waiting import wait_until

from tapcore.jobs.fairshare import Waiting, claim_order, pick
from tapcore.jobs.limits import LimitError, limits_for, load_limits, set_limits
from tapcore.jobs.queue import Job, JobQueue, pid_alive
from tapcore.progress import read_metrics
from tapcore.workspace import Workspace

pytestmark = pytest.mark.usefixtures("one_thread_per_job")


def _spec(dataset: str) -> dict:
    return {"kind": "pretrain", "params": {"dataset": dataset}}


# -- fair share ------------------------------------------------------------------------------------------
def test_fair_share_user_b_first_job_starts_next_after_user_a_ten(tmp_path):
    q = JobQueue(tmp_path)
    a = [q.submit(_spec(f"a{i}"), owner="ann") for i in range(10)]
    b = q.submit(_spec("b0"), owner="bo")
    worker = q.register_worker("cpu")
    assert q.claim(worker).id == a[0]  # nobody runs anything: the oldest waiting job
    assert q.claim(worker).id == b  # ann has one running, bo none: bo's only job, not ann's second
    claimed = [q.claim(worker).id for _ in range(9)]
    assert claimed == a[1:]  # then ann's, in submission order
    assert q.claim(worker) is None


def test_fair_share_least_recently_served_user_goes_first(tmp_path):
    """One worker, nothing running: after ann's first job finished, bo (never served) is next."""
    q = JobQueue(tmp_path)
    a = [q.submit(_spec(f"a{i}"), owner="ann") for i in range(10)]
    worker = q.register_worker("cpu")
    assert q.claim(worker).id == a[0]
    b = q.submit(_spec("b0"), owner="bo")  # bo submits while ann's first job runs
    q.finish(a[0], "done")
    assert q.claim(worker).id == b
    assert q.claim(worker).id == a[1]


def test_claim_order_round_robin_and_max_running_known_answers():
    waiting = [Waiting(f"a{i}", "ann", i) for i in range(4)] + [Waiting("b0", "bo", 10), Waiting("b1", "bo", 11),
                                                                 Waiting("c0", "cy", 20)]
    assert [w.id for w in claim_order(waiting)] == ["a0", "b0", "c0", "a1", "b1", "a2", "a3"]
    # bo has 2 running: ann and cy first, until they have as many
    assert [w.id for w in claim_order(waiting, running={"bo": 2})] == ["a0", "c0", "a1", "b0", "a2", "b1", "a3"]
    # equal running counts: the user served longest ago first (cy before ann before bo)
    order = claim_order(waiting, last_start={"ann": 200.0, "bo": 300.0, "cy": 100.0})
    assert [w.id for w in order][:3] == ["c0", "a0", "b0"]
    # ann may run one job at once and already runs one: her jobs wait, the others go
    assert [w.id for w in claim_order(waiting, running={"ann": 1}, max_running={"ann": 1})] == ["b0", "c0", "b1"]
    assert pick([]) is None
    assert pick(waiting[:1], running={"ann": 3}, max_running={"ann": 3}) is None


def test_max_running_limit_leaves_a_users_jobs_waiting_in_the_queue(tmp_path):
    q = JobQueue(tmp_path)
    set_limits(tmp_path, "ann", max_running=1)
    a = [q.submit(_spec(f"a{i}"), owner="ann") for i in range(3)]
    b = q.submit(_spec("b0"), owner="bo")
    w1, w2, w3 = (q.register_worker(f"cpu:{i}") for i in range(3))
    assert q.claim(w1).id == a[0]
    assert q.claim(w2).id == b
    assert q.claim(w3) is None  # ann is at her limit; her jobs stay queued
    assert [q.get(j).state for j in a[1:]] == ["queued", "queued"]
    q.finish(a[0], "done")
    assert q.claim(w3).id == a[1]


def test_claim_records_the_workers_device(tmp_path):
    q = JobQueue(tmp_path)
    job_id = q.submit(_spec("x"), owner="ann")
    job = q.claim(q.register_worker("cuda:1"))
    assert job.device == "cuda:1" and q.get(job_id).as_row()["device"] == "cuda:1"
    assert json.loads((q.run_dir(job_id) / "state.json").read_text())["device"] == "cuda:1"


def test_a_queue_made_before_devices_were_recorded_gets_the_column(tmp_path):
    con = sqlite3.connect(tmp_path / "jobs.sqlite")
    con.executescript("""CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,
        owner TEXT NOT NULL, kind TEXT NOT NULL, spec TEXT NOT NULL, state TEXT NOT NULL,
        progress REAL NOT NULL DEFAULT 0, created REAL NOT NULL, started REAL, ended REAL, pid INTEGER,
        worker TEXT, attempts INTEGER NOT NULL DEFAULT 0, cancel_requested INTEGER NOT NULL DEFAULT 0, error TEXT);
        INSERT INTO jobs (id, owner, kind, spec, state, created)
        VALUES ('old-1', 'ann', 'pretrain', '{"kind": "pretrain", "params": {"dataset": "x"}}', 'queued', 1.0);""")
    con.commit()
    con.close()
    q = JobQueue(tmp_path)
    assert q.get("old-1").device is None
    assert q.claim(q.register_worker("cpu")).device == "cpu"


# -- limits ------------------------------------------------------------------------------------------------
def test_max_jobs_limit_refused_at_submit_with_the_limit_and_how_to_change_it(tmp_path):
    q = JobQueue(tmp_path)
    set_limits(tmp_path, "ann", max_jobs=2)
    q.submit(_spec("a0"), owner="ann")
    q.submit(_spec("a1"), owner="ann")
    runs_before = sorted(p.name for p in q.runs_dir.iterdir())
    with pytest.raises(LimitError) as err:
        q.submit(_spec("a2"), owner="ann")
    assert str(err.value) == ("job not queued: ann already has 2 job(s) queued or running, and the limit max_jobs for "
                              "ann is 2; wait for one to finish or cancel one, or ask an admin to raise it "
                              "(`tapcore limits set ann --max-jobs N`)")
    assert sorted(p.name for p in q.runs_dir.iterdir()) == runs_before  # nothing half-made
    assert len(q.list()) == 2
    q.submit(_spec("b0"), owner="bo")  # the limit is ann's alone
    assert q.submit(_spec("a1"), owner="ann") in {j.id for j in q.list()}  # a resubmit of a queued job is no new job
    q.cancel(q.list(kind="pretrain")[-1].id)  # ann cancels her oldest: room for one more
    q.submit(_spec("a2"), owner="ann")


def test_disk_limit_refused_at_submit(tmp_path):
    q = JobQueue(tmp_path)
    first = q.submit(_spec("b0"), owner="bo")
    (q.run_dir(first) / "big.bin").write_bytes(b"\0" * 3000)
    set_limits(tmp_path, None, max_disk_gb=2e-6)  # everybody: 2 kB
    with pytest.raises(LimitError, match=r"^job not queued: bo uses 3\.\d+e-06 GB of disk, and the limit max_disk_gb "
                                         r"for bo is 2e-06 GB; delete old datasets or runs, or ask an admin to raise "
                                         r"it \(`tapcore limits set bo --max-disk-gb N`\)$"):
        q.submit(_spec("b1"), owner="bo")
    q.submit(_spec("a0"), owner="ann")  # ann's runs are small
    set_limits(tmp_path, "bo", max_disk_gb=None)  # bo's own entry lifts the default
    q.submit(_spec("b1"), owner="bo")
    assert limits_for(tmp_path, "bo").max_disk_gb is None and limits_for(tmp_path, "ann").max_disk_gb == 2e-6


def test_limits_file_and_values_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"max_jobs in the limits given must be a number >= 0 or null \(no limit\), "
                                         r"got -1"):
        set_limits(tmp_path, "ann", max_jobs=-1)
    with pytest.raises(ValueError, match="max_running in the limits given must be a whole number, got 1.5"):
        set_limits(tmp_path, "ann", max_running=1.5)
    with pytest.raises(ValueError, match="unknown limit.s. gpus in the limits given; valid: max_jobs, max_running, "
                                         "max_disk_gb"):
        set_limits(tmp_path, "ann", gpus=2)
    (tmp_path / "limits.json").write_text('{"users": {"ann": {"max_jobs": "many"}}}')
    with pytest.raises(ValueError, match="max_jobs in .*limits.json user 'ann' must be a number"):
        load_limits(tmp_path)


def test_cli_limits_set_show_and_a_refused_submit(tmp_path, monkeypatch, capsys):
    from tapcore.cli import main

    home = tmp_path / "ws"
    monkeypatch.setenv("TAPCORE_HOME", str(home))
    assert main(["limits", "set", "ann", "--max-jobs", "1", "--max-disk-gb", "none"]) == 0
    assert capsys.readouterr().out.strip() == 'limits for ann: {"max_jobs": 1, "max_disk_gb": null}'
    assert main(["limits", "set", "--default", "--max-running", "2"]) == 0
    capsys.readouterr()
    assert main(["limits"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ['default: {"max_jobs": null, "max_running": 2, "max_disk_gb": null}',
                       'ann: {"max_jobs": 1, "max_running": 2, "max_disk_gb": null}']
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(_spec("x")))

    def submit_as_ann() -> int:  # the CLI acts as $TAPCORE_USER (the admin's commands run without it)
        monkeypatch.setenv("TAPCORE_USER", "ann")
        try:
            return main(["submit", str(spec)])
        finally:
            monkeypatch.delenv("TAPCORE_USER")

    assert submit_as_ann() == 0
    spec.write_text(json.dumps(_spec("y")))
    capsys.readouterr()
    assert submit_as_ann() == 2
    assert "the limit max_jobs for ann is 1" in capsys.readouterr().err
    assert main(["limits", "set", "ann"]) == 2
    assert "give at least one of --max-jobs" in capsys.readouterr().err
    assert main(["limits", "clear", "ann"]) == 0
    assert submit_as_ann() == 0


# -- GPUs ---------------------------------------------------------------------------------------------------
class _NVMLError(Exception):
    pass


def _fake_nvml(gpus: list[dict] | None, init_error: str | None = None) -> SimpleNamespace:
    """An object with the pynvml functions read_gpus uses, answering from ``gpus``."""
    calls = []

    def init():
        calls.append("init")
        if init_error:
            raise _NVMLError(init_error)

    def util(h):
        if gpus[h]["util"] is None:
            raise _NVMLError("Not Supported")
        return SimpleNamespace(gpu=gpus[h]["util"], memory=gpus[h]["mem_util"])

    return SimpleNamespace(
        NVMLError=_NVMLError, calls=calls, nvmlInit=init, nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlSystemGetDriverVersion=lambda: b"580.95.05",
        nvmlDeviceGetCount=lambda: len(gpus), nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: gpus[h]["name"],
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(used=gpus[h]["used"], total=gpus[h]["total"],
                                                          free=gpus[h]["total"] - gpus[h]["used"]),
        nvmlDeviceGetUtilizationRates=util)


def test_gpu_readings_from_a_fake_nvml():
    from tapcore.jobs.gpus import read_gpus

    gib = 1024 ** 3
    nvml = _fake_nvml([{"name": b"NVIDIA H200", "used": 35 * gib, "total": 140 * gib, "util": 87, "mem_util": 40},
                       {"name": "NVIDIA H200", "used": gib // 2, "total": 140 * gib, "util": None, "mem_util": None}])
    report = read_gpus(nvml)
    assert report.available and report.driver == "580.95.05" and report.message == report.reason == ""
    g0, g1 = report.gpus
    assert (g0.index, g0.name, g0.memory_used_mib, g0.memory_total_mib, g0.utilization_pct) == \
        (0, "NVIDIA H200", 35 * 1024.0, 140 * 1024.0, 87.0)
    assert g0.as_row() == {"gpu": "cuda:0", "name": "NVIDIA H200", "memory used (GiB)": 35.0,
                           "memory total (GiB)": 140.0, "memory used (%)": 25.0, "utilisation (%)": 87.0}
    assert (g1.memory_used_mib, g1.utilization_pct, g1.as_row()["utilisation (%)"]) == (512.0, None, None)
    assert nvml.calls == ["init", "shutdown"]


def test_no_gpu_is_a_plain_sentence_not_an_error():
    from tapcore.jobs.gpus import NO_GPU, read_gpus

    report = read_gpus(_fake_nvml([], init_error="NVML Shared Library Not Found"))
    assert not report.available
    assert (report.message, report.reason) == (NO_GPU, "no NVIDIA driver: NVML Shared Library Not Found")
    empty = read_gpus(_fake_nvml([]))
    assert (empty.message, empty.reason) == (NO_GPU, "the NVIDIA driver 580.95.05 sees none")
    real = read_gpus()  # the real bindings on this machine
    if real.available:
        assert all(g.memory_total_mib > 0 for g in real.gpus)
    else:
        assert real.message == NO_GPU and real.reason


def test_worker_devices_from_settings_and_visible_gpus():
    from tapcore.jobs.supervisor import worker_devices

    two_gpus = _fake_nvml([{"name": "A", "used": 0, "total": 1, "util": 0, "mem_util": 0}] * 2)
    assert worker_devices(environ={"TAPCORE_WORKER_DEVICES": "cpu,cpu"}) == ["cpu:0", "cpu:1"]
    assert worker_devices(environ={"TAPCORE_WORKER_DEVICES": " cuda:0, cuda:1 "}) == ["cuda:0", "cuda:1"]
    assert worker_devices("cpu", environ={"TAPCORE_WORKER_DEVICES": "cuda:0"}) == ["cpu"]
    assert worker_devices(environ={"TAPCORE_WORKER_DEVICE": "cpu"}, nvml=two_gpus) == ["cpu"]
    assert worker_devices(environ={}, nvml=two_gpus) == ["cuda:0", "cuda:1"]
    assert worker_devices(environ={"CUDA_VISIBLE_DEVICES": "2,3"}, nvml=two_gpus) == ["cuda:2", "cuda:3"]
    assert worker_devices(environ={"CUDA_VISIBLE_DEVICES": ""}, nvml=two_gpus) == ["cpu"]
    assert worker_devices(environ={}, nvml=_fake_nvml([], init_error="no driver")) == ["cpu"]
    with pytest.raises(ValueError, match="TAPCORE_WORKER_DEVICES: unknown worker device 'gpu0'"):
        worker_devices(environ={"TAPCORE_WORKER_DEVICES": "gpu0"})


def test_estimates_use_the_cpu_for_a_cpu_worker_slot(tmp_path, monkeypatch):
    from tapcore.estimate import worker_device

    monkeypatch.delenv("TAPCORE_WORKER_DEVICE", raising=False)
    monkeypatch.setenv("TAPCORE_WORKER_DEVICES", "cpu,cpu")
    assert worker_device(tmp_path) == "cpu"  # no worker yet: the first device a new one would get
    JobQueue(tmp_path).register_worker("cpu:1")
    assert worker_device(tmp_path) == "cpu"


class _DeadProc:
    """A worker process that has exited with ``rc``."""

    def __init__(self, rc: int, pid: int = 12345):
        self.rc, self.pid = rc, pid

    def poll(self) -> int:
        return self.rc


def test_supervisor_restart_delay_doubles_while_a_worker_keeps_dying(tmp_path, monkeypatch):
    from tapcore.jobs.supervisor import CRASH_LOOP_S, MAX_RESTART_DELAY_S, Supervisor

    sup = Supervisor(tmp_path, devices="cpu,cpu", restart_delay=1.0)
    assert [s.device for s in sup.slots] == ["cpu:0", "cpu:1"]
    spawned: list[str] = []

    def spawn(slot):  # the new worker dies at once with status 1
        spawned.append(slot.device)
        slot.proc, slot.started = _DeadProc(1), time.time()

    monkeypatch.setattr(sup, "_spawn", spawn)
    slot = sup.slots[0]
    slot.proc, slot.started = _DeadProc(-9), time.time() - CRASH_LOOP_S - 5  # it ran a while, then was killed
    delays = []
    for _ in range(9):
        assert sup._check(slot)  # noticed: scheduled for restart
        delays.append(round(slot.next_start - time.time()))
        slot.next_start = 0.0  # let the delay pass
        assert sup._check(slot)  # restarted
    assert delays == [1, 1, 2, 4, 8, 16, 32, 60, 60] and MAX_RESTART_DELAY_S == 60
    assert spawned == ["cpu:0"] * 9 and slot.restarts == 9 and slot.exits[:2] == [-9, 1]
    assert sup.status()["workers"][0]["restarts"] == 9 and sup.status()["workers"][1]["restarts"] == 0


# -- schedule -----------------------------------------------------------------------------------------------
def _job(job_id: str, owner: str, state: str, *, kind: str = "predict", created: float = 0.0, started=None,
         ended=None, progress: float = 0.0, device=None, spec=None) -> Job:
    return Job(id=job_id, owner=owner, kind=kind, spec=spec or {"kind": kind, "params": {}}, state=state,
               progress=progress, created=created, started=started, ended=ended, pid=None, worker=None, attempts=0,
               cancel_requested=False, error=None, device=device)


def test_schedule_positions_and_times_known_answers():
    from tapcore.jobs.schedule import Durations, plan_jobs

    done = [_job("d1", "x", "done", started=0.0, ended=50.0), _job("d2", "x", "done", started=0.0, ended=60.0),
            _job("d3", "x", "done", started=0.0, ended=100.0)]  # median 60 s
    now = 1000.0
    active = [_job("r1", "ann", "running", created=1, started=970.0, progress=0.5, device="cuda:0"),
              _job("a2", "ann", "queued", created=2), _job("a3", "ann", "queued", created=3),
              _job("b1", "bo", "queued", created=4)]
    plans = {p.job: p for p in plan_jobs(active, Durations(done), slots=2, now=now)}
    r1, b1, a2, a3 = plans["r1"], plans["b1"], plans["a2"], plans["a3"]
    assert (r1.position, r1.device, r1.start, r1.finish) == (0, "cuda:0", 970.0, 1030.0)  # half done in 30 s
    assert (b1.position, b1.start, b1.finish) == (1, 1000.0, 1060.0)  # bo first: ann already runs one
    assert (a2.position, a2.start, a2.finish) == (2, 1030.0, 1090.0)  # on the worker r1 frees
    assert (a3.position, a3.start, a3.finish) == (3, 1060.0, 1120.0)
    assert r1.as_row(now) == {"job": "r1", "queue position": "running", "est. start (UTC)": "1970-01-01 00:16:10",
                              "est. finish (UTC)": "1970-01-01 00:17:10 (in ~30 s)", "device": "cuda:0"}
    assert b1.as_row(now)["est. start (UTC)"] == "1970-01-01 00:16:40 (in ~1 s)"
    # nothing of this kind finished yet: unknown, and unknown for what waits behind it on one worker
    plans = plan_jobs(active, Durations([]), slots=1, now=now)
    assert [(p.job, p.position, p.start, p.finish) for p in plans] == [
        ("r1", 0, 970.0, 1030.0), ("b1", 1, 1030.0, None), ("a2", 2, None, None), ("a3", 3, None, None)]
    assert plans[1].basis == "no finished predict job yet to time it by"


def test_schedule_pretraining_from_the_recorded_rate():
    from tapcore.estimate import EVAL_COST
    from tapcore.jobs.schedule import Durations, plan_jobs, pretrain_pairs

    def spec(epochs: int) -> dict:
        return {"kind": "pretrain", "params": {"dataset": "d", "config": {
            "epochs": epochs, "samples_per_epoch": 64, "batch_size": 8, "val_samples": 30}}}

    work = pretrain_pairs(spec(2))
    assert work == 2 * 64 + EVAL_COST * 2 * 30  # 2 epochs x 8 steps x 8 pairs + 60 validation pairs at 1/3
    done = [_job("p1", "x", "done", kind="pretrain", started=0.0, ended=work / 4.0, spec=spec(2))]  # 4 pairs/s
    plans = plan_jobs([_job("q1", "ann", "queued", kind="pretrain", spec=spec(4))], Durations(done), slots=1,
                      now=0.0)
    assert plans[0].duration_s == pytest.approx(2 * work / 4.0)
    assert plans[0].basis.startswith(f"{2 * work:,.0f} pairs at 4.0 pairs/s recorded over 1 finished")


# -- several workers (real processes) ----------------------------------------------------------------------
def _tiny_pretrain(dataset: str, epochs: int, seed: int) -> dict:
    return {"kind": "pretrain", "params": {"dataset": dataset, "config": {
        "epochs": epochs, "samples_per_epoch": 8, "batch_size": 8, "patch": 32, "val_samples": 8, "seed": seed,
        "augment": {"enabled": False}, "model": {"base_channels": 4, "depth": 1, "features": 4, "head_channels": 4}}}}


@pytest.mark.slow  # two worker processes, two training jobs, a SIGKILL and a restart (~30 s)
def test_two_cpu_workers_run_two_jobs_at_once_and_a_killed_worker_is_restarted_and_resumes(tmp_path, monkeypatch):
    """The app's auto-start (``ensure_worker``) starts the supervisor with two CPU stand-in devices."""
    from tapcore.jobs.supervisor import read_status
    from tapcore.jobs.worker import ensure_worker

    home = tmp_path / "ws"
    rng = np.random.default_rng(0)
    Workspace(home).add_array((rng.random((6, 32, 32)) * 1000).astype(np.uint16), name="tiny", source="test",
                              dataset_id="tiny")
    q = JobQueue(home)
    epochs = 12
    ann = q.submit(_tiny_pretrain("tiny", epochs, 0), owner="ann")
    bo = q.submit(_tiny_pretrain("tiny", epochs, 1), owner="bo")
    monkeypatch.setenv("TAPCORE_WORKER_DEVICES", "cpu,cpu")
    t0 = time.time()
    sup = ensure_worker(home)
    assert sup is not None and ensure_worker(home) is None  # a second call starts nothing
    try:
        both = wait_until(lambda: (js := [q.get(ann), q.get(bo)]) and all(j.state == "running" and j.pid for j in js)
                          and js, 120, "both jobs running at once")
        assert sorted(j.device for j in both) == ["cpu:0", "cpu:1"]
        overlap_seen = time.time() - t0
        victim = q.get(ann)
        run_dir = victim.run_dir
        wait_until(lambda: any(r.get("kind") == "epoch" for r in read_metrics(run_dir / "metrics.jsonl")), 120,
                   "ann's first checkpoint")
        worker = next(w for w in q.alive_workers() if w.job == ann)
        child = q.get(ann).pid
        os.kill(worker.pid, signal.SIGKILL)  # the worker dies hard, mid-job
        wait_until(lambda: not pid_alive(child), 15, "the orphaned job process to stop")
        status = wait_until(lambda: (s := read_status(home)) and any(w["restarts"] >= 1 for w in s["workers"]) and s,
                            60, "the supervisor to restart the worker")
        restarted = next(w for w in status["workers"] if w["restarts"] >= 1)
        assert restarted["device"] == worker.device and restarted["exits"] == [-signal.SIGKILL]
        jobs = wait_until(lambda: (js := [q.get(ann), q.get(bo)]) and all(j.state == "done" for j in js) and js,
                          240, "both jobs to finish")
        elapsed = time.time() - t0
        a, b = jobs
        assert a.started < b.ended and b.started < a.ended  # the running intervals overlap
        assert (a.attempts, b.attempts) == (2, 1)
        epoch_records = [r["epoch"] for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "epoch"]
        assert epoch_records.count(1) == 1  # resumed from the checkpoint, not from scratch
        assert sorted(set(epoch_records)) == list(range(1, epochs + 1))
        log = (run_dir / "log.txt").read_text()
        resumed_from = int(log.split("resuming TAP pretraining from epoch ")[1].split()[0])
        assert resumed_from > 0 and "--- resuming job" in log
        assert json.loads((run_dir / "state.json").read_text())["state"] == "done"
        print(json.dumps({"two_cpu_workers": {"both_running_after_s": round(overlap_seen, 1),
                                              "both_done_after_s": round(elapsed, 1), "resumed_from_epoch": resumed_from,
                                              "devices": sorted(j.device for j in both)}}))
    finally:
        os.kill(sup, signal.SIGTERM)  # as the app's tests do: the supervisor stops its workers
    wait_until(lambda: not pid_alive(sup), 60, "the supervisor to stop")
    wait_until(lambda: not q.alive_workers(), 30, "its workers to stop")
    assert read_status(home) is None


# -- the Jobs page --------------------------------------------------------------------------------------------
def test_jobs_page_shows_positions_estimates_devices_and_the_gpu_line(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from tapcore.jobs.gpus import NO_GPU

    home = tmp_path / "workspace"
    monkeypatch.setenv("TAPCORE_HOME", str(home))
    monkeypatch.setattr("tapcore.jobs.worker.ensure_worker", lambda *a, **k: None)  # no background worker
    monkeypatch.setattr("tapcore.jobs.gpus._load_nvml",
                        lambda: _fake_nvml([], init_error="NVML Shared Library Not Found"))
    q = JobQueue(home)
    worker = q.register_worker("cpu:0")  # this test process stands in for a live worker
    spec = _tiny_pretrain("tiny", 2, 0)
    q.submit(spec, owner="lab")
    job = q.claim(worker)
    q.finish(job.id, "done")
    with sqlite3.connect(q.db_path) as con:  # it took 100 s
        con.execute("UPDATE jobs SET started = ?, ended = ? WHERE id = ?", (time.time() - 200, time.time() - 100, job.id))
    a1 = q.submit(_tiny_pretrain("tiny", 2, 1), owner="ann")
    a2 = q.submit(_tiny_pretrain("tiny", 2, 2), owner="ann")
    b1 = q.submit(_tiny_pretrain("tiny", 2, 3), owner="bo")
    assert q.claim(worker).id == a1
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120)
    at.switch_page("pages/jobs.py").run()
    assert not at.exception, [e.message for e in at.exception]
    frame = at.dataframe[0].value.set_index("job")
    assert list(frame.loc[[a1, b1, a2], "queue position"]) == ["running", "1", "2"]  # bo's first job before ann's 2nd
    assert frame.loc[a1, "device"] == "cpu:0" and frame.loc[job.id, "device"] == "cpu:0"
    assert frame.loc[b1, "device"] == "" and frame.loc[job.id, "queue position"] == ""
    for j in (b1, a2):  # ~100 s each, one worker: b1 after a1, a2 after b1
        assert "(in ~" in frame.loc[j, "est. start (UTC)"] and "(in ~" in frame.loc[j, "est. finish (UTC)"]
    assert frame.loc[a2, "est. finish (UTC)"].endswith("(in ~5 min)")  # 3 x 100 s from now
    captions = "\n".join(c.value for c in at.caption)
    assert f"{NO_GPU[:1].upper()}{NO_GPU[1:]}; jobs run on the CPU." in captions
