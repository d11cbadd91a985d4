"""How long will a job take? Duration estimates for TAP pretraining and event-head training.

An estimate is ``work / rate``: the work is counted from the settings (training pairs, validation
pairs, frames to featurise), the rate comes from

- a **recorded** rate passed in (``pairs_per_s``, e.g. from an earlier job's ``metrics.jsonl``), or
- a short **measured probe**: a few timed training steps of the actual model (same architecture,
  patch / crop, augmentation, AMP) on random data on the chosen device, after one warm-up step. On a
  CPU the probe uses at most :data:`CPU_PROBE_BATCH` pairs per step (CPU time per pair hardly depends on
  the batch, and a paper-sized batch would take a minute per step); on a GPU it uses the real batch.
  It runs with the calling process's torch thread count (the app's: all cores, as a job's).

Probe results are cached in the process per (device, settings, threads), so an app page can ask on
every rerun and only the first call measures.

Cost model (ours): a validation or test pair (forward only) costs 1/3 of a training pair; sampling and
augmentation of TAP pairs are inside the probe; the one-off whole-frame feature pass of the frozen
head strategies is timed separately per pixel. Start-up (loading the movie, the worker picking the
job) is not counted. Expect the real duration within a factor of about 1.5 on an otherwise idle
machine; a busy machine is slower.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

__all__ = ["Estimate", "CPU_PROBE_BATCH", "EVAL_COST", "format_duration", "pretrain_work", "estimate_pretrain",
           "measure_pretrain_rate", "head_work", "estimate_head", "measure_head_rate", "measure_feature_rate",
           "worker_device", "clear_cache"]

#: largest probe batch on a CPU
CPU_PROBE_BATCH = 8
#: a probe whose warm-up step took longer than this times only one more step
SLOW_STEP_S = 3.0
#: cost of an evaluation (forward-only) pair relative to a training pair
EVAL_COST = 1.0 / 3.0

_CACHE: dict[str, float] = {}


@dataclass
class Estimate:
    """An estimated job duration.

    Attributes:
        seconds: total estimated seconds.
        pairs_per_s: training pairs per second used (measured or recorded).
        train_pairs: training pairs the job processes (all epochs).
        eval_pairs: validation / test pairs (forward only).
        extra_seconds: fixed costs included in ``seconds`` (the head's whole-frame feature pass).
        device: where the job runs.
        source: ``"measured"`` (probe) or ``"recorded"`` (a given rate).
        explanation: one plain sentence on how the number was made.
    """

    seconds: float
    pairs_per_s: float
    train_pairs: int
    eval_pairs: int
    extra_seconds: float
    device: str
    source: str
    explanation: str

    def summary(self) -> str:
        """``"Estimated duration on cpu: ~12 min (measured: 35.2 pairs/s)"``."""
        return (f"Estimated duration on {self.device}: ~{format_duration(self.seconds)} "
                f"({self.source}: {self.pairs_per_s:,.1f} pairs/s)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def format_duration(seconds: float) -> str:
    """Rounded human duration: ``"40 s"``, ``"12 min"``, ``"3.5 h"``, ``"2.1 days"``."""
    s = float(seconds)
    if not math.isfinite(s):
        return "unknown"
    if s < 90:
        return f"{max(1, round(s))} s"
    if s < 90 * 60:
        return f"{round(s / 60)} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def _key(kind: str, device: str, settings: dict[str, Any]) -> str:
    return json.dumps({"kind": kind, "device": device, "threads": torch.get_num_threads(), **settings},
                      sort_keys=True, default=str)


def _timed(step, device: str, steps: int) -> float:
    """Seconds per call of ``step()`` over ``steps`` calls after one warm-up call (one call when slow)."""
    t0 = time.perf_counter()
    step()
    _sync(device)
    if time.perf_counter() - t0 > SLOW_STEP_S:
        steps = 1
    t0 = time.perf_counter()
    for _ in range(max(1, int(steps))):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / max(1, int(steps))


def clear_cache() -> None:
    """Forget cached probe results."""
    _CACHE.clear()


# -- TAP pretraining ---------------------------------------------------------------------------
def pretrain_work(cfg) -> tuple[int, int]:
    """``(training pairs, validation pairs)`` of a pretraining run (all epochs)."""
    train = int(cfg.epochs) * int(cfg.steps_per_epoch) * int(cfg.batch_size)
    return train, int(cfg.epochs) * int(cfg.val_samples)


def measure_pretrain_rate(cfg, device: str = "auto", steps: int = 2, batch: Optional[int] = None,
                          cache: bool = True) -> float:
    """Training pairs per second of ``cfg`` (a :class:`PretrainConfig`) on ``device``, from a probe.

    The probe samples and augments pairs from a random movie with the real :class:`PairSampler` and
    runs forward, TAP loss, backward and an Adam step of a fresh model of ``cfg.model``.
    """
    from tapcore.config import config_to_dict
    from tapcore.tap.data import PairSampler
    from tapcore.tap.loss import tap_loss
    from tapcore.tap.model import TapModel
    from tapcore.tap.train import _autocast
    from tapcore.utils import resolve_device

    device = resolve_device(device)
    if batch is None:
        batch = int(cfg.batch_size) if device.startswith("cuda") else min(int(cfg.batch_size), CPU_PROBE_BATCH)
    d = config_to_dict(cfg)
    settings = {k: d[k] for k in ("patch", "dt", "model", "augment", "amp", "channels_last", "lam", "tau")}
    settings.update(batch=int(batch), steps=int(steps))
    key = _key("pretrain", device, settings)
    if cache and key in _CACHE:
        return _CACHE[key]
    torch.manual_seed(0)
    model = TapModel(dataclasses.replace(cfg.model)).to(device).train()
    if cfg.channels_last and device.startswith("cuda"):
        model.to(memory_format=torch.channels_last)
    side = int(cfg.patch) + 32
    movie = torch.rand(int(cfg.dt) + 2, side, side, device=device)
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    sampler = PairSampler(movie, int(cfg.patch), int(cfg.dt), None, dataclasses.replace(cfg.augment), gen)
    opt = torch.optim.Adam(model.parameters(), lr=float(cfg.lr))

    def step() -> None:
        x, y = sampler.sample(int(batch))
        with _autocast(device, cfg.amp):
            logits, z = model.forward_with_features(x)
            loss = tap_loss(logits, y, z, cfg.lam, cfg.tau)
        opt.zero_grad(set_to_none=True)
        loss.total.backward()
        opt.step()

    rate = int(batch) / _timed(step, device, steps)
    if cache:
        _CACHE[key] = rate
    return rate


def estimate_pretrain(cfg, device: str = "auto", *, pairs_per_s: Optional[float] = None, steps: int = 2,
                      cache: bool = True) -> Estimate:
    """Estimated duration of ``pretrain(movie, cfg)`` on ``device``.

    Args:
        cfg: :class:`~tapcore.tap.train.PretrainConfig` (validated here).
        device: "auto", "cpu", "cuda[:N]".
        pairs_per_s: a recorded training rate; None measures a probe (:func:`measure_pretrain_rate`).
        steps: timed probe steps.
    """
    from tapcore.utils import resolve_device

    cfg.validate()
    device = resolve_device(device)
    source = "recorded" if pairs_per_s is not None else "measured"
    rate = float(pairs_per_s) if pairs_per_s is not None else measure_pretrain_rate(cfg, device, steps, cache=cache)
    if not rate > 0:
        raise ValueError(f"pairs_per_s must be > 0, got {rate}")
    train, val = pretrain_work(cfg)
    seconds = (train + EVAL_COST * val) / rate
    why = (f"{cfg.epochs} epochs x {cfg.steps_per_epoch} steps x {cfg.batch_size} pairs = {train:,} training pairs "
           f"and {val:,} validation pairs at {rate:,.1f} pairs/s ({source} on {device}"
           + (f", patch {cfg.patch} px, bin {cfg.bin}" if source == "measured" else "") + ")")
    return Estimate(seconds, rate, train, val, 0.0, device, source, why)


# -- event heads -------------------------------------------------------------------------------
def head_work(cfg, n_train: int, n_val: int = 0, n_test: int = 0) -> tuple[int, int]:
    """``(training pairs, evaluation pairs)`` of a head run with ``n_train`` training crop pairs."""
    epochs = int(cfg.n_epochs)
    per_epoch_val = n_val if cfg.epoch_val_pairs is None else min(int(n_val), int(cfg.epoch_val_pairs))
    return epochs * int(n_train), epochs * per_epoch_val + int(n_val) + int(n_test)


def _tap_config(tap_config: Optional[dict[str, Any]]):
    from tapcore.config import config_from_dict
    from tapcore.tap.model import TapConfig

    return config_from_dict(TapConfig, tap_config or {})


def measure_head_rate(cfg, device: str = "auto", tap_config: Optional[dict[str, Any]] = None, steps: int = 2,
                      batch: Optional[int] = None, n_classes: int = 2, cache: bool = True) -> float:
    """Training crop pairs per second of a head run (:class:`~tapcore.events.train.HeadConfig`).

    Frozen strategies (A, B) time the head alone on random feature windows (what training feeds it);
    end-to-end strategies (C) time backbone + head on image windows with ``feature_margin`` context.
    """
    from tapcore.config import config_to_dict
    from tapcore.events.heads import build_head
    from tapcore.events.model import EventModel
    from tapcore.events.train import STRATEGIES
    from tapcore.tap.model import TapModel
    from tapcore.utils import resolve_device

    device = resolve_device(device)
    if batch is None:
        batch = int(cfg.batch_size) if device.startswith("cuda") else min(int(cfg.batch_size), CPU_PROBE_BATCH)
    tcfg = _tap_config(tap_config)
    frozen = STRATEGIES[cfg.strategy][2]
    crop = int(cfg.dataset.crop)
    settings = {"head": cfg.head_name, "frozen": frozen, "crop": crop, "tap": config_to_dict(tcfg),
                "feature_margin": int(cfg.feature_margin), "batch": int(batch), "steps": int(steps),
                "n_classes": int(n_classes)}
    key = _key("head", device, settings)
    if cache and key in _CACHE:
        return _CACHE[key]
    torch.manual_seed(0)
    head = build_head(cfg.head_name, in_channels=int(tcfg.features), n_classes=int(n_classes), crop=crop)
    if frozen:
        net: torch.nn.Module = head
        side = head.window
        x = torch.randn(int(batch), 2, int(tcfg.features), side, side, device=device)
    else:
        net = EventModel(TapModel(tcfg).backbone, head, feature_margin=int(cfg.feature_margin))
        side = head.window + 2 * int(cfg.feature_margin)
        x = torch.randn(int(batch), 2, 1, side, side, device=device)
    net.to(device).train()
    if device == "cpu":
        net.to(memory_format=torch.channels_last)
    y = torch.randint(0, int(n_classes), (int(batch),), device=device)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=float(cfg.lr))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rate = int(batch) / _timed(step, device, steps)
    if cache:
        _CACHE[key] = rate
    return rate


def measure_feature_rate(tap_config: Optional[dict[str, Any]] = None, device: str = "auto", side: int = 256,
                         cache: bool = True) -> float:
    """Pixels per second of the frozen backbone's whole-frame feature pass (no gradients)."""
    from tapcore.config import config_to_dict
    from tapcore.tap.model import TapModel
    from tapcore.utils import resolve_device

    device = resolve_device(device)
    tcfg = _tap_config(tap_config)
    key = _key("features", device, {"tap": config_to_dict(tcfg), "side": int(side)})
    if cache and key in _CACHE:
        return _CACHE[key]
    backbone = TapModel(tcfg).backbone.to(device).eval()
    x = torch.rand(1, 1, int(side), int(side), device=device)

    def step() -> None:
        with torch.no_grad():
            backbone(x)

    rate = int(side) ** 2 / _timed(step, device, 1)
    if cache:
        _CACHE[key] = rate
    return rate


def estimate_head(cfg, n_train: int, device: str = "auto", *, n_val: int = 0, n_test: int = 0,
                  tap_config: Optional[dict[str, Any]] = None, movie_shape: Optional[tuple[int, int, int]] = None,
                  n_classes: int = 2, pairs_per_s: Optional[float] = None, pixels_per_s: Optional[float] = None,
                  steps: int = 2, cache: bool = True) -> Estimate:
    """Estimated duration of ``train_head`` with ``cfg`` on ``n_train`` training crop pairs.

    Args:
        cfg: :class:`~tapcore.events.train.HeadConfig`.
        n_train, n_val, n_test: crop pairs per split (``build_crop_pairs(...)``: ``len(pairs.train)``, ...).
        device: "auto", "cpu", "cuda[:N]".
        tap_config: the TAP bundle's ``TapConfig`` dict (backbone architecture; default TapConfig).
        movie_shape: ``(T, Y, X)`` of the movie **as the model sees it** (binned); frozen strategies add
            the whole-frame feature pass over ``T * Y * X`` pixels.
        pairs_per_s, pixels_per_s: recorded rates; None measures probes.
    """
    from tapcore.events.train import STRATEGIES
    from tapcore.utils import resolve_device

    cfg.validate()
    device = resolve_device(device)
    source = "recorded" if pairs_per_s is not None else "measured"
    rate = (float(pairs_per_s) if pairs_per_s is not None
            else measure_head_rate(cfg, device, tap_config, steps, n_classes=n_classes, cache=cache))
    if not rate > 0:
        raise ValueError(f"pairs_per_s must be > 0, got {rate}")
    train, evals = head_work(cfg, n_train, n_val, n_test)
    extra = 0.0
    frozen = STRATEGIES[cfg.strategy][2]
    if frozen and movie_shape is not None:
        px = float(np.prod([int(v) for v in movie_shape]))
        px_rate = float(pixels_per_s) if pixels_per_s is not None else measure_feature_rate(tap_config, device,
                                                                                             cache=cache)
        extra = px / px_rate
    seconds = (train + EVAL_COST * evals) / rate + extra
    why = (f"{cfg.n_epochs} epochs x {n_train:,} training windows = {train:,} pairs and {evals:,} evaluation pairs "
           f"at {rate:,.1f} pairs/s ({source} on {device}, {cfg.head_name} head, crop {cfg.dataset.crop} px)"
           + (f", plus {format_duration(extra)} for the whole-frame features" if extra else ""))
    return Estimate(seconds, rate, train, evals, extra, device, source, why)


# -- where jobs run ----------------------------------------------------------------------------
def worker_device(home: Optional[str | os.PathLike] = None) -> str:
    """The device jobs of workspace ``home`` run on: the first live worker's (``auto`` resolved here),
    else the device a new local worker would get (the first of ``$TAPCORE_WORKER_DEVICES``, else
    ``$TAPCORE_WORKER_DEVICE``, default ``auto``). A CPU worker slot ``cpu:N`` is the CPU."""
    from tapcore.utils import resolve_device

    device = None
    if home is not None:
        try:
            from tapcore.jobs.queue import JobQueue

            workers = JobQueue(home).alive_workers()
            device = workers[0].device if workers else None
        except (OSError, ValueError):
            device = None
    device = (device or os.environ.get("TAPCORE_WORKER_DEVICES", "").split(",")[0].strip()
              or os.environ.get("TAPCORE_WORKER_DEVICE") or "auto")
    return resolve_device("cpu" if device.startswith("cpu:") else device)
