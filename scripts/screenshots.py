"""Screenshots of every app page for docs/screenshots/, in headless Debian Chromium (Playwright).

Usage::

    python scripts/screenshots.py --home WORKSPACE [--out docs/screenshots]

WORKSPACE is a tapcore workspace that holds the demo dataset and at least one finished pretrain job
and one finished train_head job (e.g. the one ``tests/test_browser.py`` leaves under pytest's
temporary folder, or your own after trying the app). The app is started on a free port with that
workspace; every page is opened by its deep link (``/data``, ``/pretrain?pre_job=...``, ...), and a
full-page PNG is written per page. Predict and Explain show the shipped demo model on the demo movie.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from browser_kit import LAUNCH, settle  # scripts/browser_kit.py, beside this script

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", required=True, help="workspace with the demo dataset and finished jobs")
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"), help="folder for the PNGs")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from tapcore.jobs.queue import JobQueue

    home = Path(args.home).resolve()
    q = JobQueue(home)
    done = {kind: next((j.id for j in q.list(states=("done",), kind=kind)), None) for kind in ("pretrain", "train_head")}
    if not all(done.values()):
        raise SystemExit(f"{home} needs a finished pretrain and train_head job; found {done}")
    pages = [
        ("data", "data"),
        ("pretrain", f"pretrain?pre_job={done['pretrain']}"),
        ("event_head", f"event_head?head_job={done['train_head']}"),
        ("evaluate", f"evaluate?eval_model=run:{done['train_head']}"),
        ("explain", "explain?exp_dataset=demo&exp_model=shipped:demo"),
        ("predict", "predict?pred_dataset=demo&pred_model=shipped:demo"),
        ("jobs", f"jobs?job={done['train_head']}"),
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {**os.environ, "TAPCORE_HOME": str(home), "TAPCORE_WORKER_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--browser.gatherUsageStats", "false"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                time.sleep(0.3)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(**LAUNCH)
            # Streamlit scrolls inside its own container, so a tall window is what shows a whole page
            ctx = browser.new_context(viewport={"width": 1400, "height": 3000})
            page = ctx.new_page()
            for name, path in pages:
                page.goto(f"{url}/{path}")
                settle(page, timeout=300.0, quiet=2.0, first_wait_ms=800, poll_ms=200)
                page.screenshot(path=str(out / f"{name}.png"), full_page=True)
                print(f"{out / (name + '.png')}: {page.url}")
            browser.close()
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        spawn = home / "worker.spawn"
        if spawn.exists():
            try:
                os.kill(int(spawn.read_text().split()[0]), 15)
            except (ProcessLookupError, ValueError):
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
