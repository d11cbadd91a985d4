"""Model bundles: a trained model is a folder of JSON files plus a plain state dict.

Layout of a bundle folder::

    config.json        {"kind": "tap" | "event_head", ...}: everything needed to rebuild the model
    weights.pt         state dict (str -> tensor), loaded with torch.load(weights_only=True)
    metrics.json       training / validation metrics
    manifest.json      provenance: data sha256, seed, versions, device, created, weights_sha256, bundle_id
    calibration.json   optional, written later by :func:`write_calibration`

No pickled modules: a bundle is rebuilt from ``config.json`` by the facade of its kind
(``tapcore.detector.TapFeatures.load`` for TAP, ``tapcore.detector.EventDetector.load`` for event
heads), which also keeps the bundle's metadata.

Writes are atomic. :func:`save_bundle` writes a complete bundle into a temporary sibling folder and
then swaps it into place with renames; files that are not part of a bundle (a training run's
``checkpoint/`` and ``metrics.jsonl`` live in the same folder) are carried over. A failure while
writing leaves an existing bundle untouched and no half-written bundle behind.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tempfile
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from tapcore.calibration import calibration_from_dict
from tapcore.utils import atomic_write_json, chmod_as_created, read_json

logger = logging.getLogger(__name__)

__all__ = [
    "KINDS",
    "BUNDLE_FILES",
    "Bundle",
    "save_bundle",
    "load_bundle",
    "write_calibration",
    "validate_calibration",
    "is_bundle",
    "bundle_zip",
]

KINDS = ("tap", "event_head")
CONFIG, WEIGHTS, METRICS, MANIFEST, CALIBRATION = (
    "config.json", "weights.pt", "metrics.json", "manifest.json", "calibration.json")
BUNDLE_FILES = (CONFIG, WEIGHTS, METRICS, MANIFEST, CALIBRATION)
FORMAT_VERSION = 1


@dataclass
class Bundle:
    """A loaded bundle.

    Attributes:
        path: the bundle folder.
        kind: ``"tap"`` or ``"event_head"``.
        config: ``config.json`` without its ``kind`` (and ``format_version``) keys.
        state_dict: the weights (CPU tensors).
        metrics: ``metrics.json``.
        manifest: ``manifest.json``.
        calibration: ``calibration.json`` (validated) or None.
    """

    path: Path
    kind: str
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    calibration: Optional[dict[str, Any]] = None

    @property
    def id(self) -> str:
        """Short stable identity of the weights (``<kind>-<first 12 hex of sha256(weights.pt)>``)."""
        return str(self.manifest.get("bundle_id") or f"{self.kind}-unknown")


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown bundle kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    return kind


def _weights_bytes(state_dict: dict[str, Any]) -> bytes:
    if not isinstance(state_dict, dict) or not state_dict:
        raise ValueError("a bundle needs a non-empty state dict (name -> tensor)")
    clean: dict[str, torch.Tensor] = {}
    for name, value in state_dict.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise ValueError(f"state dict entry {name!r} is not a tensor; bundles hold tensors only")
        clean[name] = value.detach().to("cpu").contiguous()
    buf = io.BytesIO()
    torch.save(clean, buf)
    return buf.getvalue()


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def save_bundle(path: str | os.PathLike, *, kind: str, config: dict[str, Any], state_dict: dict[str, Any],
                metrics: Optional[dict[str, Any]] = None, manifest: Optional[dict[str, Any]] = None) -> Path:
    """Write a bundle folder atomically.

    Args:
        path: the bundle folder (created; an existing bundle there is replaced, other files kept).
        kind: ``"tap"`` or ``"event_head"``.
        config: JSON-able dict to rebuild the model (must not contain ``kind``).
        state_dict: weights; saved as CPU, contiguous tensors.
        metrics: JSON-able metrics (default empty).
        manifest: JSON-able provenance; ``weights_sha256``, ``bundle_id`` and ``kind`` are added.

    Returns:
        The bundle folder's path. Any ``calibration.json`` of a replaced bundle is dropped (it
        belonged to the old weights).
    """
    _check_kind(kind)
    if not isinstance(config, dict):
        raise ValueError(f"bundle config must be a dict, got {type(config).__name__}")
    if "kind" in config or "format_version" in config:
        raise ValueError("bundle config must not contain the reserved keys 'kind' / 'format_version'")
    path = Path(path)
    weights = _weights_bytes(state_dict)
    digest = hashlib.sha256(weights).hexdigest()
    manifest = dict(manifest or {})
    manifest.update({"kind": kind, "weights_sha256": digest, "bundle_id": f"{kind}-{digest[:12]}"})

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    chmod_as_created(tmp)  # mkdtemp's 0700 would hide the bundle from the lab's group
    try:
        atomic_write_json(tmp / CONFIG, {"kind": kind, "format_version": FORMAT_VERSION, **config})
        _write_file(tmp / WEIGHTS, weights)
        atomic_write_json(tmp / METRICS, dict(metrics or {}))
        atomic_write_json(tmp / MANIFEST, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _swap_in(tmp, path)
    logger.debug("saved %s bundle %s to %s", kind, manifest["bundle_id"], path)
    return path


def _swap_in(tmp: Path, path: Path) -> None:
    """Move the finished bundle ``tmp`` to ``path``, carrying over ``path``'s non-bundle entries."""
    if not path.exists():
        os.replace(tmp, path)
        return
    if not path.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"{path} exists and is not a folder; choose another output folder")
    moved: list[str] = []
    try:
        for entry in os.listdir(path):
            if entry in BUNDLE_FILES:
                continue
            os.rename(path / entry, tmp / entry)
            moved.append(entry)
        trash = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(path, trash)
    except BaseException:
        for entry in moved:  # put the carried entries back; the old bundle stays as it was
            os.rename(tmp / entry, path / entry)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(trash, path)
        for entry in moved:
            os.rename(tmp / entry, path / entry)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(trash, ignore_errors=True)


