"""The cycle model: the specification of the overlay's timing, per instruction.

The PE array has `rows` lanes and `cols` columns. A CONV runs in *passes*: a pass is one output row `oy`,
`rows` consecutive output pixels of it (an x tile; lanes past the row's end idle), and up to `cols` output
channels of one convolution group (a column tile), in the order (group, column tile, oy, x tile). A pass
streams its reduction as *items* (kernel row `a`, block of `BLOCK` input channels). For an item the array
first fills one *line* per channel of the block: the bytes of input row `oy*sh + a - pt` that lanes need for
every kernel column (`line_reads` arena windows per channel). Then, per kernel column `b` (a *tap*), it
works through the block's sync *units* (one channel; or one SDP group of g channels): every lane spends `n`
steps on a unit (its term parts to multiply), lanes are lock-stepped, so a unit costs the slowest lane's
steps (0 when every lane has nothing to do) and a tap at least one cycle (its weight word).

Line filling, compute and draining overlap: while the PEs compute item i, the other set of line registers
fills for item i+1 (a window a cycle, complete FILL_LATENCY cycles after the last read), and while a pass
computes, the previous pass drains (each PE keeps its finished sum for the one drain unit) one output
channel per cycle behind PIPE_CYCLES of requantizer. So

    pass(p) = sum over its items of max(compute(i), fill(i+1))
    busy = SETUP + predictor + fill(0) + pass(0) + sum_{p>0} max(pass(p), drain(p-1)) + drain(last)

A layer with one output pixel and a 1x1 kernel (a Gemm) is *reduction-split*: lane j takes input channel
`chunk*rows + j`, every PE has its own weight, and `rows // BLOCK` weight words per chunk bound its pace
(a term part takes at most two steps, which fits). Its drain adds the lanes of each column in an adder
tree of log2(rows) stages.

POOL uses the same passes with a block of channels on the columns: per tap, one cycle per channel of the
block, in which every lane folds its value into that channel's max or sum: `rows` comparator/adders
rather than `rows x BLOCK`, for cycles that the line fill of typical pooling windows hides anyway.
DRQ layers first run the region predictor over their input (`predictor_cycles`); DAQ layers first expand
the region mask into a level per input pixel, a pixel a cycle (`mask_cycles`). The emulator computes these
counters; the RTL's counters must equal them cycle for cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F

from dynq.contract.array import BLOCK, line_reads
from dynq.contract.isa import Instr

LAYER_SETUP_CYCLES = 8
"""Instruction fetch (two 32-bit words per cycle) and the checks of the fetched fields, per instruction."""
PIPE_CYCLES = 4
"""Arena (or accumulator) read, then the requantizer's three stages (product, rounding term, shift and
clamp), paid once after the last read of an instruction (or pass)."""
NOP_CYCLES = 1
FILL_LATENCY = 2
"""A line is complete two cycles after its last window read: the arena's registered read, then the fill's
line register. The computing lines take whole lines from there only; a bypass that let the last window go
straight from the arena into them cost a second LUT per line bit (about 3k LUTs on a 16-lane array)."""
PREDICTOR_GAP_CYCLES = 4
"""DRQ predictor: from a band's last window read to its first flag write (read, segment sums, accumulate,
compare)."""
MASK_GAP_CYCLES = 1
"""DAQ mask expansion: from the last level written to the layer's first read (the plane's write lands)."""


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def reduce_cycles(rows: int) -> int:
    """Stages of the cross-lane adder tree of the reduction-split mapping."""
    return max(1, (rows - 1).bit_length())


@dataclass(frozen=True)
class ConvGeometry:
    cin_g: int  # input channels per convolution group
    g: int  # channels per sync unit (SDP's g; 1 otherwise)
    groups: int
    cout_g: int
    oh: int
    ow: int
    kh: int
    kw: int
    sh: int
    sw: int
    pt: int
    pl: int
    pb: int
    pr: int

    @property
    def n_units(self) -> int:
        return ceil_div(self.cin_g, self.g)


def conv_geometry(ins: Instr, unit: int = 1) -> ConvGeometry:
    """The geometry of a CONV instruction, with sync units of `unit` channels (SDP's g)."""
    return ConvGeometry(ins.cin // ins.groups, unit, ins.groups, ins.cout // ins.groups, ins.oh, ins.ow, ins.kh,
                        ins.kw, ins.sh, ins.sw, ins.pt, ins.pl, ins.pb, ins.pr)


def reduction_split(g: ConvGeometry) -> bool:
    """Single-output-pixel layers put the reduction, not the pixels, on the lanes."""
    return g.oh * g.ow == 1 and g.kh * g.kw == 1 and g.pt + g.pl + g.pb + g.pr == 0


def packing(g: ConvGeometry, cols: int) -> int:
    """Passes side by side on the array (1: none). A pass that needs at most half the columns and half the
    line registers shares them with the next passes: the next convolution groups (grouped and depthwise
    convolutions), or the next output rows (a convolution with few output channels). Each shares nothing
    with the others but the lock-step."""
    pack = min(BLOCK // g.cin_g, cols // g.cout_g, g.groups if g.groups > 1 else g.oh)
    return pack if pack >= 2 and not reduction_split(g) else 1


def _pack_kind(g: ConvGeometry, cols: int) -> tuple[int, bool]:
    """(passes side by side, whether they are convolution groups rather than output rows)."""
    pack = packing(g, cols)
    return pack, pack > 1 and g.groups > 1


def _fastest(lanes: torch.Tensor) -> torch.Tensor:
    """Min over the last axis of lane steps, ignoring idle lanes (marked -1)."""
    return torch.where(lanes < 0, torch.iinfo(lanes.dtype).max, lanes).amin(dim=-1)


def _widths(total: int, per: int) -> np.ndarray:
    """Sizes of the consecutive chunks of `per` that cover `total`."""
    n = ceil_div(total, per)
    widths = np.full(n, per)
    widths[-1] = total - (n - 1) * per
    return widths


def _passes(compute: torch.Tensor, fill: np.ndarray, items_per_pass: int, drain: np.ndarray) -> torch.Tensor:
    """Cycles of a stream of passes per image.

    `compute` is [images, items] and `fill` [items] (the cycles to fill an item's lines): while the PEs
    compute item i the lines of item i+1 fill, so an item lasts max(compute(i), fill(i+1)). A pass's
    drain (`drain` [passes]) overlaps the next pass (two accumulator banks, one drain unit), so a pass
    after the first lasts max(its items, the previous drain).
    """
    fill_t = torch.from_numpy(fill.astype(np.int64))
    fill_next = torch.cat([fill_t[1:], fill_t.new_zeros(1)])
    items = torch.maximum(compute, fill_next)
    per_pass = items.view(items.shape[0], -1, items_per_pass).sum(dim=2)
    drains = torch.from_numpy(drain.astype(np.int64))
    overlapped = torch.maximum(per_pass[:, 1:], drains[:-1]).sum(dim=1)
    return per_pass[:, 0] + overlapped + int(fill[0]) + int(drains[-1])


def conv_counters(steps: torch.Tensor | None, batch: int, pad_steps: int, g: ConvGeometry, rows: int, cols: int,
                  predictor_cycles: int) -> dict[str, int]:
    """Counters of one CONV summed over a batch of `batch` images.

    `steps` is [batch, groups * n_units, ih, iw]: the steps each input position costs a lane in each sync
    unit (0, 1 or 2 for one channel; 0..k for an SDP group), or None when every position costs
    `pad_steps`. Padding positions cost `pad_steps`. `predictor_cycles` are the cycles of the DRQ
    predictor's (or the DAQ mask expansion's) pass over the input before the layer (0 otherwise).
    """
    if reduction_split(g):
        return _split_counters(steps, batch, pad_steps, g, rows, cols, predictor_cycles)
    if steps is None:  # the same for every image: model one
        one = _uniform_counters(g, rows, cols, pad_steps)
        return {key: batch * value for key, value in one.items()} | {
            "busy_cycles": batch * (LAYER_SETUP_CYCLES + predictor_cycles + one["busy_cycles"])}
    return _array_counters(*_lockstep(steps, pad_steps, g, rows, cols), g, rows, cols,
                           batch * (LAYER_SETUP_CYCLES + predictor_cycles))


@cache
def _uniform_counters(g: ConvGeometry, rows: int, cols: int, pad_steps: int) -> dict[str, int]:
    """The counters of one image whose every position costs `pad_steps` (busy without the setup)."""
    ih = g.sh * (g.oh - 1) + g.kh - g.pt - g.pb
    iw = g.sw * (g.ow - 1) + g.kw - g.pl - g.pr
    steps = torch.full((1, g.groups * g.n_units, max(ih, 1), max(iw, 1)), pad_steps, dtype=torch.int16)
    return _array_counters(*_lockstep(steps, pad_steps, g, rows, cols), g, rows, cols, 0)


def _array_counters(compute: torch.Tensor, stall: int, lane_steps: int, g: ConvGeometry, rows: int, cols: int,
                    overhead: int) -> dict[str, int]:
    """Counters from the compute cycles of one column tile's items ([images, items]) and the lane totals."""
    layout = _layout(g, rows, cols)
    compute = compute.view(compute.shape[0], -1, 1, layout.items_per_group).expand(-1, -1, layout.col_tiles, -1)
    compute = compute.reshape(compute.shape[0], -1)
    return {
        "busy_cycles": overhead + int(_passes(compute, layout.fill, layout.items_per_pass, layout.drain).sum()),
        "compute_cycles": int(compute.sum()),
        "stall_cycles": layout.col_tiles * stall,
        "mac_steps": g.cout_g * lane_steps,
    }


@dataclass(frozen=True)
class _Layout:
    """The data-independent shape of a CONV's pass stream, in pass order (group pack, column tile, output-row
    pack, x tile) and item order (kernel row, block)."""

    col_tiles: int
    items_per_pass: int
    items_per_group: int  # items of one group pack on one column tile
    fill: np.ndarray  # [items]
    drain: np.ndarray  # [passes]


@cache
def _layout(g: ConvGeometry, rows: int, cols: int) -> _Layout:
    pack, by_groups = _pack_kind(g, cols)
    group_packs = _widths(g.groups, pack) if by_groups else np.ones(g.groups, dtype=np.int64)
    row_packs = _widths(g.oh, pack) if pack > 1 and not by_groups else np.ones(g.oh, dtype=np.int64)
    lanes = _widths(g.ow, rows)
    col_w = _widths(g.cout_g, cols)
    blocks = _widths(g.cin_g, BLOCK // pack)
    per_pass = g.kh * len(blocks)
    # per pass (group pack, column tile, row pack, x tile): passes side by side, windows per line
    shape = (len(group_packs), len(col_w), len(row_packs), len(lanes))
    side = np.broadcast_to(group_packs[:, None, None, None] * row_packs[None, None, :, None], shape).reshape(-1)
    reads = np.tile([line_reads(g.sw, g.kw, int(n), rows) for n in lanes], len(side) // len(lanes))
    fill = np.repeat(side * reads, per_pass) * np.tile(blocks, len(side) * g.kh) + FILL_LATENCY
    cols_of_pass = np.repeat(np.tile(col_w, len(group_packs)), len(row_packs) * len(lanes)) * side
    return _Layout(len(col_w), per_pass, len(row_packs) * len(lanes) * per_pass, fill, cols_of_pass + PIPE_CYCLES)


def _taps(padded: torch.Tensor, g: ConvGeometry, a: int, b: int) -> torch.Tensor:
    """The input positions every output pixel reads at kernel tap (a, b): [..., oh, ow]."""
    return padded[..., a:a + g.sh * (g.oh - 1) + 1:g.sh, b:b + g.sw * (g.ow - 1) + 1:g.sw]


def _lockstep(steps: torch.Tensor, pad_steps: int, g: ConvGeometry, rows: int,
              cols: int) -> tuple[torch.Tensor, int, int]:
    """Compute cycles of every item of one column tile ([images, items], items in pass order), the total
    of (slowest - fastest lane) over units, and the total of all lane steps."""
    n = steps.shape[0]
    pack, by_groups = _pack_kind(g, cols)
    tiles = ceil_div(g.ow, rows)
    per_block = max(1, BLOCK // pack // g.g)
    blocks = ceil_div(g.n_units, per_block)
    padded = F.pad(steps.to(torch.int16), (g.pl, g.pr, g.pt, g.pb), value=pad_steps)
    padded = padded.view(n, g.groups, g.n_units, *padded.shape[2:])
    rows_cost = []
    stall = total = 0
    for a in range(g.kh):
        row = 0
        for b in range(g.kw):
            tap = _taps(padded, g, a, b)  # [n, groups, units, oh, ow]
            total += int(tap.sum())
            lanes = F.pad(tap, (0, tiles * rows - g.ow), value=-1).view(n, g.groups, g.n_units, g.oh, tiles, rows)
            if by_groups:  # [n, group packs, units, oh, tiles, pack * rows]
                lanes = F.pad(lanes, (0, 0, 0, 0, 0, 0, 0, 0, 0, ceil_div(g.groups, pack) * pack - g.groups), value=-1)
                lanes = lanes.view(n, -1, pack, g.n_units, g.oh, tiles, rows).permute(0, 1, 3, 4, 5, 2, 6)
            elif pack > 1:  # [n, 1, units, row packs, tiles, pack * rows]
                lanes = F.pad(lanes, (0, 0, 0, 0, 0, ceil_div(g.oh, pack) * pack - g.oh), value=-1)
                lanes = lanes.view(n, 1, g.n_units, -1, pack, tiles, rows).transpose(4, 5)
            lanes = lanes.reshape(*lanes.shape[:5], -1)
            slowest = lanes.amax(dim=-1)
            stall += int((slowest - torch.minimum(_fastest(lanes), slowest)).sum())
            units = F.pad(slowest, (0, 0, 0, 0, 0, blocks * per_block - g.n_units))
            row = row + units.view(n, units.shape[1], blocks, per_block, *units.shape[3:]).sum(dim=3).clamp_(min=1)
        rows_cost.append(row)
    cost = torch.stack(rows_cost, dim=2)  # [n, group packs, kh, blocks, row packs, tiles]
    return cost.permute(0, 1, 4, 5, 2, 3).reshape(n, -1), stall, total


def _split_counters(steps: torch.Tensor | None, batch: int, pad_steps: int, g: ConvGeometry, rows: int, cols: int,
                    predictor_cycles: int) -> dict[str, int]:
    """Reduction-split: per chunk of `rows` channels, `rows // BLOCK` weight words into the PEs bound the pace
    (lanes' steps, at most 2, fit in them); data-independent but for the statistics."""
    chunks, col_tiles, stream, compute = _split_pace(g, rows, cols)
    busy = batch * (LAYER_SETUP_CYCLES + predictor_cycles + stream)
    if steps is None:
        stall, lane_steps = 0, batch * g.groups * g.cin_g * pad_steps
    else:
        lanes = F.pad(steps.view(batch, g.groups, g.cin_g).to(torch.int16), (0, chunks * rows - g.cin_g), value=-1)
        lanes = lanes.view(batch, g.groups, chunks, rows)
        stall, lane_steps = int((lanes.amax(dim=-1) - _fastest(lanes)).sum()), int(steps.sum())
    return {
        "busy_cycles": busy,
        "compute_cycles": batch * compute,
        "stall_cycles": col_tiles * stall,
        "mac_steps": g.cout_g * lane_steps,
    }


@cache
def _split_pace(g: ConvGeometry, rows: int, cols: int) -> tuple[int, int, int, int]:
    """(chunks of `rows` channels, column tiles, cycles of the pass stream, compute cycles) of one image on the
    reduction-split mapping, where `rows // BLOCK` weight words per chunk set the pace whatever the data."""
    words = rows // BLOCK
    chunks = ceil_div(g.cin_g, rows)
    col_w = _widths(g.cout_g, cols)
    passes = g.groups * len(col_w)
    compute = torch.full((1, passes * chunks), words, dtype=torch.int64)
    fill = np.full(passes * chunks, words)
    drain = np.tile(col_w, g.groups) + PIPE_CYCLES + reduce_cycles(rows)
    return chunks, len(col_w), int(_passes(compute, fill, chunks, drain).sum()), int(compute.sum())


@cache
def pool_cycles(channels: int, oh: int, ow: int, kh: int, kw: int, sw: int, rows: int) -> int:
    """POOL: passes (block of BLOCK channels, oy, x tile), items = kernel rows; a tap takes one cycle per
    channel of the block (every lane folds in its value); the drain writes one channel per cycle."""
    blocks = _widths(channels, BLOCK)
    lanes = _widths(ow, rows)
    per_pass_channels = np.repeat(blocks, oh * len(lanes))
    reads = np.tile([line_reads(sw, kw, int(n), rows) for n in lanes], len(blocks) * oh)
    fill = np.repeat(per_pass_channels * reads, kh) + FILL_LATENCY
    compute = torch.from_numpy(np.repeat(per_pass_channels, kh) * kw).view(1, -1)
    return LAYER_SETUP_CYCLES + int(_passes(compute, fill, kh, per_pass_channels + PIPE_CYCLES).sum())


def eltwise_cycles(elements: int, rows: int, operands: int) -> int:
    """ADD and MOVE: `rows` consecutive elements per arena read (the arena has one byte bank per lane and one
    read port), so MOVE reads one window per `rows` elements and ADD two."""
    return LAYER_SETUP_CYCLES + operands * ceil_div(elements, rows) + PIPE_CYCLES


def predictor_cycles(channels: int, ih: int, iw: int, rows: int) -> int:
    """DRQ region predictor: one pass over the input, a window a cycle, summing |x| per region; each band's
    flags are compared and written while the next band is read, so only the last band's gap shows."""
    return channels * ih * ceil_div(iw, rows) + PREDICTOR_GAP_CYCLES


def mask_cycles(ih: int, iw: int) -> int:
    """DAQ: the region mask expanded into one level per input pixel (shared by all channels), a pixel a cycle:
    a pixel's cell is MASK_GRID * x // iw, which one walker steps exactly without a divider, where a window
    a cycle would need a divider per lane."""
    return ih * iw + MASK_GAP_CYCLES
