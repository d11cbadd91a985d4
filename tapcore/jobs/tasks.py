"""The job kinds: one registry entry per kind, mapping a job spec to one library call.

A job spec is plain JSON ``{"kind": <kind>, "params": {...}}``. Each task is a function
``task(params, run_dir, progress) -> outputs`` (``outputs``: name -> path relative to ``run_dir``)
that reads its inputs from the workspace, calls the library, and writes into ``run_dir``.
Trained bundles go to ``run_dir/model`` (referred to as ``run:<job id>``). A task is resumable
when the library function can pick up ``run_dir/model/checkpoint``; the worker re-runs an
interrupted job's task and the task passes ``resume=True`` when a checkpoint is there.

Adding a kind = writing one function and adding one :data:`TASKS` entry.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tapcore.progress import ProgressFn
from tapcore.utils import atomic_dir, atomic_write_json

logger = logging.getLogger(__name__)

TaskFn = Callable[[dict[str, Any], Path, ProgressFn], dict[str, str]]


@dataclass(frozen=True)
class Task:
    """One job kind: its function, the params it needs, and a plain-words title."""

    fn: TaskFn
    required: tuple[str, ...]
    optional: tuple[str, ...]
    title: str


def job_device() -> str:
    """The device a job runs on: ``$TAPCORE_DEVICE`` set by its worker (``auto`` when unset)."""
    from tapcore.utils import resolve_device

    return resolve_device(os.environ.get("TAPCORE_DEVICE") or "auto")


def _workspace(run_dir: Path):
    from tapcore.workspace import Workspace

    # run_dir = <home>/runs/<job id>
    return Workspace(run_dir.parent.parent)


def _has_checkpoint(folder: Path) -> bool:
    ckpt = folder / "checkpoint"
    return ckpt.is_dir() and any(ckpt.iterdir())


def _config(cls: type, params: dict[str, Any]):
    """The task's config dataclass from ``params["config"]``, on the job's device when it has one."""
    from tapcore.config import config_from_dict

    config = dict(params.get("config") or {})
    if "device" in getattr(cls, "__dataclass_fields__", {}):
        config.setdefault("device", job_device())
    return config_from_dict(cls, config)


def _record_inputs(run_dir: Path, **inputs: Any) -> None:
    atomic_write_json(run_dir / "inputs.json", inputs)


# -- tasks -------------------------------------------------------------------------------------
def task_pretrain(params: dict[str, Any], run_dir: Path, progress: ProgressFn) -> dict[str, str]:
    """Pretrain TAP features on a dataset's movie (``tapcore.tap.train.pretrain``).

    Resumable: an interrupted job finds ``model/checkpoint/`` and continues from its last epoch.
    """
    ws = _workspace(run_dir)
    dataset = ws.dataset(params["dataset"])
    movie = ws.load_movie(dataset.id)
    val_movie = ws.load_movie(params["val_dataset"]) if params.get("val_dataset") else None
    from tapcore.presets import apply_preset
    from tapcore.tap.train import PretrainConfig, pretrain

    config = dict(params.get("config") or {})
    if config.get("preset"):  # a named preset (tapcore.presets) under the explicit options
        config.setdefault("device", job_device())
        cfg = apply_preset(config["preset"], config)
    else:
        cfg = _config(PretrainConfig, params)
    out = run_dir / "model"
    resume = _has_checkpoint(out)
    if resume:
        logger.info("resuming from %s", out / "checkpoint")
    _record_inputs(run_dir, dataset=dataset.meta, config=params.get("config") or {})
    pretrain(movie, cfg, out, val_movie=val_movie, progress=progress, resume=resume)
    return {"model": "model"}


def task_train_head(params: dict[str, Any], run_dir: Path, progress: ProgressFn) -> dict[str, str]:
    """Train an event head on TAP features (``tapcore.events.train.train_head``), then calibrate it."""
    ws = _workspace(run_dir)
    dataset = ws.dataset(params["dataset"])
    if not dataset.has_masks:
        raise ValueError(f"dataset {dataset.name!r} has no event masks; training an event head needs "
                         "masks marking divisions (1) and deaths (2): add them on the Data page")
    tap_path = ws.resolve_model(params["tap_model"])
    movie = ws.load_movie(dataset.id)
    masks = ws.load_masks(dataset.id)
    from tapcore.events.train import HeadConfig, train_head

    cfg = _config(HeadConfig, params)
    out = run_dir / "model"
    _record_inputs(run_dir, dataset=dataset.meta, tap_model=str(tap_path), config=params.get("config") or {})
    result = train_head(movie, masks, tap_path, cfg, out, progress=progress)
    outputs = {"model": "model"}
    from tapcore.distributed import env_world

    world = env_world()  # under torchrun (multi-GPU Slurm job) rank 0 alone calibrates the bundle it wrote
    if params.get("calibrate", True) and (world is None or world[0] == 0):
        result.detector.calibrate(movie, masks, device=job_device(), progress=progress)
        outputs["calibration"] = "model/calibration.json"
    return outputs


def task_calibrate(params: dict[str, Any], run_dir: Path, progress: ProgressFn) -> dict[str, str]:
    """Fit temperature scaling for an event model on a dataset's validation pairs."""
    ws = _workspace(run_dir)
    path = ws.resolve_model(params["model"])
    masks = ws.load_masks(params["dataset"])
    if masks is None:
        raise ValueError("calibration needs a dataset with event masks; pick one that has them")
    movie = ws.load_movie(params["dataset"])
    from tapcore.detector import EventDetector

    EventDetector.load(path).calibrate(movie, masks, device=job_device(), progress=progress)
    return {"calibration": str(path / "calibration.json")}


