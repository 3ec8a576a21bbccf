"""pipelines/augment.py: geometry against NumPy-transformed masks, binary masks, alignment, determinism."""

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf
from mrcnn_tf2.pipelines import augment
from mrcnn_tf2.pipelines.input_pipeline import make_example
from mrcnn_tf2.pipelines.mask_to_box import mask_to_box

from mrcnn_tf2.config import AugmentConfig

NO_AUG = AugmentConfig(hflip_prob=0, vflip_prob=0, scale_min=1, scale_max=1, crop_prob=0, rotation_prob=0,
                       brightness=0, contrast=0, saturation=0, hue=0, blur_prob=0, noise_prob=0)


def np_boxes(masks: np.ndarray) -> np.ndarray:
    out = []
    for m in masks:
        ys, xs = np.nonzero(m)
        out.append([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1] if ys.size else [0, 0, 0, 0])
    return np.array(out, np.float32)


def np_rotate_nearest(mask: np.ndarray, angle: float) -> np.ndarray:
    """Inverse mapping about ((W-1)/2, (H-1)/2); rows point down, so a > 0 turns content counter-clockwise."""
    h, w = mask.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    ys, xs = np.mgrid[0:h, 0:w]
    src_x = cx + math.cos(angle) * (xs - cx) - math.sin(angle) * (ys - cy)
    src_y = cy + math.sin(angle) * (xs - cx) + math.cos(angle) * (ys - cy)
    ix, iy = np.round(src_x).astype(int), np.round(src_y).astype(int)
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    out = np.zeros_like(mask)
    out[inside] = mask[iy[inside], ix[inside]]
    return out


def blobs(h: int = 40, w: int = 56) -> np.ndarray:
    masks = np.zeros((3, h, w), np.uint8)
    masks[0, 4:15, 6:30] = 1
    yy, xx = np.mgrid[0:h, 0:w]
    masks[1] = ((yy - 25) ** 2 / 80 + (xx - 38) ** 2 / 150) < 1
    masks[2, 30:38, 2:12] = 1
    return masks


def test_flips_match_numpy():
    masks = blobs()
    image = np.stack([masks[0], masks[1], masks[2]], axis=-1) * 255
    im, m = augment.flip_left_right(tf.constant(image), tf.constant(masks))
    np.testing.assert_array_equal(mask_to_box(m).numpy(), np_boxes(masks[:, :, ::-1]))
    np.testing.assert_array_equal(im.numpy(), image[:, ::-1])
    im, m = augment.flip_up_down(tf.constant(image), tf.constant(masks))
    np.testing.assert_array_equal(mask_to_box(m).numpy(), np_boxes(masks[:, ::-1]))
    np.testing.assert_array_equal(im.numpy()[..., 1], m.numpy()[1] * 255)  # image and masks aligned


@pytest.mark.parametrize("degrees", [15.0, -12.0, 90.0])
def test_rotation_matches_numpy_and_masks_stay_binary(degrees):
    masks = blobs()
    image = (masks.transpose(1, 2, 0) * 200).astype(np.uint8)
    angle = math.radians(degrees)
    im, m = augment.rotate(tf.constant(image), tf.constant(masks), tf.constant(angle))
    m = m.numpy()
    assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
    expected = np.stack([np_rotate_nearest(x, angle) for x in masks])
    np.testing.assert_allclose(mask_to_box(m).numpy(), np_boxes(expected), atol=1)
    assert (m != expected).mean() < 0.01
    # The bilinear image agrees with the nearest masks away from edges (image and masks aligned).
    inside = (m == 1).transpose(1, 2, 0)
    assert np.median(im.numpy()[inside]) == pytest.approx(200, abs=1)


def test_rotation_direction_is_counter_clockwise_on_screen():
    mask = np.zeros((1, 21, 21), np.uint8)
    mask[0, 0:3, 9:12] = 1  # top centre
    _, m = augment.rotate(tf.zeros([21, 21, 3]), tf.constant(mask), tf.constant(math.pi / 2))
    ys, xs = np.nonzero(m.numpy()[0])
    assert xs.max() <= 2 and 9 <= ys.mean() <= 11  # now at the left centre


def test_rotation_with_zero_instances():
    im, m = augment.rotate(tf.ones([8, 9, 3]), tf.zeros([0, 8, 9], tf.uint8), tf.constant(0.3))
    assert im.shape == (8, 9, 3) and m.shape == (0, 8, 9)


@pytest.mark.parametrize("scale_max", [1.0, 1.6])
def test_crop_window_keeps_an_instance_and_matches_numpy_crop(scale_max):
    masks = blobs()
    boxes = mask_to_box(tf.constant(masks))
    aug = dataclasses.replace(NO_AUG, crop_prob=1.0, crop_min_fraction=0.3, scale_min=0.8, scale_max=scale_max)
    kept_counts, seen_counts = [], []
    for s in range(25):
        seed = tf.constant([s, 7], tf.int64)
        yx, hw, scaled = [t.numpy() for t in augment.plan_window(boxes, tf.constant([40, 56]), 64, aug, seed)]
        assert (yx >= 0).all() and (yx + hw <= [40, 56]).all() and (hw >= 1).all()
        assert (scaled >= 1).all() and (scaled <= 64).all()
        cropped = tf.slice(tf.constant(masks), [0, yx[0], yx[1]], [-1, hw[0], hw[1]])
        np_cropped = masks[:, yx[0]:yx[0] + hw[0], yx[1]:yx[1] + hw[1]]
        np.testing.assert_array_equal(mask_to_box(cropped).numpy(), np_boxes(np_cropped))
        kept_counts.append(sum(np_cropped[k].sum() == masks[k].sum() for k in range(3)))
        seen_counts.append(sum(np_cropped[k].any() for k in range(3)))
        # Each side keeps >= crop_min_fraction, unless the jitter zooms in (visible side S / scale).
        zoom_limit = np.floor(64 / (scaled / hw).max())
        assert (hw >= np.minimum(np.round(0.3 * np.array([40, 56])), zoom_limit) - 1).all()
    if scale_max <= 1:
        assert min(kept_counts) >= 1  # the chosen instance is never cut
    else:
        assert min(seen_counts) >= 1  # zoomed in past the instance size: still inside an instance
    assert len(set(kept_counts)) > 1  # and the crop really crops sometimes


