"""Train an event head with one of the paper's strategies (Table 2) and write a head bundle.

Strategies (``HeadConfig.strategy``), each with the linear (0) or ResNet (1) head, or (ours, for
CPUs) the ResNet head at 16 channels, ``resnet_lite`` (2: A2, B2, C2):

- ``A``: TAP backbone, frozen. Features are computed once per whole frame and reused;
- ``B``: the same U-Net architecture, randomly initialised (Kaiming uniform, seeded by ``seed``), frozen;
- ``C``: randomly initialised and trained end to end on image crops (with ``feature_margin`` pixels
  of image context around the head's window).

Training (research code): Adam, lr 1e-3, batch 108, class-balanced training set, softmax cross-entropy;
10 epochs for the linear head, 30 for the ResNet head. The bundle folder ``out_dir`` holds
``config.json``, ``weights.pt``, ``metrics.json`` (test and validation metrics), ``manifest.json``, and

- ``val_logits.npy`` ``(N_val, K) float32`` / ``val_labels.npy`` ``(N_val,) int64``: the validation
  set's logits for fitting temperature scaling (``tapcore.calibration``);
- ``test_logits.npy`` / ``test_labels.npy`` / ``test_coords.npy`` ``(N_test, 3) [t, y, x]``;
- ``per_frame.csv``: the per-frame distributions of the test set (paper Figures 3-4);
- ``metrics.jsonl``: one record per epoch (also sent to the ``progress`` callback).

Data-parallel training (``torchrun --nproc-per-node N tapcore train-head ...``, :mod:`tapcore.distributed`):
every rank draws the same shuffled order of training pairs (generator seeded ``seed``) and takes its
slice of each global batch of ``batch_size`` pairs (``batch_size / world_size`` each; it must divide
evenly; the last, smaller batch of an epoch is split as evenly as it goes). Gradients are averaged by
``DistributedDataParallel`` over the trained parameters (the head for A and B, whose backbone is
frozen; the whole model for C), BatchNorm uses the statistics of the global batch
(:class:`~tapcore.distributed.GlobalBatchNorm2d`) and the loss of each rank is scaled by its share,
so a step of N processes is the step of one process with the same global batch (same pairs, same
order; equal up to float rounding). Rank 0 alone validates, computes the calibration and test logits
and writes the bundle (``manifest.json`` records ``world_size``); the others wait at a barrier.
"""

from __future__ import annotations

import dataclasses
import io as _io
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tapcore import distributed as ddp
from tapcore import metrics as M
from tapcore.binning import bin_masks, bin_movie, model_bin
from tapcore.config import config_to_dict
from tapcore.detector import EventDetector, TapFeatures
from tapcore.events.dataset import (CropPairConfig, CropPairs, CropSet, build_crop_pairs, mine_hard_negatives,
                                     resample_negatives)
from tapcore.events.dense import CropSource, FeatureCache, FeatureConfig, FrameFeatures, crop_logits
from tapcore.events.heads import HEADS, build_head
from tapcore.events.model import EventModel, build_backbone, tap_config_dict
from tapcore.io import check_masks, check_movie, normalize_movie
from tapcore.progress import MetricsLog, ProgressFn, chain
from tapcore.tap.model import TapConfig
from tapcore.utils import (atomic_write_bytes, atomic_write_text, environment_info, read_json, resolve_device,
                           seed_everything, sha256_array)
from tapcore.verdicts import movie_statistics

logger = logging.getLogger(__name__)

#: strategy -> (features, head, frozen backbone)
STRATEGIES: dict[str, tuple[str, str, bool]] = {
    "A0": ("tap", "linear", True),
    "A1": ("tap", "resnet", True),
    "B0": ("random", "linear", True),
    "B1": ("random", "resnet", True),
    "C0": ("random", "linear", False),
    "C1": ("random", "resnet", False),
    # ours: the CPU-sized ResNet head (tapcore.events.heads.LITE_WIDTH channels) in the same three settings
    "A2": ("tap", "resnet_lite", True),
    "B2": ("random", "resnet_lite", True),
    "C2": ("random", "resnet_lite", False),
    # ours: the order-aware CPU head (resnet_lite_order: the two frames kept apart), the demo model's
    "A3": ("tap", "resnet_lite_order", True),
    "B3": ("random", "resnet_lite_order", True),
    "C3": ("random", "resnet_lite_order", False),
}
#: paper's fine-tuning epochs per head family (the lite ResNet head follows the ResNet schedule)
PAPER_EPOCHS = {"linear": 10, "linear_invariant": 10, "resnet": 30, "resnet_order": 30, "resnet_lite": 30,
                "resnet_lite_order": 30}


