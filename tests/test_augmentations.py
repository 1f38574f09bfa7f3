"""The batched on-device augmentations, checked against what each operation must do."""

from __future__ import annotations

import pytest
import torch

from optlab.plugins.builtins import _augment
from optlab.plugins.registry import builtin_registry

REG = builtin_registry()
PIPELINES = ["adamw_pipeline", "sgdm_pipeline", "compromise_pipeline"]
ZERO = {
    "flip": 0.0,
    "rotation": 0.0,
    "pad": 0,
    "translate": 0.0,
    "perspective": 0.0,
    "brightness": 0.0,
    "contrast": 0.0,
    "saturation": 0.0,
    "hue": 0.0,
}


def make(name, **params):
    return REG.create(
        "augmentation", name, params, input_shape=(3, 8, 8), mean=[0.5] * 3, std=[0.25] * 3
    )


@pytest.mark.parametrize("name", PIPELINES)
def test_pipelines_keep_shape_and_are_reproducible(name):
    x = torch.randn(16, 3, 8, 8)
    a = make(name)(x, torch.Generator().manual_seed(0))
    b = make(name)(x, torch.Generator().manual_seed(0))
    c = make(name)(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(a).all()


@pytest.mark.parametrize("name", PIPELINES)
def test_every_knob_at_zero_is_the_identity(name):
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(make(name, **ZERO)(x, torch.Generator()), x)


def test_seed_003_defaults():
    sgdm = REG.get("augmentation", "sgdm_pipeline").params()
    assert (sgdm.rotation, sgdm.translate, sgdm.perspective, sgdm.pad) == (15.0, 0.1, 0.2, 4)
    assert (sgdm.brightness, sgdm.contrast, sgdm.saturation, sgdm.hue) == (0.3, 0.3, 0.3, 0.2)
    final = REG.get("augmentation", "compromise_pipeline").params()
    assert final.translate == 0.0 and final.rotation == 15.0 and final.perspective == 0.2
    adamw = REG.get("augmentation", "adamw_pipeline").params()
    assert (adamw.rotation, adamw.perspective, adamw.brightness, adamw.hue) == (0, 0, 0.2, 0.1)


def test_resampling_without_warp_is_the_identity():
    x = torch.rand(3, 3, 8, 8)
    y = _augment.geometry(x, 0.0, 0.0, 0.0, 0.5, torch.Generator())
    assert torch.allclose(x, y, atol=1e-5)


def test_translation_shifts_content_and_fills_with_zero():
    x = torch.ones(64, 1, 9, 9)
    y = _augment.geometry(x, 0.0, 0.3, 0.0, 0.0, torch.Generator().manual_seed(0))
    zero_rows = (y.abs().sum(dim=(1, 3)) < 1e-6).any(dim=1)  # a border row left empty
    zero_cols = (y.abs().sum(dim=(1, 2)) < 1e-6).any(dim=1)
    assert (zero_rows | zero_cols).float().mean() > 0.5


def test_perspective_homography_sends_corners_inwards():
    x = torch.zeros(32, 1, 4, 4)
    h = _augment._perspective(32, 0.5, 1.0, x, torch.Generator().manual_seed(0))
    corners = torch.tensor([[-1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [1.0, 1.0, 1.0], [-1.0, 1.0, 1.0]])
    mapped = corners @ h.transpose(1, 2)
    xy = mapped[..., :2] / mapped[..., 2:]
    assert (xy.abs() <= 1 + 1e-5).all() and (xy.abs() >= 0.5 - 1e-5).all()


def test_hue_rotates_a_third_of_a_turn_from_red_to_green():
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0
    green = _augment._hue_shift(red, torch.tensor([1 / 3]))
    assert torch.allclose(green[0, :, 0, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-5)


def test_brightness_scales_each_image_by_one_factor():
    x = torch.rand(8, 3, 4, 4) * 0.5
    p = REG.get("augmentation", "adamw_pipeline").params(**{**ZERO, "brightness": 0.4})
    y = _augment.color_jitter(x, p, torch.Generator().manual_seed(0))
    ratio = y / x
    per_image = ratio.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-5)
    assert ((per_image[:, 0] >= 0.6 - 1e-6) & (per_image[:, 0] <= 1.4 + 1e-6)).all()


def test_jitter_works_on_the_unnormalised_image():
    # mean 0.5, std 0.25: a normalised value of 2 is pixel 1.0; brightness can only clamp it
    x = torch.full((4, 3, 2, 2), 2.0)
    aug = make("adamw_pipeline", **{**ZERO, "brightness": 0.5})
    y = aug(x, torch.Generator().manual_seed(3))
    assert (y <= 2.0 + 1e-5).all()
