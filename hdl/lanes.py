"""The requantizer lanes, one per byte of an arena word, shared by the element-wise unit and the convolution
drain: the contract's rule `clamp((x * mult + (2**shift >> 1)) >> shift)` in three registered stages
(products, a register, shift-round-clamp); the contract's PIPE_CYCLES counts these three plus an operand read.

The rounding term is never added at full width: (p + 2**(s-1)) >> s equals ((2p >> s) + 1) >> 1 for s >= 1
(and 2p >> 0 >> 1 = p for s = 0), so the shift comes first and the add is as narrow as the clamp.
"""

from __future__ import annotations

from myhdl import Signal, always, always_comb, block, intbv

from dynq.contract import numerics as nx

ACC_BITS = 48
"""Wide enough for (a*m0 + b*m1) plus the rounding term of any shift the core applies (<= ACC_BITS - 1)."""
SHIFT_SAT = ACC_BITS - 1
"""Shifts beyond this give the same result as this one for every |a*m0 + b*m1| < 2**(ACC_BITS - 2)."""
SHIFTED_BITS = ACC_BITS + 1
"""The doubled product 2 * (a*m0 + b*m1) that the shift takes."""
OPERAND_BITS = nx.ACC_BITS + 2
"""A convolution's sum plus its bias (both within the contract's ACC_BITS; their sum one bit wider), signed."""
MULT_BITS = 17
"""Multipliers as the lanes see them: the 16-bit instruction field read signed (element-wise unit), or the
per-channel 16-bit record field read unsigned (convolution)."""


def signed(bits: int) -> Signal:
    return Signal(intbv(0, min=-(1 << (bits - 1)), max=1 << (bits - 1)))


@block
def shift_step(source, target, shift, b: int):
    """One step of an arithmetic right shift: by 2**b when bit b of `shift` is set."""

    @always_comb
    def step():
        if shift[b]:
            target.next = source >> (1 << b)
        else:
            target.next = source

    return step


@block
def requant_lane(clk, conv, acc, bias, data, x_signed, capture_a, add, m0, m1, shift, clip_lo, clip_hi, y):
    """Stage 1 forms `x0 * m0 + x1 * m1` from this cycle's operands: a convolution (`conv`) gives its sum
    `acc + bias` as x0; otherwise `data` (the lane's byte of the arena read, signed if `x_signed`) is x0,
    or with `add` it is x1 beside the byte kept by an earlier `capture_a`. Stage 2 holds it, stage 3
    shifts by `shift`, rounds and clamps to [clip_lo, clip_hi]: the caller presents `shift` in the cycle
    stage 3 takes it. `y` is the result's low byte."""
    lo, _ = nx.value_range(True)
    _, hi = nx.value_range(False)
    x = Signal(intbv(0, min=lo, max=hi + 1))
    held = Signal(intbv(0, min=lo, max=hi + 1))
    x0 = signed(OPERAND_BITS)
    x1 = Signal(intbv(0, min=lo, max=hi + 1))
    acc1, acc2 = signed(ACC_BITS), signed(ACC_BITS)
    doubled, shifted = signed(SHIFTED_BITS), signed(SHIFTED_BITS)
    clip_bits = len(clip_lo)
    kept_bits = clip_bits + 2  # the bits of `shifted` that the rounding reads when the result can fit
    top = Signal(intbv(0)[ACC_BITS:])  # the bits of acc2 at shift + clip_bits and up (the rest clear)
    top_mask = Signal(intbv(0)[ACC_BITS:])
    rounded = signed(kept_bits + 1)
    narrow = signed(kept_bits)  # the rounded result, or a value past the clamp bounds of its sign
    narrow_lo, narrow_hi = narrow.min, narrow.max - 1
    clamped = Signal(intbv(0)[8:])  # the low byte of the clamped value

    @always_comb
    def byte():
        if x_signed:
            x.next = data.signed()
        else:
            x.next = data

    @always_comb
    def operands():
        if conv:
            x0.next = acc + bias
            x1.next = 0
        elif add:
            x0.next = held
            x1.next = x
        else:
            x0.next = x
            x1.next = 0

    @always_comb
    def double():
        doubled.next = acc2 << 1

    # the shift as fixed steps, the largest first (Yosys's own shifter takes the smallest first): the later
    # steps keep only the low bits the clamp reads
    chain = [doubled] + [signed(SHIFTED_BITS) for _ in range(len(shift) - 1)] + [shifted]
    shift_out = [shift_step(chain[i], chain[i + 1], shift, b) for i, b in enumerate(reversed(range(len(shift))))]

    @always_comb
    def upper_bits():
        # whether `shifted` fits kept_bits (its bits at shift + clip_bits + 1 and up, those of acc2 at
        # shift + clip_bits and up, all equal), under a mask of the shift alone (the same in every lane:
        # Yosys builds it once)
        m = intbv(0)[ACC_BITS:]
        for i in range(ACC_BITS):
            m[i] = i >= shift + clip_bits
        top_mask.next = m
        top.next = acc2[ACC_BITS:] & m

    @always_comb
    def round_half_up():
        if shift == 0:
            rounded.next = shifted[kept_bits:].signed()
        else:
            rounded.next = shifted[kept_bits:].signed() + 1

    @always_comb
    def saturate():
        # a narrow compare instead of two full-width ones
        if top == 0 or top == top_mask:
            narrow.next = rounded >> 1
        elif acc2 < 0:
            narrow.next = narrow_lo
        else:
            narrow.next = narrow_hi

    @always_comb
    def clamp():
        if narrow < clip_lo:
            clamped.next = clip_lo[8:]
        elif narrow > clip_hi:
            clamped.next = clip_hi[8:]
        else:
            clamped.next = narrow[8:]

    @always(clk.posedge)
    def stages():
        if capture_a:
            held.next = x
        acc1.next = x0 * m0 + x1 * m1
        acc2.next = acc1
        y.next = clamped

    return byte, operands, double, shift_out, upper_bits, round_half_up, saturate, clamp, stages
