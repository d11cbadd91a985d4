"""TAP pair sampling and augmentation: joint transforms are joint, per-frame ones are not, conventions hold."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tapcore.tap.data import (AugmentConfig, AugmentParams, PairSampler, augment_intensity, build_grid,
                              extract_pairs, flip_order, gather_windows, reflect_index, warp_pairs, window_size)

JOINT_ONLY = AugmentConfig(translate=0.0, intensity_scale_frame=(1.0, 1.0), intensity_shift_frame=0.0, noise=0.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _blob(size: int, cy: float, cx: float, sigma: float = 1.5) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    return torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))


def _centroid(img: torch.Tensor) -> tuple[float, float]:
    yy, xx = torch.meshgrid(torch.arange(img.shape[0], dtype=torch.float32),
                            torch.arange(img.shape[1], dtype=torch.float32), indexing="ij")
    w = img.clamp(min=0)
    return float((w * yy).sum() / w.sum()), float((w * xx).sum() / w.sum())


def test_reflect_index_mirrors_at_both_borders():
    idx = torch.arange(-3, 8)
    assert reflect_index(idx, 4).tolist() == [3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1]


def test_gather_windows_matches_slicing_and_takes_frame_t_plus_dt():
    movie = torch.arange(5 * 10 * 12, dtype=torch.float32).view(5, 10, 12)
    w = gather_windows(movie, torch.tensor([0, 2]), torch.tensor([1, 3]), torch.tensor([2, 4]), 6, dt=2)
    assert w.shape == (2, 2, 6, 6)
    assert torch.equal(w[0, 0], movie[0, 1:7, 2:8]) and torch.equal(w[0, 1], movie[2, 1:7, 2:8])
    assert torch.equal(w[1, 1], movie[4, 3:9, 4:10])


def test_identity_parameters_reproduce_the_centre_patch():
    torch.manual_seed(0)
    windows = torch.rand(3, 2, 40, 40)
    out = warp_pairs(windows, build_grid(AugmentParams.identity(3), 32, 40))
    assert torch.allclose(out, windows[:, :, 4:36, 4:36], atol=1e-4)


def test_rotation_is_counter_clockwise_and_scaling_magnifies():
    size, patch = 64, 48
    centre = (size - 1) / 2
    img = _blob(size, centre, centre + 10)  # a dot 10 px right of the centre
    windows = img.expand(1, 2, size, size).contiguous()
    params = AugmentParams.identity(1)
    params.angle[:] = math.pi / 2
    out = warp_pairs(windows, build_grid(params, patch, size))
    cy, cx = _centroid(out[0, 0])
    c = (patch - 1) / 2
    assert cy == pytest.approx(c - 10, abs=0.2) and cx == pytest.approx(c, abs=0.2)  # moved up: CCW on screen
    params = AugmentParams.identity(1)
    params.scale[:] = 1.25
    out = warp_pairs(windows, build_grid(params, patch, size))
    cy, cx = _centroid(out[0, 0])
    assert cy == pytest.approx(c, abs=0.2) and cx == pytest.approx(c + 12.5, abs=0.3)


def test_independent_translation_moves_each_frame_by_its_own_shift():
    size, patch = 48, 32
    centre = (size - 1) / 2
    windows = _blob(size, centre, centre).expand(1, 2, size, size).contiguous()
    params = AugmentParams.identity(1)
    params.shift[0, 1] = torch.tensor([0.0, 3.0])  # frame 1 samples 3 px further right
    out = warp_pairs(windows, build_grid(params, patch, size))
    c = (patch - 1) / 2
    assert _centroid(out[0, 0])[1] == pytest.approx(c, abs=0.1)
    assert _centroid(out[0, 1])[1] == pytest.approx(c - 3, abs=0.1)


def test_joint_augmentations_keep_identical_frames_identical():
    """Rotation, scaling and elastic deformation (and global intensity) are the same for both frames."""
    torch.manual_seed(0)
    frame = torch.rand(1, 60, 70)
    movie = frame.expand(4, 60, 70).contiguous()  # every frame identical
    sampler = PairSampler(movie, patch=24, augment=JOINT_ONLY, generator=_gen(1))
    x, y = sampler.sample(16)
    assert x.shape == (16, 2, 1, 24, 24) and y.shape == (16,)
    assert torch.equal(x[:, 0], x[:, 1])
    # and the joint transforms did change the pairs (not an identity by accident)
    plain = PairSampler(movie, patch=24, augment=AugmentConfig(enabled=False), generator=_gen(1)).sample(16)[0]
    assert not torch.allclose(x, plain, atol=1e-2)


def test_per_frame_translation_and_intensity_make_frames_differ():
    torch.manual_seed(0)
    movie = torch.rand(1, 60, 70).expand(4, 60, 70).contiguous()
    for aug in (AugmentConfig(translate=2.0, intensity_scale_frame=(1, 1), intensity_shift_frame=0.0, noise=0.0),
                AugmentConfig(translate=0.0, intensity_scale_frame=(0.9, 1.1), intensity_shift_frame=0.0, noise=0.0),
                AugmentConfig(translate=0.0, intensity_scale_frame=(1, 1), intensity_shift_frame=0.0, noise=0.05)):
        x, _ = PairSampler(movie, patch=24, augment=aug, generator=_gen(2)).sample(8)
        diff = (x[:, 0] - x[:, 1]).abs().flatten(1).amax(1)  # (B,)
        assert (diff > 1e-3).all()


def test_joint_rotation_is_applied_to_both_frames_of_a_moving_dot():
    """Frame t+1 = frame t shifted right; after a joint 90 degree rotation the motion points up in both."""
    size, patch = 64, 40
    c0 = (size - 1) / 2
    windows = torch.stack([_blob(size, c0, c0), _blob(size, c0, c0 + 4)])[None]  # (1, 2, S, S)
    params = AugmentParams.identity(1)
    params.angle[:] = math.pi / 2
    out = warp_pairs(windows, build_grid(params, patch, size))
    (y0, x0), (y1, x1) = _centroid(out[0, 0]), _centroid(out[0, 1])
    assert y1 - y0 == pytest.approx(-4, abs=0.2) and x1 - x0 == pytest.approx(0, abs=0.2)


def test_intensity_formula_and_noise():
    x = torch.ones(2, 2, 4, 4)
    params = AugmentParams.identity(2)
    params.gain_global[:] = torch.tensor([2.0, 1.0])
    params.gain_frame[:] = torch.tensor([[1.0, 0.5], [1.0, 1.0]])
    params.offset_global[:] = torch.tensor([0.1, 0.0])
    params.offset_frame[:] = torch.tensor([[0.0, 0.2], [0.0, -0.3]])
    out = augment_intensity(x, params)
    assert torch.allclose(out[:, :, 0, 0], torch.tensor([[2.1, 1.3], [1.0, 0.7]]))
    params.noise_std[:] = torch.tensor([0.0, 0.5])
    noisy = augment_intensity(x, params, _gen(0))
    assert torch.equal(noisy[0], out[0])  # std 0 -> no noise
    assert not torch.equal(noisy[1, 0], noisy[1, 1])  # independent noise per frame
    assert 0.3 < float((noisy[1] - out[1]).std()) < 0.7


def test_order_flip_and_label_say_which_frame_came_first():
    # frame t is constant t: the earlier frame is darker; the label is the position of the earlier frame
    movie = torch.arange(6, dtype=torch.float32).view(6, 1, 1).expand(6, 30, 30).contiguous()
    x, y = PairSampler(movie, patch=16, augment=AugmentConfig(enabled=False), generator=_gen(3)).sample(64)
    first = x[:, :, 0, 0, 0]  # (B, 2)
    assert torch.equal((first[:, 1] < first[:, 0]).long(), y)
    assert 10 < int(y.sum()) < 54  # both orders occur
    assert torch.equal(flip_order(first, torch.ones(64, dtype=torch.long)), first.flip(1))


def test_sampler_is_deterministic_for_a_seed_and_respects_the_frame_range():
    movie = torch.arange(10, dtype=torch.float32).view(10, 1, 1).expand(10, 40, 40).contiguous()
    a = PairSampler(movie, patch=16, augment=AugmentConfig(enabled=False), frames=(6, 10), generator=_gen(5))
    b = PairSampler(movie, patch=16, augment=AugmentConfig(enabled=False), frames=(6, 10), generator=_gen(5))
    xa, ya = a.sample(32)
    xb, yb = b.sample(32)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert float(xa.min()) >= 6 and float(xa.max()) <= 9


def test_window_is_large_enough_for_every_transform():
    aug = AugmentConfig()
    s = window_size(96, aug)
    assert (s - 96) % 2 == 0
    reach = 48 * math.sqrt(2) / 0.8 + 3 * math.sqrt(2) * aug.elastic_sigma / 0.8 + aug.translate
    assert s / 2 >= reach
    # and the grids of a real batch stay inside the window (grid_sample coordinates within [-1, 1])
    from tapcore.tap.data import sample_augment_params

    params = sample_augment_params(256, aug, _gen(7), "cpu")
    grid = build_grid(params, 96, s, aug.elastic_sigma)
    assert float(grid.abs().max()) < 1.0


def test_extract_pairs_at_half_resolution_covers_twice_the_area():
    movie = torch.rand(3, 40, 40)
    coords = torch.tensor([[0, 4, 6]])
    same = extract_pairs(movie, coords, 8)
    assert torch.equal(same[0, :, 0], movie[0:2, 4:12, 6:14])
    half = extract_pairs(movie, coords, 8, resolution=0.5)  # a 16 px square shrunk to 8 px
    expected = movie[0:2, 4:20, 6:22].reshape(2, 8, 2, 8, 2).mean(dim=(2, 4))
    assert half.shape == (1, 2, 1, 8, 8)
    assert torch.allclose(half[0, :, 0], expected, atol=1e-5)


def test_bad_settings_raise_value_error():
    movie = torch.rand(3, 20, 20)
    with pytest.raises(ValueError, match="smaller patch"):
        PairSampler(movie, patch=32)
    with pytest.raises(ValueError, match="frame range"):
        PairSampler(movie, patch=8, frames=(2, 3))
    with pytest.raises(ValueError, match="scale"):
        PairSampler(movie, patch=8, augment=AugmentConfig(scale=(1.2, 0.9)))
