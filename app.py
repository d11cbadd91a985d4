"""tapcore lab app: find cell divisions and deaths in live-cell movies, in the browser.

Start it with ``streamlit run app.py``. All state lives in the workspace folder
(``$TAPCORE_HOME``, default ``./workspace``); training runs in a separate worker process that the
app starts when none is running (or run ``tapcore worker`` yourself, one per GPU).
"""

from tapcore.runtime import configure_process

configure_process()  # first: torch's CPU allocation options, before anything loads torch

import streamlit as st  # noqa: E402

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

page = st.navigation(PAGES)

from pages._ui import ensure_worker, workspace  # noqa: E402  (after set_page_config)

if "owner" not in st.session_state:
    st.session_state["owner"] = "lab"
with st.sidebar:
    st.text_input("Your name", key="owner", help="Shown next to the jobs you start, so colleagues know whose they are.")
    st.caption(f"Workspace: `{workspace().root}`")

ensure_worker()
page.run()
