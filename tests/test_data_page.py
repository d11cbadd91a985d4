"""The Data page's upload (issue 12/13), driven by ``streamlit.testing.v1.AppTest``: a rejected file says
why next to the uploader, a multi-channel file gets a channel picker with a preview, the preview below
switches to the new dataset, and an identical re-upload is reused."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from tapcore.workspace import Workspace  # noqa: E402

APP = str(Path(__file__).resolve().parents[1] / "app.py")
SAVE = "FormSubmitter:upload_form-Check and save"


def _page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("pages/data.py").run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def _tiff(array: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, **({"photometric": "minisblack"} | kwargs))
    return buf.getvalue()


def _movie(seed: int, t: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 4000, (t, 32, 40)).astype(np.uint16)


def test_wrong_file_type_says_why_next_to_the_uploader(home):
    at = _page()
    at.file_uploader(key="upload_movie").set_value(("cells.avi", b"RIFF....AVI ", "video/avi"))
    at.button(key=SAVE).click().run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "This file cannot be used: cells.avi is a .avi file; the movie must be a TIFF (.tif or .tiff). In Fiji: "
        "File > Save As > Tiff; a folder of PNG frames or a Cell Tracking Challenge folder can be imported from a "
        "path instead. Nothing was saved."]
    assert "up to 2048 MB each" in " ".join(c.value for c in at.caption)  # the size limit is named up front
    assert list((home / "datasets").iterdir()) == []


@pytest.mark.slow  # a large multi-channel upload
def test_multichannel_upload_pick_a_channel_with_preview_then_the_preview_shows_it(home):
    data = np.stack([_movie(1), _movie(2), _movie(3)], axis=1)  # TCYX
    at = _page()
    at.button(key="load_demo").click().run()
    assert at.selectbox(key="data_preview").value == "demo"
    at.file_uploader(key="upload_movie").set_value(("three colours.tif", _tiff(data, imagej=True,
                                                    metadata={"axes": "TCYX"}, photometric=None), "image/tiff"))
    at.button(key=SAVE).click().run()
    assert not at.exception and not at.error
    assert "Choose what to keep from three colours.tif" in [h.value for h in at.subheader]
    assert at.selectbox(key="upload_channel").options == ["channel 0", "channel 1", "channel 2"]
    assert len(at.get("plotly_chart")) == 2  # the channel preview and the dataset preview
    at.selectbox(key="upload_channel").set_value(2).run()
    at.slider(key="upload_preview_frame").set_value(3).run()
    assert not at.exception and not at.error
    at.button(key="upload_save_choice").click().run()
    assert not at.exception and not at.error
    ws = Workspace(home)
    (info,) = [d for d in ws.list_datasets() if d.id != "demo"]
    assert any(s.value == f"Saved: {info.label()}" for s in at.success)
    np.testing.assert_array_equal(ws.load_movie(info.id), data[:, 2])
    assert info.meta["channel"] == 2
    assert at.selectbox(key="data_preview").value == info.id  # the preview switched to the new dataset
    assert [p.name for p in (home / "datasets").iterdir() if p.name.startswith(".")] == []  # no staging left
    assert "Choose what to keep" not in [h.value for h in at.subheader]


def test_identical_reupload_says_so_and_reuses_the_dataset(home):
    movie = _movie(7)
    at = _page()
    at.file_uploader(key="upload_movie").set_value(("cells.tif", _tiff(movie), "image/tiff"))
    at.button(key=SAVE).click().run()
    (first,) = Workspace(home).list_datasets()
    at.file_uploader(key="upload_movie").set_value(("cells again.tif", _tiff(movie), "image/tiff"))
    at.button(key=SAVE).click().run()
    assert not at.exception and not at.error
    assert [i.value for i in at.info][0].startswith(
        f"This movie is identical to the dataset **{first.name}** already saved (")
    assert [i.value for i in at.info][0].endswith("UTC); using it, nothing new was saved.")
    assert [d.id for d in Workspace(home).list_datasets()] == [first.id]
    assert at.selectbox(key="data_preview").value == first.id
    # warnings about the movie are shown with it
    assert any("smaller than the 96 x 96 px patch" in w.value for w in at.warning)


def test_event_head_form_refuses_masks_with_too_few_events_before_queueing(home):
    movie = _movie(5, t=6)
    masks = np.zeros(movie.shape, np.uint8)
    masks[1, 4:10, 4:10] = 1
    masks[3, 20:26, 20:26] = 2
    Workspace(home).add_array(movie, masks, name="cells", source="test")
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("pages/event_head.py").run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "Cannot train on this dataset: the event masks of dataset 'cells' contain 2 events (separate regions of event "
        "pixels); training and calibrating an event head needs at least 3, one each for its training, validation and "
        "test windows; annotate more events."]
    assert not [b for b in at.button if b.key and "head_form" in b.key]  # no form to queue a job from
    from tapcore.jobs.queue import JobQueue

    assert JobQueue(home).list() == []