@dataclass
class HeadConfig:
    """One event-head training run (paper defaults)."""

    strategy: str = "A1"  # "A0".."C2": A TAP frozen, B random frozen, C random end to end; 0 linear, 1 ResNet,
    # 2 the CPU-sized ResNet head (resnet_lite)
    head: Optional[str] = None  # override the strategy's head ("linear_invariant", "resnet_order", ...); None = 0/1
    epochs: Optional[int] = None  # None = paper default: 10 for linear heads, 30 for ResNet heads
    lr: float = 1e-3  # Adam learning rate (research code)
    batch_size: int = 108  # training batch size (research code)
    seed: int = 0  # head init, batch order and (B, C) the random backbone
    device: str = "auto"  # "auto" | "cpu" | "cuda[:N]"
    dataset: CropPairConfig = field(default_factory=CropPairConfig)  # crop, criterion, split, task, ...
    feature_margin: int = 16  # C only: image context pixels around the head's window for the backbone
    features: FeatureConfig = field(default_factory=FeatureConfig)  # A, B: whole-frame feature computation
    eval_batch: int = 256  # pairs per evaluation batch
    epoch_val_pairs: Optional[int] = 2000  # per-epoch validation on this many fixed random val pairs (None: all);
    # the final validation logits (for calibration) always cover the whole validation set
    num_threads: Optional[int] = None  # torch CPU threads (None: leave torch's setting)
    pmin: float = 1.0  # movie normalisation percentiles (as in TAP pretraining)
    pmax: float = 99.8
    hard_negatives: float = 0.0  # after half the epochs, swap this fraction of the training negatives for the
    # training split's negatives the head scores highest (hard negative mining; 0 = off, as in the paper)
    resample_negatives: bool = False  # draw the training negatives afresh from the whole training split every
    # epoch (same count; until hard negatives are mined): a balanced head sees far more of what is not an event
    keep_best: bool = False  # keep the head of the epoch with the lowest validation loss (not the last epoch's)

    def validate(self) -> "HeadConfig":
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; use one of {', '.join(STRATEGIES)}")
        if self.head is not None and self.head not in HEADS:
            raise ValueError(f"unknown event head {self.head!r}; valid heads: {', '.join(HEADS)}")
        if self.epochs is not None and int(self.epochs) < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.lr <= 0 or self.batch_size < 1 or self.eval_batch < 1:
            raise ValueError(f"lr, batch_size and eval_batch must be positive (got {self.lr}, {self.batch_size}, "
                             f"{self.eval_batch})")
        if self.feature_margin < 0:
            raise ValueError(f"feature_margin must be >= 0, got {self.feature_margin}")
        if not 0.0 <= float(self.hard_negatives) <= 1.0:
            raise ValueError(f"hard_negatives is a fraction of the training negatives in [0, 1], got {self.hard_negatives}")
        self.dataset.validate()
        return self

    @property
    def head_name(self) -> str:
        return self.head or STRATEGIES[self.strategy][1]

    @property
    def n_epochs(self) -> int:
        return int(self.epochs) if self.epochs is not None else PAPER_EPOCHS[self.head_name]


@dataclass
class HeadInputs:
    """Precomputed inputs of :func:`train_head`, shared by several runs on one movie (``compare``).

    Every field is optional; what is missing is computed from the movie, masks and TAP bundle.
    ``pairs`` and ``movie_norm`` must already be binned like the TAP bundle (``tapcore.binning``).
    """

    pairs: Optional[CropPairs] = None  # labelled, split crop pairs
    movie_norm: Optional[np.ndarray] = None  # (T, Y, X) float32 normalised (binned) movie
    backbone: Optional[nn.Module] = None  # the strategy's backbone (TAP or random); C trains it
    feature_cache: Optional[FeatureCache] = None  # frozen strategies: where whole-frame features are kept


