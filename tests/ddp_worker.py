"""One process of the 2-process DDP test (tests/test_distributed.py), started by torchrun.

``python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_worker.py MOVIE.tif CONFIG.json OUT``
runs, in one process group:

1. ``shared/``: the library's ``pretrain`` with ``dist_sampling="shared"`` (the pairs of one process);
2. ``straight/``: ``tapcore pretrain`` (the CLI) for 2 epochs with per-rank sampling;
3. ``resumed/``: the same, stopped by a tiny time budget after epoch 1, then ``--resume``.

Every file write of the training loop and every bundle write is logged per rank to
``OUT/writes-rank<R>.jsonl`` (to show that only rank 0 writes).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ddp_writes import write_logger


def main() -> int:
    movie_path, config_path, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    rank = int(os.environ["RANK"])
    import torch

    torch.set_num_threads(1)
    import tapcore.bundle
    import tapcore.tap.train as train
    from tapcore.cli import main as cli
    from tapcore.config import config_from_dict
    from tapcore.io import read_movie

    logged = write_logger(out / f"writes-rank{rank}.jsonl", rank)

    train.atomic_write_bytes = logged(train.atomic_write_bytes, "checkpoint")
    tapcore.bundle.save_bundle = logged(tapcore.bundle.save_bundle, "bundle")

    cfg = json.loads(Path(config_path).read_text())
    movie = read_movie(movie_path)
    train.pretrain(movie, config_from_dict(train.PretrainConfig, {**cfg, "dist_sampling": "shared"}), out / "shared")
    args = ["pretrain", movie_path, "--config", config_path]
    rcs = [cli([*args, "--out", str(out / "straight")]),
           cli([*args, "--out", str(out / "resumed"), "--max-time", "1e-6"]),
           cli([*args, "--out", str(out / "resumed"), "--resume"])]
    return max(rcs)


if __name__ == "__main__":
    sys.exit(main())
