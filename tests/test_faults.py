"""Fault injection (issue 13): a full disk, a killed worker, a busy database, corrupt files, two tabs.

Every test name says the fault it injects; each asserts "nothing lost" by looking at the files and the
queue afterwards: the previous state is intact, no partial or temporary file is left, and a job is
never reported done without its files. ``FAULTS`` lists them (counted in docs/results.md).

How the faults are made:

- **disk full**: :class:`DiskFull` wraps ``open`` so that writes into one folder fail with a real
  ``OSError(ENOSPC)`` after writing part of their data, at the chosen file, and the disk stays full
  afterwards (every later write there fails too) until the block ends: the same errors the kernel
  gives when a disk fills up.
- **killed worker**: a worker process (``tapcore worker``) whose job process stalls half-way through
  writing the chosen file (a ``sitecustomize`` hook on its ``PYTHONPATH``) is killed with SIGKILL;
  its job process dies with it (PDEATHSIG). A fresh worker then takes the job over.
"""

from __future__ import annotations

import builtins
import errno
import io as pyio
import functools
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
import tifffile

from tapcore.jobs.queue import JobQueue, pid_alive
from tapcore.jobs.worker import Worker, ensure_worker
from tapcore.utils import DiskFullError
from tapcore.workspace import Workspace
from waiting import wait_until

_wait = functools.partial(wait_until, poll=0.1)

ROOT = Path(__file__).resolve().parents[1]

FAULTS = [
    "disk full while an upload streams to disk",
    "disk full while an upload's movie.tif is written",
    "disk full while a TAP checkpoint is written",
    "disk full while a model bundle is saved",
    "disk full while predictions are written",
    "disk full while a job is submitted",
    "disk full while the worker records a job's state",
    "worker killed before it claims the job",
    "worker killed while its job writes a checkpoint",
    "worker killed while its job writes the model bundle",
    "worker killed while its job writes predictions",
    "job process reports success without its output files",
    "app restarted while a job runs",
    "many concurrent submits on SQLite (4 processes x 15)",
    "two tabs submitting the same job",
    "truncated bundle weights",
    "bundle weights replaced by a pickle payload",
    "truncated checkpoint on resume",
]

pytestmark = pytest.mark.usefixtures("one_thread_per_job")


def test_faults_table(capsys):
    print(json.dumps({"faults_tried": len(FAULTS)}))
    assert len(FAULTS) == len(set(FAULTS))


# -- helpers ------------------------------------------------------------------------------------------
class _FullFile:
    """A real file whose writes fail with ENOSPC once its :class:`DiskFull` has no room left."""

    def __init__(self, fh, disk: "DiskFull", name: str):
        self._fh, self._disk, self._name = fh, disk, name

    def write(self, data):
        if self._disk.should_fail(self._name, len(data)):
            part = data[: len(data) // 2]
            if part:
                self._fh.write(part)  # a partial write, as a real full disk leaves behind
                self._fh.flush()
            raise OSError(errno.ENOSPC, "No space left on device", self._name)
        return self._fh.write(data)

    def __getattr__(self, attr):
        return getattr(self._fh, attr)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()
        return False

    def __iter__(self):
        return iter(self._fh)


class DiskFull:
    """Writes under ``folder`` fail with ENOSPC from the ``skip + 1``-th file whose name contains ``at``.

    After that the disk stays full: every later write under ``folder`` fails too. Use it as a
    context manager; ``tripped`` tells whether the fault happened.
    """

    def __init__(self, folder: Path, at: str, skip: int = 0):
        self.folder, self.at, self.skip = str(Path(folder).resolve()), at, skip
        self.full = False
        self.tripped = False
        self._real_open = builtins.open

    def should_fail(self, name: str, n: int) -> bool:
        if n == 0:
            return False
        if not self.full and self.at in Path(name).name:
            if self.skip > 0:
                self.skip -= 1
                return False
            self.full = True
        if self.full:
            self.tripped = True
        return self.full

    def _open(self, file, mode="r", *args, **kwargs):
        fh = self._real_open(file, mode, *args, **kwargs)
        path = os.fspath(file) if isinstance(file, (str, os.PathLike)) else None
        if path is None or not any(c in mode for c in "wax+"):
            return fh
        if not os.path.abspath(path).startswith(self.folder):
            return fh
        return _FullFile(fh, self, path)

    def __enter__(self):
        import tifffile as tf

        self._saved = (builtins.open, pyio.open, tf.FileHandle.write_array)
        builtins.open = self._open
        pyio.open = self._open

        def write_array(handle, data, dtype=None):  # route tifffile's ndarray.tofile through write()
            pos = handle._fh.tell()
            handle._fh.write(np.ascontiguousarray(data, dtype).tobytes())
            return handle._fh.tell() - pos

        tf.FileHandle.write_array = write_array
        return self

    def __exit__(self, *exc):
        import tifffile as tf

        builtins.open, pyio.open, tf.FileHandle.write_array = self._saved
        return False


def _all_files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes), to compare before and after a fault."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _temporaries(folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.name.startswith(".") and any(k in p.name for k in (".tmp", ".part-", ".old-", ".staging", ".upload-"))]


