"""Overhead of the distributed path: TAP pretraining pairs/s, plain vs under torchrun with one process.

Runs the same short pretraining twice, each in a fresh process: ``python bench/ddp_overhead.py
--worker ...`` (the single-process path) and ``python -m torch.distributed.run --standalone
--nproc-per-node 1 bench/ddp_overhead.py --worker ...`` (process group, DDP wrapper, global
BatchNorm path, rank-0 barriers; with one process the BatchNorm is the plain one and DDP's
all-reduce is a copy). Throughput is the mean ``pairs_per_s`` of the epochs after the first (the
first includes cuDNN autotuning and allocator warm-up). Prints one JSON object per run and a summary:
``{"bench": "ddp_overhead", "plain_pairs_per_s", "torchrun1_pairs_per_s", "overhead_pct", ...}``.

Examples::

    python bench/ddp_overhead.py                             # GPU: paper configuration (96 px, batch 152)
    python bench/ddp_overhead.py --device cpu --quick        # CPU smoke run (tiny model)
    python bench/ddp_overhead.py --nproc 2 --device cpu --quick   # also time 2 processes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hela01"


def _config(args: argparse.Namespace) -> dict:
    cfg = {"epochs": args.epochs, "samples_per_epoch": args.samples_per_epoch, "batch_size": args.batch_size,
           "patch": args.patch, "device": args.device, "val_samples": 256, "log_every": 10_000, "seed": 0}
    if args.quick:
        cfg["model"] = {"base_channels": 8, "depth": 2, "features": 8, "head_channels": 8}
    return cfg


def worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    from tapcore.runtime import configure_process

    configure_process()  # before torch: huge-page CPU allocations (tapcore.runtime)
    import numpy as np
    import torch

    from tapcore.config import config_from_dict
    from tapcore.tap.train import PretrainConfig, pretrain

    if args.threads:
        torch.set_num_threads(args.threads)
    if Path(args.data).is_dir():
        from tapcore.io import read_input

        movie = read_input(Path(args.data)).movie[:args.frames]
    else:
        from tapcore.synthetic import SynthConfig, make_synthetic

        movie = make_synthetic(SynthConfig(seed=0, frames=args.frames, height=256, width=256)).movie
    cfg = config_from_dict(PretrainConfig, _config(args))
    result = pretrain(np.asarray(movie), cfg, Path(args.out))
    rates = [h["pairs_per_s"] for h in result.history]
    steady = rates[1:] or rates
    if int(os.environ.get("RANK", "0")) == 0:
        print("RESULT " + json.dumps({"world_size": int(os.environ.get("WORLD_SIZE", "0")) or None,
                                      "pairs_per_s_by_epoch": rates,
                                      "pairs_per_s": sum(steady) / len(steady),
                                      "train_time_s": result.metrics["train_time_s"],
                                      "device": cfg.device}), flush=True)


def _launch(cmd: list[str], env: dict) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"run failed ({' '.join(cmd)}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--samples-per-epoch", dest="samples_per_epoch", type=int, default=152 * 40)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=152)
    p.add_argument("--patch", type=int, default=96)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="CTC folder (default hela01; synthetic when absent)")
    p.add_argument("--quick", action="store_true", help="tiny model and few pairs (CPU smoke run)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--nproc", type=int, default=1, help="processes of the torchrun run (default 1)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick and args.samples_per_epoch == 152 * 40:
        args.samples_per_epoch, args.batch_size, args.patch, args.epochs = 16 * 8, 16, 32, 3
    if args.worker:
        worker(args)
        return
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    passthrough = [a for a in sys.argv[1:] if a not in ("--nproc",)]
    if "--nproc" in sys.argv:
        i = sys.argv.index("--nproc")
        passthrough = sys.argv[1:i] + sys.argv[i + 2:]
    script = str(Path(__file__).resolve())
    with tempfile.TemporaryDirectory(prefix="ddp-bench-") as tmp:
        plain = _launch([sys.executable, script, *passthrough, "--worker", "--out", f"{tmp}/plain"], env)
        print(json.dumps({"bench": "ddp_overhead_run", "mode": "plain", **plain}), flush=True)
        ddp = _launch([sys.executable, "-m", "torch.distributed.run", "--standalone",
                       f"--nproc-per-node={args.nproc}", script, *passthrough, "--worker", "--out", f"{tmp}/ddp"], env)
        print(json.dumps({"bench": "ddp_overhead_run", "mode": f"torchrun_{args.nproc}", **ddp}), flush=True)
    print(json.dumps({"bench": "ddp_overhead", "device": args.device, "nproc": args.nproc,
                      "config": _config(args), "plain_pairs_per_s": plain["pairs_per_s"],
                      f"torchrun{args.nproc}_pairs_per_s": ddp["pairs_per_s"],
                      "overhead_pct": 100.0 * (plain["pairs_per_s"] / ddp["pairs_per_s"] - 1.0)}), flush=True)


if __name__ == "__main__":
    main()
