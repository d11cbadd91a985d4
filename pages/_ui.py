"""Shared helpers of the app pages: workspace access, pickers, live job progress, figures.

Nothing here holds per-user state in a cached resource: cached functions take everything they
depend on as arguments (dataset id + its sha256, model path + its mtime) and return plain data.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from tapcore import audit
from tapcore.access import LOCAL_ADMIN, AccessDenied, User
from tapcore.jobs.queue import FINAL_STATES, Job, JobQueue
from tapcore.progress import fraction_done, read_metrics
from tapcore.verdicts import Verdict, stored_job_verdict
from tapcore.workspace import Workspace, home

EVENT_COLORS = {1: "#ff7f0e", 2: "#d62728"}  # division orange, death red
EVENT_NAMES = {1: "division", 2: "death"}
STATE_WORDS = {
    "queued": "waiting in the queue",
    "running": "running",
    "done": "finished",
    "failed": "failed",
    "cancelled": "cancelled",
    "interrupted": "interrupted (will resume from its last checkpoint)",
}
MAX_VIEW_PX = 640
#: Cross-entropy of guessing between two answers (ln 2): the TAP loss of a model that learned nothing.
GUESS_LOSS = float(np.log(2.0))


def page_setup() -> None:
    """Call first in every page: make sure the page runs inside ``app.py``'s navigation.

    Streamlit treats a folder called ``pages/`` as an old-style multipage app until ``app.py`` has
    called ``st.navigation`` once in this server process. A browser that opens a page URL directly
    on a fresh server would then run the page file alone (no sidebar, no settings). Switching the
    old mode off and re-running hands the request to ``app.py``, which routes it to this page.
    """
    from unittest.mock import Mock

    from streamlit.runtime import Runtime
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        # streamlit.testing's AppTest (a mock runtime) resets this flag before every run and
        # delivers a widget click to one run only: re-running there would drop the click.
        if not isinstance(Runtime._instance, Mock):
            st.rerun()
    require_user()


# -- sign-in (tapcore.auth) ----------------------------------------------------------------------
USER_KEY = "tapcore_user"


def oidc_providers() -> list[str] | None:
    """None without an ``[auth]`` section in ``.streamlit/secrets.toml``; else the named providers
    (``[auth.google]`` ...; an empty list: one unnamed provider)."""
    try:
        if "auth" not in st.secrets:
            return None
        section = st.secrets["auth"]
    except Exception:  # noqa: BLE001 (no or unreadable secrets.toml: Streamlit raises several kinds)
        return None
    return [k for k in section.keys() if hasattr(section[k], "keys")]


def _oidc_logged_in() -> bool:
    """Whether ``st.user`` holds an identity from the provider (False outside a real server, e.g. AppTest)."""
    return bool(st.user.get("is_logged_in", False))


def access_mode() -> str:
    """``local``, ``password`` or ``oidc`` for this server (:func:`tapcore.auth.access_mode`);
    :class:`tapcore.auth.SignInRequired` for a server on a network address without any sign-in."""
    from tapcore.auth import UserStore, access_mode as decide

    return decide(st.get_option("server.address"), oidc=oidc_providers() is not None,
                  accounts=UserStore(home()).has_password_accounts())


def current_user() -> User:
    """The signed-in user of this browser session (set by :func:`signed_in_user`)."""
    got = st.session_state.get(USER_KEY)
    if not got:
        raise AccessDenied("nobody is signed in in this browser tab; sign in first")
    return User(*got)


def signed_in_user() -> User | None:
    """The acting user of this session, or None when it must sign in first (draws nothing).

    Raises :class:`tapcore.auth.SignInRequired` when the server may not serve at all.
    """
    from tapcore.auth import SignInError, UserStore, user_from_oidc

    mode = access_mode()
    if mode == "local":
        st.session_state[USER_KEY] = (LOCAL_ADMIN.name, LOCAL_ADMIN.role)
        return LOCAL_ADMIN
    got = st.session_state.get(USER_KEY)
    if got and st.session_state.get("tapcore_signin_mode") == "password":
        role = UserStore(home()).role_of(got[0])  # a removed account or a changed role counts at once
        if role is not None:
            st.session_state[USER_KEY] = (got[0], role)
            return User(got[0], role)
    if mode == "oidc" and _oidc_logged_in():
        try:
            user = user_from_oidc(st.user.to_dict(), UserStore(home()))
        except (SignInError, ValueError) as exc:
            st.session_state["tapcore_oidc_problem"] = str(exc)
            return None
        if tuple(got or ()) != (user.name, user.role):
            audit.record(home(), user, "sign-in", "session", "oidc")
        st.session_state[USER_KEY] = (user.name, user.role)
        st.session_state["tapcore_signin_mode"] = "oidc"
        return user
    st.session_state.pop(USER_KEY, None)
    return None


def require_user() -> User:
    """The acting user; draws only the sign-in form (and stops the page) when nobody is signed in,
    or only the refusal when the server may not serve without sign-in."""
    from tapcore.auth import SignInRequired

    try:
        user = signed_in_user()
    except SignInRequired as exc:
        st.error(f"This app refuses to serve: {exc}.", icon=":material/lock:")
        st.stop()
        raise  # unreachable: st.stop raises
    if user is not None:
        return user
    problem = st.session_state.pop("tapcore_oidc_problem", None)
    if problem:
        st.error(f"Signed in, but this identity cannot be used: {problem}")
        st.button("Sign out", on_click=st.logout, key="oidc_bad_logout")
        st.stop()
    sign_in_form()
    st.stop()
    raise AssertionError("unreachable")  # st.stop raises


def sign_in_form() -> None:
    """The only thing an unauthenticated visitor sees."""
    from tapcore.auth import SignInError, UserStore

    st.title("Sign in")
    st.write("This tapcore lab app is shared: sign in to see your movies, models and jobs.")
    providers = oidc_providers()
    if providers is not None:
        for name in providers or [None]:
            label = f"Sign in with {name.title()}" if name else "Sign in with your institution's account"
            if st.button(label, key=f"oidc_login_{name or 'default'}", type="primary"):
                st.login(name) if name else st.login()
    store = UserStore(home())
    if not store.has_password_accounts():
        return
    if providers is not None:
        st.caption("Or with a local account:")
    with st.form("signin_form"):
        name = st.text_input("User name", key="signin_name")
        password = st.text_input("Password", type="password", key="signin_password")
        go_in = st.form_submit_button("Sign in", type="primary")
    if go_in:
        try:
            user = store.verify(name, password)
        except SignInError as exc:
            audit.record(home(), (name or "?").strip().lower()[:64], "sign-in-failed", "session", "password")
            st.error(f"Not signed in: {exc}.")
            return
        st.session_state[USER_KEY] = (user.name, user.role)
        st.session_state["tapcore_signin_mode"] = "password"
        audit.record(home(), user, "sign-in", "session", "password")
        st.rerun()


def sign_out() -> None:
    """Forget this tab's sign-in (and end the identity provider's session for OIDC)."""
    got = st.session_state.pop(USER_KEY, None)
    st.session_state.pop("tapcore_signin_mode", None)
    if got:
        audit.record(home(), got[0], "sign-out", "session", "")
    if oidc_providers() is not None and _oidc_logged_in():
        st.logout()


def user_sidebar(user: User) -> None:
    """Who is signed in, and the sign-out button (nothing to sign out of in single-user mode)."""
    if user == LOCAL_ADMIN:
        st.caption("Single-user mode on this computer (no sign-in): you act as the local admin.")
        return
    st.caption(f"Signed in as **{user.name}**" + (" (admin)" if user.is_admin else ""))
    st.button("Sign out", key="sign_out", on_click=sign_out)


# -- verdicts ----------------------------------------------------------------------------------
def show_verdict(verdict: Verdict | None) -> None:
    """A verdict as a green / amber / red box (``tapcore.verdicts``)."""
    if verdict is None:
        return
    box = {"ok": st.success, "warn": st.warning, "bad": st.error}[verdict.level]
    box(verdict.text(), icon={"ok": ":material/check_circle:", "warn": ":material/warning:",
                              "bad": ":material/error:"}[verdict.level])


def job_verdict(job: Job) -> Verdict | None:
    """The verdict a finished job stored (None for jobs that are not done or have none)."""
    return stored_job_verdict(job.run_dir) if job.state == "done" else None


def state_words(job: Job) -> str:
    """The job's state in plain words; a done job whose result is not trustworthy says so."""
    words = STATE_WORDS.get(job.state, job.state)
    verdict = job_verdict(job)
    if verdict is not None and verdict.level != "ok":
        return f"{words}, but {verdict.subject + ' ' if verdict.subject else ''}{verdict.title}"
    return words


