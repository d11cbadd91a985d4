"""Named TAP pretraining presets: ``paper`` (the paper's network and settings) and ``cpu``.

A preset is a dict of :class:`~tapcore.tap.train.PretrainConfig` overrides (nested dicts for
``model`` and ``augment``). :func:`apply_preset` turns a preset plus the user's explicit options into a
validated config; the user's options always win. The chosen name is recorded in the config
(``PretrainConfig.preset``) and so in the TAP bundle.

- ``paper``: no overrides: the paper's / tarrow's values (96 px patches, batch 152, U-Net base 32,
  depth 3, 40 epochs of 50,000 pairs, lr 1e-4, all augmentations). Hours on a CPU; meant for a GPU.
- ``cpu``: binning 2 (half as many pixels per side: 4x fewer pixels), a small U-Net (base 8, depth 3),
  48 px patches (= 96 original pixels at bin 2), batch 32, lr 1e-3, 20 epochs of 10,000 pairs, and
  milder augmentation. **Initial values**, set from one measured fact: on hela01 binned by 2, base 8 /
  depth 3 / 48 px / lr 1e-3 with *all* augmentations stayed at chance after 123k pairs, while without
  augmentation it learned. The per-frame independent translation (2 px in a 48 px binned patch, the
  size of a frame-to-frame motion) and elastic deformation are the suspects, so ``cpu`` turns those
  off, keeps the joint rotation (it does not touch the time arrow) and narrows scaling, noise and
  intensity changes. The lead tunes these numbers by experiment (hela01 frames 0-31 / 32-39, psc01);
  they live in :data:`PRESETS` only.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Optional

__all__ = ["PRESETS", "PRESET_HELP", "DEFAULT_PRESET", "HEAD_CPU", "preset_names", "preset_overrides", "apply_preset",
           "default_preset"]

#: name -> PretrainConfig overrides (nested dicts for ``model`` / ``augment``). Tune values here only.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu": {
        "bin": 2,
        "patch": 48,
        "batch_size": 32,
        "lr": 1e-3,
        "epochs": 20,
        "samples_per_epoch": 10_000,
        "val_samples": 1024,
        "model": {"base_channels": 8, "depth": 3},
        "augment": {
            "enabled": True,
            "rotate": True,  # joint for both frames: keeps the time arrow
            "scale": (0.9, 1.1),
            "elastic_sigma": 0.0,
            "translate": 1.0,  # small independent shift: no drift shortcut, smaller than typical motion
            "noise": 0.02,
            "intensity_scale_global": (0.9, 1.1),
            # per-frame intensity changes stay at the paper's values: without them the network learns the
            # normalised background level as a clock, and on hela01 that trend reverses after frame 30
            # (measured: validation accuracy 0.39 on frames 32-39, i.e. worse than chance)
            "intensity_scale_frame": (0.95, 1.05),
            "intensity_shift_global": 0.05,
            "intensity_shift_frame": 0.02,
        },
    },
}

#: one plain line per preset (shown in the app and the CLI help)
PRESET_HELP: dict[str, str] = {
    "paper": "the paper's network and settings: best features, but hours to days without a GPU",
    "cpu": "for computers without a GPU: the movie binned 2x2, a small network, smaller patches and milder "
           "augmentation; far less computation (see the time estimate)",
}

#: the preset when nothing else is known
DEFAULT_PRESET = "paper"

#: The event-head recipe for CPUs (:class:`~tapcore.events.train.HeadConfig` overrides): the shipped demo
#: model's (``scripts/make_demo_model.py``) and the Event head page's "CPU settings". An order-aware lite
#: ResNet head on 32 px event-centred windows (division / death / nothing), windows reaching half a window
#: past the frame edge, 3 negatives per rare event drawn afresh every epoch, the best epoch kept;
#: docs/results.md ("Demo model") has the experiments behind each value. Tune values here only.
HEAD_CPU: dict[str, Any] = {
    "head": "resnet_lite_order",
    "epochs": 10,
    "batch_size": 32,
    "lr": 5e-4,
    "resample_negatives": True,
    "keep_best": True,
    "dataset": {"task": "three_class", "criterion": "any_both", "centre": 16, "crop": 32, "border": 16,
                "balance_ratio": 3, "pairs_per_frame": 1000},
}


def preset_names() -> list[str]:
    """The registered preset names."""
    return list(PRESETS)


def preset_overrides(name: str) -> dict[str, Any]:
    """A copy of a preset's overrides; unknown names raise ValueError listing the valid ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_preset(name: Optional[str], overrides: Optional[Mapping[str, Any]] = None):
    """A validated :class:`~tapcore.tap.train.PretrainConfig`: the defaults, then preset ``name``, then
    ``overrides`` (the user's explicit options, which win; nested dicts merge key by key).

    ``name=None`` means :data:`DEFAULT_PRESET`. A ``"preset"`` key inside ``overrides`` is ignored in
    favour of ``name`` (the config records ``name``). Unknown names or options raise ValueError.
    """
    from tapcore.config import config_from_dict, config_to_dict
    from tapcore.tap.train import PretrainConfig

    name = DEFAULT_PRESET if name is None else str(name)
    data = _merge(config_to_dict(PretrainConfig()), preset_overrides(name))
    user = dict(overrides or {})
    user.pop("preset", None)
    data = _merge(data, user)
    data["preset"] = name
    cfg = config_from_dict(PretrainConfig, data)
    cfg.validate()
    return cfg


def default_preset(device: str) -> str:
    """``"paper"`` on a GPU (``cuda...``), ``"cpu"`` otherwise."""
    return "paper" if str(device).startswith("cuda") else "cpu"
