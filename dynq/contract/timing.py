"""The cycle model: the specification of the overlay's timing, per instruction.

The PE array has `rows` lanes and `cols` columns. A CONV maps consecutive output pixels (raster order)
onto the lanes of a *row tile* and output channels of one convolution group onto the columns of a
*column tile*. For each (row tile, column tile) the array streams the reduction in the order
(kh, kw, input-channel unit); a unit is one channel, or one SDP group of `g` channels. Every lane
spends `n` steps on a unit (its term parts to multiply); lanes are lock-stepped per unit, so the
array spends `max(n)` cycles and a lane with fewer steps stalls. Afterwards the active lanes drain
their outputs through the requantizer, one lane per cycle, behind a pipeline of PIPE_CYCLES; the PEs
have two accumulator banks, so a drain overlaps the next pass's compute.

A group with fewer output channels than half the columns (depthwise convolutions, a 6-channel first
layer) would leave columns idle, so several work items share the columns, lock-stepped together.

A layer with a single output pixel (a Gemm, or a 1x1 conv on a 1x1 map) would leave all lanes but
one idle, so it is mapped the other way: the lanes split the reduction (lane r takes units r, r+rows,
...), each accumulates a partial sum, and an adder tree joins the lanes in REDUCE_CYCLES at the end.

The emulator computes these counters; the RTL's counters must equal them cycle for cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F

LAYER_SETUP_CYCLES = 8
"""Instruction fetch (two 32-bit words per cycle) and the checks of the fetched fields, per instruction."""
PIPE_CYCLES = 4
"""Arena read, then the requantizer's three stages (product, rounding term, shift and clamp), paid once
after the last read of an instruction (or tile)."""
NOP_CYCLES = 1
REDUCE_CYCLES = 4
"""Cross-lane adder tree of the reduction-split mapping (log2 of 16 lanes; fixed for every array)."""


@dataclass(frozen=True)
class ConvGeometry:
    n_units: int  # sync units per convolution group
    groups: int
    cout_g: int
    oh: int
    ow: int
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pt: int
    pl: int
    pb: int
    pr: int


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def conv_tiles(g: ConvGeometry, rows: int, cols: int) -> tuple[int, int]:
    """(row tiles, column tiles per group)."""
    return ceil_div(g.oh * g.ow, rows), ceil_div(g.cout_g, cols)


def column_packing(g: ConvGeometry, cols: int) -> int:
    """Work items side by side on the columns: a group with fewer output channels than half the columns
    leaves room for more (depthwise: one channel per column block)."""
    return max(1, cols // g.cout_g) if g.cout_g < cols else 1


def _items_lanes(g: ConvGeometry, rows: int) -> np.ndarray:
    """Active lanes of every work item, items ordered (row tile, group)."""
    p = g.oh * g.ow
    tiles = ceil_div(p, rows)
    per_tile = np.full(tiles, rows)
    per_tile[-1] = p - (tiles - 1) * rows
    return np.repeat(per_tile, g.groups)


def conv_counters(steps: torch.Tensor | None, batch: int, pad_steps: int, g: ConvGeometry, rows: int, cols: int,
                  predictor_cycles: int) -> dict[str, int]:
    """Counters of one CONV summed over a batch of `batch` images.

    `steps` is [batch, groups * n_units, ih, iw]: the steps each input position costs a lane in each sync
    unit (0, 1 or 2 for one channel; 0..k for an SDP group), or None when every position costs
    `pad_steps`. Padding positions cost `pad_steps`. `predictor_cycles` are the cycles of the DRQ region
    predictor's pass over the input (0 otherwise).

    Work items are (row tile, group) pairs; when a group has few output channels, `column_packing` of them
    share the columns and run lock-stepped together (a pack). A pass (one pack on one column tile) computes,
    then drains one cycle per lane of its widest item; with two accumulator banks a drain overlaps the next
    pass's compute (`_pipelined`).
    """
    row_tiles, col_tiles = conv_tiles(g, rows, cols)
    if reduction_split(g):
        overhead = col_tiles * g.groups * (PIPE_CYCLES + REDUCE_CYCLES + 1)
        units = g.groups * g.n_units
        if steps is None:
            compute = batch * g.groups * ceil_div(g.n_units, rows) * pad_steps
            stall, lane_steps = 0, batch * units * pad_steps
        else:
            compute, stall, lane_steps = _split_lanes(steps.reshape(batch, g.groups, g.n_units), rows)
        busy = batch * (LAYER_SETUP_CYCLES + predictor_cycles + overhead) + col_tiles * compute
    elif steps is None:  # uniform cost: no data-dependent work, the same for every image
        passes, compute = _uniform_passes(g, rows, cols, pad_steps)
        stall, lane_steps = 0, batch * g.groups * g.n_units * g.kh * g.kw * g.oh * g.ow * pad_steps
        busy, compute = batch * (LAYER_SETUP_CYCLES + predictor_cycles + passes), batch * compute
    else:
        pack, widest = _packs(g, rows, cols)
        per_pack, stall, lane_steps = _lockstep(steps, pad_steps, g, rows, pack)
        passes = _pipelined(per_pack.repeat(1, col_tiles) + PIPE_CYCLES, widest.repeat(col_tiles))
        busy, compute = batch * (LAYER_SETUP_CYCLES + predictor_cycles) + passes, int(per_pack.sum())
    return {
        "busy_cycles": busy,
        "compute_cycles": col_tiles * compute,
        "stall_cycles": col_tiles * stall,
        "mac_steps": g.cout_g * lane_steps,
    }


@cache
def _packs(g: ConvGeometry, rows: int, cols: int) -> tuple[int, torch.Tensor]:
    """Work items per pack, and the drain cycles (widest item's lanes) of every pack."""
    pack = column_packing(g, cols)
    lanes = _items_lanes(g, rows)
    packs = ceil_div(len(lanes), pack)
    return pack, torch.from_numpy(np.pad(lanes, (0, packs * pack - len(lanes))).reshape(packs, pack).max(axis=1))


@cache
def _uniform_passes(g: ConvGeometry, rows: int, cols: int, pad_steps: int) -> tuple[int, int]:
    """Pass cycles and compute cycles of one image when every position costs `pad_steps`."""
    _, widest = _packs(g, rows, cols)
    col_tiles = conv_tiles(g, rows, cols)[1]
    per_pack = torch.full((1, len(widest)), g.kh * g.kw * g.n_units * pad_steps, dtype=torch.int64)
    return _pipelined(per_pack.repeat(1, col_tiles) + PIPE_CYCLES, widest.repeat(col_tiles)), int(per_pack.sum())


def _pipelined(compute: torch.Tensor, drain: torch.Tensor) -> int:
    """Cycles of passes whose drains overlap the next pass's compute (two accumulator banks): the first
    compute, then each pass waits for the longer of its compute and the previous drain, then the last drain.
    `compute` is [images, passes] (pipeline latency included), `drain` is [passes]."""
    overlap = torch.maximum(compute[:, 1:], drain[:-1]).sum(dim=1)
    return int((compute[:, 0] + overlap + drain[-1]).sum())


def reduction_split(g: ConvGeometry) -> bool:
    """Single-output-pixel layers put the reduction, not the pixels, on the lanes."""
    return g.oh * g.ow == 1 and g.kh * g.kw == 1 and g.pt + g.pl + g.pb + g.pr == 0


def _split_lanes(steps: torch.Tensor, rows: int) -> tuple[int, int, int]:
    """Lanes take units round-robin; each step of the lanes waits for the slowest of them."""
    batch, groups, units = steps.shape
    chunks = ceil_div(units, rows)
    lanes = F.pad(steps.to(torch.int16), (0, chunks * rows - units), value=-1).view(batch, groups, chunks, rows)
    slowest, fastest = _slowest_fastest(lanes)
    return int(slowest.sum()), int((slowest - fastest).sum()), int(steps.sum())


def _slowest_fastest(lanes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max and min over the last axis of lane steps, ignoring inactive lanes (marked -1)."""
    slowest = lanes.max(dim=-1).values
    fastest = torch.where(lanes < 0, torch.full_like(lanes, torch.iinfo(lanes.dtype).max), lanes).min(dim=-1).values
    return slowest, fastest


def _lockstep(steps: torch.Tensor, pad_steps: int, g: ConvGeometry, rows: int,
              pack: int) -> tuple[torch.Tensor, int, int]:
    """Per image and pack, the sum over taps and units of the slowest lane ([images, packs]); the total of
    (slowest - fastest); and the total of all lane steps."""
    n = steps.shape[0]
    padded = F.pad(steps.to(torch.int16), (g.pl, g.pr, g.pt, g.pb), value=pad_steps)
    p = g.oh * g.ow
    tiles = ceil_div(p, rows)
    items = tiles * g.groups
    packs = ceil_div(items, pack)
    per_pack = torch.zeros((n, packs), dtype=torch.int64)
    stall = total = 0
    for a in range(g.kh):
        for b in range(g.kw):
            y0, x0 = a * g.dh, b * g.dw
            tap = padded[:, :, y0:y0 + g.sh * (g.oh - 1) + 1:g.sh, x0:x0 + g.sw * (g.ow - 1) + 1:g.sw]
            flat = tap.reshape(n, g.groups, g.n_units, p)
            total += int(flat.sum())
            flat = F.pad(flat, (0, tiles * rows - p), value=-1).view(n, g.groups, g.n_units, tiles, rows)
            work = flat.permute(0, 3, 1, 2, 4).reshape(n, items, g.n_units, rows)  # items ordered (tile, group)
            work = F.pad(work, (0, 0, 0, 0, 0, packs * pack - items), value=-1)
            lanes = work.view(n, packs, pack, g.n_units, rows).transpose(2, 3).reshape(n, packs, g.n_units, -1)
            slowest, fastest = _slowest_fastest(lanes)
            per_pack += slowest.sum(dim=2)
            stall += int((slowest - fastest).sum())
    return per_pack, stall, total


def pool_cycles(channels: int, oh: int, ow: int, kh: int, kw: int, rows: int, cols: int, average: bool) -> int:
    """POOL: `rows * cols` outputs at a time (a comparator or adder per PE, fed by the full-width input path),
    one window element per cycle; average pooling then requantizes `rows` outputs per cycle."""
    outputs = channels * oh * ow
    requant = ceil_div(outputs, rows) if average else 0
    return LAYER_SETUP_CYCLES + ceil_div(outputs, rows * cols) * kh * kw + requant + PIPE_CYCLES


def eltwise_cycles(elements: int, rows: int, operands: int) -> int:
    """ADD and MOVE: `rows` consecutive elements per arena read (the arena has one byte bank per lane and one
    read port), so MOVE reads one window per `rows` elements and ADD two."""
    return LAYER_SETUP_CYCLES + operands * ceil_div(elements, rows) + PIPE_CYCLES


def predictor_cycles(values: int, rows: int, cols: int) -> int:
    """DRQ region predictor: one pass over the layer's input before the layer, `rows * cols` values per cycle
    (the input path that feeds every PE its own value when narrow groups are packed)."""
    return ceil_div(values, rows * cols)
