"""Mask R-CNN command line: ``python main.py --mode=train|eval|export|predict`` (``--helpfull`` lists every flag).

Examples::

    python main.py --mode=train --config=shapes --model_dir=logs/shapes --model=none
    python main.py --mode=eval --model=last --model_dir=logs/shapes
    python main.py --mode=export --model=last --model_dir=logs/shapes --export_dir=exported/maskrcnn
    python main.py --mode=predict --model=last --model_dir=logs/shapes --images='photos/*.png' --output_dir=out

The installed console command ``mrcnn-tf2`` is the same program: the flags and the work are in
``cli/command.py``. Bad input exits with status 2 and one paragraph saying what to change.
"""

from mrcnn_tf2.cli.command import run

if __name__ == "__main__":
    run()
