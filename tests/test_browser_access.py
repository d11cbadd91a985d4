"""Sign-in and access refusals in the real browser (Debian Chromium + Playwright), issue 14.

A server with two accounts (ann, bo) and one job of ann's: an unauthenticated visit sees only the
sign-in form, a wrong password is refused with its message, and bo cannot open ann's job through
a ``?job=ID`` deep link (nor see it in the queue). Screenshots go to ``test-artifacts/browser/``.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile

from browser_kit import serve_app, settle  # scripts/browser_kit.py, loaded by tests/conftest.py
from test_browser import _shot

from tapcore.access import User
from tapcore.auth import UserStore
from tapcore.jobs.queue import JobQueue
from tapcore.workspace import Workspace

pytestmark = pytest.mark.browser  # skipped without Debian's chromium (tests/conftest.py)

PASSWORDS = {"ann": "ann-password-1", "bo": "bo-password-22"}


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("browser-access") / "workspace"
    store = UserStore(home)
    for name, password in PASSWORDS.items():
        store.add(name, password)
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.arange(4 * 24 * 24, dtype=np.uint16).reshape(4, 24, 24), photometric="minisblack")
    dataset = Workspace(home, User("ann")).save_upload(buf, name="ann-secret.tif").id
    job = JobQueue(home, User("ann")).submit({"kind": "pretrain", "params": {"dataset": dataset}})
    with serve_app(home, home.parent / "streamlit.log") as url:
        yield url, home, dataset, job


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = ctx.new_page()
    yield pg
    ctx.close()


def _sign_in(page, name: str, password: str) -> None:
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()
    settle(page)


def _open_as(page, url: str, name: str, password: str, expect: str, timeout_ms: int = 60_000) -> None:
    """Open ``url`` (the sign-in form comes first), sign in, and wait for the text ``expect``."""
    page.goto(url)
    settle(page, timeout=120)
    _sign_in(page, name, password)
    page.get_by_text(expect).wait_for(timeout=timeout_ms)


def _body(page) -> str:
    return page.inner_text("body")


def test_browser_unauthenticated_sees_only_sign_in(lab_server, page):
    url, _, dataset, job = lab_server
    for path in ("data", "jobs", f"jobs?job={job}", "predict"):
        page.goto(f"{url}/{path}")
        settle(page, timeout=120)
        page.get_by_role("heading", name="Sign in", exact=True).wait_for(timeout=60_000)
        assert [h.inner_text().strip() for h in page.query_selector_all("h1")] == ["Sign in"], path
        assert page.query_selector('[data-testid="stSidebarNav"]') is None, path  # no page list
        body = _body(page)
        assert dataset not in body and job not in body and "ann-secret" not in body, path
    _shot(page, "access-1-sign-in")


def test_browser_wrong_password_is_refused(lab_server, page):
    url = lab_server[0]
    _open_as(page, f"{url}/data", "ann", "not-her-password", "Not signed in: wrong user name or password", 30_000)
    assert [h.inner_text().strip() for h in page.query_selector_all("h1")] == ["Sign in"]
    _shot(page, "access-2-wrong-password")


def test_browser_b_cannot_open_a_job_by_deep_link(lab_server, page):
    url, _, dataset, job = lab_server
    _open_as(page, f"{url}/jobs?job={job}", "bo", PASSWORDS["bo"], f"Not allowed: bo may not open job '{job}'")
    page.get_by_role("heading", name="Jobs", exact=True).wait_for()
    assert "Signed in as bo" in _body(page)
    assert "One job" not in _body(page)  # bo has no job of his own to show
    _shot(page, "access-3-deep-link-refused")


def test_browser_b_cannot_see_a_dataset(lab_server, page):
    url, _, dataset, _ = lab_server
    _open_as(page, f"{url}/data?dataset={dataset}", "bo", PASSWORDS["bo"], "named in this link is not available to you")
    body = _body(page)
    assert body.count("ann-secret") == body.count(dataset) == 1  # only the link's own id is echoed back
    assert "No datasets yet" in body


def test_browser_owner_sees_own_job_and_signs_out(lab_server, page):
    url, _, _, job = lab_server
    _open_as(page, f"{url}/jobs?job={job}", "ann", PASSWORDS["ann"], "One job")
    assert "Not allowed" not in _body(page)
    page.get_by_role("button", name="Sign out").click()
    settle(page)
    page.get_by_role("heading", name="Sign in", exact=True).wait_for(timeout=30_000)
