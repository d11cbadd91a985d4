"""Small shared helpers: atomic writes, hashing, seeding, run provenance.

Every file tapcore writes goes through :func:`atomic_write_bytes` (write a temporary file in the
same folder, then ``os.replace``), so a crash never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import random
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np


#: errno values that mean "the disk (or the user's quota) is full".
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A write failed because the disk is full; its message says where and what to do."""

    def __init__(self, message: str, errno_: int = errno.ENOSPC):
        super().__init__(errno_, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError that says the disk or quota is full (ENOSPC / EDQUOT)."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def disk_full_message(exc: OSError, folder: str | os.PathLike | None = None) -> str:
    """One sentence for a full disk: which file could not be written, where, and what to do."""
    target = f" while writing {Path(exc.filename).name}" if getattr(exc, "filename", None) else ""
    where = f" holding {folder}" if folder is not None else ""
    free = ""
    if folder is not None:
        try:
            free = f" ({shutil.disk_usage(folder).free / 2**20:.0f} MB free now)"
        except OSError:
            free = ""
    return (f"the disk{where} is full (no space left on the device){target}{free}; free some space (e.g. delete "
            "old runs or datasets) and try again; files saved before are unchanged")


@contextlib.contextmanager
def explain_disk_full(folder: str | os.PathLike | None = None) -> Iterator[None]:
    """Turn an ENOSPC / EDQUOT OSError raised inside the block into a :class:`DiskFullError`."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise DiskFullError(disk_full_message(exc, folder), exc.errno) from exc


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the leftovers of interrupted atomic writes under ``folder``; returns what was removed.

    Matches the temporary names this library writes: ``.<name>.<random>.tmp`` files
    (:func:`atomic_path`), ``.<name>.tmp-<random>`` and ``.<name>.old-<random>`` folders
    (``tapcore.bundle.save_bundle``) and ``.<name>.part-<random>`` folders (:func:`atomic_dir`).
    Only call it while nothing else writes into ``folder`` (e.g. when a job starts).
    """
    import re

    pattern = re.compile(r"^\..+(\.tmp|\.tmp-[A-Za-z0-9_]+|\.old-[0-9a-f]+|\.part-[0-9a-f]+)$")
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for root, dirs, files in os.walk(folder, topdown=True):
        for name in list(dirs):
            if pattern.match(name):
                shutil.rmtree(Path(root) / name, ignore_errors=True)
                removed.append(Path(root) / name)
                dirs.remove(name)
        for name in files:
            if pattern.match(name):
                try:
                    os.unlink(Path(root) / name)
                    removed.append(Path(root) / name)
                except FileNotFoundError:
                    pass
    return removed


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path`` as a whole.

    On any error the temporary folder is removed and an existing ``path`` is left untouched, so a
    reader sees either the old folder or the complete new one, never a half-written mix.
    """
    import secrets

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.part-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{secrets.token_hex(4)}"
            os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            if old is not None:
                os.rename(old, path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def current_umask() -> int:
    """The process's file-mode creation mask, read without changing it (Linux: ``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (a brief window, but no other way)
    os.umask(mask)
    return mask


def apply_umask_from_env(environ: dict[str, str] | None = None) -> int | None:
    """Set the process umask from ``$TAPCORE_UMASK`` (octal, e.g. ``0002``); returns it, or None when unset.

    Called by the entry points (``tapcore`` CLI, ``app.py``), never at import. On a shared box a lab
    sets ``TAPCORE_UMASK=0002`` (the container image does) so that everything written to the workspace
    is readable and writable by the lab's group; workers and job processes inherit the mask.
    """
    value = (os.environ if environ is None else environ).get("TAPCORE_UMASK", "").strip()
    if not value:
        return None
    try:
        mask = int(value, 8)
    except ValueError:
        mask = -1
    if not 0 <= mask <= 0o777:
        raise ValueError(f"TAPCORE_UMASK={value!r} is not an octal umask between 000 and 777 (e.g. 0002)")
    os.umask(mask)
    return mask


def create_file(path: str | os.PathLike, mode: int = 0o666) -> None:
    """Create an empty file with ``mode`` under the process umask unless it exists (SQLite makes new
    databases 0644 whatever the umask: creating the file first gives it the lab's group under 0002, or
    keeps it private with ``mode=0o600``). An empty file is a valid new SQLite database."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
    except FileExistsError:
        pass


def sqlite_connect(path: str | os.PathLike, timeout_s: float = 30.0) -> "sqlite3.Connection":
    """A connection in autocommit mode that waits up to ``timeout_s`` for another writer."""
    import sqlite3

    con = sqlite3.connect(path, timeout=timeout_s, isolation_level=None)
    con.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
    return con


def newest_first(table: str, filters: list[tuple[str, list]], limit: int) -> tuple[str, list]:
    """``SELECT * FROM table [WHERE c1 AND c2 ...] ORDER BY seq DESC LIMIT ?`` and its arguments;
    ``filters``: ``(clause with ? placeholders, its values)`` for each filter that applies."""
    sql = f"SELECT * FROM {table}"
    if filters:
        sql += " WHERE " + " AND ".join(clause for clause, _ in filters)
    return sql + " ORDER BY seq DESC LIMIT ?", [v for _, values in filters for v in values] + [int(limit)]


def sqlite_init(path: str | os.PathLike, schema: str, mode: int = 0o666) -> None:
    """Create the database file (with ``mode`` under the umask, :func:`create_file`) and its schema
    (``schema``: idempotent ``CREATE ... IF NOT EXISTS`` statements)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    create_file(path, mode)
    con = sqlite_connect(path)
    try:
        con.executescript(schema)
    finally:
        con.close()


def chmod_as_created(path: str | os.PathLike) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have given it under the current umask.

    ``tempfile.mkstemp``/``mkdtemp`` create private files (0600) and folders (0700) whatever the umask,
    so a file written atomically through them would stay unreadable to the lab's group. Special bits
    are kept: a folder's setgid bit (files inside it get the folder's group) survives.
    """
    st_mode = os.stat(path).st_mode
    base = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, (st_mode & 0o7000) | (base & ~current_umask()))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and ``os.replace`` it onto ``path``.

    Use it for writers that want a file name (``tifffile.imwrite``, ``np.save``): on any error the
    temporary file is removed and an existing ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        chmod_as_created(tmp)  # mkstemp's 0600 -> what open() would give (0644, 0664 under umask 0002)
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + ``os.replace``)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text (UTF-8) atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"object of type {type(value).__name__} is not JSON serialisable")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, with a clear error naming the file when it is corrupt."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); re-create it or restore it from a backup") from exc


def sha256_array(array: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes: the identity of a movie or mask stack."""
    h = hashlib.sha256()
    a = np.ascontiguousarray(array)
    h.update(str(a.dtype).encode())
    h.update(str(a.shape).encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(device: str | None = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; validates explicit names."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but no CUDA GPU is visible; use --device cpu")
    if device != "cpu" and not device.startswith("cuda") and device != "mps":
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'")
    return device


def environment_info(device: str | None = None) -> dict[str, Any]:
    """Versions and hardware a run used, saved in every manifest for reproducibility."""
    import torch

    info: dict[str, Any] = {
        "tapcore": _tapcore_version(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_threads": torch.get_num_threads(),
        "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE"),  # huge-page CPU allocations (tapcore.runtime)
    }
    if device is not None:
        info["device"] = str(device)
        if str(device).startswith("cuda") and torch.cuda.is_available():
            info["device_name"] = torch.cuda.get_device_name(torch.device(device))
            info["cuda"] = torch.version.cuda
        else:
            info["device_name"] = platform.processor() or platform.machine()
    return info


def _tapcore_version() -> str:
    from tapcore import __version__

    return __version__
