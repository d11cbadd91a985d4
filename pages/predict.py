"""Predict: find events in a whole movie; heatmap viewer, event table, downloads."""

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from pages._ui import (EVENT_COLORS, dataset_picker, display_stride, frame_figure, job_queue, live_job, load_movie,
                       model_picker, submit_job, workspace)
from tapcore.workspace import DEMO_DATASET_ID

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


@st.cache_data(max_entries=8, show_spinner=False)
def predict_direct(dataset_id: str, sha256: str, model_path: str, model_mtime: float, floor: float):  # noqa: ARG001
    """Run the prediction in this process (small movies); results are plain arrays/tables, shared by all users."""
    from tapcore.predict import PredictConfig, predict_movie

    movie = ws.load_movie(dataset_id)
    pred = predict_movie(movie, model_path, PredictConfig(threshold=floor, device="cpu"))
    return pred.prob_maps, pred.events, pred.per_frame, pred.record


def load_job_prediction(run_dir: Path):
    import tifffile

    out = run_dir / "prediction"
    record = json.loads((out / "prediction.json").read_text()) if (out / "prediction.json").is_file() else {}
    return (np.asarray(tifffile.imread(out / "heatmaps.tif")), pd.read_csv(out / "events.csv"),
            pd.read_csv(out / "per_frame.csv"), record)


result = None
mtime = (model_path / "weights.pt").stat().st_mtime if (model_path / "weights.pt").exists() else 0.0
if n_px <= DIRECT_LIMIT_PX:
    try:
        with st.spinner("Finding events in the movie (a few seconds on a CPU)..."):
            result = predict_direct(dataset.id, dataset.sha256, str(model_path), mtime, LIST_FLOOR)
    except ValueError as exc:
        st.error(f"Cannot predict: {exc}")
        st.stop()
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
    result = load_job_prediction(job.run_dir)
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
        fig.add_trace(go.Heatmap(
            z=np.where(hm >= LIST_FLOOR, hm, np.nan), x=np.arange(hm.shape[1]) * stride,
            y=np.arange(hm.shape[0]) * stride, zmin=0, zmax=1, colorscale="Inferno", opacity=opacity,
            colorbar=dict(title="event<br>probability", len=0.8), hovertemplate="p=%{z:.2f}<extra></extra>"))
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
def heatmap_tiff(dataset_id: str, model_path: str, model_mtime: float, maps: np.ndarray) -> bytes:  # noqa: ARG001
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, (np.clip(maps, 0, 1) * 65535).astype(np.uint16), photometric="minisblack",
                     metadata={"axes": "TYX"})
    return buf.getvalue()


@st.cache_data(max_entries=4, show_spinner=False)
def bundle_zip(model_path: str, model_mtime: float) -> bytes:  # noqa: ARG001
    buf = io.BytesIO()
    root = Path(model_path)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(root.rglob("*")):
            if f.is_file() and "checkpoint" not in f.parts:
                z.write(f, f.relative_to(root))
    return buf.getvalue()


d3.download_button("Heatmaps (TIFF)", heatmap_tiff(dataset.id, str(model_path), mtime, prob_maps),
                   file_name=f"{dataset.id}_heatmaps.tif", mime="image/tiff", key="dl_heatmaps",
                   help="One 16-bit page per frame pair; probability = value / 65535.")
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