def test_plan_window_without_augmentation_is_the_fit_to_size_resize():
    boxes = tf.zeros([0, 4])
    yx, hw, scaled = augment.plan_window(boxes, tf.constant([30, 50]), 64, NO_AUG, tf.constant([1, 2]))
    assert yx.numpy().tolist() == [0, 0] and hw.numpy().tolist() == [30, 50]
    assert scaled.numpy().tolist() == [38, 64]


def _example(masks: np.ndarray) -> dict:
    image = np.where(masks.any(0)[..., None], 255, 0).astype(np.uint8).repeat(3, axis=2)
    return {"image": tf.constant(image), "masks": tf.constant(masks),
            "classes": tf.constant(np.arange(1, len(masks) + 1, dtype=np.int32)),
            "image_id": tf.constant(1, tf.int64)}


@pytest.mark.parametrize("seed", range(6))
def test_full_geometric_augmentation_keeps_image_and_gt_aligned(seed):
    """gt boxes/masks pasted back agree with the white shapes visible in the augmented image."""
    masks = np.zeros((1, 48, 64), np.uint8)
    yy, xx = np.mgrid[0:48, 0:64]
    masks[0] = ((yy - 22) ** 2 / 150 + (xx - 30) ** 2 / 300) < 1
    aug = dataclasses.replace(NO_AUG, hflip_prob=0.5, vflip_prob=0.5, rotation_prob=1.0, crop_prob=0.5,
                              scale_min=0.6, scale_max=1.8)
    out = make_example(_example(masks), image_size=64, pixel_normalization="none", max_instances=2,
                       mask_size=16, aug=aug, seed=tf.constant([seed, 3], tf.int64))
    image = out["images"].numpy()[..., 0]
    box = out["gt_boxes"].numpy()[0]
    assert out["gt_classes"].numpy()[0] == 1
    white = image > 127
    np.testing.assert_allclose(box, np_boxes(white[None])[0], atol=1.5)
    y1, x1, y2, x2 = np.round(box).astype(int)
    pasted = np.zeros_like(white)
    m = out["gt_masks"].numpy()[0]
    cell_y = ((np.arange(y1, y2) + 0.5 - box[0]) / (box[2] - box[0]) * 16).astype(int).clip(0, 15)
    cell_x = ((np.arange(x1, x2) + 0.5 - box[1]) / (box[3] - box[1]) * 16).astype(int).clip(0, 15)
    pasted[y1:y2, x1:x2] = m[np.ix_(cell_y, cell_x)] > 0.5
    iou = (pasted & white).sum() / (pasted | white).sum()
    assert iou > 0.85, iou


def test_augmentation_is_deterministic_per_seed():
    masks = blobs()
    aug = AugmentConfig(rotation_prob=0.5, blur_prob=0.5, noise_prob=0.5, vflip_prob=0.5)
    opts = dict(image_size=64, pixel_normalization="caffe", max_instances=4, mask_size=8, aug=aug)
    a = make_example(_example(masks), seed=tf.constant([5, 1], tf.int64), **opts)
    b = make_example(_example(masks), seed=tf.constant([5, 1], tf.int64), **opts)
    c = make_example(_example(masks), seed=tf.constant([6, 1], tf.int64), **opts)
    for key in a:
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
    assert not np.array_equal(a["images"].numpy(), c["images"].numpy())


def test_color_augment_changes_only_colours_within_range():
    image = tf.constant(np.random.default_rng(0).integers(0, 256, (20, 30, 3)), tf.uint8)
    seed = tf.constant([1, 2], tf.int64)
    same = augment.color_augment(image, NO_AUG, seed)
    np.testing.assert_allclose(same.numpy(), image.numpy(), atol=1e-3)
    full = AugmentConfig(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1, blur_prob=1.0, noise_prob=1.0)
    out = augment.color_augment(image, full, seed).numpy()
    assert out.shape == (20, 30, 3) and out.min() >= 0 and out.max() <= 255
    assert np.abs(out - image.numpy()).mean() > 1


def test_blur_is_a_normalized_gaussian():
    image = np.zeros((15, 15, 3), np.float32)
    image[7, 7] = 100.0
    out = augment._gaussian_blur(tf.constant(image), tf.constant(1.0), 2).numpy()
    x = np.arange(-2, 3)
    k = np.exp(-0.5 * x**2)
    k /= k.sum()
    np.testing.assert_allclose(out[5:10, 5:10, 0], 100 * np.outer(k, k), atol=1e-4)
    assert out.sum() == pytest.approx(300.0, rel=1e-5)


def test_bad_augment_values_are_rejected():
    with pytest.raises(ValueError, match="crop_min_fraction"):
        augment.check_augment_config(AugmentConfig(crop_min_fraction=0.0))
    with pytest.raises(ValueError, match="hue"):
        augment.check_augment_config(AugmentConfig(hue=0.7))
