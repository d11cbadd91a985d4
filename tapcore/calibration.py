"""Confidence calibration of event heads: temperature scaling, ECE and reliability diagrams.

Paper (section 3, "Model calibration"; Guo et al. 2017): a trained head is over-confident; a single
temperature ``T > 0`` fitted on the validation split by minimising the negative log-likelihood (NLL)
of ``softmax(logits / T)`` fixes most of it without changing any prediction (dividing all logits by
the same positive number keeps their order, so every argmax is kept). Research code: T starts at
1.5, LBFGS, 50 iterations, ECE with 15 bins.

Ours:

- we optimise ``log T`` (so T stays positive) in float64 with LBFGS and a strong-Wolfe line search
  (default 100 iterations), and keep the fit only when it lowers the NLL (else T = 1);
- an optional **bias** ``b`` for rare events: ``b`` is added to every event-class logit (classes
  ``1..K-1``; for the binary task: the positive-class logit) after the temperature, so the model's
  event/no-event odds are multiplied by ``exp(b)``. It is fitted jointly with T by NLL. Unlike T alone
  it can move a borderline pair across the decision boundary;
- ECE with 15 equal-width bins in two flavours (:func:`ece`):

  - ``mode="top"`` (Guo et al.): confidence = the top-class probability, accuracy = fraction of
    samples whose argmax is right;
  - ``mode="positive"`` (the paper's reliability diagram, "accuracy for class 1"): confidence = the
    event probability ``1 - p(class 0)``, accuracy = fraction of samples that are events;

  bins are ``(lo, hi]`` with the first bin also holding confidence 0; ECE = sum over bins of
  ``count / N * |accuracy - confidence|``.

This module is the arithmetic on logits. Calibrating a head bundle (validation logits, the bias
choice, writing ``calibration.json``) lives with the event models: ``tapcore.events.calibrate``.
``calibration.json`` is validated by :func:`calibration_from_dict` (on load and on write) and applied
automatically by ``tapcore.predict`` (:meth:`Calibration.apply`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

ECE_MODES = ("top", "positive")
#: Paper / research code: 15 equal-width bins.
DEFAULT_BINS = 15
#: Research code: temperature scaling starts at T = 1.5.
INITIAL_TEMPERATURE = 1.5
#: Upper bound of the fitted temperature (ours). An unbounded fit on a head whose scores carry no
#: information sends T to ~1e10 and turns every probability map into a constant; the bound keeps the
#: ranking of scores and the fit warns instead.
MAX_TEMPERATURE = 100.0


@dataclass(frozen=True)
class Calibration:
    """Temperature scaling (+ optional event bias) of logits.

    ``calibrated = logits / temperature``, then ``bias`` added to the logits of classes ``1..K-1``.

    Attributes:
        temperature: T > 0 (1.0 = unchanged).
        bias: added to every event-class logit after scaling (0.0 = none).
        class_bias: optional per-class biases ``(K,)`` added after scaling instead of ``bias``
            (a ``calibration.json`` may hold ``bias`` as a list, one value per class).
    """

    temperature: float = 1.0
    bias: float = 0.0
    class_bias: Optional[tuple[float, ...]] = None

    def __post_init__(self) -> None:
        t, b = float(self.temperature), float(self.bias)
        if not math.isfinite(t) or t <= 0:
            raise ValueError(f"calibration temperature must be a finite number > 0, got {self.temperature!r}; "
                             "re-run tapcore calibrate")
        if not math.isfinite(b):
            raise ValueError(f"calibration bias must be a finite number, got {self.bias!r}; re-run tapcore calibrate")
        if self.class_bias is not None and (len(self.class_bias) < 2 or
                                            not all(math.isfinite(float(v)) for v in self.class_bias)):
            raise ValueError(f"per-class calibration bias must hold one finite number per class, got "
                             f"{self.class_bias!r}; re-run tapcore calibrate")

    def apply(self, logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Calibrated logits: ``logits (..., K, ...) / T`` plus ``bias`` on classes ``1..K-1`` along ``dim``."""
        out = logits / self.temperature
        if self.class_bias is not None:
            if len(self.class_bias) != out.shape[dim]:
                raise ValueError(f"calibration has {len(self.class_bias)} per-class biases but the model has "
                                 f"{out.shape[dim]} classes; re-run tapcore calibrate for this model")
            shift = torch.tensor(self.class_bias, dtype=out.dtype, device=out.device)
            view = [1] * out.dim()
            view[dim] = out.shape[dim]
            out = out + shift.view(view)
        elif self.bias != 0.0:
            shift = torch.full((out.shape[dim],), self.bias, dtype=out.dtype, device=out.device)
            shift[0] = 0.0
            view = [1] * out.dim()
            view[dim] = out.shape[dim]
            out = out + shift.view(view)
        return out

    def apply_numpy(self, logits: np.ndarray) -> np.ndarray:
        """:meth:`apply` on a numpy ``(N, K)`` array (float64 result)."""
        return self.apply(torch.as_tensor(np.asarray(logits, np.float64)), dim=-1).numpy()

    def to_dict(self) -> dict[str, Any]:
        if self.class_bias is not None:
            return {"temperature": float(self.temperature), "bias": [float(v) for v in self.class_bias]}
        return {"temperature": float(self.temperature), "bias": float(self.bias)}