def _movie(t=6, size=48, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((t, size, size)) * 1000 + 10).astype(np.uint16)


def _tiff(array) -> bytes:
    buf = pyio.BytesIO()
    tifffile.imwrite(buf, array, photometric="minisblack")
    return buf.getvalue()


TINY_TAP = {"patch": 16, "batch_size": 4, "samples_per_epoch": 8, "val_samples": 8, "val_batch_size": 8,
            "log_every": 1, "model": {"base_channels": 4, "depth": 1, "features": 4, "head_channels": 4}}


def _pretrain_spec(dataset: str, epochs: int = 2) -> dict:
    return {"kind": "pretrain", "params": {"dataset": dataset, "config": {**TINY_TAP, "epochs": epochs}}}


# -- disk full ----------------------------------------------------------------------------------------
@pytest.mark.slow  # streams a large upload
def test_disk_full_while_an_upload_streams_to_disk(tmp_path):
    ws = Workspace(tmp_path / "ws")
    kept = ws.save_upload(pyio.BytesIO(_tiff(_movie(seed=1))), name="kept.tif")
    before = _all_files(ws.root)
    with DiskFull(ws.root, at="upload-movie") as disk, pytest.raises(DiskFullError) as err:
        ws.save_upload(pyio.BytesIO(_tiff(_movie(seed=2))), name="new.tif")
    assert disk.tripped
    assert str(err.value).startswith(f"the disk holding {ws.root} is full (no space left on the device) while "
                                     "writing upload-movie.tif (")
    assert str(err.value).endswith("MB free now); free some space (e.g. delete old runs or datasets) and try again; "
                                   "files saved before are unchanged")
    assert _all_files(ws.root) == before and _temporaries(ws.root) == []
    assert [d.id for d in ws.list_datasets()] == [kept.id]


def test_disk_full_while_an_uploads_movie_tif_is_written(tmp_path):
    ws = Workspace(tmp_path / "ws")
    kept = ws.save_upload(pyio.BytesIO(_tiff(_movie(seed=1))), name="kept.tif")
    before = _all_files(ws.root)
    with DiskFull(ws.root, at="movie.tif") as disk, pytest.raises(DiskFullError, match="while writing "):
        ws.save_upload(pyio.BytesIO(_tiff(_movie(seed=2))), name="new.tif")
    assert disk.tripped
    assert _all_files(ws.root) == before and _temporaries(ws.root) == []
    np.testing.assert_array_equal(ws.load_movie(kept.id), _movie(seed=1))


def test_disk_full_while_a_tap_checkpoint_is_written(tmp_path, one_torch_thread):
    from tapcore.config import config_from_dict
    from tapcore.jobs.run_job import error_message
    from tapcore.tap.train import CHECKPOINT, PretrainConfig, load_checkpoint, pretrain

    out = tmp_path / "tap"
    cfg = config_from_dict(PretrainConfig, {**TINY_TAP, "epochs": 2, "device": "cpu"})
    with DiskFull(tmp_path, at="last.pt", skip=1) as disk, pytest.raises(OSError) as err:
        pretrain(_movie(t=8), cfg, out)  # epoch 1's checkpoint is written, epoch 2's hits the full disk
    assert disk.tripped and err.value.errno == errno.ENOSPC
    ckpt = load_checkpoint(out / CHECKPOINT)  # the previous checkpoint is intact
    assert ckpt["epoch"] == 1
    assert _temporaries(tmp_path) == [] and sorted(p.name for p in (out / "checkpoint").iterdir()) == ["last.pt"]
    assert not (out / "weights.pt").exists()  # no bundle claims to be finished
    assert error_message(err.value, tmp_path).startswith(f"the disk holding {tmp_path} is full (no space left on "
                                                         "the device) while writing .last.pt.")
    # with space again, the run resumes from that checkpoint and finishes
    result = pretrain(_movie(t=8), cfg, out, resume=True)
    assert [h["epoch"] for h in result.history] == [1, 2]


