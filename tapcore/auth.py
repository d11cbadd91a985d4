"""Sign-in: local accounts (argon2-hashed passwords, rate-limited failures) and the access mode.

Accounts live in ``$TAPCORE_HOME/users.sqlite``, managed by an admin with ``tapcore users
add/remove/passwd/list``. Passwords are hashed with argon2id (argon2-cffi); only the hash is kept.
After :data:`MAX_FAILS` failed sign-ins in a row an account name is locked for :data:`LOCK_S`
seconds (kept on disk, so restarting the app does not reset it); the message says when to retry.

The other way to sign in is Streamlit's native OpenID Connect (``st.login``), configured by an
``[auth]`` section in ``.streamlit/secrets.toml`` (README, "Sign-in"); such an identity gets its
role from an account of the same name here when there is one (``tapcore users add EMAIL --role
admin --no-password``), else ``user``.

:func:`access_mode` decides how the app admits visitors:

- ``"oidc"`` / ``"password"``: sign-in required (OIDC configured / at least one local account);
- ``"local"``: no sign-in, every visitor acts as :data:`tapcore.access.LOCAL_ADMIN` - only when
  the server listens on a loopback address (README's first command), or when
  ``TAPCORE_ALLOW_NO_SIGNIN=1`` says so explicitly;
- otherwise :class:`SignInRequired`: a server reachable from the network refuses to serve.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from tapcore.access import LOCAL_ADMIN, ROLES, User, check_name
from tapcore.utils import sqlite_connect, sqlite_init

logger = logging.getLogger(__name__)

#: Failed sign-ins in a row that lock an account name.
MAX_FAILS = 5
#: How long a locked account name stays locked (seconds).
LOCK_S = 300.0
MIN_PASSWORD = 8

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    hash TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    name TEXT PRIMARY KEY,
    fails INTEGER NOT NULL,
    locked_until REAL NOT NULL DEFAULT 0
);
"""


class SignInError(ValueError):
    """A refused sign-in (wrong name or password, or locked); the message is safe to show."""


class SignInRequired(RuntimeError):
    """The server is reachable from the network and no sign-in is configured."""


def _hasher():
    from argon2 import PasswordHasher

    return PasswordHasher()


def check_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise ValueError(f"the password must have at least {MIN_PASSWORD} characters")
    if password != password.strip() or "\n" in password:
        raise ValueError("the password must not start or end with spaces or hold a line break")
    return password


