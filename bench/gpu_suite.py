"""One prepared GPU run: every GPU figure and the first models trained on real data (issue 9).

Stages, in order, each under its own time budget (seconds, ``--budget NAME=S`` changes one; the
whole run stays under ``--max-total-s``, 540 s by default):

1. ``smoke`` (25 s): device, torch / CUDA versions; a tiny pretrain + A1 head + calibration +
   prediction on a synthetic movie on the device (bf16 autocast, channels_last, fused Adam, bf16
   prediction).
2. ``data`` (10 s): hela01 from ``../shared/data/hela01`` when it is there, else from the pack
   ``.devdata/hela01`` (``scripts/pack_device_data.py``).
3. ``throughput`` (85 s): TAP pairs/s at the paper's configuration (96 px, 32 base channels, batch
   152, all augmentations): data alone, then model step and end to end for eager fp32, eager bf16 +
   channels_last, and compiled bf16 + channels_last (``bench/tap_train.py``'s functions).
   Reference (tarrow, H100): 1,240 pairs/s end to end, 1,285 fp32 step, 1,840 bf16 step; target
   >= 3,700 end to end.
4. ``tta`` (time to accuracy, 200 s): train on hela01 frames 0-31, validate on 32-39 (1,024 fixed
   pairs) after every short epoch; validation accuracy at 30/60/80/120/180 s of training and the
   time to 0.60. Reference: tarrow reaches 0.60 after 240 s (H100); target <= 80 s.
5. ``real`` (185 s): a TAP pretrained on all hela01 frames for the time left after the heads'
   reserve (120 s); then heads A1, C1, A0, B1, in that order (a head that cannot finish in the time
   left is skipped and says so), all on the same crop pairs: time split 0.6 / 0.2 / 0.2 with a frame
   pair skipped at each boundary, so the validation frames lie between the training and the test
   frames; 500 pairs per frame pair and 20 ResNet / 10 linear epochs (the paper's 1,000 and 30 do not
   fit: head training gathers its feature windows on the CPU, about 0.5-1 ms per pair). Per head:
   crop-level confusion and class-1 precision/recall on the test crops, train seconds, calibration
   (ECE, 15 bins, before/after), whole-frame prediction of the test frames and event-level
   precision/recall/F1 against the CTC divisions (``bench/hela01_pipeline.py``'s matching). The A1
   head, its calibration and its TAP are written in the layout of ``models/hela-nuclei/`` (and zipped
   into ``--out``); a last line answers "does A1 beat C1 at equal labels?".
6. ``speed`` (35 s): prediction frames/s (bf16) on a synthetic 1024 x 1024 movie (64 frames) and on
   all 92 hela01 frames (``bench/predict.py``'s functions). Target >= 20 frames/s at 1024 x 1024.

Every result is one JSON line on stdout with its ``stage``, also appended to ``<out>/results.jsonl``.
A failing stage prints ``{"stage": ..., "error": ...}`` and the suite goes on with the next one; a
stage out of time stops at its next check and prints ``{"stage": ..., "timeout": ...}`` after the
results it got. ``<out>`` receives at most 8 files (what a device run can send back):
``results.jsonl``, ``suite.log``, ``hela_nuclei_head.zip`` + ``hela_nuclei_tap.zip`` (the
``models/hela-nuclei`` bundle, split to keep each file under 16 MiB; install them with
``python scripts/install_hela_nuclei.py``) and ``suite_records.zip`` (configs, metrics and event
tables of every run, no weights). Full bundles stay in ``--work``.

``--dry-run`` runs every stage at tiny sizes on the CPU (about a minute at one thread): a typo or
a crash shows up here, not in GPU minutes.

GPU command (see README "Benchmarks on a GPU")::

    PYTHONUNBUFFERED=1 PYTHONPATH=. python3 bench/gpu_suite.py --out $OUT 2>&1 | tee $OUT/log.txt
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tapcore.runtime import configure_process  # noqa: E402

configure_process()  # before torch: huge-page CPU allocations (tapcore.runtime)

import numpy as np  # noqa: E402
import torch  # noqa: E402

logger = logging.getLogger("gpu_suite")

SHARED_HELA = ROOT.parent / "shared" / "data" / "hela01"
PACK_HELA = ROOT / ".devdata" / "hela01"
STAGES = ("smoke", "data", "throughput", "tta", "real", "speed")
#: default stage budgets (s) on a GPU; they sum to the 540 s (9 min) total
GPU_BUDGETS = {"smoke": 25.0, "data": 10.0, "throughput": 85.0, "tta": 200.0, "real": 185.0, "speed": 35.0}
DRY_BUDGETS = {"smoke": 60.0, "data": 30.0, "throughput": 60.0, "tta": 60.0, "real": 120.0, "speed": 60.0}
#: tarrow on one H100 (issue 9)
REFERENCE = {"tarrow_h100_end_to_end_pairs_per_s": 1240, "tarrow_h100_fp32_step_pairs_per_s": 1285,
             "tarrow_h100_bf16_step_pairs_per_s": 1840, "tarrow_h100_s_to_val_acc_0.60": 240}
TARGETS = {"end_to_end_pairs_per_s": 3700, "s_to_val_acc_0.60": 80, "predict_frames_per_s_1024": 20}
MAX_RETURN_BYTES = 16 * 2**20  # a device run returns files of at most 16 MiB


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


tap_bench = _load_module("bench_tap_train", ROOT / "bench" / "tap_train.py")
pipeline_bench = _load_module("bench_hela01_pipeline", ROOT / "bench" / "hela01_pipeline.py")
predict_bench = _load_module("bench_predict", ROOT / "bench" / "predict.py")
packer = _load_module("pack_device_data", ROOT / "scripts" / "pack_device_data.py")


# -- sizes ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Sizes:
    """Every size of the run: the GPU plan (paper settings) or the dry run (tiny, CPU)."""

    # smoke
    smoke_frames: int = 16
    smoke_side: int = 128
    smoke_tap: dict = dataclasses.field(default_factory=lambda: {"base_channels": 8, "depth": 2, "features": 16,
                                                                 "head_channels": 16})
    smoke_patch: int = 48
    smoke_batch: int = 32
    smoke_epochs: int = 2
    smoke_pairs: int = 256
    smoke_head_pairs_per_frame: int = 40
    crop: int = 48  # event-head crop (paper: 48)
    # TAP (throughput, tta, real): the paper's configuration
    tap_model: dict = dataclasses.field(default_factory=lambda: {"base_channels": 32})
    patch: int = 96
    batch: int = 152
    lr: float = 1e-4
    thr_steps: int = 30
    thr_warmup: int = 10
    compile_backend: str = "inductor"
    min_compile_s: float = 40.0  # do not start the compiled measurement with less than this left
    tta_train_frames: tuple = (0, 32)
    tta_val_frames: tuple = (32, 40)
    tta_val_samples: int = 1024
    tta_train_s: float = 180.0
    tta_milestones: tuple = (30.0, 60.0, 80.0, 120.0, 180.0)
    epoch_s: float = 5.0  # aimed length of one (short) TAP epoch
    min_epoch_steps: int = 10
    max_epoch_steps: int = 400
    default_pairs_per_s: float = 3000.0  # epoch planning when the throughput stage measured nothing
    # real data
    real_val_samples: int = 1024
    head_reserve_s: float = 120.0  # real-stage seconds kept for the heads, calibration, prediction, evaluation
    min_tap_s: float = 30.0
    max_tap_s: Optional[float] = None  # None: all the time the heads leave
    strategies: tuple = ("A1", "C1", "A0", "B1")
    # Head training is bound by the host: feature windows are gathered on the CPU (about 0.5-1 ms per
    # pair of 54 x 54 x 32 windows), so the paper's 1,000 pairs per frame and 30 ResNet epochs (about
    # 135,000 gathers for A1 alone) do not fit the budget; 500 pairs per frame and 20 ResNet epochs do.
    pairs_per_frame: int = 500  # paper: 1000
    criterion: str = "size_either"  # paper; the dry run's tiny window needs "any_either" to hold enough events
    head_epochs: Optional[int] = None  # None: head_epochs_by_head
    head_epochs_by_head: dict = dataclasses.field(default_factory=lambda: {"linear": 10, "resnet": 20})  # paper: 10 / 30
    epoch_val_pairs: int = 250
    fractions: tuple = (0.6, 0.2, 0.2)
    feature_ram_mb: int = 16384
    thresholds: tuple = (0.3, 0.5, 0.7, 0.9)
    main_threshold: float = 0.5
    radius: float = 20.0
    frame_tolerance: int = 1
    min_distance: int = 24
    # prediction speed
    synth_side: int = 1024
    synth_frames: int = 64
    synth_distinct: int = 8  # distinct synthetic frames, repeated to synth_frames (speed does not depend on content)
    hela_predict_frames: Optional[int] = None  # None: all
    # dry run only: cut hela01 to a (frames, height, width) window around its divisions
    region: Optional[tuple] = None


def dry_sizes() -> Sizes:
    tiny = {"base_channels": 4, "depth": 2, "features": 8, "head_channels": 8}
    return Sizes(smoke_frames=12, smoke_side=96, smoke_tap=tiny, smoke_patch=32, smoke_batch=8, smoke_epochs=1,
                 smoke_pairs=16, smoke_head_pairs_per_frame=10, crop=16, tap_model=tiny, patch=32, batch=8, lr=1e-3,
                 thr_steps=2, thr_warmup=1, compile_backend="eager", min_compile_s=0.0, tta_val_samples=32,
                 tta_train_s=1.0, tta_milestones=(0.25, 0.5, 1.0), epoch_s=0.3, min_epoch_steps=2, max_epoch_steps=2,
                 default_pairs_per_s=200.0, real_val_samples=32, head_reserve_s=0.0, min_tap_s=1.0, max_tap_s=1.0,
                 head_epochs=1, epoch_val_pairs=30, feature_ram_mb=2048, min_distance=8,
                 criterion="any_either", pairs_per_frame=16, synth_side=64, synth_frames=3, synth_distinct=2,
                 hela_predict_frames=3, region=(40, 64, 80))


# -- helpers ----------------------------------------------------------------------------------------
class StageTimeout(Exception):
    """A stage used up its time budget (raised at its next check)."""


class Budget:
    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def check(self, what: str) -> None:
        if self.left() <= 0:
            raise StageTimeout(f"{what}: the stage's {self.seconds:.0f} s budget is used up")


def _clean(x: Any) -> Any:
    """JSON-able copy: NaN/inf -> None, numpy -> Python, paths -> str."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, Path):
        return str(x)
    if x is None or isinstance(x, (str, int, bool)):
        return x
    return str(x)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _f1(precision: Any, recall: Any) -> Optional[float]:
    try:
        p, r = float(precision), float(recall)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(p) and math.isfinite(r)) or p + r == 0:
        return None
    return 2 * p * r / (p + r)


