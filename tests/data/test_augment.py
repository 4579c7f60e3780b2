"""Detection augmentations: boxes stay consistent with masks and pixels; seeded runs are reproducible."""
from __future__ import annotations

import numpy as np
import pytest

from powersam.data.augment import (
    DetectionAugment,
    DetectionSample,
    affine_matrix,
    apply_affine,
    horizontal_flip,
    hsv_jitter,
    letterbox,
    masks_to_boxes,
    mixup,
    mosaic,
    random_affine,
)

H, W = 48, 64


def _sample(rects=((5, 6, 25, 30), (30, 10, 60, 40)), size=(H, W), labels=None) -> DetectionSample:
    """Instances are filled rectangles (x1, y1, x2, y2); the image is dark except white on the instances."""
    masks = np.zeros((len(rects), *size), dtype=bool)
    for i, (x1, y1, x2, y2) in enumerate(rects):
        masks[i, y1:y2, x1:x2] = True
    image = np.where(masks.any(axis=0)[..., None], 255, 20).astype(np.uint8).repeat(3, axis=2)
    labels = np.arange(len(rects), dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    return DetectionSample(image, np.array(rects, dtype=np.float32).reshape(-1, 4), labels, masks)


def test_masks_to_boxes_uses_continuous_edges() -> None:
    s = _sample()
    np.testing.assert_array_equal(masks_to_boxes(s.masks), s.boxes)
    np.testing.assert_array_equal(masks_to_boxes(np.zeros((1, 4, 4), bool)), [[0, 0, 0, 0]])


def test_flip_keeps_boxes_on_masks_and_pixels() -> None:
    s = _sample()
    out = horizontal_flip(s, np.random.default_rng(0), p=1.0)
    np.testing.assert_array_equal(out.boxes, masks_to_boxes(out.masks))
    np.testing.assert_array_equal(out.boxes[0], [W - 25, 6, W - 5, 30])
    np.testing.assert_array_equal(out.image[:, ::-1], s.image)
    assert horizontal_flip(s, np.random.default_rng(0), p=0.0) is s


@pytest.mark.parametrize("scale, shift", [(2.0, (0.0, 0.0)), (1.5, (7.0, -4.0)), (0.6, (-3.0, 5.0))])
def test_scale_translate_boxes_match_warped_masks(scale, shift) -> None:
    s = _sample()
    out_size = (int(H * scale), int(W * scale))
    matrix = affine_matrix((H, W), out_size, scale=scale, translate=shift)
    out = apply_affine(s, matrix, out_size, boxes_from_masks=False, min_area_ratio=0.0)
    assert len(out.boxes) == 2 and out.image.shape == (*out_size, 3)
    tolerance = 0.0 if scale == 2.0 and shift == (0.0, 0.0) else 1.0  # exact when pixels map onto pixels
    np.testing.assert_allclose(out.boxes, masks_to_boxes(out.masks), atol=tolerance)
    # the image moved with the masks: bright pixels are the warped instances (up to interpolation at the rim)
    bright = out.image[..., 0] > 137
    perimeter = 2 * ((out.boxes[:, 2:] - out.boxes[:, :2]).sum())
    mismatch = (bright ^ out.masks.any(axis=0)).sum()
    assert mismatch == 0 if tolerance == 0 else mismatch <= perimeter / 2
    offset = np.array([out_size[1] / 2 - W / 2 * scale + shift[0], out_size[0] / 2 - H / 2 * scale + shift[1]] * 2)
    expected = np.clip(np.array([5, 6, 25, 30]) * scale + offset, 0, [out_size[1], out_size[0]] * 2)
    np.testing.assert_allclose(out.boxes[0], expected, atol=1e-4)


def test_rotation_hull_contains_mask_and_boxes_from_masks_are_tight() -> None:
    s = _sample()
    matrix = affine_matrix((H, W), (H, W), rotate=20.0, shear=(3.0, -2.0))
    loose = apply_affine(s, matrix, boxes_from_masks=False, min_area_ratio=0.0)
    tight = apply_affine(s, matrix, boxes_from_masks=True, min_area_ratio=0.0)
    np.testing.assert_array_equal(tight.boxes, masks_to_boxes(tight.masks))
    assert np.all(loose.boxes[:, :2] <= tight.boxes[:, :2] + 1) and np.all(loose.boxes[:, 2:] >= tight.boxes[:, 2:] - 1)


def test_boxes_moved_out_are_dropped_with_their_labels() -> None:
    s = _sample(labels=[4, 9])
    out = apply_affine(s, affine_matrix((H, W), (H, W), translate=(-40.0, 0.0)))  # the left box leaves the image
    np.testing.assert_array_equal(out.labels, [9])
    assert out.masks.shape == (1, H, W)
    nothing = apply_affine(_sample(rects=()), affine_matrix((H, W), (H, W), scale=1.3))
    assert nothing.boxes.shape == (0, 4) and nothing.masks.shape == (0, H, W)


def test_random_affine_is_seeded() -> None:
    s = _sample()
    a = random_affine(s, np.random.default_rng(3), rotate=15, shear=5)
    b = random_affine(s, np.random.default_rng(3), rotate=15, shear=5)
    c = random_affine(s, np.random.default_rng(4), rotate=15, shear=5)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.image, c.image)