def finished_banner(job: Job, ok_text: str) -> None:
    """The end of a done job: green ``ok_text`` when its result can be trusted, else its verdict."""
    verdict = job_verdict(job)
    if verdict is None or verdict.level == "ok":
        st.success(ok_text + (f" {verdict.explanation}" if verdict is not None else ""))
        return
    lead = "Done, but the result should not be trusted." if verdict.level == "bad" else "Done, but with a caveat."
    box = st.error if verdict.level == "bad" else st.warning
    box(f"{lead} {verdict.text()}", icon=":material/error:" if verdict.level == "bad" else ":material/warning:")


# -- workspace and queue -----------------------------------------------------------------------
def keep_model_form(job: Job, label: str, default_name: str, key: str) -> None:
    """"Keep this run's model as NAME": a name field and a button that saves ``run:<job id>`` under it."""
    name = st.text_input(label, value=default_name, key=f"{key}_name")
    if st.button("Keep model", key=key):
        try:
            ref = workspace().save_model(f"run:{job.id}", name)
            st.success(f"Saved as {ref}.")
        except ValueError as exc:
            st.error(str(exc))


def workspace() -> Workspace:
    """The workspace as the signed-in user sees it (AccessDenied for anything not theirs or shared)."""
    return Workspace(home(), current_user())


