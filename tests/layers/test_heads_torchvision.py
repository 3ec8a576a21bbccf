"""BoxHead / MaskHead against torchvision's own heads (v1 and v2 layouts) with the same weights.

Weights are copied here with a few lines (the real importer lives in mrcnn_tf2/convert/): conv kernels
``[out, in, kh, kw] -> [kh, kw, in, out]``, the transposed conv ``[in, out, kh, kw] -> [kh, kw, out, in]``,
the first FC's rows from torch's CHW flatten to our HWC flatten, box deltas (dx, dy, dw, dh) -> (dy, dx, dh, dw).
Small widths keep the test fast; tolerance 1e-4 relative (float32 sums over a few thousand terms).
"""

import numpy as np
import pytest
import tensorflow as tf

from mrcnn_tf2.layers.box_head import BoxHead
from mrcnn_tf2.layers.mask_head import MaskHead
from tests.torch_import import import_torch

torch, torchvision = import_torch()
from torchvision.models.detection.faster_rcnn import (  # noqa: E402
    FastRCNNConvFCHead,
    FastRCNNPredictor,
    TwoMLPHead,
)
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor  # noqa: E402

C, P, K, FC, CONV = 8, 7, 5, 32, 16  # channels in, pool size, classes, FC width, conv width


def _np(t) -> np.ndarray:
    return t.detach().numpy()


def _conv_kernel(weight) -> np.ndarray:
    return _np(weight).transpose(2, 3, 1, 0)


def _first_fc_kernel(weight, channels: int, size: int) -> np.ndarray:
    """torch Linear weight [D, C*P*P] (input c*P*P + y*P + x) -> Dense kernel [P*P*C, D] (input (y*P + x)*C + c)."""
    out = weight.shape[0]
    return _np(weight).reshape(out, channels, size, size).transpose(2, 3, 1, 0).reshape(-1, out)


def _copy_norm(ours, bn) -> None:
    ours.set_weights([_np(bn.weight), _np(bn.bias), _np(bn.running_mean), _np(bn.running_var)])


