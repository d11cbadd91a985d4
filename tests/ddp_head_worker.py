"""One process of the 2-process DDP event-head test (tests/test_distributed_head.py), started by torchrun.

``python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_head_worker.py DATA_DIR``
runs, in one process group, with ``DATA_DIR`` holding ``movie.tif``, ``masks.tif``, ``tap/`` and
``head.json`` (the keyword arguments of the head configuration):

1. ``a0/``: ``tapcore train-head`` (the CLI), strategy A0 (frozen TAP backbone, linear head);
2. ``c0/``: the library's ``train_head``, strategy C0 (backbone with BatchNorm trained end to end);
3. ``c0-b38/``: C0 for 1 epoch in batches of 38 (the last batch of 1 pair: rank 1's share is empty);
4. a global batch that does not split over 2 processes: the error message goes to ``odd-rank<R>.txt``.

Every bundle and array write is logged per rank to ``DATA_DIR/writes-rank<R>.jsonl``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ddp_writes import write_logger


def main() -> int:
    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    import torch

    torch.set_num_threads(1)
    import tapcore.detector
    import tapcore.events.train as train
    from tapcore.cli import main as cli
    from tapcore.io import read_masks, read_movie

    logged = write_logger(out / f"writes-rank{rank}.jsonl", rank)

    tapcore.detector.save_bundle = logged(tapcore.detector.save_bundle, "bundle")  # EventDetector.save writes bundles
    train._write_arrays = logged(train._write_arrays, "arrays")

    kw = json.loads((out / "head.json").read_text())
    rc = cli(["train-head", str(out / "movie.tif"), str(out / "masks.tif"), "--strategy", "A0", "--tap",
              str(out / "tap"), "--device", "cpu", "--out", str(out / "a0"), *kw["cli"]])
    movie = read_movie(out / "movie.tif")
    masks = read_masks(out / "masks.tif", movie.shape)
    cfg = train.HeadConfig(**{**kw["c0"], "strategy": "C0", "dataset": train.CropPairConfig(**kw["dataset"])})
    train.train_head(movie, masks, out / "tap", cfg, out / "c0")
    import dataclasses

    # 39 training pairs in batches of 38: the last batch of 1 pair leaves rank 1 an empty share
    train.train_head(movie, masks, out / "tap", dataclasses.replace(cfg, batch_size=38, epochs=1), out / "c0-b38")

    try:
        train.train_head(movie, masks, out / "tap", dataclasses.replace(cfg, batch_size=7), out / "odd")
    except ValueError as exc:
        (out / f"odd-rank{rank}.txt").write_text(str(exc))
    return rc


if __name__ == "__main__":
    sys.exit(main())
