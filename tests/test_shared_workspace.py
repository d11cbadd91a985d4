"""A workspace shared by a lab: everything tapcore writes is readable by the lab's group.

Known answers on file modes: with ``TAPCORE_UMASK=0002`` (the container image's setting, applied by
the entry points) a file written atomically is 0664 and a folder 0775, although ``tempfile`` makes
0600 files and 0700 folders; a setgid folder keeps its setgid bit, so the lab's group is inherited.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tapcore.bundle import save_bundle
from tapcore.utils import apply_umask_from_env, atomic_write_text, chmod_as_created, current_umask
from tapcore.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_umask():
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o002, 0o664, 0o775), (0o022, 0o644, 0o755),
                                                       (0o077, 0o600, 0o700), (0o007, 0o660, 0o770)])
def test_atomic_writes_follow_the_umask_not_tempfile(tmp_path, mask, file_mode, dir_mode):
    os.umask(mask)
    assert current_umask() == mask
    f = atomic_write_text(tmp_path / "a" / "note.txt", "hello")
    assert _mode(f) == file_mode  # mkstemp alone would leave 0600
    assert _mode(tmp_path / "a") == dir_mode
    bundle = save_bundle(tmp_path / "bundle", kind="tap", config={"x": 1}, state_dict={"w": torch.zeros(2)})
    assert _mode(bundle) == dir_mode  # mkdtemp alone would leave 0700
    assert {p.name: _mode(p) for p in bundle.iterdir()} == {
        "config.json": file_mode, "weights.pt": file_mode, "metrics.json": file_mode, "manifest.json": file_mode}


def test_apply_umask_from_env():
    os.umask(0o077)
    assert apply_umask_from_env({}) is None and current_umask() == 0o077  # unset: left alone
    assert apply_umask_from_env({"TAPCORE_UMASK": ""}) is None and current_umask() == 0o077
    assert apply_umask_from_env({"TAPCORE_UMASK": "0002"}) == 0o002 and current_umask() == 0o002
    assert apply_umask_from_env({"TAPCORE_UMASK": "027"}) == 0o027 and current_umask() == 0o027
    for bad in ("abc", "1000", "-1", "8", "u=rwx"):
        with pytest.raises(ValueError, match="TAPCORE_UMASK"):
            apply_umask_from_env({"TAPCORE_UMASK": bad})
    assert current_umask() == 0o027  # a bad value changes nothing


def test_chmod_as_created_keeps_the_setgid_bit_of_a_folder(tmp_path):
    os.umask(0o002)
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(0o2700)
    chmod_as_created(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o2775
    f = d / "x"
    f.write_bytes(b"")
    f.chmod(0o600)
    chmod_as_created(f)
    assert _mode(f) == 0o664


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a folder a group the test user is not in")
def test_a_setgid_workspace_gives_everything_the_labs_group(tmp_path):
    """The container's /workspace: setgid, owned by the lab's group; datasets, bundles, jobs inherit it."""
    os.umask(0o002)
    lab_gid = 4242
    home = tmp_path / "workspace"
    home.mkdir()
    os.chown(home, 0, lab_gid)
    home.chmod(0o2775)
    ws = Workspace(home)
    rng = np.random.default_rng(0)
    ws.add_array(rng.integers(0, 255, (3, 16, 16), dtype=np.uint8), name="tiny", source="test")
    save_bundle(ws.models_dir / "m", kind="tap", config={}, state_dict={"w": torch.zeros(1)})
    from tapcore.jobs.queue import JobQueue

    JobQueue(home).submit({"kind": "pretrain", "params": {"dataset": "tiny"}}, owner="test")
    paths = [p for p in home.rglob("*")]
    assert any(p.suffix == ".tif" for p in paths) and any(p.name == "weights.pt" for p in paths)
    assert any(p.name == "jobs.sqlite" for p in paths) and any(p.name == "spec.json" for p in paths)
    for p in paths:
        st = p.stat()
        assert st.st_gid == lab_gid, p
        if p.is_dir():
            assert stat.S_IMODE(st.st_mode) & 0o2070 == 0o2070, (p, oct(st.st_mode))  # setgid, group rwx
        else:
            assert stat.S_IMODE(st.st_mode) & 0o060 == 0o060, (p, oct(st.st_mode))  # group rw


@pytest.mark.slow  # two CLI processes (TAPCORE_UMASK itself: test_apply_umask_from_env and the bad-value test)
@pytest.mark.parametrize("env_umask, expected", [("0002", 0o664), (None, 0o600)])
def test_the_cli_applies_tapcore_umask(tmp_path, env_umask, expected):
    """`tapcore ...` started with a private umask (077): TAPCORE_UMASK=0002 opens its files to the group."""
    env = {k: v for k, v in os.environ.items() if k != "TAPCORE_UMASK"}
    if env_umask is not None:
        env["TAPCORE_UMASK"] = env_umask
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = tmp_path / "synth"
    subprocess.run([sys.executable, "-m", "tapcore.cli", "synth", "--out", str(out), "--frames", "3",
                    "--height", "64", "--width", "64", "--cells", "2"],
                   env=env, check=True, umask=0o077, capture_output=True, timeout=120)
    written = [p for p in out.rglob("*") if p.is_file()]
    assert written and {p.name: _mode(p) for p in written} == {p.name: expected for p in written}


def test_a_bad_tapcore_umask_is_one_clear_error(tmp_path):
    env = {**os.environ, "TAPCORE_UMASK": "rw-r--r--", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "tapcore.cli", "jobs"], env=env, capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 2
    assert "TAPCORE_UMASK='rw-r--r--' is not an octal umask" in r.stderr


def test_the_accounts_file_stays_private_under_the_labs_umask(tmp_path):
    """users.sqlite holds password hashes: 0600 even where everything else is opened to the lab's group."""
    from tapcore.auth import UserStore

    old = os.umask(0o002)
    try:
        store = UserStore(tmp_path)
    finally:
        os.umask(old)
    assert _mode(store.path) == 0o600
