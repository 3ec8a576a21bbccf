"""The first-stage options of the torchvision presets against torchvision's own modules, weights copied:
ResNet with the stride on the 3x3 conv, no conv bias and FrozenBatchNorm2d eps; FPN without norm (v1) and
with batch norm (v2), P6 = max-pool; RPN head layout + torchvision anchors + filter_proposals; and the
model on non-square inputs (clip windows from image_info, serving batches padded to the largest image)."""

from collections import OrderedDict
from functools import partial

import numpy as np
import pytest
import tensorflow as tf

from mrcnn_tf2 import build_model, config
from mrcnn_tf2.layers.backbone import build_backbone
from mrcnn_tf2.layers.fpn import FPN
from mrcnn_tf2.layers.proposals import ProposalGenerator
from mrcnn_tf2.layers.rpn_head import RPNHead
from mrcnn_tf2.ops import anchors as anchor_ops
from tests.torch_import import import_torch

torch, _ = import_torch()
torchvision = pytest.importorskip("torchvision")
from torchvision.models.detection import anchor_utils, image_list, rpn  # noqa: E402
from torchvision.ops import feature_pyramid_network as tv_fpn  # noqa: E402
from torchvision.ops import misc as tv_misc  # noqa: E402

SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)
RATIOS = (0.5, 1.0, 2.0)


def _kernel(weight) -> np.ndarray:
    """torch conv weight [out, in, kh, kw] -> Keras [kh, kw, in, out]."""
    return weight.detach().numpy().transpose(2, 3, 1, 0)


def _copy_bn(layer, module) -> None:
    layer.gamma.assign(module.weight.detach().numpy())
    layer.beta.assign(module.bias.detach().numpy())
    layer.moving_mean.assign(module.running_mean.numpy())
    layer.moving_variance.assign(module.running_var.numpy())


def _randomize_bn(module, rng: np.random.Generator) -> None:
    """Small variances (1e-4..1e-3) make eps 0 vs 1e-5 a visible difference; the scale stays O(1)."""
    c = module.running_var.shape[0]
    var = rng.uniform(1e-4, 1e-3, c)
    with torch.no_grad():
        module.running_var.copy_(torch.tensor(var, dtype=torch.float32))
        module.running_mean.copy_(torch.tensor(rng.normal(0, 0.1, c), dtype=torch.float32))
        module.weight.copy_(torch.tensor(np.sqrt(var) * rng.uniform(0.5, 1.0, c), dtype=torch.float32))
        module.bias.copy_(torch.tensor(rng.normal(0, 0.1, c), dtype=torch.float32))