@dataclass
class HeadResult:
    """What :func:`train_head` returns (everything is also in the bundle folder)."""

    path: Path
    detector: EventDetector  # the trained model with its bundle metadata
    pairs: CropPairs
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    confusion: np.ndarray  # (K, K) rows = truth, columns = prediction (test set)
    precision: np.ndarray  # (K,)
    recall: np.ndarray  # (K,)
    val_logits: np.ndarray  # (N_val, K)
    val_labels: np.ndarray  # (N_val,)
    test_logits: np.ndarray  # (N_test, K)
    test_labels: np.ndarray  # (N_test,)
    train_time_s: float

    @property
    def model(self) -> EventModel:
        return self.detector.model


def random_backbone(tap_config: dict[str, Any], seed: int) -> nn.Module:
    """The TAP backbone architecture with Kaiming-uniform weights (paper's B and C), seeded."""
    torch.manual_seed(seed)
    backbone = build_backbone(tap_config)
    for m in backbone.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.kaiming_uniform_(m.weight, a=0.01, nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return backbone


def train_one_epoch(net: nn.Module, source: CropSource, coords: np.ndarray, labels: np.ndarray,
                    opt: torch.optim.Optimizer, batch_size: int, rng: np.random.Generator, device: str,
                    on_step=None, dist_info: ddp.DistInfo = ddp.SINGLE) -> dict[str, float]:
    """One pass over the (shuffled) training pairs; returns mean loss and accuracy.

    Under torchrun (``dist_info``) ``net`` is the DDP-wrapped module and each rank trains on its slice
    of every global batch; the figures returned are those of the global batches (all ranks).
    """
    net.train()
    order = rng.permutation(len(labels))
    if dist_info.enabled:
        return _train_one_epoch_ddp(net, source, coords, labels, opt, batch_size, order, device, on_step, dist_info)
    total_loss, correct, seen = 0.0, 0, 0
    steps = (len(order) + batch_size - 1) // batch_size
    for step, i in enumerate(range(0, len(order), batch_size), start=1):
        idx = order[i:i + batch_size]
        x = source(coords[idx], device)
        y = torch.from_numpy(labels[idx]).to(device)
        logits = net(x)  # (B, K)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total_loss += float(loss.detach()) * len(idx)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(idx)
        if on_step is not None:
            on_step(step, steps)
    return {"train_loss": total_loss / max(seen, 1), "train_acc": correct / max(seen, 1)}


def _train_one_epoch_ddp(net: nn.Module, source: CropSource, coords: np.ndarray, labels: np.ndarray,
                         opt: torch.optim.Optimizer, batch_size: int, order: np.ndarray, device: str, on_step,
                         dist_info: ddp.DistInfo) -> dict[str, float]:
    """:func:`train_one_epoch` on this rank's slices of the shared global batches."""
    world, rank = dist_info.world_size, dist_info.rank
    sums = torch.zeros(3, dtype=torch.float64)  # cross-entropy sum, correct, pairs (this rank)
    steps = (len(order) + batch_size - 1) // batch_size
    for step, i in enumerate(range(0, len(order), batch_size), start=1):
        glob = order[i:i + batch_size]
        parts = np.array_split(glob, world)  # equal slices of b / world_size; the last batch as even as it goes
        idx = parts[rank]
        x = source(coords[idx], device)
        y = torch.from_numpy(labels[idx]).to(device)
        with ddp.batch_shares([len(p) for p in parts]):
            logits = net(x)  # (b, K)
        ce = F.cross_entropy(logits, y, reduction="sum")
        loss = ce * (world / len(glob))  # DDP averages over ranks: the gradient of the global batch's mean loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sums += torch.tensor([float(ce.detach()), int((logits.argmax(1) == y).sum()), len(idx)], dtype=torch.float64)
        if on_step is not None:
            on_step(step, steps)
    total = sums.to(device)  # nccl reduces device tensors only
    torch.distributed.all_reduce(total)
    total_loss, correct, seen = total.cpu().tolist()
    return {"train_loss": total_loss / max(seen, 1), "train_acc": correct / max(seen, 1)}


def split_metrics(logits: np.ndarray, labels: np.ndarray, n_classes: int, class_names: list[str]) -> dict[str, Any]:
    """Confusion matrix, per-class precision/recall, loss and accuracy of one split (JSON-able)."""
    pred = logits.argmax(1) if len(logits) else np.zeros(0, np.int64)
    cm = np.asarray(M.confusion_matrix(labels, pred, n_classes))
    pr = M.per_class_precision_recall(cm)
    precision, recall = _pr_arrays(pr, n_classes)
    loss = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()) if len(labels) else float("nan")
    return {
        "n": int(len(labels)),
        "class_names": class_names,
        "confusion_matrix": cm.tolist(),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
        "loss": loss,
    }


