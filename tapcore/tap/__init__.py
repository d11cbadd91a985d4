"""Time arrow prediction (TAP) pretraining: model, loss, on-device pair sampling/augmentation, training.

Modules: ``model`` (U-Net backbone + projection + time-equivariant head), ``loss`` (cross-entropy +
decorrelation), ``data`` (pair sampling and batched augmentation on the training device), ``train``
(:func:`tapcore.tap.train.pretrain`), ``content_view`` (the paper's content-view study, Table 6).
Import the submodules directly; nothing heavy happens at package import.
"""
