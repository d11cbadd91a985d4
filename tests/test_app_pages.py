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


pytestmark = pytest.mark.usefixtures("one_thread_per_job")

APP = str(ROOT / "app.py")


def _app(page: str) -> AppTest:
    """The app opened straight on ``page`` (its url_path is its file name, so this works before a run)."""
    at = AppTest.from_file(APP, default_timeout=120)
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


@pytest.mark.slow  # builds the demo movie
def test_data_page_demo_preview_and_mask_overlay(home):
    at = _app("pages/data.py")
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
    assert list((home / "datasets").iterdir()) == []


def test_data_page_good_upload_and_mismatched_masks(home):
    rng = np.random.default_rng(1)
    movie = rng.integers(0, 255, (5, 40, 48), dtype=np.uint8)
    at = _app("pages/data.py")
    at.file_uploader(key="upload_movie").set_value(("cells.tif", _tiff(movie), "image/tiff"))
    at.file_uploader(key="upload_masks").set_value(("masks.tif", _tiff(np.zeros((5, 10, 10), np.uint8)), "image/tiff"))
    at.button(key="FormSubmitter:upload_form-Check and save").click().run()
    assert [e.value for e in at.error][0].startswith("This file cannot be used: masks.tif:")
    assert Workspace(home).list_datasets() == []
    at.file_uploader(key="upload_masks").set_value(None)
    at.button(key="FormSubmitter:upload_form-Check and save").click().run()
    assert any("Saved: cells (5 frames, 40x48 px, no masks)" in s.value for s in at.success)
    (info,) = Workspace(home).list_datasets()
    np.testing.assert_array_equal(Workspace(home).load_movie(info.id), movie)


@pytest.mark.slow  # runs a job
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


def _small_demo(home: Path) -> None:
    from tapcore.synthetic import SynthConfig

    Workspace(home).create_demo(SynthConfig(frames=16, height=96, width=96, cells=12, division_rate=0.08,
                                            death_rate=0.03, seed=1))


def _tiny_tap(home: Path) -> str:
    """A tiny randomly initialised TAP bundle (stands in for a pretrained one: the head test is about the page)."""
    from tapcore.bundle import save_bundle
    from tapcore.config import config_to_dict
    from tapcore.tap.model import TapConfig, TapModel

    cfg = TapConfig(base_channels=4, depth=1, features=4, head_channels=4)
    save_bundle(Workspace(home).models_dir / "tinytap", kind="tap", config={"model": config_to_dict(cfg)},
                state_dict=TapModel(cfg).state_dict())
    return "saved:tinytap"


@pytest.mark.slow  # trains an event head in a job
def test_event_head_job_then_evaluate_page(home):
    from tapcore.jobs.worker import Worker

    _small_demo(home)
    tap_ref = _tiny_tap(home)
    at = _app("pages/event_head.py")
    at.selectbox(key="tap_model").set_value(tap_ref)
    at.selectbox(key="head_strategy").set_value("A0")
    at.number_input(key="head_epochs").set_value(2)
    at.number_input(key="head_crop").set_value(16)
    at.number_input(key="head_pairs").set_value(40)
    at.selectbox(key="head_criterion").set_value("any_either")
    at.button(key="FormSubmitter:head_form-Update estimate").click().run()
    assert not at.exception and not JobQueue(home).list()  # estimating starts nothing
    estimate = " ".join(i.value for i in at.info) + " ".join(w.value for w in at.warning)
    assert "Estimated duration on cpu: ~" in estimate and "(measured: " in estimate
    assert "linear head, crop 16 px" in " ".join(c.value for c in at.caption)
    at.button(key="FormSubmitter:head_form-Start training").click().run()
    assert not at.exception
    (job,) = JobQueue(home).list()
    assert job.kind == "train_head" and job.state == "queued"
    assert job.spec["params"]["tap_model"] == tap_ref
    assert job.spec["params"]["config"]["dataset"]["crop"] == 16
    assert at.query_params["head_job"] == [job.id] or at.query_params["head_job"] == job.id
    assert Worker(home, device="cpu", poll=0.1).run(once=True) == 1
    assert JobQueue(home).get(job.id).state == "done"

    at.run()
    assert not at.exception
    assert "Result on the held-out test windows" in [s.value for s in at.subheader]
    assert "Finished" in [p.proto.text for p in at.get("progress")][0]
    at.text_input(key="head_keep_name").set_value("my-head")
    at.button(key="head_keep").click().run()  # keep the run's model under a name
    assert not at.exception and any("Saved as" in x.value for x in at.success), [x.value for x in at.error]
    assert (Workspace(home).models_dir / "my-head" / "config.json").is_file()

    at.switch_page("pages/evaluate.py").run()
    assert not at.exception
    at.selectbox(key="eval_model").set_value(f"run:{job.id}").run()
    assert not at.exception
    charts = [c for c in at.get("plotly_chart")]
    assert len(charts) >= 4  # confusion matrix, precision/recall, errors over time, 2 reliability diagrams
    titles = " ".join(c.proto.spec for c in charts)
    assert "Before calibration: ECE = " in titles and "After calibration: ECE = " in titles