def _pr_arrays(pr: Any, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall arrays from ``metrics.per_class_precision_recall`` (DataFrame, dict or tuple)."""
    if isinstance(pr, tuple) and len(pr) >= 2:
        return np.asarray(pr[0], float), np.asarray(pr[1], float)
    if hasattr(pr, "columns"):  # DataFrame with precision / recall columns, one row per class
        return pr["precision"].to_numpy(float)[:n_classes], pr["recall"].to_numpy(float)[:n_classes]
    if isinstance(pr, dict):
        return np.asarray(pr["precision"], float), np.asarray(pr["recall"], float)
    raise TypeError(f"unexpected per_class_precision_recall result {type(pr).__name__}")


def _manifest(movie: np.ndarray, masks: np.ndarray, cfg: HeadConfig, device: str, tap_bundle: Optional[str],
              extra: dict[str, Any]) -> dict[str, Any]:
    tap_id = None
    if tap_bundle and (Path(tap_bundle) / "manifest.json").is_file():
        tap_id = read_json(Path(tap_bundle) / "manifest.json").get("bundle_id")
    return {
        "tap_bundle_id": tap_id,
        "movie_sha256": sha256_array(movie),
        "masks_sha256": sha256_array(masks),
        "movie_shape": list(movie.shape),
        "seed": int(cfg.seed),
        "dataset_seed": int(cfg.dataset.seed),
        "tap_bundle": str(tap_bundle) if tap_bundle else None,
        "data_stats": movie_statistics(movie),  # compared with the movies the model is applied to
        **extra,
        **environment_info(device),
    }


def _load_tap(tap_bundle: Optional[str | os.PathLike], device: str) -> tuple[Optional[nn.Module], dict[str, Any]]:
    """The TAP model (or None) and its config dict; default TapConfig when no bundle is given."""
    if tap_bundle is None:
        return None, config_to_dict(TapConfig())
    tap = TapFeatures.load(tap_bundle, device=device).model
    return tap, tap_config_dict(tap)


def prepare_backbone(cfg: HeadConfig, tap_bundle: Optional[str | os.PathLike]) -> tuple[nn.Module, dict[str, Any]]:
    """The strategy's backbone (TAP weights for A, Kaiming-uniform random for B and C) and the TAP config."""
    kind = STRATEGIES[cfg.strategy][0]
    if kind == "tap" and tap_bundle is None:
        raise ValueError(f"strategy {cfg.strategy} uses TAP features: pass a TAP bundle (--tap DIR), "
                         "made by tapcore pretrain")
    tap, tap_cfg = _load_tap(tap_bundle, "cpu")
    if kind == "tap":
        assert tap is not None
        return tap.backbone, tap_cfg
    return random_backbone(tap_cfg, cfg.seed), tap_cfg


def train_head(movie: np.ndarray, masks: np.ndarray, tap_bundle: Optional[str | os.PathLike], cfg: HeadConfig,
               out_dir: str | os.PathLike, progress: Optional[ProgressFn] = None, *,
               inputs: Optional[HeadInputs] = None) -> HeadResult:
    """Train one event head and write a self-contained ``event_head`` bundle to ``out_dir``.

    Args:
        movie: raw movie ``(T, Y, X)`` (normalised per frame inside, percentiles ``cfg.pmin``/``cfg.pmax``).
        masks: event masks ``(T, Y, X)`` (0 none, 1 division, 2 death).
        tap_bundle: TAP bundle folder (required for strategy A; for B and C it fixes the architecture,
            default ``TapConfig`` when None).
        cfg: :class:`HeadConfig`.
        out_dir: bundle folder to write.
        progress: callback receiving one dict per epoch (and feature/step records).
        inputs: precomputed :class:`HeadInputs` (``tapcore.events.compare`` shares them across
            strategies and repeats).

    Binning: a TAP bundle trained with ``bin > 1`` makes the head work on the movie and masks binned
    the same way (``tapcore.binning``: block-mean movie, block-max masks); crop coordinates, the crop
    size and ``min_area`` are then in binned pixels. The bundle records ``bin`` so that calibration,
    prediction and Grad-CAM bin the same way and report original pixels.

    Returns:
        :class:`HeadResult` with test metrics and the validation logits for calibration.
    """
    cfg = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset)).validate()
    movie = check_movie(movie, 2, purpose="an event head")
    masks = check_masks(masks, movie)
    device = resolve_device(cfg.device)
    dist_info, device = ddp.setup(device)  # torchrun: join the process group, one GPU per process
    ddp.local_batch(cfg.batch_size, dist_info)  # the global batch must split evenly
    if not dist_info.main:
        progress = None  # rank 0 reports and writes
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    out_dir = Path(out_dir)
    t_start = time.time()
    b = model_bin(tap_bundle)  # the TAP model's binning (1 without a bundle)
    inputs = inputs or HeadInputs()
    pairs, movie_norm, backbone = inputs.pairs, inputs.movie_norm, inputs.backbone
    if pairs is None:
        binned_masks = bin_masks(masks, b)
        pairs = build_crop_pairs(binned_masks, cfg.dataset, binned_masks.shape)
    if movie_norm is None:
        movie_norm = normalize_movie(bin_movie(movie, b), cfg.pmin, cfg.pmax)
    feature_kind, _, frozen = STRATEGIES[cfg.strategy]
    if backbone is None:
        backbone, tap_cfg = prepare_backbone(cfg, tap_bundle)
    else:
        tap_cfg = _load_tap(tap_bundle, "cpu")[1]
    seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    if dist_info.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.jsonl").unlink(missing_ok=True)  # a fresh log for this run
        emit = chain(progress, MetricsLog(out_dir / "metrics.jsonl"))
    else:
        def emit(rec: dict[str, Any]) -> None:
            return None
    crop = int(cfg.dataset.crop)
    n_classes = pairs.n_classes

    feats: Optional[FrameFeatures] = None
    if frozen:
        cache = inputs.feature_cache if inputs.feature_cache is not None else FeatureCache(size=1)
        feats = cache.get(backbone, movie_norm, f"{sha256_array(movie)}-bin{b}", cfg.features, device, progress)
        in_channels = feats.channels
    else:
        with torch.no_grad():
            in_channels = int(backbone.eval()(torch.zeros(1, 1, 16, 16)).shape[1])
    torch.manual_seed(cfg.seed)
    head = build_head(cfg.head_name, in_channels=in_channels, n_classes=n_classes, crop=crop)
    model = EventModel(backbone, head, feature_margin=0 if frozen else int(cfg.feature_margin))
    model.to(device)
    if frozen:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        model.backbone.eval()
        net: nn.Module = model.head
        params = list(model.head.parameters())
    else:
        net = model
        params = list(model.parameters())
    if device == "cpu":
        net.to(memory_format=torch.channels_last)
    source = CropSource(feats, movie_norm, crop, head.margin, model.feature_margin)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    train_net = net
    if dist_info.enabled:  # BatchNorm over the global batch; DDP averages the gradients of the trained part
        ddp.use_global_batchnorm(net)
        train_net = ddp.ddp_wrap(net, device)
    epochs = cfg.n_epochs
    history: list[dict[str, Any]] = []
    hard_info: Optional[dict[str, Any]] = None
    train_coords, train_labels = pairs.train.coords, pairs.train.labels
    n_val = len(pairs.val)
    val_pick = np.arange(n_val)
    if cfg.epoch_val_pairs is not None and n_val > int(cfg.epoch_val_pairs):
        val_pick = np.sort(np.random.default_rng(cfg.seed + 7919).choice(n_val, int(cfg.epoch_val_pairs), replace=False))
    val_coords_epoch, val_labels_epoch = pairs.val.coords[val_pick], pairs.val.labels[val_pick]
    logger.info("train_head %s (%s head, %d epochs) on %d training pairs, device %s%s", cfg.strategy,
                cfg.head_name, epochs, len(train_labels), device,
                f"; process {dist_info.rank} of {dist_info.world_size}" if dist_info.enabled else "")
    t_train = time.time()
    best: Optional[tuple[float, int, dict[str, torch.Tensor]]] = None  # (val loss, epoch, head weights)
    for epoch in range(1, epochs + 1):
        if cfg.resample_negatives and epoch > 1 and hard_info is None and pairs.train_pool is not None:
            fresh = resample_negatives(CropSet(train_coords, train_labels), pairs.train_pool, rng)
            train_coords, train_labels = fresh.coords, fresh.labels
        def on_step(step: int, steps: int, _epoch: int = epoch) -> None:
            if progress is not None:
                progress({"stage": "train_head", "kind": "step", "epoch": _epoch, "epochs": epochs, "step": step,
                          "steps": steps, "elapsed_s": time.time() - t_start})

        rec = train_one_epoch(train_net, source, train_coords, train_labels, opt, cfg.batch_size, rng, device,
                              on_step, dist_info)
        if frozen:
            model.backbone.eval()
        val_m = None
        if dist_info.main:  # rank 0 validates; the others wait for its figures here
            val_logits = crop_logits(net, source, val_coords_epoch, cfg.eval_batch, device)
            val_m = {"val_loss": float(F.cross_entropy(torch.from_numpy(val_logits), torch.from_numpy(val_labels_epoch))),
                     "val_acc": float((val_logits.argmax(1) == val_labels_epoch).mean())}
        val_m = ddp.broadcast_object(val_m, dist_info)
        rec = {"stage": "train_head", "kind": "epoch", "epoch": epoch, "epochs": epochs, **rec, **val_m,
               "val_pairs": int(len(val_pick)),
               "elapsed_s": time.time() - t_start,
               "pairs_per_s": len(train_labels) * epoch / max(time.time() - t_train, 1e-9)}
        history.append(rec)
        emit(rec)
        if cfg.keep_best and (best is None or val_m["val_loss"] < best[0]):
            best = (val_m["val_loss"], epoch, {k: v.detach().clone() for k, v in net.state_dict().items()})
        if cfg.hard_negatives > 0 and epoch == max(1, epochs // 2) and epoch < epochs and pairs.train_pool is not None:
            mined = None
            if dist_info.main:
                mined = _mine(net, source, pairs, train_coords, train_labels, cfg, device, rng)
            train_coords, train_labels, mined_info = ddp.broadcast_object(mined, dist_info)
            hard_info = {"after_epoch": epoch, **mined_info}
            emit({"stage": "train_head", "kind": "hard_negatives", **hard_info, "elapsed_s": time.time() - t_start})
            if frozen:
                model.backbone.eval()
    train_time = time.time() - t_train
    if best is not None and best[1] != epochs:  # keep_best: back to the epoch with the lowest validation loss
        net.load_state_dict(best[2])
        emit({"stage": "train_head", "kind": "best_epoch", "epoch": best[1], "val_loss": best[0],
              "elapsed_s": time.time() - t_start})
    ddp.use_plain_batchnorm(net)

    logits = None
    if dist_info.main:  # the calibration (validation) and test logits: rank 0 only, shared with the others
        logits = (crop_logits(net, source, pairs.test.coords, cfg.eval_batch, device),
                  crop_logits(net, source, pairs.val.coords, cfg.eval_batch, device))
    test_logits, val_logits = ddp.broadcast_object(logits, dist_info)
    test_m = split_metrics(test_logits, pairs.test.labels, n_classes, pairs.class_names)
    val_m = split_metrics(val_logits, pairs.val.labels, n_classes, pairs.class_names)
    per_frame = _per_frame(pairs.test.coords[:, 0], pairs.test.labels, test_logits, movie.shape[0] - 1)
    metrics = {
        "strategy": cfg.strategy,
        "head": cfg.head_name,
        "features": feature_kind,
        "frozen_backbone": frozen,
        "criterion": cfg.dataset.criterion,
        "task": cfg.dataset.task,
        "split": pairs.split_info(),
        "dataset": pairs.to_dict(),
        "epochs": epochs,
        "train_time_s": train_time,
        "total_time_s": time.time() - t_start,
        "test": test_m,
        "val": val_m,
        "history": history,
        "hard_negatives": hard_info,
        "best_epoch": best[1] if best is not None else None,
        "calibration_inputs": {"val_logits": "val_logits.npy", "val_labels": "val_labels.npy"},
    }
    config = {
        "tap_config": tap_cfg,
        "head": cfg.head_name,
        "crop": crop,
        "margin": head.margin,
        "feature_margin": model.feature_margin,
        "bin": int(b),
        "in_channels": in_channels,
        "n_classes": n_classes,
        "class_names": pairs.class_names,
        "strategy": cfg.strategy,
        "frozen_backbone": frozen,
        "normalize": {"pmin": cfg.pmin, "pmax": cfg.pmax},
        "dataset": config_to_dict(cfg.dataset),
        "split": pairs.split_info(),
        "head_config": config_to_dict(cfg),
    }
    manifest = _manifest(movie, masks, cfg, device, str(tap_bundle) if tap_bundle else None,
                         {"strategy": cfg.strategy, "split": cfg.dataset.split, "bin": int(b),
                          "world_size": int(dist_info.world_size)})
    model.to("cpu")
    model.to(memory_format=torch.contiguous_format)
    model.eval()
    detector = EventDetector(model, config=config, manifest=manifest, metrics=metrics)
    if dist_info.main:
        detector.save(out_dir)
        _write_arrays(out_dir, val_logits, pairs.val.labels, test_logits, pairs.test.labels, pairs.test.coords,
                      per_frame)
    emit({"stage": "train_head", "kind": "done", "epochs": epochs, "elapsed_s": time.time() - t_start,
          "test_precision": test_m["precision"], "test_recall": test_m["recall"]})
    ddp.barrier(dist_info)  # the bundle is complete before any process returns
    return HeadResult(path=out_dir, detector=detector, pairs=pairs, metrics=metrics, history=history,
                      confusion=np.asarray(test_m["confusion_matrix"]), precision=np.asarray(test_m["precision"]),
                      recall=np.asarray(test_m["recall"]), val_logits=val_logits, val_labels=pairs.val.labels,
                      test_logits=test_logits, test_labels=pairs.test.labels, train_time_s=train_time)


def _mine(net: nn.Module, source: CropSource, pairs: CropPairs, coords: np.ndarray, labels: np.ndarray,
          cfg: HeadConfig, device: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Score the training split's negatives with the current head and swap in the hardest ones."""
    pool = pairs.train_pool
    neg = np.flatnonzero(pool.labels == 0)
    prob = np.zeros(len(pool), np.float64)
    logits = crop_logits(net, source, pool.coords[neg], cfg.eval_batch, device)
    prob[neg] = 1.0 - torch.softmax(torch.from_numpy(logits).double(), dim=1)[:, 0].numpy()
    new, info = mine_hard_negatives(CropSet(coords, labels), pool, prob, float(cfg.hard_negatives), rng)
    logger.info("hard negatives: %s", info)
    return new.coords, new.labels, info


def _per_frame(frames: np.ndarray, labels: np.ndarray, logits: np.ndarray, n_pairs: int):
    """Per-frame distributions of the test set (``tapcore.metrics.per_frame_distributions``), class 1 positive."""
    pred = logits.argmax(1) if len(logits) else np.zeros(0, np.int64)
    return M.per_frame_distributions(frames, labels, pred, positive=1, all_frames=range(n_pairs))


def _write_arrays(out_dir: Path, val_logits, val_labels, test_logits, test_labels, test_coords, per_frame) -> None:
    for name, arr in (("val_logits", val_logits.astype(np.float32)), ("val_labels", val_labels.astype(np.int64)),
                      ("test_logits", test_logits.astype(np.float32)), ("test_labels", test_labels.astype(np.int64)),
                      ("test_coords", test_coords.astype(np.int64))):
        buf = _io.BytesIO()
        np.save(buf, arr)
        atomic_write_bytes(out_dir / f"{name}.npy", buf.getvalue())
    if per_frame is not None:
        atomic_write_text(out_dir / "per_frame.csv", per_frame.to_csv(index=True))
