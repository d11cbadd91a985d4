"""Event head: train a small classifier on TAP features that spots divisions (and deaths)."""

import streamlit as st

from pages._ui import (finished_banner, keep_model_form, page_setup, dataset_picker, live_job, load_masks, model_picker, per_class_table,
                       start_job, workspace)
from tapcore.estimate import estimate_head, worker_device
from tapcore.presets import HEAD_CPU
from tapcore.workspace import home

page_setup()

STRATEGY_HELP = {
    "A1": "A1 · TAP features (frozen) + small ResNet head: the paper's best, recommended",
    "A0": "A0 · TAP features (frozen) + linear head: fastest",
    "B1": "B1 · random fixed features + ResNet head (baseline: how much does TAP help?)",
    "B0": "B0 · random fixed features + linear head (baseline)",
    "C1": "C1 · whole network trained from scratch, ResNet head (baseline, slow)",
    "C0": "C0 · whole network trained from scratch, linear head (baseline, slow)",
    "A2": "A2 · TAP features (frozen) + lite ResNet head (16 channels): about 10x less work than A1, for CPUs",
    "B2": "B2 · random fixed features + lite ResNet head (baseline for A2)",
    "C2": "C2 · whole network trained from scratch, lite ResNet head (baseline for A2, slow)",
    "A3": "A3 · TAP features (frozen) + order-aware lite ResNet head: the demo model's, for CPUs",
    "B3": "B3 · random fixed features + order-aware lite ResNet head (baseline for A3)",
    "C3": "C3 · whole network trained from scratch, order-aware lite ResNet head (baseline for A3, slow)",
}
CRITERIA = {
    "size_either": "a window counts as an event when more than N event pixels are in either frame (paper)",
    "any_either": "any event pixel in either frame",
    "any_both": "event pixels in both frames",
}

#: the form's fields that the CPU recipe (tapcore.presets.HEAD_CPU) fills in; the rest of it is "head_recipe"
_FORM_DATASET_KEYS = ("crop", "pairs_per_frame", "criterion", "task")
CPU_RECIPE = {**{k: v for k, v in HEAD_CPU.items() if k not in ("head", "epochs", "dataset")},  # head: strategy A3
              "dataset": {k: v for k, v in HEAD_CPU["dataset"].items() if k not in _FORM_DATASET_KEYS}}
PRESETS = {
    "quick": {"label": "Quick test (a minute on a laptop)", "head_strategy": "A0", "head_epochs": 2, "head_crop": 32,
              "head_pairs": 40, "head_criterion": "any_either", "head_min_area": 40, "head_task": "event",
              "head_recipe": {}},
    "cpu": {"label": "CPU settings (the demo model's recipe: order-aware lite head, event-centred windows; minutes "
                     "on a CPU)", "head_strategy": "A3", "head_epochs": HEAD_CPU["epochs"],
            "head_crop": HEAD_CPU["dataset"]["crop"], "head_pairs": HEAD_CPU["dataset"]["pairs_per_frame"],
            "head_criterion": HEAD_CPU["dataset"]["criterion"], "head_min_area": 40,
            "head_task": HEAD_CPU["dataset"]["task"], "head_recipe": CPU_RECIPE},
    "paper": {"label": "Paper settings (ResNet head, 30 epochs; GPU recommended)", "head_strategy": "A1",
              "head_epochs": 30, "head_crop": 48, "head_pairs": 1000, "head_criterion": "size_either",
              "head_min_area": 40, "head_task": "event", "head_recipe": {}},
}


