"""Verdicts in the app (AppTest): useless models end amber/red, never green; deep links; known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from tapcore.bundle import save_bundle, write_calibration  # noqa: E402
from tapcore.jobs.queue import JobQueue  # noqa: E402
from tapcore.jobs.run_job import judge  # noqa: E402
from tapcore.utils import atomic_write_json  # noqa: E402
from tapcore.workspace import Workspace  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
PAGES = {"data": "Data", "pretrain": "Pretrain", "event_head": "Event head", "evaluate": "Evaluate",
         "explain": "Explain", "predict": "Predict", "jobs": "Jobs"}


def _dataset(home: Path) -> str:
    rng = np.random.default_rng(0)
    movie = (rng.random((6, 32, 32)) * 1000).astype(np.uint16)
    masks = np.zeros(movie.shape, np.uint8)
    masks[1, 4:8, 4:8] = 1  # three separate events: the least a head job accepts (tapcore.events.readiness)
    masks[2, 10:14, 10:14] = 1
    masks[3, 20:24, 20:24] = 2
    return Workspace(home).add_array(movie, masks, name="tiny", source="test", dataset_id="tiny").id


def _done_job(home: Path, kind: str, params: dict, make_model) -> str:
    """A job that ran to its end the way the worker ends one: its model in run_dir/model, its
    result.json with the verdicts (``run_job.judge``), state done with the verdict in state.json."""
    q = JobQueue(home)
    job_id = q.submit({"kind": kind, "params": params}, owner="ann")
    job = q.claim(q.register_worker("cpu"))
    make_model(job.run_dir / "model")
    result = {"ok": True, "outputs": {"model": "model"}, **judge(kind, job.run_dir, {"model": "model"})}
    atomic_write_json(job.run_dir / "result.json", result)
    q.finish(job_id, "done", verdict=result["verdict"])
    return job_id


def _chance_tap(path: Path) -> None:
    """A TAP bundle whose validation accuracy is 0.50 on 2048 pairs (loss 0.696): it learned nothing."""
    save_bundle(path, kind="tap", config={"pretrain": {"val_samples": 2048}}, state_dict={"w": torch.zeros(1)},
                metrics={"final": {"val_acc": 0.50, "val_loss": 0.696}, "val_pairs": 2048}, manifest={})


def _collapsed_head(path: Path, temperature: float = 100.0) -> None:
    """An event-head bundle that calls every test window an event, calibrated at the temperature bound."""
    save_bundle(path, kind="event_head", config={"class_names": ["none", "event"]}, state_dict={"w": torch.zeros(1)},
                metrics={"strategy": "A0", "test": {"n": 1000, "confusion_matrix": [[0, 900], [0, 100]],
                                                    "class_names": ["none", "event"], "accuracy": 0.1,
                                                    "precision": [float("nan"), 0.1], "recall": [0.0, 1.0]}},
                manifest={})
    write_calibration(path, {"temperature": temperature, "bias": 0.0, "n_samples": 500,
                             "ece_before": {"top": 0.4, "positive": 0.4}, "ece_after": {"top": 0.1, "positive": 0.1}})


def _alerts(at: AppTest) -> dict[str, str]:
    return {"success": "\n".join(s.value for s in at.success), "warning": "\n".join(w.value for w in at.warning),
            "error": "\n".join(e.value for e in at.error)}


def test_chance_level_tap_job_ends_red_not_green(home):
    job_id = _done_job(home, "pretrain", {"dataset": _dataset(home)}, _chance_tap)
    state = (JobQueue(home).run_dir(job_id) / "state.json").read_text()
    assert '"title": "at chance"' in state  # the verdict is stored with the job's state
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["pre_job"] = job_id
    at.switch_page("pages/pretrain.py").run()
    assert not at.exception, [e.message for e in at.exception]
    alerts = _alerts(at)
    assert "Pretraining finished" not in alerts["success"]  # no green "finished"
    assert "Done, but the result should not be trusted" in alerts["error"]
    assert "At chance" in alerts["error"] or "at chance" in alerts["error"]
    assert "0.500 ± 0.011 on 2048 pairs" in alerts["error"]
    assert at.get("progress")[0].proto.text.startswith("Finished, but TAP features at chance")

    at.switch_page("pages/jobs.py").run()
    assert not at.exception
    assert list(at.dataframe[0].value["state"]) == ["finished, but TAP features at chance"]
    assert "at chance" in _alerts(at)["error"]


def test_collapsed_head_job_gets_its_warning(home):
    job_id = _done_job(home, "train_head", {"dataset": _dataset(home), "tap_model": "x",
                                           "config": {"dataset": {"crop": 16, "criterion": "any_either"}}},
                       _collapsed_head)
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["head_job"] = job_id
    at.switch_page("pages/event_head.py").run()
    assert not at.exception, [e.message for e in at.exception]
    alerts = _alerts(at)
    assert "Training finished" not in alerts["success"]
    assert "collapsed" in alerts["error"] and "100% of the 1000 test windows 'event'" in alerts["error"]


def test_evaluate_page_shows_collapse_and_calibration_at_its_bound(home):
    _collapsed_head(Workspace(home).models_dir / "bad")
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["eval_model"] = "saved:bad"
    at.switch_page("pages/evaluate.py").run()
    assert not at.exception, [e.message for e in at.exception]
    alerts = _alerts(at)
    assert "collapsed" in alerts["error"]
    assert "hit its bound" in alerts["warning"] and "upper limit 100" in alerts["warning"]
    assert any("**T** (temperature)" in c.value for c in at.caption)  # jargon explained
    pr = next(c for c in at.get("plotly_chart") if "chance precision" in c.proto.spec)
    assert pr is not None


def test_a_good_model_ends_green(home):
    def good(path: Path) -> None:
        save_bundle(path, kind="tap", config={}, state_dict={"w": torch.zeros(1)},
                    metrics={"final": {"val_acc": 0.85, "val_loss": 0.35}, "val_pairs": 2048}, manifest={})

    job_id = _done_job(home, "pretrain", {"dataset": _dataset(home)}, good)
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["pre_job"] = job_id
    at.switch_page("pages/pretrain.py").run()
    alerts = _alerts(at)
    assert "Pretraining finished" in alerts["success"] and "0.850 ± 0.011" in alerts["success"]
    assert not alerts["error"] and "Done, but" not in alerts["warning"]


@pytest.mark.parametrize("page", [p for p in PAGES if p != "predict"])
def test_deep_link_renders_its_page(home, page):
    """Opening /<page> (the page's url_path) shows that page, not the default one."""
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert [t.value for t in at.title] == [PAGES[page]]


def test_every_page_has_a_url_path_named_after_its_file():
    """Deep links (/predict, /event_head, ...) depend on these names; the browser test opens each."""
    text = (ROOT / "app.py").read_text()
    for page, title in PAGES.items():
        assert f'st.Page("pages/{page}.py", title="{title}"' in text and f'url_path="{page}"' in text
    # the default page is served at "/" whatever its url_path: /predict needs its own (hidden) entry
    assert 'url_path="predict", visibility="hidden"' in text
