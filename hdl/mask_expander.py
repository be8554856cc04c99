"""DAQ's mask expansion: the region mask (MASK_GRID x MASK_GRID cell levels in the register map) scaled to a
layer's input and written into the level plane before the layer runs (contract `numerics.mask_cells`,
`timing.mask_cycles`).

Pixel (y, x) takes cell (MASK_GRID * y // ih, MASK_GRID * x // iw). A window a cycle would need `rows`
dividers; instead one walker steps through the input a pixel a cycle and keeps each cell index with its
remainder (MASK_GRID * x = cell * iw + rem), adding MASK_GRID // iw and MASK_GRID % iw per pixel: exact,
with no divider (the two constants come from a MASK_GRID-entry table, or are 0 and MASK_GRID for wider
inputs). The plane is [input row, input column], shared by every channel; the line fill reads it as it
reads the DRQ predictor's flags.
"""

from __future__ import annotations

from myhdl import Signal, always, always_comb, block, intbv, modbv

from dynq.contract import timing
from dynq.contract.array import log2
from dynq.contract.registers import MASK_BITS, MASK_GRID, Level

LEVEL_8BIT = int(Level.EIGHT_BIT)
assert timing.MASK_GAP_CYCLES == 1, "the last level is written one cycle before the layer's first read"


@block
def grid_step(size, q, r):
    """(MASK_GRID // size, MASK_GRID % size) for size >= 1: a table up to MASK_GRID, (0, MASK_GRID) above."""

    @always_comb
    def table():
        q.next = 0
        r.next = MASK_GRID
        for d in range(1, MASK_GRID + 1):
            if size == d:
                q.next = MASK_GRID // d
                r.next = MASK_GRID % d

    return table


@block
def cell_advance(rem, cell, q, r, size, rem_next, cell_next):
    """A pixel on along one axis: from MASK_GRID * p = cell * size + rem to MASK_GRID * (p + 1), given
    (q, r) = divmod(MASK_GRID, size). Both remainders are below size, so the carry is at most one."""

    @always_comb
    def step():
        if rem + r >= size:
            rem_next.next = rem + r - size
            cell_next.next = cell + q + 1
        else:
            rem_next.next = rem + r
            cell_next.next = cell + q

    return step


@block
def mask_expander(rows: int, abw: int, clk, rst, go, f, mask_regs, finish, fw_en, fw_addr, fw_bits, fw_mask,
                  d_sensitive, d_regions):
    """`go` (one cycle, the fields `f` valid in it: cin, ih, iw) starts the walk; `finish` marks its last
    cycle, MASK_GAP_CYCLES after the last write. `mask_regs` are the MASK_WORDS words of the mask memory
    (word = one mask row). The level plane is written through (fw_en, fw_addr, fw_bits, fw_mask), one unit
    a cycle in lane 0. `d_sensitive` and `d_regions` are this cycle's 8-bit pixels and pixels, both times the
    channels (0 in other cycles), for the layer's counters to add."""
    cells_per_word = 32 // MASK_BITS
    assert cells_per_word == MASK_GRID, "a mask word holds one row of cells"
    cell_bits = log2(MASK_GRID)
    f_cin, f_ih, f_iw = f["cin"], f["ih"], f["iw"]
    cin, ih, iw = Signal(intbv(0)[16:]), Signal(intbv(0)[16:]), Signal(intbv(0)[16:])
    x, y = Signal(intbv(0)[16:]), Signal(intbv(0)[16:])
    cx, cy = Signal(intbv(0)[cell_bits:]), Signal(intbv(0)[cell_bits:])
    rx, ry = Signal(intbv(0)[16:]), Signal(intbv(0)[16:])
    qx, qy = Signal(intbv(0)[cell_bits + 1:]), Signal(intbv(0)[cell_bits + 1:])
    sx, sy = Signal(intbv(0)[cell_bits + 1:]), Signal(intbv(0)[cell_bits + 1:])
    qx_l, qy_l = Signal(intbv(0)[cell_bits + 1:]), Signal(intbv(0)[cell_bits + 1:])
    sx_l, sy_l = Signal(intbv(0)[cell_bits + 1:]), Signal(intbv(0)[cell_bits + 1:])
    addr = Signal(modbv(0)[abw:])
    running, ending = Signal(bool(0)), Signal(bool(0))
    row = Signal(intbv(0)[32:])
    level = Signal(intbv(0)[MASK_BITS:])
    rx_n, ry_n = Signal(intbv(0)[16:]), Signal(intbv(0)[16:])
    cx_n, cy_n = Signal(intbv(0)[cell_bits:]), Signal(intbv(0)[cell_bits:])
    insts = [grid_step(f_iw, qx_l, sx_l), grid_step(f_ih, qy_l, sy_l),
             cell_advance(rx, cx, qx, sx, iw, rx_n, cx_n), cell_advance(ry, cy, qy, sy, ih, ry_n, cy_n)]

    @always_comb
    def lookup():
        row.next = mask_regs[cy]

    @always_comb
    def cell():
        level.next = (row >> (MASK_BITS * int(cx))) & ((1 << MASK_BITS) - 1)

    @always_comb
    def write():
        fw_en.next = running
        fw_addr.next = addr
        fw_bits.next = level
        fw_mask.next = 1
        finish.next = ending
        d_sensitive.next = 0
        d_regions.next = 0
        if running:
            d_regions.next = cin
            if level == LEVEL_8BIT:
                d_sensitive.next = cin

    @always(clk.posedge)
    def walk():
        ending.next = 0
        if rst:
            running.next = 0
        elif go:
            cin.next = f_cin
            ih.next = f_ih
            iw.next = f_iw
            qx.next = qx_l
            sx.next = sx_l
            qy.next = qy_l
            sy.next = sy_l
            x.next = 0
            y.next = 0
            cx.next = 0
            cy.next = 0
            rx.next = 0
            ry.next = 0
            addr.next = 0
            running.next = 1
        elif running:
            addr.next = addr + 1
            if x + 1 < iw:
                x.next = x + 1
                rx.next = rx_n
                cx.next = cx_n
            else:
                x.next = 0
                rx.next = 0
                cx.next = 0
                if y + 1 < ih:
                    y.next = y + 1
                    ry.next = ry_n
                    cy.next = cy_n
                else:
                    running.next = 0
                    ending.next = 1

    insts += [lookup, cell, write, walk]
    return insts