def is_bundle(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder holding at least ``config.json`` and ``weights.pt``."""
    p = Path(path)
    return (p / CONFIG).is_file() and (p / WEIGHTS).is_file()


def _read_json_file(path: Path, what: str) -> Any:
    if not path.is_file():
        raise ValueError(f"{path.parent} is not a complete model bundle: {path.name} ({what}) is missing; "
                         "re-create the bundle (tapcore pretrain / train-head)")
    return read_json(path)


def load_bundle(path: str | os.PathLike, kind: Optional[str] = None) -> Bundle:
    """Load and validate a bundle folder.

    Args:
        path: the bundle folder.
        kind: when given, the bundle must be of this kind.

    Raises:
        ValueError: the folder is missing, a file is missing or corrupt, the weights do not match
            the manifest's hash, or the kind is wrong.
    """
    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"model bundle {p} not found (expected a folder with config.json and weights.pt)")
    config = _read_json_file(p / CONFIG, "model configuration")
    if not isinstance(config, dict) or "kind" not in config:
        raise ValueError(f"{p / CONFIG} has no 'kind'; it is not a tapcore bundle config")
    found = config.pop("kind")
    config.pop("format_version", None)
    if found not in KINDS:
        raise ValueError(f"{p} has unknown bundle kind {found!r}; valid kinds: {', '.join(KINDS)}")
    if kind is not None and found != _check_kind(kind):
        raise ValueError(f"{p} is a {found!r} bundle, but a {kind!r} bundle is needed here")
    metrics = _read_json_file(p / METRICS, "metrics")
    manifest = _read_json_file(p / MANIFEST, "provenance manifest")
    if not isinstance(metrics, dict) or not isinstance(manifest, dict):
        raise ValueError(f"{p}: metrics.json and manifest.json must hold JSON objects")
    wpath = p / WEIGHTS
    if not wpath.is_file():
        raise ValueError(f"{p} is not a complete model bundle: weights.pt is missing; re-create the bundle")
    data = wpath.read_bytes()
    expected = manifest.get("weights_sha256")
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise ValueError(f"{wpath} does not match the hash in manifest.json: the weights file is corrupt "
                         "or was replaced; re-create the bundle")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / non-torch files
        raise ValueError(f"{wpath} cannot be read as weights ({type(exc).__name__}: {exc}); "
                         "the file is corrupt: re-create the bundle") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{wpath} does not hold a state dict of tensors; re-create the bundle")
    calibration = None
    if (p / CALIBRATION).is_file():
        calibration = validate_calibration(read_json(p / CALIBRATION), source=str(p / CALIBRATION))
    return Bundle(path=p, kind=found, config=config, state_dict=state, metrics=metrics, manifest=manifest,
                  calibration=calibration)


def validate_calibration(calib: Any, source: str = "calibration") -> dict[str, Any]:
    """Check a calibration dict with :func:`tapcore.calibration.calibration_from_dict` (the one
    validator of ``calibration.json``); return it as a plain dict or raise ValueError."""
    calibration_from_dict(calib, source)
    return dict(calib)


def write_calibration(path: str | os.PathLike, calib: dict[str, Any]) -> Path:
    """Validate ``calib`` and write it atomically as ``calibration.json`` into the bundle at ``path``."""
    p = Path(path)
    if not is_bundle(p):
        raise ValueError(f"{p} is not a model bundle (no config.json / weights.pt); calibrate a trained model folder")
    calib = validate_calibration(calib)
    return atomic_write_json(p / CALIBRATION, calib)


def bundle_zip(path: str | os.PathLike) -> bytes:
    """A bundle folder as zip bytes (every file below it except a training run's ``checkpoint/``)."""
    root = Path(path)
    if not is_bundle(root):
        raise ValueError(f"{root} is not a model bundle (no config.json / weights.pt)")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(root.rglob("*")):
            if f.is_file() and "checkpoint" not in f.relative_to(root).parts:
                z.write(f, f.relative_to(root))
    return buf.getvalue()
