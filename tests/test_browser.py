"""Real-browser test: the whole workflow in Debian Chromium driven by Playwright.

Starts ``streamlit run app.py`` on a free port with its own workspace, loads the demo, trains a
tiny TAP model and event head through the job queue, opens the heatmap viewer and downloads the
events CSV. Screenshots of every page go to ``test-artifacts/browser/``.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import pandas as pd
import pytest
from browser_kit import serve_app, settle  # scripts/browser_kit.py, loaded by tests/conftest.py

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "browser"

pytestmark = pytest.mark.browser  # skipped without Debian's chromium (tests/conftest.py)


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("browser") / "workspace"
    with serve_app(home, home.parent / "streamlit.log") as url:
        yield url, home


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _goto(page, url: str, path: str, timeout: float = 60.0) -> None:
    page.goto(f"{url}/{path}")
    settle(page, timeout=timeout)


def _wait_text(page, text: str, timeout: float = 120_000) -> None:
    page.get_by_text(text, exact=False).first.wait_for(timeout=timeout)


def _choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the select box labelled ``label``."""
    page.get_by_label(label, exact=True).first.click()
    page.get_by_role("option", name=option).click()
    settle(page)


def _query(page) -> dict[str, str]:
    from urllib.parse import parse_qs, urlparse

    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


PAGE_TITLES = {"evaluate": "Evaluate", "explain": "Explain", "jobs": "Jobs", "pretrain": "Pretrain",
               "event_head": "Event head", "data": "Data", "predict": "Predict"}


def test_deep_links_open_their_pages_on_a_fresh_server(tmp_path, browser):
    """A link to any page (e.g. /predict), opened first thing on a freshly started server, shows that page."""
    with serve_app(tmp_path / "workspace", tmp_path / "streamlit.log") as url:
        ctx = browser.new_context(viewport={"width": 1200, "height": 900})
        page = ctx.new_page()
        try:
            for path, title in PAGE_TITLES.items():
                _goto(page, url, path, timeout=180)
                page.get_by_role("heading", name=title, exact=True).first.wait_for(timeout=60_000)
                headings = [h.inner_text().strip() for h in page.query_selector_all("h1")]
                assert headings[:1] == [title], (path, headings)
                assert "not found" not in page.inner_text("body").lower(), path
        except BaseException:
            _shot(page, "deep-link-failure")
            raise
        finally:
            ctx.close()


def test_workflow_in_a_real_browser(app_server, browser):
    url, home = app_server
    ctx = browser.new_context(viewport={"width": 1400, "height": 1800}, accept_downloads=True)
    page = ctx.new_page()
    try:
        _workflow(page, url, home)
    except BaseException:
        _shot(page, "failure")  # what the browser showed when the test failed
        (ARTIFACTS / "failure-url.txt").write_text(page.url)
        raise
    finally:
        ctx.close()


