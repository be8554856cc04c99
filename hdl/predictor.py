"""The DRQ region predictor: it marks which Rh x Rw regions of a layer's input are sensitive before the layer
runs (contract `numerics.region_sums`, `timing.predictor_cycles`).

It reads the input once, one arena window (`rows` pixels of a row) a cycle, in the order channel, row,
window. Regions are powers of two no wider than a window and windows start at multiples of `rows`, so a
window holds whole regions: an adder tree over the lanes' |x| gives every aligned segment's sum, and the
segments Rw wide are the regions' parts in this row. Each band of Rh rows accumulates those parts in a
small RAM per lane (one entry per window across, REGION_ROW_TILES of them); the band's last row compares
the sums with THRESHOLD and writes one level per input pixel of the band's region row into the level plane
(`window_ram` of a 2-bit unit per lane: level 2 sensitive, 1 not), laid out as [channel, region row, input column].
The convolution's line fill reads the levels beside the pixels it reads.

Pipeline: read (stage 0), segment sums (1), accumulate and compare (2), flag write (3): the last band's
flags are written PREDICTOR_GAP_CYCLES - 1 cycles after its last read, one before the layer's first read.
"""

from __future__ import annotations

from myhdl import ConcatSignal, Signal, always, always_comb, block, intbv, modbv

from dynq.contract import timing
from dynq.contract.array import REGION_MAX, REGION_ROW_TILES, is_pow2, log2
from dynq.contract.registers import Level

REGION_LOG_MAX = log2(REGION_MAX)
REGION_BITS = REGION_LOG_MAX.bit_length()
"""Bits of log2 of a region side (0..REGION_LOG_MAX)."""
SEG_BITS = 8 + log2(REGION_MAX)
"""A segment's sum: at most REGION_MAX values of |x| (at most 255)."""
SUM_BITS = 8 + 2 * log2(REGION_MAX)
"""A region's sum: at most REGION_MAX x REGION_MAX bytes."""
assert is_pow2(REGION_ROW_TILES)
assert timing.PREDICTOR_GAP_CYCLES == 4, "read, segment sums, accumulate and compare, flag write"


def _reg(bits: int) -> Signal:
    return Signal(intbv(0)[bits:])


