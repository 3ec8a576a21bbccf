"""torchvision Mask R-CNN R50-FPN state dicts (v1 and v2) -> the weights of our model.

This module owns the key layout of torchvision's two COCO checkpoints and how each tensor maps onto a
variable of the ``torchvision_r50_fpn`` / ``torchvision_r50_fpn_v2`` models. It has three steps:

- ``read_state_dict(path)``: the ``.pth`` file -> ``{key: np.ndarray}`` (torch is imported here, lazily,
  and nowhere else in the project);
- ``canonical_state_dict`` + ``check_keys``: legacy key names renamed as torchvision's own
  ``_load_from_state_dict`` hooks do, ``num_batches_tracked`` dropped, then the key set compared with the
  variant's (missing and unexpected keys are named);
- ``layer_weights(sd, variant)``: ``{(sublayer, layer name): {variable name: array}}`` in our layout, and
  ``assign_weights(model, weights)`` to write them into a built model.

Layout changes (torch -> ours):
    Conv2d weight ``[out, in, kh, kw]`` -> Conv2D kernel ``[kh, kw, in, out]`` (HWIO).
    ConvTranspose2d weight ``[in, out, kh, kw]`` -> Conv2DTranspose kernel ``[kh, kw, out, in]``.
    Linear weight ``[out, in]`` -> Dense kernel ``[in, out]``; the first FC after ROIAlign flattens
    ``[C, 7, 7]`` in torch and ``[7, 7, C]`` here, so its input rows are permuted (CHW -> HWC).
    Box deltas: torch orders each 4-vector (dx, dy, dw, dh), we order (dy, dx, dh, dw): the rows of the
    RPN ``bbox_pred`` conv and of the box predictor are permuted accordingly.
    (Frozen) batch norm weight/bias/running_mean/running_var -> gamma/beta/moving_mean/moving_variance.

Legacy names (the 2019 v1 file, before torchvision's module versions 2): ``rpn.head.conv.{weight,bias}``
(now ``conv.0.0``), ``backbone.fpn.{inner,layer}_blocks.{i}.{weight,bias}`` (now ``.{i}.0``) and
``roi_heads.mask_head.mask_fcn{i+1}.*`` (now ``mask_head.{i}.0``); ``num_batches_tracked`` (present when
the batch norms were ``nn.BatchNorm2d``, absent for ``FrozenBatchNorm2d``) is ignored.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping

import numpy as np

__all__ = ["VARIANTS", "NUM_CLASSES", "ConvertError", "read_state_dict", "canonical_state_dict", "expected_keys",
           "check_keys", "layer_weights", "assign_weights"]

VARIANTS = ("v1", "v2")
NUM_CLASSES = 91  # torchvision's COCO checkpoints: background + 90 category ids (10 of them unused)
_BLOCKS = (3, 4, 6, 3)  # ResNet-50 bottlenecks in layer1..layer4 (our conv2..conv5)
_BN = ("weight", "bias", "running_mean", "running_var")
_BN_TO_OURS = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
_DELTA_ORDER = np.array([1, 0, 3, 2])  # ours (dy, dx, dh, dw) taken from torch's (dx, dy, dw, dh)
_ROI_POOL = 7


class ConvertError(ValueError):
    """The weights file is not a torchvision Mask R-CNN state dict of the requested variant."""


# --------------------------------------------------------------------------------------------
# Reading and checking


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a ``.pth`` file: a state dict, or a training checkpoint holding one under ``model``.

    Raises:
        ConvertError: missing file, not a torch file, or no tensors in it.
    """
    if not os.path.isfile(path):
        raise ConvertError(f"--weights={path}: the file does not exist.")
    sys.modules.setdefault("triton", None)  # torch's optional compiler; it crashes next to TensorFlow
    try:
        import torch
    except ImportError:
        raise ConvertError("converting torchvision weights needs torch: pip install 'mrcnn-tf2[torch]' "
                           "(torch==2.14.1, torchvision==0.29.1).") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip and torch errors all mean "not such a file"
        raise ConvertError(f"--weights={path} is not a PyTorch state dict file (torch.load raised "
                           f"{type(e).__name__}); pass a .pth file such as torchvision's "
                           "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth.") from None
    if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
        data = data["model"]  # torchvision's references/detection/train.py checkpoints
    if not isinstance(data, Mapping) or not data or not all(torch.is_tensor(v) for v in data.values()):
        raise ConvertError(f"--weights={path} holds a {type(data).__name__}, not a state dict of tensors "
                           "(torchvision's maskrcnn_resnet50_fpn*_coco-*.pth files are one).")
    return {str(k): v.detach().cpu().numpy() for k, v in data.items()}


