"""Who may see and change what: the acting user, item ownership, "share with lab".

Every dataset, saved model, job (with the model and prediction it writes) belongs to the user who
made it. Its owner reads and changes it; other users read it only when it is shared with the lab
(read-only: they cannot delete, cancel or un-share it); admins read and change everything.

Ownership of a folder item (a dataset, a saved model, a job's run folder) is kept in its
``access.json`` (``{"owner": ..., "shared": ...}``); a job's owner is also its row in the queue.
Items written before sign-in existed carry no ``access.json``: they belong to :data:`LOCAL_ADMIN`
(so only admins see them), except the synthetic demo, which the whole lab shares.

:class:`tapcore.workspace.Workspace` and :class:`tapcore.jobs.queue.JobQueue` take the acting
:class:`User` and raise :class:`AccessDenied` for anything else.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tapcore.utils import atomic_write_json, read_json

ROLES = ("user", "admin")
ACCESS_FILE = "access.json"
#: The owner of items made by the whole lab (the synthetic demo): read by everyone, changed by admins.
LAB = "lab"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.@+-]{0,63}$")


class AccessDenied(PermissionError):
    """The acting user may not see or change this item (the message says whose it is and what to do)."""


@dataclass(frozen=True)
class User:
    """The acting user: a signed-in account, an OpenID Connect identity, or the local admin."""

    name: str
    role: str = "user"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {self.role!r}")

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


#: The single user of a box that nobody else reaches (localhost without sign-in), and the owner of
#: items made before sign-in existed.
LOCAL_ADMIN = User("local", "admin")


def check_name(name: str) -> str:
    """An account name, lower-cased: letters, digits and ``_ . @ + -`` (an e-mail address works)."""
    value = str(name or "").strip().lower()
    if not _NAME_RE.match(value):
        raise ValueError(f"user name {name!r} is not valid; use 1-64 letters, digits, '_', '.', '@', '+' or '-', "
                         "starting with a letter or digit (an e-mail address works)")
    return value


def can_read(user: User, owner: str, shared: bool) -> bool:
    return user.is_admin or owner == user.name or owner == LAB or bool(shared)


def can_change(user: User, owner: str) -> bool:
    return user.is_admin or owner == user.name


def check_read(user: User, owner: str, shared: bool, what: str) -> None:
    """AccessDenied unless ``user`` may see the item (``what``: e.g. ``"dataset 'x'"``)."""
    if not can_read(user, owner, shared):
        raise AccessDenied(f"{user.name} may not open {what}: it belongs to another user and is not shared with "
                           "the lab; ask its owner to share it (or an admin)")


def check_change(user: User, owner: str, shared: bool, what: str, verb: str) -> None:
    """AccessDenied unless ``user`` may change the item (``verb``: ``"delete"``, ``"cancel"``, ...)."""
    check_read(user, owner, shared, what)
    if not can_change(user, owner):
        raise AccessDenied(f"{user.name} may not {verb} {what}: it belongs to {owner} and is shared with the lab "
                           "read-only; only its owner or an admin can")


def read_access(folder: str | os.PathLike, default_owner: str = LOCAL_ADMIN.name) -> tuple[str, bool]:
    """``(owner, shared)`` of a folder item (``default_owner`` when it has no ``access.json``)."""
    path = Path(folder) / ACCESS_FILE
    if not path.is_file():
        return default_owner, False
    try:
        data: dict[str, Any] = read_json(path)
    except ValueError:
        return default_owner, False
    return str(data.get("owner") or default_owner), bool(data.get("shared"))


def write_access(folder: str | os.PathLike, owner: str, shared: bool = False) -> None:
    atomic_write_json(Path(folder) / ACCESS_FILE, {"owner": owner, "shared": bool(shared)})


def run_access(run_dir: str | os.PathLike) -> tuple[str, bool]:
    """``(owner, shared)`` of a job's run folder (its model and prediction go with it): its
    ``access.json``, else the owner named in its ``spec.json``."""
    run_dir = Path(run_dir)
    if (run_dir / ACCESS_FILE).is_file():
        return read_access(run_dir)
    try:
        owner = str(read_json(run_dir / "spec.json").get("owner") or LOCAL_ADMIN.name)
    except (ValueError, FileNotFoundError):
        owner = LOCAL_ADMIN.name
    return owner, False
