"""TAP model: shapes at any size, exact time equivariance of the head, interface of the backbone."""

from __future__ import annotations

import pytest
import torch

from tapcore.tap.model import TapConfig, TapModel, TimeEquivariantHead

SMALL = TapConfig(base_channels=4, depth=2, features=8, head_channels=8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_default_architecture_matches_the_paper():
    model = TapModel()
    unet = model.backbone.unet
    # 32/64/128/256 channels on the way down, 3 down-samplings, 32 output features
    assert [blk[0].out_channels for blk in unet.down] == [32, 64, 128, 256]
    assert [blk[0].out_channels for blk in unet.up] == [128, 64, 32]
    assert unet.out.out_channels == 32
    assert isinstance(model.backbone.projection[1], torch.nn.BatchNorm2d)
    assert len(model.head.blocks) == 2 and model.head.blocks[0].local.out_channels == 32


@pytest.mark.parametrize("size", [(16, 16), (21, 35), (8, 3)])
def test_any_input_size_gives_features_at_input_resolution(size):
    torch.manual_seed(0)
    model = TapModel(SMALL).eval()
    x = torch.randn(3, 2, 1, *size)  # (B, 2, 1, H, W)
    logits, z = model.forward_with_features(x)
    assert logits.shape == (3, 2)
    assert z.shape == (3, 2, 8, *size)
    assert torch.isfinite(logits).all() and torch.isfinite(z).all()
    feats = model.features(x[:, 0])  # (B, C, H, W)
    assert torch.equal(feats, model.backbone(x[:, 0]))
    assert torch.allclose(feats, z[:, 0], atol=1e-6)
    assert torch.equal(model(x), logits)


def test_padding_does_not_change_features_inside_a_multiple_of_8_input():
    """An input that is already a multiple of 2**depth goes through unpadded (same result as padding-free UNet)."""
    torch.manual_seed(0)
    model = TapModel(SMALL).eval()
    x = torch.randn(2, 1, 16, 24)
    direct = model.backbone.projection(model.backbone.unet(x))
    assert torch.equal(model.backbone(x), direct)


@pytest.mark.parametrize("cfg, shape", [(TapConfig(), (3, 2, 1, 16, 16)), (SMALL, (1, 2, 1, 9, 13)),
                                        (SMALL, (8, 2, 1, 24, 16))])
def test_swapping_frames_swaps_logits_exactly_in_eval_mode(cfg, shape):
    torch.manual_seed(1)
    model = TapModel(cfg).eval()  # first case: the paper's configuration
    x = torch.randn(*shape)
    with torch.no_grad():
        logits = model(x)
        swapped = model(x.flip(1))
    assert torch.equal(swapped, logits.flip(1))
    assert not torch.equal(logits[:, 0], logits[:, 1])  # not trivially symmetric


def test_swapping_frames_swaps_logits_exactly_in_train_mode():
    """Train-mode BatchNorm statistics are per time slot, so they swap with the frames."""
    torch.manual_seed(2)
    model = TapModel(SMALL).train()
    x = torch.randn(5, 2, 1, 16, 24)
    logits, z = model.forward_with_features(x)
    swapped, z_swapped = model.forward_with_features(x.flip(1))
    assert torch.equal(swapped, logits.flip(1))
    assert torch.equal(z_swapped, z.flip(1))


def test_head_alone_is_exactly_equivariant():
    torch.manual_seed(3)
    head = TimeEquivariantHead(TapConfig(features=6, head_channels=5))
    z = torch.randn(7, 2, 6, 5, 9)  # (B, 2, C, H, W)
    assert torch.equal(head(z.flip(1)), head(z).flip(1))


def test_bad_shapes_and_config_raise_value_error():
    model = TapModel(SMALL)
    with pytest.raises(ValueError, match=r"\(B, T, 1, H, W\)"):
        model(torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        model.features(torch.zeros(16, 16))
    with pytest.raises(ValueError, match="base_channels"):
        TapModel(TapConfig(base_channels=0))
