"""The user-facing facades: a loaded model together with the metadata of its bundle folder.

``TapFeatures.load(path)`` (a ``tap`` bundle) and ``EventDetector.load(path)`` (an ``event_head``
bundle) hold the ``nn.Module`` and, as their own fields, the bundle's id, ``config.json``,
``manifest.json``, ``metrics.json`` and (event heads) ``calibration.json``: nothing is patched onto
the modules. The workflows hang off them::

    detector = EventDetector.load("models/demo")
    pred = detector.predict(movie)                  # tapcore.predict.predict_movie
    detector.calibrate(movie, masks)                # tapcore.events.calibrate.calibrate_bundle
    exp = detector.explain(movie, ExplainConfig(frame=3))   # tapcore.explain.explain_frame
    detector.save("models/mine")                    # tapcore.bundle.save_bundle (+ calibration.json)

``load_model(path)`` returns the facade that fits the bundle's kind. The workflow modules
(``predict``, ``explain``, ``events.calibrate``) take a facade or a bundle folder and import this
module; the methods here import them when called (the one import cycle, kept out of module tops).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from tapcore.bundle import MANIFEST, Bundle, load_bundle, save_bundle, write_calibration
from tapcore.calibration import Calibration, calibration_from_dict
from tapcore.config import config_from_dict
from tapcore.events.model import EventModel, event_model_from_config
from tapcore.progress import ProgressFn
from tapcore.tap.model import TapConfig, TapModel
from tapcore.utils import read_json

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


def _load_state(model: Any, state: dict, path: Path, what: str) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the {what} (missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}); the bundle is corrupt or from another version")


@dataclass
class TapFeatures:
    """A TAP model (``tap`` bundle) with its bundle metadata.

    Attributes:
        model: the :class:`~tapcore.tap.model.TapModel` (eval mode).
        config: ``config.json`` (``model``: the TapConfig, ``normalize``, ``bin``, ...).
        manifest, metrics: ``manifest.json`` / ``metrics.json``.
        path: the bundle folder (None for a model not saved yet).
    """

    model: TapModel
    config: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    path: Optional[Path] = None

    @classmethod
    def load(cls, path: PathLike, device: str = "cpu") -> "TapFeatures":
        """Load a ``tap`` bundle folder (weights with ``weights_only=True``)."""
        return cls.from_bundle(load_bundle(path, kind="tap"), device)

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: str = "cpu") -> "TapFeatures":
        if "model" not in bundle.config:
            raise ValueError(f"{bundle.path}: config.json lacks the 'model' section (TapConfig); re-create the bundle")
        model = TapModel(config_from_dict(TapConfig, bundle.config["model"]))
        _load_state(model, bundle.state_dict, bundle.path, "TAP config")
        return cls(model.to(device).eval(), bundle.config, bundle.manifest, bundle.metrics, bundle.path)

    @property
    def id(self) -> str:
        """``tap-<first 12 hex of the weights' sha256>`` (``unsaved-tap`` before :meth:`save`)."""
        return str(self.manifest.get("bundle_id") or "unsaved-tap")

    @property
    def backbone(self):
        """The dense feature backbone ``(N, 1, Y, X) -> (N, C, Y, X)``."""
        return self.model.backbone

    def explain(self, movie: np.ndarray, cfg: Any = None) -> Any:
        """Grad-CAM of the time arrow on a frame pair (:func:`tapcore.explain.explain_frame`)."""
        from tapcore.explain import explain_frame

        return explain_frame(movie, self, cfg)

    def save(self, path: PathLike) -> Path:
        """Write the model as a ``tap`` bundle folder; the facade then points at it."""
        out = save_bundle(path, kind="tap", config=self.config, state_dict=self.model.state_dict(),
                          metrics=self.metrics, manifest=self.manifest)
        self.manifest = read_json(out / MANIFEST)
        self.path = Path(out)
        return self.path


