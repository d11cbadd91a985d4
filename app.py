"""tapcore lab app: find cell divisions and deaths in live-cell movies, in the browser.

Start it with ``streamlit run app.py``. All state lives in the workspace folder
(``$TAPCORE_HOME``, default ``./workspace``); sign-in and ownership: ``tapcore.auth``,
``tapcore.access`` (one gate here, before any page runs); training runs in a separate worker process that the
app starts when none is running (or run ``tapcore worker`` yourself, one per GPU).
"""

from tapcore.runtime import configure_process

configure_process()  # first: torch's CPU allocation options, before anything loads torch

import streamlit as st  # noqa: E402

from tapcore.utils import apply_umask_from_env

# $TAPCORE_UMASK (0002 in the container image): files the app and its workers write stay readable by
# the lab's group (an entry-point setting, not an import side effect)
apply_umask_from_env()

st.set_page_config(page_title="tapcore · cell events", page_icon=":material/biotech:", layout="wide")

PAGES = [
    st.Page("pages/data.py", title="Data", icon=":material/movie:", url_path="data"),
    st.Page("pages/pretrain.py", title="Pretrain", icon=":material/model_training:", url_path="pretrain"),
    st.Page("pages/event_head.py", title="Event head", icon=":material/target:", url_path="event_head"),
    st.Page("pages/evaluate.py", title="Evaluate", icon=":material/fact_check:", url_path="evaluate"),
    st.Page("pages/explain.py", title="Explain", icon=":material/visibility:", url_path="explain"),
    # the app opens on Predict ("/"); Streamlit ignores a default page's url_path, so a hidden twin
    # serves the deep link /predict (without it, /predict answers "Page not found")
    st.Page("pages/predict.py", title="Predict", icon=":material/insights:", url_path="home", default=True),
    st.Page("pages/jobs.py", title="Jobs", icon=":material/list_alt:", url_path="jobs"),
    st.Page("pages/predict.py", title="Predict", icon=":material/insights:", url_path="predict", visibility="hidden"),
]

from pages._ui import ensure_worker, require_user, signed_in_user, user_sidebar, workspace  # noqa: E402
from tapcore.access import AccessDenied  # noqa: E402
from tapcore.auth import SignInRequired  # noqa: E402

# one gate for every page: nobody signed in -> only the sign-in form (no page list, no data)
try:
    user = signed_in_user()
except SignInRequired:
    user = None
if user is not None and user.is_admin:
    PAGES.insert(-1, st.Page("pages/audit.py", title="Audit", icon=":material/policy:", url_path="audit"))
page = st.navigation(PAGES, position="sidebar" if user is not None else "hidden")
user = require_user()  # draws the sign-in form (or the refusal) and stops when nobody is signed in

with st.sidebar:
    user_sidebar(user)
    st.caption(f"Workspace: `{workspace().root}`")

ensure_worker()
try:
    page.run()
except AccessDenied as exc:  # a guessed id in the URL, a stale link: say so, never show a traceback
    st.error(f"Not allowed: {exc}.", icon=":material/lock:")