def test_event_head_page_opens_on_the_cpu_recipe_on_a_cpu_and_the_job_gets_all_of_it(home):
    """On a CPU worker the page starts on the CPU settings (A3, 32 px, event-centred three-class windows);
    the job's config carries the recipe's extra settings, and the paper preset drops them again."""
    _small_demo(home)
    tap_ref = _tiny_tap(home)
    at = _app("pages/event_head.py")
    at.selectbox(key="tap_model").set_value(tap_ref).run()
    assert at.selectbox(key="head_preset").value == "cpu"
    assert at.selectbox(key="head_strategy").value == "A3" and at.number_input(key="head_crop").value == 32
    assert at.radio(key="head_task").value == "three_class" and at.selectbox(key="head_criterion").value == "any_both"
    assert any("central 16 x 16 px" in c.value for c in at.caption)
    at.number_input(key="head_crop").set_value(24)  # a smaller window: the border follows (at most half of it)
    at.button(key="FormSubmitter:head_form-Start training").click().run()
    assert not at.exception, [e.message for e in at.exception]
    (job,) = JobQueue(home).list()
    cfg = job.spec["params"]["config"]
    assert cfg["strategy"] == "A3" and cfg["resample_negatives"] is True and cfg["keep_best"] is True
    assert cfg["lr"] == 5e-4 and cfg["dataset"]["crop"] == 24
    assert (cfg["dataset"]["centre"], cfg["dataset"]["border"], cfg["dataset"]["balance_ratio"]) == (16, 12, 3)
    from tapcore.config import config_from_dict
    from tapcore.events.train import HeadConfig

    assert config_from_dict(HeadConfig, cfg).validate().head_name == "resnet_lite_order"  # the job can run it
    at.selectbox(key="head_preset").set_value("paper").run()
    assert at.selectbox(key="head_strategy").value == "A1" and not any("central 16" in c.value for c in at.caption)


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory) -> Path:
    """A workspace with the small demo, a tiny TAP bundle and a calibrated A0 head trained on it."""
    from tapcore.events.calibrate import calibrate_bundle
    from tapcore.config import config_from_dict
    from tapcore.events.train import HeadConfig, train_head

    home = tmp_path_factory.mktemp("trained") / "workspace"
    _small_demo(home)
    tap_ref = _tiny_tap(home)
    ws = Workspace(home)
    cfg = config_from_dict(HeadConfig, {"strategy": "A0", "epochs": 2, "device": "cpu",
                                        "dataset": {"crop": 16, "pairs_per_frame": 40, "criterion": "any_either"}})
    train_head(ws.load_movie("demo"), ws.load_masks("demo"), ws.resolve_model(tap_ref), cfg, ws.models_dir / "head")
    calibrate_bundle(ws.models_dir / "head")
    return home


