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
import sys
from pathlib import Path

from browser_kit import LAUNCH, serve_app, settle  # scripts/browser_kit.py, beside this script

ROOT = Path(__file__).resolve().parents[1]


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
        ("audit", "audit"),
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with serve_app(home, start_timeout=120.0, stop_timeout=30.0) as url:
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
