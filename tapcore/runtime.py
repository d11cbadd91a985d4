"""Process settings that entry points apply before torch loads: :func:`configure_process`.

``import tapcore`` changes nothing in the environment. The programs that start a tapcore process
call :func:`configure_process` first: the CLI (``tapcore.cli.main``), the app (``app.py``), a job
process (``tapcore.jobs.run_job``; the worker starts those from the CLI, so they inherit its
environment too), and the benchmarks; the Dockerfile sets the same variables with ``ENV``.

Settings (each only where the environment does not already choose):

``THP_MEM_ALLOC_ENABLE=1``
    PyTorch's transparent-huge-page allocation of large CPU tensors (read once, at torch's first
    allocation). Whole-frame feature maps are hundreds of MB, and with 4 KiB pages every fresh
    allocation is paid in page faults: huge pages made one hela01 frame of ``tapcore predict`` about
    20 % faster on the 2-core CPU (``bench/predict.py``). Set ``THP_MEM_ALLOC_ENABLE=0`` to keep 4 KiB pages.
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger(__name__)

#: Environment defaults of a tapcore process (a value already in the environment wins).
PROCESS_ENV = {"THP_MEM_ALLOC_ENABLE": "1"}


def configure_process() -> dict[str, str]:
    """Set :data:`PROCESS_ENV` defaults in ``os.environ``; returns the values now in effect.

    Call it before ``import torch``: torch reads these once. Called later, it still sets the variables
    (for child processes) and logs that this process keeps torch's settings.
    """
    if "torch" in sys.modules:
        logger.debug("configure_process after torch was imported: allocation settings apply to child processes")
    for name, value in PROCESS_ENV.items():
        os.environ.setdefault(name, value)
    return {name: os.environ[name] for name in PROCESS_ENV}
