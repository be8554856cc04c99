"""The input-importance functions of the DAQ mode against values worked out by hand on tiny images, the
pixel-to-cell rule against the core's (`numerics.mask_cells`), and the fraction and threshold rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dynq.contract import numerics as nx
from dynq.errors import UsageError
from dynq.runtime import importance as im
from dynq.runtime.importance import ImportanceMask, cell_scores, levels

H2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))  # two intensities, 6 pixels against 3
H5 = -(3 / 5 * math.log2(3 / 5) + 2 / 5 * math.log2(2 / 5))  # 3 columns of one intensity, 2 of the other


def step(size: int, column: int, channels: int = 1) -> np.ndarray:
    """0 left of `column`, 1 from it on: one vertical edge between columns column-1 and column."""
    image = np.zeros((channels, size, size))
    image[:, :, column:] = 1
    return image


@pytest.mark.parametrize("name", list(im.IMPORTANCE))
def test_constant_image_has_no_importance(name: str) -> None:
    """A flat image carries nothing: zero entropy, zero gradient, no corner, wherever and whatever its value."""
    for value in (0.0, 0.7, -3.0):
        pixel_map = im.IMPORTANCE[name](np.full((3, 9, 13), value))
        assert pixel_map.shape == (9, 13)
        np.testing.assert_array_equal(pixel_map, 0)


def test_gradient_lights_exactly_the_cells_an_edge_crosses() -> None:
    """A unit step between columns 16 and 17 of a 32x32 image: the Sobel derivative (scaled by 1/8) is 0.5 on
    the two columns beside the step and 0 elsewhere; both columns lie in mask cell column 8 (2 pixels per
    cell), whose cells score the mean 0.5, every other cell 0. Turned by 90 degrees, the same in rows."""
    g = im.gradient_magnitude(step(32, 17))
    expected = np.zeros((32, 32))
    expected[:, 16:18] = 0.5
    np.testing.assert_array_equal(g, expected)
    cells = np.zeros((16, 16))
    cells[:, 8] = 0.5
    np.testing.assert_array_equal(cell_scores(g), cells)
    np.testing.assert_array_equal(cell_scores(im.gradient_magnitude(step(32, 17).transpose(0, 2, 1))), cells.T)


def test_gradient_sees_colour_edges_that_brightness_hides() -> None:
    """Red on the right, green on the left: the mean intensity is flat (entropy 0), but the largest channel
    gradient is the step's 0.5."""
    image = np.zeros((3, 16, 16))
    image[0, :, 8:] = 1
    image[1, :, :8] = 1
    np.testing.assert_array_equal(im.local_entropy(image), 0)
    assert im.gradient_magnitude(image).max() == 0.5