def _relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def test_resnet50_torchvision_layout_equals_torchvision():
    """stride on the 3x3 (padded 1 on both sides), no biases, FrozenBatchNorm2d with eps 0 (v1 COCO file)."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(weights=None, norm_layer=partial(tv_misc.FrozenBatchNorm2d, eps=0.0))
    reference.eval()
    for module in reference.modules():
        if isinstance(module, tv_misc.FrozenBatchNorm2d):
            _randomize_bn(module, rng)
    ours = build_backbone("resnet50", norm="frozen_bn", image_size=None, stride_in_1x1=False, conv_bias=False,
                          bn_epsilon=0.0)
    assert not [v for v in ours.weights if v.name == "bias"]  # no conv biases
    ours.get_layer("conv1_conv").kernel.assign(_kernel(reference.conv1.weight))
    _copy_bn(ours.get_layer("conv1_bn"), reference.bn1)
    for stage, blocks in zip(range(2, 6), (3, 4, 6, 3)):
        for b in range(blocks):
            block = getattr(reference, f"layer{stage - 1}")[b]
            prefix = f"conv{stage}_block{b + 1}"
            for k in (1, 2, 3):
                ours.get_layer(f"{prefix}_{k}_conv").kernel.assign(_kernel(getattr(block, f"conv{k}").weight))
                _copy_bn(ours.get_layer(f"{prefix}_{k}_bn"), getattr(block, f"bn{k}"))
            if block.downsample is not None:
                ours.get_layer(f"{prefix}_0_conv").kernel.assign(_kernel(block.downsample[0].weight))
                _copy_bn(ours.get_layer(f"{prefix}_0_bn"), block.downsample[1])
    image = rng.normal(0, 1, (1, 96, 160, 3)).astype(np.float32)  # non-square, a multiple of 32
    with torch.no_grad():
        x = torch.from_numpy(image.transpose(0, 3, 1, 2))
        x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        expected = []
        for stage in range(1, 5):
            x = getattr(reference, f"layer{stage}")(x)
            expected.append(x.numpy().transpose(0, 2, 3, 1))
    got = [f.numpy() for f in ours(tf.constant(image), training=False)]
    for level, (g, e) in enumerate(zip(got, expected), start=2):
        assert g.shape == e.shape, level
        # float32 sums over up to 4608 terms per conv, 16 blocks deep; seen 6e-7 (C2) .. 1.1e-6 (C4).
        assert _relative_error(g, e) < 1e-4, level
    # The eps is really used: 1e-5 instead of 0 changes C5 by far more than the tolerance (seen 0.10).
    shifted = build_backbone("resnet50", norm="frozen_bn", image_size=None, stride_in_1x1=False, conv_bias=False,
                             bn_epsilon=1e-5)
    shifted.set_weights(ours.get_weights())
    assert _relative_error(shifted(tf.constant(image), training=False)[-1].numpy(), expected[-1]) > 1e-3


@pytest.mark.parametrize("norm", [None, "bn"])
def test_fpn_equals_torchvision(norm):
    """v1: convs with bias, no norm; v2: BatchNorm2d (eval) after bias-free convs; P6 = max_pool2d(P5, 1, 2)."""
    rng = np.random.default_rng(1)
    torch.manual_seed(1)
    channels = [8, 16, 32, 64]
    reference = tv_fpn.FeaturePyramidNetwork(channels, 16, extra_blocks=tv_fpn.LastLevelMaxPool(),
                                             norm_layer=torch.nn.BatchNorm2d if norm else None).eval()
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            _randomize_bn(module, rng)
            with torch.no_grad():  # back to O(1) scales: this network is shallow
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
    ours = FPN(min_level=2, max_level=6, num_channels=16, norm=norm)
    hw = [(24, 40), (12, 20), (6, 10), (3, 5)]  # a 96 x 160 input: odd C5, so P6 is 2 x 3
    features = [rng.normal(0, 1, (1, h, w, c)).astype(np.float32) for (h, w), c in zip(hw, channels)]
    got = ours([tf.constant(f) for f in features], training=False)
    suffix = "bn"
    for i, level in enumerate(range(2, 6)):
        for kind, blocks in (("lateral", reference.inner_blocks), ("output", reference.layer_blocks)):
            conv = blocks[i][0]
            ours_conv = getattr(ours, f"{kind}_p{level}_conv")
            assert (conv.bias is not None) == ours_conv.use_bias
            ours_conv.kernel.assign(_kernel(conv.weight))
            if conv.bias is not None:
                ours_conv.bias.assign(conv.bias.detach().numpy())
            if norm:
                _copy_bn(getattr(ours, f"{kind}_p{level}_{suffix}"), blocks[i][1])
    got = ours([tf.constant(f) for f in features], training=False)
    with torch.no_grad():
        expected = reference(OrderedDict((str(i), torch.from_numpy(f.transpose(0, 3, 1, 2)))
                                         for i, f in enumerate(features)))
    for level, e in zip(range(2, 7), expected.values()):
        e = e.numpy().transpose(0, 2, 3, 1)
        assert got[level].shape == e.shape, level
        np.testing.assert_allclose(got[level].numpy(), e, atol=1e-4 * np.abs(e).max())


@pytest.mark.parametrize("conv_depth", [1, 2])
def test_rpn_head_anchors_and_proposals_equal_torchvision(conv_depth):
    """Our RPN head (weights copied, deltas permuted (dx, dy, dw, dh) -> (dy, dx, dh, dw)), torchvision
    anchors and ProposalGenerator(sigmoid_scores, min 1e-3) give torchvision's proposals, in order, on a
    96 x 160 input whose real image is 90 x 150 (the clip window)."""
    rng = np.random.default_rng(2)
    torch.manual_seed(2)
    channels, a = 16, len(RATIOS)
    generator = anchor_utils.AnchorGenerator(tuple((int(s),) for s in SIZES), (RATIOS,) * 5)
    head = rpn.RPNHead(channels, a, conv_depth=conv_depth)
    with torch.no_grad():  # spread the scores so that top-k and NMS do not hinge on ties
        for conv in head.conv:
            conv[0].weight.normal_(0, 0.1)
        head.cls_logits.weight.normal_(0, 1.0)
        head.bbox_pred.weight.normal_(0, 0.1)
        head.cls_logits.bias.normal_(0, 0.5)
        head.bbox_pred.bias.normal_(0, 0.05)
    reference = rpn.RegionProposalNetwork(generator, head, 0.7, 0.3, 256, 0.5, dict(training=2000, testing=300),
                                          dict(training=2000, testing=300), 0.7).eval()
    grids = [(24, 40), (12, 20), (6, 10), (3, 5), (2, 3)]
    features = {lv: rng.normal(0, 1, (1, h, w, channels)).astype(np.float32)
                for lv, (h, w) in zip(range(2, 7), grids)}
    images = image_list.ImageList(torch.zeros(1, 3, 96, 160), [(90, 150)])
    with torch.no_grad():
        boxes, _ = reference(images, OrderedDict((str(lv), torch.from_numpy(f.transpose(0, 3, 1, 2)))
                                                 for lv, f in features.items()))
    expected = boxes[0].numpy()[:, [1, 0, 3, 2]]  # -> y1x1y2x2

    ours = RPNHead(num_anchors=a, num_channels=channels, num_convs=conv_depth)
    tf_features = {lv: tf.constant(f) for lv, f in features.items()}
    ours(tf_features)
    for i, conv in enumerate(head.conv):
        getattr(ours, f"conv_{i}").set_weights([_kernel(conv[0].weight), conv[0].bias.detach().numpy()])
    ours.objectness.set_weights([_kernel(head.cls_logits.weight), head.cls_logits.bias.detach().numpy()])
    perm = np.array([[4 * k + 1, 4 * k, 4 * k + 3, 4 * k + 2] for k in range(a)]).reshape(-1)
    ours.deltas.set_weights([_kernel(head.bbox_pred.weight)[..., perm], head.bbox_pred.bias.detach().numpy()[perm]])
    logits, deltas = ours(tf_features)
    anchors = anchor_ops.grid_anchors(tf.constant([96, 160]), {lv: tf.constant(g) for lv, g in zip(range(2, 7), grids)},
                                      SIZES, RATIOS, offset=0.0, rounded=True)
    proposals = ProposalGenerator(300, 300, 0.7, 1e-3, image_size=160, sigmoid_scores=True)
    info = tf.constant([[[90.0, 150.0], [90.0, 150.0], [1.0, 1.0], [0.0, 0.0]]])
    got, scores, valid = (t.numpy()[0] for t in proposals(logits, deltas, anchors, info))
    assert valid.sum() == len(expected) > 50
    assert np.all(scores[valid] <= 1.0) and np.all(np.diff(scores[valid]) <= 0)  # probabilities, sorted
    np.testing.assert_allclose(got[valid], expected, atol=1e-3)  # pixels: float32 decode, both ~1e-5
    assert got[valid][:, 2].max() <= 90.0 and got[valid][:, 3].max() <= 150.0


def _shapes_side_cfg():
    return config.preset("shapes", overrides={"model.resize_mode": "short_side", "model.min_size": 96,
                                              "model.max_size": 160, "model.size_divisibility": 32})


def test_non_square_inference_clips_to_the_real_image():
    from mrcnn_tf2.pipelines.preprocess import preprocess_image, side_resize

    cfg = _shapes_side_cfg()
    model = build_model(cfg)
    infer = tf.function(lambda x, i: model(x, i, training=False),
                        input_signature=[tf.TensorSpec([None, None, None, 3]), tf.TensorSpec([None, 4, 2])])
    image = np.random.default_rng(4).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    x, info = preprocess_image(tf.constant(image), cfg.model.image_size, cfg.model.pixel_normalization,
                               resize=side_resize(cfg.model))
    assert x.shape == (96, 160, 3)  # 96 x 144 content, width padded to 160
    np.testing.assert_allclose(info[1].numpy(), [96, 144])
    out = infer(x[None], info[None])
    num = int(out["num_detections"][0])
    assert num > 0  # 4 classes, random weights: class probabilities ~0.25 pass the 0.05 threshold
    boxes = out["detection_boxes"][0, :num].numpy()
    assert boxes.min() >= 0 and boxes[:, 2].max() <= 96 and boxes[:, 3].max() <= 144
    # The same model on another non-square shape (taller than wide) in the same traced function.
    out = infer(tf.zeros([2, 160, 96, 3]), tf.constant([[[150.0, 90.0], [150.0, 90.0], [1, 1], [0, 0]]] * 2))
    boxes = out["detection_boxes"].numpy()
    assert boxes[..., 2].max() <= 150 and boxes[..., 3].max() <= 90


def test_serving_pads_a_batch_to_its_largest_image():
    from mrcnn_tf2.export.serving import ServingEndpoints
    from mrcnn_tf2.pipelines.preprocess import side_resize

    cfg = _shapes_side_cfg()
    model = build_model(cfg)
    m = cfg.model
    endpoints = ServingEndpoints(model, m.image_size, m.pixel_normalization, (), m.detection.max_detections,
                                 m.roi.mask_size, resize=side_resize(m))
    seen = []
    original_call = model.call

    def spy(images, image_info=None, training=False):
        seen.append(tuple(images.shape))
        return original_call(images, image_info, training=training)

    model.call = spy
    images = tf.constant(np.random.default_rng(5).integers(0, 256, (2, 60, 90, 3), dtype=np.uint8))
    out = endpoints.serve_image_tensor(images)
    assert seen == [(2, 96, 160, 3)]  # 96 x 144 content -> 96 x 160, not the 160 x 160 canvas
    boxes = out["detection_boxes"].numpy()
    assert boxes[..., 2].max() <= 60 and boxes[..., 3].max() <= 90  # original pixels
