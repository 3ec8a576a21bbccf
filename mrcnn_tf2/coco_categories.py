"""COCO's category ids and names, and the 91-output label mapping of torchvision's COCO checkpoints.

COCO 2014/2017 numbers its 80 detection categories 1..90 with ten gaps (ids 12, 26, 29, 30, 45, 66, 68,
69, 71, 83 were dropped from the paper's 91-category list). torchvision's COCO models have 91 outputs
indexed by category id: output 0 is the background and output ``i`` is category id ``i``, so ten outputs
belong to no category. In our config that is the mapping label ``i`` -> ``data.category_ids[i - 1] = i``
for ``i`` in 1..90, with ``data.category_names[i - 1] = NO_CATEGORY`` at the gaps; evaluation and results
files skip detections of those labels. No TensorFlow here.
"""

from __future__ import annotations

__all__ = ["COCO_CATEGORIES", "NO_CATEGORY", "TORCHVISION_CATEGORY_IDS", "TORCHVISION_CATEGORY_NAMES",
           "is_real_category"]

NO_CATEGORY = "N/A"

# COCO category id -> name (instances_val2017.json "categories").
COCO_CATEGORIES: dict[int, str] = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train", 8: "truck",
    9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign", 14: "parking meter", 15: "bench",
    16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow", 22: "elephant", 23: "bear",
    24: "zebra", 25: "giraffe", 27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase",
    34: "frisbee", 35: "skis", 36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat",
    40: "baseball glove", 41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle",
    46: "wine glass", 47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza", 60: "donut",
    61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed", 67: "dining table", 70: "toilet",
    72: "tv", 73: "laptop", 74: "mouse", 75: "remote", 76: "keyboard", 77: "cell phone", 78: "microwave",
    79: "oven", 80: "toaster", 81: "sink", 82: "refrigerator", 84: "book", 85: "clock", 86: "vase",
    87: "scissors", 88: "teddy bear", 89: "hair drier", 90: "toothbrush",
}

# torchvision's 91-output COCO models: label i (1..90) is category id i.
TORCHVISION_CATEGORY_IDS: tuple[int, ...] = tuple(range(1, 91))
TORCHVISION_CATEGORY_NAMES: tuple[str, ...] = tuple(COCO_CATEGORIES.get(i, NO_CATEGORY)
                                                    for i in TORCHVISION_CATEGORY_IDS)


def is_real_category(name: str) -> bool:
    """False for the placeholder name of a label that maps to no dataset category."""
    return name != NO_CATEGORY
