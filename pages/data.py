"""Data: add movies (demo, upload, folder import), check them, preview frames with event masks."""

import pandas as pd
import streamlit as st

from pages._ui import (page_setup, EVENT_NAMES, add_mask_overlay, current_user, display_stride, frame_figure,
                       load_masks, load_movie, mask_events, share_toggle, workspace)

page_setup()

st.title("Data")
st.write(
    "Add a time-lapse movie to work with. A movie is a stack of 2-D grayscale frames (a multi-page "
    "TIFF). Event masks are optional: a second TIFF of the same size where pixels of a **dividing** "
    "cell are 1, pixels of a **dying** cell are 2, and everything else is 0. Masks are needed to "
    "train and evaluate an event detector, not to find events with an existing one."
)

ws = workspace()

MOVIE_SUFFIXES = (".tif", ".tiff")
# Streamlit refuses larger files in the browser, before this page sees them: name the limit up front.
UPLOAD_LIMIT_MB = int(st.get_option("server.maxUploadSize"))


def show_dataset(info, verb: str) -> None:
    """Say what was saved (or reused) with its warnings, and switch the preview below to it."""
    st.session_state["data_selected"] = info.id
    st.session_state["data_preview"] = info.id
    if info.reused:
        st.info(f"This movie is identical to the dataset **{info.name}** already saved "
                f"({info.created.replace('T', ' ')[:16]} UTC); using it, nothing new was saved.")
    else:
        st.success(f"{verb}: {info.label()}")
    for warning in info.warnings:
        st.warning(f"Note: {warning}.")


def upload_problem(file, what: str) -> str | None:
    """Why an uploaded file cannot be used, from its name and size (None when it may be fine)."""
    suffix = ("." + file.name.rsplit(".", 1)[-1].lower()) if "." in file.name else ""
    if suffix not in MOVIE_SUFFIXES:
        kind = f"a {suffix} file" if suffix else "a file without extension"
        return (f"{file.name} is {kind}; the {what} must be a TIFF (.tif or .tiff). In Fiji: File > Save As > Tiff; "
                "a folder of PNG frames or a Cell Tracking Challenge folder can be imported from a path instead.")
    if file.size > UPLOAD_LIMIT_MB * 2**20:
        return (f"{file.name} is {file.size / 2**20:.0f} MB, above the upload limit of {UPLOAD_LIMIT_MB} MB; "
                "use 'Import from a folder' for bigger movies.")
    if file.size == 0:
        return f"{file.name} is empty (0 bytes); choose the {what} file again."
    return None


demo_tab, upload_tab, import_tab = st.tabs(["Try the demo", "Upload a movie", "Import from a folder"])

with demo_tab:
    st.write(
        "A synthetic movie (48 frames, 256 x 256 pixels) of fluorescent nuclei that move, divide and "
        "die, with exact event masks. It is small enough to train on a laptop in minutes."
    )
    if st.button("Load the synthetic demo movie", type="primary", key="load_demo"):
        with st.spinner("Making the demo movie..."):
            info = ws.create_demo()
        show_dataset(info, "Loaded")

