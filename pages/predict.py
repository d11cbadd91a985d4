"""Predict: find events in a whole movie; heatmap viewer, event table, downloads."""

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from pages._ui import (page_setup, EVENT_COLORS, dataset_picker, display_stride, frame_figure, job_queue, live_job, load_movie,
                       model_picker, submit_job, workspace)
from tapcore.workspace import DEMO_DATASET_ID

page_setup()

# Movies up to this many pixels (frames x height x width) are predicted right here, without a job.
DIRECT_LIMIT_PX = 8_000_000
# Events are listed down to this probability; the threshold slider filters from there.
LIST_FLOOR = 0.05

st.title("Predict")
st.write(
    "Find divisions (and deaths) in a whole movie with a trained event model. The viewer shows, "
    "for each pair of consecutive frames, how likely an event is at every place (the heatmap), "
    "and marks the events found above the threshold you choose."
)

ws = workspace()
if not ws.list_datasets():
    with st.spinner("Preparing the demo movie..."):
        ws.create_demo()
    st.toast("Loaded the synthetic demo movie so that you can try everything at once.")

dataset = dataset_picker("Movie", key="pred_dataset")
model_ref = model_picker("Event model", key="pred_model", kind="event_head",
                         help="'demo' is a small model shipped with the app, trained on the synthetic demo movie.")
if dataset is None or model_ref is None:
    if model_ref is None:
        st.info("No event model available: train one on the **Event head** page.")
    st.stop()
if dataset.id == DEMO_DATASET_ID and model_ref == "shipped:demo":
    st.caption("You are looking at the demo: a synthetic movie and the small model shipped with the app. "
               "Add your own movie on the **Data** page.")
model_path = ws.resolve_model(model_ref)
n_px = int(np.prod(dataset.shape))


def prediction_key(model_path: Path) -> str:
    """Identity of a prediction: movie content, model weights, calibration and listing floor."""
    import hashlib

    h = hashlib.sha256(dataset.sha256.encode())
    for name in ("weights.pt", "calibration.json", "config.json"):
        f = model_path / name
        h.update(f.read_bytes() if f.is_file() else b"-")
    h.update(str(LIST_FLOOR).encode())
    return h.hexdigest()[:24]