def _versions() -> dict[str, Any]:
    """Versions of the packages the suite uses, and whether the app-only ones are installed (None: absent).
    Nothing is imported here: the app-only packages (grad-cam, streamlit) must not be needed."""
    from importlib import metadata

    dists = {"numpy": "numpy", "scipy": "scipy", "pandas": "pandas", "tifffile": "tifffile",
             "cv2": ("opencv-python", "opencv-python-headless", "opencv-contrib-python"), "safetensors": "safetensors",
             "PIL": "pillow", "pytorch_grad_cam": "grad-cam", "streamlit": "streamlit"}
    out: dict[str, Any] = {}
    for module, names in dists.items():
        if importlib.util.find_spec(module) is None:
            out[module] = None
            continue
        out[module] = "present"
        for name in (names if isinstance(names, tuple) else (names,)):
            try:
                out[module] = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def _zip(paths: list[tuple[Path, str]], dest: Path) -> dict[str, Any]:
    """Write ``dest`` (deflated) from ``(file, name in the zip)`` pairs; its size must fit a device return."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as z:
        for path, name in paths:
            z.write(path, name)
    os.replace(tmp, dest)
    size = dest.stat().st_size
    if size > MAX_RETURN_BYTES:
        raise ValueError(f"{dest.name} is {size / 2**20:.1f} MiB, over the 16 MiB a device run returns per file")
    return {"file": dest.name, "bytes": size, "mib": round(size / 2**20, 2), "files": len(paths)}


# -- data -------------------------------------------------------------------------------------------
def load_hela(path: Path) -> dict[str, Any]:
    """hela01 from a device pack (``pack.json``) or a CTC folder: movie, masks, divisions, provenance."""
    from tapcore.utils import sha256_array

    if (path / "pack.json").is_file():
        pack = packer.read_pack(path)
        movie, masks, events, meta = pack["movie"], pack["masks"], pack["events"], pack["meta"]
        source = {"kind": "pack", "path": str(path), "sha256_original": meta["movie"]["sha256_original"],
                  "quantisation_step": meta["movie"]["step"], "max_abs_error": meta["movie"]["max_abs_error"],
                  "packed_from": meta["source"]}
    else:
        from tapcore.ctc import load_ctc

        seq = load_ctc(path)
        movie, masks, events = seq.movie, seq.masks, seq.events
        source = {"kind": "ctc", "path": str(path), "sha256_original": sha256_array(movie),
                  "quantisation_step": 1, "max_abs_error": 0}
    truth = events[(events["role"] == "parent") & np.isfinite(events["y"]) & np.isfinite(events["x"])]
    return {"movie": movie, "masks": masks, "truth": truth.reset_index(drop=True), "source": source}


def _time_ranges(n_pairs: int, fractions: tuple) -> list[tuple[int, int]]:
    from tapcore.events.dataset import _time_ranges as ranges

    return ranges(n_pairs, tuple(float(f) for f in fractions))


def dry_window(truth, shape: tuple, size: tuple, fractions: tuple) -> Optional[list[int]]:
    """A ``size = (frames, height, width)`` window ``[t0, t1, y0, y1, x0, x1]`` of the movie whose
    divisions best cover the three time splits (most divisions in the poorest split, then most in
    all); None when the movie is not larger than ``size``."""
    t_len, height, width = shape
    n, h, w = min(size[0], t_len), min(size[1], height), min(size[2], width)
    if (n, h, w) == (t_len, height, width):
        return None
    ranges = _time_ranges(n - 1, fractions)
    y, x, f = (truth[c].to_numpy(float) for c in ("y", "x", "frame"))
    y0s = np.arange(0, height - h + 1, 8)[:, None, None]  # (Wy, 1, 1)
    x0s = np.arange(0, width - w + 1, 8)[None, :, None]  # (1, Wx, 1)
    inside = (y >= y0s + 8) & (y < y0s + h - 8) & (x >= x0s + 8) & (x < x0s + w - 8)  # (Wy, Wx, N)
    best, best_score = None, -1
    for t0 in range(0, t_len - n + 1, 2):
        counts = np.stack([(inside & (f >= t0 + a) & (f < t0 + b)).sum(-1) for a, b in ranges], -1)  # (Wy, Wx, 3)
        score = counts.min(-1) * 10_000 + counts.sum(-1)
        i = int(np.argmax(score))
        if score.flat[i] > best_score:
            iy, ix = np.unravel_index(i, score.shape)
            best_score = int(score.flat[i])
            best = [t0, t0 + n, int(y0s[iy, 0, 0]), int(y0s[iy, 0, 0]) + h, int(x0s[0, ix, 0]), int(x0s[0, ix, 0]) + w]
    return best


# -- the suite --------------------------------------------------------------------------------------
class Suite:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.dry = bool(args.dry_run)
        self.sizes = dry_sizes() if self.dry else Sizes()
        if args.head_epochs is not None:
            self.sizes.head_epochs = args.head_epochs
        from tapcore.utils import resolve_device

        self.device = "cpu" if self.dry else resolve_device(args.device)
        self.cuda = self.device.startswith("cuda")
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.results = open(self.out / "results.jsonl", "a", encoding="utf-8")
        self.t0 = time.perf_counter()
        self.budgets = dict(DRY_BUDGETS if self.dry else GPU_BUDGETS)
        self.budgets.update(args.budget or {})
        self.status: dict[str, str] = {}
        self.hela: Optional[dict[str, Any]] = None
        self.rates: dict[str, float] = {}  # end-to-end pairs/s per throughput configuration
        self.use_compile = False
        self.compile_reason = "the throughput stage has not run"
        self.a1_dir: Optional[Path] = None
        self.real_records: list[dict] = []

    # -- output ------------------------------------------------------------------------------------
    def emit(self, stage: str, record: dict[str, Any]) -> dict[str, Any]:
        rec = _clean({"stage": stage, **record, "suite_s": round(time.perf_counter() - self.t0, 2)})
        line = json.dumps(rec)
        print(line, flush=True)
        self.results.write(line + "\n")
        self.results.flush()
        return rec

    def run_stage(self, name: str, fn: Callable[[Budget], None]) -> None:
        left_total = float(self.args.max_total_s) - (time.perf_counter() - self.t0)
        if left_total < 3:
            self.status[name] = "skipped"
            self.emit(name, {"skipped": f"the suite's {self.args.max_total_s:.0f} s are used up"})
            return
        budget = Budget(min(float(self.budgets[name]), left_total))
        logger.info("stage %s: budget %.0f s", name, budget.seconds)
        try:
            fn(budget)
            self.status[name] = "ok"
        except StageTimeout as exc:
            self.status[name] = "timeout"
            self.emit(name, {"timeout": str(exc)})
        except Exception as exc:  # one failing stage must not cost the others their GPU minutes
            self.status[name] = "error"
            self.emit(name, {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]})
        finally:
            gc.collect()
            if self.cuda:
                torch.cuda.empty_cache()
            self.emit(name, {"kind": "end", "status": self.status.get(name, "error"),
                             "seconds": round(budget.elapsed(), 2), "budget_s": budget.seconds})

    def run(self) -> int:
        self.emit("suite", {"kind": "start", "dry_run": self.dry, "device": self.device, "out": str(self.out),
                            "work": str(self.work), "command": " ".join([sys.executable] + sys.argv),
                            "budgets_s": self.budgets, "max_total_s": self.args.max_total_s,
                            "sizes": dataclasses.asdict(self.sizes), "seed": self.args.seed})
        for name in self.args.stages:
            self.run_stage(name, getattr(self, f"stage_{name}"))
        files = self.finish()
        self.emit("suite", {"kind": "done", "status": self.status, "seconds": round(time.perf_counter() - self.t0, 1),
                            "files": files})
        self.results.close()
        return 0

    def finish(self) -> list[str]:
        """``suite_records.zip``: every small record of the work folder (configs, metrics, tables; no weights)."""
        try:
            keep = (".json", ".jsonl", ".csv", ".md", ".txt")
            paths = sorted(p for p in self.work.rglob("*") if p.is_file() and p.suffix in keep
                           and "checkpoint" not in p.parts and p.stat().st_size < 4 * 2**20)
            info = _zip([(p, str(p.relative_to(self.work))) for p in paths], self.out / "suite_records.zip")
            self.emit("suite", {"what": "records_zip", **info})
        except Exception as exc:
            self.emit("suite", {"what": "records_zip", "error": f"{type(exc).__name__}: {exc}"})
        return sorted(p.name for p in self.out.iterdir() if p.is_file())

    # -- planning ----------------------------------------------------------------------------------
    def _pairs_per_s(self) -> tuple[float, str]:
        key = "compiled_bf16_cl" if self.use_compile else ("eager_bf16_cl" if self.cuda else "eager_fp32")
        if key in self.rates:
            return self.rates[key], f"throughput stage ({key})"
        return self.sizes.default_pairs_per_s, "default guess (no throughput measurement)"

    def _tap_config(self, *, train_s: float, val_samples: int, epochs_margin: float = 1.25):
        """The paper's TAP configuration, with short epochs (about ``epoch_s``) and as many epochs as the
        measured throughput fits into ``train_s`` (the cosine decay then spans the run), stopped by time."""
        from tapcore.config import config_from_dict
        from tapcore.tap.train import PretrainConfig

        s = self.sizes
        rate, rate_source = self._pairs_per_s()
        steps = int(min(max(round(rate * s.epoch_s / s.batch), s.min_epoch_steps), s.max_epoch_steps))
        epochs = max(2, math.ceil(epochs_margin * train_s * rate / (steps * s.batch)))
        cfg = config_from_dict(PretrainConfig, {
            "patch": s.patch, "batch_size": s.batch, "lr": s.lr, "epochs": epochs, "samples_per_epoch": steps * s.batch,
            "val_samples": val_samples, "device": self.device, "seed": self.args.seed, "compile": self.use_compile,
            "max_time_s": train_s, "log_every": 10**9, "model": dict(s.tap_model)})
        return cfg, {"pairs_per_s_planned": rate, "planned_from": rate_source, "steps_per_epoch": steps,
                     "epochs_planned": epochs}

    # -- 1. smoke ----------------------------------------------------------------------------------
    def stage_smoke(self, budget: Budget) -> None:
        from tapcore.events.calibrate import calibrate_bundle
        from tapcore.config import config_from_dict
        from tapcore.events.dataset import CropPairConfig
        from tapcore.events.train import HeadConfig, train_head
        from tapcore.predict import PredictConfig, predict_movie
        from tapcore.synthetic import SynthConfig, make_synthetic
        from tapcore.tap.train import CHECKPOINT, PretrainConfig, load_checkpoint, pretrain
        from tapcore.utils import environment_info

        env = environment_info(self.device)
        info: dict[str, Any] = {"what": "environment", **env, "cuda_available": torch.cuda.is_available(),
                                "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                                "threads": torch.get_num_threads(), "packages": _versions()}
        if self.cuda:
            props = torch.cuda.get_device_properties(torch.device(self.device))
            info.update({"gpu_memory_gib": round(props.total_memory / 2**30, 1),
                         "capability": f"{props.major}.{props.minor}", "bf16_supported": torch.cuda.is_bf16_supported(),
                         "gpu_count": torch.cuda.device_count()})
        self.emit("smoke", info)
        s = self.sizes
        t0 = time.perf_counter()
        syn = make_synthetic(SynthConfig(seed=self.args.seed, frames=s.smoke_frames, height=s.smoke_side,
                                         width=s.smoke_side, cells=30, max_cells=90, division_rate=0.08))
        budget.check("smoke: synthetic movie")
        pcfg = config_from_dict(PretrainConfig, {
            "patch": s.smoke_patch, "batch_size": s.smoke_batch, "epochs": s.smoke_epochs,
            "samples_per_epoch": s.smoke_pairs, "val_samples": 64, "device": self.device, "seed": self.args.seed,
            "amp": True, "channels_last": True, "model": dict(s.smoke_tap)})
        tap_dir = self.work / "smoke" / "tap"
        res = pretrain(syn.movie, pcfg, tap_dir)
        opt_group = load_checkpoint(tap_dir / CHECKPOINT)["optimizer"]["param_groups"][0]
        budget.check("smoke: pretrain")
        hcfg = HeadConfig(strategy="A1", epochs=1, seed=self.args.seed, device=self.device, epoch_val_pairs=64,
                          dataset=CropPairConfig(crop=s.crop, pairs_per_frame=s.smoke_head_pairs_per_frame,
                                                 seed=self.args.seed))
        head_dir = self.work / "smoke" / "head"
        head = train_head(syn.movie, syn.masks, tap_dir, hcfg, head_dir)
        budget.check("smoke: head")
        cal = calibrate_bundle(head_dir, device=self.device)
        amp = "bf16" if self.cuda else "none"
        pred = predict_movie(syn.movie, head_dir, PredictConfig(device=self.device, amp=amp, threshold=0.5,
                                                                min_distance=s.min_distance))
        _sync(self.device)
        finite = bool(np.isfinite(pred.prob_maps).all()) and all(
            h.get("train_loss") is not None and math.isfinite(h["train_loss"]) for h in res.history)
        self.emit("smoke", {
            "what": "pipeline", "ok": finite, "device": self.device, "movie_shape": list(syn.movie.shape),
            "tap_amp_bf16": bool(pcfg.amp and self.cuda), "tap_channels_last": bool(pcfg.channels_last and self.cuda),
            "adam_fused": bool(opt_group.get("fused")), "tap_val_acc": res.metrics["final"]["val_acc"],
            "tap_train_loss": res.history[-1]["train_loss"], "head_test_recall": head.recall.tolist(),
            "temperature": cal.calibration.temperature, "predict_amp": amp, "predict_method": pred.record["method"],
            "events": int(len(pred.events)), "predict_frames_per_s": pred.record["frames_per_s"],
            "seconds": time.perf_counter() - t0})
        if not finite:
            raise RuntimeError("non-finite losses or probabilities in the smoke run")

    # -- 2. data -----------------------------------------------------------------------------------
    def stage_data(self, budget: Budget) -> None:
        from tapcore.utils import sha256_array

        t0 = time.perf_counter()
        path = Path(self.args.data) if self.args.data else (SHARED_HELA if SHARED_HELA.is_dir() else PACK_HELA)
        if not path.exists():
            raise FileNotFoundError(f"no hela01 data: neither {SHARED_HELA} nor {PACK_HELA}; run "
                                    "python scripts/pack_device_data.py and carry .devdata")
        hela = load_hela(path)
        region = None
        if self.sizes.region is not None:
            region = dry_window(hela["truth"], hela["movie"].shape, self.sizes.region, self.sizes.fractions)
        if region is not None:
            t0, t1, y0, y1, x0, x1 = region
            hela["movie"] = np.ascontiguousarray(hela["movie"][t0:t1, y0:y1, x0:x1])
            hela["masks"] = np.ascontiguousarray(hela["masks"][t0:t1, y0:y1, x0:x1])
            t = hela["truth"]
            t = t[(t["frame"] >= t0) & (t["frame"] < t1) & (t["y"] >= y0) & (t["y"] < y1) &
                  (t["x"] >= x0) & (t["x"] < x1)].copy()
            t["frame"] -= t0
            t["last_frame"] -= t0
            t["y"] -= y0
            t["x"] -= x0
            hela["truth"] = t.reset_index(drop=True)
        hela["region"] = region
        hela["sha256"] = sha256_array(hela["movie"])
        self.hela = hela
        self.emit("data", {"what": "hela01", **hela["source"], "movie_shape": list(hela["movie"].shape),
                           "dtype": str(hela["movie"].dtype), "movie_sha256": hela["sha256"], "region": region,
                           "divisions": int(len(hela["truth"])), "mask_pixels": int((hela["masks"] > 0).sum()),
                           "seconds": time.perf_counter() - t0})

    def _movie(self, frames: int) -> tuple[np.ndarray, str]:
        if self.hela is not None:
            return self.hela["movie"][:frames], "hela01"
        from tapcore.synthetic import SynthConfig, make_synthetic

        side = 512 if not self.dry else 96
        syn = make_synthetic(SynthConfig(seed=0, frames=frames, height=side, width=side, cells=60, max_cells=200))
        return syn.movie, "synthetic (hela01 not loaded)"

    def _need_hela(self) -> dict[str, Any]:
        if self.hela is None:
            raise RuntimeError("hela01 is not loaded (see the data stage's error)")
        return self.hela

    # -- 3. throughput -----------------------------------------------------------------------------
    def stage_throughput(self, budget: Budget) -> None:
        from tapcore.io import normalize_movie
        from tapcore.tap.data import AugmentConfig, PairSampler
        from tapcore.tap.model import TapConfig
        from tapcore.config import config_from_dict

        s = self.sizes
        movie, source = self._movie(32)
        if self.cuda:
            torch.backends.cudnn.benchmark = True
        movie_t = torch.from_numpy(normalize_movie(movie)).to(self.device)
        gen = torch.Generator(device=self.device).manual_seed(self.args.seed)
        sampler = PairSampler(movie_t, s.patch, 1, None, AugmentConfig(), gen)
        base = {"data": source, "patch": s.patch, "batch": s.batch, "tap_model": s.tap_model, "augment": "all",
                "device": self.device, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                "tf32_cudnn": torch.backends.cudnn.allow_tf32}
        self.emit("throughput", {"config": "data_only", **base,
                                 **tap_bench.data_rate(sampler, s.batch, s.thr_steps, s.thr_warmup, self.device)})
        model_cfg = config_from_dict(TapConfig, dict(s.tap_model))
        configs = [("eager_fp32", "fp32", False, None), ("eager_bf16_cl", "bf16", True, None),
                   ("compiled_bf16_cl", "bf16", True, s.compile_backend)]
        steps: dict[str, float] = {}
        warmups: dict[str, float] = {}
        for name, precision, cl, backend in configs:
            budget.check(f"throughput {name}")
            if backend and budget.left() < s.min_compile_s:
                self.emit("throughput", {"config": name, "skipped": f"{budget.left():.0f} s left, compiling needs "
                                                                     f"about {s.min_compile_s:.0f} s"})
                continue
            try:
                recs = tap_bench.step_rates(sampler, self.device, batch=s.batch, steps=s.thr_steps,
                                            warmup=s.thr_warmup, precision=precision, channels_last=cl,
                                            compile_backend=backend, model_cfg=model_cfg)
            except Exception as exc:  # e.g. the compiler failing: the eager figures still count
                self.emit("throughput", {"config": name, "error": f"{type(exc).__name__}: {exc}",
                                         "traceback": traceback.format_exc()[-3000:]})
                continue
            warmups[name] = recs[0]["warmup_s"]  # the first warm-up holds the compilation
            for rec in recs:
                self.emit("throughput", {"config": name, **base, **rec})
                if rec["what"] == "end_to_end":
                    self.rates[name] = rec["pairs_per_s"]
                else:
                    steps[name] = rec["pairs_per_s"]
        best = max(self.rates, key=self.rates.get) if self.rates else None
        eager, comp = self.rates.get("eager_bf16_cl"), self.rates.get("compiled_bf16_cl")
        if self.args.compile != "auto":
            self.use_compile = self.args.compile == "on"
            self.compile_reason = f"--compile {self.args.compile}"
        elif self.cuda and eager and comp:
            # compiling pays when the training time it saves in the tta run exceeds (with margin) its cost
            compile_s = max(0.0, warmups["compiled_bf16_cl"] - warmups.get("eager_bf16_cl", 0.0))
            saved_s = self.sizes.tta_train_s * (1 - eager / comp)
            self.use_compile = saved_s > 1.5 * compile_s and comp >= 1.1 * eager
            self.compile_reason = (f"compiled end to end {comp / eager:.2f}x eager bf16: saves about {saved_s:.0f} s "
                                   f"of {self.sizes.tta_train_s:.0f} s, compiling took about {compile_s:.0f} s")
        else:
            self.use_compile = False
            self.compile_reason = "no compiled measurement on a GPU"
        self.emit("throughput", {
            "what": "summary", "device": self.device, "end_to_end_pairs_per_s": self.rates,
            "model_step_pairs_per_s": steps, "best_config": best,
            "best_end_to_end_pairs_per_s": self.rates.get(best) if best else None,
            "speedup_vs_tarrow_end_to_end": (self.rates[best] / REFERENCE["tarrow_h100_end_to_end_pairs_per_s"]
                                             if best and self.cuda else None),
            "meets_target": (self.rates[best] >= TARGETS["end_to_end_pairs_per_s"]) if best and self.cuda else None,
            "target_end_to_end_pairs_per_s": TARGETS["end_to_end_pairs_per_s"], "reference": REFERENCE,
            "later_stages_compile": self.use_compile, "compile_reason": self.compile_reason})

    # -- 4. time to accuracy -----------------------------------------------------------------------
    def stage_tta(self, budget: Budget) -> None:
        from tapcore.config import config_to_dict

        hela = self._need_hela()
        s = self.sizes
        movie = hela["movie"]
        n = movie.shape[0]
        tr = (s.tta_train_frames[0], min(s.tta_train_frames[1], max(2, int(0.75 * n))))
        va = (tr[1], min(n, tr[1] + (s.tta_val_frames[1] - s.tta_val_frames[0])))
        cfg, plan = self._tap_config(train_s=s.tta_train_s, val_samples=s.tta_val_samples)
        self.emit("tta", {"what": "plan", "train_frames": list(tr), "val_frames": list(va), "val_pairs": s.tta_val_samples,
                          "compile": self.use_compile, "compile_reason": self.compile_reason, **plan,
                          "config": config_to_dict(cfg)})
        records: list[dict] = []

        def on_epoch(rec: dict) -> None:
            self.emit("tta", {"what": "epoch", **rec})
            budget.check("tta training")

        stopped = None
        try:
            tap_bench.accuracy_run(movie[tr[0]:tr[1]], movie[va[0]:va[1]], cfg, self.work / "tta" / "tap", on_epoch,
                                   records)
        except StageTimeout as exc:
            stopped = str(exc)
        summary = tap_bench.summarise_accuracy(records, [0.6], s.tta_milestones)
        hit = summary["time_to_target"]["0.6"]
        self.emit("tta", {"what": "summary", "device": self.device, **summary,
                          "s_to_0.60_train": hit["train_s"] if hit else None,
                          "meets_target": (hit is not None and hit["train_s"] <= TARGETS["s_to_val_acc_0.60"])
                          if self.cuda else None,
                          "target_s_to_0.60": TARGETS["s_to_val_acc_0.60"], "reference": REFERENCE,
                          "compile": self.use_compile, "stopped": stopped})
        if stopped:
            raise StageTimeout(stopped)

    # -- 5. real-data models -----------------------------------------------------------------------
    def stage_real(self, budget: Budget) -> None:
        from tapcore.config import config_to_dict
        from tapcore.events.dataset import CropPairConfig, build_crop_pairs
        from tapcore.io import normalize_movie
        from tapcore.tap.train import pretrain

        hela = self._need_hela()
        s = self.sizes
        movie, masks = hela["movie"], hela["masks"]
        t_len = movie.shape[0]

        def emit(rec: dict) -> None:
            self.real_records.append(self.emit("real", rec))

        def check(rec: dict) -> None:
            budget.check("real")

        # TAP on all frames
        tap_s = max(s.min_tap_s, budget.left() - s.head_reserve_s)
        if s.max_tap_s is not None:
            tap_s = min(tap_s, s.max_tap_s)
        cfg, plan = self._tap_config(train_s=tap_s, val_samples=s.real_val_samples)
        tap_dir = self.work / "real" / "tap"
        t0 = time.perf_counter()
        res = pretrain(movie, cfg, tap_dir, val_movie=movie, progress=check)
        hist = res.history
        emit({"what": "tap", "frames": [0, t_len], "budget_s": tap_s, "train_s": res.metrics["train_time_s"],
              "wall_s": time.perf_counter() - t0, "epochs": len(hist),
              "pairs": len(hist) * cfg.samples_per_epoch, "val_acc": res.metrics["final"]["val_acc"],
              "val_note": "validation pairs come from the training frames (all frames train): not held out; "
                          "the held-out TAP accuracy is the tta stage's",
              "val_acc_per_epoch": [h["val_acc"] for h in hist], "compile": self.use_compile, **plan,
              "config": config_to_dict(cfg), "bundle": str(tap_dir)})

        # crop pairs shared by every head (equal labels)
        ds_cfg = CropPairConfig(crop=s.crop, pairs_per_frame=s.pairs_per_frame, split="time", criterion=s.criterion,
                                fractions=tuple(s.fractions), seed=self.args.seed)
        pairs = build_crop_pairs(masks, ds_cfg, movie.shape)
        ranges = pairs.regions["time_ranges"]
        test_frames = (ranges["test"][0], t_len)
        emit({"what": "crop_pairs", **pairs.to_dict(), "pairs_per_frame": s.pairs_per_frame, "crop": s.crop,
              "criterion": s.criterion,
              "paper_deviations": f"pairs per frame {s.pairs_per_frame} (paper 1000); head epochs "
                                  f"{s.head_epochs or s.head_epochs_by_head} (paper linear 10, ResNet 30); time split "
                                  f"{list(s.fractions)} instead of the paper's random split",
              "frames": {k: [a, b] for k, (a, b) in ranges.items()},  # pair t uses frames t and t+1
              "frames_between_train_and_test": ranges["test"][0] - ranges["train"][1],
              "test_frames": list(test_frames)})
        movie_norm = normalize_movie(movie)
        done: dict[str, dict] = {}
        est = {"A1": 0.0, "C1": 0.6, "A0": 0.5, "B1": 1.1}  # rough share of A1's time, to skip what cannot finish
        for strategy in s.strategies:
            budget.check(f"real {strategy}")
            need = est.get(strategy, 1.0) * done.get("A1", {}).get("seconds", 0.0)
            if need and budget.left() < need:
                emit({"what": "head", "strategy": strategy,
                      "skipped": f"{budget.left():.0f} s left, about {need:.0f} s needed"})
                continue
            try:
                done[strategy] = self._head(strategy, movie, masks, movie_norm, pairs, tap_dir, test_frames,
                                            budget, emit)
            except StageTimeout:
                raise
            except Exception as exc:
                emit({"what": "head", "strategy": strategy, "error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()[-3000:]})
                continue
            if strategy == "A1":
                self._ship(done["A1"], tap_dir, emit)
            if "timeout" in done[strategy]:
                raise StageTimeout(done[strategy]["timeout"])
        a1, c1 = done.get("A1"), done.get("C1")
        if a1 and c1:
            emit({"what": "a1_vs_c1", "equal_labels": a1["labels_sha256"] == c1["labels_sha256"],
                  "crop_f1_class1": {"A1": a1["crop_f1_class1"], "C1": c1["crop_f1_class1"]},
                  "event_f1": {"A1": a1["event_f1"], "C1": c1["event_f1"]},
                  "a1_beats_c1_crops": (a1["crop_f1_class1"] or 0) > (c1["crop_f1_class1"] or 0),
                  "a1_beats_c1_events": (a1["event_f1"] or 0) > (c1["event_f1"] or 0),
                  "note": "one seed, one split, no repeats: a first look, not a significance test"})

    def _head(self, strategy, movie, masks, movie_norm, pairs, tap_dir, test_frames, budget, emit) -> dict:
        from tapcore import calibration as C
        from tapcore.events.calibrate import calibrate_bundle
        from tapcore.events.dense import FeatureCache, FeatureConfig
        from tapcore.events.train import STRATEGIES, HeadConfig, HeadInputs, train_head
        from tapcore.utils import sha256_array

        s = self.sizes
        t0 = time.perf_counter()
        epochs = s.head_epochs or s.head_epochs_by_head[STRATEGIES[strategy][1]]
        hcfg = HeadConfig(strategy=strategy, epochs=epochs, seed=self.args.seed, device=self.device,
                          epoch_val_pairs=s.epoch_val_pairs, dataset=pairs.config,
                          features=FeatureConfig(max_ram_mb=s.feature_ram_mb))
        head_dir = self.work / "real" / "heads" / strategy
        if getattr(self, "_features", None) is None:
            self._features = FeatureCache()  # the TAP features serve every frozen strategy of this stage
        res = train_head(movie, masks, tap_dir, hcfg, head_dir, progress=lambda rec: budget.check(f"real {strategy}"),
                         inputs=HeadInputs(pairs=pairs, movie_norm=movie_norm, feature_cache=self._features))
        train_wall = time.perf_counter() - t0
        cm = np.asarray(res.confusion)
        p1, r1 = float(res.precision[1]), float(res.recall[1])
        crop = {"what": "head", "strategy": strategy, "head": hcfg.head_name, "epochs": hcfg.n_epochs,
                "train_s": res.train_time_s, "wall_s": train_wall, "train_pairs": int(len(pairs.train)),
                "test_pairs": int(len(pairs.test)), "test_positives": int((pairs.test.labels == 1).sum()),
                "confusion_test": cm.tolist(), "precision_class1": p1, "recall_class1": r1,
                "f1_class1": _f1(p1, r1), "test_accuracy": res.metrics["test"]["accuracy"]}
        emit(crop)
        budget.check(f"real {strategy} calibration")
        cal = calibrate_bundle(head_dir, bias="auto", device=self.device)
        rep = cal.report
        p_before = C.softmax_np(res.test_logits)
        p_after = C.softmax_np(cal.calibration.apply_numpy(res.test_logits))
        test_ece = {tag: {mode: C.ece(p, res.test_labels, 15, mode) for mode in C.ECE_MODES}
                    for tag, p in (("before", p_before), ("after", p_after))}
        emit({"what": "calibration", "strategy": strategy, "method": rep["method"], "temperature": rep["temperature"],
              "bias": rep["bias"], "bias_reason": rep["bias_reason"], "bins": 15,
              "val_ece_before": rep["ece_before"], "val_ece_after": rep["ece_after"],
              "val_nll_before": rep["nll_before"], "val_nll_after": rep["nll_after"],
              "test_crops_ece_before": test_ece["before"], "test_crops_ece_after": test_ece["after"],
              "val_n": rep["n_samples"], "val_positives": rep["n_positive"]})
        result = {"dir": head_dir, "crop": crop, "crop_f1_class1": crop["f1_class1"], "event_f1": None,
                  "labels_sha256": sha256_array(np.concatenate([pairs.train.labels, pairs.test.labels])),
                  "calibration": rep, "test_crops_ece": test_ece, "events": None, "per_threshold": []}
        try:  # the head is trained and calibrated: keep it (and ship A1) whatever happens to its events
            budget.check(f"real {strategy} prediction")
            self._events(strategy, movie, head_dir, test_frames, result, emit)
        except StageTimeout as exc:
            result["timeout"] = str(exc)
        except Exception as exc:
            emit({"what": "events", "strategy": strategy, "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()[-3000:]})
        result["seconds"] = time.perf_counter() - t0
        return result

    def _events(self, strategy, movie, head_dir, test_frames, result, emit) -> None:
        """Predict the test frames with a calibrated head and match the events to the CTC divisions."""
        from tapcore.predict import PredictConfig, predict_movie, write_prediction

        s = self.sizes
        a, b = test_frames
        amp = "bf16" if self.cuda else "none"
        try:
            pred = predict_movie(movie[a:b], head_dir, PredictConfig(
                threshold=min(s.thresholds), min_distance=s.min_distance, device=self.device, amp=amp))
        except Exception as exc:  # bf16 prediction has never run on a GPU before: fall back to float32
            if amp == "none":
                raise
            emit({"what": "events", "strategy": strategy, "error": f"bf16 prediction failed, retrying in float32: "
                                                                   f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()[-3000:]})
            amp = "none"
            pred = predict_movie(movie[a:b], head_dir, PredictConfig(
                threshold=min(s.thresholds), min_distance=s.min_distance, device=self.device, amp=amp))
        write_prediction(dataclasses.replace(pred, prob_maps=pred.prob_maps[:0]), head_dir / "prediction")
        events = pred.events.copy()
        events["frame"] += a
        events["next_frame"] += a
        events.to_csv(head_dir / "prediction" / "events_movie_frames.csv", index=False)
        per_threshold = []
        main = None
        for thr in s.thresholds:
            summ, match = pipeline_bench.evaluate_at(events, self.hela["truth"], (a, b), float(thr), s.radius,
                                                     s.frame_tolerance)
            per_threshold.append(summ)
            if float(thr) == float(s.main_threshold):
                main = summ
                match.write(head_dir / "evaluation")
        emit({"what": "events", "strategy": strategy, "test_frames": [a, b], "predict_amp": amp,
              "frames_per_s": pred.record["frames_per_s"],
              "predict_s": pred.record["elapsed_s"], "calibrated": True, "main_threshold": s.main_threshold,
              "main": main, "per_threshold": per_threshold})
        result.update({"event_f1": (main or {}).get("f1"), "events": main, "per_threshold": per_threshold})

    def _ship(self, a1: dict, tap_dir: Path, emit) -> None:
        """``<work>/hela-nuclei``: the A1 head bundle + calibration.json + tap/ (the shipped layout of
        models/demo), with README.md and training_record.json; zipped into two returnable files."""
        from tapcore.bundle import load_bundle
        from tapcore.utils import environment_info

        dest = self.work / "hela-nuclei"
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(a1["dir"], dest, ignore=shutil.ignore_patterns("prediction", "evaluation", "checkpoint"))
        shutil.copytree(tap_dir, dest / "tap", ignore=shutil.ignore_patterns("checkpoint"))
        record = {"made_by": "bench/gpu_suite.py (stage real)", "command": " ".join([sys.executable] + sys.argv),
                  "dry_run": self.dry, "device": self.device,
                  "environment": environment_info(self.device),
                  "data": {k: v for k, v in self.hela.items() if k in ("source", "sha256", "region")},
                  "results": [r for r in self.real_records if r.get("what") in ("tap", "crop_pairs")
                              or r.get("strategy") == "A1"]}
        (dest / "training_record.json").write_text(json.dumps(_clean(record), indent=1))
        (dest / "README.md").write_text(_bundle_readme(record, a1))
        load_bundle(dest, "event_head")
        load_bundle(dest / "tap", "tap")
        size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
        head_files = [(p, f"hela-nuclei/{p.relative_to(dest)}") for p in sorted(dest.rglob("*"))
                      if p.is_file() and "tap" not in p.relative_to(dest).parts[:1]]
        tap_files = [(p, f"hela-nuclei/{p.relative_to(dest)}") for p in sorted((dest / "tap").rglob("*")) if p.is_file()]
        zips = [_zip(head_files, self.out / "hela_nuclei_head.zip"), _zip(tap_files, self.out / "hela_nuclei_tap.zip")]
        self.a1_dir = dest
        emit({"what": "shipped_bundle", "name": "hela-nuclei", "folder": str(dest), "bytes": size,
              "mib": round(size / 2**20, 2), "zips": zips,
              "install": "python scripts/install_hela_nuclei.py hela_nuclei_head.zip hela_nuclei_tap.zip"})

    # -- 6. prediction speed -----------------------------------------------------------------------
    def stage_speed(self, budget: Budget) -> None:
        from tapcore.predict import PredictConfig

        s = self.sizes
        if self.a1_dir is not None:
            from tapcore.detector import EventDetector

            model, model_name = EventDetector.load(self.a1_dir, device="cpu"), "hela-nuclei A1 (this run)"
        else:
            model, model_name = predict_bench.random_model("resnet"), "paper architecture, random weights"
        cfg = PredictConfig(device=self.device, amp="bf16" if self.cuda else "none")
        distinct = predict_bench.synthetic_movie(max(2, s.synth_distinct), s.synth_side)
        reps = math.ceil(s.synth_frames / len(distinct))
        movie = np.concatenate([distinct] * reps)[:s.synth_frames]
        budget.check("speed: synthetic movie")
        predict_bench.run("warmup", movie[:2], model, cfg)
        rec = predict_bench.run(f"synthetic{s.synth_side}", movie, model, cfg)
        self.emit("speed", {**rec, "model": model_name, "distinct_frames": len(distinct),
                            "target_frames_per_s": TARGETS["predict_frames_per_s_1024"],
                            "meets_target": rec["frames_per_s"] >= TARGETS["predict_frames_per_s_1024"]
                            if self.cuda and s.synth_side == 1024 else None})
        budget.check("speed: hela01")
        hela = self._need_hela()
        n = s.hela_predict_frames or hela["movie"].shape[0]
        predict_bench.run("warmup", hela["movie"][:2], model, cfg)
        rec = predict_bench.run("hela01", hela["movie"][:n], model, cfg)
        self.emit("speed", {**rec, "model": model_name, "data_source": hela["source"]["kind"]})


def _bundle_readme(record: dict, a1: dict) -> str:
    """The shipped bundle's README: what it is, how it was made, its measured figures (all from this run)."""
    tap = next((r for r in record["results"] if r.get("what") == "tap"), {})
    pairs = next((r for r in record["results"] if r.get("what") == "crop_pairs"), {})
    env = record["environment"]
    crop, cal, ev = a1["crop"], a1["calibration"], a1["events"] or {}
    fmt = lambda v: "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = [
        "# hela-nuclei: TAP + A1 event head + calibration, trained on hela01",
        "",
        "Detects cell divisions in widefield fluorescence movies of H2B-labelled nuclei like the Cell Tracking",
        "Challenge's Fluo-N2DL-HeLa. Select it as `shipped:hela-nuclei` in the app or the CLI.",
        ("**Dry-run bundle (tiny CPU sizes): not a usable model.**" if record["dry_run"] else ""),
        "",
        "## How it was made",
        f"- Command: `{record['command']}` ({record['made_by']})",
        f"- Device: {env.get('device_name')} ({record['device']}), torch {env.get('torch')}, CUDA {env.get('cuda')}, "
        f"created {env.get('created')}",
        f"- Data: hela01 ({record['data']['source']['kind']}: {record['data']['source']['path']}), original movie "
        f"sha256 {record['data']['source']['sha256_original']}, quantisation step "
        f"{record['data']['source']['quantisation_step']} (largest error {record['data']['source']['max_abs_error']} counts)",
        f"- TAP (`tap/`): all {fmt((tap.get('frames') or [0, 0])[1])} frames, {fmt(tap.get('epochs'))} epochs, "
        f"{fmt(tap.get('pairs'))} pairs, {fmt(tap.get('train_s'))} s of training; validation accuracy "
        f"{fmt(tap.get('val_acc'))} (on training frames, not held out)",
        f"- A1 head: frozen TAP features + ResNet head, {fmt(crop.get('epochs'))} epochs, {fmt(crop.get('train_s'))} s; "
        f"crop pairs: time split, frames {pairs.get('frames')} (train / val / test pairs)",
        "",
        "## Measured figures (this run)",
        f"- Test crops: precision {fmt(crop.get('precision_class1'))}, recall {fmt(crop.get('recall_class1'))}, "
        f"F1 {fmt(crop.get('f1_class1'))} (class 1 = event); confusion {crop.get('confusion_test')}",
        f"- Calibration ({cal.get('method')}, T = {fmt(cal.get('temperature'))}, bias {fmt(cal.get('bias'))}): "
        f"ECE (15 bins, top label) on validation crops {fmt(cal['ece_before']['top'])} -> {fmt(cal['ece_after']['top'])}; "
        f"on test crops {fmt(a1['test_crops_ece']['before']['top'])} -> {fmt(a1['test_crops_ece']['after']['top'])}",
        f"- Events on the held-out test frames (threshold {fmt(ev.get('threshold'))}, radius {fmt(ev.get('radius_px'))} px, "
        f"+-{fmt(ev.get('frame_tolerance'))} frame): precision {fmt(ev.get('precision'))}, recall "
        f"{fmt(ev.get('recall'))}, F1 {fmt(ev.get('f1'))} ({fmt(ev.get('tp'))} hits, {fmt(ev.get('fp'))} false alarms, "
        f"{fmt(ev.get('fn'))} misses of {fmt(ev.get('n_true'))} divisions)",
        "",
        "`training_record.json` holds every result line of the run for this model.",
        "",
    ]
    return "\n".join(line for line in lines if line is not None)


