"""Sign-in, ownership and sharing (issue 14): the library API, the CLI and every page through AppTest.

Users: ann and bo (role user), root (admin). ann owns a private dataset, a dataset shared with the
lab, a saved model, and two jobs (one private, one shared). Every refused attempt is its own test,
named ``test_<where>_b_cannot_<what>``.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tapcore.access import LOCAL_ADMIN, AccessDenied, User
from tapcore.audit import AuditLog
from tapcore.auth import (SignInError, SignInRequired, UserStore, access_mode, cli_user, is_loopback,
                          user_from_oidc)
from tapcore.jobs.queue import JobQueue
from tapcore.workspace import PROJECT_MODELS, Workspace

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
ANN, BO, ADMIN = User("ann"), User("bo"), User("root", "admin")
PASSWORDS = {"ann": "ann-password-1", "bo": "bo-password-22", "root": "root-password-333"}


def _movie(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, size=(4, 24, 24)).astype(np.uint16)


def _tiff(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, photometric="minisblack")
    return buf.getvalue()


class Lab:
    """The shared workspace of the tests: ids of ann's items."""

    def __init__(self, home: Path):
        self.home = home
        store = UserStore(home)
        for name, role in (("ann", "user"), ("bo", "user"), ("root", "admin")):
            store.add(name, PASSWORDS[name], role)
        ws = Workspace(home, ANN)
        self.private = ws.save_upload(io.BytesIO(_tiff(_movie(1))), name="ann-private.tif").id
        self.shared = ws.save_upload(io.BytesIO(_tiff(_movie(2))), name="ann-shared.tif").id
        ws.set_dataset_shared(self.shared, True)
        self.model = ws.save_model("shipped:demo", "ann-model")
        q = JobQueue(home, ANN)
        self.job = q.submit({"kind": "pretrain", "params": {"dataset": self.private}})
        self.shared_job = q.submit({"kind": "pretrain", "params": {"dataset": self.shared, "config": {"epochs": 1}}})
        q.set_shared(self.shared_job, True)
        # a finished job with a model bundle (run:<id>), as a worker leaves it
        self.done_job = q.submit({"kind": "pretrain", "params": {"dataset": self.private, "config": {"epochs": 2}}})
        shutil.copytree(PROJECT_MODELS / "demo", home / "runs" / self.done_job / "model",
                        ignore=shutil.ignore_patterns("tap", "*.pt", "*.safetensors"))
        JobQueue(home).finish(self.done_job, "done")


@pytest.fixture(scope="module")
def _lab_template(tmp_path_factory) -> Lab:
    """Built once (argon2 hashing is slow on purpose); every test gets its own copy."""
    return Lab(tmp_path_factory.mktemp("lab") / "workspace")


@pytest.fixture
def lab(_lab_template, tmp_path, monkeypatch) -> Lab:
    home = tmp_path / "workspace"
    shutil.copytree(_lab_template.home, home)
    monkeypatch.setenv("TAPCORE_HOME", str(home))
    monkeypatch.setattr("tapcore.jobs.worker.ensure_worker", lambda *a, **k: None)
    copy = Lab.__new__(Lab)
    copy.__dict__.update(_lab_template.__dict__, home=home)
    return copy


# == library API ================================================================================
def test_library_owner_sees_own_items(lab):
    ws = Workspace(lab.home, ANN)
    assert {d.id for d in ws.list_datasets()} == {lab.private, lab.shared}
    assert ws.dataset(lab.private).owner == "ann"
    assert {j.id for j in JobQueue(lab.home, ANN).list()} == {lab.job, lab.shared_job, lab.done_job}
    assert lab.model in {m.ref for m in ws.list_models()}


def test_library_b_cannot_list_a_private_dataset(lab):
    assert [d.id for d in Workspace(lab.home, BO).list_datasets()] == [lab.shared]


def test_library_b_cannot_open_a_dataset(lab):
    with pytest.raises(AccessDenied, match=r"bo may not open dataset .* not shared with the lab"):
        Workspace(lab.home, BO).dataset(lab.private)
    with pytest.raises(AccessDenied):
        Workspace(lab.home, BO).load_movie(lab.private)


def test_library_b_cannot_download_a_movie(lab):
    with pytest.raises(AccessDenied):
        Workspace(lab.home, BO).load_movie(lab.private)