@pytest.mark.slow  # predicts a movie in the page
def test_predict_page_viewer_threshold_and_downloads(trained_home, monkeypatch):
    import pandas as pd

    monkeypatch.setenv("TAPCORE_HOME", str(trained_home))
    monkeypatch.setattr("tapcore.jobs.worker.ensure_worker", lambda *a, **k: None)
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["pred_model"] = "saved:head"
    at.run()  # the app opens on Predict
    assert not at.exception
    assert at.slider(key="pred_frame").max == 14  # 16 frames -> 15 frame pairs
    metric = lambda label: next(m.value for m in at.metric if m.label == label)  # noqa: E731
    at.slider(key="pred_threshold").set_value(0.05).run()
    low = int(metric("Events at this threshold"))
    at.slider(key="pred_threshold").set_value(0.99).run()
    high = int(metric("Events at this threshold"))
    assert low > high  # a higher threshold keeps fewer events
    at.slider(key="pred_threshold").set_value(0.3).run()
    table = at.dataframe[0].value
    assert list(table.columns) == ["frame", "next_frame", "y", "x", "probability", "class", "model_id"]
    assert (table["probability"] >= 0.3).all() and len(table) == int(metric("Events at this threshold"))
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Events (CSV)", "Per-frame summary (CSV)", "Heatmaps (TIFF)", "Model (zip)", "Run record (JSON)"]
    at.slider(key="pred_frame").set_value(3).run()
    assert not at.exception
    assert int(metric("In this frame pair")) == int((table["frame"] == 3).sum())
    kept = list((trained_home / "predictions").iterdir())  # computed once, kept for every later visit
    assert len(kept) == 1 and (kept[0] / "events.csv").is_file() and (kept[0] / "heatmaps.tif").is_file()
    stamp = (kept[0] / "events.csv").stat().st_mtime
    again = AppTest.from_file(APP, default_timeout=120)
    again.query_params["pred_model"] = "saved:head"  # a refreshed tab: the URL names the model
    again.run()
    assert not again.exception and again.selectbox(key="pred_model").value == "saved:head"
    assert (kept[0] / "events.csv").stat().st_mtime == stamp
    assert len(list((trained_home / "predictions").iterdir())) == 1


@pytest.mark.slow  # pretrains TAP in a job
def test_pretrain_page_submits_a_job_that_finishes_with_curves(home):
    from tapcore.jobs.worker import Worker

    _small_demo(home)
    at = _app("pages/pretrain.py")
    # on a CPU the page starts on the cpu preset (binning 2), with a measured duration estimate
    assert at.selectbox(key="pre_preset").value == "cpu" and at.radio(key="pre_bin").value == 2
    estimate = " ".join(i.value for i in at.info) + " ".join(w.value for w in at.warning)
    assert "Estimated duration on cpu: ~" in estimate and "(measured: " in estimate
    at.selectbox(key="pre_preset").set_value("quick").run()
    assert at.number_input(key="pre_epochs").value == 1
    at.number_input(key="pre_epochs").set_value(2)
    at.number_input(key="pre_samples").set_value(16)
    at.button(key="FormSubmitter:pretrain_form-Start pretraining").click().run()
    assert not at.exception
    (job,) = JobQueue(home).list()
    cfg = job.spec["params"]["config"]
    assert (job.kind, cfg["epochs"], cfg["samples_per_epoch"], cfg["patch"]) == ("pretrain", 2, 16, 32)
    assert (cfg["preset"], cfg["bin"]) == ("cpu", 1)  # the quick test: the cpu preset without binning
    assert "Waiting in the queue" in at.get("progress")[0].proto.text
    assert Worker(home, device="cpu", poll=0.05).run(once=True) == 1
    at.run()
    assert not at.exception
    assert at.get("progress")[0].proto.text.startswith("Finished")
    titles = " ".join(c.proto.spec for c in at.get("plotly_chart"))
    for title in ("Loss", "Decorrelation loss", "Accuracy"):  # the three live curves
        assert f'"text":"{title}"' in titles
    assert "chance (guessing)" in titles and "guessing (0.693)" in titles  # what a model that learned nothing gets
    # the job's verdict (stored by the worker) is the one the library gives its bundle, and the page shows it
    from tapcore.verdicts import bundle_verdicts, stored_job_verdict, worst

    verdict = stored_job_verdict(job.run_dir)
    assert verdict == worst(bundle_verdicts(job.run_dir / "model")) and verdict.subject == "TAP features"
    if verdict.level == "ok":
        assert any("Pretraining finished" in s.value for s in at.success)
    else:  # a two-epoch run on 16 pairs per epoch usually ends at chance: never a green "finished"
        assert not any("Pretraining finished" in s.value for s in at.success)
        shown = [w.value for w in at.warning] + [e.value for e in at.error]
        assert any(verdict.title in v for v in shown)