class UserStore:
    """Local accounts and failed-attempt counters of one workspace.

    ``clock``: the time function (tests pass a fake one); ``max_fails`` / ``lock_s``: the lockout.
    """

    def __init__(self, home: str | os.PathLike, *, clock: Callable[[], float] = time.time,
                 max_fails: int = MAX_FAILS, lock_s: float = LOCK_S):
        self.path = Path(home) / "users.sqlite"
        self.clock, self.max_fails, self.lock_s = clock, int(max_fails), float(lock_s)
        sqlite_init(self.path, _SCHEMA, 0o600)  # password hashes: the service's user only, whatever the umask

    def _connect(self) -> sqlite3.Connection:
        con = sqlite_connect(self.path)
        con.row_factory = sqlite3.Row
        return con

    # -- accounts -------------------------------------------------------------------------------
    def add(self, name: str, password: str | None, role: str = "user") -> User:
        """A new account; ``password`` None: an OpenID Connect identity that only needs a role."""
        name = check_name(name)
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        digest = _hasher().hash(check_password(password)) if password is not None else None
        con = self._connect()
        try:
            if con.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise ValueError(f"user {name!r} already exists; change the password with `tapcore users passwd {name}`")
            con.execute("INSERT INTO users (name, role, hash, created) VALUES (?, ?, ?, ?)",
                        (name, role, digest, self.clock()))
        finally:
            con.close()
        return User(name, role)

    def remove(self, name: str) -> None:
        name = check_name(name)
        con = self._connect()
        try:
            if con.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
                raise ValueError(f"no user {name!r}; `tapcore users list` shows the accounts")
            con.execute("DELETE FROM failures WHERE name = ?", (name,))
        finally:
            con.close()

    def set_password(self, name: str, password: str) -> None:
        name = check_name(name)
        digest = _hasher().hash(check_password(password))
        con = self._connect()
        try:
            if con.execute("UPDATE users SET hash = ? WHERE name = ?", (digest, name)).rowcount == 0:
                raise ValueError(f"no user {name!r}; `tapcore users list` shows the accounts")
            con.execute("DELETE FROM failures WHERE name = ?", (name,))  # an admin's reset unlocks it
        finally:
            con.close()

    def list(self) -> list[dict[str, Any]]:
        con = self._connect()
        try:
            rows = con.execute("SELECT u.name, u.role, u.hash IS NOT NULL AS has_password, u.created, "
                               "COALESCE(f.locked_until, 0) AS locked_until FROM users u "
                               "LEFT JOIN failures f ON f.name = u.name ORDER BY u.name").fetchall()
        finally:
            con.close()
        now = self.clock()
        return [{"name": r["name"], "role": r["role"], "password": bool(r["has_password"]),
                 "created": _iso(r["created"]), "locked": r["locked_until"] > now} for r in rows]

    def role_of(self, name: str) -> str | None:
        con = self._connect()
        try:
            row = con.execute("SELECT role FROM users WHERE name = ?", (str(name).strip().lower(),)).fetchone()
        finally:
            con.close()
        return row["role"] if row else None

    def has_password_accounts(self) -> bool:
        con = self._connect()
        try:
            return con.execute("SELECT 1 FROM users WHERE hash IS NOT NULL LIMIT 1").fetchone() is not None
        finally:
            con.close()

    # -- signing in -----------------------------------------------------------------------------
    def verify(self, name: str, password: str) -> User:
        """The account for this name and password; SignInError otherwise (a locked name says when to retry).

        Every failure (unknown name included, so names cannot be probed) counts towards the lock.
        """
        from argon2.exceptions import InvalidHashError, VerificationError

        try:
            name = check_name(name)
        except ValueError:
            raise SignInError("wrong user name or password") from None
        now = self.clock()
        con = self._connect()
        try:
            fail = con.execute("SELECT fails, locked_until FROM failures WHERE name = ?", (name,)).fetchone()
            if fail is not None and fail["locked_until"] > now:
                wait = int(fail["locked_until"] - now + 0.999)
                raise SignInError(f"too many failed sign-ins for {name!r}: try again in {wait} s "
                                  f"(after {_iso(fail['locked_until'])} UTC), or ask an admin to reset the password")
            row = con.execute("SELECT role, hash FROM users WHERE name = ?", (name,)).fetchone()
        finally:
            con.close()
        hasher = _hasher()
        ok = False
        if row is not None and row["hash"]:
            try:
                ok = hasher.verify(row["hash"], str(password))
            except (VerificationError, InvalidHashError):
                ok = False
        else:  # same work for an unknown name: the time taken does not tell which names exist
            try:
                hasher.verify(_dummy_hash(), str(password))
            except (VerificationError, InvalidHashError):
                pass
        con = self._connect()
        try:
            if ok:
                con.execute("DELETE FROM failures WHERE name = ?", (name,))
                if hasher.check_needs_rehash(row["hash"]):
                    con.execute("UPDATE users SET hash = ? WHERE name = ?", (hasher.hash(str(password)), name))
                return User(name, row["role"])
            con.execute("BEGIN IMMEDIATE")
            fail = con.execute("SELECT fails, locked_until FROM failures WHERE name = ?", (name,)).fetchone()
            fails = (0 if fail is None or (fail["locked_until"] and fail["locked_until"] <= now) else fail["fails"]) + 1
            locked_until = now + self.lock_s if fails >= self.max_fails else 0.0
            con.execute("INSERT OR REPLACE INTO failures (name, fails, locked_until) VALUES (?, ?, ?)",
                        (name, fails, locked_until))
            con.execute("COMMIT")
        finally:
            con.close()
        if locked_until:
            raise SignInError(f"wrong user name or password; {fails} failed sign-ins in a row, so {name!r} is locked: "
                              f"try again in {int(self.lock_s)} s (after {_iso(locked_until)} UTC)")
        left = self.max_fails - fails
        raise SignInError(f"wrong user name or password ({left} more failed attempt{'s' if left != 1 else ''} "
                          f"lock this name for {int(self.lock_s)} s)")