def test_library_b_cannot_download_a_prediction(lab):
    with pytest.raises(AccessDenied):
        Workspace(lab.home, BO).prediction_dir(lab.private, "ab" * 12)


def test_library_b_cannot_delete_a_dataset(lab):
    with pytest.raises(AccessDenied):
        Workspace(lab.home, BO).delete_dataset(lab.private)
    assert (lab.home / "datasets" / lab.private / "movie.tif").is_file()


def test_library_b_cannot_delete_a_shared_dataset(lab):
    with pytest.raises(AccessDenied, match="read-only; only its owner or an admin can"):
        Workspace(lab.home, BO).delete_dataset(lab.shared)
    assert (lab.home / "datasets" / lab.shared / "movie.tif").is_file()


def test_library_b_cannot_unshare_a_shared_dataset(lab):
    with pytest.raises(AccessDenied):
        Workspace(lab.home, BO).set_dataset_shared(lab.shared, False)


def test_library_b_cannot_reuse_a_identical_upload(lab):
    """Uploading the same movie as ann's private one gives bo a dataset of his own, not ann's."""
    info = Workspace(lab.home, BO).save_upload(io.BytesIO(_tiff(_movie(1))), name="same.tif")
    assert info.id != lab.private and info.owner == "bo" and not info.reused


def test_library_b_cannot_see_a_staged_upload(lab):
    staged = Workspace(lab.home, ANN).stage_upload(io.BytesIO(_tiff(_movie(3))), name="x.tif")
    assert Workspace(lab.home, BO).staged_upload(staged.token) is None
    assert Workspace(lab.home, ANN).staged_upload(staged.token) is not None


def test_library_b_cannot_open_a_saved_model(lab):
    ws = Workspace(lab.home, BO)
    assert lab.model not in {m.ref for m in ws.list_models()}
    with pytest.raises(AccessDenied):
        ws.resolve_model(lab.model)


def test_library_b_cannot_open_a_job_model(lab):
    with pytest.raises(AccessDenied):
        Workspace(lab.home, BO).resolve_model(f"run:{lab.done_job}")
    assert Workspace(lab.home, ANN).resolve_model(f"run:{lab.done_job}").is_dir()


def test_library_b_cannot_open_a_model_by_folder_path(lab):
    with pytest.raises(AccessDenied, match="folder path"):
        Workspace(lab.home, BO).resolve_model(str(lab.home / "models" / "ann-model"))


def test_library_b_cannot_copy_a_model(lab):
    with pytest.raises(AccessDenied):
        Workspace(lab.home, BO).save_model(lab.model, "mine-now")


def test_library_b_cannot_delete_a_model(lab):
    with pytest.raises(AccessDenied):
        Workspace(lab.home, BO).delete_model(lab.model)
    assert (lab.home / "models" / "ann-model" / "config.json").is_file()


def test_library_b_cannot_see_a_job(lab):
    q = JobQueue(lab.home, BO)
    assert [j.id for j in q.list()] == [lab.shared_job]
    with pytest.raises(AccessDenied, match="bo may not open job"):
        q.get(lab.job)


def test_library_b_cannot_cancel_a_job(lab):
    with pytest.raises(AccessDenied):
        JobQueue(lab.home, BO).cancel(lab.job)
    assert JobQueue(lab.home).get(lab.job).state == "queued"


def test_library_b_cannot_cancel_a_shared_job(lab):
    with pytest.raises(AccessDenied, match="may not cancel"):
        JobQueue(lab.home, BO).cancel(lab.shared_job)
    assert JobQueue(lab.home).get(lab.shared_job).state == "queued"


def test_library_b_cannot_delete_a_job(lab):
    with pytest.raises(AccessDenied):
        JobQueue(lab.home, BO).delete(lab.done_job)
    assert (lab.home / "runs" / lab.done_job).is_dir()


def test_library_b_cannot_share_a_job(lab):
    with pytest.raises(AccessDenied):
        JobQueue(lab.home, BO).set_shared(lab.job, True)


def test_library_b_cannot_submit_a_job_on_a_dataset(lab):
    with pytest.raises(AccessDenied):
        JobQueue(lab.home, BO).submit({"kind": "pretrain", "params": {"dataset": lab.private}})


def test_library_b_cannot_submit_a_job_with_a_model(lab):
    with pytest.raises(AccessDenied):
        JobQueue(lab.home, BO).submit({"kind": "predict", "params": {"dataset": lab.shared, "model": lab.model}})