@dataclass
class EventDetector:
    """An event model (``event_head`` bundle) with its bundle metadata and calibration.

    Attributes:
        model: the :class:`~tapcore.events.model.EventModel` (eval mode).
        config: ``config.json`` (TAP config, head, crop, class names, ``normalize``, ``bin``, ...).
        manifest, metrics: ``manifest.json`` / ``metrics.json``.
        calibration: ``calibration.json`` (validated) or None.
        path: the bundle folder (None for a model not saved yet).
    """

    model: EventModel
    config: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    calibration: Optional[dict[str, Any]] = None
    path: Optional[Path] = None

    @classmethod
    def load(cls, path: PathLike, device: str = "cpu") -> "EventDetector":
        """Load an ``event_head`` bundle folder (weights with ``weights_only=True``)."""
        return cls.from_bundle(load_bundle(path), device)

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: str = "cpu") -> "EventDetector":
        if bundle.kind != "event_head":
            raise ValueError(f"{bundle.path} is a {bundle.kind!r} bundle, not an event head; "
                             "pass a folder written by tapcore train-head")
        model = event_model_from_config(bundle.config)
        _load_state(model, bundle.state_dict, bundle.path, "config")
        return cls(model.to(device).eval(), bundle.config, bundle.manifest, bundle.metrics, bundle.calibration,
                   bundle.path)

    @property
    def id(self) -> str:
        """``event_head-<first 12 hex of the weights' sha256>`` (``unsaved-model`` before :meth:`save`)."""
        return str(self.manifest.get("bundle_id") or "unsaved-model")

    @property
    def class_names(self) -> list[str]:
        """Class names (index 0 is "none"); generic names when the config has none that fit."""
        names = list(self.config.get("class_names") or [])
        k = int(self.model.head.n_classes)
        if len(names) == k:
            return names
        return ["none"] + (["event"] if k == 2 else [f"class{c}" for c in range(1, k)])

    def calibration_or_identity(self) -> Calibration:
        """The validated :class:`~tapcore.calibration.Calibration` of ``calibration.json`` (identity without one)."""
        return calibration_from_dict(self.calibration)

    def predict(self, movie: np.ndarray, cfg: Any = None, progress: Optional[ProgressFn] = None) -> Any:
        """Calibrated event maps, events and per-frame summary (:func:`tapcore.predict.predict_movie`)."""
        from tapcore.predict import predict_movie

        return predict_movie(movie, self, cfg, progress)

    def calibrate(self, movie: Optional[np.ndarray] = None, masks: Optional[np.ndarray] = None, cfg: Any = None, *,
                  progress: Optional[ProgressFn] = None, write: bool = True, **options: Any) -> Any:
        """Fit temperature scaling (:func:`tapcore.events.calibrate.calibrate_bundle`) on the bundle folder;
        the detector uses the new calibration from then on."""
        from tapcore.events.calibrate import calibrate_bundle

        if self.path is None:
            raise ValueError("calibration needs the model's bundle folder: save() the detector first")
        result = calibrate_bundle(self.path, movie, masks, cfg, progress=progress, write=write, **options)
        self.calibration = dict(result.report)
        return result

    def explain(self, movie: np.ndarray, cfg: Any = None) -> Any:
        """Grad-CAM of the event evidence on a frame pair (:func:`tapcore.explain.explain_frame`)."""
        from tapcore.explain import explain_frame

        return explain_frame(movie, self, cfg)

    def save(self, path: PathLike) -> Path:
        """Write the model as an ``event_head`` bundle folder (with ``calibration.json`` when calibrated);
        the facade then points at it."""
        out = save_bundle(path, kind="event_head", config=self.config, state_dict=self.model.state_dict(),
                          metrics=self.metrics, manifest=self.manifest)
        if self.calibration is not None:
            write_calibration(out, self.calibration)
        self.manifest = read_json(out / MANIFEST)
        self.path = Path(out)
        return self.path


def load_model(path: PathLike, device: str = "cpu") -> Union[TapFeatures, EventDetector]:
    """The facade for a bundle folder of either kind."""
    bundle = load_bundle(path)
    return TapFeatures.from_bundle(bundle, device) if bundle.kind == "tap" else EventDetector.from_bundle(bundle, device)
