"""Compare strategies (A0..C1) and labelling criteria over repeats: the paper's Tables 2 and 5.

Each (criterion, strategy, repeat) trains one head with :func:`tapcore.events.train.train_head`.
The crop pairs of a criterion are built once (same split for every strategy and repeat; repeats
differ in the training seed: head initialisation, batch order and, for B and C, the random
backbone). Frozen features are computed once per backbone and reused: the TAP features serve every
A run, and the random backbone of repeat r serves both B0 and B1 of that repeat (loops run
repeat-major so one :class:`~tapcore.events.dense.FeatureCache` of three entries, made here and
passed to every run, keeps them).

Outputs in ``out_dir``: ``runs.csv`` (one row per run), ``table.csv`` / ``table.md`` / ``table.json``
(mean ± std of precision and recall per class), and ``runs/<criterion>/<strategy>/r<k>/`` head
bundles (kept only with ``keep_bundles``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from tapcore.binning import bin_masks, bin_movie, model_bin
from tapcore.config import config_to_dict
from tapcore.events.dataset import CRITERIA, build_crop_pairs
from tapcore.events.dense import FeatureCache
from tapcore.events.train import STRATEGIES, HeadConfig, HeadInputs, prepare_backbone, train_head
from tapcore.io import check_masks, normalize_movie
from tapcore.progress import ProgressFn
from tapcore.utils import atomic_write_json, atomic_write_text, environment_info, resolve_device, sha256_array

logger = logging.getLogger(__name__)

FEATURE_LABELS = {"A": "TAP", "B": "random (fixed)", "C": "random (trained)"}
HEAD_LABELS = {"linear": "linear", "resnet": "Resnet", "linear_invariant": "linear (invariant)",
               "resnet_order": "Resnet (order)", "resnet_lite": "Resnet lite (16 ch)",
               "resnet_lite_order": "Resnet lite (16 ch, order)"}
CRITERION_LABELS = {"any_both": "any size, both", "any_either": "any size, either", "size_either": "size filter, either"}


@dataclass
class CompareConfig:
    """Strategies x criteria x repeats (paper: 10 repeats)."""

    strategies: tuple[str, ...] = ("A0", "A1", "B0", "B1", "C0", "C1")  # paper's Table 2 groups
    criteria: tuple[str, ...] = ("size_either",)  # labelling criteria (Table 5 uses all three)
    repeats: int = 10  # runs per (criterion, strategy), seeds seed, seed+1, ...
    seed: int = 0  # first training seed
    head: HeadConfig = field(default_factory=HeadConfig)  # everything else (epochs, dataset, device, ...)
    keep_bundles: bool = False  # keep every run's head bundle under runs/

    def validate(self) -> "CompareConfig":
        if not self.strategies:
            raise ValueError("no strategies given; use e.g. --strategies A0,A1,B0,B1,C0,C1")
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad:
            raise ValueError(f"unknown strategy {', '.join(bad)}; use some of {', '.join(STRATEGIES)}")
        bad = [c for c in self.criteria if c not in CRITERIA]
        if bad or not self.criteria:
            raise ValueError(f"unknown labelling criterion {', '.join(bad) or '(none)'}; use some of {', '.join(CRITERIA)}")
        if int(self.repeats) < 1:
            raise ValueError(f"repeats must be at least 1, got {self.repeats}")
        self.head.validate()
        return self


@dataclass
class CompareResult:
    table: pd.DataFrame  # one row per (criterion, strategy): mean and std of precision/recall per class
    runs: pd.DataFrame  # one row per run
    out_dir: Path
    info: dict[str, Any]


def compare(movie: np.ndarray, masks: np.ndarray, tap_bundle: Optional[str | os.PathLike], cfg: CompareConfig,
            out_dir: str | os.PathLike, progress: Optional[ProgressFn] = None) -> CompareResult:
    """Train every (criterion, strategy, repeat) and write the mean ± std tables."""
    cfg = dataclasses.replace(cfg, strategies=tuple(cfg.strategies), criteria=tuple(cfg.criteria)).validate()
    masks = check_masks(masks, movie)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = cfg.head
    b = model_bin(tap_bundle)  # a binned TAP model: every strategy works on the same binned movie and masks
    movie_norm = normalize_movie(bin_movie(np.asarray(movie), b), base.pmin, base.pmax)
    binned_masks = bin_masks(masks, b)
    t0 = time.time()
    features = FeatureCache(size=3)  # TAP features + one random backbone + one spare
    tap_backbone = None
    if any(STRATEGIES[s][0] == "tap" for s in cfg.strategies):
        tap_backbone, tap_cfg = prepare_backbone(dataclasses.replace(base, strategy="A0"), tap_bundle)
    rows: list[dict[str, Any]] = []
    n_total = len(cfg.criteria) * cfg.repeats * len(cfg.strategies)
    done = 0
    for criterion in cfg.criteria:
        dcfg = dataclasses.replace(base.dataset, criterion=criterion)
        pairs = build_crop_pairs(binned_masks, dcfg, binned_masks.shape)
        for r in range(cfg.repeats):
            seed = cfg.seed + r
            b_backbone = None
            for strategy in cfg.strategies:
                hcfg = dataclasses.replace(base, strategy=strategy, seed=seed, dataset=dcfg)
                kind, _, frozen = STRATEGIES[strategy]
                if kind == "tap":
                    backbone = tap_backbone
                elif frozen:  # B: one random backbone per repeat, shared by B0 and B1
                    if b_backbone is None:
                        b_backbone = prepare_backbone(hcfg, tap_bundle)[0]
                    backbone = b_backbone
                else:  # C: a fresh random backbone, trained
                    backbone = None
                run_dir = out_dir / "runs" / criterion / strategy / f"r{r}"
                res = train_head(movie, masks, tap_bundle, hcfg, run_dir, None,
                                 inputs=HeadInputs(pairs, movie_norm, backbone, features))
                row = {"criterion": criterion, "strategy": strategy, "head": hcfg.head_name, "repeat": r, "seed": seed,
                       "epochs": hcfg.n_epochs, "train_time_s": res.train_time_s,
                       "train_pos": int((pairs.train.labels > 0).sum()), "test_pos": int((pairs.test.labels > 0).sum())}
                for k in range(pairs.n_classes):
                    row[f"prec_{k}"] = float(res.precision[k])
                    row[f"rec_{k}"] = float(res.recall[k])
                rows.append(row)
                n_classes, split_info = pairs.n_classes, pairs.split_info()
                _write_tables(rows, n_classes, split_info, cfg, movie, masks, tap_bundle, t0, out_dir)  # partial
                if not cfg.keep_bundles:
                    shutil.rmtree(run_dir, ignore_errors=True)
                done += 1
                if progress is not None:
                    progress({"stage": "compare", "kind": "step", "step": done, "steps": n_total, "criterion": criterion,
                              "strategy": strategy, "repeat": r, "elapsed_s": time.time() - t0,
                              **{k: v for k, v in row.items() if k.startswith(("prec_", "rec_"))}})
                logger.info("compare %s %s r%d: %s", criterion, strategy, r,
                            {k: round(v, 3) for k, v in row.items() if k.startswith(("prec_", "rec_"))})
    features.clear()
    table, runs, info = _write_tables(rows, n_classes, split_info, cfg, movie, masks, tap_bundle, t0, out_dir)
    return CompareResult(table, runs, out_dir, info)


def _write_tables(rows: list[dict[str, Any]], n_classes: int, split_info: dict[str, Any], cfg: CompareConfig,
                  movie: np.ndarray, masks: np.ndarray, tap_bundle: Any, t0: float, out_dir: Path):
    """Write runs.csv and table.csv/.md/.json from the runs so far (called after every run)."""
    runs = pd.DataFrame(rows)
    table = summarise(runs, n_classes)
    info = {
        "config": config_to_dict(cfg),
        "split": split_info,
        "repeats": cfg.repeats,
        "runs_done": len(rows),
        "movie_sha256": sha256_array(np.asarray(movie)),
        "masks_sha256": sha256_array(masks),
        "tap_bundle": str(tap_bundle) if tap_bundle else None,
        "total_time_s": time.time() - t0,
        **environment_info(resolve_device(cfg.head.device)),
    }
    atomic_write_text(out_dir / "runs.csv", runs.to_csv(index=False))
    atomic_write_text(out_dir / "table.csv", table.to_csv(index=False))
    atomic_write_text(out_dir / "table.md", to_markdown(table, info))
    atomic_write_json(out_dir / "table.json", {"info": info, "table": table.to_dict(orient="records"),
                                               "runs": runs.to_dict(orient="records")})
    return table, runs, info


def summarise(runs: pd.DataFrame, n_classes: int) -> pd.DataFrame:
    """Mean ± std per (criterion, strategy) of every per-class precision/recall (paper Table 2/5 layout)."""
    out = []
    for (criterion, strategy), g in runs.groupby(["criterion", "strategy"], sort=False):
        head = str(g["head"].iloc[0])
        row: dict[str, Any] = {
            "labelling criteria": CRITERION_LABELS.get(criterion, criterion),
            "positive samples": f"{int(g['train_pos'].iloc[0])}, {int(g['test_pos'].iloc[0])}",
            "group": strategy,
            "feature": FEATURE_LABELS[strategy[0]],
            "cls head": HEAD_LABELS.get(head, head),
            "runs": len(g),
        }
        for k in range(n_classes):
            for m in ("prec", "rec"):
                v = g[f"{m}_{k}"].to_numpy(float)
                v = v[np.isfinite(v)]  # precision is NaN (0/0) when a run predicts no sample of the class
                mean = float(v.mean()) if len(v) else float("nan")
                # one run has no spread: its std is NaN and the cell shows the value alone, never "±0.00"
                std = float(v.std()) if len(v) > 1 else float("nan")
                row[f"{m} {k}"] = f"{mean:.2f}±{std:.2f}" if len(v) > 1 else f"{mean:.2f}"
                row[f"{m}_{k}_mean"] = mean
                row[f"{m}_{k}_std"] = std
        out.append(row)
    return pd.DataFrame(out)


def to_markdown(table: pd.DataFrame, info: dict[str, Any]) -> str:
    """A Markdown table in the paper's layout plus the run conditions."""
    show = [c for c in table.columns if not c.endswith(("_mean", "_std"))]
    if table["labelling criteria"].nunique() == 1:
        show = [c for c in show if c not in ("labelling criteria",)]
    lines = ["| " + " | ".join(show) + " |", "|" + "---|" * len(show)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(str(row[c]) for c in show) + " |")
    split = info.get("split", {})
    spread = (f"Mean ± std over {info.get('repeats')} runs" if int(info.get("repeats") or 1) > 1
              else "One run per row (no std)")
    lines += ["", f"{spread} ({info.get('runs_done')} runs done in all); split: {split.get('split')} "
                  f"{split.get('fractions')}; device: {info.get('device')}; "
                  f"total time {info.get('total_time_s', 0):.0f} s."]
    return "\n".join(lines) + "\n"
