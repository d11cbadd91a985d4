"""TAP loss: decorrelation loss against hand computations; CE + lambda x decorrelation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tapcore.tap.loss import decorrelation_loss, tap_loss


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _reference(z: np.ndarray, tau: float) -> float:
    """Plain-loop reference: Pearson correlation of channels, row softmax, -(1/C) sum log a_ii, mean over frames."""
    losses = []
    for frame in z:  # (C, H, W)
        v = frame.reshape(frame.shape[0], -1).astype(np.float64)
        v = v - v.mean(axis=1, keepdims=True)
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        c = v.shape[0]
        total = 0.0
        for i in range(c):
            logits = [float(v[i] @ v[j]) / tau for j in range(c)]
            total += -(logits[i] - math.log(sum(math.exp(s) for s in logits)))
        losses.append(total / c)
    return float(np.mean(losses))


def test_duplicated_channels_give_log_c():
    # two identical channels over 2 pixels: correlation 1 everywhere -> a_ii = 1/2 -> loss = log 2
    z = torch.tensor([[[[1.0, -1.0]], [[1.0, -1.0]]]])  # (1, C=2, 1, 2)
    assert decorrelation_loss(z, tau=0.2).item() == pytest.approx(math.log(2), abs=1e-6)


def test_orthogonal_channels_give_the_hand_value():
    # centred, orthogonal channels: corr = identity -> a_ii = e^5 / (e^5 + 1)
    z = torch.tensor([[[[1.0, -1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0, -1.0]]]])  # (1, 2, 1, 4)
    expected = math.log(1 + math.exp(-1 / 0.2))
    assert decorrelation_loss(z, tau=0.2).item() == pytest.approx(expected, abs=1e-6)


def test_matches_reference_on_a_random_tensor():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 4, 3, 5)).astype(np.float32)  # (N, C, H, W)
    for tau in (0.2, 1.0):
        got = decorrelation_loss(torch.from_numpy(z), tau=tau).item()
        assert got == pytest.approx(_reference(z, tau), rel=1e-5)


def test_lower_for_decorrelated_than_for_duplicated_channels():
    torch.manual_seed(0)
    base = torch.randn(2, 1, 8, 8)
    duplicated = base.repeat(1, 6, 1, 1)  # (2, 6, 8, 8): 6 copies of one channel
    independent = torch.randn(2, 6, 8, 8)
    assert decorrelation_loss(independent) < decorrelation_loss(duplicated) - 0.5
    assert decorrelation_loss(duplicated).item() == pytest.approx(math.log(6), abs=1e-5)


def test_five_d_features_are_folded_over_time():
    torch.manual_seed(1)
    z = torch.randn(3, 2, 4, 5, 5)  # (B, T, C, H, W)
    assert torch.allclose(decorrelation_loss(z), decorrelation_loss(z.flatten(0, 1)))


def test_tap_loss_is_ce_plus_lambda_decorr_and_has_gradients():
    torch.manual_seed(2)
    logits = torch.randn(5, 2, requires_grad=True)
    target = torch.tensor([0, 1, 1, 0, 1])
    z = torch.randn(5, 2, 4, 6, 6, requires_grad=True)
    out = tap_loss(logits, target, z, lam=0.01, tau=0.2)
    ce = F.cross_entropy(logits, target)
    assert out.ce.item() == pytest.approx(ce.item(), abs=1e-6)
    assert out.decorr.item() == pytest.approx(decorrelation_loss(z).item(), abs=1e-6)
    assert out.total.item() == pytest.approx(ce.item() + 0.01 * out.decorr.item(), abs=1e-6)
    out.total.backward()
    assert logits.grad is not None and z.grad is not None and z.grad.abs().sum() > 0


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="tau"):
        decorrelation_loss(torch.zeros(1, 2, 3, 3), tau=0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        decorrelation_loss(torch.zeros(2, 3))


def test_decorrelation_is_computed_in_float32_under_autocast():
    torch.manual_seed(3)
    z = torch.randn(2, 4, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = decorrelation_loss(z)
    assert inside.dtype == torch.float32
    assert inside.item() == pytest.approx(decorrelation_loss(z).item(), abs=1e-6)
