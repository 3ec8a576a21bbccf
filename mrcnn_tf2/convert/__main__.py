"""``python -m mrcnn_tf2.convert torchvision --weights FILE.pth --variant v1|v2 --model_dir DIR``.

Writes a run directory that every mode of main.py accepts:

- ``DIR/config.json``: the ``torchvision_r50_fpn`` (v1) or ``torchvision_r50_fpn_v2`` (v2) preset, with
  ``--config_override`` values applied, and the category mapping (label i = COCO category id i, 1..90,
  with torchvision's names; the ten ids COCO never uses are named ``N/A``);
- ``DIR/checkpoints/ckpt-0``: a ``tf.train.Checkpoint`` of the model (step 0), written by the same
  ``CheckpointKeeper`` as training, so ``--mode=eval|predict|export --model=last --model_dir=DIR`` and
  fine-tuning with ``--model=DIR/checkpoints/ckpt-0`` work.

The state dict is read (with torch) and checked before TensorFlow starts. Bad input (a missing or foreign
file, the wrong ``--variant``, a model dir that already holds checkpoints) exits with status 2 and one
paragraph.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

from mrcnn_tf2 import config as config_lib
from mrcnn_tf2.convert import torchvision as tv

PRESETS = {"v1": "torchvision_r50_fpn", "v2": "torchvision_r50_fpn_v2"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mrcnn_tf2.convert", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="source", required=True)
    p = sub.add_parser("torchvision", help="torchvision maskrcnn_resnet50_fpn / _v2 COCO checkpoints (.pth)")
    p.add_argument("--weights", required=True, help="the .pth state dict, e.g. maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")
    p.add_argument("--variant", required=True, choices=tv.VARIANTS,
                   help="v1 = maskrcnn_resnet50_fpn, v2 = maskrcnn_resnet50_fpn_v2")
    p.add_argument("--model_dir", required=True, help="the run directory to write (must hold no checkpoints)")
    p.add_argument("--config_override", action="append", default=[],
                   help="key=value with a dotted key applied to the preset, e.g. model.min_size=640; repeatable")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    return parser


def _coco_categories(cfg: config_lib.Config) -> config_lib.Config:
    """The COCO mapping of torchvision's 91 outputs: label i -> category id i (1..90), with names."""
    from mrcnn_tf2.coco_categories import TORCHVISION_CATEGORY_IDS, TORCHVISION_CATEGORY_NAMES

    return config_lib.apply_overrides(cfg, {"data.category_ids": list(TORCHVISION_CATEGORY_IDS),
                                            "data.category_names": list(TORCHVISION_CATEGORY_NAMES),
                                            "model.num_classes": len(TORCHVISION_CATEGORY_IDS) + 1})


def build_config(variant: str, overrides: list[str]) -> config_lib.Config:
    """The preset of ``variant`` with ``overrides`` and the COCO category mapping, validated."""
    cfg = config_lib.apply_overrides(config_lib.preset(PRESETS[variant]), overrides)
    cfg = config_lib.validate(_coco_categories(cfg))
    if cfg.model.num_classes != tv.NUM_CLASSES:
        raise config_lib.ConfigError(f"model.num_classes={cfg.model.num_classes}: torchvision's COCO checkpoints "
                                     f"have {tv.NUM_CLASSES} outputs; fine-tune on other classes after converting.")
    return cfg


def convert(weights: str, variant: str, model_dir: str, overrides: list[str] | None = None) -> str:
    """Converts ``weights`` into the run directory ``model_dir``; returns the checkpoint prefix.

    Raises:
        tv.ConvertError, config.ConfigError: bad input (the message names the file, keys or field).
    """
    from mrcnn_tf2.cli.common import RunPaths, find_checkpoint, write_config  # the run-dir layout of main.py (no TF)

    paths = RunPaths(model_dir)
    if find_checkpoint(paths.checkpoints) is not None:
        raise tv.ConvertError(f"--model_dir={model_dir} already holds checkpoints; choose a new directory.")
    state_dict = tv.canonical_state_dict(tv.read_state_dict(weights))
    tv.check_keys(state_dict, variant, weights)
    cfg = build_config(variant, list(overrides or []))
    mapped = tv.layer_weights(state_dict, variant)
    del state_dict

    from mrcnn_tf2 import training  # TensorFlow starts here, after every input check
    from mrcnn_tf2.builder import build_model

    model = build_model(cfg)
    tv.assign_weights(model, mapped)
    write_config(cfg, paths.config)
    return training.CheckpointKeeper(model_dir, model, None, max_to_keep=1).save(0)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        prefix = convert(args.weights, args.variant, args.model_dir, args.config_override)
    except (tv.ConvertError, config_lib.ConfigError) as e:
        message = " ".join(str(e).split())
        print(textwrap.fill(f"error: {message}", width=110), file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"wrote {os.path.join(args.model_dir, 'config.json')} ({PRESETS[args.variant]}) and {prefix}\n"
              f"evaluate: python main.py --mode=eval --model=last --model_dir={args.model_dir} "
              "--val_annotations=... --val_images=...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