with upload_tab:
    with st.form("upload_form", clear_on_submit=False):
        movie_file = st.file_uploader(
            "Movie (TIFF)", key="upload_movie",
            help="A multi-page TIFF, ImageJ or OME-TIFF. Time-lapse frames in order. With several channels or "
                 "z-planes you pick one after the upload.")
        masks_file = st.file_uploader(
            "Event masks (optional, TIFF)", key="upload_masks",
            help="Same number of frames and size as the movie. 0 = no event, 1 = division, 2 = death.")
        st.caption(f"TIFF files (.tif, .tiff) up to {UPLOAD_LIMIT_MB} MB each; the browser refuses bigger ones. "
                   "Bigger movies, PNG frame folders and Cell Tracking Challenge folders: **Import from a folder**.")
        submitted = st.form_submit_button("Check and save", type="primary")
    if submitted:
        problems = [p for f, what in ((movie_file, "movie"), (masks_file, "masks")) if f is not None
                    for p in [upload_problem(f, what)] if p]
        if movie_file is None:
            st.error("No movie file chosen: drop a TIFF on 'Movie (TIFF)' above (or click 'Browse files'), then "
                     "press 'Check and save'.")
        elif problems:
            for problem in problems:
                st.error(f"This file cannot be used: {problem} Nothing was saved.")
        else:
            old = ws.staged_upload(st.session_state.pop("upload_token", ""))
            if old is not None:
                ws.discard_upload(old)
            try:
                with st.spinner(f"Saving and checking {movie_file.name}..."):
                    staged = ws.stage_upload(movie_file, masks_file, name=movie_file.name,
                                             masks_name=masks_file.name if masks_file is not None else None,
                                             max_bytes=UPLOAD_LIMIT_MB * 2**20)
                    if not staged.layout.needs_choice:
                        try:
                            info = ws.finish_upload(staged)
                        except BaseException:
                            ws.discard_upload(staged)
                            raise
            except (ValueError, OSError) as exc:
                st.error(f"This file cannot be used: {exc}. Nothing was saved.")
            else:
                if staged.layout.needs_choice:
                    st.session_state["upload_token"] = staged.token
                else:
                    show_dataset(info, "Saved")

    staged = ws.staged_upload(st.session_state.get("upload_token", ""))
    if staged is not None:
        layout = staged.layout
        parts = [f"{layout.channels} channels"] * (layout.channels > 1) + [f"{layout.planes} z-planes"] * (layout.planes > 1)
        st.subheader(f"Choose what to keep from {staged.name}")
        st.write(f"The file holds {' and '.join(parts)} (axes {layout.axes}, shape "
                 f"{' x '.join(map(str, layout.shape))}). A movie is one grayscale channel at one focus: pick them "
                 "and check the preview.")
        pick_l, pick_r = st.columns([1, 3])
        with pick_l:
            channel = (st.selectbox("Channel", list(range(layout.channels)), key="upload_channel",
                                    format_func=lambda c: f"channel {c}") if layout.channels > 1 else None)
            plane = None
            if layout.planes > 1:
                options: list = list(range(layout.planes))
                if layout.frames_if_picked() == 1:  # no time axis: the planes may be the time points
                    options.append("time")
                plane = st.selectbox("Z-plane", options, key="upload_plane",
                                     format_func=lambda z: "all planes are time points" if z == "time" else f"plane {z}")
            n_frames = layout.planes if plane == "time" else layout.frames_if_picked()
            frame = st.slider("Preview frame", 0, max(n_frames - 1, 1), 0, key="upload_preview_frame",
                              disabled=n_frames < 2)
            save = st.button("Save this channel and plane", type="primary", key="upload_save_choice")
            drop = st.button("Cancel this upload", key="upload_drop")
        with pick_r:
            try:
                preview = ws.preview_upload(staged, channel=channel, plane=plane, frame=min(frame, n_frames - 1))
            except (ValueError, OSError) as exc:
                st.error(f"Cannot show this choice: {exc}.")
            else:
                st.plotly_chart(frame_figure(preview, stride=display_stride(preview.shape), height=360,
                                             title=f"frame {frame}" + (f", channel {channel}" if channel is not None else "")
                                             + (f", plane {plane}" if isinstance(plane, int) else "")),
                                width="stretch", key="upload_preview")
        if drop:
            ws.discard_upload(staged)
            st.session_state.pop("upload_token", None)
            st.rerun()
        if save:
            try:
                with st.spinner("Reading the chosen channel and plane..."):
                    info = ws.finish_upload(staged, channel=channel, plane=plane)
            except (ValueError, OSError) as exc:
                st.error(f"This choice cannot be used: {exc}. Nothing was saved; pick another or cancel.")
            else:
                st.session_state.pop("upload_token", None)
                show_dataset(info, "Saved")

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
            except (ValueError, OSError) as exc:
                st.error(f"This cannot be imported: {exc}. Nothing was saved.")
            else:
                show_dataset(info, "Imported")

st.header("Your datasets")
datasets = ws.list_datasets()
wanted = st.query_params.get("dataset")  # a deep link ?dataset=ID
if wanted and wanted not in [d.id for d in datasets]:
    st.warning(f"The dataset {wanted!r} named in this link is not available to you: it does not exist, or it is "
               "another user's and not shared with the lab.")
if not datasets:
    st.info("No datasets yet: load the demo or add a movie above.")
    st.stop()

table = pd.DataFrame([
    {"name": d.name, "frames": d.shape[0], "height (px)": d.shape[1], "width (px)": d.shape[2],
     "pixel type": d.dtype, "event masks": "yes" if d.has_masks else "no", "source": d.source,
     "added (UTC)": d.created.replace("T", " ")[:19], "owner": d.owner,
     "shared with lab": "yes" if d.shared or d.owner == "lab" else "no", "id": d.id}
    for d in datasets
])
st.dataframe(table, hide_index=True, width="stretch")

ids = [d.id for d in datasets]
if wanted in ids:
    st.session_state["data_selected"] = wanted
    st.session_state["data_preview"] = wanted
selected = st.session_state.get("data_selected")
if st.session_state.get("data_preview") not in ids:  # first visit, or the shown dataset was deleted
    st.session_state["data_preview"] = selected if selected in ids else ids[0]
chosen = st.selectbox("Preview", ids, format_func=lambda i: next(d.label() for d in datasets if d.id == i),
                      key="data_preview")
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

user = current_user()
mine = info.owner == user.name or user.is_admin
with st.expander("Details, sharing and removal", expanded=False):
    st.caption(f"Owner: {info.owner}" + (" · shared with the lab (read-only for the others)" if info.shared else ""))
    st.json({k: v for k, v in info.meta.items() if k != "synthetic_config"}, expanded=False)
    if not mine:
        st.caption("Shared with you read-only: only its owner or an admin can share, un-share or delete it.")
    elif info.owner != "lab":
        share_toggle("Share with lab", info.shared, key=f"data_share_{info.id}",
                     on_change=lambda on: ws.set_dataset_shared(info.id, on))
    if mine and st.button(f"Delete dataset '{info.name}'", key="data_delete"):
        ws.delete_dataset(info.id)
        st.session_state.pop("data_selected", None)
        st.rerun()
