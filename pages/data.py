"""Data: add movies (demo, upload, folder import), check them, preview frames with event masks."""

import pandas as pd
import streamlit as st

from pages._ui import (page_setup, EVENT_NAMES, add_mask_overlay, display_stride, frame_figure, load_masks, load_movie,
                       mask_events, workspace)

page_setup()

st.title("Data")
st.write(
    "Add a time-lapse movie to work with. A movie is a stack of 2-D grayscale frames (a multi-page "
    "TIFF). Event masks are optional: a second TIFF of the same size where pixels of a **dividing** "
    "cell are 1, pixels of a **dying** cell are 2, and everything else is 0. Masks are needed to "
    "train and evaluate an event detector, not to find events with an existing one."
)

ws = workspace()

demo_tab, upload_tab, import_tab = st.tabs(["Try the demo", "Upload a movie", "Import from a folder"])

with demo_tab:
    st.write(
        "A synthetic movie (48 frames, 256 x 256 pixels) of fluorescent nuclei that move, divide and "
        "die, with exact event masks. It is small enough to train on a laptop in minutes."
    )
    if st.button("Load the synthetic demo movie", type="primary", key="load_demo"):
        with st.spinner("Making the demo movie..."):
            info = ws.create_demo()
        st.session_state["data_selected"] = info.id
        st.success(f"Loaded: {info.label()}")

with upload_tab:
    with st.form("upload_form", clear_on_submit=False):
        movie_file = st.file_uploader(
            "Movie (TIFF)", type=["tif", "tiff"], key="upload_movie",
            help="A multi-page TIFF, ImageJ or OME-TIFF with one channel. Time-lapse frames in order.")
        masks_file = st.file_uploader(
            "Event masks (optional, TIFF)", type=["tif", "tiff"], key="upload_masks",
            help="Same number of frames and size as the movie. 0 = no event, 1 = division, 2 = death.")
        submitted = st.form_submit_button("Check and save", type="primary")
    if submitted:
        if movie_file is None:
            st.error("Choose a movie file first.")
        else:
            try:
                with st.spinner(f"Saving and checking {movie_file.name}..."):
                    info = ws.save_upload(movie_file, masks_file, name=movie_file.name,
                                          masks_name=masks_file.name if masks_file is not None else None)
            except ValueError as exc:
                st.error(f"This file cannot be used: {exc}. Nothing was saved.")
            else:
                st.session_state["data_selected"] = info.id
                st.success(f"Saved: {info.label()}")

with import_tab:
    st.write(
        "For large movies already on this computer (or a shared drive it sees): give the path of a "
        "TIFF, of a folder of frames, or of a Cell Tracking Challenge sequence folder (for example "
        "`.../Fluo-N2DL-HeLa/01`); for the latter, division masks are made from its lineage file."
    )
    with st.form("import_form"):
        path = st.text_input("Path on this computer", key="import_path", placeholder="/data/experiment/01")
        masks_path = st.text_input("Event masks path (optional, not for Cell Tracking Challenge folders)",
                                   key="import_masks")
        do_import = st.form_submit_button("Import", type="primary")
    if do_import:
        if not path.strip():
            st.error("Type the path of a movie file or folder first.")
        else:
            try:
                with st.spinner("Reading the movie..."):
                    info = ws.import_path(path, masks=masks_path.strip() or None)
            except (ValueError, FileNotFoundError) as exc:
                st.error(f"This cannot be imported: {exc}. Nothing was saved.")
            else:
                st.session_state["data_selected"] = info.id
                st.success(f"Imported: {info.label()}")

st.header("Your datasets")
datasets = ws.list_datasets()
if not datasets:
    st.info("No datasets yet: load the demo or add a movie above.")
    st.stop()

table = pd.DataFrame([
    {"name": d.name, "frames": d.shape[0], "height (px)": d.shape[1], "width (px)": d.shape[2],
     "pixel type": d.dtype, "event masks": "yes" if d.has_masks else "no", "source": d.source,
     "added (UTC)": d.created.replace("T", " ")[:19], "id": d.id}
    for d in datasets
])
st.dataframe(table, hide_index=True, width="stretch")

ids = [d.id for d in datasets]
selected = st.session_state.get("data_selected")
chosen = st.selectbox("Preview", ids, index=ids.index(selected) if selected in ids else 0,
                      format_func=lambda i: next(d.label() for d in datasets if d.id == i), key="data_preview")
info = next(d for d in datasets if d.id == chosen)
movie = load_movie(info)
masks = load_masks(info) if info.has_masks else None

left, right = st.columns([3, 1])
with right:
    t = st.slider("Frame", 0, movie.shape[0] - 1, 0, key="data_frame",
                  help="Frames are numbered from 0.")
    show_masks = st.checkbox("Show event masks", value=masks is not None, disabled=masks is None, key="data_masks")
    st.metric("Frames", movie.shape[0])
    st.metric("Frame size", f"{movie.shape[1]} x {movie.shape[2]} px")
    st.caption(f"Pixel type {info.dtype}; values {int(movie[t].min())} to {int(movie[t].max())} in this frame.")
    if masks is not None:
        ev = mask_events(masks[t])
        counts = ev["event"].value_counts().to_dict() if len(ev) else {}
        st.write("Events in this frame: " + ", ".join(f"{counts.get(n, 0)} {n}" + ("s" if counts.get(n, 0) != 1 else "")
                                                      for n in EVENT_NAMES.values()))
    truth = ws.load_events(info.id)
    if truth is not None and len(truth) and "kind" in truth:
        kinds = truth["kind"].value_counts().to_dict()
        st.write("Whole movie: " + ", ".join(f"{v} {k}{'s' if v != 1 else ''}" for k, v in sorted(kinds.items())))
with left:
    stride = display_stride(movie.shape)
    fig = frame_figure(movie[t], stride=stride, title=f"{info.name}: frame {t}")
    if show_masks and masks is not None:
        add_mask_overlay(fig, masks[t], stride=stride)
    st.plotly_chart(fig, width="stretch", key="data_fig")
    if stride > 1:
        st.caption(f"Shown at 1/{stride} resolution to keep the page fast; analysis uses full resolution.")

with st.expander("Details and removal"):
    st.json({k: v for k, v in info.meta.items() if k != "synthetic_config"}, expanded=False)
    if st.button(f"Delete dataset '{info.name}'", key="data_delete"):
        ws.delete_dataset(info.id)
        st.session_state.pop("data_selected", None)
        st.rerun()