def job_queue() -> JobQueue:
    """The queue as the signed-in user sees it."""
    return JobQueue(home(), current_user())


def record_download(kind: str, target: str, detail: str = "") -> None:
    """Audit one download (a ``download_button``'s on_click)."""
    audit.record(home(), current_user(), "download", kind, target, detail)


def share_toggle(label: str, shared: bool, key: str, on_change) -> None:
    """The "share with lab" switch of an item the user owns (read-only for the others)."""
    new = st.toggle(label, value=shared, key=key,
                    help="Shared items are visible to everyone in the lab, read-only: they cannot delete, "
                         "cancel or un-share them.")
    if new != shared:
        on_change(new)
        st.rerun()


def ensure_worker() -> None:
    """Start a local worker when none is alive (checked at most every 10 s per session)."""
    last = st.session_state.get("_worker_checked", 0.0)
    if time.time() - last < 10:
        return
    st.session_state["_worker_checked"] = time.time()
    from tapcore.jobs.worker import ensure_worker as _ensure

    _ensure(home())


def owner() -> str:
    """The name jobs are filed under: the signed-in user's."""
    return current_user().name


# -- cached data (keys include content hashes; shared by all users, no per-user state) ----------
@st.cache_data(max_entries=4, show_spinner=False)
def _load_movie(dataset_id: str, sha256: str, root: str) -> np.ndarray:  # noqa: ARG001 (sha256: cache key)
    return Workspace(root).load_movie(dataset_id)


@st.cache_data(max_entries=4, show_spinner=False)
def _load_masks(dataset_id: str, sha256: str, root: str) -> np.ndarray | None:  # noqa: ARG001
    return Workspace(root).load_masks(dataset_id)


def load_movie(info) -> np.ndarray:
    return _load_movie(info.id, info.sha256, str(info.path.parent.parent))


def load_masks(info) -> np.ndarray | None:
    return _load_masks(info.id, info.sha256 + str(info.meta.get("masks_sha256")), str(info.path.parent.parent))


