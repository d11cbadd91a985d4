"""CLI: ``tapcore workers`` (one supervised worker per GPU) and ``tapcore limits`` (per-user limits)."""

from __future__ import annotations

import argparse
import json


def cmd_workers(args: argparse.Namespace) -> int:
    from tapcore.jobs.gpus import read_gpus
    from tapcore.jobs.supervisor import Supervisor
    from tapcore.workspace import home

    sup = Supervisor(home(), devices=args.devices or None, poll=args.poll, worker_poll=args.worker_poll,
                     restart_delay=args.restart_delay)
    report = read_gpus()
    print(f"{report.message} ({report.reason})" if report.message else ", ".join(f"cuda:{g.index} {g.name} ({g.memory_total_mib / 1024:.0f} GiB)"
                                      for g in report.gpus), flush=True)
    print(f"starting {len(sup.slots)} worker(s): {', '.join(s.device for s in sup.slots)} (Ctrl-C stops them; "
          "their running jobs resume later from their checkpoints)", flush=True)
    sup.run()
    print("workers stopped")
    return 0


def _limit_value(text: str):
    """``none`` / ``off`` -> None (no limit), else a number."""
    if text.strip().lower() in ("none", "off", "unlimited", "null"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (or 'none' for no limit)") from None
    return int(value) if value.is_integer() else value


def cmd_limits(args: argparse.Namespace) -> int:
    from tapcore.jobs.limits import LIMIT_KEYS, clear_limits, limits_for, load_limits, set_limits
    from tapcore.workspace import home

    root = home()
    if args.action == "set":
        values = {k: getattr(args, k) for k in LIMIT_KEYS if hasattr(args, k)}
        if not values:
            raise ValueError("give at least one of --max-jobs, --max-running, --max-disk-gb (a number, or none)")
        if bool(args.user) == bool(args.default):
            raise ValueError("give either a USER or --default (the limits of everybody without their own)")
        entry = set_limits(root, None if args.default else args.user, **values)
        print(f"limits for {'everybody (default)' if args.default else args.user}: {json.dumps(entry)}")
        return 0
    if args.action == "clear":
        if not args.user:
            raise ValueError("give the USER whose own limits to remove")
        found = clear_limits(root, args.user)
        print(f"{args.user}: " + ("own limits removed; the default applies" if found else "had no own limits"))
        return 0
    data = load_limits(root)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"default: {json.dumps(limits_for(root, '', {'default': data['default'], 'users': {}}).to_dict())}")
    for user in sorted(data["users"]):
        print(f"{user}: {json.dumps(limits_for(root, user, data).to_dict())}")
    print("(null = no limit; change with `tapcore limits set USER --max-jobs N`, or --default for everybody)")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("workers", help="run one worker per GPU and restart any that dies",
                              description="Start one `tapcore worker` per device (every visible GPU, or "
                                          "$TAPCORE_WORKER_DEVICES, e.g. cuda:0,cuda:1 or cpu,cpu) and keep "
                                          "them running.")
    p.add_argument("--devices", default="", help="comma-separated devices, e.g. cuda:0,cuda:1 or cpu,cpu "
                                                 "(default: $TAPCORE_WORKER_DEVICES, else every visible GPU, "
                                                 "else one CPU worker)")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between checks of the workers (default: 1)")
    p.add_argument("--worker-poll", type=float, default=1.0, help="each worker's queue poll (default: 1 s)")
    p.add_argument("--restart-delay", type=float, default=1.0,
                   help="seconds before a dead worker is restarted; doubles while it keeps dying (default: 1)")
    p.set_defaults(func=cmd_workers)

    p = subparsers.add_parser("limits", help="show or set per-user job and disk limits (admin)",
                              description="Per-user limits, stored in $TAPCORE_HOME/limits.json. A submit "
                                          "beyond max-jobs or max-disk-gb is refused; max-running caps a "
                                          "user's jobs running at once.")
    p.add_argument("action", nargs="?", choices=("show", "set", "clear"), default="show")
    p.add_argument("user", nargs="?", default="", help="the user (for set / clear)")
    p.add_argument("--default", action="store_true", help="set the default limits for everybody")
    p.add_argument("--max-jobs", dest="max_jobs", type=_limit_value, default=argparse.SUPPRESS,
                   help="jobs queued or running at once (a number, or none)")
    p.add_argument("--max-running", dest="max_running", type=_limit_value, default=argparse.SUPPRESS,
                   help="jobs running at once on all GPUs together (a number, or none)")
    p.add_argument("--max-disk-gb", dest="max_disk_gb", type=_limit_value, default=argparse.SUPPRESS,
                   help="disk use of the user's runs and datasets, GB (a number, or none)")
    p.add_argument("--json", action="store_true", help="print the limits file as JSON")
    p.set_defaults(func=cmd_limits)
