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

import hashlib
import logging
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from tapcore import audit
from tapcore.access import (LAB, LOCAL_ADMIN, AccessDenied, User, can_read, check_change, check_read, read_access,
                            run_access, write_access)
from tapcore.io import human_bytes
from tapcore.utils import atomic_write_json, explain_disk_full, read_json, sha256_array

logger = logging.getLogger(__name__)

CHUNK_BYTES = 8 << 20
#: Default of ``$TAPCORE_MAX_UPLOAD_MB`` (matches ``server.maxUploadSize`` in .streamlit/config.toml).
DEFAULT_MAX_UPLOAD_MB = 2048
#: Upload staging folders older than this are removed (an abandoned upload in a closed tab).
STALE_STAGING_S = 24 * 3600
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


def max_upload_bytes() -> int:
    """The largest upload accepted: ``$TAPCORE_MAX_UPLOAD_MB`` megabytes (default 2048, the app's
    ``server.maxUploadSize`` in ``.streamlit/config.toml``)."""
    raw = os.environ.get("TAPCORE_MAX_UPLOAD_MB", str(DEFAULT_MAX_UPLOAD_MB))
    try:
        return int(float(raw) * 2**20)
    except ValueError:
        raise ValueError(f"TAPCORE_MAX_UPLOAD_MB must be a number of megabytes, got {raw!r}") from None


def stream_to_file(src: BinaryIO, dest: str | os.PathLike, chunk: int = CHUNK_BYTES, *,
                   max_bytes: int | None = None, name: str | None = None,
                   digest: Any = None) -> int:
    """Copy a readable binary object to ``dest`` in chunks; returns the number of bytes written.

    At most one chunk is held at a time. ``max_bytes``: refuse (ValueError naming the limit) as
    soon as more arrive; ``dest`` is then removed. ``digest``: a ``hashlib`` object updated with
    every chunk (the upload's SHA-256 without reading it twice).
    """
    if hasattr(src, "seek"):
        try:
            src.seek(0)
        except (OSError, ValueError):
            pass
    total = 0
    try:
        with open(dest, "wb") as out:
            while True:
                block = src.read(chunk)
                if not block:
                    break
                total += len(block)
                if max_bytes is not None and total > max_bytes:
                    raise ValueError(
                        f"{name or 'the file'} is larger than the upload limit of {human_bytes(max_bytes)}; for "
                        "bigger movies use 'Import from a folder' (a path on this computer) or `tapcore` on the "
                        "command line, or raise TAPCORE_MAX_UPLOAD_MB and server.maxUploadSize"
                    )
                out.write(block)
                if digest is not None:
                    digest.update(block)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        try:
            os.unlink(dest)
        except FileNotFoundError:
            pass
        raise
    return total


def safe_suffix(name: str, default: str = ".tif") -> str:
    """The file-name extension of an uploaded name, if it is a plain one (``.tif``); else ``default``."""
    suffix = Path(str(name).replace("\\", "/")).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else default


def display_name(name: str, fallback: str = "upload") -> str:
    """A dataset name from an uploaded file name: its last path part without the extension, no
    control characters, at most 80 characters (the stored files get fixed safe names anyway)."""
    base = str(name).replace("\\", "/").rstrip("/").split("/")[-1]
    stem = base[: -len(Path(base).suffix)] if Path(base).suffix else base
    stem = "".join(ch for ch in stem if ch.isprintable()).strip().strip(".")
    return stem[:80] or fallback


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
    #: True when an upload was identical to this existing dataset, which was reused (nothing new saved).
    reused: bool = False
    #: Who owns it (tapcore.access) and whether it is shared with the lab (read-only for the others).
    owner: str = LOCAL_ADMIN.name
    shared: bool = False

    @property
    def warnings(self) -> list[str]:
        """What may not work well with this movie (from ``meta.json``)."""
        return list(self.meta.get("warnings") or [])

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
    owner: str = LAB
    shared: bool = True

    def label(self) -> str:
        what = {"tap": "TAP features", "event_head": "event detector"}.get(self.kind, self.kind)
        cal = ", calibrated" if self.calibrated else ""
        return f"{self.name} ({what}{cal}; {self.origin})"