# -- pickers -----------------------------------------------------------------------------------
def dataset_picker(label: str, key: str, need_masks: bool = False, help: str | None = None):
    """A select box over the workspace datasets; None (with a hint) when there are none."""
    ws = workspace()
    options = [d for d in ws.list_datasets() if d.has_masks or not need_masks]
    if not options:
        what = "a dataset with event masks" if need_masks else "a dataset"
        st.info(f"No {what} yet. Open the **Data** page and load the demo or upload a movie.")
        return None
    ids = [d.id for d in options]
    wanted = st.query_params.get(key)
    if wanted and wanted not in ids:
        st.warning(f"The dataset {wanted!r} named in this link is not available to you (it does not exist, is "
                   "another user's and not shared with the lab, or has no event masks); showing one of yours.")
    default = ids.index(wanted) if wanted in ids else (ids.index("demo") if "demo" in ids else 0)
    chosen = st.selectbox(label, ids, index=default, key=key, help=help,
                          format_func=lambda i: next(d.label() for d in options if d.id == i))
    st.query_params[key] = chosen  # the URL names the choice: a refreshed or shared tab shows the same
    return next(d for d in options if d.id == chosen)


def model_picker(label: str, key: str, kind: str, help: str | None = None) -> str | None:
    """A select box over model bundles of one kind; returns the model reference."""
    models = workspace().list_models(kind=kind)
    if not models:
        return None
    refs = [m.ref for m in models]
    labels = {m.ref: m.label() for m in models}
    wanted = st.query_params.get(key)
    if wanted and wanted not in refs:
        st.warning(f"The model {wanted!r} named in this link is not available to you (it does not exist, is "
                   "another user's and not shared with the lab, or is of another kind); showing one of yours.")
    default = refs.index(wanted) if wanted in refs else 0
    chosen = st.selectbox(label, refs, index=default, key=key, help=help, format_func=lambda r: labels[r])
    st.query_params[key] = chosen
    return chosen


# -- jobs --------------------------------------------------------------------------------------
def submit_job(kind: str, params: dict[str, Any], url_key: str) -> str:
    """Enqueue a job, remember its id in the URL, make sure a worker runs."""
    job_id = job_queue().submit({"kind": kind, "params": params}, owner=owner())
    st.query_params[url_key] = job_id
    ensure_worker()
    return job_id


def start_job(kind: str, params: dict[str, Any], url_key: str,
              queued: str = "Progress appears below; you can close this tab and come back.") -> str | None:
    """:func:`submit_job` with the outcome shown: the job id and ``queued``, or why it cannot start (None)."""
    try:
        job_id = submit_job(kind, params, url_key=url_key)
    except ValueError as exc:
        st.error(f"Cannot start: {exc}")
        return None
    st.success(f"Job {job_id} queued. {queued}")
    return job_id