def test_library_b_cannot_submit_as_a(lab):
    with pytest.raises(AccessDenied, match="filed under the signed-in user"):
        JobQueue(lab.home, BO).submit({"kind": "pretrain", "params": {"dataset": lab.shared}}, owner="ann")


def test_library_shared_items_are_read_only_for_b(lab):
    ws, q = Workspace(lab.home, BO), JobQueue(lab.home, BO)
    np.testing.assert_array_equal(ws.load_movie(lab.shared), _movie(2))
    assert q.get(lab.shared_job).owner == "ann" and q.is_shared(lab.shared_job)
    job = q.submit({"kind": "pretrain", "params": {"dataset": lab.shared}})  # bo may use a shared dataset
    assert q.get(job).owner == "bo"


def test_library_share_then_unshare(lab):
    ws = Workspace(lab.home, ANN)
    ws.set_dataset_shared(lab.private, True)
    assert lab.private in {d.id for d in Workspace(lab.home, BO).list_datasets()}
    ws.set_dataset_shared(lab.private, False)
    assert lab.private not in {d.id for d in Workspace(lab.home, BO).list_datasets()}


def test_library_admin_sees_and_acts_on_everything(lab):
    ws, q = Workspace(lab.home, ADMIN), JobQueue(lab.home, ADMIN)
    assert {lab.private, lab.shared} <= {d.id for d in ws.list_datasets()}
    assert {lab.job, lab.shared_job, lab.done_job} <= {j.id for j in q.list()}
    assert q.cancel(lab.job) == "cancelled"
    q.delete(lab.done_job)
    assert not (lab.home / "runs" / lab.done_job).exists()
    ws.delete_model(lab.model)
    ws.delete_dataset(lab.private)
    assert lab.private not in {d.id for d in Workspace(lab.home, ANN).list_datasets()}


def test_library_owner_cancels_and_deletes_own_job(lab):
    q = JobQueue(lab.home, ANN)
    assert q.cancel(lab.job) == "cancelled"
    q.delete(lab.job)
    with pytest.raises(ValueError, match="no job"):
        q.get(lab.job)


def test_library_delete_refuses_a_running_job(lab):
    with pytest.raises(ValueError, match="cancel it first"):
        JobQueue(lab.home, ANN).delete(lab.job)


def test_library_items_before_sign_in_belong_to_the_local_admin(tmp_path):
    """A workspace made before sign-in (no access.json): only admins see its datasets; the demo is the lab's."""
    ws = Workspace(tmp_path)
    old = ws.add_array(_movie(5), name="old", source="test").id
    (tmp_path / "datasets" / old / "access.json").unlink()
    ws.create_demo()
    assert [d.id for d in Workspace(tmp_path, BO).list_datasets()] == ["demo"]
    assert {d.id for d in Workspace(tmp_path, LOCAL_ADMIN).list_datasets()} == {old, "demo"}
    with pytest.raises(AccessDenied):
        Workspace(tmp_path, BO).delete_dataset("demo")


# == the audit trail ===========================================================================
def test_audit_records_who_did_what(lab):
    q = JobQueue(lab.home, ANN)
    q.cancel(lab.job)
    q.delete(lab.job)
    Workspace(lab.home, ANN).delete_dataset(lab.private)
    rows = [(e.user, e.action, e.kind, e.target) for e in AuditLog(lab.home).entries(ADMIN, user="ann")]
    assert rows[:3] == [("ann", "delete", "dataset", lab.private), ("ann", "delete", "job", lab.job),
                        ("ann", "cancel", "job", lab.job)]
    actions = [r[1] for r in rows]
    assert actions.count("upload") == 2 and actions.count("submit") == 3 and "share" in actions and "save" in actions


def test_audit_b_cannot_read_the_trail(lab):
    with pytest.raises(AccessDenied, match="for admins"):
        AuditLog(lab.home).entries(BO)


# == accounts, passwords, lockout ==============================================================
def test_passwords_are_stored_as_argon2_hashes(lab):
    import sqlite3

    rows = sqlite3.connect(lab.home / "users.sqlite").execute("SELECT name, hash FROM users").fetchall()
    assert all(h.startswith("$argon2id$") and PASSWORDS[n] not in h for n, h in rows)