class Workspace:
    """Datasets and models in one workspace folder, seen by one acting user.

    ``user``: who acts (:class:`tapcore.access.User`); it sees and changes its own datasets and
    models, reads those shared with the lab, and gets :class:`tapcore.access.AccessDenied` for
    anything else. Admins see all. Default: :data:`tapcore.access.LOCAL_ADMIN` (the single user of
    a box without sign-in, the CLI on the box, and the job worker).
    """

    def __init__(self, root: str | os.PathLike | None = None, user: User | None = None):
        self.user = user if user is not None else LOCAL_ADMIN
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
                source: str, extra: dict[str, Any], movie_sha: str | None = None,
                masks_sha: str | None = None) -> DatasetInfo:
        meta = {
            "id": dataset_id,
            "name": name,
            "shape": [int(s) for s in movie.shape],
            "dtype": str(movie.dtype),
            "sha256": movie_sha or sha256_array(movie),
            "masks_sha256": masks_sha or (sha256_array(masks) if masks is not None else None),
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
        owner = LAB if dataset_id == DEMO_DATASET_ID else self.user.name
        write_access(staging, owner, shared=owner == LAB)
        final = self.datasets_dir / dataset_id
        if final.exists() and dataset_id != DEMO_DATASET_ID:  # the demo is the same synthetic movie for everyone
            check_change(self.user, *self._dataset_access(dataset_id), f"dataset {dataset_id!r}", "replace")
            shutil.rmtree(final)
        os.replace(staging, final)
        logger.info("saved dataset %s (%s) for %s", dataset_id, name, self.user.name)
        audit.record(self.root, self.user, "upload" if source == "upload" else "import", "dataset", dataset_id,
                     f"{name} ({source})")
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
            with explain_disk_full(self.root):
                return self._write_dataset(staging, dataset_id, name, movie, masks, source, events, extra)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _write_dataset(self, staging: Path, dataset_id: str, name: str, movie: np.ndarray, masks: np.ndarray | None,
                       source: str, events: Any, extra: dict[str, Any] | None) -> DatasetInfo:
        from tapcore import io

        io.write_tiff(staging / "movie.tif", movie)
        if masks is not None:
            io.write_tiff(staging / "masks.tif", masks)
        if events is not None and len(events):
            events.to_csv(staging / "events.csv", index=False)
        return self._commit(staging, dataset_id, name, movie, masks, source, extra or {})

    # -- datasets: uploads ----------------------------------------------------------------------
    def stage_upload(self, movie_file: BinaryIO, masks_file: BinaryIO | None = None, *, name: str,
                     masks_name: str | None = None, max_bytes: int | None = None) -> "StagedUpload":
        """Stream an uploaded movie (and masks) into a staging folder and read its layout.

        Nothing is decoded yet: the movie's metadata says whether a channel or a z-plane must be
        picked (:attr:`StagedUpload.layout`). Finish with :meth:`finish_upload` or drop it with
        :meth:`discard_upload`. The stored files get fixed names (``upload-movie.tif``); the user's
        file name is only kept as text in ``meta.json``. ValueError (naming the file, the problem
        and the fix) for an empty, oversized or unreadable file; the staging folder is then removed.
        """
        from tapcore import io

        limit = max_upload_bytes() if max_bytes is None else int(max_bytes)
        self._remove_stale_staging()
        staging = self.datasets_dir / f".upload-{secrets.token_hex(8)}"
        staging.mkdir()
        try:
            with explain_disk_full(self.root):
                raw_movie = staging / f"upload-movie{safe_suffix(name)}"
                digest = hashlib.sha256()
                size = stream_to_file(movie_file, raw_movie, max_bytes=limit, name=display_name(name) + safe_suffix(name),
                                      digest=digest)
                if size == 0:
                    raise ValueError(f"{_shown(name)} is empty (0 bytes); choose the movie file again")
                try:
                    layout = io.describe_file(raw_movie)
                except ValueError as exc:
                    raise ValueError(f"{_shown(name)}: {_strip_path(exc, raw_movie)}") from None
                raw_masks = None
                if masks_file is not None:
                    mname = masks_name or "masks.tif"
                    raw_masks = staging / f"upload-masks{safe_suffix(mname)}"
                    if stream_to_file(masks_file, raw_masks, max_bytes=limit, name=_shown(mname)) == 0:
                        raise ValueError(f"{_shown(mname)} is empty (0 bytes); choose the masks file again")
                staged = StagedUpload(
                    token=staging.name[len(".upload-"):], folder=staging, movie_path=raw_movie,
                    masks_path=raw_masks, name=str(name), masks_name=masks_name if masks_file is not None else None,
                    size=size, sha256=digest.hexdigest(), layout=layout,
                )
                atomic_write_json(staging / "upload.json", {**staged.to_dict(), "owner": self.user.name})
                return staged
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def staged_upload(self, token: str) -> "StagedUpload | None":
        """The staged upload with this token (from :meth:`stage_upload`), or None when it is gone."""
        if not isinstance(token, str) or not re.fullmatch(r"[0-9a-f]{16}", token):
            return None
        folder = self.datasets_dir / f".upload-{token}"
        if not (folder / "upload.json").is_file():
            return None
        data = read_json(folder / "upload.json")
        if data.get("owner", LOCAL_ADMIN.name) != self.user.name:
            return None  # another user's upload in progress: as if it did not exist
        return StagedUpload.from_dict(data, folder)

    def discard_upload(self, staged: "StagedUpload") -> None:
        """Remove a staged upload that will not be saved."""
        shutil.rmtree(staged.folder, ignore_errors=True)

    def preview_upload(self, staged: "StagedUpload", channel: int | None = None, plane: int | str | None = None,
                       frame: int = 0) -> np.ndarray:
        """One frame ``(Y, X)`` of a staged movie with the chosen channel / plane (ValueError like read_movie)."""
        from tapcore import io

        try:
            return io.read_frame(staged.movie_path, frame, channel=channel, plane=plane)
        except ValueError as exc:
            raise ValueError(f"{_shown(staged.name)}: {_strip_path(exc, staged.movie_path)}") from None

    def finish_upload(self, staged: "StagedUpload", channel: int | None = None,
                      plane: int | str | None = None) -> DatasetInfo:
        """Read and check a staged upload with the chosen channel / plane and keep it as a dataset.

        When a dataset with the same movie (and masks) already exists, the upload is dropped and that
        dataset is returned with ``reused=True``. Any problem raises ValueError (naming the file) and
        nothing is saved; the staged files stay so that the user can pick another channel or plane.
        """
        from tapcore import io

        staging = staged.folder
        with explain_disk_full(self.root):
            warnings: list[str] = []
            try:
                # mapped, not copied, when the upload is an uncompressed TIFF: one full copy less in memory
                movie = io.read_movie(staged.movie_path, channel=channel, plane=plane, warnings=warnings, mmap=True)
            except ValueError as exc:
                raise ValueError(f"{_shown(staged.name)}: {_strip_path(exc, staged.movie_path)}") from None
            masks = None
            if staged.masks_path is not None:
                try:
                    masks = io.read_masks(staged.masks_path, movie.shape)
                except ValueError as exc:
                    raise ValueError(f"{_shown(staged.masks_name or 'masks.tif')}: "
                                     f"{_strip_path(exc, staged.masks_path)}") from None
            movie_sha = sha256_array(movie)
            masks_sha = sha256_array(masks) if masks is not None else None
            same = self.find_identical(movie_sha, masks_sha)
            if same is not None:
                logger.info("upload %s is identical to dataset %s: reusing it", staged.name, same.id)
                self.discard_upload(staged)
                same.reused = True
                return same
            final = self.datasets_dir / f".staging-{secrets.token_hex(4)}"
            final.mkdir()
            try:
                io.write_tiff(final / "movie.tif", movie)
                if masks is not None:
                    io.write_tiff(final / "masks.tif", masks)
                extra = {
                    "original_file": staged.name, "original_masks_file": staged.masks_name if masks is not None else None,
                    "upload_bytes": staged.size, "upload_sha256": staged.sha256,
                    "channel": channel, "plane": plane, "file_axes": staged.layout.axes,
                    "file_shape": list(staged.layout.shape), "warnings": warnings,
                }
                name = display_name(staged.name)
                info = self._commit(final, self._new_id(name), name, movie, masks, "upload", extra,
                                    movie_sha=movie_sha, masks_sha=masks_sha)
            except BaseException:
                shutil.rmtree(final, ignore_errors=True)
                raise
        self.discard_upload(staged)
        return info

    def save_upload(self, movie_file: BinaryIO, masks_file: BinaryIO | None = None, *, name: str,
                    masks_name: str | None = None, channel: int | None = None, plane: int | str | None = None,
                    max_bytes: int | None = None) -> DatasetInfo:
        """Stream an uploaded movie (and masks) to disk, validate them, and keep them as a dataset.

        :meth:`stage_upload` then :meth:`finish_upload`: the files are copied in chunks into a
        staging folder and read with :func:`tapcore.io.read_movie` / :func:`tapcore.io.read_masks`;
        any problem raises ValueError (with the file name) and nothing is saved. A full disk raises
        :class:`tapcore.utils.DiskFullError`. An upload identical to an existing dataset returns that
        dataset with ``reused=True``.
        """
        staged = self.stage_upload(movie_file, masks_file, name=name, masks_name=masks_name, max_bytes=max_bytes)
        try:
            return self.finish_upload(staged, channel=channel, plane=plane)
        except BaseException:
            self.discard_upload(staged)
            raise

    def find_identical(self, movie_sha256: str, masks_sha256: str | None) -> DatasetInfo | None:
        """An existing dataset of the acting user with exactly this movie and masks (by SHA-256), or None
        (another user's identical movie is never handed out: the upload becomes a dataset of its own)."""
        for d in self.list_datasets():
            if d.owner == self.user.name and d.sha256 == movie_sha256 and d.meta.get("masks_sha256") == masks_sha256:
                return d
        return None

    def _remove_stale_staging(self) -> None:
        cutoff = time.time() - STALE_STAGING_S
        for p in self.datasets_dir.iterdir():
            if p.name.startswith((".upload-", ".staging-")) and p.is_dir():
                try:
                    if p.stat().st_mtime < cutoff:
                        shutil.rmtree(p, ignore_errors=True)
                except FileNotFoundError:
                    pass

    def import_path(self, path: str | os.PathLike, *, masks: str | os.PathLike | None = None,
                    name: str | None = None) -> DatasetInfo:
        """Import a movie from a path on the server: TIFF, frame folder, or a CTC sequence folder."""
        from tapcore import io

        path = Path(str(path).strip()).expanduser()
        if not str(path) or not path.exists():
            raise ValueError(f"{path} does not exist; give the full path of a TIFF file or a folder on this computer")
        got = io.read_input(path, masks=masks)
        label = name or (f"{path.parent.name}-{got.meta['sequence']}" if got.source == "ctc" and path.name == got.meta.get("sequence") else path.stem if path.is_file() else path.name)
        extra: dict[str, Any] = {"original_path": str(path), "warnings": got.warnings}
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
    def _dataset_access(self, dataset_id: str) -> tuple[str, bool]:
        default = LAB if dataset_id == DEMO_DATASET_ID else LOCAL_ADMIN.name
        return read_access(self.datasets_dir / dataset_id, default_owner=default)

    def dataset(self, dataset_id: str) -> DatasetInfo:
        """The dataset with this id; ValueError naming the known ones when it does not exist,
        AccessDenied when it belongs to another user and is not shared with the lab."""
        info = self._dataset(dataset_id)
        check_read(self.user, info.owner, info.shared, f"dataset {dataset_id!r}")
        return info

    def _dataset(self, dataset_id: str) -> DatasetInfo:
        _check_id(dataset_id, "dataset id")
        path = self.datasets_dir / dataset_id
        if not (path / "meta.json").is_file():
            known = ", ".join(d.id for d in self.list_datasets()) or "none yet"
            raise ValueError(f"no dataset {dataset_id!r} in {self.datasets_dir}; known datasets: {known}")
        meta = read_json(path / "meta.json")
        owner, shared = self._dataset_access(dataset_id)
        return DatasetInfo(
            id=meta["id"], name=meta.get("name", meta["id"]), path=path, shape=tuple(meta["shape"]),
            dtype=meta["dtype"], sha256=meta["sha256"], source=meta.get("source", ""),
            created=meta.get("created", ""), has_masks=bool(meta.get("has_masks")), meta=meta,
            owner=owner, shared=shared,
        )

    def list_datasets(self) -> list[DatasetInfo]:
        """The datasets the acting user may open (own, shared with the lab; admins: all), newest first."""
        out = []
        for p in self.datasets_dir.iterdir():
            if p.is_dir() and not p.name.startswith(".") and (p / "meta.json").is_file():
                try:
                    info = self._dataset(p.name)
                    if can_read(self.user, info.owner, info.shared):
                        out.append(info)
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
        """Remove a dataset (its owner or an admin; AccessDenied for anyone else)."""
        info = self._dataset(dataset_id)
        check_change(self.user, info.owner, info.shared, f"dataset {dataset_id!r}", "delete")
        shutil.rmtree(info.path)
        logger.info("deleted dataset %s", dataset_id)
        audit.record(self.root, self.user, "delete", "dataset", dataset_id, info.name)

    def set_dataset_shared(self, dataset_id: str, shared: bool) -> None:
        """Share a dataset with the lab (read-only for the others) or make it private again."""
        info = self._dataset(dataset_id)
        check_change(self.user, info.owner, info.shared, f"dataset {dataset_id!r}", "share or un-share")
        write_access(info.path, info.owner, bool(shared))
        audit.record(self.root, self.user, "share" if shared else "unshare", "dataset", dataset_id, info.name)

    # -- models ---------------------------------------------------------------------------------
    def model_access(self, ref: str) -> tuple[str, bool]:
        """``(owner, shared)`` of a model reference: shipped models belong to the lab, saved ones to
        whoever saved them, a job's bundle (``run:<id>``) to the job's owner."""
        origin, _, name = str(ref).strip().partition(":")
        if origin == "saved" and name:
            return read_access(self.models_dir / _check_id(name, "model name"))
        if origin == "run" and name:
            return run_access(self.runs_dir / _check_id(name, "job id"))
        return LAB, True

    def resolve_model(self, ref: str) -> Path:
        """The bundle folder a model reference points to (see the module docstring).

        AccessDenied when the model belongs to another user and is not shared with the lab; a folder
        path is accepted from admins only (other users pick ``saved:``, ``run:`` or ``shipped:``).
        """
        if not isinstance(ref, str) or not ref.strip():
            raise ValueError("no model chosen; pick a model (e.g. 'shipped:demo') or give a bundle folder")
        ref = ref.strip()
        origin, _, name = ref.partition(":")
        if origin == "shipped" and name:
            return shipped_model_path(name)
        elif origin in ("saved", "run") and name:
            check_read(self.user, *self.model_access(ref), f"model {ref!r}")
            path = (self.models_dir / _check_id(name, "model name") if origin == "saved"
                    else self.runs_dir / _check_id(name, "job id") / "model")
        else:
            if not self.user.is_admin:
                raise AccessDenied(f"{self.user.name} may not load a model from a folder path ({ref!r}); pick one "
                                   "of the listed models (saved:NAME, run:JOB or shipped:NAME)")
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
            owner, shared = self.model_access(ref)
            if not can_read(self.user, owner, shared):
                continue
            found.append(ModelInfo(ref, name, path, mkind, origin, (path / "calibration.json").is_file(),
                                   owner=owner, shared=shared))
        return found

    def save_model(self, ref: str, name: str) -> str:
        """Copy a model bundle into ``$TAPCORE_HOME/models/<name>`` to keep it; returns its reference."""
        src = self.resolve_model(ref)
        name = slugify(name, "model")
        dest = self.models_dir / name
        if dest.exists():
            raise ValueError(f"a saved model called {name!r} already exists; choose another name")
        tmp = self.models_dir / f".{name}.{secrets.token_hex(3)}"
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("checkpoint", "*.tmp", "access.json"))
        write_access(tmp, self.user.name, shared=False)
        os.replace(tmp, dest)
        audit.record(self.root, self.user, "save", "model", f"saved:{name}", f"from {ref}")
        return f"saved:{name}"

    def _saved_model(self, ref: str, verb: str) -> tuple[Path, str]:
        origin, _, name = str(ref).strip().partition(":")
        if origin != "saved" or not name:
            raise ValueError(f"only saved models (saved:NAME) can be {verb}d here, got {ref!r}; a job's model goes "
                             "with its job (delete or share the job)")
        path = self.models_dir / _check_id(name, "model name")
        if not (path / "config.json").is_file():
            raise ValueError(f"no saved model {name!r}; the Evaluate page lists the models")
        owner, shared = read_access(path)
        check_change(self.user, owner, shared, f"model {ref!r}", verb)
        return path, owner

    def delete_model(self, ref: str) -> None:
        """Remove a saved model (its owner or an admin; AccessDenied for anyone else)."""
        path, _ = self._saved_model(ref, "delete")
        shutil.rmtree(path)
        audit.record(self.root, self.user, "delete", "model", ref)

    def set_model_shared(self, ref: str, shared: bool) -> None:
        """Share a saved model with the lab (read-only for the others) or make it private again."""
        path, owner = self._saved_model(ref, "share")
        write_access(path, owner, bool(shared))
        audit.record(self.root, self.user, "share" if shared else "unshare", "model", ref)

    def prediction_dir(self, dataset_id: str, key: str) -> Path:
        """Where the app keeps a prediction of this dataset (``predictions/<key>``, ``key`` from the movie
        and model contents): only for a user who may open the dataset (AccessDenied otherwise)."""
        self.dataset(dataset_id)
        if not re.fullmatch(r"[0-9a-f]{8,64}", str(key)):
            raise ValueError(f"prediction key {key!r} is not valid (hex digits)")
        return self.root / "predictions" / key