def task_predict(params: dict[str, Any], run_dir: Path, progress: ProgressFn) -> dict[str, str]:
    """Per-frame event probability maps and the event list for a whole movie."""
    ws = _workspace(run_dir)
    dataset = ws.dataset(params["dataset"])
    path = ws.resolve_model(params["model"])
    movie = ws.load_movie(dataset.id)
    from tapcore.detector import EventDetector
    from tapcore.predict import PredictConfig, write_prediction

    cfg = _config(PredictConfig, params)
    _record_inputs(run_dir, dataset=dataset.meta, model=str(path), config=params.get("config") or {})
    pred = EventDetector.load(path).predict(movie, cfg, progress=progress)
    with atomic_dir(run_dir / "prediction") as tmp:  # all files or none: never a half-written prediction
        write_prediction(pred, tmp)
    return {"prediction": "prediction"}


def task_compare(params: dict[str, Any], run_dir: Path, progress: ProgressFn) -> dict[str, str]:
    """Train every strategy x criterion x repeat and tabulate precision/recall (paper Tables 2 and 5)."""
    ws = _workspace(run_dir)
    dataset = ws.dataset(params["dataset"])
    if not dataset.has_masks:
        raise ValueError(f"dataset {dataset.name!r} has no event masks; comparing strategies needs them")
    tap_path = ws.resolve_model(params["tap_model"]) if params.get("tap_model") else None
    movie = ws.load_movie(dataset.id)
    masks = ws.load_masks(dataset.id)
    from tapcore.config import config_from_dict
    from tapcore.events.compare import CompareConfig, compare

    config = dict(params.get("config") or {})
    head = dict(config.pop("head", None) or {})
    head.setdefault("device", job_device())
    cfg = config_from_dict(CompareConfig, {**config, "head": head})
    _record_inputs(run_dir, dataset=dataset.meta, tap_model=str(tap_path) if tap_path else None,
                   config=params.get("config") or {})
    compare(movie, masks, tap_path, cfg, run_dir / "compare", progress=progress)
    return {"table": "compare/table.csv", "runs": "compare/runs.csv"}