_DUMMY: list[str] = []


def _dummy_hash() -> str:
    if not _DUMMY:
        _DUMMY.append(_hasher().hash("not-a-password-of-anyone"))
    return _DUMMY[0]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(float(ts), timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


# -- how the app admits visitors -----------------------------------------------------------------
def is_loopback(address: str | None) -> bool:
    """Whether a server bound to ``address`` is reachable only from this machine.

    None or ``""`` (Streamlit's default: every interface) and ``0.0.0.0`` / ``::`` are not.
    """
    if not address:
        return False
    host = str(address).strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allow_no_signin(env: Mapping[str, str] | None = None) -> bool:
    return (env if env is not None else os.environ).get("TAPCORE_ALLOW_NO_SIGNIN", "").strip() == "1"


def access_mode(address: str | None, *, oidc: bool, accounts: bool, env: Mapping[str, str] | None = None) -> str:
    """``"oidc"``, ``"password"`` or ``"local"`` (module docstring); SignInRequired when none may serve."""
    if oidc:
        return "oidc"
    if accounts:
        return "password"
    if is_loopback(address) or allow_no_signin(env):
        return "local"
    shown = address or "every network interface"
    raise SignInRequired(
        f"this server listens on {shown}, so anyone on the network could reach it, and no sign-in is set up. "
        "Fix: add an admin account (tapcore users add NAME --role admin) or configure OpenID Connect in "
        ".streamlit/secrets.toml (README, 'Sign-in'), or bind to this machine only (--server.address localhost); "
        "to run an open server anyway set TAPCORE_ALLOW_NO_SIGNIN=1")


def user_from_oidc(claims: Mapping[str, Any], store: UserStore) -> User:
    """The acting user of an OpenID Connect identity (``st.user``): its e-mail (else its subject) as
    the name, its role from the account of that name (``user`` when there is none)."""
    raw = claims.get("email") or claims.get("preferred_username") or claims.get("sub")
    if not raw:
        raise SignInError("the identity provider sent no e-mail, user name or subject; check its scopes "
                          "(openid email profile) in .streamlit/secrets.toml")
    name = check_name(str(raw))
    return User(name, store.role_of(name) or "user")


def local_user() -> User:
    return LOCAL_ADMIN


def cli_user(home: str | os.PathLike, env: Mapping[str, str] | None = None) -> User:
    """Who runs a ``tapcore`` command on the box: ``$TAPCORE_USER`` (else the login name).

    Without local accounts the box has one user, the local admin. With accounts, the name must be
    one of them and gets its role (AccessDenied otherwise). The shell is trusted as far as the
    workspace files are: whoever can read ``$TAPCORE_HOME`` can read its data anyway, so on a shared
    box keep the workspace readable by the service account only and let people use the app.
    """
    import getpass

    from tapcore.access import AccessDenied

    env = env if env is not None else os.environ
    store = UserStore(home)
    raw = (env.get("TAPCORE_USER") or "").strip()
    if not raw:
        if not store.list():
            return LOCAL_ADMIN
        raw = getpass.getuser()
    name = check_name(raw)
    role = store.role_of(name)
    if role is None:
        if not store.list():
            return User(name, "admin")
        raise AccessDenied(f"{name!r} has no account in {store.path}; set TAPCORE_USER to your account name "
                           "(an admin adds one with `tapcore users add NAME`)")
    return User(name, role)