@block
def region_predictor(rows: int, abw: int, clk, rst, go, f, rd_addr, rd_data, finish, fw_en, fw_addr, fw_bits,
                     fw_mask, d_sensitive, d_regions):
    """`go` (one cycle, the fields `f` valid in it: src0, cin, ih, iw, rh, lrw, threshold, s0_signed) starts a
    pass over the input; `finish` marks its last cycle, PREDICTOR_GAP_CYCLES after the last read. Until
    then `rd_addr` is the arena read address and `rd_data` its data a cycle later. `d_sensitive` and
    `d_regions` are the sensitive regions and the regions of this cycle's flag write (0 in other cycles):
    the layer's counters add them (they are shared with the mask expansion, which never runs beside it)."""
    rb = log2(rows)
    unit = len(fw_bits) // rows  # bits of a level
    eight_bit_at, four_bit_at = Level.EIGHT_BIT.bit_length() - 1, Level.FOUR_BIT.bit_length() - 1
    assert (1 << eight_bit_at, 1 << four_bit_at) == (Level.EIGHT_BIT, Level.FOUR_BIT), "one bit set in each"
    assert REGION_MAX <= rows, "a window covers whole regions"
    lmax = REGION_LOG_MAX
    tb = log2(REGION_ROW_TILES)
    gap = timing.PREDICTOR_GAP_CYCLES
    f_src0, f_cin, f_ih, f_iw = f["src0"], f["cin"], f["ih"], f["iw"]
    f_rh, f_lrw, f_threshold, f_signed = f["rh"], f["lrw"], f["threshold"], f["s0_signed"]

    cin, ih, iw, xtiles = _reg(16), _reg(16), _reg(16), _reg(16)
    lrw = _reg(REGION_BITS)
    rh_mask = _reg(REGION_MAX.bit_length())
    threshold = _reg(32)
    in_signed = Signal(bool(0))
    running, waiting = Signal(bool(0)), Signal(bool(0))
    gap_left = _reg(3)
    p_c, p_y, p_t = _reg(16), _reg(16), _reg(16)
    p_addr, p_row = Signal(modbv(0)[abw + 1:]), Signal(modbv(0)[abw + 1:])
    p_band = Signal(modbv(0)[abw + 1:])  # flag-plane address of the band's region row
    p_n = _reg(rb + 1)
    p_faddr = Signal(modbv(0)[abw:])
    p_first, p_last = Signal(bool(0)), Signal(bool(0))
    # stage tags
    s1_valid, s1_first, s1_last = Signal(bool(0)), Signal(bool(0)), Signal(bool(0))
    s1_t, s1_n, s1_faddr = _reg(tb), _reg(rb + 1), Signal(modbv(0)[abw:])
    s2_valid, s2_first, s2_last = Signal(bool(0)), Signal(bool(0)), Signal(bool(0))
    s2_t, s2_n, s2_faddr = _reg(tb), _reg(rb + 1), Signal(modbv(0)[abw:])
    s3_valid = Signal(bool(0))
    s3_n, s3_faddr = _reg(rb + 1), Signal(modbv(0)[abw:])
    insts = []

    @always_comb
    def issue():
        n = int(iw) - (int(p_t) << rb)
        if n > rows:
            n = rows
        p_n.next = n
        p_first.next = (p_y & rh_mask) == 0
        p_last.next = (p_y & rh_mask) == rh_mask or p_y + 1 == ih
        rd_addr.next = p_addr[abw:]
        p_faddr.next = p_band + (p_t << rb)
        finish.next = waiting and gap_left == 1

    @always(clk.posedge)
    def walk():
        if rst:
            running.next = 0
            waiting.next = 0
        elif go:
            cin.next = f_cin
            ih.next = f_ih
            iw.next = f_iw
            xtiles.next = (f_iw + rows - 1) >> rb
            lrw.next = f_lrw
            rh_mask.next = f_rh - 1
            threshold.next = f_threshold
            in_signed.next = f_signed
            p_c.next = 0
            p_y.next = 0
            p_t.next = 0
            p_addr.next = f_src0
            p_row.next = f_src0
            p_band.next = 0
            running.next = 1
        elif running:
            if p_t + 1 < xtiles:
                p_t.next = p_t + 1
                p_addr.next = p_addr + rows
            else:
                p_t.next = 0
                p_addr.next = p_row + iw
                p_row.next = p_row + iw
                if p_last:
                    p_band.next = p_band + iw
                if p_y + 1 < ih:
                    p_y.next = p_y + 1
                else:
                    p_y.next = 0
                    if p_c + 1 < cin:
                        p_c.next = p_c + 1
                    else:
                        running.next = 0
                        waiting.next = 1
                        gap_left.next = gap
        elif waiting:
            gap_left.next = gap_left - 1
            if gap_left == 1:
                waiting.next = 0

    @always(clk.posedge)
    def stages():
        s1_valid.next = running
        s1_first.next = p_first
        s1_last.next = p_last
        s1_t.next = p_t[tb:]
        s1_n.next = p_n
        s1_faddr.next = p_faddr
        s2_valid.next = s1_valid
        s2_first.next = s1_first
        s2_last.next = s1_last
        s2_t.next = s1_t
        s2_n.next = s1_n
        s2_faddr.next = s1_faddr
        s3_valid.next = s2_valid and s2_last
        s3_n.next = s2_n
        s3_faddr.next = s2_faddr

    insts += [issue, walk, stages]

    # stage 1: |x| per lane and the sums of every aligned segment; the segments Rw wide, at their first lane
    levels = [[_reg(SEG_BITS) for _ in range(rows >> level)] for level in range(lmax + 1)]
    for j in range(rows):
        insts.append(magnitude(rd_data(8 * j + 8, 8 * j), in_signed, s1_n, levels[0][j], j))
    for level in range(1, lmax + 1):
        for i in range(rows >> level):
            insts.append(pair_add(levels[level - 1][2 * i], levels[level - 1][2 * i + 1], levels[level][i]))
    seg = [_reg(SEG_BITS) for _ in range(rows)]
    for b in range(rows):
        # only a segment's first lane's sum is read (its flag is the region's), so lane b takes the levels
        # whose segments start at it: a lane at an odd position takes its own |x| and needs no multiplexer
        starts = [levels[level][b >> level] for level in range(lmax + 1) if b % (1 << level) == 0]
        insts.append(segment_pick(clk, starts, lrw, seg[b]))

    # stage 2: the band's running sums; on its last row, the flags
    flags = [Signal(bool(0)) for _ in range(rows)]
    for b in range(rows):
        insts.append(region_sum(clk, seg[b], s2_valid, s2_first, s2_last, s2_t, threshold, flags[b]))

    # stage 3: lane j's flag is its region's (the segment's first lane); count the regions and the sensitive
    flag_all = ConcatSignal(*reversed(flags))

    @always_comb
    def flag_write():
        bits = intbv(0)[unit * rows:]  # Level.EIGHT_BIT for a sensitive pixel, FOUR_BIT for the others
        for j in range(rows):
            if flag_all[(j >> int(lrw)) << int(lrw)]:
                bits[unit * j + eight_bit_at] = 1
            else:
                bits[unit * j + four_bit_at] = 1
        fw_en.next = s3_valid
        fw_addr.next = s3_faddr
        fw_bits.next = bits
        if s3_n >= rows:
            fw_mask.next = (1 << rows) - 1
        else:
            fw_mask.next = (1 << int(s3_n)) - 1

    @always_comb
    def count():
        sensitive = intbv(0)[len(d_sensitive):]
        for b in range(rows):
            if b < s3_n and (b & ((1 << int(lrw)) - 1)) == 0 and flag_all[b]:
                sensitive[:] = sensitive + 1
        d_sensitive.next = 0
        d_regions.next = 0
        if s3_valid:
            d_sensitive.next = sensitive
            d_regions.next = (int(s3_n) + (1 << int(lrw)) - 1) >> int(lrw)

    insts += [flag_write, count]
    return insts


