"""Real photographs with faces for the MTCNN evaluation, all bundled with scikit-image (no download).

scikit-image 0.26 ships, among ~27 offline images, two photographs of people (`astronaut`: Eileen Collins,
frontal; `camera`: the cameraman, in profile) and `lfw_subset`: 100 real face crops and 100 non-face
crops from Labeled Faces in the Wild, 25x25 grayscale. The crops are what MTCNN's second and third nets
see (square boxes around a face, or background), and tiled on a plain canvas they also make a photo with
many faces for the whole cascade. The other bundled photos (a cat, coffee, a rocket ...) hold no faces
and show whether a precision mode invents detections.

Every photo is letterboxed onto one square canvas (long side scaled to `side`, mid-grey padding), so all
photos share one image pyramid and the overlay needs one PNet build per pyramid level, not per photo.
"""

from __future__ import annotations

from types import ModuleType
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

PAD_VALUE = 127.5
"""Letterbox padding: MTCNN normalises pixels as (p - 127.5) / 128, so this pads with zeros."""
Split = Literal["calib", "eval"]


def _skimage_data() -> ModuleType:
    """`skimage.data`, imported late so that dynq imports (and its other suites run) without scikit-image."""
    try:
        import skimage.data
    except ImportError as exc:
        raise RuntimeError("the face photos come from scikit-image: pip install 'scikit-image>=0.26'") from exc
    return skimage.data


def photo(name: str) -> np.ndarray:
    """A bundled scikit-image photo by its `skimage.data` name as float32 RGB [3, H, W] in 0..255."""
    data = _skimage_data()
    loader = getattr(data, name, None)
    if loader is None or name.startswith("_") or name in ("lfw_subset", "download_all", "data_dir"):
        raise ValueError(f"{name!r} is not a photo of skimage.data; try 'astronaut', 'camera' or 'chelsea'")
    image = np.asarray(loader())
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"skimage.data.{name} is not an 8-bit photo ({image.dtype}, shape {list(image.shape)})")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3].transpose(2, 0, 1), dtype=np.float32)


def lfw_crops(split: Split, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Half of the LFW subset: float32 RGB crops [100, 3, 25, 25] in 0..255 and labels (1 face, 0 not).

    A seeded permutation of each class is cut in two, so calibration and evaluation never share a crop
    and both halves hold 50 faces and 50 non-faces."""
    if split not in ("calib", "eval"):
        raise ValueError(f"split must be 'calib' or 'eval', got {split!r}")
    crops = np.asarray(_skimage_data().lfw_subset(), dtype=np.float64)
    rng = np.random.default_rng(seed)
    picked: list[np.ndarray] = []
    for first in (0, 100):  # faces first, then non-faces
        order = first + rng.permutation(100)
        picked.append(order[:50] if split == "calib" else order[50:])
    index = np.concatenate(picked)
    images = np.repeat((crops[index] * 255.0).astype(np.float32)[:, None], 3, axis=1)
    return images, (index < 100).astype(np.int64)


def resample(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area resampling of float32 [N, C, h, w] to [N, C, height, width] (what MTCNN's pyramid and crops use)."""
    return F.interpolate(torch.from_numpy(np.ascontiguousarray(images)), size=(height, width),
                         mode="area").numpy()


def letterbox(image: np.ndarray, side: int) -> np.ndarray:
    """`image` [3, H, W] scaled so its long side is `side`, centred on a `side` x `side` mid-grey canvas."""
    _, h, w = image.shape
    scale = side / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    canvas = np.full((3, side, side), PAD_VALUE, np.float32)
    top, left = (side - nh) // 2, (side - nw) // 2
    canvas[:, top:top + nh, left:left + nw] = resample(image[None], nh, nw)[0]
    return canvas


def mosaic(crops: np.ndarray, side: int, grid: int, cell: int) -> np.ndarray:
    """The first grid*grid `crops` [N, 3, h, w] scaled to `cell` pixels, spaced evenly on a mid-grey
    `side` x `side` canvas: a photo with many real faces, each with background around it as in a photo."""
    if len(crops) < grid * grid or grid * cell > side:
        raise ValueError(f"a {grid}x{grid} mosaic of {cell}-pixel cells needs {grid * grid} crops and a canvas of "
                         f"at least {grid * cell} pixels; got {len(crops)} crops and {side}")
    canvas = np.full((3, side, side), PAD_VALUE, np.float32)
    tiles = resample(crops[:grid * grid], cell, cell)
    gap = (side - grid * cell) / (grid + 1)
    for i, tile in enumerate(tiles):
        top, left = (round(gap + k * (cell + gap)) for k in divmod(i, grid))
        canvas[:, top:top + cell, left:left + cell] = tile
    return canvas
