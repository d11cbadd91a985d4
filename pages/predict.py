"""Predict: find events in a whole movie; heatmap viewer, event table, downloads."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from pages._ui import (page_setup, EVENT_COLORS, dataset_picker, display_stride, frame_figure, job_queue, live_job, load_movie,
                       model_picker, record_download, show_verdict, submit_job, workspace)
from tapcore.bundle import bundle_zip
from tapcore.predict import PredictConfig, prediction_key, read_prediction, run_record, stored_prediction
from tapcore.utils import read_json
from tapcore.verdicts import Verdict, bundle_verdicts, prediction_shift_verdict, worst
from tapcore.workspace import DEMO_DATASET_ID

page_setup()

# Movies up to this many pixels (frames x height x width) are predicted right here, without a job.
DIRECT_LIMIT_PX = 8_000_000
# Events are listed down to this probability; the threshold slider filters from there.
LIST_FLOOR = 0.05
# Prediction in the app: events listed down to LIST_FLOOR, on the CPU (the GPU belongs to the worker).
DIRECT_CONFIG = PredictConfig(threshold=LIST_FLOOR, device="cpu")
# Marker colours per event class (events.csv "class"): division orange, death red, generic event cyan.
CLASS_COLORS = {"division": EVENT_COLORS[1], "death": EVENT_COLORS[2], "event": "#00e5ff"}

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


def predict_direct(store: Path) -> Path:
    """Predict here (small movies) with a progress bar; the result is kept on disk under
    ``$TAPCORE_HOME/predictions/<key>/`` for every user and every later visit."""
    bar = st.progress(0.0, text="Finding events in the movie (once; the result is kept)...")

    def progress(rec: dict) -> None:
        if rec.get("steps"):
            frac = min(float(rec.get("step", 0)) / float(rec["steps"]), 1.0)
            bar.progress(frac, text=f"Finding events: frame {rec.get('step', 0)} of {rec['steps']} "
                                    "(once; the result is kept)")

    out = stored_prediction(store, ws.load_movie(dataset.id), dataset.sha256, model_path, DIRECT_CONFIG, progress)
    bar.empty()
    return out


@st.cache_data(max_entries=4, show_spinner=False)
def load_prediction(out_dir: str, stamp: float):  # noqa: ARG001 (stamp: cache key)
    """Maps, events, per-frame table and record of a written prediction (read once, shared)."""
    pred = read_prediction(out_dir)
    return pred.prob_maps, pred.events, pred.per_frame, pred.record


result = None
mtime = (model_path / "weights.pt").stat().st_mtime if (model_path / "weights.pt").exists() else 0.0
if n_px <= DIRECT_LIMIT_PX:
    out_dir = ws.prediction_dir(dataset.id, prediction_key(dataset.sha256, model_path, DIRECT_CONFIG))
    if not (out_dir / "events.csv").is_file():
        try:
            out_dir = predict_direct(ws.root / "predictions")
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

# -- can these events be trusted? ---------------------------------------------------------------
model_verdict = worst(bundle_verdicts(model_path))
if pred_record.get("verdicts"):
    shift_verdict = worst(Verdict.from_dict(v) for v in pred_record["verdicts"])
else:  # a prediction written before movies were compared with the training movie
    manifest = read_json(model_path / "manifest.json") if (model_path / "manifest.json").is_file() else {}
    shift_verdict = prediction_shift_verdict(manifest, movie)
show_verdict(model_verdict)
show_verdict(shift_verdict)

# -- annotated events of this movie, when it has any: the prediction checks itself ---------------
TRUTH_HELP = ("Matched one-to-one: a detected event counts as found when an annotated event lies within "
              "{radius:g} px and 1 frame of it.")


@st.cache_data(max_entries=8, show_spinner=False)
def load_truth(dataset_dir: str, stamp: str):  # noqa: ARG001 (stamp: cache key)
    """The dataset's annotated events: its event table (synthetic / CTC lineage) when it has one, else
    the events in its masks; read by the same function as ``tapcore evaluate-events``."""
    from tapcore.evaluate import load_truth as _load

    folder = Path(dataset_dir)
    if (folder / "events.csv").is_file():
        table, _ = _load(table=folder / "events.csv")
        return table, "--truth", str(folder / "events.csv"), "its event table"
    table, _ = _load(masks=folder / "masks.tif")
    return table, "--masks", str(folder / "masks.tif"), "its event masks"


@st.cache_data(max_entries=8, show_spinner=False)
def pr_curve(pred_dir: str, stamp: float, truth: pd.DataFrame, thresholds: tuple[float, ...]) -> pd.DataFrame:  # noqa: ARG001
    from tapcore.evaluate import threshold_curve

    return threshold_curve(pd.read_csv(Path(pred_dir) / "events.csv"), truth, list(thresholds))


truth = None
if dataset.has_masks or (dataset.path / "events.csv").is_file():
    try:
        truth, truth_flag, truth_file, truth_words = load_truth(str(dataset.path), dataset.sha256 + str(
            dataset.meta.get("masks_sha256")))
    except ValueError as exc:
        st.warning(f"The annotation of this movie cannot be read, so the events are not checked: {exc}")

st.header("Heatmap viewer")
left, right = st.columns([3, 1])
with right:
    pair = st.slider("Frame pair (t → t+1)", 0, prob_maps.shape[0] - 1, 0, key="pred_frame",
                     help="The heatmap for frame t covers the change from frame t to frame t+1.")
    threshold = st.slider("Threshold (event probability)", LIST_FLOOR, 0.99, 0.5, step=0.01, key="pred_threshold",
                          help="Events with a probability at or above this are counted and marked, and the heatmap "
                               "shows only places at or above it. Higher = fewer false alarms, more missed events. "
                               "The trade-off curve below the viewer shows what each threshold gives.")
    show_heat = st.checkbox("Show heatmap", value=True, key="pred_show_heat",
                            help="Colours the places whose event probability is at least the threshold; below it "
                                 "the movie shows through unchanged.")
    opacity = st.slider("Heatmap opacity", 0.1, 1.0, 0.6, key="pred_opacity")
    show_truth = truth is not None and st.checkbox("Show annotated events", value=True, key="pred_show_truth",
                                                   help="Squares: the events marked in this movie's annotation.")
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
        # transparent below the threshold: only the places that count as events are coloured
        shown = np.where(hm >= threshold, hm, np.nan)
        fig.add_trace(go.Heatmap(
            z=shown, x=np.arange(hm.shape[1]) * stride, y=np.arange(hm.shape[0]) * stride, zmin=threshold, zmax=1.0,
            colorscale="YlOrRd", opacity=float(opacity), name="event probability",
            colorbar=dict(title=dict(text=f"event<br>probability<br>(shown ≥ {threshold:.2f})"), len=0.8, x=1.02),
            hovertemplate="x=%{x} y=%{y}<br>p=%{z:.2f}<extra></extra>"))
    if show_truth:
        first = truth["frame"].to_numpy()
        last = truth["last_frame"].to_numpy() if "last_frame" in truth.columns else first
        near = truth[(first <= pair + 1) & (last >= pair)]  # annotated events spanning frame t or t+1
        if "role" in near.columns:
            near = near[near["role"] == "parent"]
        kinds = near["kind"].astype(str) if "kind" in near.columns else pd.Series("event", index=near.index)
        for kind in sorted(set(kinds)):
            sub = near[kinds == kind]
            color = {"division": EVENT_COLORS[1], "death": EVENT_COLORS[2]}.get(kind, "#00e5ff")
            fig.add_trace(go.Scatter(x=sub["x"], y=sub["y"], mode="markers", name=f"{kind} (annotated)",
                                     marker=dict(symbol="square-open", size=30, color=color, line=dict(width=2)),
                                     hovertemplate=f"annotated {kind}<br>x=%{{x:.0f}} y=%{{y:.0f}}<extra></extra>"))
    for cls in sorted(set(here["class"].astype(str))):
        sub = here[here["class"].astype(str) == cls]
        color = CLASS_COLORS.get(cls, "#00e5ff")
        fig.add_trace(go.Scatter(
            x=sub["x"], y=sub["y"], mode="markers+text", name=f"{cls} (detected)",
            marker=dict(symbol="circle-open", size=26, color=color, line=dict(width=3)),
            text=[f"{p:.2f}" for p in sub["probability"]], textposition="top center",
            textfont=dict(color=color),
            hovertemplate=f"detected {cls}<br>p=%{{text}}<br>x=%{{x:.0f}} y=%{{y:.0f}}<extra></extra>"))
    fig.update_layout(showlegend=True, legend=dict(orientation="h", y=-0.12, x=0))
    st.plotly_chart(fig, width="stretch", key="pred_fig")
    st.caption("Circles: events detected at this threshold (number: probability). Colours: orange division, "
               "red death, cyan 'event' for models that do not tell them apart.")

# -- the threshold: what each choice gives ------------------------------------------------------
st.subheader("Threshold: precision and recall")
thresholds = tuple(float(t) for t in np.round(np.arange(LIST_FLOOR, 0.99 + 1e-9, 0.01), 2))
curve_fig = go.Figure()
if truth is not None:
    from tapcore.evaluate import DEFAULT_RADIUS, match_events

    check = match_events(kept, truth, radius=DEFAULT_RADIUS, frame_tolerance=1)
    c1, c2, c3, c4 = st.columns(4)
    fmt = lambda x: "-" if x != x else f"{x:.2f}"  # noqa: E731  (NaN -> "-")
    c1.metric("Precision", fmt(check.precision), help="Of the detected events, the share that match an annotated one.")
    c2.metric("Recall", fmt(check.recall), help="Of the annotated events, the share that were detected.")
    c3.metric("F1", fmt(check.f1), help="One number for both: 2·precision·recall / (precision + recall).")
    c4.metric("Found / false alarms / missed", f"{check.tp} / {check.fp} / {check.fn}")
    verdict_f1 = check.f1 if check.f1 == check.f1 else 0.0
    st.caption(f"Checked against {truth_words} ({check.tp + check.fn} annotated events) at threshold "
               f"{threshold:.2f}. " + TRUTH_HELP.format(radius=DEFAULT_RADIUS) + " The same numbers come from "
               f"`tapcore evaluate-events {dataset.id}_events.csv {truth_flag} {truth_file}` on the events "
               "downloaded below.")
    if check.tp + check.fp > 0 and check.precision < 0.5:
        st.warning(f"Most detections at this threshold are false alarms ({check.fp} of {check.tp + check.fp}). "
                   "Raise the threshold (see the curve), or train the event head better before counting events.")
    curve = pr_curve(str(pred_dir), float((pred_dir / "events.csv").stat().st_mtime), truth, thresholds)
    for col, name, color in (("precision", "precision", "#1f77b4"), ("recall", "recall", "#ff7f0e"),
                             ("f1", "F1", "#2ca02c")):
        curve_fig.add_trace(go.Scatter(x=curve["threshold"], y=curve[col], mode="lines", name=name,
                                       line=dict(color=color)))
    curve_fig.update_layout(yaxis_title="score (measured against the annotation)")
else:
    probs = events["probability"].to_numpy()
    counts_t = [(probs >= t).sum() for t in thresholds]
    expected = [float(probs[probs >= t].mean()) if (probs >= t).any() else np.nan for t in thresholds]
    curve_fig.add_trace(go.Scatter(x=thresholds, y=expected, mode="lines", name="expected precision"))
    curve_fig.add_trace(go.Scatter(x=thresholds, y=counts_t, mode="lines", name="events", yaxis="y2",
                                   line=dict(dash="dot")))
    curve_fig.update_layout(yaxis_title="expected precision", yaxis2=dict(title="events", overlaying="y",
                                                                          side="right", rangemode="tozero"))
    st.caption("This movie has no annotation, so precision and recall cannot be measured. The curve shows how "
               "many events each threshold keeps and the precision their calibrated probabilities promise "
               "(their mean) - trustworthy only when the model is calibrated and the movie resembles its "
               "training movie.")
curve_fig.add_vline(x=threshold, line=dict(color="gray", dash="dash"), annotation_text=f"threshold {threshold:.2f}")
curve_fig.update_layout(xaxis=dict(title="threshold (event probability)", range=[0, 1]),
                        yaxis=dict(range=[0, 1.02]), height=300, margin=dict(l=10, r=10, t=30, b=40),
                        legend=dict(orientation="h", y=-0.3))
st.plotly_chart(curve_fig, width="stretch", key="pred_pr_curve")

st.subheader("Events per frame")
if not len(kept):
    st.caption("No events at this threshold: lower it to see weaker candidates.")
counts = kept.groupby("frame").size().reindex(range(prob_maps.shape[0]), fill_value=0)
per_frame = per_frame_all.copy()
per_frame["n_events"] = per_frame["frame"].map(counts).fillna(0).astype(int)  # at the chosen threshold
bar = go.Figure()
frames_index = list(range(prob_maps.shape[0]))
for cls in sorted(set(kept["class"].astype(str))):
    by_frame = kept[kept["class"].astype(str) == cls].groupby("frame").size().reindex(frames_index, fill_value=0)
    bar.add_trace(go.Bar(x=frames_index, y=by_frame.values, name=f"{cls} (detected)",
                         marker_color=CLASS_COLORS.get(cls, "#00e5ff")))
if truth is not None:
    t_first = truth[truth["role"] == "parent"] if "role" in truth.columns else truth
    t_counts = t_first.groupby("frame").size().reindex(frames_index, fill_value=0)
    bar.add_trace(go.Scatter(x=frames_index, y=t_counts.values, mode="lines+markers", name="annotated events",
                             line=dict(color="black", dash="dot")))
bar.add_vline(x=pair, line=dict(color="gray", dash="dash"))
bar.update_layout(barmode="stack", xaxis_title="frame t (event between t and t+1)", yaxis_title="events",
                  height=260, margin=dict(l=10, r=10, t=10, b=40), legend=dict(orientation="h", y=-0.35))
st.plotly_chart(bar, width="stretch", key="pred_counts")

st.subheader("Event table")
st.caption("One row per detected event: frame pair, position in pixels (y down, x right), "
           "calibrated probability and class.")
st.dataframe(kept.reset_index(drop=True), width="stretch", height=280)

st.subheader("Downloads")
d1, d2, d3, d4, d5 = st.columns(5)
d1.download_button("Events (CSV)", kept.to_csv(index=False).encode(), file_name=f"{dataset.id}_events.csv",
                   mime="text/csv", key="dl_events",
                    on_click=record_download, args=("dataset", dataset.id, f"events CSV; model {model_ref}"), help="Events at the chosen threshold, calibrated probabilities.")
d2.download_button("Per-frame summary (CSV)", per_frame.to_csv(index=False).encode(),
                   file_name=f"{dataset.id}_per_frame.csv", mime="text/csv", key="dl_per_frame",
                    on_click=record_download, args=("dataset", dataset.id, f"per-frame CSV; model {model_ref}"))


@st.cache_data(max_entries=4, show_spinner=False)
def model_zip(model_path: str, model_mtime: float) -> bytes:  # noqa: ARG001 (mtime: cache key)
    return bundle_zip(model_path)


d3.download_button("Heatmaps (TIFF)", (pred_dir / "heatmaps.tif").read_bytes(),
                   file_name=f"{dataset.id}_heatmaps.tif", mime="image/tiff", key="dl_heatmaps",
                    on_click=record_download, args=("dataset", dataset.id, f"heatmaps TIFF; model {model_ref}"),
                   help="One 32-bit float page per frame pair t → t+1: the calibrated event probability at each pixel.")
d4.download_button("Model (zip)", model_zip(str(model_path), mtime), file_name=f"{model_path.name}_model.zip",
                   mime="application/zip", key="dl_model",
                    on_click=record_download, args=("model", model_ref, f"zip; viewed with dataset {dataset.id}"))


record = run_record(model_path, dataset=dataset.meta, model_ref=model_ref,
                    prediction={"threshold": threshold, "events": int(len(kept)), "source": source_note,
                                "record": pred_record})
d5.download_button("Run record (JSON)", json.dumps(record, indent=2, default=str).encode(),
                   file_name=f"{dataset.id}_run_record.json", mime="application/json", key="dl_record",
                    on_click=record_download, args=("dataset", dataset.id, f"run record; model {model_ref}"),
                   help="Model config, seed, data hash, versions, device and metrics: what is needed to reproduce this.")
