"""Per-lane arithmetic of the element-wise unit: the contract's requantization rule, one lane per byte.

`requant(a*m0 + b*m1, 1, shift)`: products in stage 1, the rounding term in stage 2, the arithmetic
shift and clamp in stage 3 (the contract's PIPE_CYCLES counts these three plus the arena read).
"""

from __future__ import annotations

from myhdl import Signal, always, block, intbv

from dynq.contract import numerics as nx

ACC_BITS = 48
"""Wide enough for (a*m0 + b*m1) plus the rounding term of any shift the core applies (<= ACC_BITS - 1)."""
SHIFT_SAT = ACC_BITS - 1
"""Shifts beyond this give the same result as this one for every |a*m0 + b*m1| < 2**(ACC_BITS - 2)."""


def signed_acc(bits: int = ACC_BITS) -> Signal:
    return Signal(intbv(0, min=-(1 << (bits - 1)), max=1 << (bits - 1)))


@block
def eltwise_lane(clk, data, x_signed, capture_a, compute, add, mult0, mult1, rnd, shift, clip_lo, clip_hi, y):
    """`data` is the lane's byte of the arena read that arrived this cycle. `capture_a` keeps it as the
    first operand of an ADD; `compute` starts a result from it (MOVE: data*m0; ADD: held*m0 + data*m1).
    `y` holds the clamped result byte three cycles later."""
    lo, _ = nx.value_range(True)
    _, hi = nx.value_range(False)
    held = Signal(intbv(0, min=lo, max=hi + 1))
    acc1 = signed_acc()
    acc2 = signed_acc()

    @always(clk.posedge)
    def stages():
        v = int(data)
        if x_signed and v >= 128:
            v = v - 256
        if capture_a:
            held.next = v
        if compute:
            if add:
                acc1.next = held * mult0 + v * mult1
            else:
                acc1.next = v * mult0
        acc2.next = acc1 + rnd
        r = int(acc2 >> shift)
        if r < clip_lo:
            r = int(clip_lo)
        elif r > clip_hi:
            r = int(clip_hi)
        y.next = r & 0xFF

    return stages
