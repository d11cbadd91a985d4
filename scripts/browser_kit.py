"""Headless Debian Chromium for the app: what the browser tests, the scripts and the load bench share.

Not part of the ``tapcore`` library (which never imports UI code, tests/test_layers.py): this file is
imported by path. ``python scripts/X.py`` finds it beside itself; tests/conftest.py loads it as the
module ``browser_kit`` (and provides the ``browser`` fixture); bench/ puts ``scripts/`` on ``sys.path``.

- :data:`CHROMIUM` and :data:`LAUNCH`: ``p.chromium.launch(**LAUNCH)``, sync or async Playwright.
- :func:`serve_app`: ``streamlit run app.py`` on a free loopback port with its own workspace.
- :func:`settle` / :func:`settle_async`: wait until Streamlit is idle (no skeleton, no "running" icon
  for ``quiet`` seconds in a row). Both poll :data:`BUSY_JS` and decide with one :class:`IdleWatch`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_app(home: Path, log: Path | None = None, *, start_timeout: float = 60.0, stop_timeout: float = 20.0,
              env: dict[str, str] | None = None):
    """``streamlit run app.py`` on a free port of 127.0.0.1 with workspace ``home`` (CPU jobs, one thread);
    yields its URL once ``/_stcore/health`` answers, RuntimeError (with the log) if it does not within
    ``start_timeout`` s. Its output goes to ``log`` (None: nowhere). On exit it is stopped, and so is
    the worker the app started for ``home`` (by the pid recorded in ``worker.spawn``)."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "TAPCORE_HOME": str(home), "TAPCORE_WORKER_DEVICE": "cpu", "OMP_NUM_THREADS": "1",
           **(env or {})}
    out = open(log, "w") if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + start_timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                if log is None:
                    raise RuntimeError(f"streamlit did not start within {start_timeout} s")
                out.flush()
                raise RuntimeError("streamlit did not start:\n" + log.read_text())
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=stop_timeout)
        spawn = home / "worker.spawn"  # the worker the app started for this workspace: stop it by its pid
        if spawn.exists():
            try:
                os.kill(int(spawn.read_text().split()[0]), 15)
            except (ProcessLookupError, ValueError):
                pass
        if log is not None:
            out.close()
