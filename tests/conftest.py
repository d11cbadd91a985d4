"""Shared pytest fixtures.

Real data lives in ``../shared/data`` beside the project root. A fresh clone has no such folder:
tests that need it skip with a visible reason (``-ra`` prints it in the summary).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TAPCORE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} not found (it lives in ../shared/data beside the project; "
                    "set TAPCORE_SHARED_DATA to point elsewhere)")
    return path


@pytest.fixture(scope="session")
def hela01() -> Path:
    """Path to the CTC Fluo-N2DL-HeLa sequence 01 folder (skips when absent)."""
    return _shared("hela01")


@pytest.fixture(scope="session")
def psc01() -> Path:
    """Path to the CTC PhC-C2DL-PSC sequence 01 folder, frames 150-250 (skips when absent)."""
    return _shared("psc01")


@pytest.fixture(autouse=True)
def _isolated_workspace(tmp_path, monkeypatch):
    """Every test gets its own TAPCORE_HOME under tmp_path: nothing is written to the project."""
    monkeypatch.setenv("TAPCORE_HOME", str(tmp_path / "workspace"))


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
