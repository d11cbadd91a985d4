"""TAP pretraining: ``pretrain(movie, cfg, out_dir)`` -> a TAP bundle in ``out_dir``.

The loop is two flat functions, :func:`train_one_epoch` and :func:`evaluate`, around an
on-device :class:`~tapcore.tap.data.PairSampler`. Per epoch it reports train/val loss,
decorrelation loss and accuracy through the progress callback and ``out_dir/metrics.jsonl``, and
writes ``out_dir/checkpoint/last.pt`` (model, optimizer, scheduler, RNG states, epoch, history;
loadable with ``torch.load(weights_only=True)``). ``resume=True`` continues exactly where the last
checkpoint stopped: 2 epochs straight give the same weights as 1 epoch + resume + 1 epoch.

Speed on a GPU: the movie, pair sampling and all augmentations stay on the device; no host sync
per step (metrics accumulate on the device; ``.item()`` only every ``log_every`` steps); bf16
autocast and channels_last on CUDA; fused Adam; optional ``torch.compile`` (``compile=True``).

Several processes (``torchrun --nproc-per-node N tapcore pretrain ...``, or a multi-node
rendezvous): data-parallel training, :mod:`tapcore.distributed` (``batch_size`` is the global
batch, split evenly over the processes; rank 0 validates and writes; ``world_size`` is recorded in
the checkpoint and the bundle manifest). A single process is the default and runs as before.

Learning-rate decay (**ours**, the paper says only "learning rate decay"; tarrow uses a cyclic
schedule): cosine decay per step from ``lr`` to ``lr * min_lr_ratio`` over all epochs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from tapcore import distributed as ddp
from tapcore.config import config_to_dict
from tapcore.progress import MetricsLog, ProgressFn, chain
from tapcore.tap.data import AugmentConfig, PairSampler, extract_pairs, flip_order, sample_pair_coords
from tapcore.tap.loss import tap_loss
from tapcore.tap.model import TapConfig, TapModel
from tapcore.utils import atomic_write_bytes, environment_info, resolve_device, seed_everything, sha256_array

logger = logging.getLogger(__name__)

__all__ = ["PretrainConfig", "PretrainResult", "pretrain", "train_one_epoch", "evaluate", "evaluate_pairs",
           "val_pairs", "load_checkpoint", "CHECKPOINT"]

CHECKPOINT = Path("checkpoint") / "last.pt"
_RESUME_FREE = ("device", "max_time_s", "log_every", "compile", "epochs", "preset")  # may change on resume


@dataclass
class PretrainConfig:
    """TAP pretraining options (paper / tarrow defaults).

    Attributes:
        patch: side of the square training patches (96).
        dt: frame distance of a pair (1).
        bin: spatial binning factor (1, 2 or 4; ``tapcore.binning``): the raw movie is mean-pooled over
            ``bin x bin`` blocks before normalisation, so the network sees a ``bin`` times smaller movie
            (patch sizes are then in binned pixels). Stored in the bundle; every user of the model bins
            the same way and reports results in original pixels. 1 = the paper (no binning).
        batch_size: pairs per step (tarrow: 128-152; lower it for small GPUs / CPU).
        epochs: training epochs (paper: 40).
        samples_per_epoch: pairs per epoch (tarrow: 50,000-100,000).
        lr: Adam learning rate (1e-4).
        weight_decay: Adam weight decay (1e-6).
        min_lr_ratio: cosine decay ends at ``lr * min_lr_ratio`` (ours).
        lam: weight of the decorrelation loss (0.01).
        tau: decorrelation temperature (0.2).
        seed: seeds model init, pair sampling and augmentation.
        device: "auto", "cpu", "cuda" or "cuda:N".
        val_fraction: without a validation movie, the last ``ceil(val_fraction * T)`` frames are
            held out for validation (and never used for training).
        val_samples: validation pairs (fixed across epochs, un-augmented, each shown in flipped
            order with probability 0.5).
        val_batch_size: pairs per validation step.
        pmin, pmax: per-frame percentile normalisation (1, 99.8).
        amp: bf16 autocast on CUDA (ignored on CPU).
        channels_last: channels_last memory format on CUDA.
        compile: wrap the model with ``torch.compile`` (CUDA only).
        log_every: a ``"step"`` progress record every this many steps (the only per-step host sync).
        max_time_s: stop after the epoch during which this many seconds of training have passed
            (None: no limit); the bundle is written as usual.
        model: the :class:`TapConfig` architecture.
        augment: the :class:`AugmentConfig` augmentations.
        preset: name of the preset these options started from (``tapcore.presets``; a record only,
            set by :func:`tapcore.presets.apply_preset`; None when built by hand).
        dist_sampling: under torchrun, ``"rank"``: each process draws its own pairs (generator seeded
            ``seed + rank``); ``"shared"``: each draws the same global batch (seed ``seed``) and keeps
            its slice, i.e. exactly the pairs of one process (costs ``world_size`` x the sampling).
            Ignored by a single process.
    """

    patch: int = 96
    dt: int = 1
    bin: int = 1
    batch_size: int = 152
    epochs: int = 40
    samples_per_epoch: int = 50_000
    lr: float = 1e-4
    weight_decay: float = 1e-6
    min_lr_ratio: float = 0.05
    lam: float = 0.01
    tau: float = 0.2
    seed: int = 0
    device: str = "auto"
    val_fraction: float = 0.1
    val_samples: int = 2048
    val_batch_size: int = 256
    pmin: float = 1.0
    pmax: float = 99.8
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    log_every: int = 50
    max_time_s: Optional[float] = None
    model: TapConfig = field(default_factory=TapConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    preset: Optional[str] = None
    dist_sampling: str = "rank"

    def validate(self) -> None:
        """Raise ValueError naming any option out of range."""
        positive = ("patch", "dt", "batch_size", "epochs", "samples_per_epoch", "val_samples", "val_batch_size",
                    "log_every")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"pretrain option {name} must be >= 1, got {getattr(self, name)!r}")
        if self.patch < 8:
            raise ValueError(f"patch must be at least 8 px, got {self.patch}")
        for name in ("lr", "tau"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"pretrain option {name} must be > 0, got {getattr(self, name)!r}")
        for name in ("weight_decay", "lam"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"pretrain option {name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 < self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in (0, 1], got {self.min_lr_ratio}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.max_time_s is not None and not self.max_time_s > 0:
            raise ValueError(f"max_time_s must be > 0 or None, got {self.max_time_s}")
        from tapcore.binning import check_bin

        check_bin(self.bin)
        if self.dist_sampling not in ("rank", "shared"):
            raise ValueError(f"dist_sampling must be 'rank' or 'shared', got {self.dist_sampling!r}")
        self.model.validate()
        self.augment.validate()

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.samples_per_epoch / self.batch_size))


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns (everything is also on disk in ``out_dir``).

    Attributes:
        out_dir: the TAP bundle folder (also holds ``metrics.jsonl`` and ``checkpoint/``).
        model: the trained :class:`TapModel` (eval mode, on CPU).
        history: one dict per epoch (train/val metrics).
        metrics: the bundle's ``metrics.json`` content.
    """

    out_dir: Path
    model: TapModel
    history: list[dict[str, Any]]
    metrics: dict[str, Any]