def test_disk_full_while_a_model_bundle_is_saved(tmp_path):
    import torch

    from tapcore.bundle import load_bundle, save_bundle

    path = tmp_path / "model"
    save_bundle(path, kind="tap", config={"model": {}}, state_dict={"w": torch.ones(3)})
    (path / "checkpoint").mkdir()
    (path / "checkpoint" / "last.pt").write_bytes(b"run state")
    before = _all_files(tmp_path)
    with DiskFull(tmp_path, at="weights.pt") as disk, pytest.raises(OSError) as err:
        save_bundle(path, kind="tap", config={"model": {}}, state_dict={"w": torch.zeros(1000)})
    assert disk.tripped and err.value.errno == errno.ENOSPC
    assert _all_files(tmp_path) == before and _temporaries(tmp_path) == []
    assert torch.equal(load_bundle(path).state_dict["w"], torch.ones(3))


def test_disk_full_while_predictions_are_written(tmp_path):
    import pandas as pd

    from tapcore.predict import EVENT_COLUMNS, PER_FRAME_COLUMNS, Prediction, write_prediction
    from tapcore.utils import atomic_dir

    def prediction(p: float) -> Prediction:
        events = pd.DataFrame([[0, 1, 5.0, 6.0, p, "event", "m"]], columns=EVENT_COLUMNS)
        per_frame = pd.DataFrame([[0, 1, 1, p, p / 2]], columns=PER_FRAME_COLUMNS)
        return Prediction(np.full((1, 8, 8), p, np.float32), events, per_frame, {"model": "m"})

    target = tmp_path / "run" / "prediction"
    with atomic_dir(target) as tmp:
        write_prediction(prediction(0.25), tmp)
    before = _all_files(tmp_path)
    for at in ("events.csv", "heatmaps.tif", "prediction.json"):
        with DiskFull(tmp_path, at=at) as disk, pytest.raises(OSError) as err:
            with atomic_dir(target) as tmp:  # exactly what the predict job does
                write_prediction(prediction(0.75), tmp)
        assert disk.tripped and err.value.errno == errno.ENOSPC, at
        assert _all_files(tmp_path) == before and _temporaries(tmp_path) == [], at


def test_disk_full_while_a_job_is_submitted(tmp_path):
    q = JobQueue(tmp_path)
    with DiskFull(tmp_path, at="spec.json") as disk, pytest.raises(DiskFullError, match="while writing .spec.json."):
        q.submit(_pretrain_spec("demo"))
    assert disk.tripped
    assert q.list() == [] and list(q.runs_dir.iterdir()) == []  # neither a row nor a folder


def test_disk_full_while_the_worker_records_a_jobs_state(tmp_path):
    q = JobQueue(tmp_path)
    job_id = q.submit(_pretrain_spec("demo"))
    worker = q.register_worker("cpu")
    assert q.claim(worker).id == job_id
    with DiskFull(tmp_path, at="state.json") as disk:
        q.finish(job_id, "failed", "the disk is full")  # must not raise: the database is the truth
    assert disk.tripped
    assert q.get(job_id).state == "failed" and _temporaries(tmp_path) == []


# -- killed workers -----------------------------------------------------------------------------------
_STALL_HOOK = '''
import builtins, io, os, time
_real_open = builtins.open
_at, _mark = os.environ["TAPCORE_TEST_STALL_AT"], os.environ["TAPCORE_TEST_STALL_MARK"]

class _Stall:
    def __init__(self, fh):
        self._fh = fh
    def write(self, data):
        self._fh.write(data[: len(data) // 2])
        self._fh.flush()
        _real_open(_mark, "w").close()
        while True:
            time.sleep(1)
    def __getattr__(self, a):
        return getattr(self._fh, a)
    def __enter__(self):
        return self
    def __exit__(self, *e):
        self._fh.close()

def _open(file, mode="r", *a, **k):
    fh = _real_open(file, mode, *a, **k)
    if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wa+") and _at in os.path.basename(os.fspath(file)):
        return _Stall(fh)
    return fh

builtins.open = _open
io.open = _open
'''