def test_sign_in_right_password(lab):
    assert UserStore(lab.home).verify("ANN ", PASSWORDS["ann"]) == ANN
    assert UserStore(lab.home).verify("root", PASSWORDS["root"]).is_admin


def test_sign_in_refuses_wrong_password(lab):
    with pytest.raises(SignInError, match=r"wrong user name or password \(4 more failed attempts"):
        UserStore(lab.home).verify("ann", "not-the-password")


def test_sign_in_refuses_unknown_name_with_the_same_message(lab):
    with pytest.raises(SignInError, match=r"^wrong user name or password \(4 more"):
        UserStore(lab.home).verify("nobody", "whatever-123")


def test_sign_in_locks_after_five_failures_until_the_time_passes(lab):
    now = [1000.0]
    store = UserStore(lab.home, clock=lambda: now[0])
    for _ in range(4):
        with pytest.raises(SignInError, match="more failed attempt"):
            store.verify("ann", "bad-password")
    with pytest.raises(SignInError, match=r"5 failed sign-ins in a row, so 'ann' is locked: try again in 300 s"):
        store.verify("ann", "bad-password")
    now[0] += 120
    with pytest.raises(SignInError, match=r"too many failed sign-ins for 'ann': try again in 180 s"):
        store.verify("ann", PASSWORDS["ann"])  # even the right password waits
    assert store.verify("bo", PASSWORDS["bo"]) == BO  # other names are not locked
    assert UserStore(lab.home, clock=lambda: now[0]).list()[0]["locked"] is True  # on disk: survives a restart
    now[0] += 181
    assert store.verify("ann", PASSWORDS["ann"]) == ANN


def test_admin_password_reset_unlocks(lab):
    store = UserStore(lab.home, max_fails=1)
    with pytest.raises(SignInError, match="locked"):
        store.verify("ann", "bad-password")
    store.set_password("ann", "a-new-password")
    assert store.verify("ann", "a-new-password") == ANN


@pytest.mark.parametrize("password, problem", [("short", "at least 8"), (" padded-password ", "spaces")])
def test_weak_or_odd_passwords_are_refused(tmp_path, password, problem):
    with pytest.raises(ValueError, match=problem):
        UserStore(tmp_path).add("carl", password)


def test_user_names_are_checked(tmp_path):
    with pytest.raises(ValueError, match="user name 'a b' is not valid"):
        UserStore(tmp_path).add("a b", "good-password")
    with pytest.raises(ValueError, match="already exists"):
        UserStore(tmp_path).add("carl", "good-password")
        UserStore(tmp_path).add("Carl", "good-password")


def test_oidc_identity_maps_to_a_user_with_its_role(tmp_path):
    store = UserStore(tmp_path)
    store.add("boss@uni.edu", None, role="admin")
    assert user_from_oidc({"email": "Boss@uni.edu", "sub": "1"}, store) == User("boss@uni.edu", "admin")
    assert user_from_oidc({"sub": "abc123"}, store) == User("abc123", "user")
    with pytest.raises(SignInError, match="scopes"):
        user_from_oidc({}, store)
    with pytest.raises(SignInError):  # an OIDC-only account has no password to sign in with
        store.verify("boss@uni.edu", "")


# == who may serve =============================================================================
@pytest.mark.parametrize("address, loopback", [("localhost", True), ("127.0.0.1", True), ("::1", True),
                                               ("[::1]", True), ("0.0.0.0", False), ("", False), (None, False),
                                               ("192.168.1.20", False), ("lab-box.local", False)])
def test_loopback_addresses(address, loopback):
    assert is_loopback(address) is loopback


def test_non_loopback_server_refuses_without_sign_in():
    with pytest.raises(SignInRequired, match="listens on 0.0.0.0.*TAPCORE_ALLOW_NO_SIGNIN=1"):
        access_mode("0.0.0.0", oidc=False, accounts=False, env={})


def test_access_modes():
    assert access_mode("localhost", oidc=False, accounts=False, env={}) == "local"
    assert access_mode("0.0.0.0", oidc=False, accounts=False, env={"TAPCORE_ALLOW_NO_SIGNIN": "1"}) == "local"
    assert access_mode("0.0.0.0", oidc=False, accounts=True, env={}) == "password"
    assert access_mode("localhost", oidc=False, accounts=True, env={}) == "password"
    assert access_mode(None, oidc=True, accounts=False, env={}) == "oidc"