def _with_recipe(config: dict) -> dict:
    """The form's head config with the chosen preset's extra settings (``head_recipe``) added."""
    recipe = st.session_state.get("head_recipe") or {}
    ds = {**config["dataset"], **recipe.get("dataset", {})}
    crop = int(ds.get("crop", 48))
    if "border" in ds:  # at most half the window, whatever window size was chosen
        ds["border"] = min(int(ds["border"]), crop // 2)
    if "centre" in ds:
        ds["centre"] = min(int(ds["centre"]), crop)
    return {**config, **{k: v for k, v in recipe.items() if k != "dataset"}, "dataset": ds}


def apply_preset() -> None:
    for key, value in PRESETS[st.session_state["head_preset"]].items():
        if key != "label":
            st.session_state[key] = value


DEVICE = worker_device(home())


@st.cache_data(max_entries=8, show_spinner=False)
def _pair_counts(dataset_id: str, masks_key: str, bin_: int, dataset_cfg: str) -> tuple[int, int, int]:  # noqa: ARG001
    """Training / validation / test windows the job will have (the same sampling as training)."""
    import json

    from tapcore.binning import bin_masks
    from tapcore.config import config_from_dict
    from tapcore.events.dataset import CropPairConfig, build_crop_pairs

    masks = bin_masks(load_masks(workspace().dataset(dataset_id)), bin_)
    pairs = build_crop_pairs(masks, config_from_dict(CropPairConfig, json.loads(dataset_cfg)))
    return len(pairs.train), len(pairs.val), len(pairs.test)


def _show_estimate(dataset, tap_ref: str) -> None:
    """The estimated duration of the job the form describes now, on the worker's device."""
    import json

    from tapcore.binning import model_bin
    from tapcore.config import config_from_dict
    from tapcore.events.train import HeadConfig
    from tapcore.utils import read_json

    ss = st.session_state
    try:
        bundle = read_json(workspace().resolve_model(tap_ref) / "config.json")
        b = model_bin(bundle)
        ds = {"crop": int(ss["head_crop"]), "pairs_per_frame": int(ss["head_pairs"]), "criterion": ss["head_criterion"],
              "min_area": int(ss["head_min_area"]), "task": ss.get("head_task", "event"), "seed": int(ss.get("head_seed", 0))}
        full = _with_recipe({"strategy": ss["head_strategy"], "epochs": int(ss["head_epochs"]), "dataset": ds})
        ds = full["dataset"]
        cfg = config_from_dict(HeadConfig, {**full, "device": DEVICE})
        n_train, n_val, n_test = _pair_counts(dataset.id, dataset.sha256 + str(dataset.meta.get("masks_sha256")), b,
                                              json.dumps(ds, sort_keys=True))
        t_len, height, width = dataset.shape
        with st.spinner(f"Timing a few training steps on {DEVICE}..."):
            est = estimate_head(cfg, n_train, DEVICE, n_val=n_val, n_test=n_test, tap_config=bundle.get("model"),
                                movie_shape=(int(t_len), -(-int(height) // b), -(-int(width) // b)),
                                n_classes=3 if ds["task"] == "three_class" else 2)
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        st.warning(f"No time estimate for these settings: {exc}")
        return
    (st.warning if est.seconds > 2 * 3600 else st.info)(
        est.summary() + (". That is long: consider strategy A2 (lite head), A0, fewer epochs or windows."
                         if est.seconds > 2 * 3600 else "."), icon=":material/schedule:")
    st.caption(est.explanation)


if "head_epochs" not in st.session_state:  # first visit: the settings that fit the worker's device
    st.session_state["head_preset"] = "cpu" if DEVICE == "cpu" else "paper"
    apply_preset()

st.title("Event head")
st.write(
    "The event head looks at a small square window in two consecutive frames and decides whether "
    "a cell **divides** (or **dies**) there. It is trained on your event masks, on top of the TAP "
    "features from the Pretrain page. Training runs as a job; after it, the head is calibrated so "
    "that its probabilities can be read as real frequencies."
)

dataset = dataset_picker("Movie with event masks", key="head_dataset", need_masks=True,
                         help="The movie and masks the head learns from (split into training, validation and test).")
tap_ref = model_picker("TAP features", key="tap_model", kind="tap",
                       help="A TAP model from the Pretrain page (or the shipped demo model).")
if dataset is not None:  # masks with no or too few events: say so before any form is filled in
    from tapcore.events.readiness import check_head_masks

    try:
        check_head_masks(load_masks(dataset), name=f"dataset {dataset.name!r}", build_windows=False)
    except ValueError as exc:
        st.error(f"Cannot train on this dataset: {exc}.")
        dataset = None
if dataset is not None and tap_ref is None:
    st.info("No TAP model yet: pretrain one on the **Pretrain** page first.")

if dataset is not None and tap_ref is not None:
    st.selectbox("Settings", list(PRESETS), format_func=lambda k: PRESETS[k]["label"], key="head_preset",
                 on_change=apply_preset, help="Fills in the form below; you can still change any value.")
    with st.form("head_form"):
        strategy = st.selectbox("Strategy", list(STRATEGY_HELP), format_func=STRATEGY_HELP.get, key="head_strategy")
        c1, c2, c3 = st.columns(3)
        task = c1.radio("What to detect", ["event", "three_class"], key="head_task",
                        format_func={"event": "any event (division or death)",
                                     "three_class": "division vs death vs nothing"}.get)
        epochs = c2.number_input("Epochs (passes over the training windows)", 1, 200, key="head_epochs",
                                 help="Paper: 10 for linear heads, 30 for ResNet heads.")
        crop = c3.number_input("Window size (px)", 16, 128, step=8, key="head_crop",
                               help="Side of the square window around a candidate event (paper: 48 px), in the "
                                    "TAP model's pixels: with binning 2 a 48 px window covers 96 movie pixels.")
        c4, c5, c6 = st.columns(3)
        pairs = c4.number_input("Windows per frame pair", 10, 5000, step=10, key="head_pairs",
                                help="Random windows sampled from each pair of consecutive frames (paper: 1000).")
        criterion = c5.selectbox("Labelling rule", list(CRITERIA), format_func=CRITERIA.get, key="head_criterion")
        min_area = c6.number_input("N: minimum event pixels", 0, 10000, key="head_min_area",
                                   help="A window counts as an event only when more than N of its pixels are "
                                        "marked in the masks, so a sliver of a cell at the window's edge is not "
                                        "an event. Only for the first labelling rule (paper: 40).")
        c7, c8 = st.columns(2)
        seed = c7.number_input("Random seed", 0, 1_000_000, 0, key="head_seed",
                               help="Same seed + same data = same result.")
        calibrate = c8.checkbox("Calibrate probabilities after training", value=True, key="head_calibrate")
        recipe = st.session_state.get("head_recipe")
        if recipe:
            rd = recipe["dataset"]
            st.caption(f"These settings also use: windows labelled by their central {rd['centre']} x {rd['centre']} "
                       "px only (an event is where the cell divides or dies, not a window that merely touches "
                       f"one), windows reaching {rd['border']} px past the frame edge (as prediction sees cells "
                       f"there), {rd['balance_ratio']} windows without an event per event window, drawn afresh "
                       f"every epoch, learning rate {recipe['lr']:g}, and the epoch with the lowest validation loss.")
        _show_estimate(dataset, tap_ref)
        b1, b2 = st.columns(2)
        b1.form_submit_button("Update estimate", help="Re-estimate the duration after changing values above.")
        go = b2.form_submit_button("Start training", type="primary")
    if go:
        config = _with_recipe({"strategy": strategy, "epochs": int(epochs), "seed": int(seed),
                               "dataset": {"crop": int(crop), "pairs_per_frame": int(pairs), "criterion": criterion,
                                           "min_area": int(min_area), "task": task, "seed": int(seed)}})
        start_job("train_head", {"dataset": dataset.id, "tap_model": tap_ref, "config": config,
                                 "calibrate": bool(calibrate)}, url_key="head_job")

st.header("Training progress")
job = live_job("head_job", ("train_head",))
if job is None:
    st.caption("No event-head training yet.")
elif job.state == "done":
    finished_banner(job, "Training finished.")
    model_dir = job.run_dir / "model"
    metrics_path = model_dir / "metrics.json"
    if metrics_path.is_file():
        import json

        m = json.loads(metrics_path.read_text())
        table = per_class_table(m.get("test") or {})
        if len(table):
            st.subheader("Result on the held-out test windows")
            table = table[["precision", "recall", "f1", "support"]].astype(float).rename(columns={"support": "test windows"})
            st.dataframe(table.style.format(precision=3, na_rep="-").format("{:.0f}", subset=["test windows"]),
                         width="stretch")
            st.caption("Precision: of the windows called events, the share that were events. "
                       "Recall: of the true events, the share that were found. Details on the **Evaluate** page.")
    keep_model_form(job, "Keep this model as", f"head-{job.id[:15]}", key="head_keep")

with st.expander("Compare strategies (paper Table 2)"):
    st.write("Trains several strategies several times each on the same windows and reports mean and "
             "spread of precision and recall. Slow: mostly for method development.")
    if dataset is not None:
        with st.form("compare_form"):
            chosen = st.multiselect("Strategies", list(STRATEGY_HELP), default=["A0", "A1", "B0", "B1"],
                                    key="cmp_strategies")
            repeats = st.number_input("Repeats per strategy", 1, 20, 3, key="cmp_repeats")
            cmp_epochs = st.number_input("Epochs per run", 1, 100, 5, key="cmp_epochs")
            cmp_pairs = st.number_input("Windows per frame pair", 10, 5000, 200, step=10, key="cmp_pairs")
            go_cmp = st.form_submit_button("Start comparison")
        if go_cmp:
            params = {"dataset": dataset.id,
                      "config": {"strategies": chosen, "repeats": int(repeats),
                                 "head": {"epochs": int(cmp_epochs), "dataset": {"pairs_per_frame": int(cmp_pairs)}}}}
            if tap_ref:
                params["tap_model"] = tap_ref
            start_job("compare", params, url_key="compare_job", queued="Its table appears on the **Evaluate** page.")
