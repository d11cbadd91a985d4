"""Jobs: the shared queue (who, what, state, queue position, estimated start / finish, device), cancel,
logs, workers, and each GPU's memory and utilisation."""

import pandas as pd
import streamlit as st

from pages._ui import finished_banner, page_setup, STATE_WORDS, job_queue, show_log, show_progress, state_words
from tapcore.jobs.gpus import read_gpus
from tapcore.jobs.queue import ACTIVE_STATES
from tapcore.jobs.schedule import plan

page_setup()

st.title("Jobs")
st.write(
    "Training and prediction run as jobs, one worker per GPU (or one on the CPU), each job on one device. "
    "Waiting jobs are shared fairly: the next free GPU goes to the person with the fewest jobs running. "
    "Jobs keep running when you close the browser. A job whose worker stopped resumes from its "
    "last checkpoint when a worker starts again."
)

q = job_queue()


@st.fragment(run_every=3.0)
def queue_view() -> None:
    jobs = q.list(limit=200)
    workers = q.alive_workers()
    busy = [w for w in workers if w.job]
    st.caption(f"{len(workers)} worker(s) running" + (f" ({', '.join(w.device for w in workers)}), {len(busy)} busy"
                                                      if workers else
                                                      " - they start automatically when a job is queued"))
    if not jobs:
        st.info("No jobs yet. Start one on the Pretrain, Event head or Predict page.")
        return
    planned = {p.job: p.as_row() for p in plan(q)}  # queue position, estimated start / finish
    rows = []
    for j in jobs:
        r = j.as_row()
        r["state"] = state_words(j)  # "finished, but TAP features at chance" for a useless model
        p = planned.get(j.id, {})
        r["queue position"] = p.get("queue position", "")
        r["est. start (UTC)"] = p.get("est. start (UTC)", "")
        r["est. finish (UTC)"] = p.get("est. finish (UTC)", "")
        rows.append(r)
    order = ["job", "kind", "owner", "state", "queue position", "progress", "device", "est. start (UTC)",
             "est. finish (UTC)"]
    df = pd.DataFrame(rows)
    df = df[order + [c for c in df.columns if c not in order]]
    df = df.rename(columns={"progress": "progress (%)", "created": "submitted (UTC)",
                            "started": "started (UTC)", "ended": "ended (UTC)"})
    st.dataframe(df, hide_index=True, width="stretch",
                 column_config={"progress (%)": st.column_config.ProgressColumn(min_value=0, max_value=100,
                                                                               format="%.0f%%")})
    if planned:
        st.caption("Estimated times come from the jobs this workspace has finished (same kind, same amount of "
                   "work); 'unknown' until one of that kind has finished.")


@st.fragment(run_every=5.0)
def gpu_view() -> None:
    report = read_gpus()
    if not report.available:
        st.caption(report.message[:1].upper() + report.message[1:] + "; jobs run on the CPU.", help=report.reason)
        return
    st.dataframe(pd.DataFrame([g.as_row() for g in report.gpus]), hide_index=True, width="stretch",
                 column_config={"memory used (%)": st.column_config.ProgressColumn(min_value=0, max_value=100,
                                                                                   format="%.0f%%"),
                                "utilisation (%)": st.column_config.ProgressColumn(min_value=0, max_value=100,
                                                                                   format="%.0f%%")})
    st.caption(f"NVIDIA driver {report.driver}; refreshed every 5 s.")


queue_view()
st.subheader("GPUs")
gpu_view()

jobs = q.list(limit=200)
if jobs:
    st.header("One job")
    ids = [j.id for j in jobs]
    wanted = st.query_params.get("job")
    job_id = st.selectbox("Job", ids, index=ids.index(wanted) if wanted in ids else 0, key="jobs_pick")
    st.query_params["job"] = job_id
    job = q.get(job_id)
    show_progress(job)
    if job.state == "done":
        finished_banner(job, "Finished.")
    with st.expander("Job spec"):
        st.json(job.spec)
    show_log(job, expanded=job.state == "failed")
    if job.state in ACTIVE_STATES:
        if st.button("Cancel this job", key="jobs_cancel", type="primary"):
            state = q.cancel(job.id)
            st.success(f"Cancel requested; the job is now {STATE_WORDS.get(state, state)}.")
            st.rerun()
