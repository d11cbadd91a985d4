"""Cell event recognition on dense (TAP) features: crop-pair dataset, heads, strategies A0..C1, training.

Modules: ``dataset`` (crop pairs, labelling criteria, splits), ``heads`` (registry of event heads),
``model`` (backbone + head, bundle loading), ``dense`` (the one dense path: tiling, windows,
head correlation, frozen features), ``calibrate`` (calibrating a head bundle),
``train`` (``train_head``), ``compare`` (strategies x repeats tables). Nothing is imported here, so
``import tapcore.events`` is cheap; import the submodules you need.
"""
