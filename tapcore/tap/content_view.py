"""The content-view study (paper Appendix D, Table 6): TAP validation accuracy vs crop size and resolution.

A TAP model trained on ``base_crop`` (96) px crops is validated, without retraining, on crops of
other sizes (48, 192 px at the movie's own resolution) and on ``base_crop`` crops of the movie
rescaled by 0.5x and 2x. A larger *content view* (the movie area a crop covers, ``crop / resolution``
px) should give a higher accuracy. Each setting is repeated ``repeats`` times with a fresh random
set of validation pairs (mean +- sample standard deviation over the repeats).

Rescaling is done per crop, not on the whole movie: the ``crop / resolution`` px source square is
resized to ``crop`` px (area average when shrinking, bilinear when enlarging), the crop the
rescaled movie would give at that place, at a fraction of the memory.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch

from tapcore.config import config_to_dict
from tapcore.detector import TapFeatures
from tapcore.io import normalization
from tapcore.progress import ProgressFn

logger = logging.getLogger(__name__)

__all__ = ["ContentViewConfig", "ContentViewResult", "content_view", "write_content_view", "setting_name"]

#: Table 6 column names for the paper's settings ``(crop factor, resolution)`` relative to the training crop.
_PAPER_NAMES = {
    (1.0, 1.0): "same crop size",
    (0.5, 1.0): "halved crop size",
    (1.0, 2.0): "doubled resolution",
    (2.0, 1.0): "doubled crop size",
    (1.0, 0.5): "halved resolution",
}
_PAPER_ORDER = ["same crop size", "halved crop size", "doubled resolution", "doubled crop size", "halved resolution"]


@dataclass
class ContentViewConfig:
    """Content-view study options (paper's Table 6 defaults).

    Attributes:
        crops: crop sizes validated at the movie's resolution (48, 96, 192).
        resolutions: movie rescaling factors validated with ``base_crop`` crops (0.5, 1, 2).
        base_crop: the training crop size (96).
        repeats: validation runs per setting (3).
        samples: validation pairs per run.
        batch_size: pairs per forward pass.
        seed: seed of the first run (run ``r`` uses ``seed + r``).
        frames: ``(lo, hi)`` frame range of the validation pairs (None: the whole movie).
        dt: frame distance of a pair (1).
        device: "auto", "cpu" or "cuda[:N]".
    """

    crops: tuple[int, ...] = (48, 96, 192)
    resolutions: tuple[float, ...] = (0.5, 1.0, 2.0)
    base_crop: int = 96
    repeats: int = 3
    samples: int = 1000
    batch_size: int = 64
    seed: int = 0
    frames: Optional[tuple[int, int]] = None
    dt: int = 1
    device: str = "auto"

    def validate(self) -> None:
        if self.repeats < 1 or self.samples < 1 or self.batch_size < 1:
            raise ValueError("repeats, samples and batch_size must be >= 1")
        if any(int(c) < 8 for c in self.crops) or self.base_crop < 8:
            raise ValueError(f"crop sizes must be >= 8 px, got {self.crops} / base {self.base_crop}")
        if any(not float(r) > 0 for r in self.resolutions):
            raise ValueError(f"resolutions must be > 0, got {self.resolutions}")

    def settings(self) -> list[tuple[int, float]]:
        """``(crop, resolution)`` pairs: every crop at 1x, then ``base_crop`` at every other resolution."""
        out = [(int(c), 1.0) for c in self.crops]
        if (self.base_crop, 1.0) not in out and 1.0 in [float(r) for r in self.resolutions]:
            out.insert(0, (int(self.base_crop), 1.0))
        out += [(int(self.base_crop), float(r)) for r in self.resolutions if float(r) != 1.0]
        return out


def setting_name(crop: int, resolution: float, base_crop: int) -> str:
    """The paper's column name for a setting (``"halved crop size"``...) or ``"crop C at Rx"``."""
    key = (crop / base_crop, float(resolution))
    return _PAPER_NAMES.get(key, f"crop {crop} at {resolution:g}x")


@dataclass
class ContentViewResult:
    """Results of :func:`content_view`.

    Attributes:
        summary: one row per setting: ``setting, crop, resolution, content_view_px, mean, std, repeats, samples``.
        runs: one row per run: ``setting, crop, resolution, repeat, seed, acc, loss``.
        config: the options used.
        model_id: the TAP bundle's id (or None).
    """

    summary: pd.DataFrame
    runs: pd.DataFrame
    config: ContentViewConfig
    model_id: Optional[str] = None
    info: dict[str, Any] = field(default_factory=dict)

    def table6(self) -> pd.DataFrame:
        """One row ``"TAP validation accuracy"`` with a ``"mean ± std"`` column per setting (paper order first)."""
        names = list(self.summary["setting"])
        order = [n for n in _PAPER_ORDER if n in names] + [n for n in names if n not in _PAPER_ORDER]
        cells = {row.setting: f"{row.mean:.3f} ± {row.std:.3f}" for row in self.summary.itertuples()}
        return pd.DataFrame([{n: cells[n] for n in order}], index=["TAP validation accuracy"])

    def markdown(self) -> str:
        """Table 6 as a Markdown table."""
        t = self.table6()
        cols = list(t.columns)
        lines = ["| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols),
                 f"| {t.index[0]} | " + " | ".join(str(t.iloc[0][c]) for c in cols) + " |"]
        lines.append("")
        lines.append("| setting | crop (px) | resolution | content view (px of the movie) | mean | std | repeats |")
        lines.append("|---|---|---|---|---|---|---|")
        for r in self.summary.itertuples():
            lines.append(f"| {r.setting} | {r.crop} | {r.resolution:g}x | {r.content_view_px:g} | {r.mean:.4f} | "
                         f"{r.std:.4f} | {r.repeats} |")
        return "\n".join(lines) + "\n"


def content_view(movie: np.ndarray, model: Any, cfg: Optional[ContentViewConfig] = None,
                 progress: Optional[ProgressFn] = None) -> ContentViewResult:
    """Validate a TAP model at several crop sizes and resolutions (paper Table 6).

    Args:
        movie: raw validation movie ``(T, Y, X)`` (normalised here with the bundle's percentiles).
        model: a TAP bundle folder, or a :class:`tapcore.tap.model.TapModel`.
        cfg: :class:`ContentViewConfig`.
        progress: receives one ``"step"`` record per run and a ``"done"`` record.
    """
    from tapcore.io import normalize_movie
    from tapcore.tap.train import evaluate_pairs, val_pairs
    from tapcore.utils import resolve_device

    cfg = cfg if cfg is not None else ContentViewConfig()
    cfg.validate()
    device = resolve_device(cfg.device)
    from tapcore.binning import bin_movie, model_bin

    pmin, pmax, model_id, b = 1.0, 99.8, None, 1
    if isinstance(model, (str, os.PathLike)):
        tap = TapFeatures.load(model, device)
        b = model_bin(tap.config)  # a binned model sees the movie binned the same way
        pmin, pmax = normalization(tap.config)
        model, model_id = tap.model, tap.id
    model = model.to(device).eval()
    movie = np.asarray(movie)
    if movie.ndim != 3:
        raise ValueError(f"the validation movie must be (T, Y, X), got shape {movie.shape}")
    movie = bin_movie(movie, b)  # crop sizes below are in the model's (binned) pixels
    frames = tuple(cfg.frames) if cfg.frames is not None else (0, movie.shape[0])
    if not 0 <= frames[0] < frames[1] <= movie.shape[0]:
        raise ValueError(f"frame range {frames} is outside the movie's {movie.shape[0]} frames")
    settings = cfg.settings()
    for crop, res in settings:
        region = int(round(crop / res))
        if region > min(movie.shape[1:]):
            raise ValueError(f"setting crop {crop} px at {res:g}x needs {region} px squares, larger than the "
                             f"{movie.shape[1]} x {movie.shape[2]} px frames; drop it (--crops / --resolutions)")
    movie_t = torch.from_numpy(normalize_movie(movie, pmin, pmax)).to(device)  # (T, Y, X)

    runs = []
    total = len(settings) * cfg.repeats
    for i, (crop, res) in enumerate(settings):
        region = int(round(crop / res))
        name = setting_name(crop, res, cfg.base_crop)
        for r in range(cfg.repeats):
            seed = cfg.seed + r
            coords, labels = val_pairs(tuple(movie_t.shape), cfg.samples, region, frames, seed, cfg.dt, device)
            m = evaluate_pairs(model, movie_t, coords, labels, crop, resolution=res, dt=cfg.dt,
                               batch_size=cfg.batch_size)
            runs.append({"setting": name, "crop": crop, "resolution": res, "repeat": r, "seed": seed,
                         "acc": m["acc"], "loss": m["loss"]})
            if progress is not None:
                progress({"stage": "content_view", "kind": "step", "step": i * cfg.repeats + r + 1, "steps": total,
                          "setting": name, "val_acc": m["acc"]})
    runs_df = pd.DataFrame(runs)
    rows = []
    for (name, crop, res), g in runs_df.groupby(["setting", "crop", "resolution"], sort=False):
        acc = g["acc"].to_numpy()
        rows.append({"setting": name, "crop": int(crop), "resolution": float(res),
                     "content_view_px": float(round(crop / res)), "mean": float(acc.mean()),
                     "std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0, "repeats": int(len(acc)),
                     "samples": int(cfg.samples)})
    summary = pd.DataFrame(rows)
    if progress is not None:
        progress({"stage": "content_view", "kind": "done", "steps": total})
    return ContentViewResult(summary, runs_df, cfg, model_id, {"frames": list(frames), "device": device, "bin": b})


def write_content_view(result: ContentViewResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``content_view.csv`` (summary), ``content_view_runs.csv``, ``content_view.md`` and ``content_view.json``."""
    from tapcore.utils import atomic_write_json, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "summary": atomic_write_text(out / "content_view.csv", result.summary.to_csv(index=False)),
        "runs": atomic_write_text(out / "content_view_runs.csv", result.runs.to_csv(index=False)),
        "markdown": atomic_write_text(out / "content_view.md", result.markdown()),
    }
    paths["json"] = atomic_write_json(out / "content_view.json", {
        "model_id": result.model_id,
        "config": config_to_dict(result.config),
        "info": result.info,
        "table6": result.table6().iloc[0].to_dict(),
        "summary": result.summary.to_dict(orient="records"),
        "runs": result.runs.to_dict(orient="records"),
    })
    return paths
