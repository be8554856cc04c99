"""A Laconic-style term-serial array, modelled for comparison only (it is not the overlay).

Laconic decomposes activation and weight into signed power-of-two terms (canonical signed digits) and
spends `max(1, t_a * t_w)` cycles on a product. This model puts such PEs on the overlay's array with the
overlay's mapping (lanes = output pixels, columns = output channels, narrow groups packed, single-pixel
layers split over the lanes) and synchronises all PEs of a pass per reduction element, so the cycles of
an element are `max(1, max_lanes t_a * max_columns t_w)`. Results are exact by construction; only
cycles are modelled, for `dynq bench`'s comparison column.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dynq.contract import timing
from dynq.contract.timing import ConvGeometry, ceil_div


def _csd_weight(v: int) -> int:
    """Non-zero digits of the canonical signed-digit (non-adjacent) form of v."""
    v, terms = abs(v), 0
    while v:
        if v & 1:
            v -= 2 - (v & 3)  # digit +1 when v = 1 mod 4, -1 when v = 3 mod 4
            terms += 1
        v >>= 1
    return terms


TERMS = torch.tensor([_csd_weight(v) for v in range(-255, 256)], dtype=torch.int16)
"""Term count of every 8-bit value, indexed by value + 255."""


def terms(x: torch.Tensor) -> torch.Tensor:
    return TERMS[x.to(torch.int64) + 255]


def conv_cycles(x: torch.Tensor, w: np.ndarray, g: ConvGeometry, rows: int, cols: int) -> int:
    """Cycles of one convolution on the term-serial array, summed over the batch of x [N, C, H, W]."""
    ta = terms(x)
    tw = terms(torch.from_numpy(w.astype(np.int64)))  # [cout, cin_g, kh, kw]
    n = x.shape[0]
    col_tiles = ceil_div(g.cout_g, cols)
    cin_g = w.shape[1]
    # per (group, column tile, input channel, tap): the slowest weight of the tile's columns
    tw = F.pad(tw.view(g.groups, g.cout_g, cin_g, g.kh * g.kw), (0, 0, 0, 0, 0, col_tiles * cols - g.cout_g))
    tw_tiles = tw.view(g.groups, col_tiles, cols, cin_g, -1).amax(dim=2)
    if timing.reduction_split(g):
        prod = ta.view(n, 1, g.groups * cin_g) * tw_tiles.view(g.groups, col_tiles, cin_g).transpose(0, 1).reshape(
            1, col_tiles, -1)
        chunks = ceil_div(prod.shape[-1], rows)
        lanes = F.pad(prod, (0, chunks * rows - prod.shape[-1])).view(n, col_tiles, chunks, rows)
        return int(lanes.amax(dim=-1).clamp(min=1).sum())
    pack = timing.column_packing(g, cols)
    p = g.oh * g.ow
    tiles = ceil_div(p, rows)
    items = tiles * g.groups
    packs = ceil_div(items, pack)
    padded = F.pad(ta, (g.pl, g.pr, g.pt, g.pb))
    total = 0
    for tap, (a, b) in enumerate((a, b) for a in range(g.kh) for b in range(g.kw)):
        y0, x0 = a * g.dh, b * g.dw
        sl = padded[:, :, y0:y0 + g.sh * (g.oh - 1) + 1:g.sh, x0:x0 + g.sw * (g.ow - 1) + 1:g.sw]
        flat = F.pad(sl.reshape(n, g.groups, cin_g, p), (0, tiles * rows - p))
        ta_items = flat.view(n, g.groups, cin_g, tiles, rows).amax(dim=-1).permute(0, 3, 1, 2).reshape(n, items, cin_g)
        tw_items = tw_tiles[..., tap].repeat(tiles, 1, 1)  # [items, col_tiles, cin_g], items ordered (tile, group)
        ta_pack = F.pad(ta_items, (0, 0, 0, packs * pack - items)).view(n, packs, pack, cin_g).amax(dim=2)
        tw_pack = F.pad(tw_items, (0, 0, 0, 0, 0, packs * pack - items)).view(packs, pack, col_tiles, cin_g).amax(dim=1)
        total += int((ta_pack.unsqueeze(2) * tw_pack.unsqueeze(0)).clamp(min=1).sum())
    return total
