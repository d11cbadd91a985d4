"""The workspace: datasets, runs and kept models of one lab, all on disk under ``$TAPCORE_HOME``.

::

    $TAPCORE_HOME (default ./workspace)
      jobs.sqlite                 the job queue (tapcore.jobs)
      datasets/<id>/              movie.tif, masks.tif (optional), events.csv (optional), meta.json
      runs/<job id>/              spec.json, state.json, metrics.jsonl, log.txt, checkpoint/, outputs
      models/<name>/              bundles the user keeps

A dataset is written into a hidden staging folder first, validated with :mod:`tapcore.io`, and
only then renamed into place: a bad upload leaves nothing behind. Uploads are streamed to disk in
chunks, never held whole in memory by this module.

Models are referred to by a short string (:func:`Workspace.resolve_model`):
``shipped:<name>`` (the project's ``models/<name>/``, e.g. ``shipped:demo`` and its TAP features
``shipped:demo/tap``, or ``shipped:hela-nuclei``, trained on hela01 by ``bench/gpu_suite.py``), ``saved:<name>``
(``$TAPCORE_HOME/models/<name>``), ``run:<job id>`` (the bundle a job wrote), or a folder path.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from tapcore.utils import atomic_write_json, read_json, sha256_array

logger = logging.getLogger(__name__)

CHUNK_BYTES = 8 << 20
# Shipped model bundles (the project's models/ folder); $TAPCORE_MODELS overrides it.
PROJECT_MODELS = Path(os.environ.get("TAPCORE_MODELS") or Path(__file__).resolve().parents[1] / "models")
DEMO_DATASET_ID = "demo"
DEMO_MODEL = "shipped:demo"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


#: How each model shipped in the project's ``models/`` folder is made (quoted when it is missing).
SHIPPED_HOWTO = {
    "demo": "python scripts/make_demo_model.py",
    "hela-nuclei": ("run the GPU suite (README, 'Benchmarks on a GPU': python scripts/pack_device_data.py, then "
                    "bench/gpu_suite.py on a GPU machine), then install its two zips with "
                    "python scripts/install_hela_nuclei.py hela_nuclei_head.zip hela_nuclei_tap.zip"),
}


def shipped_model_path(name: str) -> Path:
    """The folder of shipped model ``name`` (``"demo"``, ``"hela-nuclei"``, ``"demo/tap"``, ...).

    Raises:
        ValueError: the name is invalid, or the folder holds no bundle (the message names the folder
            and, for the project's known models, how to produce it).
    """
    parts = [_check_id(part, "model name") for part in str(name).split("/")]
    path = PROJECT_MODELS.joinpath(*parts)
    if not (path / "config.json").is_file():
        howto = SHIPPED_HOWTO.get(parts[0])
        hint = f"to produce it: {howto}" if howto else f"shipped models: {', '.join(sorted(SHIPPED_HOWTO))}"
        raise ValueError(f"shipped model {name!r} is not installed: {path} holds no config.json; {hint}")
    return path.resolve()


def home() -> Path:
    """The workspace folder: ``$TAPCORE_HOME`` or ``./workspace`` (absolute)."""
    return Path(os.environ.get("TAPCORE_HOME") or "workspace").resolve()


def slugify(name: str, fallback: str = "dataset") -> str:
    """A file-system-safe short name (letters, digits, ``-``)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()[:40]
    return slug or fallback


def _check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value) or ".." in value:
        raise ValueError(f"{what} {value!r} is not valid; use letters, digits, '-', '_' or '.'")
    return value


def stream_to_file(src: BinaryIO, dest: str | os.PathLike, chunk: int = CHUNK_BYTES) -> int:
    """Copy a readable binary object to ``dest`` in chunks; returns the number of bytes written."""
    if hasattr(src, "seek"):
        try:
            src.seek(0)
        except (OSError, ValueError):
            pass
    total = 0
    with open(dest, "wb") as out:
        while True:
            block = src.read(chunk)
            if not block:
                break
            out.write(block)
            total += len(block)
        out.flush()
        os.fsync(out.fileno())
    return total