_LEGACY = (
    (re.compile(r"^(rpn\.head\.conv)\.(weight|bias)$"), r"\1.0.0.\2"),
    (re.compile(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$"), r"\1.0.\2"),
)
_LEGACY_MASK_FCN = re.compile(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$")


def canonical_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Current torchvision key names; ``num_batches_tracked`` dropped (torchvision's load hooks do the same)."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith(".num_batches_tracked"):
            continue
        for pattern, replacement in _LEGACY:
            key = pattern.sub(replacement, key)
        match = _LEGACY_MASK_FCN.match(key)
        if match:
            key = f"roi_heads.mask_head.{int(match.group(1)) - 1}.0.{match.group(2)}"
        out[key] = value
    return out


def _bn_keys(prefix: str) -> list[str]:
    return [f"{prefix}.{name}" for name in _BN]


def expected_keys(variant: str) -> list[str]:
    """Every key of the canonical state dict of ``variant`` (``v1`` or ``v2``), in torchvision's order."""
    if variant not in VARIANTS:
        raise ConvertError(f"--variant={variant} must be one of {', '.join(VARIANTS)}.")
    keys = ["backbone.body.conv1.weight", *_bn_keys("backbone.body.bn1")]
    for stage, blocks in enumerate(_BLOCKS, start=1):
        for block in range(blocks):
            prefix = f"backbone.body.layer{stage}.{block}"
            for i in (1, 2, 3):
                keys += [f"{prefix}.conv{i}.weight", *_bn_keys(f"{prefix}.bn{i}")]
            if block == 0:
                keys += [f"{prefix}.downsample.0.weight", *_bn_keys(f"{prefix}.downsample.1")]
    for kind in ("inner_blocks", "layer_blocks"):
        for i in range(4):
            prefix = f"backbone.fpn.{kind}.{i}"
            keys += ([f"{prefix}.0.weight", f"{prefix}.0.bias"] if variant == "v1"
                     else [f"{prefix}.0.weight", *_bn_keys(f"{prefix}.1")])
    for i in range(1 if variant == "v1" else 2):
        keys += [f"rpn.head.conv.{i}.0.weight", f"rpn.head.conv.{i}.0.bias"]
    keys += [f"rpn.head.{n}.{t}" for n in ("cls_logits", "bbox_pred") for t in ("weight", "bias")]
    if variant == "v1":
        keys += [f"roi_heads.box_head.{n}.{t}" for n in ("fc6", "fc7") for t in ("weight", "bias")]
    else:
        for i in range(4):
            keys += [f"roi_heads.box_head.{i}.0.weight", *_bn_keys(f"roi_heads.box_head.{i}.1")]
        keys += ["roi_heads.box_head.5.weight", "roi_heads.box_head.5.bias"]
    keys += [f"roi_heads.box_predictor.{n}.{t}" for n in ("cls_score", "bbox_pred") for t in ("weight", "bias")]
    for i in range(4):
        keys += ([f"roi_heads.mask_head.{i}.0.weight", f"roi_heads.mask_head.{i}.0.bias"] if variant == "v1"
                 else [f"roi_heads.mask_head.{i}.0.weight", *_bn_keys(f"roi_heads.mask_head.{i}.1")])
    keys += [f"roi_heads.mask_predictor.{n}.{t}" for n in ("conv5_mask", "mask_fcn_logits")
             for t in ("weight", "bias")]
    return keys


def _shown(keys: list[str]) -> str:
    return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")


def check_keys(state_dict: Mapping[str, np.ndarray], variant: str, path: str = "") -> None:
    """Raises ConvertError unless the canonical ``state_dict`` has exactly the keys of ``variant`` (91 classes)."""
    expected = expected_keys(variant)
    missing = [k for k in expected if k not in state_dict]
    wanted = set(expected)
    unexpected = sorted(k for k in state_dict if k not in wanted)
    source = f"--weights={path}" if path else "the state dict"
    if missing or unexpected:
        other = VARIANTS[1 - VARIANTS.index(variant)]
        fits_other = not (set(expected_keys(other)) ^ set(state_dict))
        hint = (f" It is a {other} file: pass --variant={other}." if fits_other else
                " Pass a torchvision maskrcnn_resnet50_fpn (v1) or maskrcnn_resnet50_fpn_v2 (v2) state dict.")
        parts = []
        if missing:
            parts.append(f"{len(missing)} keys are missing ({_shown(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} are unexpected ({_shown(unexpected)})")
        raise ConvertError(f"{source} is not a torchvision Mask R-CNN R50-FPN {variant} state dict: "
                           f"{'; '.join(parts)}.{hint}")
    classes = state_dict["roi_heads.box_predictor.cls_score.weight"].shape[0]
    if classes != NUM_CLASSES:
        raise ConvertError(f"{source} has {classes} classes (roi_heads.box_predictor.cls_score); the importer "
                           f"converts torchvision's COCO checkpoints, which have {NUM_CLASSES} (COCO ids 0-90).")


# --------------------------------------------------------------------------------------------
# Layout conversion (NumPy)


def _conv(weight: np.ndarray) -> np.ndarray:
    return np.transpose(weight, (2, 3, 1, 0))  # [out, in, kh, kw] -> [kh, kw, in, out]


def _deltas_rows(values: np.ndarray) -> np.ndarray:
    """Permutes axis 0 (groups of 4 in torch's dx, dy, dw, dh order) to our dy, dx, dh, dw."""
    groups = values.shape[0] // 4
    index = (4 * np.arange(groups)[:, None] + _DELTA_ORDER[None, :]).reshape(-1)
    return values[index]


def _fc_after_pool(weight: np.ndarray) -> np.ndarray:
    """Linear weight ``[out, C * 7 * 7]`` (CHW flatten) -> Dense kernel ``[7 * 7 * C, out]`` (HWC flatten)."""
    out = weight.shape[0]
    channels = weight.shape[1] // (_ROI_POOL * _ROI_POOL)
    w = weight.reshape(out, channels, _ROI_POOL, _ROI_POOL).transpose(2, 3, 1, 0)  # [7, 7, C, out]
    return w.reshape(-1, out)


LayerWeights = dict[tuple[str, str], dict[str, np.ndarray]]


def _bn(sd: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {_BN_TO_OURS[name]: sd[f"{prefix}.{name}"] for name in _BN}


def layer_weights(sd: Mapping[str, np.ndarray], variant: str) -> LayerWeights:
    """Maps a checked canonical state dict to ``{(sublayer, layer name): {variable name: array}}``.

    ``sublayer`` is an attribute of ``MaskRCNN`` (``backbone``, ``fpn``, ``rpn_head``, ``box_head``,
    ``mask_head``); the layer name is a layer of the backbone's functional model or an attribute of the
    other sublayers; variable names are Keras' (``kernel``, ``bias``, ``gamma``, ``moving_mean``, ...).
    """
    out: LayerWeights = {}
    # ResNet-50: torch layer{s}.{b}.conv{i} -> conv{s+1}_block{b+1}_{i}_conv; downsample -> ..._0_*.
    out["backbone", "conv1_conv"] = {"kernel": _conv(sd["backbone.body.conv1.weight"])}
    out["backbone", "conv1_bn"] = _bn(sd, "backbone.body.bn1")
    for stage, blocks in enumerate(_BLOCKS, start=1):
        for block in range(blocks):
            src, dst = f"backbone.body.layer{stage}.{block}", f"conv{stage + 1}_block{block + 1}"
            for i in (1, 2, 3):
                out["backbone", f"{dst}_{i}_conv"] = {"kernel": _conv(sd[f"{src}.conv{i}.weight"])}
                out["backbone", f"{dst}_{i}_bn"] = _bn(sd, f"{src}.bn{i}")
            if block == 0:
                out["backbone", f"{dst}_0_conv"] = {"kernel": _conv(sd[f"{src}.downsample.0.weight"])}
                out["backbone", f"{dst}_0_bn"] = _bn(sd, f"{src}.downsample.1")
    # FPN: inner_blocks.i / layer_blocks.i act on C(i+2).
    for kind, ours in (("inner_blocks", "lateral"), ("layer_blocks", "output")):
        for i in range(4):
            src, dst = f"backbone.fpn.{kind}.{i}", f"{ours}_p{i + 2}"
            conv = {"kernel": _conv(sd[f"{src}.0.weight"])}
            if variant == "v1":
                conv["bias"] = sd[f"{src}.0.bias"]
            else:
                out["fpn", f"{dst}_bn"] = _bn(sd, f"{src}.1")
            out["fpn", f"{dst}_conv"] = conv
    # RPN head.
    for i in range(1 if variant == "v1" else 2):
        out["rpn_head", f"conv_{i}"] = {"kernel": _conv(sd[f"rpn.head.conv.{i}.0.weight"]),
                                        "bias": sd[f"rpn.head.conv.{i}.0.bias"]}
    out["rpn_head", "objectness"] = {"kernel": _conv(sd["rpn.head.cls_logits.weight"]),
                                     "bias": sd["rpn.head.cls_logits.bias"]}
    out["rpn_head", "deltas"] = {"kernel": _conv(_deltas_rows(sd["rpn.head.bbox_pred.weight"])),
                                 "bias": _deltas_rows(sd["rpn.head.bbox_pred.bias"])}
    # Box head.
    if variant == "v1":
        out["box_head", "fc_0"] = {"kernel": _fc_after_pool(sd["roi_heads.box_head.fc6.weight"]),
                                   "bias": sd["roi_heads.box_head.fc6.bias"]}
        out["box_head", "fc_1"] = {"kernel": sd["roi_heads.box_head.fc7.weight"].T,
                                   "bias": sd["roi_heads.box_head.fc7.bias"]}
    else:
        for i in range(4):
            out["box_head", f"conv_{i}"] = {"kernel": _conv(sd[f"roi_heads.box_head.{i}.0.weight"])}
            out["box_head", f"bn_{i}"] = _bn(sd, f"roi_heads.box_head.{i}.1")
        out["box_head", "fc_0"] = {"kernel": _fc_after_pool(sd["roi_heads.box_head.5.weight"]),
                                   "bias": sd["roi_heads.box_head.5.bias"]}
    out["box_head", "class_logits"] = {"kernel": sd["roi_heads.box_predictor.cls_score.weight"].T,
                                       "bias": sd["roi_heads.box_predictor.cls_score.bias"]}
    out["box_head", "box_deltas"] = {"kernel": _deltas_rows(sd["roi_heads.box_predictor.bbox_pred.weight"]).T,
                                     "bias": _deltas_rows(sd["roi_heads.box_predictor.bbox_pred.bias"])}
    # Mask head.
    for i in range(4):
        conv = {"kernel": _conv(sd[f"roi_heads.mask_head.{i}.0.weight"])}
        if variant == "v1":
            conv["bias"] = sd[f"roi_heads.mask_head.{i}.0.bias"]
        else:
            out["mask_head", f"bn_{i}"] = _bn(sd, f"roi_heads.mask_head.{i}.1")
        out["mask_head", f"conv_{i}"] = conv
    out["mask_head", "upsample"] = {
        "kernel": np.transpose(sd["roi_heads.mask_predictor.conv5_mask.weight"], (2, 3, 1, 0)),
        "bias": sd["roi_heads.mask_predictor.conv5_mask.bias"]}
    out["mask_head", "mask_logits"] = {"kernel": _conv(sd["roi_heads.mask_predictor.mask_fcn_logits.weight"]),
                                       "bias": sd["roi_heads.mask_predictor.mask_fcn_logits.bias"]}
    return {key: {name: np.ascontiguousarray(v, np.float32) for name, v in values.items()}
            for key, values in out.items()}


# --------------------------------------------------------------------------------------------
# Writing into a model


def _find_layer(model, sublayer: str, name: str):
    owner = getattr(model, sublayer)
    if hasattr(owner, "get_layer"):
        try:
            return owner.get_layer(name)
        except ValueError:
            return None
    return getattr(owner, name, None)


def _short_name(variable) -> str:
    return variable.path.rsplit("/", 1)[-1]


def assign_weights(model, weights: LayerWeights) -> list[str]:
    """Assigns ``weights`` (from :func:`layer_weights`) to a built model, all or nothing.

    Every model variable must receive a value, except convolution biases that torchvision's layer lacks
    (set to 0: the same function). Returns the paths of those zero-filled biases.

    Raises:
        ConvertError: a layer or variable of the mapping is missing in the model, a shape differs, or a
            model variable has no counterpart in the file (the model is then left unchanged).
    """
    pairs, zeroed, problems = [], [], []
    covered = set()
    for (sublayer, name), values in weights.items():
        layer = _find_layer(model, sublayer, name)
        if layer is None:
            problems.append(f"{sublayer}/{name}: no such layer in the model")
            continue
        by_name = {_short_name(v): v for v in layer.weights}
        for var_name, value in values.items():
            variable = by_name.get(var_name)
            if variable is None:
                problems.append(f"{sublayer}/{name}/{var_name}: no such variable in the model")
            elif tuple(variable.shape) != value.shape:
                problems.append(f"{variable.path}: shape {tuple(variable.shape)} in the model, {value.shape} "
                                "in the file")
            else:
                pairs.append((variable, value))
                covered.add(id(variable))
        for var_name, variable in by_name.items():
            if id(variable) not in covered and var_name == "bias" and "kernel" in values:
                pairs.append((variable, np.zeros(tuple(variable.shape), np.float32)))
                zeroed.append(variable.path)
                covered.add(id(variable))
    left = [v.path for v in model.weights if id(v) not in covered]
    if left:
        problems.append(f"{len(left)} model variables have no counterpart in the file ({_shown(left)})")
    if problems:
        raise ConvertError("the torchvision weights do not fit the model built from the config: "
                           f"{'; '.join(problems[:8])}. Convert with the config the importer writes "
                           "(the torchvision presets).")
    for variable, value in pairs:
        variable.assign(value)
    return zeroed
