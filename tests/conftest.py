"""Shared pytest fixtures and the test markers.

Real data lives in ``../shared/data`` beside the project root. A fresh clone has no such folder:
tests that need it skip with a visible reason (``-ra`` prints it in the summary).

Markers (registered in pyproject.toml): ``slow`` for long tests (real browser, Slurm cluster,
torchrun processes, job/worker subprocesses with fault injection, long training), ``gpu`` for tests
that need CUDA (skipped without a GPU). ``pytest`` runs everything (CI); ``pytest -m "not slow"`` is
the developer loop. Whole files are marked here (:data:`SLOW_FILES`); single tests carry
``@pytest.mark.slow`` in their file, single parameter cases ``pytest.param(..., marks=pytest.mark.slow)``
(the fast loop keeps at least one case of each idea).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TAPCORE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _load_browser_kit():
    """scripts/browser_kit.py (Chromium launch options, ``settle``), importable as ``browser_kit`` in tests."""
    spec = importlib.util.spec_from_file_location("browser_kit", ROOT / "scripts" / "browser_kit.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["browser_kit"] = module
    spec.loader.exec_module(module)
    return module


browser_kit = _load_browser_kit()


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} not found (it lives in ../shared/data beside the project; "
                    "set TAPCORE_SHARED_DATA to point elsewhere)")
    return path


#: Test files whose every test is slow (each starts processes: browsers, Slurm jobs, torchrun, workers).
SLOW_FILES = {
    "test_browser.py",  # a real chromium driving the app
    "test_slurm.py",  # jobs on a local Slurm cluster
    "test_distributed.py",  # torchrun TAP pretraining, several processes
    "test_distributed_head.py",  # torchrun event-head training
}


def pytest_collection_modifyitems(config, items):
    """``slow`` on the tests of :data:`SLOW_FILES` and on browser / Slurm / real-data tests; ``browser`` tests
    skip without Debian's chromium, ``gpu`` tests without CUDA."""
    has_cuda = None
    for item in items:
        if item.path.name in SLOW_FILES or any(item.get_closest_marker(m) for m in ("browser", "slurm", "shared_data")):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("browser") and not browser_kit.CHROMIUM.exists():
            item.add_marker(pytest.mark.skip(reason=f"Debian chromium is not installed at {browser_kit.CHROMIUM} "
                                                    "(apt-get install chromium; .ci/run does this)"))
        if item.get_closest_marker("gpu"):
            if has_cuda is None:
                import torch

                has_cuda = torch.cuda.is_available()
            if not has_cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (marker gpu)"))


@pytest.fixture(scope="session")
def hela01() -> Path:
    """Path to the CTC Fluo-N2DL-HeLa sequence 01 folder (skips when absent)."""
    return _shared("hela01")


@pytest.fixture(scope="session")
def psc01() -> Path:
    """Path to the CTC PhC-C2DL-PSC sequence 01 folder, frames 150-250 (skips when absent)."""
    return _shared("psc01")


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium (Playwright, sync API) for the ``browser`` tests of one module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(**browser_kit.LAUNCH)
        yield b
        b.close()


@pytest.fixture(autouse=True)
def _isolated_workspace(tmp_path, monkeypatch):
    """Every test gets its own TAPCORE_HOME under tmp_path: nothing is written to the project."""
    monkeypatch.setenv("TAPCORE_HOME", str(tmp_path / "workspace"))


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """The workspace of an app test (``$TAPCORE_HOME``); the app starts no background worker (tests run
    jobs with their own in-process worker)."""
    path = tmp_path / "workspace"
    monkeypatch.setenv("TAPCORE_HOME", str(path))
    monkeypatch.setattr("tapcore.jobs.worker.ensure_worker", lambda *a, **k: None)
    return path


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread: tiny tensors on a shared 2-core machine run faster than with two."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def one_thread_per_job(monkeypatch):
    """Job subprocesses use one CPU thread: tests stay fast on a busy shared machine."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