def predict_direct(out: Path) -> None:
    """Predict here (small movies) with a progress bar; the result is kept on disk under
    ``$TAPCORE_HOME/predictions/<key>/`` for every user and every later visit."""
    import shutil
    import tempfile

    from tapcore.predict import PredictConfig, predict_movie, write_prediction

    bar = st.progress(0.0, text="Finding events in the movie (once; the result is kept)...")

    def progress(rec: dict) -> None:
        if rec.get("steps"):
            frac = min(float(rec.get("step", 0)) / float(rec["steps"]), 1.0)
            bar.progress(frac, text=f"Finding events: frame {rec.get('step', 0)} of {rec['steps']} "
                                    "(once; the result is kept)")

    movie = ws.load_movie(dataset.id)
    pred = predict_movie(movie, model_path, PredictConfig(threshold=LIST_FLOOR, device="cpu"), progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    write_prediction(pred, tmp)
    if out.exists():  # another session finished the same prediction first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(out)
    bar.empty()


@st.cache_data(max_entries=4, show_spinner=False)
def load_prediction(out_dir: str, stamp: float):  # noqa: ARG001 (stamp: cache key)
    """Maps, events, per-frame table and record of a written prediction (read once, shared)."""
    import tifffile

    out = Path(out_dir)
    record = json.loads((out / "prediction.json").read_text()) if (out / "prediction.json").is_file() else {}
    return (np.asarray(tifffile.imread(out / "heatmaps.tif")), pd.read_csv(out / "events.csv"),
            pd.read_csv(out / "per_frame.csv"), record)


result = None
mtime = (model_path / "weights.pt").stat().st_mtime if (model_path / "weights.pt").exists() else 0.0
if n_px <= DIRECT_LIMIT_PX:
    out_dir = ws.root / "predictions" / prediction_key(model_path)
    if not (out_dir / "events.csv").is_file():
        try:
            predict_direct(out_dir)
        except ValueError as exc:
            st.error(f"Cannot predict: {exc}")
            st.stop()
    result = load_prediction(str(out_dir), (out_dir / "events.csv").stat().st_mtime)
    pred_dir = out_dir
    source_note = "computed in the app"
else:
    st.write(f"This movie is large ({n_px / 1e6:.0f} million pixels), so the prediction runs as a job on the "
             "GPU worker.")
    if st.button("Start prediction", type="primary", key="pred_start"):
        submit_job("predict", {"dataset": dataset.id, "model": model_ref, "config": {"threshold": LIST_FLOOR}},
                   url_key="pred_job")
    job = live_job("pred_job", ("predict",))
    if job is None or job.state != "done":
        st.stop()
    if job.spec["params"].get("dataset") != dataset.id or job.spec["params"].get("model") != model_ref:
        st.info("The last prediction job was for another movie or model: start a new one.")
        st.stop()
    pred_dir = job.run_dir / "prediction"
    result = load_prediction(str(pred_dir), job.ended or 0.0)
    source_note = f"from job {job.id}"

prob_maps, events, per_frame_all, pred_record = result
movie = load_movie(dataset)

st.header("Heatmap viewer")
left, right = st.columns([3, 1])
with right:
    pair = st.slider("Frame pair (t → t+1)", 0, prob_maps.shape[0] - 1, 0, key="pred_frame",
                     help="The heatmap for frame t covers the change from frame t to frame t+1.")
    threshold = st.slider("Threshold (event probability)", LIST_FLOOR, 0.99, 0.5, step=0.01, key="pred_threshold",
                          help="Events with a probability at or above this are counted and marked. Higher = fewer "
                               "false alarms, more missed events.")
    show_heat = st.checkbox("Show heatmap", value=True, key="pred_show_heat")
    opacity = st.slider("Heatmap opacity", 0.1, 1.0, 0.5, key="pred_opacity")
    kept = events[events["probability"] >= threshold]
    here = kept[kept["frame"] == pair]
    st.metric("Events at this threshold", len(kept))
    st.metric("In this frame pair", len(here))
    st.caption(f"Prediction {source_note}.")
with left:
    stride = display_stride(movie.shape)
    fig = frame_figure(movie[pair], stride=stride, title=f"{dataset.name}: frame {pair} → {pair + 1}")
    if show_heat:
        hm = prob_maps[pair][::stride, ::stride]
        # transparent where events are unlikely, then yellow -> red, more opaque with probability
        a = float(opacity)
        scale = [[0.0, "rgba(255,255,0,0)"], [0.1, f"rgba(255,255,0,{0.15 * a:.3f})"],
                 [0.5, f"rgba(255,140,0,{0.6 * a:.3f})"], [1.0, f"rgba(220,0,0,{a:.3f})"]]
        fig.add_trace(go.Heatmap(
            z=hm, x=np.arange(hm.shape[1]) * stride, y=np.arange(hm.shape[0]) * stride, zmin=0, zmax=1,
            colorscale=scale, colorbar=dict(title="event<br>probability", len=0.8),
            hovertemplate="x=%{x} y=%{y}<br>p=%{z:.2f}<extra></extra>"))
    if len(here):
        classes = here["class"].astype(str)
        fig.add_trace(go.Scatter(
            x=here["x"], y=here["y"], mode="markers+text", name="detected event",
            marker=dict(symbol="circle-open", size=26, color="#00e5ff", line=dict(width=3)),
            text=[f"{p:.2f}" for p in here["probability"]], textposition="top center",
            textfont=dict(color="#00e5ff"), customdata=classes,
            hovertemplate="%{customdata}<br>p=%{text}<br>x=%{x:.0f} y=%{y:.0f}<extra></extra>"))
    fig.update_layout(showlegend=False)
    st.plotly_chart(fig, width="stretch", key="pred_fig")

st.subheader("Events per frame")
if not len(kept):
    st.caption("No events at this threshold: lower it to see weaker candidates.")
counts = kept.groupby("frame").size().reindex(range(prob_maps.shape[0]), fill_value=0)
per_frame = per_frame_all.copy()
per_frame["n_events"] = per_frame["frame"].map(counts).fillna(0).astype(int)  # at the chosen threshold
bar = go.Figure(go.Bar(x=counts.index, y=counts.values, marker_color=EVENT_COLORS[1]))
bar.update_layout(xaxis_title="frame t (event between t and t+1)", yaxis_title="events", height=250,
                  margin=dict(l=10, r=10, t=10, b=40))
st.plotly_chart(bar, width="stretch", key="pred_counts")

st.subheader("Event table")
st.caption("One row per detected event: frame pair, position in pixels (y down, x right), "
           "calibrated probability and class.")
st.dataframe(kept.reset_index(drop=True), width="stretch", height=280)

st.subheader("Downloads")
d1, d2, d3, d4, d5 = st.columns(5)
d1.download_button("Events (CSV)", kept.to_csv(index=False).encode(), file_name=f"{dataset.id}_events.csv",
                   mime="text/csv", key="dl_events", help="Events at the chosen threshold, calibrated probabilities.")
d2.download_button("Per-frame summary (CSV)", per_frame.to_csv(index=False).encode(),
                   file_name=f"{dataset.id}_per_frame.csv", mime="text/csv", key="dl_per_frame")


@st.cache_data(max_entries=4, show_spinner=False)
def bundle_zip(model_path: str, model_mtime: float) -> bytes:  # noqa: ARG001
    buf = io.BytesIO()
    root = Path(model_path)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(root.rglob("*")):
            if f.is_file() and "checkpoint" not in f.parts:
                z.write(f, f.relative_to(root))
    return buf.getvalue()


d3.download_button("Heatmaps (TIFF)", (pred_dir / "heatmaps.tif").read_bytes(),
                   file_name=f"{dataset.id}_heatmaps.tif", mime="image/tiff", key="dl_heatmaps",
                   help="One 32-bit float page per frame pair t → t+1: the calibrated event probability at each pixel.")
d4.download_button("Model (zip)", bundle_zip(str(model_path), mtime), file_name=f"{model_path.name}_model.zip",
                   mime="application/zip", key="dl_model")


def run_record() -> dict:
    read = lambda name: json.loads((model_path / name).read_text()) if (model_path / name).is_file() else None  # noqa: E731
    from tapcore.utils import environment_info

    return {
        "dataset": dataset.meta,
        "model": {"ref": model_ref, "config": read("config.json"), "manifest": read("manifest.json"),
                  "calibration": read("calibration.json"), "test_metrics": (read("metrics.json") or {}).get("test")},
        "prediction": {"threshold": threshold, "events": int(len(kept)), "source": source_note,
                       "record": pred_record},
        "environment": environment_info("cpu"),
    }


d5.download_button("Run record (JSON)", json.dumps(run_record(), indent=2, default=str).encode(),
                   file_name=f"{dataset.id}_run_record.json", mime="application/json", key="dl_record",
                   help="Model config, seed, data hash, versions, device and metrics: what is needed to reproduce this.")