TASKS: dict[str, Task] = {
    "pretrain": Task(task_pretrain, ("dataset",), ("config", "val_dataset"), "Pretrain TAP features"),
    "train_head": Task(task_train_head, ("dataset", "tap_model"), ("config", "calibrate"), "Train an event head"),
    "compare": Task(task_compare, ("dataset",), ("tap_model", "config"), "Compare training strategies"),
    "calibrate": Task(task_calibrate, ("dataset", "model"), ("config",), "Calibrate an event model"),
    "predict": Task(task_predict, ("dataset", "model"), ("config",), "Predict events in a movie"),
}


def validate_spec(spec: Any) -> dict[str, Any]:
    """Check a job spec's shape, kind and params; returns a clean ``{"kind", "params"}`` dict."""
    if not isinstance(spec, dict):
        raise ValueError('a job spec must be a JSON object like {"kind": "pretrain", "params": {...}}')
    kind = spec.get("kind")
    if kind not in TASKS:
        raise ValueError(f"unknown job kind {kind!r}; valid kinds: {', '.join(sorted(TASKS))}")
    params = spec.get("params", {})
    if not isinstance(params, dict):
        raise ValueError(f"'params' of a {kind} job must be a JSON object, got {type(params).__name__}")
    task = TASKS[kind]
    missing = [k for k in task.required if params.get(k) in (None, "")]
    if missing:
        raise ValueError(f"a {kind} job needs {', '.join(missing)} in its params")
    unknown = sorted(set(params) - set(task.required) - set(task.optional))
    if unknown:
        raise ValueError(f"unknown {kind} param(s) {', '.join(unknown)}; valid: "
                         f"{', '.join(task.required + task.optional)}")
    if "config" in params and not isinstance(params["config"], dict):
        raise ValueError(f"'config' of a {kind} job must be a JSON object of options")
    return {"kind": kind, "params": params}


#: Job kinds that learn from (or calibrate on) a dataset's event masks.
MASK_KINDS = ("train_head", "compare", "calibrate")


def preflight(spec: dict[str, Any], home: str | os.PathLike) -> None:
    """Checks that need the workspace, run when a job is submitted, before it is queued.

    A head, comparison or calibration job on a dataset whose masks hold no events, or too few to
    train and calibrate (:func:`tapcore.events.readiness.check_head_masks`), is refused here with the
    counts and the minimum instead of failing after minutes of work. Unknown datasets are left to
    the job, which fails with the list of known ones.
    """
    kind, params = spec["kind"], spec["params"]
    if kind not in MASK_KINDS:
        return
    from tapcore.config import config_from_dict
    from tapcore.events.dataset import CropPairConfig
    from tapcore.events.readiness import check_head_masks
    from tapcore.workspace import Workspace

    ws = Workspace(home)
    try:
        info = ws.dataset(str(params["dataset"]))
    except ValueError:
        return
    if not info.has_masks:
        raise ValueError(f"dataset {info.name!r} has no event masks; a {kind} job learns from them: add masks on "
                         "the Data page or choose a dataset with masks")
    config = params.get("config") or {}
    if kind == "train_head":
        window = config.get("dataset")
    elif kind == "compare":
        window = (config.get("head") or {}).get("dataset")
    else:
        window = None
    cfg = config_from_dict(CropPairConfig, window) if window else None
    check_head_masks(ws.load_masks(info.id), cfg, name=f"dataset {info.name!r}", build_windows=kind != "calibrate")


def run_task(spec: dict[str, Any], run_dir: Path, progress: ProgressFn) -> dict[str, str]:
    """Run the task of a (validated) spec in ``run_dir``; returns its outputs."""
    spec = validate_spec({"kind": spec.get("kind"), "params": spec.get("params", {})})
    return TASKS[spec["kind"]].fn(spec["params"], Path(run_dir), progress) or {}
