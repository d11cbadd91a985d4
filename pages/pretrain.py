"""Pretrain: learn TAP features on a movie, without any annotation (self-supervised)."""

import streamlit as st

from pages._ui import finished_banner, keep_model_form, page_setup, dataset_picker, live_job, start_job
from tapcore.config import config_to_dict
from tapcore.estimate import estimate_pretrain, worker_device
from tapcore.presets import PRESET_HELP, apply_preset as preset_config, default_preset
from tapcore.tap.model import TapConfig
from tapcore.workspace import home

page_setup()

SIZES = {
    "small": {"label": "Small network (8 channels, 3 levels; fast on a CPU)",
              "model": config_to_dict(preset_config("cpu").model)},
    "paper": {"label": "Paper network (32 channels, 3 levels; use a GPU)", "model": config_to_dict(TapConfig())},
}
BIN_HELP = {
    1: "1 · full resolution (the paper)",
    2: "2 · average 2 x 2 pixel blocks: 4x fewer pixels",
    4: "4 · average 4 x 4 pixel blocks: 16x fewer pixels",
}


def _from_library(name: str) -> dict:
    """The form values of a library preset (tapcore.presets)."""
    c = preset_config(name)
    size = "paper" if config_to_dict(c.model) == SIZES["paper"]["model"] else "small"
    return {"label": f"{name}: {PRESET_HELP[name]}", "preset": name, "pre_size": size, "pre_bin": c.bin,
            "pre_epochs": c.epochs, "pre_samples": c.samples_per_epoch, "pre_patch": c.patch,
            "pre_batch": c.batch_size, "pre_lr": c.lr}


PRESETS = {
    "cpu": _from_library("cpu"),
    "paper": _from_library("paper"),
    "quick": {"label": "Quick test (a minute on a laptop)", "preset": "cpu",
              "pre_size": "small", "pre_bin": 1, "pre_epochs": 1, "pre_samples": 64, "pre_patch": 32,
              "pre_batch": 16, "pre_lr": 1e-3},
}


def apply_preset() -> None:
    for key, value in PRESETS[st.session_state["pre_preset"]].items():
        if key not in ("label", "preset"):
            st.session_state[key] = value


DEVICE = worker_device(home())
if "pre_epochs" not in st.session_state:  # first visit: the preset that fits the worker's device
    st.session_state["pre_preset"] = default_preset(DEVICE)
    apply_preset()

st.title("Pretrain")
st.write(
    "TAP (time arrow prediction) teaches a network to tell whether two frames are in the right "
    "order or swapped. To do that it has to notice what changes in one direction of time only: "
    "cells growing, dividing, dying. No annotation is needed. The features it learns are then "
    "used on the **Event head** page to find divisions and deaths."
)


def _config() -> dict:
    """The job's config from the form's current values (the preset underneath, the form on top)."""
    ss = st.session_state
    samples, batch = int(ss["pre_samples"]), int(ss["pre_batch"])
    return {"preset": PRESETS[ss["pre_preset"]]["preset"], "bin": int(ss["pre_bin"]), "epochs": int(ss["pre_epochs"]),
            "samples_per_epoch": samples, "patch": int(ss["pre_patch"]), "batch_size": batch,
            "lr": float(ss["pre_lr"]), "lam": float(ss.get("pre_lambda", 0.01)), "seed": int(ss.get("pre_seed", 0)),
            "model": SIZES[ss["pre_size"]]["model"],
            # validation pairs: a quarter of an epoch, at most the default 2048
            "val_samples": int(max(16, min(2048, samples // 4))),
            # about 10 live progress updates per epoch (at most every 50 steps)
            "log_every": int(max(1, min(50, samples // max(batch, 1) // 10)))}


def _show_estimate() -> None:
    try:
        config = _config()
        cfg = preset_config(config["preset"], {**config, "device": DEVICE})
        with st.spinner(f"Timing a few training steps on {DEVICE}..."):
            est = estimate_pretrain(cfg, DEVICE)
    except (ValueError, RuntimeError) as exc:
        st.warning(f"No time estimate for these settings: {exc}")
        return
    text = est.summary()
    (st.warning if est.seconds > 4 * 3600 else st.info)(
        text + (". That is long: consider the cpu preset, a GPU, binning or fewer epochs." if est.seconds > 4 * 3600
                else "."), icon=":material/schedule:")
    st.caption(est.explanation)


dataset = dataset_picker("Movie to learn from", key="pre_dataset",
                         help="Any movie of your cells; masks are not used here.")
if dataset is not None:
    st.selectbox("Settings", list(PRESETS), format_func=lambda k: PRESETS[k]["label"], key="pre_preset",
                 on_change=apply_preset,
                 help=f"Fills in the form below; you can still change any value. Jobs run on: {DEVICE}.")
    with st.form("pretrain_form"):
        st.radio("Network size", list(SIZES), format_func=lambda k: SIZES[k]["label"], key="pre_size")
        st.radio("Binning", list(BIN_HELP), format_func=BIN_HELP.get, key="pre_bin", horizontal=True,
                 help="Binning averages blocks of pixels before training, so the network sees a smaller movie: "
                      "much faster, and it sees more of each cell at once. Measure a typical nucleus in pixels "
                      "and pick the bin that makes it about 10 to 20 pixels across: a 30 px nucleus -> bin 2, "
                      "a 60 px nucleus -> bin 4, a 15 px nucleus -> no binning. Everything made from this model "
                      "bins the same way and reports results in the movie's own pixels.")
        c1, c2, c3 = st.columns(3)
        c1.number_input("Epochs", 1, 10_000, key="pre_epochs",
                                 help="How many rounds of training. More = better features, longer.")
        c2.number_input("Frame pairs per epoch", 8, 10_000_000, step=64, key="pre_samples",
                                  help="Random pairs of consecutive frames cut into patches, per epoch.")
        c3.number_input("Patch size (px, after binning)", 16, 512, step=16, key="pre_patch",
                                help="Side of the square patches the network sees (paper: 96 px).")
        c4, c5, c6, c7 = st.columns(4)
        c4.number_input("Batch size", 1, 4096, key="pre_batch",
                                help="Patch pairs per training step; lower it if the GPU runs out of memory.")
        c5.number_input("Learning rate", 1e-6, 1.0, step=1e-4, format="%.0e", key="pre_lr",
                        help="Step size of the optimiser (paper: 1e-4; the small network trains at 1e-3).")
        c6.number_input("Decorrelation weight λ", 0.0, 10.0, 0.01, step=0.01, format="%.3f", key="pre_lambda",
                              help="Keeps the feature channels different from each other (paper: 0.01).")
        c7.number_input("Random seed", 0, 1_000_000, 0, key="pre_seed")
        _show_estimate()
        b1, b2 = st.columns(2)
        b1.form_submit_button("Update estimate", help="Re-estimate the duration after changing values above.")
        go = b2.form_submit_button("Start pretraining", type="primary")
    if go:
        start_job("pretrain", {"dataset": dataset.id, "config": _config()}, url_key="pre_job")

st.header("Training progress")
job = live_job("pre_job", ("pretrain",))
if job is None:
    st.caption("No pretraining yet.")
elif job.state == "done":
    finished_banner(job, "Pretraining finished. Use these features on the **Event head** page "
                         f"(listed as '{job.id} (TAP features; run)').")
    keep_model_form(job, "Keep these features as", f"tap-{job.id[:15]}", key="pre_keep")
