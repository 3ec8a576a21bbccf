"""Weight importers: other frameworks' checkpoints -> a run directory of this project.

``python -m mrcnn_tf2.convert torchvision --weights FILE.pth --variant v1|v2 --model_dir DIR`` converts
torchvision's Mask R-CNN R50-FPN COCO checkpoints (see ``convert/torchvision.py`` and ``__main__.py``).
torch is imported only inside these modules, only when converting: the model, eval, predict and export
never need it.
"""