@dataclass
class StagedUpload:
    """An upload streamed to disk but not yet kept as a dataset (see :meth:`Workspace.stage_upload`).

    Attributes:
        token: 16 hex digits naming its staging folder (safe to keep in a browser session).
        folder: the staging folder ``datasets/.upload-<token>``.
        movie_path, masks_path: the streamed files (fixed safe names).
        name, masks_name: the file names the user gave (text only, never used as paths).
        size: movie bytes; sha256: the movie file's SHA-256.
        layout: what the movie file holds, from its metadata (:class:`tapcore.io.FileLayout`).
    """

    token: str
    folder: Path
    movie_path: Path
    masks_path: Path | None
    name: str
    masks_name: str | None
    size: int
    sha256: str
    layout: Any = field(repr=False, default=None)

    def to_dict(self) -> dict[str, Any]:
        return {"token": self.token, "movie_file": self.movie_path.name,
                "masks_file": self.masks_path.name if self.masks_path else None, "name": self.name,
                "masks_name": self.masks_name, "size": self.size, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: dict[str, Any], folder: Path) -> "StagedUpload":
        from tapcore import io

        movie_path = folder / Path(d["movie_file"]).name
        return cls(token=d["token"], folder=folder, movie_path=movie_path,
                   masks_path=folder / Path(d["masks_file"]).name if d.get("masks_file") else None,
                   name=d["name"], masks_name=d.get("masks_name"), size=int(d["size"]), sha256=d["sha256"],
                   layout=io.describe_file(movie_path))


def _shown(name: str) -> str:
    """A user's file name as shown in messages: its last path part, printable characters only."""
    base = str(name).replace("\\", "/").rstrip("/").split("/")[-1]
    return "".join(ch for ch in base if ch.isprintable())[:120] or "the file"


def _strip_path(exc: Exception, path: Path) -> str:
    """The error text without the internal staging path (the user knows the file by its own name)."""
    return str(exc).replace(str(path), "the file").replace(path.name, "the file")