# == command line ==============================================================================
def _cli(monkeypatch, capsys, user: str | None, *argv: str, stdin: str | None = None) -> tuple[int, str, str]:
    from tapcore.cli import main

    if user is None:
        monkeypatch.delenv("TAPCORE_USER", raising=False)
    else:
        monkeypatch.setenv("TAPCORE_USER", user)
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_users_add_list_passwd_remove(lab, monkeypatch, capsys):
    code, out, _ = _cli(monkeypatch, capsys, "root", "users", "add", "carl", "--password-stdin", stdin="carl-pass-123\n")
    assert code == 0 and out.strip() == "added carl (user)"
    assert UserStore(lab.home).verify("carl", "carl-pass-123") == User("carl")
    code, out, _ = _cli(monkeypatch, capsys, "root", "users", "passwd", "carl", "--password-stdin", stdin="carl-pass-456\n")
    assert code == 0 and UserStore(lab.home).verify("carl", "carl-pass-456") == User("carl")
    code, out, _ = _cli(monkeypatch, capsys, "root", "users", "list", "--json")
    assert [(r["name"], r["role"]) for r in json.loads(out)] == [("ann", "user"), ("bo", "user"), ("carl", "user"),
                                                                ("root", "admin")]
    code, out, _ = _cli(monkeypatch, capsys, "root", "users", "remove", "carl")
    assert code == 0 and "removed carl" in out
    assert [e.detail for e in AuditLog(lab.home).entries(ADMIN, action="users")] == ["remove", "passwd", "add user"]


def test_cli_users_add_refuses_a_password_without_terminal_or_stdin(lab, monkeypatch, capsys):
    code, _, err = _cli(monkeypatch, capsys, "root", "users", "add", "dan", stdin="")
    assert code == 2 and "--password-stdin" in err


def test_cli_b_cannot_cancel_a_job(lab, monkeypatch, capsys):
    code, _, err = _cli(monkeypatch, capsys, "bo", "jobs", "--cancel", lab.job)
    assert code == 2 and "bo may not open job" in err
    assert JobQueue(lab.home).get(lab.job).state == "queued"


def test_cli_b_cannot_read_a_job_log(lab, monkeypatch, capsys):
    code, _, err = _cli(monkeypatch, capsys, "bo", "jobs", "--log", lab.job)
    assert code == 2 and "may not open" in err


def test_cli_b_cannot_delete_a_job(lab, monkeypatch, capsys):
    code, _, err = _cli(monkeypatch, capsys, "bo", "jobs", "--delete", lab.done_job)
    assert code == 2 and "may not" in err


def test_cli_b_cannot_share_a_dataset(lab, monkeypatch, capsys):
    code, _, err = _cli(monkeypatch, capsys, "bo", "share", "dataset", lab.private)
    assert code == 2 and "may not" in err


def test_cli_b_cannot_read_the_audit_trail(lab, monkeypatch, capsys):
    code, _, err = _cli(monkeypatch, capsys, "bo", "audit")
    assert code == 2 and "for admins" in err


def test_cli_unknown_account_cannot_act(lab, monkeypatch, capsys):
    code, _, err = _cli(monkeypatch, capsys, "mallory", "jobs")
    assert code == 2 and "'mallory' has no account" in err


def test_cli_b_lists_only_own_and_shared_jobs(lab, monkeypatch, capsys):
    code, out, _ = _cli(monkeypatch, capsys, "bo", "jobs", "--json")
    assert code == 0 and [r["job"] for r in json.loads(out)] == [lab.shared_job]


def test_cli_admin_reads_the_audit_trail_and_owner_shares(lab, monkeypatch, capsys):
    code, out, _ = _cli(monkeypatch, capsys, "ann", "share", "dataset", lab.private)
    assert code == 0 and "shared with the lab" in out
    code, out, _ = _cli(monkeypatch, capsys, "root", "audit", "--json", "--user", "ann", "--limit", "1")
    assert code == 0 and [(r["action"], r["id"]) for r in json.loads(out)] == [("share", lab.private)]


def test_cli_without_accounts_acts_as_local_admin(tmp_path, monkeypatch):
    monkeypatch.delenv("TAPCORE_USER", raising=False)
    assert cli_user(tmp_path) == LOCAL_ADMIN


# == the app (AppTest) =========================================================================
def _texts(at) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
    parts += [e.value for e in at.error] + [s.value for s in at.success] + [w.value for w in at.warning]
    return "\n".join(str(p) for p in parts)


