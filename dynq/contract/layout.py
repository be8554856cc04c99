"""Where a CONV's weights and per-channel constants sit in the weight image: in the order the array reads them.

The weight memory's word is BLOCK x `cols` bytes: byte `t * cols + k` is the weight of line register `t`
for column `k` at one kernel tap, so a tap of every PE is one read. Words follow the array's loops:
(pass kind's group, column tile, kernel row, block, kernel column). Passes packed side by side
(`timing.packing`) see the packed groups as one block-diagonal group; packed output rows repeat the weights
on every column block. The per-channel constants are 16-byte records (bias, mult, shift, 0), one per output
channel in channel order, read by the drain one column a cycle.
"""

from __future__ import annotations

import numpy as np

from dynq.contract.array import BLOCK
from dynq.contract.timing import ConvGeometry, ceil_div, packing

PARAM_WORDS = 4
"""int32 words per output channel record: bias, mult, shift, reserved (0)."""
PARAM_BYTES = 4 * PARAM_WORDS


def word_bytes(cols: int) -> int:
    return BLOCK * cols


def word_byte(t: int, k: int, cols: int) -> int:
    """The byte of a weight word that holds line register t's weight for column k."""
    return t * cols + k


def _tiles(g: ConvGeometry, cols: int) -> tuple[int, int, int]:
    """(packing, column tiles, blocks) of the word stream."""
    pack = packing(g, cols)
    if pack > 1:
        return pack, 1, 1
    return 1, ceil_div(g.cout_g, cols), ceil_div(g.cin_g, BLOCK)


def _stream_shape(g: ConvGeometry, cols: int) -> tuple[int, ...]:
    """(group pack, column tile, kernel row, block, kernel column, line register, column) of the word stream."""
    pack, col_tiles, blocks = _tiles(g, cols)
    outer = ceil_div(g.groups, pack) if pack > 1 and g.groups > 1 else g.groups
    return (outer, col_tiles, g.kh, blocks, g.kw, BLOCK, cols)


def _index(g: ConvGeometry, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """For every byte of the word stream, the flat index into w [cout, cin_g, kh, kw] it holds, and whether
    it holds one at all (padding and the off-diagonal blocks of packed groups are zero)."""
    pack = packing(g, cols)
    vg, ct, a, m, b, t, k = np.indices(_stream_shape(g, cols), sparse=True)
    if pack > 1:
        q, c = t // g.cin_g, t % g.cin_g
        o = k - q * g.cout_g
        group = vg * pack + q if g.groups > 1 else vg
        valid = (q < pack) & (o >= 0) & (o < g.cout_g) & (group < g.groups)
    else:
        c, o, group = m * BLOCK + t, ct * cols + k, vg
        valid = (c < g.cin_g) & (o < g.cout_g)
    cout = group * g.cout_g + o
    flat = ((cout * g.cin_g + c) * g.kh + a) * g.kw + b
    flat, valid = np.broadcast_arrays(flat, valid)
    return np.where(valid, flat, 0).reshape(-1), valid.reshape(-1)


def conv_weight_bytes(w: np.ndarray, g: ConvGeometry, cols: int) -> bytes:
    """The word stream of int8 weights w [cout, cin_g, kh, kw] (`g.g` is ignored: the layout is the same for
    every precision mode)."""
    index, valid = _index(g, cols)
    return np.where(valid, w.reshape(-1)[index], 0).astype(np.int8).tobytes()


def conv_weight_count(g: ConvGeometry, cols: int) -> int:
    """Bytes of the word stream."""
    return int(np.prod(_stream_shape(g, cols)))


def conv_weights(stream: np.ndarray, g: ConvGeometry, cols: int) -> np.ndarray:
    """w [cout, cin_g, kh, kw] back from the word stream (int8): the inverse of `conv_weight_bytes`."""
    index, valid = _index(g, cols)
    w = np.zeros(g.groups * g.cout_g * g.cin_g * g.kh * g.kw, dtype=np.int8)
    w[index[valid]] = stream[valid]
    return w.reshape(g.groups * g.cout_g, g.cin_g, g.kh, g.kw)


def param_bytes(bias: np.ndarray, mult: np.ndarray, shift: np.ndarray) -> bytes:
    records = np.zeros((len(bias), PARAM_WORDS), dtype="<i4")
    records[:, 0], records[:, 1], records[:, 2] = bias, mult, shift
    return records.tobytes()


def params(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bias, mult, shift) from the records, as int64."""
    records = image.view("<i4").reshape(-1, PARAM_WORDS).astype(np.int64)
    return records[:, 0], records[:, 1], records[:, 2]