@block
def magnitude(byte, signed_in, lanes, out, j: int):
    """|x| of lane j's byte; 0 past the row's end."""

    @always_comb
    def absolute():
        v = int(byte)
        if signed_in and v >= 128:
            v = 256 - v
        if j >= lanes:
            v = 0
        out.next = v

    return absolute


@block
def pair_add(a, b, out):
    @always_comb
    def add():
        out.next = a + b

    return add


@block
def segment_pick(clk, candidates, lrw, out):
    """The sum of the segment 2**lrw lanes wide that starts at this lane (candidate l: the level-l node),
    registered; where no such segment starts here, a sum that nothing reads."""
    width = len(out)
    if len(candidates) == 1:
        own = candidates[0]

        @always(clk.posedge)
        def single():
            out.next = own

        return single
    joined = ConcatSignal(*reversed(candidates))

    @always(clk.posedge)
    def pick():
        out.next = (joined >> (width * int(lrw))) & ((1 << width) - 1)

    return pick


@block
def region_sum(clk, seg, valid, first, last, t, threshold, flag):
    """One lane's running region sums, an entry per window across (distributed RAM): the band's first row
    writes the segment's sum, later rows add to it; on the band's last row `flag` = sum >= threshold."""
    mem = [_reg(SUM_BITS) for _ in range(REGION_ROW_TILES)]
    total = _reg(SUM_BITS)

    @always_comb
    def combine():
        if first:
            total.next = seg
        else:
            total.next = mem[t] + seg

    @always(clk.posedge)
    def update():
        if valid:
            mem[t].next = total
        flag.next = total >= threshold

    return combine, update
