"""Shared by the torchrun worker scripts: log every file write of a rank, to prove only rank 0 writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable


def write_logger(log: Path, rank: int) -> Callable[[Callable, str], Callable]:
    """``logged(fn, what)`` wraps a writer ``fn(path, ...)`` so each call appends ``{rank, what, path}`` to ``log``."""
    def logged(fn: Callable, what: str) -> Callable:
        def wrapper(path, *args, **kwargs):
            with open(log, "a", encoding="utf-8") as f:
                f.write(json.dumps({"rank": rank, "what": what, "path": str(path)}) + "\n")
            return fn(path, *args, **kwargs)
        return wrapper
    return logged
