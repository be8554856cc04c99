"""A Laconic-style term-serial array, modelled for comparison only (it is not the overlay).

Laconic decomposes activation and weight into signed power-of-two terms (canonical signed digits) and
spends `max(1, t_a * t_w)` cycles on a product. This model puts such PEs on an array of the overlay's
size, with lanes = output pixels (raster order), columns = output channels, narrow groups packed side by
side on the columns, single-pixel layers split over the lanes. Each PE works through a group of GROUP
reduction elements on its own, and all PEs of a pass synchronise at the end of every group, so a group
costs the largest per-PE sum of `max(1, t_a * t_w)`. Results are exact by construction; only cycles are
modelled, for the comparison column of reports and `dynq bench`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dynq.contract import timing
from dynq.contract.numerics import peak
from dynq.contract.timing import ConvGeometry, ceil_div

GROUP = 8
"""Reduction elements a PE processes between synchronisations (input channels at one kernel tap)."""


def _csd_weight(v: int) -> int:
    """Non-zero digits of the canonical signed-digit (non-adjacent) form of v."""
    v, terms = abs(v), 0
    while v:
        if v & 1:
            v -= 2 - (v & 3)  # digit +1 when v = 1 mod 4, -1 when v = 3 mod 4
            terms += 1
        v >>= 1
    return terms


_PEAK = peak(signed=False)
TERMS = torch.tensor([_csd_weight(v) for v in range(-_PEAK, _PEAK + 1)], dtype=torch.int16)
"""Term count of every 8-bit value, indexed by value + the 8-bit peak."""


def terms(x: torch.Tensor) -> torch.Tensor:
    return TERMS[x.to(torch.int64) + _PEAK]


def _group_cost(ta: torch.Tensor, tw: torch.Tensor) -> torch.Tensor:
    """Sum over a group of max(1, t_a * t_w) for every (pixel, output channel) pair, per convolution group:
    ta [n, groups, P, k], tw [groups, cout_g, k] -> [n, groups, P, cout_g], as sum(ta*tw) + #(ta*tw == 0)."""
    products = ta @ tw.transpose(-1, -2)
    nonzero = (ta > 0).float() @ (tw > 0).float().transpose(-1, -2)
    return products + (ta.shape[-1] - nonzero)


def conv_cycles(x: torch.Tensor, w: np.ndarray, g: ConvGeometry, rows: int, cols: int) -> int:
    """Compute cycles of one convolution on the term-serial array, summed over the batch of x [N, C, H, W]."""
    n = x.shape[0]
    cin_g = w.shape[1]
    ta = terms(x).float()
    tw = terms(torch.from_numpy(w.astype(np.int64))).float().view(g.groups, g.cout_g, cin_g, g.kh * g.kw)
    col_tiles = ceil_div(g.cout_g, cols)
    if timing.reduction_split(g):
        units = g.groups * cin_g
        cost = torch.clamp(ta.view(n, 1, units) * tw.view(g.groups, g.cout_g, cin_g).transpose(0, 1).reshape(
            g.cout_g, units), min=1)  # [n, cout, units]: lanes take units round-robin
        chunks = ceil_div(units, rows)
        lanes = F.pad(cost, (0, chunks * rows - units)).view(n, g.cout_g, chunks, rows)
        per_lane = F.pad(lanes, (0, 0, 0, ceil_div(chunks, GROUP) * GROUP - chunks)).view(
            n, g.cout_g, -1, GROUP, rows).sum(dim=3)
        slowest = F.pad(per_lane.amax(dim=-1), (0, 0, 0, col_tiles * cols - g.cout_g)).view(n, col_tiles, cols, -1)
        return int(slowest.amax(dim=2).sum())
    pack = max(1, cols // g.cout_g) if g.cout_g < cols else 1
    p = g.oh * g.ow
    tiles = ceil_div(p, rows)
    items = tiles * g.groups
    packs = ceil_div(items, pack)
    padded = F.pad(ta, (g.pl, g.pr, g.pt, g.pb))
    total = 0
    for tap, (a, b) in enumerate((a, b) for a in range(g.kh) for b in range(g.kw)):
        sl = padded[:, :, a:a + g.sh * (g.oh - 1) + 1:g.sh, b:b + g.sw * (g.ow - 1) + 1:g.sw]
        ta_tap = sl.reshape(n, g.groups, cin_g, p).transpose(2, 3)  # [n, groups, P, cin_g]
        for start in range(0, cin_g, GROUP):
            cost = _group_cost(ta_tap[..., start:start + GROUP], tw[:, :, start:start + GROUP, tap])
            cost = F.pad(cost, (0, col_tiles * cols - g.cout_g, 0, tiles * rows - p))
            per_tile = cost.view(n, g.groups, tiles, rows, col_tiles, cols).amax(dim=(3, 5))  # [n, groups, T, K]
            work = per_tile.permute(0, 2, 1, 3).reshape(n, items, col_tiles)  # items ordered (tile, group)
            work = F.pad(work, (0, 0, 0, packs * pack - items)).view(n, packs, pack, col_tiles)
            total += int(work.amax(dim=2).sum())
    return total
