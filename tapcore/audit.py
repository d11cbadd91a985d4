"""The audit trail: who uploaded, submitted, cancelled, deleted, shared or downloaded what, and when.

One append-only SQLite table in ``$TAPCORE_HOME/audit.sqlite``, written by the library
(:class:`tapcore.workspace.Workspace`, :class:`tapcore.jobs.queue.JobQueue`), the sign-in and the
app's downloads. Only admins read it (``tapcore audit``, the app's Audit page).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tapcore.access import AccessDenied, User
from tapcore.utils import newest_first, sqlite_connect, sqlite_init

logger = logging.getLogger(__name__)

#: What the trail records (``action``).
ACTIONS = ("upload", "import", "submit", "cancel", "delete", "download", "share", "unshare", "save",
           "sign-in", "sign-in-failed", "sign-out", "denied", "users")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    user TEXT NOT NULL,
    action TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_user ON audit(user, seq);
"""


@dataclass
class AuditEntry:
    seq: int
    ts: float
    user: str
    action: str
    kind: str
    target: str
    detail: str

    def as_row(self) -> dict:
        return {"when (UTC)": datetime.fromtimestamp(self.ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
                "user": self.user, "action": self.action, "what": self.kind, "id": self.target, "detail": self.detail}


class AuditLog:
    """The audit trail of one workspace."""

    def __init__(self, home: str | os.PathLike):
        self.path = Path(home) / "audit.sqlite"
        sqlite_init(self.path, _SCHEMA)  # the lab's group reads the trail's file under TAPCORE_UMASK=0002

    def _connect(self) -> sqlite3.Connection:
        return sqlite_connect(self.path)

    def record(self, user: User | str, action: str, kind: str, target: str, detail: str = "") -> None:
        """Append one entry (``action`` from :data:`ACTIONS`, ``kind``: dataset / model / job / ...)."""
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}; known: {', '.join(ACTIONS)}")
        name = user.name if isinstance(user, User) else str(user)
        con = self._connect()
        try:
            con.execute("INSERT INTO audit (ts, user, action, kind, target, detail) VALUES (?, ?, ?, ?, ?, ?)",
                        (time.time(), name, action, kind, str(target), str(detail)[:500]))
        finally:
            con.close()

    def entries(self, acting: User, *, user: str | None = None, action: str | None = None,
                limit: int = 500) -> list[AuditEntry]:
        """The newest entries first (admins only: AccessDenied for anyone else)."""
        if not acting.is_admin:
            raise AccessDenied(f"{acting.name} may not read the audit trail: it is for admins; "
                               "ask an admin (tapcore users list shows them)")
        filters = [(clause, [value]) for clause, value in (("user = ?", user), ("action = ?", action)) if value]
        sql, args = newest_first("audit", filters, limit)
        con = self._connect()
        try:
            return [AuditEntry(*row) for row in con.execute(sql, args).fetchall()]
        finally:
            con.close()


def record(home: str | os.PathLike, user: User | str, action: str, kind: str, target: str, detail: str = "") -> None:
    """Append to ``home``'s trail; a failure to write it is logged, never stops the action itself."""
    try:
        AuditLog(home).record(user, action, kind, target, detail)
    except sqlite3.Error as exc:
        logger.warning("could not write the audit trail in %s (%s)", home, exc)
