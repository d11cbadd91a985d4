"""Run one job in this (fresh) process: ``python -m tapcore.jobs.run_job RUN_DIR``.

Started by the worker in its own process group with stdout/stderr going to ``RUN_DIR/log.txt``.
Reads ``spec.json``, calls the task registered for its kind (:mod:`tapcore.jobs.tasks`) with a
progress callback that appends to ``metrics.jsonl``, and writes ``result.json``: ``{"ok": true,
"outputs": {...}, "verdicts": [...], "verdict": {...} | null}`` (whether the result can be trusted,
:mod:`tapcore.verdicts`) or ``{"ok": false, "error": "..."}``. Exit status 0 on success, 1 on failure.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from pathlib import Path

from tapcore.progress import MetricsLog
from tapcore.runtime import configure_process
from tapcore.utils import (DiskFullError, atomic_write_json, disk_full_message, is_disk_full, read_json,
                           remove_stale_temporaries)

logger = logging.getLogger("tapcore.jobs.run_job")


def _watch_parent(worker_pid: int) -> None:
    """Exit at once when the worker that started us is gone (portable backup of PDEATHSIG)."""
    while True:
        if os.getppid() != worker_pid:
            os._exit(3)
        time.sleep(1.0)


def error_message(exc: BaseException, run_dir: Path | None = None) -> str:
    """The message shown to the user: ValueError texts are written for people, others get their type.

    A full disk (ENOSPC / EDQUOT) says so in plain words, with the file it could not write.
    """
    if isinstance(exc, DiskFullError):
        return str(exc)
    if is_disk_full(exc):
        return disk_full_message(exc, run_dir)  # type: ignore[arg-type]
    if isinstance(exc, (ValueError, FileNotFoundError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tapcore.jobs.run_job RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(argv[0]).resolve()
    configure_process()  # before the task imports torch (the worker's environment usually set it already)
    logging.basicConfig(
        stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    worker_pid = os.environ.get("TAPCORE_WORKER_PID")
    if worker_pid and worker_pid.isdigit():
        threading.Thread(target=_watch_parent, args=(int(worker_pid),), daemon=True).start()
    from tapcore.jobs.tasks import run_task

    try:
        # a job killed while writing left temporary files: this process owns the run folder now
        for leftover in remove_stale_temporaries(run_dir):
            logger.info("removed %s, left by an interrupted write", leftover.relative_to(run_dir))
        spec = read_json(run_dir / "spec.json")
        logger.info("job %s: %s on device %s", spec.get("id"), spec.get("kind"), os.environ.get("TAPCORE_DEVICE"))
        outputs = run_task(spec, run_dir, MetricsLog(run_dir / "metrics.jsonl"))
    except Exception as exc:  # every failure is reported to the user, with the traceback in the log
        traceback.print_exc()
        sys.stdout.flush()
        try:
            atomic_write_json(run_dir / "result.json", {"ok": False, "error": error_message(exc, run_dir)})
        except OSError:  # the disk is full even for a small file: the worker reports the exit code
            traceback.print_exc()
        return 1
    result = {"ok": True, "outputs": outputs, **judge(str(spec.get("kind")), run_dir, outputs)}
    atomic_write_json(run_dir / "result.json", result)
    logger.info("job finished; outputs: %s", ", ".join(sorted(outputs)) if outputs else "none")
    for v in result["verdicts"]:
        logger.info("verdict: %s", v["level"] + " " + v["title"])
    return 0


def judge(kind: str, run_dir: Path, outputs: dict) -> dict:
    """``{"verdicts": [...], "verdict": worst or None}`` of a finished job (:mod:`tapcore.verdicts`).

    A job whose model learned nothing still ends "done", but its verdict says so; the app shows it
    amber or red instead of green.
    """
    from tapcore.verdicts import Verdict, job_verdicts, worst

    try:
        verdicts = job_verdicts(kind, run_dir)
    except (ValueError, KeyError, TypeError, OSError) as exc:  # judging must not turn a finished job into a failed one
        logger.exception("could not judge the result of this job")
        verdicts = [Verdict("warn", "not judged", f"The result could not be checked ({exc}).",
                            "Look at the curves and metrics yourself.", kind)]
    overall = worst(verdicts)
    return {"verdicts": [v.to_dict() for v in verdicts], "verdict": overall.to_dict() if overall else None}


if __name__ == "__main__":
    sys.exit(main())