def _parse_budget(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    if name not in STAGES or not value:
        raise argparse.ArgumentTypeError(f"--budget takes NAME=SECONDS with NAME one of {', '.join(STAGES)}, got {text!r}")
    return name, float(value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    env_out = os.environ.get("OUT")
    p.add_argument("--out", default=env_out or "/tmp/tapcore_gpu_suite",
                   help="results folder (default: $OUT when set, else /tmp/tapcore_gpu_suite)")
    p.add_argument("--work", default=None,
                   help="folder for full bundles and predictions (default: <out>/work; a temporary folder when "
                        "--out is $OUT, since a device run returns only 8 files from $OUT)")
    p.add_argument("--data", default=None, help="hela01 CTC folder or device pack (default: ../shared/data/hela01 "
                                                "when present, else .devdata/hela01)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dry-run", action="store_true", help="every stage at tiny sizes on the CPU")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--budget", type=_parse_budget, action="append", help="NAME=SECONDS: one stage's budget")
    p.add_argument("--max-total-s", type=float, default=540.0, help="the whole suite's time limit (default 540 s)")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="torch.compile in the tta and real stages: auto = when the throughput stage measured that "
                        "the time it saves exceeds 1.5x its compile time")
    p.add_argument("--head-epochs", type=int, default=None, help="event-head epochs (default: paper's 10 / 30)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (dry run default: 1)")
    args = p.parse_args(argv)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in args.stages if s not in STAGES]
    if bad:
        p.error(f"unknown stage(s) {bad}; choose from {', '.join(STAGES)}")
    args.budget = dict(args.budget or [])
    if args.work is None:
        if env_out and Path(args.out).resolve() == Path(env_out).resolve():
            args.work = tempfile.mkdtemp(prefix="tapcore_gpu_suite_work_")
        else:
            args.work = str(Path(args.out) / "work")
    threads = args.threads or (1 if args.dry_run else None)
    if threads:
        torch.set_num_threads(threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    handlers = [logging.StreamHandler(sys.stderr), logging.FileHandler(Path(args.out) / "suite.log")]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", handlers=handlers, force=True)
    return Suite(args).run()


if __name__ == "__main__":
    sys.exit(main())
