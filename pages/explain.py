"""Explain: where in a frame pair does the model look? Grad-CAM map and its top regions."""

import numpy as np
import pandas as pd
import streamlit as st

from pages._ui import dataset_picker, display_stride, frame_figure, load_movie, page_setup, workspace

page_setup()

ZOOM = 3  # crops are shown enlarged this many times (nearest neighbour: pixels stay visible)

st.title("Explain")
st.write(
    "Grad-CAM highlights the parts of a frame pair that pushed the model towards its answer: for an "
    "event model, towards *event*; for TAP features, towards *time runs forward*. The brightest "
    "regions are listed below as a gallery, each shown at frame t and at frame t+1, so you can check "
    "that the model looks at cells that divide or die, and not at debris or the image border."
)

ws = workspace()
dataset = dataset_picker("Movie", key="exp_dataset")
models = ws.list_models()
if dataset is None or not models:
    if not models:
        st.info("No model yet: train one on the **Pretrain** or **Event head** page.")
    st.stop()
refs = [m.ref for m in models]
labels = {m.ref: m.label() for m in models}
wanted = st.query_params.get("exp_model")
default = refs.index(wanted) if wanted in refs else next((i for i, m in enumerate(models) if m.kind == "event_head"), 0)
model_ref = st.selectbox("Model", refs, index=default, key="exp_model", format_func=labels.get,
                         help="An event model explains 'event here'; TAP features explain 'time runs forward'.")
st.query_params["exp_model"] = model_ref
model_path = ws.resolve_model(model_ref)

c1, c2, c3 = st.columns(3)
t = c1.slider("Frame pair (t → t+1)", 0, dataset.shape[0] - 2, 0, key="exp_frame")
k = c2.slider("Regions to show", 1, 16, 8, key="exp_k", help="The k most highlighted, non-overlapping regions.")
size = c3.slider("Region size (px)", 16, 128, 48, step=8, key="exp_size",
                 help="Side of each square region (the model's window size is a good choice).")


@st.cache_data(max_entries=16, show_spinner=False)
def explain(dataset_id: str, sha256: str, model_path: str, model_stamp: float, t: int, k: int, size: int):  # noqa: ARG001
    """Grad-CAM of one frame pair (plain arrays and tables; shared by all users)."""
    from tapcore.explain import ExplainConfig, explain_frame

    movie = ws.load_movie(dataset_id)
    exp = explain_frame(movie[t:t + 2], model_path, ExplainConfig(frame=0, k=k, size=size, device="cpu"))
    crops = [(r.crop_t, r.crop_t1) for r in exp.regions]
    mean = float(np.mean(exp.cam))
    table = pd.DataFrame([{"rank": r.rank, "centre y (px)": r.y, "centre x (px)": r.x, "score": r.score,
                           "in words": score_words(r.score, mean)} for r in exp.regions])
    return exp.frames[0], exp.cam, crops, table, exp.record


def score_words(score: float, mean: float) -> str:
    """A region's score in plain words: its share of the strongest evidence, and how it compares."""
    times = score / mean if mean > 0 else float("inf")
    strength = ("strong" if score >= 0.5 else "moderate" if score >= 0.2 else "weak")
    return (f"{strength}: {score * 100:.0f} % of the strongest evidence, "
            + (f"{times:.1f}× the frame's average" if np.isfinite(times) else "the only evidence"))


