"""The MTCNN cascade (image pyramid -> PNet -> NMS -> RNet -> NMS -> ONet -> NMS) over pluggable nets.

The three nets are plain callables on normalised float32 batches, so the same cascade runs the fp32 torch
nets (`torch_stages`) or the nets compiled for the overlay (`dynq.bench_faces`), and every comparison
between them differs only in the nets. The cascade follows the original MTCNN and facenet-pytorch's port
(same scales, thresholds, cell geometry, regression and squaring rules), written in numpy and torch
without torchvision. `detect` returns a `Trace`: besides the final boxes, the exact inputs each stage saw
and what it answered, so each net can also be compared on identical inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from dynq.zoo.faces import resample
from dynq.zoo.mtcnn import CROP, Nets

StageFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""A net as the cascade calls it: a normalised float32 batch [N, 3, h, w] -> (box regression, face
probability): for PNet ([N, 4, h', w'], [N, h', w']), for RNet and ONet ([N, 4], [N])."""


@dataclass(frozen=True)
class Params:
    """MTCNN's detection settings (facenet-pytorch's defaults)."""

    min_face: int = 20
    factor: float = 0.709
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)


@dataclass(frozen=True)
class Stages:
    pnet: StageFn
    rnet: StageFn
    onet: StageFn


@dataclass
class Trace:
    """What one cascade run saw and produced. Boxes are (x1, y1, x2, y2, score) in image pixels."""

    levels: list[np.ndarray] = field(default_factory=list)
    """The normalised pyramid levels [N, 3, h, w] PNet ran on, largest first."""
    pnet_prob: list[np.ndarray] = field(default_factory=list)
    """PNet's face probability map per level [N, h', w']."""
    rnet_in: np.ndarray | None = None
    rnet_prob: np.ndarray | None = None
    onet_in: np.ndarray | None = None
    onet_prob: np.ndarray | None = None
    boxes: list[np.ndarray] = field(default_factory=list)
    """Per image, the final detections [D, 5]."""


def normalise(pixels: np.ndarray) -> np.ndarray:
    """MTCNN's input scaling of 0..255 pixels."""
    return ((pixels - 127.5) * 0.0078125).astype(np.float32)


def pyramid_sizes(height: int, width: int, params: Params = Params()) -> list[tuple[float, int, int]]:
    """(scale, level height, level width) of every pyramid level, largest first: the first scale maps
    `min_face` pixels onto PNet's 12-pixel window, and levels shrink by `factor` while PNet still fits."""
    scale, side = 12.0 / params.min_face, min(height, width) * 12.0 / params.min_face
    sizes = []
    while side >= 12:
        sizes.append((scale, int(height * scale + 1), int(width * scale + 1)))
        scale, side = scale * params.factor, side * params.factor
    return sizes


