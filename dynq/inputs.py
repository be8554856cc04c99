"""Input batches for `dynq run` and `dynq compile --calib`: arrays from `.npy`/`.npz`, or image files (one,
a directory of them, or a glob) converted to the model's input shape.

Every failure is a UsageError naming the file and what to do, so the command line prints one line.
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np

from dynq.errors import UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
"""Files taken as images (decoded by Pillow)."""
IMAGE_MODES = {1: "L", 3: "RGB"}
"""Channels of the model input -> the Pillow mode an image is converted to (grey levels or RGB)."""
SOURCES = "a .npy, an .npz, an image (PNG, JPEG, ...), a directory of images or a quoted glob such as 'imgs/*.png'"


def load_array(path: Path, what: str, name: str | None = None,
               naming: str = "name one with --array NAME") -> np.ndarray:
    """The array of a `.npy`, or the array `name` of an `.npz` (its only one when `name` is None). `naming`
    tells the user how to pick one of several arrays."""
    if not path.is_file():
        raise UsageError(f"{path}: no such file ({what})")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read {what} as .npy/.npz ({exc})") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        if name is not None:
            raise UsageError(f"{path}: a .npy holds one unnamed array; --array NAME picks an array of an .npz")
        return data
    with data:
        if name is None:
            if len(data.files) != 1:
                held = ", ".join(data.files) or "no arrays"
                raise UsageError(f"{path}: the .npz holds {held}, not one array; {naming}")
            name = data.files[0]
        if name not in data.files:
            raise UsageError(f"{path}: the .npz has no array {name!r}; it holds {', '.join(data.files)}")
        return data[name]


def image_files(source: str) -> list[Path] | None:
    """The image files `source` names (a directory: the images in it; a glob: its matches; an image file:
    itself), sorted by name; None when `source` is not about images (an array file)."""
    path = Path(source)
    if any(c in source for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(source) if Path(p).is_file())
        if not files:
            raise UsageError(f"{source}: no file matches; check the pattern (quote it so the shell leaves it)")
        return files
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UsageError(f"{path}: the directory holds no images ({', '.join(IMAGE_SUFFIXES)}); give {SOURCES}")
        return files
    if path.suffix.lower() in IMAGE_SUFFIXES:
        if not path.is_file():
            raise UsageError(f"{path}: no such file; give {SOURCES}")
        return [path]
    return None


def read_images(files: list[Path], shape: tuple[int, ...]) -> np.ndarray:
    """The images as a float32 batch [N, C, H, W] in [0, 1] (pixel / 255), each converted to grey levels (C=1)
    or RGB (C=3) and resized to H x W (bilinear) when its size differs."""
    if len(shape) != 3 or shape[0] not in IMAGE_MODES:
        raise UsageError(f"the model takes [N, {', '.join(map(str, shape))}]; images convert to [N, 1, H, W] "
                         f"(grey) or [N, 3, H, W] (RGB) only: give a .npy of shape [N, {', '.join(map(str, shape))}]")
    from PIL import Image, UnidentifiedImageError

    channels, height, width = shape
    batch = np.empty((len(files), *shape), np.float32)
    for i, file in enumerate(files):
        try:
            with Image.open(file) as img:
                img = img.convert(IMAGE_MODES[channels])
                if img.size != (width, height):
                    img = img.resize((width, height), Image.Resampling.BILINEAR)
                pixels = np.asarray(img, np.float32)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise UsageError(f"{file}: not an image Pillow can read ({exc}); give PNG or JPEG files") from exc
        batch[i] = (pixels.reshape(height, width, channels) / np.float32(255)).transpose(2, 0, 1)
    return batch


def load_batch(source: str, shape: tuple[int, ...], array: str | None = None) -> tuple[np.ndarray, list[str]]:
    """(the batch, the image files in batch order, empty for an array) from `source`: an array file as
    stored (`Model.run` checks its shape and dtype), or images converted to `shape` ([C, H, W])."""
    files = image_files(source)
    if files is None:
        path = Path(source)
        if path.suffix.lower() not in (".npy", ".npz"):
            raise UsageError(f"{path}: neither an array (.npy, .npz) nor an image file; give {SOURCES}")
        return load_array(path, "the input", array), []
    if array is not None:
        raise UsageError(f"{source}: --array names an array of an .npz, not of images")
    return read_images(files, shape), [str(f) for f in files]
