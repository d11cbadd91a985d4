"""Benchmark of whole-movie prediction (``tapcore.predict.predict_movie``): frames per second and peak memory.

Runs on hela01 (Fluo-N2DL-HeLa 01: 92 frames, 700 x 1100) and on a synthetic 1024 x 1024 movie and
prints one JSON line per run. Without ``--model`` the network is the paper's architecture with random
weights (default TapConfig U-Net + the chosen head): the compute is the same as for a trained model.

Targets: the full hela01 movie in under 10 minutes on a 2-core CPU; >= 20 frames/s at 1024 x 1024 on
one H100.

Examples::

    nice -n 10 .venv/bin/python bench/predict.py --threads 2                 # full hela01 + synthetic
    .venv/bin/python bench/predict.py --hela-frames 8 --synthetic-frames 4   # quick estimate
    .venv/bin/python bench/predict.py --device cuda --amp bf16 --synthetic-frames 64 --hela-frames 92

On a shared CPU, ``cpu_s_per_frame`` (process CPU time per frame) is the load-independent figure;
``full_movie_s_idle_estimate`` = frames x cpu_s_per_frame / threads.

Memory: ``peak_rss_mb`` is the process's peak resident set (``ru_maxrss``, includes the movie and
everything loaded before), ``peak_traced_mb`` the peak of Python/numpy allocations during the run
(``tracemalloc``), ``cuda_peak_mb`` ``torch.cuda.max_memory_allocated`` on GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tapcore.runtime import configure_process  # noqa: E402

configure_process()  # before torch: huge-page CPU allocations (tapcore.runtime)

import torch  # noqa: E402

from tapcore.detector import EventDetector  # noqa: E402
from tapcore.events.heads import HEADS, build_head  # noqa: E402
from tapcore.events.model import EventModel  # noqa: E402
from tapcore.predict import AMP_MODES, PredictConfig, predict_movie  # noqa: E402
from tapcore.tap.model import TapConfig, TapModel  # noqa: E402
from tapcore.utils import environment_info, resolve_device  # noqa: E402


def random_model(head: str, crop: int = 48) -> EventDetector:
    torch.manual_seed(0)
    tap = TapModel(TapConfig())
    model = EventModel(tap.backbone, build_head(head, in_channels=tap.cfg.features, n_classes=2, crop=crop))
    return EventDetector(model.eval(), config={"class_names": ["none", "event"],
                                               "normalize": {"pmin": 1.0, "pmax": 99.8}},
                         manifest={"bundle_id": f"random-{head}"})


def synthetic_movie(frames: int, size: int) -> np.ndarray:
    from tapcore.synthetic import SynthConfig, make_synthetic

    cells = max(25, int(25 * size * size / 256**2 / 4))  # a similar cell density to the 256 x 256 default
    return make_synthetic(SynthConfig(seed=0, frames=frames, height=size, width=size, cells=cells,
                                      max_cells=4 * cells)).movie


def run(name: str, movie: np.ndarray, model, cfg: PredictConfig, full_frames: int | None = None) -> dict:
    device = resolve_device(cfg.device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    tracemalloc.start()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    pred = predict_movie(movie, model, cfg)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    fps = movie.shape[0] / seconds
    out = {
        "bench": "predict", "data": name, "frames": int(movie.shape[0]), "shape": list(movie.shape[1:]),
        "seconds": round(seconds, 2), "frames_per_s": round(fps, 3), "events": int(len(pred.events)),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_traced_mb": round(traced_peak / 2**20, 1),
        "device": device, "threads": torch.get_num_threads(), "amp": cfg.amp, "batch": pred.record["config"]["batch"],
        "tile": cfg.tile, "method": pred.record["method"], "head": getattr(model.model.head, "name", None),
        "loadavg_1min": round(os.getloadavg()[0], 2),
        # CPU seconds per frame do not depend on other processes' load: on an otherwise idle machine
        # with perfect thread scaling one frame takes about cpu_s_per_frame / threads seconds
        "cpu_s_per_frame": round(cpu_s / movie.shape[0], 2),
    }
    if full_frames:
        out["full_movie_frames"] = full_frames
        out["full_movie_s_estimate"] = round(full_frames / fps, 1)
        if device == "cpu":
            out["full_movie_s_idle_estimate"] = round(full_frames * cpu_s / movie.shape[0] / torch.get_num_threads(), 1)
    if device.startswith("cuda"):
        out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["gpu"] = torch.cuda.get_device_name()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hela", default=str(ROOT.parent / "shared" / "data" / "hela01"), help="hela01 CTC folder")
    p.add_argument("--hela-frames", type=int, default=92, help="frames of hela01 to run (0: skip; default all 92)")
    p.add_argument("--synthetic-frames", type=int, default=8, help="frames of the synthetic movie (0: skip)")
    p.add_argument("--size", type=int, default=1024, help="synthetic frame side (default %(default)s)")
    p.add_argument("--model", default=None, help="event head bundle (default: random weights, paper architecture)")
    p.add_argument("--head", default="resnet", choices=list(HEADS), help="head of the random model")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="none", choices=AMP_MODES)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--tile", type=int, default=PredictConfig.tile)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = EventDetector.load(args.model, device="cpu") if args.model else random_model(args.head)
    cfg = PredictConfig(device=args.device, amp=args.amp, batch=args.batch, tile=args.tile)
    print(json.dumps({"bench": "predict", "environment": environment_info(resolve_device(args.device))}), flush=True)
    if args.synthetic_frames:
        movie = synthetic_movie(max(args.synthetic_frames, 2), args.size)
        # warm-up on two frames (allocator, FFT plans, cuDNN autotuning) is not timed
        run("warmup", movie[:2], model, cfg)
        print(json.dumps(run(f"synthetic{args.size}", movie, model, cfg)), flush=True)
    if args.hela_frames:
        if not Path(args.hela).is_dir():
            print(json.dumps({"bench": "predict", "data": "hela01", "skipped": f"{args.hela} not found"}), flush=True)
        else:
            from tapcore.io import read_input

            movie = read_input(args.hela).movie
            n = min(max(args.hela_frames, 2), movie.shape[0])
            print(json.dumps(run("hela01", movie[:n], model, cfg, full_frames=int(movie.shape[0]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
