"""Benchmark TAP pretraining: throughput (pairs/s) and validation accuracy vs wall time.

Prints one JSON object per line:

- ``{"bench": "throughput", "what": "end_to_end" | "model_step" | "data", "precision": "fp32" | "bf16", ...}``:
  pairs per second for the paper's configuration (96 x 96 pairs, 32 base channels, batch 152, all
  augmentations), after a warm-up. ``end_to_end`` = pair sampling + augmentation + forward + loss +
  backward + Adam step; ``model_step`` = the same on one fixed, pre-sampled batch; ``data`` =
  sampling + augmentation only.
- ``{"bench": "accuracy", ...}``: one line per (short) epoch of a real pretraining run on
  ``../shared/data/hela01`` (train on frames 0-31, validate on frames 32-39), with wall time,
  training time and validation accuracy; then a summary line with the time to reach ``--target``.

Examples::

    python bench/tap_train.py                      # GPU: full configuration, both benchmarks
    python bench/tap_train.py --quick --threads 1  # CPU: small settings
    python bench/tap_train.py --mode accuracy --budget 120 --compile
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tapcore.runtime import configure_process  # noqa: E402

configure_process()  # before torch: huge-page CPU allocations (tapcore.runtime)

import torch  # noqa: E402

from tapcore.tap.data import AugmentConfig, PairSampler  # noqa: E402
from tapcore.tap.loss import tap_loss  # noqa: E402
from tapcore.tap.model import TapConfig, TapModel  # noqa: E402
from tapcore.tap.train import PretrainConfig, pretrain  # noqa: E402
from tapcore.utils import environment_info, resolve_device  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hela01"


def emit(record: dict) -> None:
    print(json.dumps(record, default=float), flush=True)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def load_movie(path: Path, frames: int) -> np.ndarray:
    """The first ``frames`` frames of hela01 (or a synthetic stand-in when the data are absent)."""
    if path.is_dir():
        from tapcore.io import read_input

        return read_input(path).movie[:frames]
    from tapcore.synthetic import SynthConfig, make_synthetic

    emit({"note": f"{path} not found: using a synthetic movie instead"})
    return make_synthetic(SynthConfig(seed=0, frames=frames, height=512, width=512, cells=120, max_cells=300)).movie


def data_rate(sampler: PairSampler, batch: int, steps: int, warmup: int, device: str) -> dict:
    """Pairs/s of pair sampling + augmentation alone (after ``warmup`` untimed batches)."""
    for _ in range(warmup):
        sampler.sample(batch)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        sampler.sample(batch)
    _sync(device)
    dt = time.perf_counter() - t0
    return {"what": "data", "precision": "fp32", "steps": steps, "seconds": dt, "pairs_per_s": steps * batch / dt}


def step_rates(sampler: PairSampler, device: str, *, batch: int, steps: int, warmup: int, precision: str,
               channels_last: bool, compile_backend: str | None = None, model_cfg: TapConfig | None = None,
               whats: tuple[str, ...] = ("model_step", "end_to_end")) -> list[dict]:
    """Pairs/s of one training configuration: ``model_step`` (forward + loss + backward + Adam step on
    one fixed, pre-sampled batch) and ``end_to_end`` (the same with a fresh augmented batch per step).

    ``precision`` "fp32" or "bf16" (CUDA autocast); Adam is fused on CUDA; ``compile_backend``
    (e.g. "inductor") wraps ``forward_with_features`` in ``torch.compile``. ``warmup_s`` of each
    record is the untimed warm-up (it holds the compilation for a compiled model).
    """
    torch.manual_seed(0)
    cuda = device.startswith("cuda")
    model = TapModel(model_cfg or TapConfig()).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fwd = model.forward_with_features
    if compile_backend:
        fwd = torch.compile(model.forward_with_features, backend=compile_backend)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-6, **({"fused": True} if cuda else {}))
    amp = precision == "bf16" and cuda

    def step(x, y):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits, z = fwd(x)
            loss = tap_loss(logits, y, z, 0.01, 0.2)
        opt.zero_grad(set_to_none=True)
        loss.total.backward()
        opt.step()

    fixed = sampler.sample(batch)
    out = []
    for what in whats:
        t0 = time.perf_counter()
        for _ in range(warmup):
            step(*(fixed if what == "model_step" else sampler.sample(batch)))
        _sync(device)
        warmup_s = time.perf_counter() - t0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(steps):
            step(*(fixed if what == "model_step" else sampler.sample(batch)))
        _sync(device)
        dt = time.perf_counter() - t0
        rec = {"what": what, "precision": precision, "channels_last": bool(channels_last),
               "compiled": compile_backend or False, "fused_adam": cuda, "steps": steps, "seconds": dt,
               "pairs_per_s": steps * batch / dt, "warmup_steps": warmup, "warmup_s": warmup_s}
        if cuda:
            rec["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out.append(rec)
    del model, fwd, opt
    return out


def throughput(movie: np.ndarray, args: argparse.Namespace, device: str) -> None:
    from tapcore.io import normalize_movie

    movie_t = torch.from_numpy(normalize_movie(movie)).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    sampler = PairSampler(movie_t, args.patch, 1, None, AugmentConfig(), gen)
    precisions = ["fp32", "bf16"] if device.startswith("cuda") else ["fp32"]
    base = {"bench": "throughput", "device": device, "device_name": environment_info(device).get("device_name"),
            "patch": args.patch, "batch": args.batch, "base_channels": args.base, "compile": bool(args.compile)}
    emit({**base, **data_rate(sampler, args.batch, args.steps, args.warmup, device)})
    if args.data_only:
        return
    cuda = device.startswith("cuda")
    for precision in precisions:
        for rec in step_rates(sampler, device, batch=args.batch, steps=args.steps, warmup=args.warmup,
                              precision=precision, channels_last=cuda,
                              compile_backend="inductor" if args.compile and cuda else None,
                              model_cfg=TapConfig(base_channels=args.base)):
            emit({**base, **rec})


def summarise_accuracy(epochs: list[dict], targets: list[float], milestones: tuple[float, ...] = ()) -> dict:
    """From per-epoch records (``train_s``, ``wall_s``, ``val_acc``, ``epoch``): the first epoch reaching each
    target accuracy, and the validation accuracy at each training-time milestone (the last epoch that
    ended at or before it; None before the first epoch ends)."""
    reached = {}
    for target in targets:
        hit = next((e for e in epochs if e["val_acc"] >= target), None)
        reached[str(target)] = None if hit is None else {"wall_s": hit["wall_s"], "train_s": hit["train_s"],
                                                          "epoch": hit["epoch"]}
    at = []
    for m in milestones:
        done = [e for e in epochs if e["train_s"] <= m]
        last = done[-1] if done else None
        at.append({"train_s_milestone": m, "val_acc": None if last is None else last["val_acc"],
                   "epoch": None if last is None else last["epoch"],
                   "epoch_train_s": None if last is None else last["train_s"],
                   "reached": bool(epochs) and epochs[-1]["train_s"] >= m})
    return {"time_to_target": reached, "val_acc_at": at,
            "final_val_acc": epochs[-1]["val_acc"] if epochs else None,
            "best_val_acc": max((e["val_acc"] for e in epochs), default=None),
            "epochs": len(epochs), "train_s": epochs[-1]["train_s"] if epochs else 0.0}


def accuracy_run(train: np.ndarray, val: np.ndarray, cfg: PretrainConfig, out_dir: Path, on_epoch=None,
                 records: list | None = None) -> list[dict]:
    """Pretrain on ``train``, validate on ``val`` after every epoch; returns one record per epoch
    (``epoch``, ``pairs``, ``wall_s`` since the call, ``train_s``, ``val_acc``, ...), each also passed to
    ``on_epoch`` as it happens. ``on_epoch`` may raise to stop the run: the records so far are then in
    ``records`` (the list given, filled in place)."""
    t_start = time.perf_counter()
    epochs: list[dict] = records if records is not None else []

    def on_record(rec: dict) -> None:
        if rec.get("kind") != "epoch":
            return
        out = {"epoch": rec["epoch"], "pairs": rec["epoch"] * cfg.samples_per_epoch,
               "wall_s": time.perf_counter() - t_start, "train_s": rec["train_time_s"], "val_acc": rec["val_acc"],
               "val_loss": rec["val_loss"], "train_acc": rec["train_acc"], "pairs_per_s": rec["pairs_per_s"],
               "lr": rec["lr"]}
        epochs.append(out)
        if on_epoch is not None:
            on_epoch(out)

    pretrain(train, cfg, out_dir, val_movie=val, progress=on_record)
    return epochs


def accuracy(movie: np.ndarray, args: argparse.Namespace, device: str) -> None:
    import tempfile

    train, val = movie[:32], movie[32:40]
    cfg = PretrainConfig(patch=args.patch, batch_size=args.batch, epochs=args.max_epochs,
                         samples_per_epoch=args.batch * args.epoch_steps, lr=args.lr, device=device,
                         val_samples=args.val_samples, compile=args.compile, max_time_s=args.budget,
                         log_every=10**9, model=TapConfig(base_channels=args.base))

    def on_epoch(rec: dict) -> None:
        emit({"bench": "accuracy", "device": device, **rec})

    with tempfile.TemporaryDirectory() as tmp:
        epochs = accuracy_run(train, val, cfg, Path(tmp) / "tap", on_epoch)
    summary = summarise_accuracy(epochs, args.target)
    emit({"bench": "accuracy_summary", "device": device,
          "device_name": environment_info(device).get("device_name"), "config": {
              "patch": cfg.patch, "batch": cfg.batch_size, "lr": cfg.lr, "base_channels": args.base,
              "pairs_per_epoch": cfg.samples_per_epoch, "budget_s": args.budget, "compile": cfg.compile},
          "epochs": summary["epochs"], "final_val_acc": summary["final_val_acc"],
          "best_val_acc": summary["best_val_acc"], "time_to_target": summary["time_to_target"]})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["throughput", "accuracy", "all"], default="all")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="hela01 CTC folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="small CPU-friendly settings")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--patch", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--base", type=int, default=32, help="U-Net base channels (paper: 32)")
    p.add_argument("--steps", type=int, help="timed steps per throughput measurement")
    p.add_argument("--warmup", type=int, help="warm-up steps")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    p.add_argument("--data-only", dest="data_only", action="store_true",
                   help="throughput: time only pair sampling + augmentation")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--budget", type=float, help="accuracy run: training-time budget in seconds")
    p.add_argument("--epoch-steps", dest="epoch_steps", type=int, help="accuracy run: steps per (short) epoch")
    p.add_argument("--max-epochs", dest="max_epochs", type=int, default=1000)
    p.add_argument("--val-samples", dest="val_samples", type=int)
    p.add_argument("--target", type=float, nargs="+", default=[0.6])
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    quick = {"patch": 48, "batch": 16, "steps": 3, "warmup": 1, "budget": 120.0, "epoch_steps": 10,
             "val_samples": 128}
    full = {"patch": 96, "batch": 152, "steps": 30, "warmup": 10, "budget": 120.0, "epoch_steps": 40,
            "val_samples": 1024}
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    emit({"bench": "env", **environment_info(device), "threads": torch.get_num_threads(), "quick": args.quick})
    movie = load_movie(args.data, 40)
    if args.mode in ("throughput", "all"):
        throughput(movie[:32], args, device)
    if args.mode in ("accuracy", "all"):
        accuracy(movie, args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
