"""Per-user limits an admin sets: jobs at once, jobs running at once, disk use.

Stored in the workspace as ``$TAPCORE_HOME/limits.json``::

    {"default": {"max_jobs": 20, "max_running": null, "max_disk_gb": null},
     "users": {"ann": {"max_jobs": 5, "max_disk_gb": 50}}}

- ``max_jobs``: jobs a user may have queued, running or interrupted at once. A submit beyond it is
  refused (:class:`LimitError`) with the numbers and how to change the limit.
- ``max_disk_gb``: disk space (GB, 10^9 bytes) a user's job run folders and datasets may use. A
  submit while the user is at or over it is refused.
- ``max_running``: jobs of one user running at once (on all workers together). Not a refusal: the
  fair queue (:mod:`tapcore.jobs.fairshare`) leaves the user's further jobs waiting so other users'
  jobs get the free GPUs.

``None`` (or a missing key) means no limit. A user's own entry overrides the default per key. Admins
set them with ``tapcore limits set USER --max-jobs 5`` (``--default`` for everybody).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable

from tapcore.utils import atomic_write_json, read_json

logger = logging.getLogger(__name__)

__all__ = ["Limits", "LimitError", "LIMIT_KEYS", "load_limits", "limits_for", "set_limits", "clear_limits",
           "user_disk_bytes", "check_submit"]

FILE = "limits.json"
GB = 1e9


class LimitError(ValueError):
    """A submit refused by a per-user limit (a ValueError: the app and CLI show its text)."""


@dataclass(frozen=True)
class Limits:
    """One user's limits (None = no limit)."""

    max_jobs: int | None = None
    max_running: int | None = None
    max_disk_gb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


LIMIT_KEYS = tuple(f.name for f in fields(Limits))
_OPTIONS = {"max_jobs": "--max-jobs", "max_running": "--max-running", "max_disk_gb": "--max-disk-gb"}


def _path(home: str | os.PathLike) -> Path:
    return Path(home) / FILE


def _check_entry(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be a JSON object of limits ({', '.join(LIMIT_KEYS)})")
    unknown = sorted(set(entry) - set(LIMIT_KEYS))
    if unknown:
        raise ValueError(f"unknown limit(s) {', '.join(unknown)} in {where}; valid: {', '.join(LIMIT_KEYS)}")
    clean: dict[str, Any] = {}
    for key, value in entry.items():
        if value is None:
            clean[key] = None
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{key} in {where} must be a number >= 0 or null (no limit), got {value!r}")
        if key in ("max_jobs", "max_running"):
            if int(value) != value:
                raise ValueError(f"{key} in {where} must be a whole number, got {value!r}")
            value = int(value)
        clean[key] = value
    return clean


def load_limits(home: str | os.PathLike) -> dict[str, Any]:
    """The workspace's limits file as ``{"default": {...}, "users": {user: {...}}}`` (empty when none)."""
    path = _path(home)
    if not path.is_file():
        return {"default": {}, "users": {}}
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object with 'default' and 'users'; fix or delete it")
    default = _check_entry(data.get("default") or {}, f"{path} 'default'")
    users = data.get("users") or {}
    if not isinstance(users, dict):
        raise ValueError(f"'users' in {path} must be a JSON object user -> limits")
    return {"default": default, "users": {str(u): _check_entry(e, f"{path} user {u!r}") for u, e in users.items()}}


def limits_for(home: str | os.PathLike, user: str, data: dict[str, Any] | None = None) -> Limits:
    """The limits that apply to ``user``: their own entry over the default, per key."""
    data = load_limits(home) if data is None else data
    merged = {**data["default"], **data["users"].get(user, {})}
    return Limits(**{k: merged.get(k) for k in LIMIT_KEYS})


def set_limits(home: str | os.PathLike, user: str | None, **values: Any) -> dict[str, Any]:
    """Set limits for ``user`` (None: the default for everybody); ``values``: key -> number or None.

    Only the keys given change. Returns the new entry.
    """
    data = load_limits(home)
    entry = dict(data["default"] if user is None else data["users"].get(user, {}))
    entry.update(_check_entry(values, "the limits given"))
    if user is None:
        data["default"] = entry
    else:
        if not str(user).strip():
            raise ValueError("give the user name whose limits to set, or --default for everybody")
        data["users"][str(user)] = entry
    atomic_write_json(_path(home), data)
    logger.info("limits for %s: %s", user or "everybody (default)", entry)
    return entry


def clear_limits(home: str | os.PathLike, user: str) -> bool:
    """Remove ``user``'s own limits (the default applies again). Returns whether there were any."""
    data = load_limits(home)
    found = data["users"].pop(user, None) is not None
    if found:
        atomic_write_json(_path(home), data)
    return found


def _tree_bytes(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass  # removed while we walk
    return total


def user_disk_bytes(home: str | os.PathLike, user: str, job_ids: Iterable[str]) -> int:
    """Bytes used by ``user``: the run folders of ``job_ids`` (their jobs) and datasets whose
    ``meta.json`` names them as ``owner``."""
    home = Path(home)
    total = sum(_tree_bytes(home / "runs" / j) for j in job_ids if (home / "runs" / j).is_dir())
    datasets = home / "datasets"
    if datasets.is_dir():
        for folder in datasets.iterdir():
            meta = folder / "meta.json"
            if not meta.is_file():
                continue
            try:
                owner = read_json(meta).get("owner")
            except (ValueError, AttributeError, OSError):
                continue
            if owner == user:
                total += _tree_bytes(folder)
    return total


def _how_to_change(user: str, key: str) -> str:
    return f"ask an admin to raise it (`tapcore limits set {user} {_OPTIONS[key]} N`)"


def check_submit(home: str | os.PathLike, user: str, con: sqlite3.Connection) -> None:
    """Refuse a new job of ``user`` that would break their limits (:class:`LimitError` saying which).

    ``con`` is the queue's open transaction, so the count and the insert that follows see the same rows.
    """
    data = load_limits(home)
    lim = limits_for(home, user, data)
    if lim.max_jobs is None and lim.max_disk_gb is None:
        return
    rows = con.execute("SELECT id, state FROM jobs WHERE owner = ?", (user,)).fetchall()
    active = sum(1 for r in rows if r[1] in ("queued", "running", "interrupted"))
    if lim.max_jobs is not None and active >= lim.max_jobs:
        raise LimitError(f"job not queued: {user} already has {active} job(s) queued or running, and the limit "
                         f"max_jobs for {user} is {lim.max_jobs}; wait for one to finish or cancel one, or "
                         + _how_to_change(user, "max_jobs"))
    if lim.max_disk_gb is not None:
        used = user_disk_bytes(home, user, [r[0] for r in rows])
        if used >= lim.max_disk_gb * GB:
            raise LimitError(f"job not queued: {user} uses {used / GB:.3g} GB of disk, and the limit max_disk_gb for "
                             f"{user} is {lim.max_disk_gb:g} GB; delete old datasets or runs, or "
                             + _how_to_change(user, "max_disk_gb"))


def max_running_by_user(home: str | os.PathLike, users: Iterable[str]) -> dict[str, int | None]:
    """``{user: max_running}`` for ``users`` (None = no limit); empty when the workspace has no limits."""
    if not _path(home).is_file():
        return {}
    data = load_limits(home)
    return {u: limits_for(home, u, data).max_running for u in users}