@dataclass
class DatasetInfo:
    """What ``meta.json`` says about a dataset."""

    id: str
    name: str
    path: Path
    shape: tuple[int, ...]
    dtype: str
    sha256: str
    source: str
    created: str
    has_masks: bool
    meta: dict[str, Any]

    @property
    def movie_path(self) -> Path:
        return self.path / "movie.tif"

    @property
    def masks_path(self) -> Path | None:
        return self.path / "masks.tif" if self.has_masks else None

    def label(self) -> str:
        """A one-line description for pick lists."""
        t, y, x = self.shape
        masks = "with event masks" if self.has_masks else "no masks"
        return f"{self.name} ({t} frames, {y}x{x} px, {masks})"


@dataclass
class ModelInfo:
    """A model bundle the user can pick."""

    ref: str
    name: str
    path: Path
    kind: str
    origin: str  # "shipped", "saved" or "run"
    calibrated: bool

    def label(self) -> str:
        what = {"tap": "TAP features", "event_head": "event detector"}.get(self.kind, self.kind)
        cal = ", calibrated" if self.calibrated else ""
        return f"{self.name} ({what}{cal}; {self.origin})"


class Workspace:
    """Datasets and models in one workspace folder."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).resolve() if root is not None else home()
        self.datasets_dir = self.root / "datasets"
        self.models_dir = self.root / "models"
        self.runs_dir = self.root / "runs"
        for d in (self.datasets_dir, self.models_dir, self.runs_dir):
            d.mkdir(parents=True, exist_ok=True)

    # -- datasets: adding -----------------------------------------------------------------------
    def _staging(self) -> Path:
        path = self.datasets_dir / f".staging-{secrets.token_hex(4)}"
        path.mkdir()
        return path

    def _new_id(self, name: str) -> str:
        while True:
            candidate = f"{slugify(name)}-{secrets.token_hex(3)}"
            if not (self.datasets_dir / candidate).exists():
                return candidate

    def _commit(self, staging: Path, dataset_id: str, name: str, movie: np.ndarray, masks: np.ndarray | None,
                source: str, extra: dict[str, Any]) -> DatasetInfo:
        meta = {
            "id": dataset_id,
            "name": name,
            "shape": [int(s) for s in movie.shape],
            "dtype": str(movie.dtype),
            "sha256": sha256_array(movie),
            "masks_sha256": sha256_array(masks) if masks is not None else None,
            "has_masks": masks is not None,
            "source": source,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **extra,
        }
        if masks is not None:
            meta["event_pixels"] = {
                "division": int((masks == 1).sum()),
                "death": int((masks == 2).sum()),
            }
        atomic_write_json(staging / "meta.json", meta)
        final = self.datasets_dir / dataset_id
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        logger.info("saved dataset %s (%s)", dataset_id, name)
        return self.dataset(dataset_id)

    def add_array(self, movie: np.ndarray, masks: np.ndarray | None = None, *, name: str, source: str,
                  dataset_id: str | None = None, events: Any = None, extra: dict[str, Any] | None = None) -> DatasetInfo:
        """Save an in-memory movie ``(T, Y, X)`` and optional masks (checked with ``io.check_masks``)."""
        from tapcore import io

        movie = np.asarray(movie)
        if movie.ndim != 3 or movie.shape[0] < 2:
            raise ValueError(f"a movie must be (frames, height, width) with at least 2 frames, got shape {movie.shape}")
        if masks is not None:
            masks = io.check_masks(np.asarray(masks), movie)
        dataset_id = _check_id(dataset_id, "dataset id") if dataset_id else self._new_id(name)
        staging = self._staging()
        try:
            io.write_tiff(staging / "movie.tif", movie)
            if masks is not None:
                io.write_tiff(staging / "masks.tif", masks)
            if events is not None and len(events):
                events.to_csv(staging / "events.csv", index=False)
            return self._commit(staging, dataset_id, name, movie, masks, source, extra or {})
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def save_upload(self, movie_file: BinaryIO, masks_file: BinaryIO | None = None, *, name: str,
                    masks_name: str | None = None) -> DatasetInfo:
        """Stream an uploaded movie (and masks) to disk, validate them, and keep them as a dataset.

        The files are copied in chunks into a staging folder, read with :func:`tapcore.io.read_movie`
        / :func:`tapcore.io.read_masks`; any problem raises ValueError (with the file name) and the
        staging folder is removed, so nothing is saved.
        """
        from tapcore import io

        staging = self._staging()
        try:
            suffix = Path(name).suffix.lower() or ".tif"
            raw_movie = staging / f"upload-movie{suffix}"
            size = stream_to_file(movie_file, raw_movie)
            if size == 0:
                raise ValueError(f"{name} is empty (0 bytes); choose the movie file again")
            try:
                movie = io.read_movie(raw_movie)
            except ValueError as exc:
                raise ValueError(f"{name}: {_strip_path(exc, raw_movie)}") from None
            masks = None
            if masks_file is not None:
                mname = masks_name or "masks.tif"
                raw_masks = staging / f"upload-masks{Path(mname).suffix.lower() or '.tif'}"
                if stream_to_file(masks_file, raw_masks) == 0:
                    raise ValueError(f"{mname} is empty (0 bytes); choose the masks file again")
                try:
                    masks = io.read_masks(raw_masks, movie.shape)
                except ValueError as exc:
                    raise ValueError(f"{mname}: {_strip_path(exc, raw_masks)}") from None
                raw_masks.unlink()
            io.write_tiff(staging / "movie.tif", movie)
            raw_movie.unlink()
            if masks is not None:
                io.write_tiff(staging / "masks.tif", masks)
            extra = {"original_file": name, "original_masks_file": masks_name if masks is not None else None}
            return self._commit(staging, self._new_id(Path(name).stem), Path(name).stem, movie, masks, "upload", extra)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def import_path(self, path: str | os.PathLike, *, masks: str | os.PathLike | None = None,
                    name: str | None = None) -> DatasetInfo:
        """Import a movie from a path on the server: TIFF, frame folder, or a CTC sequence folder."""
        from tapcore import io

        path = Path(str(path).strip()).expanduser()
        if not str(path) or not path.exists():
            raise ValueError(f"{path} does not exist; give the full path of a TIFF file or a folder on this computer")
        got = io.read_input(path, masks=masks)
        label = name or (f"{path.parent.name}-{got.meta['sequence']}" if got.source == "ctc" and path.name == got.meta.get("sequence") else path.stem if path.is_file() else path.name)
        extra = {"original_path": str(path)}
        if got.source == "ctc":
            extra["ctc"] = {k: got.meta[k] for k in ("sequence", "first_frame", "divisions") if k in got.meta}
        return self.add_array(got.movie, got.masks, name=label, source=got.source, events=got.events, extra=extra)

    def create_demo(self, cfg: Any = None) -> DatasetInfo:
        """The synthetic demo movie (dividing and dying nuclei with exact masks), id ``demo``."""
        from tapcore import synthetic
        from tapcore.config import config_to_dict

        cfg = cfg or synthetic.SynthConfig()
        synth = synthetic.make_synthetic(cfg)
        return self.add_array(synth.movie, synth.masks, name="Synthetic demo", source="synthetic",
                              dataset_id=DEMO_DATASET_ID, events=synth.events,
                              extra={"synthetic_config": config_to_dict(cfg)})

    # -- datasets: reading ----------------------------------------------------------------------
    def dataset(self, dataset_id: str) -> DatasetInfo:
        """The dataset with this id; ValueError naming the known ones when it does not exist."""
        _check_id(dataset_id, "dataset id")
        path = self.datasets_dir / dataset_id
        if not (path / "meta.json").is_file():
            known = ", ".join(d.id for d in self.list_datasets()) or "none yet"
            raise ValueError(f"no dataset {dataset_id!r} in {self.datasets_dir}; known datasets: {known}")
        meta = read_json(path / "meta.json")
        return DatasetInfo(
            id=meta["id"], name=meta.get("name", meta["id"]), path=path, shape=tuple(meta["shape"]),
            dtype=meta["dtype"], sha256=meta["sha256"], source=meta.get("source", ""),
            created=meta.get("created", ""), has_masks=bool(meta.get("has_masks")), meta=meta,
        )

    def has_dataset(self, dataset_id: str) -> bool:
        return (self.datasets_dir / dataset_id / "meta.json").is_file()

    def list_datasets(self) -> list[DatasetInfo]:
        """All datasets, newest first."""
        out = []
        for p in self.datasets_dir.iterdir():
            if p.is_dir() and not p.name.startswith(".") and (p / "meta.json").is_file():
                try:
                    out.append(self.dataset(p.name))
                except (ValueError, KeyError):
                    logger.warning("skipping dataset folder %s with a broken meta.json", p)
        return sorted(out, key=lambda d: d.created, reverse=True)

    def load_movie(self, dataset_id: str) -> np.ndarray:
        """The movie ``(T, Y, X)`` of a dataset, native dtype."""
        import tifffile

        return np.asarray(tifffile.imread(self.dataset(dataset_id).movie_path))

    def load_masks(self, dataset_id: str) -> np.ndarray | None:
        """The event masks ``uint8 (T, Y, X)`` of a dataset, or None."""
        import tifffile

        info = self.dataset(dataset_id)
        return np.asarray(tifffile.imread(info.masks_path)) if info.has_masks else None

    def load_events(self, dataset_id: str):
        """The dataset's event table (synthetic / CTC ground truth) as a DataFrame, or None."""
        import pandas as pd

        path = self.dataset(dataset_id).path / "events.csv"
        return pd.read_csv(path) if path.is_file() else None

    def delete_dataset(self, dataset_id: str) -> None:
        info = self.dataset(dataset_id)
        shutil.rmtree(info.path)
        logger.info("deleted dataset %s", dataset_id)

    # -- models ---------------------------------------------------------------------------------
    def resolve_model(self, ref: str) -> Path:
        """The bundle folder a model reference points to (see the module docstring)."""
        if not isinstance(ref, str) or not ref.strip():
            raise ValueError("no model chosen; pick a model (e.g. 'shipped:demo') or give a bundle folder")
        ref = ref.strip()
        origin, _, name = ref.partition(":")
        if origin == "shipped" and name:
            return shipped_model_path(name)
        elif origin == "saved" and name:
            path = self.models_dir / _check_id(name, "model name")
        elif origin == "run" and name:
            path = self.runs_dir / _check_id(name, "job id") / "model"
        else:
            path = Path(ref).expanduser()
        if not (path / "config.json").is_file():
            raise ValueError(f"model {ref!r} not found (no config.json in {path}); "
                             "finish a training job or pick one of the listed models")
        return path.resolve()

    def list_models(self, kind: str | None = None) -> list[ModelInfo]:
        """Shipped models, saved models and bundles written by finished jobs (newest runs first)."""
        found: list[ModelInfo] = []
        candidates: list[tuple[str, str, str, Path]] = []
        if PROJECT_MODELS.is_dir():
            for p in sorted(PROJECT_MODELS.iterdir()):
                candidates.append((f"shipped:{p.name}", p.name, "shipped", p))
                if p.is_dir():  # a shipped head bundle may carry its TAP bundle in a sub-folder
                    for sub in sorted(q for q in p.iterdir() if q.is_dir()):
                        candidates.append((f"shipped:{p.name}/{sub.name}", f"{p.name}/{sub.name}", "shipped", sub))
        for p in sorted(self.models_dir.iterdir()):
            candidates.append((f"saved:{p.name}", p.name, "saved", p))
        for p in sorted(self.runs_dir.iterdir(), reverse=True):
            candidates.append((f"run:{p.name}", p.name, "run", p / "model"))
        for ref, name, origin, path in candidates:
            cfg_path = path / "config.json"
            if not cfg_path.is_file():
                continue
            try:
                cfg = read_json(cfg_path)
            except ValueError:
                continue
            mkind = cfg.get("kind", "")
            if kind and mkind != kind:
                continue
            found.append(ModelInfo(ref, name, path, mkind, origin, (path / "calibration.json").is_file()))
        return found

    def save_model(self, ref: str, name: str) -> str:
        """Copy a model bundle into ``$TAPCORE_HOME/models/<name>`` to keep it; returns its reference."""
        src = self.resolve_model(ref)
        name = slugify(name, "model")
        dest = self.models_dir / name
        if dest.exists():
            raise ValueError(f"a saved model called {name!r} already exists; choose another name")
        tmp = self.models_dir / f".{name}.{secrets.token_hex(3)}"
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("checkpoint", "*.tmp"))
        os.replace(tmp, dest)
        return f"saved:{name}"


def _strip_path(exc: Exception, path: Path) -> str:
    """The error text without the internal staging path (the user knows the file by its own name)."""
    return str(exc).replace(str(path), "the file").replace(path.name, "the file")