def _worker_that_stalls(home: Path, tmp_path: Path, at: str) -> tuple[subprocess.Popen, Path]:
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(_STALL_HOOK)
    mark = tmp_path / f"stalled-{at}"
    env = {**os.environ, "TAPCORE_HOME": str(home), "TAPCORE_TEST_STALL_AT": at, "TAPCORE_TEST_STALL_MARK": str(mark),
           "PYTHONPATH": os.pathsep.join([str(hook), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "tapcore.cli", "worker", "--device", "cpu", "--poll", "0.1"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    return proc, mark




def _kill_worker_when_stalled(q: JobQueue, job_id: str, worker: subprocess.Popen, mark: Path) -> None:
    try:
        _wait(mark.exists, 180, f"the job to stall at {mark.name}")
        child = q.get(job_id).pid
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
    _wait(lambda: not pid_alive(child), 10, "the job process to die with its worker")


def _resume_and_check(home: Path, job_id: str, partial: str) -> None:
    """A fresh worker takes the interrupted job over; afterwards nothing is half-written."""
    q = JobQueue(home)
    run_dir = q.run_dir(job_id)
    assert q.get(job_id).state == "running"  # the dead worker could not say anything
    assert any(partial in name for name in _temporaries(run_dir)), _temporaries(run_dir)  # a half-written file
    assert Worker(home, device="cpu", poll=0.05).run(once=True) == 1
    job = q.get(job_id)
    assert (job.state, job.attempts) == ("done", 2), job.error
    assert _temporaries(run_dir) == []
    assert "removed " in (run_dir / "log.txt").read_text()  # the leftover was cleaned when the job restarted
    result = json.loads((run_dir / "result.json").read_text())
    for rel in result["outputs"].values():
        assert (run_dir / rel).exists()


def _pretrain_job(home: Path, epochs: int = 2) -> str:
    ws = Workspace(home)
    ws.add_array(_movie(t=8), name="tiny", source="test", dataset_id="tiny")
    return JobQueue(home).submit(_pretrain_spec("tiny", epochs))


def _check_tap_run(home: Path, job_id: str, epochs: int) -> None:
    from tapcore.bundle import load_bundle
    from tapcore.progress import read_metrics
    from tapcore.tap.train import CHECKPOINT, load_checkpoint

    model = JobQueue(home).run_dir(job_id) / "model"
    assert load_bundle(model, kind="tap").manifest["bundle_id"].startswith("tap-")
    assert load_checkpoint(model / CHECKPOINT)["epoch"] == epochs
    epoch_records = [r["epoch"] for r in read_metrics(model / "metrics.jsonl") if r.get("kind") == "epoch"]
    assert sorted(set(epoch_records)) == list(range(1, epochs + 1))


def test_worker_killed_before_it_claims_the_job(tmp_path):
    home = tmp_path / "ws"
    job_id = _pretrain_job(home, epochs=1)
    worker, _ = _worker_that_stalls(home, tmp_path, "never-written")
    os.kill(worker.pid, signal.SIGKILL)  # long before it has imported enough to claim anything
    worker.wait(timeout=10)
    q = JobQueue(home)
    assert (q.get(job_id).state, q.get(job_id).attempts) == ("queued", 0)
    assert q.recover_stale() == []  # nothing to recover: the job was never taken
    assert sorted(p.name for p in q.run_dir(job_id).iterdir()) == ["spec.json", "state.json"]
    fresh = q.register_worker("cpu")
    job = q.claim(fresh)  # the next worker gets it, as the first attempt
    assert (job.id, job.state, job.attempts) == (job_id, "running", 1)


@pytest.mark.slow
def test_worker_killed_while_its_job_writes_a_checkpoint(tmp_path):
    home = tmp_path / "ws"
    job_id = _pretrain_job(home)
    worker, mark = _worker_that_stalls(home, tmp_path, ".last.pt.")
    _kill_worker_when_stalled(JobQueue(home), job_id, worker, mark)
    assert not (JobQueue(home).run_dir(job_id) / "model" / "checkpoint" / "last.pt").exists()
    _resume_and_check(home, job_id, ".last.pt.")
    _check_tap_run(home, job_id, 2)


@pytest.mark.slow
def test_worker_killed_while_its_job_writes_the_model_bundle(tmp_path):
    home = tmp_path / "ws"
    job_id = _pretrain_job(home)
    worker, mark = _worker_that_stalls(home, tmp_path, "weights.pt")
    _kill_worker_when_stalled(JobQueue(home), job_id, worker, mark)
    run_dir = JobQueue(home).run_dir(job_id)
    assert not (run_dir / "model" / "weights.pt").exists()  # only the finished checkpoint, no bundle yet
    _resume_and_check(home, job_id, ".model.tmp-")
    _check_tap_run(home, job_id, 2)


@pytest.mark.slow
def test_worker_killed_while_its_job_writes_predictions(tmp_path):
    home = tmp_path / "ws"
    ws = Workspace(home)
    if not (ROOT / "models" / "demo" / "config.json").is_file():
        pytest.skip("models/demo is missing (make it with scripts/make_demo_model.py)")
    ws.add_array(_movie(t=3, size=64), name="tiny", source="test", dataset_id="tiny")
    q = JobQueue(home)
    job_id = q.submit({"kind": "predict", "params": {"dataset": "tiny", "model": "shipped:demo"}})
    worker, mark = _worker_that_stalls(home, tmp_path, "events.csv")
    _kill_worker_when_stalled(q, job_id, worker, mark)
    assert not (q.run_dir(job_id) / "prediction").exists()  # nothing half-written under the real name
    _resume_and_check(home, job_id, ".prediction.part-")
    pred = q.run_dir(job_id) / "prediction"
    assert sorted(p.name for p in pred.iterdir()) == ["events.csv", "heatmaps.tif", "per_frame.csv", "prediction.json"]
    record = json.loads((pred / "prediction.json").read_text())
    assert record["files"] == {"events": "events.csv", "per_frame": "per_frame.csv", "heatmaps": "heatmaps.tif"}


def test_job_process_reports_success_without_its_output_files(tmp_path, monkeypatch):
    q = JobQueue(tmp_path)
    job_id = q.submit(_pretrain_spec("demo"))
    liar = ("import json, pathlib, sys; p = pathlib.Path(sys.argv[1]); "
            "(p / 'result.json').write_text(json.dumps({'ok': True, 'outputs': {'model': 'model'}}))")
    real_popen = subprocess.Popen

    def popen(args, **kwargs):  # the job process says "done" but writes nothing
        return real_popen([sys.executable, "-c", liar, args[-1]], **kwargs)

    monkeypatch.setattr("tapcore.jobs.worker.subprocess.Popen", popen)
    assert Worker(tmp_path, device="cpu", poll=0.05).run(once=True) == 1
    job = q.get(job_id)
    assert job.state == "failed"
    assert job.error == ("the job reported success but its output(s) model are missing from its run folder; run it "
                         "again")


@pytest.mark.slow  # a worker subprocess runs a training job across a restart
def test_app_restarted_while_a_job_runs(tmp_path, monkeypatch):
    home = tmp_path / "ws"
    job_id = _pretrain_job(home, epochs=30)
    env = {**os.environ, "TAPCORE_HOME": str(home)}
    worker = subprocess.Popen([sys.executable, "-m", "tapcore.cli", "worker", "--device", "cpu", "--poll", "0.1"],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        q = JobQueue(home)
        _wait(lambda: q.get(job_id).state == "running" and q.alive_workers(), 120, "the job to run")
        # the app process restarts: a new process opens the same workspace; it must not start a second
        # worker (the first is alive) and sees the job that is running
        spawned = []
        monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: spawned.append(a) or None)
        assert ensure_worker(home) is None and spawned == []
        monkeypatch.undo()
        again = JobQueue(home)
        assert again.get(job_id).state == "running"
        assert q.cancel(job_id) == "running"  # the restarted app can still control it
        job = _wait(lambda: (j := again.get(job_id)).state == "cancelled" and j, 60, "the cancel")
        assert job.error == "cancelled by the user" and worker.poll() is None
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)


# -- the database ----------------------------------------------------------------------------------------
_SUBMITTER = '''
import sys
from tapcore.jobs.queue import JobQueue
q = JobQueue(sys.argv[1])
ids = [q.submit({"kind": "pretrain", "params": {"dataset": f"{sys.argv[2]}-{i}"}}, owner=sys.argv[2]) for i in range(15)]
print("\\n".join(ids))
'''


@pytest.mark.slow  # many processes on one SQLite queue
def test_many_concurrent_submits_on_sqlite(tmp_path):
    JobQueue(tmp_path)  # the schema exists before the race starts
    procs = [subprocess.Popen([sys.executable, "-c", _SUBMITTER, str(tmp_path), f"user{k}"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}) for k in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    ids = [line for out, _ in outs for line in out.split()]
    q = JobQueue(tmp_path)
    rows = q.list()
    assert len(ids) == 60 == len(set(ids)) == len(rows)
    assert {j.id for j in rows} == set(ids) == {p.name for p in q.runs_dir.iterdir()}
    for job in rows:  # every row has its complete folder
        spec = json.loads((job.run_dir / "spec.json").read_text())
        assert spec["id"] == job.id and spec["params"] == job.spec["params"]


def test_two_tabs_submitting_the_same_job(tmp_path):
    spec = _pretrain_spec("demo")
    ids: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2, timeout=60)

    def tab() -> None:
        try:
            barrier.wait()
            q = JobQueue(tmp_path)  # both tabs open the new workspace at once (SQLite's WAL switch races)
            ids.append(q.submit(spec, owner="ann"))
        except BaseException as exc:  # reported below instead of leaving the other thread waiting
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=tab) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    q = JobQueue(tmp_path)
    assert len(ids) == 2 and ids[0] == ids[1]
    assert [j.id for j in q.list()] == [ids[0]] and [p.name for p in q.runs_dir.iterdir()] == [ids[0]]
    assert q.submit_once(spec, owner="ann") == (ids[0], True)
    assert q.submit_once(spec, owner="bo")[1] is False  # another user's identical job is their own
    q.cancel(ids[0])
    assert q.submit_once(spec, owner="ann")[1] is False  # a finished job does not block a new one


# -- corrupt files ----------------------------------------------------------------------------------------
def _saved_bundle(path: Path):
    import torch

    from tapcore.bundle import save_bundle

    return save_bundle(path, kind="tap", config={"model": {}}, state_dict={"w": torch.ones(64)})


def test_truncated_bundle_weights(tmp_path):
    from tapcore.bundle import load_bundle

    path = _saved_bundle(tmp_path / "model")
    data = (path / "weights.pt").read_bytes()
    (path / "weights.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as err:
        load_bundle(path)
    assert str(err.value) == (f"{path / 'weights.pt'} does not match the hash in manifest.json: the weights file is "
                              "corrupt or was replaced; re-create the bundle")
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["weights_sha256"]  # an older or hand-edited bundle without a hash: torch itself must refuse it
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=rf"^{path / 'weights.pt'} cannot be read as weights \(.*\); the file is "
                                         "corrupt: re-create the bundle$"):
        load_bundle(path)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def test_bundle_weights_replaced_by_a_pickle_payload(tmp_path):
    import pickle

    from tapcore.bundle import load_bundle

    path = _saved_bundle(tmp_path / "model")
    _Evil.marker = tmp_path / "pwned"
    (path / "weights.pt").write_bytes(pickle.dumps({"w": _Evil()}))
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["weights_sha256"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=rf"^{path / 'weights.pt'} cannot be read as weights"):
        load_bundle(path)
    assert not _Evil.marker.exists()  # never unpickled: weights_only=True refused it


def test_truncated_checkpoint_on_resume(tmp_path, one_torch_thread):
    from tapcore.config import config_from_dict
    from tapcore.tap.train import CHECKPOINT, PretrainConfig, pretrain

    out = tmp_path / "tap"
    cfg = config_from_dict(PretrainConfig, {**TINY_TAP, "epochs": 1, "device": "cpu"})
    pretrain(_movie(t=8), cfg, out)
    ckpt = out / CHECKPOINT
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    before = _all_files(tmp_path)
    with pytest.raises(ValueError, match=rf"^checkpoint {ckpt} cannot be read \(.*\); delete it to start over$"):
        pretrain(_movie(t=8), cfg, out, resume=True)
    assert _all_files(tmp_path) == before  # the failed resume changed nothing