@pytest.mark.slow  # Grad-CAM gallery of a trained model
def test_explain_page_gradcam_gallery(trained_home, monkeypatch):
    monkeypatch.setenv("TAPCORE_HOME", str(trained_home))
    monkeypatch.setattr("tapcore.jobs.worker.ensure_worker", lambda *a, **k: None)
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["exp_model"] = "saved:head"
    at.switch_page("pages/explain.py").run()
    assert not at.exception, [e.message for e in at.exception]
    at.slider(key="exp_k").set_value(3)
    at.slider(key="exp_size").set_value(16)
    at.slider(key="exp_frame").set_value(2).run()
    assert not at.exception and not at.error
    regions = at.dataframe[0].value
    assert list(regions["rank"]) == [1, 2, 3]
    assert regions[["centre y (px)", "centre x (px)"]].apply(lambda c: c.between(0, 95)).all().all()
    assert [s.value for s in at.subheader] == ["Top regions", "Gallery: each region at frame t (left) and t+1 (right)"]
    at.selectbox(key="exp_model").set_value("saved:tinytap").run()  # TAP features are explained too
    assert not at.exception and not at.error and len(at.dataframe[0].value) == 3


@pytest.mark.slow  # predicts the whole demo movie
def test_app_opens_on_predictions_of_the_shipped_demo_model(home):
    if not (ROOT / "models" / "demo" / "config.json").is_file():
        pytest.skip("models/demo is missing (make it with scripts/make_demo_model.py)")
    _small_demo(home)
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()  # a new user opens the app
    assert not at.exception, [e.message for e in at.exception]
    assert [t.value for t in at.title] == ["Predict"]
    assert at.selectbox(key="pred_model").value == "shipped:demo"
    assert "You are looking at the demo" in _texts(at)
    at.slider(key="pred_threshold").set_value(0.05).run()
    events = at.dataframe[0].value
    assert len(events) > 0 and set(events["class"]) <= {"division", "death"}
    assert events["model_id"].str.startswith("event_head-").all()


def _parse_cli_check(text: str) -> dict[str, str]:
    """precision / recall / F1 and counts from `tapcore evaluate-events` output."""
    import re

    m = re.search(r"precision (\S+)\s+recall (\S+)\s+F1 (\S+)\s+\(TP (\d+), false alarms (\d+), misses (\d+)", text)
    assert m, text
    return dict(zip(("precision", "recall", "f1", "tp", "fp", "fn"), m.groups()))


