"""Pretrain: learn TAP features on a movie, without any annotation (self-supervised)."""

import streamlit as st

from pages._ui import finished_banner, page_setup, dataset_picker, live_job, submit_job, workspace

page_setup()

SIZES = {
    "small": {"label": "Small network (fast; fine for the demo and first tries)",
              "model": {"base_channels": 8, "depth": 2, "features": 16, "head_channels": 16}},
    "paper": {"label": "Paper network (32 channels, 3 levels; use a GPU)", "model": {}},
}
PRESETS = {
    "quick": {"label": "Quick test (a minute on a laptop)", "pre_size": "small", "pre_epochs": 1,
              "pre_samples": 64, "pre_patch": 32, "pre_batch": 16},
    "demo": {"label": "Demo-size (a few minutes on a laptop)", "pre_size": "small", "pre_epochs": 6,
             "pre_samples": 1024, "pre_patch": 64, "pre_batch": 32},
    "paper": {"label": "Paper settings (GPU)", "pre_size": "paper", "pre_epochs": 40,
              "pre_samples": 50_000, "pre_patch": 96, "pre_batch": 152},
}


def apply_preset() -> None:
    for key, value in PRESETS[st.session_state["pre_preset"]].items():
        if key != "label":
            st.session_state[key] = value


if "pre_epochs" not in st.session_state:
    st.session_state["pre_preset"] = "demo"
    apply_preset()

st.title("Pretrain")
st.write(
    "TAP (time arrow prediction) teaches a network to tell whether two frames are in the right "
    "order or swapped. To do that it has to notice what changes in one direction of time only: "
    "cells growing, dividing, dying. No annotation is needed. The features it learns are then "
    "used on the **Event head** page to find divisions and deaths."
)

dataset = dataset_picker("Movie to learn from", key="pre_dataset",
                         help="Any movie of your cells; masks are not used here.")
if dataset is not None:
    st.selectbox("Settings", list(PRESETS), format_func=lambda k: PRESETS[k]["label"], key="pre_preset",
                 on_change=apply_preset, help="Fills in the form below; you can still change any value.")
    with st.form("pretrain_form"):
        size = st.radio("Network size", list(SIZES), format_func=lambda k: SIZES[k]["label"], key="pre_size")
        c1, c2, c3 = st.columns(3)
        epochs = c1.number_input("Epochs", 1, 10_000, key="pre_epochs",
                                 help="How many rounds of training. More = better features, longer.")
        samples = c2.number_input("Frame pairs per epoch", 8, 10_000_000, step=64, key="pre_samples",
                                  help="Random pairs of consecutive frames cut into patches, per epoch.")
        patch = c3.number_input("Patch size (px)", 16, 512, step=16, key="pre_patch",
                                help="Side of the square patches the network sees (paper: 96 px).")
        c4, c5, c6 = st.columns(3)
        batch = c4.number_input("Batch size", 1, 4096, key="pre_batch",
                                help="Patch pairs per training step; lower it if the GPU runs out of memory.")
        lam = c5.number_input("Decorrelation weight λ", 0.0, 10.0, 0.01, step=0.01, format="%.3f", key="pre_lambda",
                              help="Keeps the feature channels different from each other (paper: 0.01).")
        seed = c6.number_input("Random seed", 0, 1_000_000, 0, key="pre_seed")
        go = st.form_submit_button("Start pretraining", type="primary")
    if go:
        config = {"epochs": int(epochs), "samples_per_epoch": int(samples), "patch": int(patch),
                  "batch_size": int(batch), "lam": float(lam), "seed": int(seed), "model": SIZES[size]["model"],
                  # validation pairs: a quarter of an epoch, at most the default 2048
                  "val_samples": int(max(16, min(2048, samples // 4))),
                  # about 10 live progress updates per epoch (at most every 50 steps)
                  "log_every": int(max(1, min(50, samples // max(int(batch), 1) // 10)))}
        try:
            job_id = submit_job("pretrain", {"dataset": dataset.id, "config": config}, url_key="pre_job")
        except ValueError as exc:
            st.error(f"Cannot start: {exc}")
        else:
            st.success(f"Job {job_id} queued. Progress appears below; you can close this tab and come back.")

st.header("Training progress")
job = live_job("pre_job", ("pretrain",))
if job is None:
    st.caption("No pretraining yet.")
elif job.state == "done":
    finished_banner(job, "Pretraining finished. Use these features on the **Event head** page "
                         f"(listed as '{job.id} (TAP features; run)').")
    name = st.text_input("Keep these features as", value=f"tap-{job.id[:15]}", key="pre_keep_name")
    if st.button("Keep model", key="pre_keep"):
        try:
            ref = workspace().save_model(f"run:{job.id}", name)
            st.success(f"Saved as {ref}.")
        except ValueError as exc:
            st.error(str(exc))