# -- data ---------------------------------------------------------------------------------------
def _prepare_movie(movie: np.ndarray, name: str, cfg: PretrainConfig) -> np.ndarray:
    """Check, bin (``cfg.bin``) and normalise a raw movie -> float32 ``(T, Y/bin, X/bin)``."""
    from tapcore.binning import bin_movie
    from tapcore.io import normalize_movie

    movie = np.asarray(movie)
    if movie.ndim != 3:
        raise ValueError(f"{name} must be a (T, Y, X) movie, got an array of shape {movie.shape}")
    if movie.shape[0] < cfg.dt + 1:
        raise ValueError(f"{name} has {movie.shape[0]} frame(s); TAP needs at least {cfg.dt + 1} frames")
    movie = bin_movie(movie, cfg.bin)
    if min(movie.shape[1:]) < cfg.patch:
        binned = f" after binning by {cfg.bin}" if cfg.bin > 1 else ""
        raise ValueError(f"{name} frames are {movie.shape[1]} x {movie.shape[2]} px{binned}, smaller than the "
                         f"{cfg.patch} px patch; choose a smaller patch (--patch)"
                         + (" or a smaller bin (--bin)" if cfg.bin > 1 else ""))
    return normalize_movie(movie, cfg.pmin, cfg.pmax)


def _split_frames(n_frames: int, cfg: PretrainConfig) -> tuple[tuple[int, int], tuple[int, int]]:
    """Train and held-out validation frame ranges ``[lo, hi)`` of one movie (validation = last frames)."""
    n_val = max(cfg.dt + 1, math.ceil(cfg.val_fraction * n_frames))
    if n_frames - n_val < cfg.dt + 1:
        raise ValueError(f"the movie has {n_frames} frames: too few to hold out {n_val} validation frames and "
                         "still train; give a validation movie (--val) or a longer movie")
    return (0, n_frames - n_val), (n_frames - n_val, n_frames)


