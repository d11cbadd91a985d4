"""CLI: ``tapcore worker``, ``tapcore submit SPEC.json``, ``tapcore jobs [--cancel ID]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tapcore.utils import read_json


def _queue():
    from tapcore.jobs.queue import JobQueue
    from tapcore.workspace import home

    return JobQueue(home())


def cmd_worker(args: argparse.Namespace) -> int:
    from tapcore.jobs.worker import Worker
    from tapcore.workspace import home

    worker = Worker(home(), device=args.device, poll=args.poll)
    n = worker.run(once=args.once)
    print(f"worker stopped after {n} job(s)")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    path = Path(args.spec)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; give a job spec JSON file")
    spec = read_json(path)
    queue = _queue()
    job_id = queue.submit(spec, owner=args.owner or "")
    print(job_id)
    if args.wait:
        from tapcore.jobs.worker import wait_for

        job = wait_for(queue, job_id, timeout=args.wait)
        print(f"{job.id}: {job.state}" + (f" ({job.error})" if job.error else ""))
        return 0 if job.state == "done" else 1
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    queue = _queue()
    if args.cancel:
        state = queue.cancel(args.cancel)
        print(f"{args.cancel}: {state}" + (" (its worker stops it within a second)" if state == "running" else ""))
        return 0
    if args.log:
        job = queue.get(args.log)
        log = job.run_dir / "log.txt"
        print(log.read_text(encoding="utf-8") if log.exists() else "(no log yet)")
        return 0
    jobs = queue.list()
    if args.json:
        print(json.dumps([j.as_row() for j in jobs], indent=2))
        return 0
    if not jobs:
        print("no jobs")
        return 0
    print(f"{'job':42} {'state':11} {'progress':>8}  {'owner':12} {'device':8} created")
    for j in jobs:
        r = j.as_row()
        print(f"{r['job']:42} {r['state']:11} {r['progress']:7.1f}%  {r['owner'][:12]:12} {r['device'][:8]:8} "
              f"{r['created']}"
              + (f"  {r['error']}" if r["error"] else ""))
    workers = queue.alive_workers()
    print(f"\n{len(workers)} worker(s) alive" + "".join(f"\n  {w.id} on {w.device}" + (f", running {w.job}" if w.job else "")
                                                   for w in workers))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("worker", help="run queued jobs (one worker per GPU)",
                              description="Claim queued jobs in order and run each in its own process.")
    p.add_argument("--device", default="auto", help="cuda:N, cuda, cpu or auto (default: auto)")
    p.add_argument("--once", action="store_true", help="exit when the queue is empty")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between queue checks (default: 1.0)")
    p.set_defaults(func=cmd_worker)

    p = subparsers.add_parser("submit", help="queue a job from a JSON spec",
                              description='Queue a job: SPEC.json holds {"kind": ..., "params": {...}}.')
    p.add_argument("spec", help="job spec JSON file")
    p.add_argument("--owner", default="", help="who submits it (default: $USER)")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to this long for the job to finish (needs a running worker)")
    p.set_defaults(func=cmd_submit)

    p = subparsers.add_parser("jobs", help="list jobs, cancel one, or show its log")
    p.add_argument("--cancel", metavar="ID", help="cancel this job")
    p.add_argument("--log", metavar="ID", help="print this job's log")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=cmd_jobs)
