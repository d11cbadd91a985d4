"""Data-parallel training across processes (``torchrun``) for the training loops.

``tapcore pretrain ...`` started by ``torchrun --nproc-per-node N`` (one box) or with a multi-node
rendezvous (``--nnodes``, ``--rdzv-endpoint``) finds ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in
its environment; :func:`setup` then joins the process group (``nccl`` on CUDA, ``gloo`` on the CPU)
and pins each rank to ``cuda:LOCAL_RANK``. Without those variables nothing here changes anything:
the single-process path is the default.

What the loops do with it (TAP pretraining, :mod:`tapcore.tap.train`):

- the global batch ``batch_size`` is split into ``batch_size / world_size`` pairs per rank
  (:func:`local_batch`; it must divide evenly);
- every rank draws its own pairs from a generator seeded ``seed + rank`` (``dist_sampling="rank"``,
  the default), or every rank draws the same global batch from one generator seeded ``seed`` and
  keeps its slice (``dist_sampling="shared"``: the data of a single process with the same global
  batch, at ``world_size`` times the sampling cost);
- BatchNorm statistics are those of the global batch (:class:`GlobalBatchNorm2d`, an all-reduce of
  per-channel means and variances that works on gloo and nccl), so a step of N ranks computes the
  loss and gradient of one process with the same global batch; gradients are averaged by
  ``torch.nn.parallel.DistributedDataParallel``;
- rank 0 alone validates and writes metrics, checkpoints and the bundle while the others wait at a
  barrier; the checkpoint holds every rank's sampler state, so a resume (with the same number of
  processes) continues exactly.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

logger = logging.getLogger(__name__)

__all__ = ["DistInfo", "env_world", "setup", "local_batch", "GlobalBatchNorm2d", "use_global_batchnorm",
           "use_plain_batchnorm", "barrier", "all_mean", "gather_objects", "broadcast_flag", "broadcast_object",
           "ddp_wrap", "SliceSampler", "FeaturesForward", "batch_shares", "SINGLE"]

TIMEOUT = datetime.timedelta(minutes=30)  # rank 0 validates and writes while the others wait


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size`` processes (``local_rank`` on its box)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False  # True inside a torch.distributed process group

    @property
    def main(self) -> bool:
        """Rank 0: the process that validates and writes files."""
        return self.rank == 0


SINGLE = DistInfo()


def env_world() -> Optional[tuple[int, int, int]]:
    """``(rank, world_size, local_rank)`` from torchrun's environment, or None when not launched by it."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError as exc:
        raise ValueError(f"RANK/WORLD_SIZE/LOCAL_RANK must be whole numbers ({exc}); start the command with "
                         "torchrun, or unset them") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world} do not fit together; start the command with torchrun")
    return rank, world, local


def setup(device: str) -> tuple[DistInfo, str]:
    """Join the process group when launched by torchrun; returns ``(info, device of this rank)``.

    ``device`` is the resolved training device (``cpu``, ``cuda`` or ``cuda:N``). Under torchrun a
    CUDA device becomes ``cuda:LOCAL_RANK`` (one GPU per process). Idempotent: a group that already
    exists is reused (e.g. head training after pretraining in one process).
    """
    world = env_world()
    if world is None:
        return SINGLE, device
    rank, world_size, local_rank = world
    if device.startswith("cuda"):
        n = torch.cuda.device_count()
        if local_rank >= n:
            raise ValueError(f"process {local_rank} on this box has no GPU of its own ({n} visible); start at most "
                             f"{n} processes per box (torchrun --nproc-per-node {n})")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        kwargs: dict[str, Any] = {"backend": backend, "timeout": TIMEOUT}
        if backend == "nccl":
            kwargs["device_id"] = torch.device(device)
        dist.init_process_group(**kwargs)
        atexit.register(_teardown)
        logger.info("rank %d of %d joined the %s process group (%s)", rank, world_size, backend, device)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, enabled=True), device


def _teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_batch(batch_size: int, info: DistInfo) -> int:
    """Pairs per rank: ``batch_size / world_size``; ValueError when it does not divide evenly."""
    if batch_size % info.world_size:
        raise ValueError(f"batch_size {batch_size} is the global batch and must be divisible by the number of "
                         f"processes ({info.world_size}); use e.g. --batch-size "
                         f"{max(1, round(batch_size / info.world_size)) * info.world_size}")
    return batch_size // info.world_size


# -- BatchNorm over the global batch ------------------------------------------------------------
_SHARES: Optional[tuple[int, ...]] = None  # samples per rank of the current step when they may differ