def test_entropy_by_hand() -> None:
    """The step image with a 3x3 window: next to the edge a window holds 6 pixels of one side and 3 of the
    other (at the top and bottom rows 4 and 2: the same shares), so H = H(2/3, 1/3); elsewhere one intensity,
    H = 0. With the default 5x5 window the columns beside the edge see 3 columns against 2. Four distinct
    values in a 2x2 image, every window covering all four: 2 bits. Scaling and shifting the image changes
    nothing (intensities are binned over the image's own range)."""
    e = im.local_entropy(step(12, 6), radius=1)
    expected = np.zeros((12, 12))
    expected[:, 5:7] = H2
    np.testing.assert_allclose(e, expected, rtol=0, atol=1e-12)
    wide = im.local_entropy(step(12, 6))
    np.testing.assert_allclose(wide[:, 5:7], H5, rtol=0, atol=1e-12)
    assert np.all(wide[:, 4:8] > 0) and np.all(wide[:, :3] == 0) and np.all(wide[:, 9:] == 0)
    np.testing.assert_allclose(im.local_entropy(np.array([[[0.0, 1], [2, 3]]]), radius=1), 2.0, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(im.local_entropy(255 * step(12, 6) - 40), im.local_entropy(step(12, 6)))


def test_keypoints_are_the_corners_of_a_square() -> None:
    """A bright square (rows and columns 18..45) on a 64x64 image: its four corner pixels are the Harris
    corners, its straight sides give none; at 4x4 pixels per cell each corner's cell scores 1/16. A plain
    edge has no corner at all."""
    square = np.zeros((1, 64, 64))
    square[:, 18:46, 18:46] = 1
    corners = im.keypoint_density(square)
    assert sorted(map(tuple, np.argwhere(corners).tolist())) == [(18, 18), (18, 45), (45, 18), (45, 45)]
    cells = cell_scores(corners)
    assert sorted(map(tuple, np.argwhere(cells).tolist())) == [(4, 4), (4, 11), (11, 4), (11, 11)]
    assert cells[4, 4] == 1 / 16
    np.testing.assert_array_equal(im.keypoint_density(step(32, 17)), 0)
    np.testing.assert_array_equal(im.keypoint_density(10 * square + 2), corners)


def test_importance_is_deterministic() -> None:
    image = np.random.default_rng(7).random((3, 28, 28))
    for fn in im.IMPORTANCE.values():
        np.testing.assert_array_equal(fn(image), fn(image.copy()))


def test_cells_average_the_pixels_the_core_maps_to_them() -> None:
    """Cell scores follow the core's pixel-to-cell rule (pixel p takes cell p * 16 // n): on a 28x28 map one
    pixel at (27, 0) lies in cell (15, 0), which holds 1 x 2 pixels, so it scores 0.5; and the level the core
    reads at every pixel of a map built from one lit pixel per cell is the lit pixel's. Below 16 pixels a
    cell takes the pixel it lies in (an 8x8 map: each pixel spreads over 2x2 cells)."""
    one = np.zeros((28, 28))
    one[27, 0] = 1
    cells = cell_scores(one)
    assert np.argwhere(cells).tolist() == [[15, 0]] and cells[15, 0] == 0.5
    owner = torch.from_numpy(np.arange(256).reshape(16, 16))
    read = nx.mask_cells(owner, 28, 28).numpy()  # the cell the core reads at each pixel
    for cell in (0, 37, 255):
        pixel_map = (read == cell).astype(np.float64)
        assert np.argwhere(cell_scores(pixel_map).reshape(-1)).ravel().tolist() == [cell]
    small = np.arange(64, dtype=np.float64).reshape(8, 8)
    np.testing.assert_array_equal(cell_scores(small), np.kron(small, np.ones((2, 2))))


def test_levels_by_fraction_threshold_and_ties() -> None:
    """Fractions: the 128 highest of 256 distinct scores at 8 bits, the next 64 at 4 bits, the lowest 64
    cropped. Ties go to the cells nearest the centre: a constant map with 4 cells at 8 bits gives the central
    2x2. Thresholds compare scores directly."""
    scores = np.random.default_rng(3).permutation(256).reshape(16, 16).astype(np.float64)
    mask = levels(scores, fractions=(0.5, 0.25))
    np.testing.assert_array_equal(mask, np.where(scores >= 128, 2, np.where(scores >= 64, 1, 0)))
    central = levels(np.zeros((16, 16)), fractions=(4 / 256, 0))
    assert np.argwhere(central).tolist() == [[7, 7], [7, 8], [8, 7], [8, 8]]
    np.testing.assert_array_equal(levels(scores, thresholds=(200, 100)),
                                  np.where(scores >= 200, 2, np.where(scores >= 100, 1, 0)))
    with pytest.raises(UsageError, match="add up to at most 1"):
        levels(scores, fractions=(0.8, 0.3))
    with pytest.raises(UsageError, match="must be at least"):
        levels(scores, thresholds=(1, 2))
    with pytest.raises(UsageError, match="not both"):
        levels(scores, fractions=(0.5, 0.5), thresholds=(1, 0))


def test_importance_mask_rule_on_a_batch() -> None:
    """One mask per image, each the levels of that image's own map; a callable importance works like a named
    one; a callable returning the wrong shape and an unknown name are refused with the fix."""
    batch = np.stack([step(32, 17, 3), step(32, 17, 3).transpose(0, 2, 1)]).astype(np.float32)
    masks = ImportanceMask("gradient", thresholds=(0.5, 0.1))(batch)
    assert masks.shape == (2, 16, 16) and masks.dtype == np.uint8
    np.testing.assert_array_equal(masks[0], np.where(np.arange(16) == 8, 2, 0)[None, :].repeat(16, 0))
    np.testing.assert_array_equal(masks[1], masks[0].T)
    np.testing.assert_array_equal(ImportanceMask(im.gradient_magnitude, thresholds=(0.5, 0.1))(batch), masks)
    assert ImportanceMask("entropy").describe() == {"importance": "entropy", "fractions": [0.5, 0.25]}
    with pytest.raises(UsageError, match=r"returned shape \[16, 16\] .* \[32, 32\]"):
        ImportanceMask(lambda image: np.zeros((16, 16)))(batch)
    with pytest.raises(UsageError, match="entropy, gradient, keypoints"):
        ImportanceMask("saliency")