def nms(boxes: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Indices of `boxes` [K, >=5] (x1, y1, x2, y2, score) kept by greedy non-maximum suppression, best
    first; overlap is intersection over union, or over the smaller box with method "min" (pixel-inclusive
    areas, as in MTCNN). Ties keep the earlier box, so the result never depends on sort instability."""
    order = np.argsort(-boxes[:, 4], kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        base = np.minimum(area[i], area[rest]) if method == "min" else area[i] + area[rest] - inter
        order = rest[inter / base <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _nms_per_image(boxes: np.ndarray, image: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """`nms` within each image of the batch; indices into `boxes`, image by image."""
    keep = [np.flatnonzero(image == i)[nms(boxes[image == i], threshold, method)] for i in np.unique(image)]
    return np.concatenate(keep) if keep else np.zeros(0, np.int64)


def _cells(reg: np.ndarray, prob: np.ndarray, scale: float, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """PNet cells at or above `threshold` as boxes [K, 9] (x1, y1, x2, y2, score, 4 regression offsets) in
    image pixels, and their image indices: a cell (row, col) is the 12x12 window at 2*(col, row)."""
    image, row, col = np.nonzero(prob >= threshold)
    corner = np.stack([col, row], axis=1).astype(np.float64) * 2
    boxes = np.concatenate([np.floor((corner + 1) / scale), np.floor((corner + 12) / scale),
                            prob[image, row, col][:, None], reg[image, :, row, col]], axis=1)
    return boxes, image


def _square(boxes: np.ndarray) -> np.ndarray:
    """Boxes grown about their centre to squares of their longer side (the crop nets take squares)."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2:4] = out[:, :2] + side[:, None]
    return out


def _regress(boxes: np.ndarray, reg: np.ndarray, inclusive: bool) -> np.ndarray:
    """Boxes moved by regression offsets (fractions of the box size; RNet/ONet count sizes pixel-inclusive)."""
    out = boxes.copy()
    size = boxes[:, 2:4] - boxes[:, 0:2] + (1 if inclusive else 0)
    out[:, 0:2] = boxes[:, 0:2] + reg[:, 0:2] * size
    out[:, 2:4] = boxes[:, 2:4] + reg[:, 2:4] * size
    return out


def _crops(images: np.ndarray, boxes: np.ndarray, image: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised square crops [K, 3, side, side] of `boxes` (clipped to the image, as facenet-pytorch does),
    and the indices of the boxes that still cover a pixel after clipping (the others are dropped)."""
    _, _, h, w = images.shape
    b = np.trunc(boxes[:, :4]).astype(np.int64)
    x1, y1 = np.maximum(b[:, 0], 1) - 1, np.maximum(b[:, 1], 1) - 1
    x2, y2 = np.minimum(b[:, 2], w), np.minimum(b[:, 3], h)
    valid = np.flatnonzero((x2 > x1) & (y2 > y1))
    crops = [resample(images[image[k], None, :, y1[k]:y2[k], x1[k]:x2[k]], side, side)[0] for k in valid]
    return normalise(np.stack(crops)) if crops else np.zeros((0, 3, side, side), np.float32), valid


def detect(images: np.ndarray, stages: Stages, params: Params = Params()) -> Trace:
    """Runs the cascade on a batch of same-size photos (float32 RGB [N, 3, H, W], 0..255)."""
    trace = Trace()
    n, _, height, width = images.shape
    found, owner = [np.zeros((0, 9))], [np.zeros(0, np.int64)]
    for scale, lh, lw in pyramid_sizes(height, width, params):
        level = normalise(resample(images, lh, lw))
        reg, prob = stages.pnet(level)
        trace.levels.append(level)
        trace.pnet_prob.append(prob)
        boxes, image = _cells(reg, prob, scale, params.thresholds[0])
        keep = _nms_per_image(boxes, image, 0.5)
        found.append(boxes[keep])
        owner.append(image[keep])
    boxes, image = np.concatenate(found), np.concatenate(owner)
    keep = _nms_per_image(boxes, image, 0.7)
    boxes, image = boxes[keep], image[keep]
    boxes = _square(np.concatenate([_regress(boxes[:, :4], boxes[:, 5:9], False), boxes[:, 4:5]], axis=1))
    for name, threshold in (("rnet", params.thresholds[1]), ("onet", params.thresholds[2])):
        crops, valid = _crops(images, boxes, image, CROP[name])
        boxes, image = boxes[valid], image[valid]
        reg, prob = getattr(stages, name)(crops) if len(crops) else (np.zeros((0, 4)), np.zeros(0))
        setattr(trace, f"{name}_in", crops)
        setattr(trace, f"{name}_prob", prob)
        passed = prob > threshold
        boxes = np.concatenate([boxes[passed, :4], prob[passed, None]], axis=1)
        reg, image = reg[passed], image[passed]
        if name == "rnet":
            keep = _nms_per_image(boxes, image, 0.7)
            boxes = _square(_regress(boxes[keep], reg[keep], True))
            image = image[keep]
        else:
            boxes = _regress(boxes, reg, True)
            keep = _nms_per_image(boxes, image, 0.7, "min")
            boxes, image = boxes[keep], image[keep]
    trace.boxes = [boxes[image == i] for i in range(n)]
    return trace


def torch_stages(nets: Nets) -> Stages:
    """The fp32 reference: the plain-torch nets, no gradient, face probability = softmax channel 1."""

    def wrap(net: torch.nn.Module) -> StageFn:
        def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            with torch.inference_mode():
                out = net(torch.from_numpy(x))
            return out[0].numpy(), out[-1][:, 1].numpy()

        return run

    return Stages(wrap(nets.pnet), wrap(nets.rnet), wrap(nets.onet))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union [len(a), len(b)] of boxes (x1, y1, x2, y2, ...) as continuous areas."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:4] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:4] - b[:, :2], 0, None), axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)