def val_pairs(shape: tuple[int, int, int], n: int, crop: int, frames: tuple[int, int], seed: int,
              dt: int = 1, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed validation pairs: coords ``(n, 3) [t, y0, x0]`` of ``crop``-squares and labels ``(n,)`` (flip)."""
    gen = torch.Generator().manual_seed(int(seed))
    coords = sample_pair_coords(n, shape, crop, dt, frames, gen, "cpu")
    labels = torch.randint(0, 2, (n,), generator=gen)
    return coords.to(device), labels.to(device)


# -- loop ---------------------------------------------------------------------------------------
def _autocast(device: str, amp: bool):
    if amp and device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate_pairs(model: torch.nn.Module, movie: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor,
                   crop: int, *, resolution: float = 1.0, dt: int = 1, batch_size: int = 256, lam: float = 0.01,
                   tau: float = 0.2, amp: bool = True, forward: Optional[Any] = None) -> dict[str, float]:
    """TAP loss, decorrelation loss and accuracy of ``model`` (eval mode) on fixed pairs.

    Args:
        movie: ``(T, Y, X)`` normalised movie tensor on the model's device.
        coords: ``(N, 3) [t, y0, x0]``: top-left of the source square (side ``round(crop / resolution)``).
        labels: ``(N,)``: 1 where the pair is shown in flipped order.
        crop: pair side the model sees.
        resolution: view the movie rescaled by this factor (content-view study).
        forward: callable used instead of ``model.forward_with_features`` (e.g. its compiled version).
    """
    forward = forward if forward is not None else model.forward_with_features
    device = str(movie.device)
    was_training = model.training
    model.eval()
    n = coords.shape[0]
    sums = torch.zeros(3, dtype=torch.float64, device=movie.device)  # loss, decorr, correct
    for start in range(0, n, batch_size):
        c = coords[start:start + batch_size]
        y = labels[start:start + batch_size]
        x = flip_order(extract_pairs(movie, c, crop, resolution, dt), y)  # (b, 2, 1, crop, crop)
        with _autocast(device, amp):
            logits, z = forward(x)
            loss = tap_loss(logits, y, z, lam, tau)
        b = c.shape[0]
        sums += torch.stack([loss.total.double() * b, loss.decorr.double() * b,
                             (logits.argmax(1) == y).sum().double()])
    model.train(was_training)
    loss_sum, decorr_sum, correct = (float(v) for v in sums.cpu())
    return {"loss": loss_sum / n, "decorr": decorr_sum / n, "acc": correct / n, "n": int(n)}


def evaluate(model: torch.nn.Module, movie: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor,
             cfg: PretrainConfig, forward: Optional[Any] = None) -> dict[str, float]:
    """Validation metrics ``{"val_loss", "val_decorr", "val_acc"}`` at the training patch size."""
    m = evaluate_pairs(model, movie, coords, labels, cfg.patch, dt=cfg.dt, batch_size=cfg.val_batch_size,
                       lam=cfg.lam, tau=cfg.tau, amp=cfg.amp, forward=forward)
    return {"val_loss": m["loss"], "val_decorr": m["decorr"], "val_acc": m["acc"]}


def train_one_epoch(model: torch.nn.Module, sampler: PairSampler, optimizer: torch.optim.Optimizer,
                    scheduler: Any, cfg: PretrainConfig, device: str, epoch: int,
                    report: Optional[ProgressFn] = None, t_start: Optional[float] = None,
                    forward: Optional[Any] = None, dist_info: ddp.DistInfo = ddp.SINGLE) -> dict[str, float]:
    """One epoch of ``cfg.steps_per_epoch`` steps; returns the epoch's mean train metrics.

    ``forward`` replaces ``model.forward_with_features`` (e.g. its ``torch.compile`` or DDP version).
    Under torchrun (``dist_info``) each process takes ``batch_size / world_size`` pairs per step and
    the metrics are means over all processes.
    """
    batch = ddp.local_batch(cfg.batch_size, dist_info)
    forward = forward if forward is not None else model.forward_with_features
    model.train()
    steps = cfg.steps_per_epoch
    t_start = time.time() if t_start is None else t_start
    sums = torch.zeros(4, dtype=torch.float32, device=device)  # loss, ce, decorr, correct
    t0 = time.time()
    for step in range(1, steps + 1):
        x, y = sampler.sample(batch)  # (B, 2, 1, P, P), (B,)
        with _autocast(device, cfg.amp):
            logits, z = forward(x)
            loss = tap_loss(logits, y, z, cfg.lam, cfg.tau)
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            sums += torch.stack([loss.total.detach(), loss.ce.detach(), loss.decorr.detach(),
                                 (logits.detach().argmax(1) == y).float().mean()])
        if (report is not None or dist_info.enabled) and (step % cfg.log_every == 0 or step == steps):
            s = (ddp.all_mean(sums, dist_info) / step).tolist()  # the only host sync inside the epoch
            if report is None:
                continue
            report({"stage": "pretrain", "kind": "step", "epoch": epoch, "epochs": cfg.epochs, "step": step,
                    "steps": steps, "elapsed_s": time.time() - t_start, "train_loss": s[0], "train_decorr": s[2],
                    "train_acc": s[3], "lr": optimizer.param_groups[0]["lr"],
                    "pairs_per_s": step * cfg.batch_size / max(time.time() - t0, 1e-9)})
    s = (ddp.all_mean(sums, dist_info) / steps).tolist()
    return {"train_loss": s[0], "train_ce": s[1], "train_decorr": s[2], "train_acc": s[3],
            "lr": optimizer.param_groups[0]["lr"], "pairs_per_s": steps * cfg.batch_size / max(time.time() - t0, 1e-9)}


# -- checkpoints --------------------------------------------------------------------------------
def _rng_state(sampler: PairSampler, device: str, dist_info: ddp.DistInfo = ddp.SINGLE) -> dict[str, Any]:
    state = {"sampler": sampler.gen.get_state(), "torch": torch.get_rng_state()}
    if device.startswith("cuda"):
        state["cuda"] = torch.cuda.get_rng_state(torch.device(device))
    if dist_info.enabled:  # every process's generators (a collective: all ranks call this)
        state["ranks"] = ddp.gather_objects(state, dist_info)
    return state


def _set_rng_state(rng: dict[str, Any], gen: torch.Generator, device: str, dist_info: ddp.DistInfo,
                   world_size: int, path: Path) -> None:
    if world_size != dist_info.world_size:
        raise ValueError(f"{path} was written by {world_size} process(es); resume it with the same number "
                         f"(torchrun --nproc-per-node {world_size}), or use a new output folder")
    if "ranks" in rng:
        rng = rng["ranks"][dist_info.rank]
    gen.set_state(rng["sampler"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and device.startswith("cuda"):
        torch.cuda.set_rng_state(rng["cuda"], torch.device(device))


def _save_checkpoint(path: Path, model: TapModel, optimizer, scheduler, sampler: PairSampler, epoch: int,
                     history: list[dict[str, Any]], cfg: PretrainConfig, data_sha: str, device: str,
                     train_time: float, dist_info: ddp.DistInfo = ddp.SINGLE) -> None:
    rng = _rng_state(sampler, device, dist_info)
    if not dist_info.main:
        return  # rank 0 writes the checkpoint
    payload = {
        "format": "tapcore-pretrain-checkpoint-v1",
        "epoch": int(epoch),
        "model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng,
        "world_size": int(dist_info.world_size),
        "history": history,
        "config": config_to_dict(cfg),
        "data_sha256": data_sha,
        "train_time_s": float(train_time),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a pretraining checkpoint with ``weights_only=True`` (ValueError when unreadable)."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign files raise various errors
        raise ValueError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); delete it to start "
                         "over") from exc
    if not isinstance(data, dict) or data.get("format") != "tapcore-pretrain-checkpoint-v1":
        raise ValueError(f"{path} is not a tapcore pretraining checkpoint; delete it to start over")
    return data


def _check_resume(ckpt: dict[str, Any], cfg: PretrainConfig, data_sha: str, path: Path) -> None:
    if ckpt["data_sha256"] != data_sha:
        raise ValueError(f"{path} was trained on another movie (data hash differs); resume with the same movie "
                         "or use a new output folder")
    # options added after a checkpoint was written count as their defaults (bin 1, dist_sampling ...)
    old, new = {**config_to_dict(PretrainConfig()), **dict(ckpt["config"])}, config_to_dict(cfg)
    changed = sorted(k for k in set(old) | set(new) if k not in _RESUME_FREE and old.get(k) != new.get(k))
    if changed:
        raise ValueError(f"cannot resume {path}: option(s) {', '.join(changed)} differ from the checkpoint's; "
                         "use the same options or a new output folder")


# -- entry point --------------------------------------------------------------------------------
def pretrain(movie: np.ndarray, cfg: Optional[PretrainConfig] = None, out_dir: str | os.PathLike = "tap_model",
             val_movie: Optional[np.ndarray] = None, progress: Optional[ProgressFn] = None,
             resume: bool = False) -> PretrainResult:
    """Pretrain a TAP model on a raw movie and write a TAP bundle to ``out_dir``.

    Args:
        movie: raw ``(T, Y, X)`` movie (any dtype; normalised per frame inside).
        cfg: :class:`PretrainConfig` (default: the paper's values).
        out_dir: bundle folder; also receives ``metrics.jsonl`` and ``checkpoint/last.pt``.
        val_movie: raw validation movie (another location of the sample). None: hold out the last
            ``val_fraction`` of the frames.
        progress: callback receiving ``"step"``, ``"epoch"`` and ``"done"`` records (tapcore.progress keys).
        resume: continue from ``out_dir/checkpoint/last.pt`` when it exists.

    Returns:
        :class:`PretrainResult`.
    """
    from tapcore.bundle import save_bundle

    cfg = cfg if cfg is not None else PretrainConfig()
    cfg.validate()
    device = resolve_device(cfg.device)
    dist_info, device = ddp.setup(device)  # torchrun: join the process group, one GPU per process
    ddp.local_batch(cfg.batch_size, dist_info)  # the global batch must split evenly
    out_dir = Path(out_dir)
    t_start = time.time()

    data_sha = sha256_array(np.asarray(movie))
    train_np = _prepare_movie(movie, "the movie", cfg)
    if val_movie is not None:
        val_np = _prepare_movie(val_movie, "the validation movie", cfg)
        train_frames, val_frames = (0, train_np.shape[0]), (0, val_np.shape[0])
        val_desc = {"source": "validation movie", "frames": list(val_frames),
                    "data_sha256": sha256_array(np.asarray(val_movie))}
    else:
        val_np = train_np
        train_frames, val_frames = _split_frames(train_np.shape[0], cfg)
        val_desc = {"source": "held-out last frames", "frames": list(val_frames)}

    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    seed_everything(cfg.seed)
    model = TapModel(dataclasses.replace(cfg.model))
    model.to(device)
    if cfg.channels_last and device.startswith("cuda"):
        model.to(memory_format=torch.channels_last)
    movie_t = torch.from_numpy(train_np).to(device)  # (T, Y, X) float32
    val_t = movie_t if val_movie is None else torch.from_numpy(val_np).to(device)
    gen = torch.Generator(device=device)
    per_rank = dist_info.enabled and cfg.dist_sampling == "rank"
    gen.manual_seed(int(cfg.seed) + (dist_info.rank if per_rank else 0))
    sampler = PairSampler(movie_t, cfg.patch, cfg.dt, train_frames, dataclasses.replace(cfg.augment), gen)
    if dist_info.enabled and not per_rank:
        sampler = ddp.SliceSampler(sampler, dist_info)
    v_coords, v_labels = val_pairs(tuple(val_t.shape), cfg.val_samples, cfg.patch, val_frames, cfg.seed + 7919,
                                   cfg.dt, device)

    fused = device.startswith("cuda")
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                 **({"fused": True} if fused else {}))
    total_steps = cfg.epochs * cfg.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps,
                                                           eta_min=cfg.lr * cfg.min_lr_ratio)

    ckpt_path = out_dir / CHECKPOINT
    start_epoch, history, train_time = 0, [], 0.0
    if resume and ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path)
        _check_resume(ckpt, cfg, data_sha, ckpt_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"], gen, device, dist_info, int(ckpt.get("world_size", 1)), ckpt_path)
        start_epoch, history, train_time = int(ckpt["epoch"]), list(ckpt["history"]), float(ckpt["train_time_s"])
        logger.info("resuming TAP pretraining from epoch %d of %d (%s)", start_epoch, cfg.epochs, ckpt_path)
    elif resume:
        logger.info("no checkpoint in %s: starting from scratch", out_dir)
    ddp.barrier(dist_info)  # every rank has read the checkpoint before rank 0 writes anew
    if dist_info.main and start_epoch == 0 and (out_dir / "metrics.jsonl").is_file():
        (out_dir / "metrics.jsonl").unlink()  # a fresh run starts a fresh log (resumed runs append)

    forward = eval_forward = model.forward_with_features
    if cfg.compile and device.startswith("cuda"):
        forward = eval_forward = torch.compile(model.forward_with_features)  # state dict keys stay unchanged
    if dist_info.enabled:  # BatchNorm over the global batch; DDP averages the gradients
        ddp.use_global_batchnorm(model)
        forward = ddp.ddp_wrap(ddp.FeaturesForward(model), device)
        if cfg.compile and device.startswith("cuda"):
            forward = torch.compile(forward)

    log = MetricsLog(out_dir / "metrics.jsonl") if dist_info.main else None
    report = chain(progress, log) if log is not None else None
    if log is not None and history:  # resumed: a stop between the checkpoint and its epoch line lost that line
        logged = {r.get("epoch") for r in log.read() if r.get("kind") == "epoch"}
        for record in history:
            if record.get("epoch") not in logged:
                log(record)
    logger.info("TAP pretraining on %s: %d epochs x %d steps x %d pairs (%d x %d px)%s", device, cfg.epochs,
                cfg.steps_per_epoch, cfg.batch_size, cfg.patch, cfg.patch,
                f"; process {dist_info.rank} of {dist_info.world_size}" if dist_info.enabled else "")
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        t_epoch = time.time()
        train_m = train_one_epoch(model, sampler, optimizer, scheduler, cfg, device, epoch, report, t_start,
                                  forward, dist_info)
        train_time += time.time() - t_epoch
        # rank 0 validates; the others wait for its figures here
        val_m = ddp.broadcast_object(evaluate(model, val_t, v_coords, v_labels, cfg, eval_forward)
                                     if dist_info.main else None, dist_info)
        train_time = ddp.broadcast_object(train_time, dist_info)
        record = {"stage": "pretrain", "kind": "epoch", "epoch": epoch, "epochs": cfg.epochs,
                  "steps": cfg.steps_per_epoch, "step": cfg.steps_per_epoch, **train_m, **val_m,
                  "train_time_s": train_time, "elapsed_s": time.time() - t_start}
        history.append(record)
        _save_checkpoint(ckpt_path, model, optimizer, scheduler, sampler, epoch, history, cfg, data_sha, device,
                         train_time, dist_info)
        if report is not None:
            report(record)
        ddp.barrier(dist_info)
        if cfg.max_time_s is not None and train_time >= cfg.max_time_s and epoch < cfg.epochs:
            logger.info("time budget of %.0f s reached after epoch %d: stopping", cfg.max_time_s, epoch)
            break

    model.eval()
    ddp.use_plain_batchnorm(model)
    final = history[-1] if history else {}
    metrics = {
        "history": history,
        "final": {k: final.get(k) for k in ("epoch", "train_loss", "train_decorr", "train_acc", "val_loss",
                                           "val_decorr", "val_acc")},
        "best_val_acc": max((h["val_acc"] for h in history), default=None),
        "epochs_done": len(history),
        "train_time_s": train_time,
        "validation": val_desc,
        "val_pairs": int(v_labels.shape[0]),
    }
    from tapcore.verdicts import movie_statistics

    manifest = {
        "data_sha256": data_sha,
        "movie_shape": list(np.asarray(movie).shape),
        "movie_dtype": str(np.asarray(movie).dtype),
        "bin": int(cfg.bin),
        "binned_shape": list(train_np.shape),
        "seed": int(cfg.seed),
        "train_frames": list(train_frames),
        "validation": val_desc,
        "data_stats": movie_statistics(np.asarray(movie)),  # compared with the movies the model meets later
        "world_size": int(dist_info.world_size),
        **environment_info(device),
    }
    config = {"model": config_to_dict(model.cfg), "pretrain": config_to_dict(cfg),
              "normalize": {"pmin": cfg.pmin, "pmax": cfg.pmax}, "bin": int(cfg.bin)}
    model.to("cpu").to(memory_format=torch.contiguous_format)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if dist_info.main:
        save_bundle(out_dir, kind="tap", config=config, state_dict=state, metrics=metrics, manifest=manifest)
        report({"stage": "pretrain", "kind": "done", "epoch": len(history), "epochs": cfg.epochs,
                "elapsed_s": time.time() - t_start, "val_acc": final.get("val_acc")})
    ddp.barrier(dist_info)  # the bundle is complete before any process returns
    return PretrainResult(out_dir=out_dir, model=model, history=history, metrics=metrics)