def test_hsv_jitter() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    a = hsv_jitter(image, np.random.default_rng(1), 10, 50, 50)
    np.testing.assert_array_equal(a, hsv_jitter(image, np.random.default_rng(1), 10, 50, 50))
    assert a.shape == image.shape and a.dtype == np.uint8
    changed = [not np.array_equal(hsv_jitter(image, np.random.default_rng(seed), 10, 50, 50), image) for seed in range(8)]
    assert any(changed)
    np.testing.assert_array_equal(hsv_jitter(image, np.random.default_rng(1), 0, 0, 0), image)


def test_letterbox_scales_and_pads() -> None:
    s = _sample()
    out = letterbox(s, 32, pad_value=114)
    assert out.image.shape == (32, 32, 3) and out.masks.shape == (2, 32, 32)
    assert np.all(out.image[24:] == 114) and not out.masks[:, 24:].any()  # 48×64 → 24×32 + padding below
    np.testing.assert_allclose(out.boxes, s.boxes * 0.5)
    np.testing.assert_allclose(out.boxes, masks_to_boxes(out.masks), atol=1.0)
    unpadded = letterbox(s, 128, pad_value=None)
    assert unpadded.image.shape == (96, 128, 3)
    np.testing.assert_allclose(unpadded.boxes, masks_to_boxes(unpadded.masks), atol=1.0)


def test_mosaic_places_four_samples() -> None:
    parts = [_sample(labels=[i, i]) for i in range(4)]
    out = mosaic(parts, 32, np.random.default_rng(0))
    assert out.image.shape == (64, 64, 3) and out.masks.shape[1:] == (64, 64)
    assert len(out.boxes) == len(out.labels) == len(out.masks) <= 8
    np.testing.assert_allclose(out.boxes, masks_to_boxes(out.masks), atol=1.0)
    assert np.all(out.boxes[:, 2:] > out.boxes[:, :2])
    with pytest.raises(ValueError, match="exactly 4"):
        mosaic(parts[:3], 32, np.random.default_rng(0))


def _plain(image: np.ndarray, rects=(), labels=()) -> DetectionSample:
    return DetectionSample(image, np.array(rects, dtype=np.float32).reshape(-1, 4), np.array(labels, dtype=np.int64))


@pytest.mark.parametrize("seed", range(6))
def test_mixup_blends_half_and_its_boxes_follow_the_pixels(seed) -> None:
    black = _plain(np.zeros((100, 120, 3), np.uint8), [(10, 10, 30, 40)], [1])
    white = _plain(np.full((50, 50, 3), 255, np.uint8), [(0, 0, 50, 50)], [3])  # one box: the whole image
    out = mixup(black, white, np.random.default_rng(seed), size=100, pad_value=114)
    assert out.image.shape == black.image.shape and out.masks is None
    assert set(np.unique(out.image)) <= {57, 128}, "every pixel is half the black image, half white or padding"
    np.testing.assert_array_equal(out.boxes[0], black.boxes[0])  # the sample's own instances stay first
    assert out.labels.tolist() == [1, 3]
    rows, cols = np.nonzero(out.image[..., 0] == 128)
    np.testing.assert_allclose(out.boxes[1], [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], atol=1.0)