def fmt_seconds(s: float | None) -> str:
    if s is None or not np.isfinite(s):
        return "-"
    s = int(round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def curves_figure(records: list[dict[str, Any]], keys: list[tuple[str, str]], title: str, y_title: str,
                  chance: tuple[float, str] | None = None, y_range: tuple[float, float] | None = None) -> go.Figure | None:
    """Line plot of metrics over (fractional) epochs; None when no record has any of the keys.

    ``chance``: (value, label) of a dashed line marking what guessing gives; ``y_range``: fixed axis
    range (e.g. 0..1 for accuracies; default from 0 to just above the largest value and the chance line).
    """
    fig = go.Figure()
    for key, name in keys:
        xs, ys = [], []
        for r in records:
            if r.get(key) is None:
                continue
            epoch = float(r.get("epoch") or 0)
            steps = r.get("steps") or 0
            x = epoch if r.get("kind") != "step" or not steps else epoch - 1 + float(r.get("step", 0)) / steps
            xs.append(x)
            ys.append(float(r[key]))
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers" if len(xs) < 30 else "lines", name=name))
    if not fig.data:
        return None
    if chance is not None:
        fig.add_hline(y=chance[0], line=dict(dash="dash", color="gray"), annotation_text=chance[1],
                      annotation_position="bottom right", annotation_font_color="gray")
    if y_range is None:
        top = max([max(t.y) for t in fig.data] + ([chance[0]] if chance else []))
        y_range = (0.0, float(top) * 1.1 if top > 0 else 1.0)
    fig.update_yaxes(range=list(y_range))
    fig.update_layout(title=title, xaxis_title="epoch", yaxis_title=y_title, height=300,
                      margin=dict(l=40, r=10, t=40, b=40), legend=dict(orientation="h", y=-0.25))
    return fig


def show_progress(job: Job) -> None:
    """Progress bar (epoch/step), elapsed time, ETA and live curves of one job."""
    records = read_metrics(job.run_dir / "metrics.jsonl")
    last = records[-1] if records else {}
    frac = 1.0 if job.state == "done" else (fraction_done(last) if last else 0.0)
    parts = []
    if last.get("epochs"):
        parts.append(f"epoch {last.get('epoch', 0)} of {last['epochs']}")
    if last.get("steps") and last.get("kind") == "step":
        parts.append(f"step {last.get('step', 0)} of {last['steps']}")
    stage = last.get("stage")
    words = state_words(job)
    label = f"{words[:1].upper() + words[1:]}" + (f" · {stage}" if stage else "") + \
        (f" · {', '.join(parts)}" if parts else "")
    st.progress(frac, text=label)
    # elapsed: the job's wall time; time left: from the current stage's own pace
    elapsed = ((job.ended or time.time()) - job.started) if job.started else last.get("elapsed_s")
    stage_elapsed = last.get("elapsed_s")
    eta = None
    if job.state == "running" and stage_elapsed and 0.0 < frac < 1.0:
        eta = float(stage_elapsed) * (1.0 - frac) / frac
    c1, c2, c3 = st.columns(3)
    c1.metric("Elapsed", fmt_seconds(elapsed))
    c2.metric("Time left (estimate)", fmt_seconds(eta) if job.state == "running" else ("0 s" if job.state == "done" else "-"))
    c3.metric("Done", f"{frac * 100:.0f} %")
    if job.state == "failed":
        st.error(f"The job failed: {job.error}")
        show_log(job, expanded=True)
    elif job.state == "cancelled":
        st.warning("The job was cancelled.")
    elif job.state == "interrupted":
        st.warning("The worker running this job stopped. A new worker resumes it from its last checkpoint.")
    tap = job.kind == "pretrain"  # TAP answers "forward or backward?": guessing gives 0.5 and ln 2
    figs = [
        curves_figure(records, [("train_loss", "training"), ("val_loss", "validation")], "Loss", "loss",
                      chance=(GUESS_LOSS, "guessing (0.693)") if tap else None),
        curves_figure(records, [("train_decorr", "training"), ("val_decorr", "validation")],
                      "Decorrelation loss", "loss"),
        curves_figure(records, [("train_acc", "training"), ("val_acc", "validation")], "Accuracy", "accuracy",
                      chance=(0.5, "chance (guessing)") if tap else None, y_range=(0.0, 1.0)),
    ]
    figs = [f for f in figs if f is not None]
    if figs:
        cols = st.columns(len(figs))
        for col, fig in zip(cols, figs):
            col.plotly_chart(fig, width="stretch")


def show_log(job: Job, expanded: bool = False, tail: int = 80) -> None:
    log = job.run_dir / "log.txt"
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else "(no log yet)"
    with st.expander("Log of this job", expanded=expanded):
        st.code("\n".join(text.splitlines()[-tail:]) or "(empty)", language=None)


def live_job(url_key: str, kinds: tuple[str, ...]) -> Job | None:
    """Show the job whose id is in the URL (``?<url_key>=<id>``), refreshing while it runs."""
    q = job_queue()
    job_id = st.query_params.get(url_key)
    recent = [j for j in q.list(limit=50) if j.kind in kinds]
    if not job_id and recent:
        job_id = recent[0].id
    if not job_id:
        return None
    try:
        job = q.find(job_id)
    except AccessDenied as exc:
        st.error(f"Not allowed: {exc}.", icon=":material/lock:")
        return None
    if job is None:
        st.warning(f"Job {job_id} is not in this workspace (it may have been removed).")
        return None
    active = job.state not in FINAL_STATES

    def _body() -> None:
        current = q.get(job_id)
        st.markdown(f"**Job** `{current.id}` · {current.kind} · submitted by {current.owner}")
        show_progress(current)
        mine = current.owner == current_user().name or current_user().is_admin
        if current.state not in FINAL_STATES and mine:
            if st.button("Cancel this job", key=f"cancel-{url_key}"):
                q.cancel(current.id)
                st.rerun()
        elif active:
            st.rerun()  # it just finished: redraw the whole page with its results

    st.fragment(_body, run_every=2.0 if active else None)()
    return q.get(job_id)


# -- figures -----------------------------------------------------------------------------------
def display_stride(shape: tuple[int, ...]) -> int:
    return max(1, int(np.ceil(max(shape[-2:]) / MAX_VIEW_PX)))


def frame_figure(frame: np.ndarray, *, stride: int = 1, height: int = 520, title: str | None = None) -> go.Figure:
    """A grayscale frame (percentile-stretched) as a plotly heatmap, y downwards, pixel axes."""
    f = frame[::stride, ::stride].astype(np.float32)
    lo, hi = np.percentile(f, [1.0, 99.8])
    f = np.clip((f - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    ys = np.arange(f.shape[0]) * stride
    xs = np.arange(f.shape[1]) * stride
    fig = go.Figure(go.Heatmap(z=f, x=xs, y=ys, colorscale="gray", showscale=False, hoverinfo="skip"))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", title="y (px)")
    fig.update_xaxes(title="x (px)", constrain="domain")
    fig.update_layout(height=height, margin=dict(l=40, r=10, t=30 if title else 10, b=40), title=title)
    return fig


def mask_events(mask_frame: np.ndarray) -> pd.DataFrame:
    """Centroids of the connected event regions of one mask frame: columns y, x, label, area."""
    from scipy import ndimage

    rows = []
    for value, name in EVENT_NAMES.items():
        lab, n = ndimage.label(mask_frame == value)
        if n == 0:
            continue
        centres = ndimage.center_of_mass(mask_frame == value, lab, range(1, n + 1))
        areas = ndimage.sum_labels(mask_frame == value, lab, range(1, n + 1))
        for (cy, cx), a in zip(centres, areas):
            rows.append({"y": cy, "x": cx, "label": value, "event": name, "area": int(a)})
    return pd.DataFrame(rows, columns=["y", "x", "label", "event", "area"])


def add_mask_overlay(fig: go.Figure, mask_frame: np.ndarray, stride: int = 1) -> None:
    """Tint event pixels and mark each event region with a labelled marker."""
    m = mask_frame[::stride, ::stride]
    if m.any():
        z = np.where(m > 0, m.astype(float), np.nan)
        fig.add_trace(go.Heatmap(
            z=z, x=np.arange(m.shape[1]) * stride, y=np.arange(m.shape[0]) * stride, zmin=1, zmax=2,
            colorscale=[[0, EVENT_COLORS[1]], [0.5, EVENT_COLORS[1]], [0.5, EVENT_COLORS[2]], [1, EVENT_COLORS[2]]],
            opacity=0.45, showscale=False, hoverinfo="skip"))
    ev = mask_events(mask_frame)
    for value, name in EVENT_NAMES.items():
        sub = ev[ev.label == value]
        if len(sub):
            fig.add_trace(go.Scatter(x=sub.x, y=sub.y, mode="markers", name=f"{name} (ground truth)",
                                     marker=dict(symbol="circle-open", size=18, color=EVENT_COLORS[value], line=dict(width=2)),
                                     hovertemplate=f"{name}<br>x=%{{x:.0f}} y=%{{y:.0f}}<extra></extra>"))


def per_class_table(test: dict[str, Any], class_names: list[str] | None = None) -> pd.DataFrame:
    """Precision, recall, F1 and support per class from a bundle's test metrics (its confusion matrix)."""
    from tapcore.metrics import per_class_precision_recall

    cm = np.asarray(test.get("confusion_matrix") or [], dtype=np.int64)
    if cm.size == 0:
        return pd.DataFrame()
    names = class_names or test.get("class_names") or [str(k) for k in range(cm.shape[0])]
    return per_class_precision_recall(cm, names)
