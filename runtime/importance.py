"""Input importance for the DAQ mode: which regions of an image get 8 bits, 4 bits or none.

Dynamic activation quantization judges each region of the *input image* and lets unimportant regions run
at lower precision through the whole network (down to 0 bits: cropped). The core applies one region mask,
a MASK_GRID x MASK_GRID grid of levels (0 cropped, 1 4-bit, 2 8-bit) over the input, scaled to every
layer. This module makes that mask from an image in three steps:

1. an importance function maps one image [C, H, W] (float, any range) to a per-pixel map [H, W] >= 0:
   `local_entropy`, `gradient_magnitude` or `keypoint_density`, or any callable of that shape;
2. `cell_scores` averages the map over the pixels the core maps into each mask cell;
3. `levels` ranks the cells and gives the top fraction 8 bits and the next 4 bits (or compares the
   scores with thresholds).

Everything is numpy in float64 with fixed windows and no random state, so the same image always gives the
same mask, on the host and in tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dynq.contract.registers import MASK_GRID, Level
from dynq.errors import UsageError

Importance = Callable[[np.ndarray], np.ndarray]
"""One image [C, H, W] -> per-pixel importance [H, W] (larger = more important)."""


def _box_sum(a: np.ndarray, radius: int) -> np.ndarray:
    """Sum of `a` [..., H, W] over the (2r+1)^2 window around each pixel, pixels outside counting 0."""
    padded = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(radius + 1, radius), (radius + 1, radius)])
    table = padded.cumsum(-2).cumsum(-1)  # table[y, x] = sum of padded[:y+1, :x+1]; row/col 0 are zeros
    k = 2 * radius + 1
    return table[..., k:, k:] - table[..., :-k, k:] - table[..., k:, :-k] + table[..., :-k, :-k]


def _luminance(image: np.ndarray) -> np.ndarray:
    """The mean over channels, in float64: the intensity the entropy and corner measures look at."""
    return np.asarray(image, np.float64).mean(axis=0)


def _sobel(plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d/dx, d/dy) of `plane` [..., H, W] by the Sobel operator scaled by 1/8, so a ramp of slope 1 gives 1.
    The border is replicated: the image's edge is not an edge of its content."""
    p = np.pad(plane, [(0, 0)] * (plane.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    rows = p[..., :-2, :] + 2 * p[..., 1:-1, :] + p[..., 2:, :]  # [1, 2, 1] down the columns
    cols = p[..., :, :-2] + 2 * p[..., :, 1:-1] + p[..., :, 2:]  # [1, 2, 1] along the rows
    return (rows[..., 2:] - rows[..., :-2]) / 8, (cols[..., 2:, :] - cols[..., :-2, :]) / 8


def local_entropy(image: np.ndarray, radius: int = 2, bins: int = 16) -> np.ndarray:
    """Shannon entropy (bits) of the intensity histogram in the (2*radius+1)^2 window around each pixel.

    Why it marks importance: a flat region (sky, a wall, the black around an MNIST digit) holds one
    intensity and has entropy 0, while detail and texture mix many: low entropy means little information
    for the network to use, so that region's activations can lose bits. Intensities are binned over the
    image's own range, so the map does not depend on how the input was scaled or normalised; windows at the
    border count only the pixels inside the image.
    """
    lum = _luminance(image)
    lo, hi = float(lum.min()), float(lum.max())
    if hi == lo:
        return np.zeros_like(lum)
    index = np.minimum(((lum - lo) / (hi - lo) * bins).astype(np.int64), bins - 1)
    counts = _box_sum((index == np.arange(bins)[:, None, None]).astype(np.float64), radius)
    p = counts / _box_sum(np.ones_like(lum), radius)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log2(p), 0.0)
    return terms.sum(axis=0)


def gradient_magnitude(image: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude, the largest over the channels (the colour gradient).

    Why it marks importance: edges and contours are what a CNN's early filters respond to and what
    objects are recognised by; smooth areas give small, similar activations. Taking the largest channel
    keeps an edge between two colours of equal brightness, which a grey-level gradient would miss.
    """
    gx, gy = _sobel(np.asarray(image, np.float64))
    return np.hypot(gx, gy).max(axis=0)


def keypoint_density(image: np.ndarray, k: float = 0.05, relative: float = 0.01) -> np.ndarray:
    """1.0 at each Harris corner of the intensity, else 0; `cell_scores` turns it into corners per pixel.

    Why it marks importance: corners (points of interest) are where two edge directions meet, the stable,
    distinctive points that matching and recognition rely on; a region with many holds structure, one with
    none is flat or a plain edge. A corner is a pixel whose Harris response `det(M) - k*trace(M)^2` (M: the
    structure tensor summed over a 3x3 window) is positive, at least `relative` times the image's largest,
    and the largest in its 3x3 neighbourhood. Relative to the image's own peak, so scaling the input does
    not change the corners.
    """
    gx, gy = _sobel(_luminance(image))
    sxx, syy, sxy = (_box_sum(v, 1) for v in (gx * gx, gy * gy, gx * gy))
    response = sxx * syy - sxy * sxy - k * (sxx + syy) ** 2
    peak = float(response.max())
    if peak <= 0:
        return np.zeros_like(response)
    padded = np.pad(response, 1, constant_values=-np.inf)
    h, w = response.shape
    neighbourhood = np.max([padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=0)
    return ((response >= relative * peak) & (response > 0) & (response == neighbourhood)).astype(np.float64)


IMPORTANCE: dict[str, Importance] = {
    "entropy": local_entropy,
    "gradient": gradient_magnitude,
    "keypoints": keypoint_density,
}
"""The importance functions by the names `Model.run(mask=...)` and `dynq run --mask` take."""


def _cell_matrix(n: int) -> np.ndarray:
    """[MASK_GRID, n]: row c averages the pixels of an axis of n that the core maps to cell c (pixel p takes
    cell p * MASK_GRID // n, as `numerics.mask_cells` says); a cell no pixel maps to (n < MASK_GRID) takes
    the pixel it lies in, so every cell has a score."""
    owner = np.arange(n) * MASK_GRID // n
    m = (owner[None, :] == np.arange(MASK_GRID)[:, None]).astype(np.float64)
    empty = m.sum(axis=1) == 0
    m[empty, np.arange(MASK_GRID)[empty] * n // MASK_GRID] = 1.0
    return m / m.sum(axis=1, keepdims=True)


def cell_scores(pixel_map: np.ndarray) -> np.ndarray:
    """The mean of a per-pixel map [H, W] over each mask cell: [MASK_GRID, MASK_GRID] float64."""
    pixel_map = np.asarray(pixel_map, np.float64)
    if pixel_map.ndim != 2:
        raise UsageError(f"an importance map must be [H, W], got shape {list(pixel_map.shape)}")
    return _cell_matrix(pixel_map.shape[0]) @ pixel_map @ _cell_matrix(pixel_map.shape[1]).T


def _rank(scores: np.ndarray) -> np.ndarray:
    """Cell indices (row-major) from most to least important. Equal scores go to the cell nearer the grid's
    centre (subjects are usually framed there), then the lower row, then the lower column: deterministic,
    and a constant image keeps its centre."""
    rows, cols = np.indices(scores.shape)
    centre = (2 * rows + 1 - scores.shape[0]) ** 2 + (2 * cols + 1 - scores.shape[1]) ** 2
    return np.lexsort((cols.ravel(), rows.ravel(), centre.ravel(), -scores.ravel()))


def levels(scores: np.ndarray, fractions: tuple[float, float] | None = None,
           thresholds: tuple[float, float] | None = None) -> np.ndarray:
    """A region mask [MASK_GRID, MASK_GRID] of `Level`s from cell scores: with `fractions` (f8, f4), the
    round(f8 * cells) most important cells at 8 bits, the next round(f4 * cells) at 4 bits, the rest
    cropped; with `thresholds` (t8, t4), cells scoring >= t8 at 8 bits, >= t4 at 4 bits, the rest cropped."""
    if (fractions is None) == (thresholds is None):
        raise UsageError("give the levels either as fractions (8-bit, 4-bit) or as thresholds, not both")
    out = np.full(scores.shape, int(Level.CROPPED), np.uint8)
    if thresholds is not None:
        t8, t4 = thresholds
        if t4 > t8:
            raise UsageError(f"thresholds {t8}, {t4}: the 8-bit one must be at least the 4-bit one")
        out[scores >= t4] = Level.FOUR_BIT
        out[scores >= t8] = Level.EIGHT_BIT
        return out
    f8, f4 = check_fractions(fractions)
    cells = scores.size
    n8, n84 = round(f8 * cells), round((f8 + f4) * cells)
    order = _rank(scores)
    flat = out.reshape(-1)
    flat[order[n8:n84]] = Level.FOUR_BIT
    flat[order[:n8]] = Level.EIGHT_BIT
    return out


def check_fractions(fractions: tuple[float, float]) -> tuple[float, float]:
    """(f8, f4) if both are in [0, 1] and add up to at most 1; else a UsageError saying so."""
    f8, f4 = (float(f) for f in fractions)
    if not (0 <= f8 <= 1 and 0 <= f4 <= 1 and f8 + f4 <= 1 + 1e-9):  # NaN fails every comparison
        raise UsageError(f"mask fractions {f8:g} (8-bit) and {f4:g} (4-bit) must each lie in [0, 1] and add up "
                         "to at most 1 (the rest of the cells are cropped)")
    return f8, f4


DEFAULT_FRACTIONS = (0.5, 0.25)
"""Half the cells at 8 bits, a quarter at 4 bits, the least important quarter cropped."""


@dataclass(frozen=True)
class ImportanceMask:
    """A per-image region-mask rule: an importance function (a name of IMPORTANCE or a callable) and how
    cell scores become levels (fractions, or thresholds in the function's units). Calling it on a batch
    [N, C, H, W] gives one mask per image, [N, MASK_GRID, MASK_GRID]."""

    importance: str | Importance = "entropy"
    fractions: tuple[float, float] | None = DEFAULT_FRACTIONS
    thresholds: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.importance, str) and self.importance not in IMPORTANCE:
            raise UsageError(f"unknown importance {self.importance!r}; use one of {', '.join(IMPORTANCE)}, a "
                             "callable image -> [H, W] map, or a mask array")
        if self.thresholds is not None:
            object.__setattr__(self, "fractions", None)
        elif self.fractions is None:
            raise UsageError("an importance mask needs fractions (8-bit, 4-bit) or thresholds")
        else:
            check_fractions(self.fractions)

    @property
    def function(self) -> Importance:
        return IMPORTANCE[self.importance] if isinstance(self.importance, str) else self.importance

    @property
    def name(self) -> str:
        """How reports name the rule."""
        return self.importance if isinstance(self.importance, str) else getattr(self.importance, "__name__",
                                                                                 "custom")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        fn = self.function
        masks = []
        for image in x:
            pixel_map = np.asarray(fn(image), np.float64)
            if pixel_map.shape != image.shape[1:]:
                raise UsageError(f"importance {self.name!r} returned shape {list(pixel_map.shape)} for an image "
                                 f"of {list(image.shape)}; it must return one value per pixel, "
                                 f"{list(image.shape[1:])}")
            masks.append(levels(cell_scores(pixel_map), self.fractions, self.thresholds))
        return np.stack(masks)

    def describe(self) -> dict[str, object]:
        """The rule as report data."""
        rule = {"fractions": list(self.fractions)} if self.fractions is not None else {
            "thresholds": list(self.thresholds)}
        return {"importance": self.name, **rule}