def cam_figure(frame: np.ndarray, cam: np.ndarray, table: pd.DataFrame, size: int):
    """The frame in grey, the Grad-CAM map on top (transparent where there is little evidence) with a
    colour bar, and the top regions as numbered boxes."""
    import plotly.graph_objects as go

    stride = display_stride(frame.shape)
    fig = frame_figure(frame, stride=stride, height=560)
    c = cam[::stride, ::stride].astype(np.float64)
    # scale: the 99.5th percentile is the top colour, so a few hot pixels do not wash out the rest
    top = float(np.percentile(c, 99.5)) if c.size else 0.0
    top = top if top > 1e-6 else max(float(c.max()), 1e-6)
    floor = 0.15 * top  # below this the frame shows through: no tint where the model does not look
    fig.add_trace(go.Heatmap(
        z=np.where(c >= floor, np.minimum(c, top), np.nan), x=np.arange(c.shape[1]) * stride,
        y=np.arange(c.shape[0]) * stride, zmin=floor, zmax=top, colorscale="Inferno", opacity=0.65,
        colorbar=dict(title=dict(text="Grad-CAM<br>evidence<br>(1 = strongest)"), len=0.8),
        hovertemplate="x=%{x} y=%{y}<br>evidence %{z:.2f}<extra></extra>"))
    for row in table.itertuples(index=False):
        y0, x0 = row[1] - size // 2, row[2] - size // 2
        fig.add_shape(type="rect", x0=x0, y0=y0, x1=x0 + size, y1=y0 + size, line=dict(color="#00e5ff", width=2))
        fig.add_annotation(x=x0 + 2, y=y0 + 2, text=f"<b>{row.rank}</b>", showarrow=False, xanchor="left",
                           yanchor="top", font=dict(color="#00e5ff", size=13))
    fig.update_layout(showlegend=False)
    return fig, top


def enlarge(crop: np.ndarray) -> np.ndarray:
    img = (np.clip(crop, 0.0, 1.0) * 255).astype(np.uint8)
    return np.kron(img, np.ones((ZOOM, ZOOM), np.uint8))


stamp = (model_path / "weights.pt").stat().st_mtime if (model_path / "weights.pt").is_file() else 0.0
load_movie(dataset)  # warms the shared movie cache for the other pages
try:
    with st.spinner("Computing Grad-CAM for this frame pair..."):
        frame, cam, crops, table, record = explain(dataset.id, dataset.sha256, str(model_path), stamp, t, k, size)
except ValueError as exc:
    st.error(f"Cannot explain this: {exc}")
    st.stop()

if len(table) and float(table["score"].max()) <= 1e-6:
    st.warning("The model finds no evidence at all in this frame pair (every score is 0), so the regions "
               "below are arbitrary. Try another frame pair, or a better-trained model.")

left, right = st.columns([3, 2])
with left:
    fig, top = cam_figure(frame, cam, table, size)
    st.plotly_chart(fig, width="stretch", key="exp_cam")
    st.caption(f"Frame {t} with the Grad-CAM map: the brighter, the more that place pushed the model towards its "
               "answer. Places with less than 15 % of the colour scale's top are left untinted; the scale's top "
               f"({top:.2f}) is set by the brightest 0.5 % of pixels so that weaker evidence stays visible. "
               "Cyan boxes: the top regions, numbered by rank.")
with right:
    st.subheader("Top regions")
    st.dataframe(table.style.format({"score": "{:.3f}"}), hide_index=True, width="stretch")
    if len(table):
        best = table.iloc[0]
        st.write(f"Region 1 (around x = {best['centre x (px)']}, y = {best['centre y (px)']}) scores "
                 f"{best['score']:.2f}: on average its pixels carry {best['score'] * 100:.0f} % of the strongest "
                 f"evidence in this frame pair ({best['in words'].split(', ')[-1]}).")
    st.caption("Score: the mean Grad-CAM value inside the region, from 0 (the model ignores it) to 1 (every pixel "
               "as important as the most important one). Scores are relative to this frame pair, so compare "
               "regions within a pair, not across pairs. Positions in pixels, y down, x right.")

st.subheader("Gallery: each region at frame t (left) and t+1 (right)")
cols = st.columns(4)
for i, ((crop_t, crop_t1), row) in enumerate(zip(crops, table.itertuples(index=False))):
    with cols[i % 4]:
        pair = np.concatenate([enlarge(crop_t), np.full((crop_t.shape[0] * ZOOM, 4), 255, np.uint8),
                               enlarge(crop_t1)], axis=1)
        st.image(pair, caption=f"#{row.rank} at y={row[1]}, x={row[2]} · score {row.score:.2f}")
