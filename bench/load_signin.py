"""Load test of the signed-in app (issue 14): N concurrent browser sessions, each its own account.

Starts ``streamlit run app.py`` on a free loopback port (127.0.0.1 only) with a fresh workspace and
N local accounts, then drives N Chromium sessions at once (Playwright, one browser, N contexts).
Each session signs in, uploads its own small synthetic movie on the Data page, opens Pretrain (a
sidebar link: the same signed-in session), submits a tiny pretraining job ("Quick test") and waits
for it to finish. At the end every job must be ``done``, one per user, none lost. Prints JSON:
page render times (from the action to the app being idle) median and worst, per step, and the
job wall times. Bounded: at most ``--timeout`` seconds (default 1500).

    python bench/load_signin.py [--sessions 5] [--timeout 1500]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import browser_kit  # noqa: E402 (scripts/browser_kit.py: Chromium launch options, settle, serve_app)

#: Longest wait for one page step (the job itself may take up to --timeout).
STEP_TIMEOUT_S = 240


def _movie_bytes(seed: int) -> bytes:
    import tifffile

    from tapcore.synthetic import SynthConfig, make_synthetic

    synth = make_synthetic(SynthConfig(seed=seed, frames=12, height=64, width=64, cells=6))
    buf = io.BytesIO()
    tifffile.imwrite(buf, synth.movie, photometric="minisblack")
    return buf.getvalue()


#: Wait until the app has been idle for 1 s (300 s at most); returns when it became idle (perf_counter).
_settle = functools.partial(browser_kit.settle_async, timeout=300.0, quiet=1.0, first_wait_ms=300, poll_ms=100)


def _log(user: str, text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {user}: {text}", file=sys.stderr, flush=True)


async def _timed(times: dict, step: str, coro, user: str = "-") -> None:
    """Run an action ending in :func:`_settle`; the time from its start to the app becoming idle (the
    page drawn) goes to ``times[step]``."""
    t0 = time.perf_counter()
    idle_at = await coro
    times.setdefault(step, []).append(idle_at - t0)
    _log(user, f"{step}: {idle_at - t0:.2f} s")


async def _session(browser, url: str, user: str, password: str, movie: bytes, times: dict, timeout: float,
                   shots: Path) -> dict:
    ctx = await browser.new_context(viewport={"width": 1300, "height": 1000})
    page = await ctx.new_page()
    page.set_default_timeout(STEP_TIMEOUT_S * 1000)
    out: dict = {"user": user}
    step = "start"
    try:
        async def goto_data():
            await page.goto(f"{url}/data")
            await page.get_by_role("heading", name="Sign in", exact=True).wait_for()
            return await _settle(page)

        await _timed(times, "open (sign-in form)", goto_data(), user)

        async def sign_in():
            # On a fresh server the first sign-in switches Streamlit's page mode once, which redraws the
            # other tabs' forms: text typed at that moment is lost, as a person would notice and retype.
            for attempt in range(3):
                await page.get_by_label("User name").fill(user)
                await page.get_by_label("Password", exact=True).fill(password)
                await page.get_by_label("Password", exact=True).press("Tab")
                await page.get_by_role("button", name="Sign in").click()
                try:
                    await page.get_by_role("heading", name="Data", exact=True).wait_for(timeout=60_000)
                    break
                except Exception:  # noqa: BLE001 (playwright's TimeoutError): the form was redrawn, type again
                    out["sign_in_retries"] = attempt + 1
                    _log(user, "still on the sign-in form: typing again")
            await page.get_by_role("heading", name="Data", exact=True).wait_for()
            return await _settle(page)

        await _timed(times, "sign in -> Data page", sign_in(), user)

        async def upload():
            await page.get_by_role("tab", name="Upload a movie").click()
            await page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(
                files=[{"name": f"{user}-movie.tif", "mimeType": "image/tiff", "buffer": movie}])
            await page.wait_for_timeout(500)
            await page.get_by_role("button", name="Check and save").click()
            await page.get_by_text("Saved:").first.wait_for()
            return await _settle(page)

        await _timed(times, "upload + check", upload(), user)

        async def open_pretrain():
            await page.get_by_test_id("stSidebarNav").get_by_role("link", name="Pretrain").click()
            await page.get_by_role("heading", name="Pretrain", exact=True).wait_for()
            return await _settle(page)

        await _timed(times, "open Pretrain", open_pretrain(), user)
        await page.get_by_label("Settings", exact=True).first.click()
        await page.get_by_role("option", name="Quick test (a minute on a laptop)").click()
        await _settle(page)

        async def submit():
            await page.get_by_role("button", name="Start pretraining").click()
            await page.get_by_text("queued. Progress appears below").first.wait_for()
            return await _settle(page)

        await _timed(times, "submit job", submit(), user)
        from urllib.parse import parse_qs, urlparse

        out["job"] = parse_qs(urlparse(page.url).query)["pre_job"][0]
        _log(user, f"submitted {out['job']}; waiting for it to finish")
        await page.get_by_text("Keep these features as").first.wait_for(timeout=timeout * 1000)
        _log(user, "job done, seen in the page")
    except BaseException as exc:
        shots.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(shots / f"{user}-failure.png"), full_page=True)
        _log(user, f"failed ({type(exc).__name__}: {str(exc)[:300]}); screenshot {shots / (user + '-failure.png')}")
        raise
    finally:
        await ctx.close()
    return out


async def _drive(url: str, users: dict[str, str], timeout: float, shots: Path) -> tuple[list, dict]:
    from playwright.async_api import async_playwright

    times: dict = {}
    movies = {u: _movie_bytes(seed=i + 1) for i, u in enumerate(users)}
    async with async_playwright() as p:
        browser = await p.chromium.launch(**browser_kit.LAUNCH)
        try:
            results = await asyncio.wait_for(asyncio.gather(
                *[_session(browser, url, u, pw, movies[u], times, timeout, shots) for u, pw in users.items()],
                return_exceptions=True), timeout=timeout)
        finally:
            await browser.close()
    return results, times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=1500.0, help="seconds for the whole test")
    args = parser.parse_args()

    from tapcore.auth import UserStore
    from tapcore.jobs.queue import JobQueue

    tmp = Path(tempfile.mkdtemp(prefix="tapcore-load-"))
    home = tmp / "workspace"
    store = UserStore(home)
    users = {f"user{i + 1}": f"load-test-password-{i + 1}" for i in range(args.sessions)}
    for name, password in users.items():
        store.add(name, password)
    t_start = time.time()
    with browser_kit.serve_app(home, tmp / "streamlit.log", start_timeout=120.0, stop_timeout=30.0,
                                env={"PYTHONPATH": str(ROOT)}) as url:
        results, times = asyncio.run(_drive(url, users, args.timeout, tmp / "screenshots"))
    errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    retries = sum(r.get("sign_in_retries", 0) for r in results if isinstance(r, dict))
    jobs = JobQueue(home).list()
    by_owner = {}
    for j in jobs:
        by_owner.setdefault(j.owner, []).append(j)
    submitted = [r["job"] for r in results if isinstance(r, dict) and "job" in r]
    lost = [j for j in submitted if j not in {x.id for x in jobs}]
    all_times = [t for ts in times.values() for t in ts]
    report = {
        "sessions": args.sessions,
        "errors": errors,
        "sign_in_retries": retries,
        "jobs_submitted": len(submitted),
        "jobs_in_queue": len(jobs),
        "jobs_done": sum(j.state == "done" for j in jobs),
        "jobs_lost": lost,
        "one_job_per_user": sorted(by_owner) == sorted(users) and all(len(v) == 1 for v in by_owner.values()),
        "render_s": {"median": round(statistics.median(all_times), 2) if all_times else None,
                     "worst": round(max(all_times), 2) if all_times else None, "samples": len(all_times)},
        "render_s_by_step": {k: {"median": round(statistics.median(v), 2), "worst": round(max(v), 2)}
                             for k, v in times.items()},
        "job_wall_s": sorted(round((j.ended or 0) - j.created, 1) for j in jobs),
        "total_s": round(time.time() - t_start, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))
    ok = (not errors and not lost and report["jobs_done"] == args.sessions == len(submitted)
          and report["one_job_per_user"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
