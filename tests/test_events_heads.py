"""Event heads: registry, shapes, invariances and the encode/centre/combine/fc structure."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tapcore.events.heads import HEADS, build_head
from tapcore.events.model import EventModel

C, K, CROP = 8, 3, 12


def count_parameters(module: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _eval_head(name: str, seed: int = 0):
    torch.manual_seed(seed)
    head = build_head(name, in_channels=C, n_classes=K, crop=CROP)
    # non-trivial BatchNorm statistics so eval mode is not the identity
    for m in head.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return head.eval()


@pytest.mark.parametrize("name", list(HEADS))
def test_forward_shape_and_finite(name):
    head = _eval_head(name)
    z = torch.randn(4, 2, C, head.window, head.window)
    out = head(z)
    assert out.shape == (4, K)
    assert torch.isfinite(out).all()
    head.train()
    out = head(z)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())


def test_margins_and_combine():
    assert build_head("linear").margin == 0 and build_head("linear").combine == "concat"
    assert build_head("linear_invariant").combine == "mean"
    assert build_head("resnet").margin == 3 and build_head("resnet").combine == "mean"
    assert build_head("resnet_order").combine == "concat"
    lite = build_head("resnet_lite")
    assert lite.margin == 3 and lite.combine == "mean" and lite.out_channels == 16


def test_resnet_parameter_count_matches_paper():
    # paper: about 0.39 M parameters at crop 48, 32 input channels, 2 classes
    n = count_parameters(build_head("resnet", in_channels=32, n_classes=2, crop=48))
    assert n == 18432 + 128 + 2 * 36864 + 256 + 2 * 64 * 48 * 48 + 2
    assert 0.38e6 < n < 0.40e6
    assert count_parameters(build_head("linear", 32, 2, 48)) == 2 * (2 * 32 * 48 * 48) + 2


def test_resnet_lite_is_the_resnet_at_16_channels():
    # same layers as the paper's head at 16 instead of 64 channels: conv 32->16, block 2 x (16->16), BN, fc
    n = count_parameters(build_head("resnet_lite", in_channels=32, n_classes=2, crop=48))
    assert n == 32 * 16 * 9 + 2 * 16 + 2 * (16 * 16 * 9 + 2 * 16) + 2 * 16 * 48 * 48 + 2
    # its encoder costs ~10x fewer multiply-adds per pixel than the paper's
    def macs(head):
        return sum(m.in_channels * m.out_channels * 9 for m in head.modules() if isinstance(m, nn.Conv2d))
    assert macs(build_head("resnet", 32)) == 10 * macs(build_head("resnet_lite", 32))


def test_unknown_name_lists_valid():
    with pytest.raises(ValueError) as err:
        build_head("transformer")
    for name in HEADS:
        assert name in str(err.value)


@pytest.mark.parametrize("name", ["linear_invariant", "resnet", "resnet_lite"])
def test_time_invariant_heads_ignore_order(name):
    head = _eval_head(name)
    z = torch.randn(5, 2, C, head.window, head.window)
    assert torch.allclose(head(z), head(z.flip(1)), atol=1e-5)


@pytest.mark.parametrize("name", ["linear", "resnet_order"])
def test_order_aware_heads_see_order(name):
    head = _eval_head(name)
    z = torch.randn(5, 2, C, head.window, head.window)
    assert not torch.allclose(head(z), head(z.flip(1)), atol=1e-4)


@pytest.mark.parametrize("name", list(HEADS))
def test_head_is_fc_of_combined_centre_of_encode(name):
    head = _eval_head(name)
    b, m = 3, head.margin
    z = torch.randn(b, 2, C, head.window, head.window)
    e = head.encode(z.flatten(0, 1))[..., m:m + CROP, m:m + CROP].reshape(b, 2, -1, CROP, CROP)
    e = e.mean(1, keepdim=True) if head.combine == "mean" else e
    expected = head.fc(e.flatten(1))
    assert torch.allclose(head(z), expected, atol=1e-5)
    # kernels() is the fc weight as (K, P, D, crop, crop)
    kern = head.kernels()
    assert kern.shape == (K, head.parts, head.out_channels, CROP, CROP)
    assert torch.allclose(expected, (e.unsqueeze(1) * kern.unsqueeze(0)).sum((2, 3, 4, 5)) + head.fc.bias, atol=1e-4)


@pytest.mark.parametrize("name", ["resnet", "resnet_order"])
def test_encode_of_bigger_map_agrees_on_centre(name):
    """Encoding a whole zero-padded map and cutting the centre equals encoding the window."""
    head = _eval_head(name)
    m = head.margin
    big = torch.randn(2, C, 40, 50)
    padded = F.pad(big, (m, m, m, m))  # dense prediction pads by `margin` zeros
    full = head.encode(padded)[..., m:m + 40, m:m + 50]  # (2, D, 40, 50)
    for y0, x0 in [(0, 0), (5, 17), (40 - CROP, 50 - CROP)]:
        win = padded[..., y0:y0 + CROP + 2 * m, x0:x0 + CROP + 2 * m]
        local = head.encode(win)[..., m:m + CROP, m:m + CROP]
        assert torch.allclose(local, full[..., y0:y0 + CROP, x0:x0 + CROP], atol=1e-5)


def test_event_model_forward_uses_centre_window():
    torch.manual_seed(0)
    backbone = nn.Conv2d(1, C, 3, padding=1)
    head = build_head("resnet", in_channels=C, n_classes=2, crop=CROP).eval()
    model = EventModel(backbone, head, feature_margin=4).eval()
    assert model.input_size == CROP + 6 + 8
    x = torch.randn(2, 2, 1, model.input_size, model.input_size)
    z = model.forward_features(x)
    assert z.shape == (2, 2, C, model.input_size, model.input_size)
    assert torch.allclose(model(x), head(z[..., 4:-4, 4:-4]), atol=1e-6)