def test_predict_page_checks_itself_with_the_numbers_of_evaluate_events(trained_home, monkeypatch, capsys, tmp_path):
    """A movie with annotation: the page's precision / recall / F1 at the chosen threshold are those of
    `tapcore evaluate-events` on the downloaded events and the dataset's own files."""
    from tapcore.cli import main

    monkeypatch.setenv("TAPCORE_HOME", str(trained_home))
    monkeypatch.setattr("tapcore.jobs.worker.ensure_worker", lambda *a, **k: None)
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["pred_model"] = "saved:head"
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    metric = lambda label: next(m.value for m in at.metric if m.label == label)  # noqa: E731
    for threshold in (0.3, 0.7):
        at.slider(key="pred_threshold").set_value(threshold).run()
        assert not at.exception
        kept = at.dataframe[0].value  # the event table = the "Events (CSV)" download
        csv = tmp_path / f"events_{threshold}.csv"
        kept.to_csv(csv, index=False)
        capsys.readouterr()
        assert main(["evaluate-events", str(csv), "--truth", str(trained_home / "datasets" / "demo" / "events.csv")]) == 0
        cli = _parse_cli_check(capsys.readouterr().out)
        tp, fp, fn = (int(v) for v in metric("Found / false alarms / missed").split(" / "))
        assert (tp, fp, fn) == (int(cli["tp"]), int(cli["fp"]), int(cli["fn"]))
        exact = {"precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None}
        exact["f1"] = 2 * tp / (2 * tp + fp + fn) if tp else None
        for label, key in (("Precision", "precision"), ("Recall", "recall"), ("F1", "f1")):
            # both show the same counts' ratio: the CLI to 3 decimals, the page to 2 (rounding the CLI's
            # figure again would turn 4/17 = 0.2353 -> 0.235 -> 0.23, while the page shows 0.24)
            page = metric(label)
            if exact[key] is None:
                assert page == "-" and cli[key] == "n/a"
            else:
                assert page == f"{exact[key]:.2f}" and float(cli[key]) == pytest.approx(exact[key], abs=5e-4)
        caption = next(c.value for c in at.caption if "tapcore evaluate-events" in c.value)
        assert "--truth" in caption and "events.csv" in caption
    # the trade-off curve: precision, recall and F1 against the threshold, with the chosen one marked
    spec = next(c.proto.spec for c in at.get("plotly_chart") if "threshold (event probability)" in c.proto.spec)
    assert '"name":"precision"' in spec and '"name":"recall"' in spec and "threshold 0.70" in spec


def test_predict_page_warns_on_a_movie_unlike_the_training_movie(trained_home, monkeypatch, tmp_path):
    """The small demo's model on a movie of large, fast-moving blobs without annotation: a caution,
    the heatmap only above the threshold with a colour bar, and the expected-precision curve."""
    import shutil

    home = tmp_path / "workspace"
    shutil.copytree(trained_home / "models" / "head", home / "models" / "head")
    monkeypatch.setenv("TAPCORE_HOME", str(home))
    monkeypatch.setattr("tapcore.jobs.worker.ensure_worker", lambda *a, **k: None)
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:96, :96]
    frames = []
    for t in range(6):
        f = np.zeros((96, 96))
        for cy, cx in ((30, 20), (60, 70), (20, 80)):
            f += np.exp(-((yy - cy - 6 * t) ** 2 + (xx - cx + 5 * t) ** 2) / (2 * 14.0 ** 2))
        frames.append(200 + 3000 * f + rng.normal(0, 20, f.shape))
    Workspace(home).add_array(np.clip(frames, 0, 65535).astype(np.uint16), name="blobs", source="test",
                              dataset_id="blobs")
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["pred_model"] = "saved:head"
    at.query_params["pred_dataset"] = "blobs"
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    shown = [w.value for w in at.warning] + [e.value for e in at.error]
    assert any("unlike the training movie" in v and "times larger" in v for v in shown), shown
    assert at.checkbox(key="pred_show_heat").value is True
    assert not any(c.key == "pred_show_truth" for c in at.checkbox)  # no annotation, no annotated events
    viewer = next(c.proto.spec for c in at.get("plotly_chart") if "event probability" in c.proto.spec)
    assert "shown \\u2265 0.50" in viewer and '"zmin":0.5' in viewer  # transparent below the threshold, colour bar
    curve = next(c.proto.spec for c in at.get("plotly_chart") if "threshold (event probability)" in c.proto.spec)
    assert '"name":"expected precision"' in curve