def _spread_norms(module: "torch.nn.Module", seed: int) -> None:
    """Non-trivial batch-norm parameters and running statistics (fresh ones are the identity)."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 1.0 + 0.3 * torch.randn(n, generator=gen)
            m.bias.data = 0.3 * torch.randn(n, generator=gen)
            m.running_mean.data = 0.5 * torch.randn(n, generator=gen)
            m.running_var.data = 0.5 + torch.rand(n, generator=gen)


def _copy_predictor(head: BoxHead, predictor) -> None:
    head.class_logits.set_weights([_np(predictor.cls_score.weight).T, _np(predictor.cls_score.bias)])
    order = np.arange(4 * K).reshape(K, 4)[:, [1, 0, 3, 2]].ravel()  # (dx, dy, dw, dh) -> (dy, dx, dh, dw)
    head.box_deltas.set_weights([_np(predictor.bbox_pred.weight).T[:, order], _np(predictor.bbox_pred.bias)[order]])


def _features(seed: int, num: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(1, num, P, P, C)).astype(np.float32)


def _torch_input(features: np.ndarray):
    return torch.from_numpy(features[0]).permute(0, 3, 1, 2).contiguous()  # [R, C, P, P]


def _compare_box(head: BoxHead, tv_head, predictor, features: np.ndarray, training: bool = False) -> None:
    logits, deltas = head(tf.constant(features), training=training)
    tv_head.train(training)
    with torch.no_grad():
        tv_logits, tv_deltas = predictor(tv_head(_torch_input(features)))
    tv_deltas = _np(tv_deltas).reshape(-1, K, 4)[..., [1, 0, 3, 2]]
    np.testing.assert_allclose(logits.numpy()[0], _np(tv_logits), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(deltas.numpy()[0], tv_deltas, rtol=1e-4, atol=1e-5)


def test_box_head_v1_matches_two_mlp_head():
    torch.manual_seed(0)
    tv_head, predictor = TwoMLPHead(C * P * P, FC).eval(), FastRCNNPredictor(FC, K).eval()
    head = BoxHead(K, fc_dim=FC, num_fcs=2)
    head.build((1, None, P, P, C))
    head.fc_0.set_weights([_first_fc_kernel(tv_head.fc6.weight, C, P), _np(tv_head.fc6.bias)])
    head.fc_1.set_weights([_np(tv_head.fc7.weight).T, _np(tv_head.fc7.bias)])
    _copy_predictor(head, predictor)
    _compare_box(head, tv_head, predictor, _features(1))


@pytest.mark.parametrize("training", [False, True])
def test_box_head_v2_matches_conv_fc_head(training):
    torch.manual_seed(1)
    tv_head = FastRCNNConvFCHead((C, P, P), [CONV] * 4, [FC], norm_layer=torch.nn.BatchNorm2d)
    _spread_norms(tv_head, 2)
    predictor = FastRCNNPredictor(FC, K).eval()
    head = BoxHead(K, fc_dim=FC, num_fcs=1, num_convs=4, conv_dim=CONV, norm="bn")
    head.build((1, None, P, P, C))
    assert not head.conv_0.use_bias
    for i in range(4):
        block = tv_head[i]  # Conv2dNormActivation: conv, bn, relu
        assert block[0].bias is None
        getattr(head, f"conv_{i}").set_weights([_conv_kernel(block[0].weight)])
        _copy_norm(getattr(head, f"bn_{i}"), block[1])
    fc = tv_head[5]  # after the 4 conv blocks and the Flatten
    head.fc_0.set_weights([_first_fc_kernel(fc.weight, CONV, P), _np(fc.bias)])
    _copy_predictor(head, predictor)
    # Training mode normalizes with the batch statistics over ROIs and positions, as torch does.
    _compare_box(head, tv_head, predictor, _features(3, num=12), training=training)


def _copy_mask(head: MaskHead, tv_head, predictor, norm: bool) -> None:
    for i in range(4):
        conv = tv_head[i][0]
        weights = [_conv_kernel(conv.weight)] + ([] if norm else [_np(conv.bias)])
        getattr(head, f"conv_{i}").set_weights(weights)
        if norm:
            _copy_norm(getattr(head, f"bn_{i}"), tv_head[i][1])
    head.upsample.set_weights([_np(predictor.conv5_mask.weight).transpose(2, 3, 1, 0),
                               _np(predictor.conv5_mask.bias)])
    head.mask_logits.set_weights([_conv_kernel(predictor.mask_fcn_logits.weight),
                                  _np(predictor.mask_fcn_logits.bias)])


@pytest.mark.parametrize("norm", ["none", "bn"])
def test_mask_head_matches_torchvision(norm):
    torch.manual_seed(2)
    norm_layer = torch.nn.BatchNorm2d if norm == "bn" else None
    tv_head = MaskRCNNHeads(C, [CONV] * 4, 1, norm_layer=norm_layer).eval()
    predictor = MaskRCNNPredictor(CONV, CONV, K).eval()
    for m in predictor.modules():  # torchvision leaves these biases at 0: make them matter
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            m.bias.data.normal_(0.0, 0.1)
    _spread_norms(tv_head, 3)
    head = MaskHead(K, num_convs=4, num_channels=CONV, norm=norm)
    head.build((1, None, P, P, C))
    _copy_mask(head, tv_head, predictor, norm == "bn")
    features = _features(4, num=5)
    classes = np.array([[0, 1, 4, 2, 3]], np.int32)
    ours = head(tf.constant(features), tf.constant(classes)).numpy()[0]  # [R, 2P, 2P]
    with torch.no_grad():
        theirs = _np(predictor(tv_head(_torch_input(features))))  # [R, K, 2P, 2P]
    theirs = theirs[np.arange(5), classes[0]]
    assert ours.shape == (5, 2 * P, 2 * P)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