def _open(page: str, user: str | None = None, query: dict | None = None):
    """The app on ``page``, signed in as ``user`` through the sign-in form (None: not signed in)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=120)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.switch_page(page).run()
    assert not at.exception, [e.message for e in at.exception]
    if user is not None:
        at.text_input(key="signin_name").input(user)
        at.text_input(key="signin_password").input(PASSWORDS[user])
        at.button(key="FormSubmitter:signin_form-Sign in").click().run()
        assert not at.exception, [e.message for e in at.exception]
    return at


# the fast loop opens the Data page; the other pages in the full suite
@pytest.mark.parametrize("page", ["pages/data.py", *(pytest.param(p, marks=pytest.mark.slow)
                                                     for p in ("pages/jobs.py", "pages/predict.py", "pages/audit.py"))])
def test_app_unauthenticated_sees_only_sign_in(lab, page):
    at = _open(page)
    assert [t.value for t in at.title] == ["Sign in"]
    assert [w.label for w in at.text_input] == ["User name", "Password"]
    assert not at.dataframe and not at.selectbox and not at.sidebar.children
    assert lab.private not in _texts(at) and lab.job not in _texts(at)


def test_app_wrong_password_shows_why(lab):
    at = _open("pages/data.py")
    at.text_input(key="signin_name").input("ann")
    at.text_input(key="signin_password").input("nope-nope-nope")
    at.button(key="FormSubmitter:signin_form-Sign in").click().run()
    assert [e.value for e in at.error] == ["Not signed in: wrong user name or password (4 more failed attempts lock "
                                           "this name for 300 s)."]
    assert [t.value for t in at.title] == ["Sign in"]


@pytest.mark.slow  # six sign-ins in the page (the lockout itself: test_sign_in_locks_after_five_failures_...)
def test_app_lockout_after_repeated_failures(lab):
    at = _open("pages/data.py")
    for _ in range(5):
        at.text_input(key="signin_name").input("bo")
        at.text_input(key="signin_password").input("guess-guess")
        at.button(key="FormSubmitter:signin_form-Sign in").click().run()
    at.text_input(key="signin_password").input(PASSWORDS["bo"])
    at.button(key="FormSubmitter:signin_form-Sign in").click().run()
    assert "too many failed sign-ins for 'bo': try again in" in at.error[0].value
    assert [t.value for t in at.title] == ["Sign in"]


def test_app_sign_in_and_sign_out(lab):
    at = _open("pages/data.py", "ann")
    assert [t.value for t in at.title] == ["Data"] and "Signed in as **ann**" in _texts(at)
    at.sidebar.button(key="sign_out").click().run()
    assert [t.value for t in at.title] == ["Sign in"]
    assert [e.action for e in AuditLog(lab.home).entries(ADMIN, user="ann", limit=2)] == ["sign-out", "sign-in"]


def test_app_b_cannot_see_a_dataset_on_the_data_page(lab):
    at = _open("pages/data.py", "bo")
    assert list(at.dataframe[0].value["id"]) == [lab.shared]
    assert lab.private not in at.selectbox(key="data_preview").options


def test_app_b_cannot_open_a_dataset_by_query_param(lab):
    at = _open("pages/data.py", "bo", query={"dataset": lab.private})
    assert f"The dataset '{lab.private}' named in this link is not available to you" in _texts(at)
    assert at.selectbox(key="data_preview").value == lab.shared


def test_app_b_cannot_delete_a_shared_dataset(lab):
    at = _open("pages/data.py", "bo")
    assert at.selectbox(key="data_preview").value == lab.shared
    assert "data_delete" not in [b.key for b in at.button] and not at.toggle
    assert "Shared with you read-only" in _texts(at)


@pytest.mark.slow  # page actions of the owner (refusals to bo stay in the fast loop)
def test_app_owner_shares_and_deletes_on_the_data_page(lab):
    at = _open("pages/data.py", "ann", query={"dataset": lab.private})
    at.toggle(key=f"data_share_{lab.private}").set_value(True).run()
    assert Workspace(lab.home, ANN).dataset(lab.private).shared
    at.button(key="data_delete").click().run()
    assert not (lab.home / "datasets" / lab.private).exists()


def test_app_b_cannot_open_a_job_by_query_param(lab):
    at = _open("pages/jobs.py", "bo", query={"job": lab.job})
    assert any(f"bo may not open job '{lab.job}'" in e.value for e in at.error)
    assert lab.job not in at.selectbox(key="jobs_pick").options
    assert at.selectbox(key="jobs_pick").value == lab.shared_job


def test_app_b_cannot_see_a_job_on_the_jobs_page(lab):
    at = _open("pages/jobs.py", "bo")
    assert list(at.dataframe[0].value["job"]) == [lab.shared_job]


def test_app_b_cannot_cancel_or_delete_a_shared_job(lab):
    at = _open("pages/jobs.py", "bo", query={"job": lab.shared_job})
    keys = [b.key for b in at.button]
    assert "jobs_cancel" not in keys and "jobs_delete" not in keys and not at.toggle
    assert "Shared with you read-only by ann" in _texts(at)


def test_app_owner_cancels_a_job_on_the_jobs_page(lab):
    at = _open("pages/jobs.py", "ann", query={"job": lab.job})
    at.button(key="jobs_cancel").click().run()
    assert JobQueue(lab.home).get(lab.job).state == "cancelled"


def test_app_b_cannot_open_a_model_by_query_param(lab):
    at = _open("pages/evaluate.py", "bo", query={"eval_model": lab.model})
    assert "The model 'saved:ann-model' named in this link is not available to you" in _texts(at)
    assert lab.model not in at.selectbox(key="eval_model").options
    assert at.selectbox(key="eval_model").value == "shipped:demo"


@pytest.mark.slow  # the Predict page (other deep-link refusals and the library's stay in the fast loop)
def test_app_b_cannot_download_a_prediction_by_query_param(lab):
    at = _open("pages/predict.py", "bo", query={"pred_dataset": lab.private})
    assert f"The dataset '{lab.private}' named in this link is not available to you" in _texts(at)
    assert lab.private not in at.selectbox(key="pred_dataset").options


def test_app_b_cannot_open_the_audit_page(lab):
    at = _open("pages/audit.py", "bo")
    assert "Audit trail" not in [t.value for t in at.title]


@pytest.mark.slow  # the admin's audit page (bo's refusal stays in the fast loop)
def test_app_admin_sees_everything_and_the_audit_page(lab):
    at = _open("pages/audit.py", "root")
    assert [t.value for t in at.title] == ["Audit trail"]
    frame = at.dataframe[0].value
    assert {"upload", "submit", "share", "sign-in"} <= set(frame["action"])
    at = _open("pages/jobs.py", "root", query={"job": lab.job})
    assert at.selectbox(key="jobs_pick").value == lab.job and "jobs_cancel" in [b.key for b in at.button]


def test_app_on_a_network_address_refuses_without_sign_in(tmp_path, monkeypatch):
    from streamlit import config

    monkeypatch.setenv("TAPCORE_HOME", str(tmp_path))
    monkeypatch.delenv("TAPCORE_ALLOW_NO_SIGNIN", raising=False)
    old = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    try:
        at = _open("pages/data.py")
    finally:
        config.set_option("server.address", old)
    assert not at.title and not at.text_input
    assert at.error[0].value.startswith("This app refuses to serve: this server listens on 0.0.0.0")


def test_app_on_localhost_without_accounts_needs_no_sign_in(tmp_path, monkeypatch):
    monkeypatch.setenv("TAPCORE_HOME", str(tmp_path))
    monkeypatch.setattr("tapcore.jobs.worker.ensure_worker", lambda *a, **k: None)
    at = _open("pages/data.py")
    assert [t.value for t in at.title] == ["Data"] and not at.text_input(key="import_path").value
    assert at.session_state["tapcore_user"] == ("local", "admin")  # acts as the local admin


def test_app_oidc_configured_shows_only_the_provider_sign_in(lab):
    """With an ``[auth]`` section in secrets.toml, a visitor not signed in sees the provider's button
    (and the local form, since accounts exist), and nothing else."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=120)
    at.secrets["auth"] = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32,
                          "client_id": "tapcore", "client_secret": "not-a-secret",
                          "server_metadata_url": "https://login.example.org/.well-known/openid-configuration"}
    at.switch_page("pages/jobs.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert [t.value for t in at.title] == ["Sign in"]
    assert [b.label for b in at.button] == ["Sign in with your institution's account", "Sign in"]
    assert lab.job not in _texts(at) and not at.dataframe