@contextlib.contextmanager
def batch_shares(shares: "list[int] | tuple[int, ...]"):
    """Within the block, :class:`GlobalBatchNorm2d` weights each rank's statistics by its share of the
    global batch (``shares[r]`` samples on rank ``r``, known alike on every rank, e.g. the last, smaller
    batch of an epoch split over the ranks; the weights are the rows each layer sees, all-reduced).
    Equal shares take the unweighted path (no extra collective)."""
    global _SHARES
    old, _SHARES = _SHARES, tuple(int(n) for n in shares)
    try:
        yield
    finally:
        _SHARES = old


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics are those of the batch of all ranks together.

    Each rank computes the mean and (biased) variance of its share per channel; two differentiable
    all-reduces give the global mean and the global variance as the mean of ``var_r + (mean_r -
    mean)^2`` (equal shares per rank; no ``E[x^2] - E[x]^2`` cancellation). The backward pass
    all-reduces the statistics' gradients (``torch.distributed.nn``), so the gradient equals that of
    a single process holding the whole batch. Works on gloo (CPU) and nccl (CUDA), unlike
    ``nn.SyncBatchNorm`` which refuses CPU tensors. Running statistics use the unbiased global
    variance, as ``BatchNorm2d`` does; eval mode is plain ``BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, C, H, W)
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        world = dist.get_world_size()
        xf = x.float()
        shares = _SHARES
        if shares is not None and len(set(shares)) > 1:  # unequal shares: weight each rank by its rows
            # the rows this layer sees per rank (a model may feed it several rows per sample): one more all-reduce
            rows = torch.tensor([float(x.shape[0])], device=x.device)
            dist.all_reduce(rows)
            total = float(rows.item())
            n_total = total * x.shape[2] * x.shape[3]
            if x.shape[0]:
                var_r, mean_r = torch.var_mean(xf, dim=(0, 2, 3), correction=0)
            else:  # an empty share: zero weight (kept in the graph so that backward runs on every rank)
                var_r = mean_r = xf.sum(dim=(0, 2, 3)) * 0
            w = x.shape[0] / total
            mean = all_reduce(mean_r * w)
            var = all_reduce((var_r + (mean_r - mean) ** 2) * w)
        else:
            n_total = x.shape[0] * x.shape[2] * x.shape[3] * world
            var_r, mean_r = torch.var_mean(xf, dim=(0, 2, 3), correction=0)  # (C,), (C,)
            mean = all_reduce(mean_r) / world
            var = all_reduce(var_r + (mean_r - mean) ** 2) / world
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                unbiased = var.detach() * (n_total / max(n_total - 1, 1))
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the gradients over ranks (the adjoint of a sum-all-reduce)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.contiguous().clone()
        dist.all_reduce(out)
        return out


def _swap_bn(module: nn.Module, to: type) -> nn.Module:
    """Re-class every BatchNorm2d in place (same parameters, buffers and state-dict keys)."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d) and type(m) in (nn.BatchNorm2d, GlobalBatchNorm2d):
            m.__class__ = to
    return module


def use_global_batchnorm(module: nn.Module) -> nn.Module:
    """Make every ``BatchNorm2d`` of ``module`` a :class:`GlobalBatchNorm2d` (in place)."""
    return _swap_bn(module, GlobalBatchNorm2d)


def use_plain_batchnorm(module: nn.Module) -> nn.Module:
    """Undo :func:`use_global_batchnorm` (the returned model is a plain one again)."""
    return _swap_bn(module, nn.BatchNorm2d)


# -- small collectives (no-ops in a single process) ----------------------------------------------
def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of ``t`` over ranks (a copy; ``t`` itself is untouched)."""
    if not info.enabled or info.world_size == 1:
        return t
    out = t.detach().clone()
    dist.all_reduce(out)
    return out / info.world_size


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (list indexed by rank) on every rank."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """Rank 0's ``flag`` on every rank (e.g. its stop-on-time-budget decision)."""
    if not info.enabled:
        return bool(flag)
    box = [bool(flag)]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (the other ranks wait here until rank 0 gets to it)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def ddp_wrap(module: nn.Module, device: str) -> nn.Module:
    """``DistributedDataParallel`` around ``module`` (its buffers stay equal on all ranks by GlobalBatchNorm2d)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.device(device).index] if device.startswith("cuda") else None
    return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)


class SliceSampler:
    """``dist_sampling="shared"``: draw the global batch from ``sampler`` (seeded alike on every rank)
    and keep this rank's slice ``[rank * b, (rank + 1) * b)``."""

    def __init__(self, sampler: Any, info: DistInfo):
        self.sampler, self.info = sampler, info

    @property
    def gen(self) -> torch.Generator:
        return self.sampler.gen

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.sampler.sample(batch * self.info.world_size)
        lo = self.info.rank * batch
        return x[lo:lo + batch], y[lo:lo + batch]


class FeaturesForward(nn.Module):
    """``forward(x) = model.forward_with_features(x)``, so DDP sees the call the loop makes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model.forward_with_features(x)