def test_mixup_without_boxes_to_add_leaves_the_sample() -> None:
    sample = _sample()
    assert mixup(sample, _plain(np.zeros((20, 20, 3), np.uint8)), np.random.default_rng(0), 32) is sample



def test_mixup_drops_boxes_the_window_cuts_off() -> None:
    small = _plain(np.zeros((16, 16, 3), np.uint8))
    image = np.zeros((64, 64, 3), np.uint8)
    image[32:, 32:] = 255
    quadrant = _plain(image, [(32, 32, 64, 64)], [5])  # the window sees it only now and then
    kept = 0
    for seed in range(30):
        out = mixup(small, quadrant, np.random.default_rng(seed), 64)
        if len(out.boxes):
            kept += 1
            assert out.labels.tolist() == [5]
            rows, cols = np.nonzero(out.image[..., 0] == 128)
            np.testing.assert_allclose(out.boxes[0], [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1],
                                       atol=1.0)
    assert 0 < kept < 30


def test_detection_augment_pipeline() -> None:
    s = _sample()
    aug = DetectionAugment(size=32, rotate=0.0, shear=0.0)
    a, b = aug(s, np.random.default_rng(7)), aug(s, np.random.default_rng(7))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert max(a.image.shape[:2]) == 32 and a.image.dtype == np.uint8
    assert np.all(a.boxes >= 0) and np.all(a.boxes[:, [0, 2]] <= a.image.shape[1]) and np.all(a.boxes[:, [1, 3]] <= a.image.shape[0])
    np.testing.assert_allclose(a.boxes, masks_to_boxes(a.masks), atol=1.0)
    outputs = {aug(s, np.random.default_rng(seed)).image.tobytes() for seed in range(4)}
    assert len(outputs) > 1

    padded = DetectionAugment(size=32, pad_value=114)
    assert padded(s, np.random.default_rng(0)).image.shape == (32, 32, 3)

    weak = DetectionAugment(size=32, hue=0, saturation=0, value=0, flip_prob=0.0)
    weak.strong = False  # the final no-mosaic/no-affine epochs: only resizing is left
    np.testing.assert_array_equal(weak(s, np.random.default_rng(0)).boxes, s.boxes * 0.5)

    mos = DetectionAugment(size=32, mosaic=True)
    assert mos.num_extra_samples == 3
    out = mos(s, np.random.default_rng(0), [_sample(), _sample(), DetectionSample(s.image, s.boxes, s.labels)])
    assert out.image.shape[:2] == (32, 32) and out.masks is None  # one part without masks: boxes only
    with pytest.raises(ValueError, match="extra samples"):
        mos(s, np.random.default_rng(0))
    mix = DetectionAugment(size=32, mosaic=True, mixup=True)
    assert mix.num_extra_samples == 4
    mixed = mix(s, np.random.default_rng(0), [_sample(), _sample(), _sample(), _sample(labels=[7, 7])])
    assert mixed.image.shape[:2] == (32, 32) and 7 in mixed.labels.tolist(), "the last extra sample is blended in"
    mix.strong = False
    assert mix.num_extra_samples == 0
    with pytest.raises(ValueError, match="mixup_ratio"):
        DetectionAugment(size=32, mixup=True, mixup_ratio=(1.6, 0.8))
    with pytest.raises(TypeError, match="Generator"):
        aug(s, 0)
    empty = aug(_sample(rects=()), np.random.default_rng(0))
    assert empty.boxes.shape == (0, 4) and empty.labels.shape == (0,)


def test_invalid_inputs() -> None:
    s = _sample()
    with pytest.raises(ValueError, match="masks must be"):
        DetectionSample.from_any(DetectionSample(s.image, s.boxes, s.labels, s.masks[:1]))
    with pytest.raises(ValueError, match="uint8"):
        DetectionSample.from_any(DetectionSample(s.image.astype(np.float32), s.boxes, s.labels))
    with pytest.raises(ValueError, match="scale"):
        DetectionAugment(size=32, scale=(2.0, 1.0))