def _check_logits(logits: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels).astype(np.int64, copy=False))
    if x.dim() != 2 or x.shape[1] < 2:
        raise ValueError(f"logits must be an (N, K) array with K >= 2 classes, got shape {tuple(x.shape)}")
    if y.dim() != 1 or len(y) != len(x):
        raise ValueError(f"labels must be an (N,) array matching the {len(x)} logits, got shape {tuple(y.shape)}")
    if len(x) == 0:
        raise ValueError("no samples to calibrate on; the validation split is empty")
    if not torch.isfinite(x).all():
        raise ValueError("logits contain NaN or infinite values; the model is broken, retrain it")
    if int(y.min()) < 0 or int(y.max()) >= x.shape[1]:
        raise ValueError(f"labels must lie in 0..{x.shape[1] - 1} for {x.shape[1]} classes, "
                         f"got {int(y.min())}..{int(y.max())}")
    return x, y


def nll(logits: Any, labels: Any, calibration: Optional[Calibration] = None) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(calibrated logits)``."""
    x, y = _check_logits(logits, labels)
    if calibration is not None:
        x = calibration.apply(x)
    return float(F.cross_entropy(x, y))


def fit_temperature(logits: Any, labels: Any, bias: bool = False, max_iter: int = 100,
                    init_temperature: float = INITIAL_TEMPERATURE) -> Calibration:
    """Fit temperature scaling (and optionally an event bias) by NLL with LBFGS on ``log T``.

    Args:
        logits: ``(N, K)`` validation logits of the model in eval mode.
        labels: ``(N,)`` true classes.
        bias: also fit the event-class bias ``b`` (rare events).
        max_iter: LBFGS iterations (strong-Wolfe line search).
        init_temperature: starting T (research code: 1.5).

    Returns:
        :class:`Calibration`; T = 1 (and b = 0) when the fit does not lower the NLL.
    """
    x, y = _check_logits(logits, labels)
    if not init_temperature > 0:
        raise ValueError(f"init_temperature must be > 0, got {init_temperature}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    log_t = torch.tensor([math.log(init_temperature)], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=bias)
    params = [log_t, b] if bias else [log_t]
    mask = torch.ones(x.shape[1], dtype=torch.float64)
    mask[0] = 0.0  # bias only on event classes 1..K-1
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=int(max_iter), line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-12)

    log_max = math.log(MAX_TEMPERATURE)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x * torch.exp(-log_t.clamp(max=log_max)) + b * mask, y)
        loss.backward()
        return loss

    opt.step(closure)
    t_fit, b_fit = float(torch.exp(log_t.clamp(max=log_max)).item()), float(b.item()) if bias else 0.0
    if t_fit >= MAX_TEMPERATURE * (1 - 1e-9):
        logger.warning("temperature reached its upper bound %.0f: the model's scores carry almost no information "
                       "on the validation split, so calibrated probabilities are nearly flat; train the head "
                       "longer or on more events, or fit with bias=True for rare events", MAX_TEMPERATURE)
    before = float(F.cross_entropy(x, y))
    if not (math.isfinite(t_fit) and math.isfinite(b_fit) and t_fit > 0):
        logger.warning("temperature fit diverged (T=%s, b=%s); keeping T = 1", t_fit, b_fit)
        return Calibration()
    fitted = Calibration(t_fit, b_fit)
    after = float(F.cross_entropy(fitted.apply(x), y))
    if after > before:
        logger.warning("temperature fit did not lower the NLL (%.5f -> %.5f); keeping T = 1", before, after)
        return Calibration()
    return fitted


def softmax_np(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(N, K)`` logits (float64)."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _confidence_correct(probs: Any, labels: Any, mode: str) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, np.float64)
    y = np.asarray(labels).astype(np.int64, copy=False)
    if mode not in ECE_MODES:
        raise ValueError(f"unknown ECE mode {mode!r}; use one of {', '.join(ECE_MODES)}")
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be an (N, K) array with K >= 2, got shape {p.shape}")
    if y.shape != (len(p),):
        raise ValueError(f"labels must be an (N,) array matching the {len(p)} probabilities, got shape {y.shape}")
    if mode == "top":
        return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)
    return 1.0 - p[:, 0], (y != 0).astype(np.float64)


def reliability(probs: Any, labels: Any, n_bins: int = DEFAULT_BINS, mode: str = "top") -> pd.DataFrame:
    """Reliability-diagram data: one row per equal-width confidence bin.

    Args:
        probs: ``(N, K)`` class probabilities.
        labels: ``(N,)`` true classes.
        n_bins: number of bins over [0, 1] (paper: 15).
        mode: ``"top"`` (top-label confidence vs accuracy) or ``"positive"`` (event probability
            ``1 - p0`` vs fraction of events).

    Returns:
        DataFrame with columns ``bin_lower, bin_upper, confidence`` (mean confidence in the bin),
        ``accuracy`` (mean correctness / event frequency), ``count``; empty bins have NaN
        confidence and accuracy and count 0. Bin i holds ``(lo, hi]``; bin 0 also holds 0.
    """
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf, correct = _confidence_correct(probs, labels, mode)
    n_bins = int(n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)  # (lo, hi] -> bin
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
        mean_acc = np.where(count > 0, acc_sum / np.maximum(count, 1), np.nan)
    return pd.DataFrame({"bin_lower": edges[:-1], "bin_upper": edges[1:], "confidence": mean_conf,
                         "accuracy": mean_acc, "count": count})


def ece(probs: Any, labels: Any, n_bins: int = DEFAULT_BINS, mode: str = "top") -> float:
    """Expected calibration error: ``sum_bins count/N * |accuracy - confidence|`` (see :func:`reliability`)."""
    table = reliability(probs, labels, n_bins, mode)
    n = int(table["count"].sum())
    if n == 0:
        raise ValueError("no samples: ECE needs at least one prediction")
    filled = table[table["count"] > 0]
    return float((filled["count"] / n * (filled["accuracy"] - filled["confidence"]).abs()).sum())


def reliability_dict(table: pd.DataFrame) -> dict[str, list]:
    """A reliability table as JSON-able lists (NaN -> None)."""
    out: dict[str, list] = {}
    for col in table.columns:
        values = table[col].to_numpy()
        if col == "count":
            out[col] = [int(v) for v in values]
        else:
            out[col] = [None if not np.isfinite(v) else float(v) for v in values]
    return out


def reliability_frame(data: dict[str, list]) -> pd.DataFrame:
    """Inverse of :func:`reliability_dict` (None -> NaN)."""
    df = pd.DataFrame(data)
    for col in ("confidence", "accuracy", "bin_lower", "bin_upper"):
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    return df


def calibration_report(logits: Any, labels: Any, calib: Calibration, n_bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """NLL, ECE (top and positive) and reliability data before and after ``calib`` (JSON-able)."""
    x, y = _check_logits(logits, labels)
    labels_np = y.numpy()
    p_before = softmax_np(x.numpy())
    p_after = softmax_np(calib.apply(x).numpy())
    report: dict[str, Any] = {
        "nll_before": float(F.cross_entropy(x, y)),
        "nll_after": float(F.cross_entropy(calib.apply(x), y)),
        "ece_before": {}, "ece_after": {}, "reliability_before": {}, "reliability_after": {},
        "accuracy_before": float((p_before.argmax(1) == labels_np).mean()),
        "accuracy_after": float((p_after.argmax(1) == labels_np).mean()),
    }
    for mode in ECE_MODES:
        for tag, p in (("before", p_before), ("after", p_after)):
            table = reliability(p, labels_np, n_bins, mode)
            report[f"reliability_{tag}"][mode] = reliability_dict(table)
            report[f"ece_{tag}"][mode] = ece(p, labels_np, n_bins, mode)
    return report


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def calibration_from_dict(data: Optional[dict[str, Any]], source: str = "calibration.json") -> Calibration:
    """THE validator of ``calibration.json``: check the dict and return its :class:`Calibration`
    (identity for None). ``bundle.load_bundle`` and ``bundle.write_calibration`` use it too.

    Required: ``temperature`` (a finite number > 0). Optional: ``bias`` (a finite number, a list of
    finite numbers, one per class, or null). Other keys (ECE, reliability data...) are free.
    """
    if data is None:
        return Calibration()
    if not isinstance(data, dict):
        raise ValueError(f"{source} must be a JSON object with a 'temperature', got {type(data).__name__}; "
                         "re-run tapcore calibrate")
    if "temperature" not in data:
        raise ValueError(f"{source} has no 'temperature'; fit it with tapcore calibrate")
    t = data["temperature"]
    if not _number(t) or float(t) <= 0:
        raise ValueError(f"{source}: temperature must be a finite number > 0, got {t!r}; re-run tapcore calibrate")
    raw = data.get("bias")
    values = raw if isinstance(raw, (list, tuple)) else [0.0 if raw is None else raw]
    if not values or not all(_number(v) for v in values):
        raise ValueError(f"{source}: calibration bias must be a finite number or a list of finite numbers, got "
                         f"{raw!r}; re-run tapcore calibrate")
    if isinstance(raw, (list, tuple)):
        return Calibration(float(t), 0.0, tuple(float(v) for v in raw))
    return Calibration(float(t), float(values[0]))