def _workflow(page, url: str, home: Path) -> None:
    t0 = time.time()

    # Data: load the demo, see the preview with its masks
    _goto(page, url, "data")
    page.get_by_role("button", name="Load the synthetic demo movie").click()
    _wait_text(page, "Loaded: Synthetic demo")
    settle(page)
    _wait_text(page, "Your datasets")
    assert (home / "datasets" / "demo" / "meta.json").is_file()
    _shot(page, "1-data")

    # Pretrain: quick settings, start, watch the live progress reach the end
    _goto(page, url, "pretrain")
    _choose(page, "Settings", "Quick test (a minute on a laptop)")
    page.get_by_role("button", name="Start pretraining").click()
    _wait_text(page, "queued. Progress appears below")
    pre_job = _query(page)["pre_job"]
    _wait_text(page, "Keep these features as", timeout=240_000)  # shown once the job is done
    settle(page)
    _shot(page, "2-pretrain")
    from tapcore.verdicts import stored_job_verdict

    verdict = stored_job_verdict(home / "runs" / pre_job)  # a quick run usually ends "at chance"
    alert = {"ok": "stAlertContentSuccess", "warn": "stAlertContentWarning", "bad": "stAlertContentError"}
    shown = page.get_by_test_id(alert[verdict.level]).all_inner_texts()
    assert any(verdict.title in t for t in shown), (verdict, shown)
    if verdict.level != "ok":
        assert not any("Pretraining finished" in t for t in
                       page.get_by_test_id("stAlertContentSuccess").all_inner_texts())

    # Event head: the features just trained, quick settings
    _goto(page, url, f"event_head?tap_model=run:{pre_job}")
    _choose(page, "Settings", "Quick test (a minute on a laptop)")
    page.get_by_role("button", name="Start training").click()
    _wait_text(page, "queued. Progress appears below")
    head_job = _query(page)["head_job"]
    _wait_text(page, "Result on the held-out test windows", timeout=300_000)
    settle(page)
    _shot(page, "3-event-head")
    verdict = stored_job_verdict(home / "runs" / head_job)
    assert any(verdict.title in t for t in page.get_by_test_id(alert[verdict.level]).all_inner_texts())

    _goto(page, url, f"evaluate?eval_model=run:{head_job}")
    _wait_text(page, "After calibration: ECE")
    _shot(page, "4-evaluate")

    _goto(page, url, "explain")
    _shot(page, "5-explain")

    # Predict: the heatmap viewer on the head just trained, then the events CSV
    # Predict is the app's home page ("/"); the first visit computes the prediction
    _goto(page, url, f"?pred_model=run:{head_job}", timeout=300)
    _wait_text(page, "Heatmap viewer")
    slider = page.get_by_role("slider", name="Frame pair (t → t+1)")
    slider.focus()
    for _ in range(5):
        slider.press("ArrowRight")
        settle(page, quiet=0.5)
    settle(page)
    _wait_text(page, "frame 5 → 6", timeout=60_000)
    threshold = page.get_by_role("slider", name="Threshold (event probability)")
    threshold.focus()
    threshold.press("Home")  # the lowest threshold lists every candidate of this quickly trained head
    settle(page)
    _shot(page, "6-predict")
    shown = int(page.get_by_test_id("stMetric").filter(has_text="Events at this threshold")
                .get_by_test_id("stMetricValue").inner_text())
    with page.expect_download() as dl:
        page.get_by_role("button", name="Events (CSV)").click()
    rows = list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text())))
    assert len(rows) == shown
    assert rows and set(rows[0]) == {"frame", "next_frame", "y", "x", "probability", "class", "model_id"}
    assert all(float(r["probability"]) >= 0.05 for r in rows)  # the threshold set above
    assert all(0 <= int(r["frame"]) < 47 and int(r["next_frame"]) == int(r["frame"]) + 1 for r in rows)
    # the page checks the events against the demo's annotation: the numbers of `tapcore evaluate-events`
    from tapcore.evaluate import load_truth, match_events

    truth, _ = load_truth(table=home / "datasets" / "demo" / "events.csv")
    expected = match_events(pd.read_csv(dl.value.path()), truth)
    f1_shown = page.get_by_test_id("stMetric").filter(has_text="F1").get_by_test_id("stMetricValue").inner_text()
    assert f1_shown == ("-" if expected.f1 != expected.f1 else f"{expected.f1:.2f}")
    counts = (page.get_by_test_id("stMetric").filter(has_text="Found / false alarms / missed")
              .get_by_test_id("stMetricValue").inner_text())
    assert counts == f"{expected.tp} / {expected.fp} / {expected.fn}"
    _wait_text(page, "Threshold: precision and recall")

    _goto(page, url, f"jobs?job={head_job}")
    _wait_text(page, "One job")
    # the progress bar of the selected job ("Finished, but ..." for a weak head)
    page.get_by_test_id("stProgress").filter(has_text="Finished").first.wait_for(timeout=60_000)
    _shot(page, "7-jobs")
    from tapcore.jobs.queue import JobQueue

    assert [j.state for j in JobQueue(home).list()] == ["done", "done"]
    assert time.time() - t0 < 600
