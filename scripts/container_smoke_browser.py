"""In-page part of scripts/container_smoke.sh: drive the app served by the container in headless Chromium.

    TAPCORE_SMOKE_PASSWORD=... python scripts/container_smoke_browser.py --url http://127.0.0.1:18501 \
        --user smoke-admin --phase first
    TAPCORE_SMOKE_PASSWORD=... python scripts/container_smoke_browser.py --url http://127.0.0.1:18501 \
        --user smoke-admin --phase after-restart --job ID

The container listens on 0.0.0.0, so the app asks for sign-in: the shell script adds the admin account
(``tapcore users add NAME --role admin --password-stdin`` in the container) and hands its password in
``$TAPCORE_SMOKE_PASSWORD`` (not on the command line). Sign-in lasts for the browser tab's session, so
every page opened by URL signs in again (the page in the URL is kept).

``first``: an unauthenticated visit sees only the sign-in form (no page list); signed in, the demo
Predict page (the app's home page) renders its heatmap viewer; a quick pretraining job submitted on
the Pretrain page finishes there, and its features are kept as model ``smoke-tap``.
``after-restart``: signed in again, the Jobs page still shows that job finished, and the Predict page
still renders.
Prints one ``PASS  <check>: <detail>`` or ``FAIL  <check>: <detail>`` line per check, a last line
``RESULT {json}`` for the shell script, and exits 1 when a check failed. Screenshots go to --shots.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import browser_kit  # scripts/browser_kit.py, beside this script (the script runs on the host, not in the image)

MODEL_NAME = "smoke-tap"


#: Wait until the app is idle (browser_kit.settle); here 120 s unless a step says otherwise.
settle = functools.partial(browser_kit.settle, timeout=120.0, quiet=1.5, poll_ms=200)


def wait_text(page, text: str, timeout_s: float) -> None:
    page.get_by_text(text, exact=False).first.wait_for(timeout=timeout_s * 1000)


class Checks:
    def __init__(self, shots: Path):
        self.shots = shots
        self.failed = False
        self.result: dict = {}

    def run(self, name: str, page, fn) -> bool:
        t0 = time.time()
        try:
            detail = fn()
        except Exception as exc:  # noqa: BLE001 (report any failure as a FAIL line)
            self.failed = True
            self.shot(page, f"FAIL-{name.split()[0].lower()}")
            print(f"FAIL  {name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                  f"({time.time() - t0:.0f} s)", flush=True)
            return False
        print(f"PASS  {name}: {detail} ({time.time() - t0:.0f} s)", flush=True)
        return True

    def shot(self, page, name: str) -> None:
        try:
            self.shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)
        except Exception:  # noqa: BLE001
            pass


def h1s(page) -> list[str]:
    return [h.inner_text().strip() for h in page.query_selector_all("h1")]


def unauthenticated(page, url: str, checks: Checks):
    """Without signing in, every URL shows the sign-in form only: no page list, no page content."""
    def fn():
        seen = []
        for path in ("", "jobs", "pretrain"):
            page.goto(f"{url}/{path}")
            page.get_by_role("heading", name="Sign in", exact=True).first.wait_for(timeout=300_000)
            settle(page, timeout=300)
            body = page.inner_text("body")
            if "refuses to serve" in body:
                raise AssertionError(f"/{path}: the app refuses to serve (no account?): {body[:200]!r}")
            if h1s(page) != ["Sign in"]:
                raise AssertionError(f"/{path}: headings {h1s(page)}, expected only 'Sign in'")
            if page.query_selector('[data-testid="stSidebarNav"]') is not None:
                raise AssertionError(f"/{path}: the page list (sidebar navigation) is shown")
            for leak in ("Heatmap viewer", "Start pretraining", "worker(s)", "Signed in as"):
                if leak in body:
                    raise AssertionError(f"/{path}: the page shows {leak!r} before sign-in")
            page.get_by_label("User name").first.wait_for(timeout=60_000)
            page.get_by_label("Password", exact=True).first.wait_for(timeout=60_000)
            seen.append(f"/{path}")
        checks.shot(page, "sign-in")
        return (f"{', '.join(seen)}: only the 'Sign in' heading with the user name / password form, "
                "no page navigation, no page content")
    return fn


def open_signed_in(page, url: str, path: str, user: str, password: str) -> None:
    """Open ``url/path`` in this tab and sign in there (a page opened by URL is a new session)."""
    page.goto(f"{url}/{path}")
    page.get_by_role("heading", name="Sign in", exact=True).first.wait_for(timeout=300_000)
    settle(page, timeout=300)
    page.get_by_label("User name").first.fill(user)
    page.get_by_label("Password", exact=True).first.fill(password)
    page.get_by_role("button", name="Sign in").first.click(timeout=120_000)
    deadline = time.time() + 300
    while time.time() < deadline:
        body = page.inner_text("body")
        if "Not signed in:" in body:
            line = next(ln for ln in body.splitlines() if "Not signed in:" in ln)
            raise AssertionError(f"sign-in as {user} refused on /{path}: {line.strip()}")
        if f"Signed in as {user}" in body and "Sign in" not in h1s(page):
            settle(page, timeout=300)
            return
        page.wait_for_timeout(500)
    raise TimeoutError(f"no 'Signed in as {user}' within 300 s after signing in on /{path}")


def predict_page(page, url: str, checks: Checks, tag: str, user: str, password: str):
    def fn():
        # the app opens on Predict; the demo movie and shipped model on a fresh workspace
        open_signed_in(page, url, "", user, password)
        page.get_by_role("heading", name="Predict", exact=True).first.wait_for(timeout=120_000)
        wait_text(page, "Heatmap viewer", 600)  # first visit: the prediction is computed in the page
        settle(page, timeout=300)
        body = page.inner_text("body")
        if "You are looking at the demo" not in body:
            raise AssertionError("the Predict page does not show the demo movie with the shipped model")
        if "Traceback" in body or page.get_by_test_id("stException").count():
            exc = page.get_by_test_id("stException")
            text = exc.first.inner_text() if exc.count() else body[body.find("Traceback"):]
            raise AssertionError("the page shows an exception: " + " ".join(text.split())[:600])
        n_events = page.get_by_test_id("stMetric").filter(has_text="Events at this threshold") \
            .get_by_test_id("stMetricValue").inner_text()
        checks.shot(page, f"predict-{tag}")
        return (f"signed in as {user}: heatmap viewer of the demo movie + shipped model, "
                f"{n_events} events at the default threshold")
    return fn


def pretrain_in_page(page, url: str, checks: Checks, user: str, password: str):
    def fn():
        open_signed_in(page, url, "pretrain", user, password)
        # on a loaded machine the page can take minutes to draw its form (skeletons first): wait for the
        # widgets themselves, not only for an idle moment
        settings = page.get_by_label("Settings", exact=True).first
        settings.wait_for(timeout=300_000)
        settle(page, timeout=300)
        settings.click(timeout=120_000)
        page.get_by_role("option", name="Quick test (a minute on a laptop)").click(timeout=120_000)
        settle(page, timeout=300)  # the form times a few training steps for its estimate
        start = page.get_by_role("button", name="Start pretraining")
        start.wait_for(timeout=300_000)
        settle(page, timeout=300)
        start.click(timeout=120_000)
        wait_text(page, "queued. Progress appears below", 120)
        query = {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}
        job = query["pre_job"]
        checks.result["job"] = job
        t0 = time.time()
        wait_text(page, "Keep these features as", 1200)  # shown once the job is done
        settle(page)
        took = time.time() - t0
        box = page.get_by_label("Keep these features as", exact=True).first
        box.fill(MODEL_NAME)
        box.press("Enter")
        settle(page)
        page.get_by_role("button", name="Keep model").click(timeout=120_000)
        wait_text(page, f"Saved as saved:{MODEL_NAME}", 120)
        settle(page)
        checks.result["model"] = MODEL_NAME
        checks.shot(page, "pretrain")
        return (f"signed in as {user}: job {job} done {took:.0f} s after it was queued in the page; "
                f"kept as saved:{MODEL_NAME}")
    return fn


def job_page(page, url: str, job: str, user: str, password: str):
    def fn():
        open_signed_in(page, url, f"jobs?job={job}", user, password)  # the deep link survives the sign-in
        wait_text(page, "One job", 120)
        page.get_by_test_id("stProgress").filter(has_text="Finished").first.wait_for(timeout=120_000)
        return f"signed in as {user}: the Jobs page shows job {job} finished"
    return fn


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--phase", choices=("first", "after-restart"), required=True)
    ap.add_argument("--job", help="(after-restart) the job id finished in the first phase")
    ap.add_argument("--shots", default="test-artifacts/container-smoke", help="screenshot folder")
    ap.add_argument("--user", required=True, help="the admin account the shell script added (password in "
                                                  "$TAPCORE_SMOKE_PASSWORD)")
    args = ap.parse_args()
    password = os.environ.get("TAPCORE_SMOKE_PASSWORD", "")
    if not password:
        ap.error("set TAPCORE_SMOKE_PASSWORD to the password of --user")

    from playwright.sync_api import sync_playwright

    checks = Checks(Path(args.shots))
    with sync_playwright() as p:
        browser = p.chromium.launch(**browser_kit.LAUNCH)
        page = browser.new_context(viewport={"width": 1400, "height": 1600}).new_page()
        user = args.user
        try:
            if args.phase == "first":
                checks.run("unauthenticated visit sees only the sign-in form", page,
                           unauthenticated(page, args.url, checks))
                checks.run("demo Predict page renders in headless Chromium", page,
                           predict_page(page, args.url, checks, "first", user, password))
                checks.run("pretraining job submitted in the page finishes", page,
                           pretrain_in_page(page, args.url, checks, user, password))
            else:
                checks.run("after restart: the finished job is on the Jobs page", page,
                           job_page(page, args.url, args.job, user, password))
                checks.run("after restart: the demo Predict page renders", page,
                           predict_page(page, args.url, checks, "after-restart", user, password))
        finally:
            browser.close()
    print("RESULT " + json.dumps(checks.result), flush=True)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
