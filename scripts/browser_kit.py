"""Headless Debian Chromium for the app: what the browser tests, the scripts and the load bench share.

Not part of the ``tapcore`` library (which never imports UI code, tests/test_layers.py): this file is
imported by path. ``python scripts/X.py`` finds it beside itself; tests/conftest.py loads it as the
module ``browser_kit`` (and provides the ``browser`` fixture); bench/ puts ``scripts/`` on ``sys.path``.

- :data:`CHROMIUM` and :data:`LAUNCH`: ``p.chromium.launch(**LAUNCH)``, sync or async Playwright.
- :func:`settle` / :func:`settle_async`: wait until Streamlit is idle (no skeleton, no "running" icon
  for ``quiet`` seconds in a row). Both poll :data:`BUSY_JS` and decide with one :class:`IdleWatch`.
"""

from __future__ import annotations

import time
from pathlib import Path

#: Debian's chromium (``apt-get install chromium``); Playwright's own download is not used.
CHROMIUM = Path("/usr/bin/chromium")
#: Keyword arguments of ``playwright.chromium.launch``.
LAUNCH = {
    "executable_path": str(CHROMIUM),
    "headless": True,
    "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
}
#: True while the app is busy: its skeleton, its "running" icon, or no app element yet.
BUSY_JS = ("() => !!(document.querySelector('[data-testid=\"stAppSkeleton\"]') || "
           "document.querySelector('[data-testid=\"stStatusWidgetRunningIcon\"]') || "
           "!document.querySelector('[data-testid=\"stApp\"]'))")


class IdleWatch:
    """The decision of :func:`settle`: fed one busy/idle reading at a time, it says when the page has
    been idle for ``quiet`` s in a row (:meth:`seen` returns the moment it became idle, ``perf_counter``)."""

    def __init__(self, timeout: float, quiet: float):
        self.timeout, self.quiet = timeout, quiet
        self.deadline = time.perf_counter() + timeout
        self.idle_since: float | None = None

    def running(self) -> bool:
        return time.perf_counter() < self.deadline

    def seen(self, busy: bool) -> float | None:
        now = time.perf_counter()
        if busy:
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = now
        elif now - self.idle_since >= self.quiet:
            return self.idle_since
        return None

    def expired(self) -> TimeoutError:
        return TimeoutError(f"the app stayed busy for {self.timeout} s")


def settle(page, timeout: float = 60.0, quiet: float = 1.5, *, first_wait_ms: int = 500,
           poll_ms: int = 150) -> float:
    """Wait until the app is idle: no skeleton, no 'running' icon for ``quiet`` seconds in a row.

    Returns when it became idle (``time.perf_counter``); TimeoutError after ``timeout`` s."""
    watch = IdleWatch(timeout, quiet)
    page.wait_for_timeout(first_wait_ms)
    while watch.running():
        idle_at = watch.seen(page.evaluate(BUSY_JS))
        if idle_at is not None:
            return idle_at
        page.wait_for_timeout(poll_ms)
    raise watch.expired()


async def settle_async(page, timeout: float = 60.0, quiet: float = 1.5, *, first_wait_ms: int = 500,
                       poll_ms: int = 150) -> float:
    """:func:`settle` for an async Playwright page."""
    watch = IdleWatch(timeout, quiet)
    await page.wait_for_timeout(first_wait_ms)
    while watch.running():
        idle_at = watch.seen(await page.evaluate(BUSY_JS))
        if idle_at is not None:
            return idle_at
        await page.wait_for_timeout(poll_ms)
    raise watch.expired()
