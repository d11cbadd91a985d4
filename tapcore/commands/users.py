"""CLI: ``tapcore users add/remove/passwd/list`` (accounts), ``tapcore audit`` (the trail), ``tapcore share``.

Passwords are read from a prompt (typed twice, not echoed) or, with ``--password-stdin``, from the
first line of standard input; never from the command line, where other users could see them.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys


def _home():
    from tapcore.workspace import home

    return home()


def _read_password(args: argparse.Namespace, name: str) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        if not line:
            raise ValueError("no password on standard input; pipe one line holding it (--password-stdin)")
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise ValueError("no terminal to ask for the password; use --password-stdin and pipe it in")
    first = getpass.getpass(f"password for {name}: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the two passwords differ; nothing was changed")
    return first


def _audit_users(action: str, target: str) -> None:
    from tapcore import audit
    from tapcore.auth import cli_user

    try:
        who = cli_user(_home()).name
    except Exception:  # noqa: BLE001 (the trail names the shell user then)
        who = getpass.getuser()
    audit.record(_home(), who, "users", "account", target, action)


def cmd_users(args: argparse.Namespace) -> int:
    from tapcore.auth import UserStore

    store = UserStore(_home())
    if args.action == "list":
        rows = store.list()
        if args.json:
            print(json.dumps(rows, indent=2))
        elif not rows:
            print("no accounts: the app needs no sign-in on localhost; add one with `tapcore users add NAME --role admin`")
        else:
            print(f"{'name':32} {'role':6} {'password':9} {'locked':7} created (UTC)")
            for r in rows:
                print(f"{r['name']:32} {r['role']:6} {'yes' if r['password'] else 'no (OIDC)':9} "
                      f"{'yes' if r['locked'] else 'no':7} {r['created']}")
        return 0
    if not args.name:
        raise ValueError(f"`tapcore users {args.action}` needs a user name")
    if args.action == "add":
        password = None if args.no_password else _read_password(args, args.name)
        user = store.add(args.name, password, role=args.role)
        print(f"added {user.name} ({user.role}" + (", signs in with OpenID Connect)" if password is None else ")"))
        _audit_users(f"add {user.role}", user.name)
    elif args.action == "remove":
        store.remove(args.name)
        print(f"removed {args.name} (their datasets, models and jobs stay; admins still see them)")
        _audit_users("remove", args.name)
    elif args.action == "passwd":
        store.set_password(args.name, _read_password(args, args.name))
        print(f"password of {args.name} changed (and the account unlocked)")
        _audit_users("passwd", args.name)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from tapcore.audit import AuditLog
    from tapcore.auth import cli_user

    entries = AuditLog(_home()).entries(cli_user(_home()), user=args.user, action=args.action, limit=args.limit)
    rows = [e.as_row() for e in entries]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("the audit trail is empty")
        return 0
    for r in rows:
        print(f"{r['when (UTC)']}  {r['user'][:24]:24} {r['action']:14} {r['what']:8} {r['id']}"
              + (f"  ({r['detail']})" if r["detail"] else ""))
    return 0


def cmd_share(args: argparse.Namespace) -> int:
    from tapcore.auth import cli_user
    from tapcore.jobs.queue import JobQueue
    from tapcore.workspace import Workspace

    user = cli_user(_home())
    shared = not args.off
    if args.kind == "dataset":
        Workspace(_home(), user).set_dataset_shared(args.id, shared)
    elif args.kind == "model":
        Workspace(_home(), user).set_model_shared(args.id, shared)
    else:
        JobQueue(_home(), user).set_shared(args.id, shared)
    print(f"{args.kind} {args.id}: " + ("shared with the lab (read-only for the others)" if shared else "private"))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("users", help="manage the app's local accounts (add, remove, passwd, list)",
                              description="Local accounts of the app's sign-in, kept in $TAPCORE_HOME/users.sqlite "
                                          "(argon2-hashed passwords). Passwords come from a prompt or stdin.")
    p.add_argument("action", choices=("add", "remove", "passwd", "list"))
    p.add_argument("name", nargs="?", help="account name (letters, digits, _ . @ + -; an e-mail address works)")
    p.add_argument("--role", choices=("user", "admin"), default="user", help="role of a new account (default: user)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    p.add_argument("--no-password", action="store_true",
                   help="add: an account without password, for an OpenID Connect identity that needs a role")
    p.add_argument("--json", action="store_true", help="list: print JSON")
    p.set_defaults(func=cmd_users)

    p = subparsers.add_parser("audit", help="show the audit trail (admins): who uploaded, submitted, cancelled, "
                                            "deleted, downloaded what and when")
    p.add_argument("--user", help="only this user's entries")
    p.add_argument("--action", help="only this action (upload, submit, cancel, delete, download, share, ...)")
    p.add_argument("--limit", type=int, default=200, help="newest entries to show (default: 200)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_audit)

    p = subparsers.add_parser("share", help="share a dataset, saved model or job with the lab (read-only), or stop")
    p.add_argument("kind", choices=("dataset", "model", "job"))
    p.add_argument("id", help="dataset id, model reference (saved:NAME) or job id")
    p.add_argument("--off", action="store_true", help="make it private again")
    p.set_defaults(func=cmd_share)
