"""Every app page, driven by ``streamlit.testing.v1.AppTest`` (no browser), with its own workspace."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from tapcore.jobs.queue import JobQueue  # noqa: E402
from tapcore.workspace import Workspace  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "workspace"
    monkeypatch.setenv("TAPCORE_HOME", str(path))
    # the app would start a background worker; tests run jobs with their own in-process worker
    monkeypatch.setattr("tapcore.jobs.worker.ensure_worker", lambda *a, **k: None)
    return path


def _app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def _texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
    parts += [e.value for e in at.error] + [s.value for s in at.success] + [w.value for w in at.warning]
    return "\n".join(str(p) for p in parts)


def _tiff(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, photometric="minisblack")
    return buf.getvalue()


def test_data_page_demo_preview_and_mask_overlay(home):
    at = _app("pages/data.py")  # the app opens on Predict, which loads the demo for a new user
    Workspace(home).delete_dataset("demo")
    at.run()
    assert "No datasets yet" in _texts(at)
    at.button(key="load_demo").click().run()
    assert not at.exception
    assert any("Loaded: Synthetic demo (48 frames, 256x256 px, with event masks)" in s.value for s in at.success)
    assert (home / "datasets" / "demo" / "movie.tif").is_file()
    assert at.slider(key="data_frame").max == 47
    truth = Workspace(home).load_events("demo")
    frame = int(truth[truth.kind == "division"].frame.iloc[0])
    at.slider(key="data_frame").set_value(frame).run()
    assert not at.exception
    assert at.checkbox(key="data_masks").value is True
    assert "Events in this frame:" in _texts(at)
    assert "0 divisions" not in [line for line in _texts(at).splitlines() if line.startswith("Events in this frame")][0]


def test_data_page_bad_upload_shows_clear_message_and_saves_nothing(home):
    at = _app("pages/data.py")
    at.file_uploader(key="upload_movie").set_value(("broken.tif", b"not a tiff at all", "image/tiff"))
    at.button(key="FormSubmitter:upload_form-Check and save").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("This file cannot be used: broken.tif:")
    assert "Nothing was saved" in errors[0] and "Traceback" not in errors[0]
    assert sorted(p.name for p in (home / "datasets").iterdir()) == ["demo"]  # only the demo from the landing page


def test_data_page_good_upload_and_mismatched_masks(home):
    rng = np.random.default_rng(1)
    movie = rng.integers(0, 255, (5, 40, 48), dtype=np.uint8)
    at = _app("pages/data.py")
    at.file_uploader(key="upload_movie").set_value(("cells.tif", _tiff(movie), "image/tiff"))
    at.file_uploader(key="upload_masks").set_value(("masks.tif", _tiff(np.zeros((5, 10, 10), np.uint8)), "image/tiff"))
    at.button(key="FormSubmitter:upload_form-Check and save").click().run()
    assert [e.value for e in at.error][0].startswith("This file cannot be used: masks.tif:")
    assert [d.id for d in Workspace(home).list_datasets()] == ["demo"]
    at.file_uploader(key="upload_masks").set_value(None)
    at.button(key="FormSubmitter:upload_form-Check and save").click().run()
    assert any("Saved: cells (5 frames, 40x48 px, no masks)" in s.value for s in at.success)
    (info,) = [d for d in Workspace(home).list_datasets() if d.id != "demo"]
    np.testing.assert_array_equal(Workspace(home).load_movie(info.id), movie)


def test_jobs_page_lists_and_cancels(home):
    Workspace(home).create_demo()
    q = JobQueue(home)
    job_id = q.submit({"kind": "pretrain", "params": {"dataset": "demo"}}, owner="ann")
    at = _app("pages/jobs.py")
    frame = at.dataframe[0].value
    assert list(frame["job"]) == [job_id] and list(frame["owner"]) == ["ann"]
    assert list(frame["state"]) == ["waiting in the queue"]
    at.button(key="jobs_cancel").click().run()
    assert not at.exception
    assert q.get(job_id).state == "cancelled"
