"""Persistent job queue and workers: the app and CLI enqueue, ``tapcore worker`` runs.

- :mod:`tapcore.jobs.queue`: the SQLite queue (:class:`JobQueue`, :class:`Job`)
- :mod:`tapcore.jobs.worker`: the worker loop and :func:`ensure_worker` (used by the app)
- :mod:`tapcore.jobs.run_job`: runs one job in a fresh process
- :mod:`tapcore.jobs.tasks`: the registry of job kinds (kind -> library call)
"""

from tapcore.jobs.queue import Job, JobQueue

__all__ = ["Job", "JobQueue"]
