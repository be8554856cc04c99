"""The convolution engine: line registers, the nibble-serial PE array, the tap sequencer and the drain.

It implements `dynq.contract.timing` for the unpacked mapping (one pass at a time on the array): passes of
one output row and `rows` lanes, items of (kernel row, block of BLOCK input channels). While the PEs work on
the item in the active line registers (A), the fill unit reads the next item's lines into the shadow set (B)
one arena window a cycle; at the end of a phase A takes B. Per tap the sequencer visits the block's units
whose slowest lane has steps to do (zero-part skipping skips whole units in no cycle), one term part per
lane per cycle; a tap with nothing to do still takes its cycle. At a pass's end each PE keeps its sum for
the drain, which requantizes one output channel a cycle while the next pass accumulates afresh.
"""

from __future__ import annotations

import torch
from myhdl import ConcatSignal, Signal, always, always_comb, block, concat, enum, intbv, modbv

from dynq.contract import numerics as nx
from dynq.contract import timing
from dynq.contract.array import BLOCK, LINE_WINDOWS, MAX_STRIDE, POOL_ROW_TILES, log2
from dynq.contract.isa import FIELD
from dynq.contract.layout import PARAM_BYTES, word_byte, word_bytes
from dynq.contract.registers import MASK_BITS, Level
from dynq.hdl.lanes import SHIFT_SAT, signed
from dynq.hdl.mask_expander import mask_expander
from dynq.hdl.memories import ram, window_ram
from dynq.hdl.predictor import region_predictor

PE_ACC_BITS = nx.ACC_BITS
"""The PEs' accumulators: the compiler proves every layer's sums fit (`numerics.accumulator_bound`)."""
LEVEL_BITS = MASK_BITS
"""A unit of the level plane: the contract's pixel levels (0 cropped, 1 4-bit, 2 8-bit)."""
CROP_CODE = 0x88
"""A cropped pixel in the line: a `low` byte no 4-bit value takes (the low-part rule gives |v| <= 15, the
high-part rule multiples of 16), so the lane gives it no step. A lane tells it by three bits: its top two
differ (no |v| <= 15 has that) and bit CROP_MARK is set (no multiple of 16 has that)."""
CROP_TOP, CROP_MARK = 7, 3


def _looks_cropped(v: int) -> bool:
    return (v >> CROP_TOP & 1) != (v >> (CROP_TOP - 1) & 1) and bool(v >> CROP_MARK & 1)


_LOW_CODES = {0, 0x80} | {int(c) for signed in (False, True) for lo, hi in [nx.value_range(signed)]
                          for use_hi in (False, True)
                          for c in nx.insensitive(torch.arange(lo, hi + 1), signed, use_hi).remainder(256)}
"""Every byte a line slot holds with `low` set besides CROP_CODE: the 4-bit values and the paddings."""
assert _looks_cropped(CROP_CODE) and not any(_looks_cropped(c) for c in _LOW_CODES)
MAG_BITS = nx.PART_BITS
"""A term part as a PE multiplies it: a magnitude (0..15) and a sign, so that the product is two radix-4
digits read from the column's multiples of its weight and one add."""
WEIGHT_BITS = 8
_TAPS = FIELD["kh"].hi * FIELD["kw"].hi
_BYTE_LO, _BYTE_HI = nx.value_range(True)[0], nx.value_range(False)[1]
POOL_ACC_BITS = max(-_BYTE_LO * _TAPS - 1, _BYTE_HI * _TAPS).bit_length() + 1
"""A POOL sum, signed: a window as large as the kernel fields allow of bytes read signed or unsigned."""
BYTE_BITS = max(-_BYTE_LO - 1, _BYTE_HI).bit_length() + 1
"""A byte read signed or unsigned, as one signed value: what a max-pooling accumulator ever holds."""
DRAIN_READ_LATENCY = 1
PARTS = 2 * BLOCK
"""Term parts of a lane's line slots: an SDP unit (g <= BLOCK slots) chooses among at most these."""
KEY_BITS = nx.PART_BITS + 1
"""An SDP importance key: 16 + |hi| for a non-zero high part, |lo| for a low part."""
STEP_BITS = PARTS.bit_length()
"""A lane's steps in a unit: 0..2 (int8, DRQ), 0..2g <= PARTS (SDP's k)."""
assert MAG_BITS == 4, "the PE reads a part as two radix-4 digits"
assert DRAIN_READ_LATENCY + 3 == timing.PIPE_CYCLES, "drain: parameter read + three requantizer stages"
assert timing.FILL_LATENCY == 2, "a fill's last window is read, lands in set B, then set A may take it"


def acc_signal() -> Signal:
    return signed(PE_ACC_BITS)


PE_MODULE = "dynq_pe"
"""The PE is its own module in the generated Verilog: one definition, `rows * cols` instances, so that
synthesis maps it once."""


@block
def pe(clk, reset, capture, mag, neg, hi, w, own_w, own, result):
    """One PE: `acc += (-1 if neg else 1) * w * mag * (16 if hi else 1)`; `reset` starts the next cycle's
    sum from 0; `capture` keeps this cycle's sum in `result` for the drain while the next pass accumulates.

    The weight w is the lane's pick of the weight word (`w`: the byte of the slot the lane computes, which
    in SDP differs from lane to lane), or with `own` the PE's own register (`own_w`: the reduction-split
    mapping, where every PE has its own weight). The two 2-bit digits of `mag` each pick 0, w, 2w or 3w
    (one adder), and one add makes w * mag. No multiplier (hence no DSP), and a lane with nothing to do
    has `mag` 0."""
    acc = acc_signal()
    total = acc_signal()
    x1, x3 = signed(WEIGHT_BITS), signed(WEIGHT_BITS + 2)
    digit_lo, digit_hi = signed(WEIGHT_BITS + 3), signed(WEIGHT_BITS + 3)
    prod = signed(WEIGHT_BITS + 6)
    addend = signed(WEIGHT_BITS + 10)

    @always_comb
    def weight():
        if own:
            x1.next = own_w
        else:
            x1.next = w

    @always_comb
    def triple():
        x3.next = x1 + x1 * 2

    @always_comb
    def digits():
        if mag[2:0] == 1:
            digit_lo.next = x1
        elif mag[2:0] == 2:
            digit_lo.next = x1 * 2
        elif mag[2:0] == 3:
            digit_lo.next = x3
        else:
            digit_lo.next = 0
        if mag[4:2] == 1:
            digit_hi.next = x1
        elif mag[4:2] == 2:
            digit_hi.next = x1 * 2
        elif mag[4:2] == 3:
            digit_hi.next = x3
        else:
            digit_hi.next = 0

    @always_comb
    def product():
        prod.next = digit_lo + digit_hi * 4

    @always_comb
    def scale():
        if hi:
            addend.next = prod * 16
        else:
            addend.next = prod

    @always_comb
    def accumulate():
        if neg:
            total.next = acc - addend
        else:
            total.next = acc + addend

    @always(clk.posedge)
    def update():
        if reset:
            acc.next = 0
        else:
            acc.next = total
        if capture:
            result.next = total

    return weight, triple, digits, product, scale, accumulate, update


@block
def pe_instance(clk, reset, capture, mag, neg, hi, w, own_w, own, result):
    """An instance of the PE module (`pe`, converted once as PE_MODULE)."""

    @always(clk.posedge)
    def stand_in():  # the converter uses the Verilog and VHDL templates below, never this body
        result.next = result

    result.driven = "reg"
    for s in (clk, reset, capture, mag, neg, hi, w, own_w, own):
        s.read = True
    return stand_in


_PE_PORTS = ("clk", "reset", "capture", "mag", "neg", "hi", "w", "own_w", "own", "result")
pe_instance.verilog_code = (PE_MODULE + " ${result}_pe (" + ", ".join(f".{n}(${n})" for n in _PE_PORTS) + ");")
pe_instance.vhdl_code = ("${result}_pe: entity work." + PE_MODULE + " port map ("
                         + ", ".join(f"{n} => ${n}" for n in _PE_PORTS) + ");")


def pe_ports() -> dict[str, Signal]:
    """The PE module's ports, as `conv_engine` connects them."""
    return {"clk": Signal(bool(0)), "reset": Signal(bool(0)), "capture": Signal(bool(0)),
            "mag": Signal(intbv(0)[MAG_BITS:]), "neg": Signal(bool(0)), "hi": Signal(bool(0)),
            "w": signed(WEIGHT_BITS), "own_w": signed(WEIGHT_BITS), "own": Signal(bool(0)),
            "result": acc_signal()}


@block
def conv_engine(rows: int, cols: int, abw: int, wmw: int, clk, rst, start, f, ar_addr, ar_data, aw_en, aw_addr,
                aw_mask, wa_addr, wa_data, wb_addr, wb_data, drain, last, n_compute, n_stall, n_steps, n_sensitive,
                n_regions):
    """`start` (one cycle) latches the instruction fields `f` (a dict of signals, valid in that cycle).
    Arena: read port (`ar_addr` -> `ar_data` a cycle later), write port (its data comes from the requantizer
    lanes). Weight memory: port A for weights, port B for the per-channel records. `drain` (a dict) feeds the
    core's requantizer lanes: `acc` (a sum per lane), `bias` and `mult` for their first stage, `shift`
    in the cycle of their third. `last` marks the layer's final busy cycle (its last
    output write); then `n_compute`, `n_stall` and `n_steps` hold the layer's compute_cycles, stall_cycles
    and mac_steps, `n_sensitive` and `n_regions` the DRQ predictor's region counts (DAQ: pixel counts).

    A DRQ layer (`f["drq"]`) first runs the region predictor over its input, a DAQ layer (`f["daq"]`) the
    mask expansion over the mask memory (`f["mask"]`, its words); both write the level plane (the
    contract's levels: 0 cropped, 1 4-bit, 2 8-bit), and the line fill reads each pixel's level beside it.
    A 4-bit pixel enters the line as its 4-bit value (`numerics.insensitive`) with a `low` bit that makes it
    one step (one term part) for its lane; a cropped one as CROP_CODE with `low`, no step at all.

    An SDP layer (`f["sdp"]`) runs units of g = 2**f["lg"] line slots: in each, every lane takes its k
    (`f["k"]`) most important term parts one a step (`sdp_pick`), each with the weight of its own slot."""
    line_bytes = LINE_WINDOWS * rows
    f_cin_g = f["cin_g"]
    f_cout_g = f["cout_g"]
    f_col_tiles = f["col_tiles"]
    f_blocks = f["blocks"]
    f_dst = f["dst"]
    f_groups = f["groups"]
    f_ih = f["ih"]
    f_iw = f["iw"]
    f_kh = f["kh"]
    f_kw = f["kw"]
    f_oh = f["oh"]
    f_ow = f["ow"]
    f_param = f["param"]
    f_pl = f["pl"]
    f_pt = f["pt"]
    f_s0_signed = f["s0_signed"]
    f_sh = f["sh"]
    f_src0 = f["src0"]
    f_src1 = f["src1"]
    f_sw = f["sw"]
    f_zero_skip = f["zero_skip"]
    f_split = f["split"]
    f_aux = f["aux"]
    f_out_signed = f["out_signed"]
    f_pool = f["pool"]
    f_cin = f["cin"]
    f_mult0 = f["mult0"]
    f_shift0 = f["shift0"]
    f_drq, f_daq, f_mask = f["drq"], f["daq"], f["mask"]
    f_insens_hi = f["insens_hi"]
    f_rh, f_lrh = f["rh"], f["lrh"]
    f_sdp, f_lg, f_k = f["sdp"], f["lg"], f["k"]
    wbytes = word_bytes(cols)
    records = wbytes // PARAM_BYTES
    rb, wbb = log2(rows), log2(wbytes)
    recb = log2(records)
    pipe = timing.PIPE_CYCLES
    shift_sat = SHIFT_SAT
    words = rows // BLOCK  # weight words of a reduction-split chunk: its fill and compute cycles
    assert words >= 2, "a split chunk lasts rows // BLOCK cycles and a lane may need two"
    reduce = timing.reduce_cycles(rows)
    assert reduce == log2(rows), "the split drain's adder tree halves the lanes per stage"
    bb = log2(BLOCK)
    insts = []

    # ---- latched instruction and derived sizes ------------------------------------------------------
    def reg(bits: int, signed: bool = False) -> Signal:
        if signed:
            return Signal(intbv(0, min=-(1 << (bits - 1)), max=1 << (bits - 1)))
        return Signal(intbv(0)[bits:])

    src0, dst, pbase = reg(33), reg(33), reg(33)
    tile_words = reg(32)  # weight words of one (group, column tile): kh * blocks * kw
    cin_g, cout_g, groups = reg(16), reg(16), reg(16)
    ih, iw, oh, ow = reg(16), reg(16), reg(16), reg(16)
    kh, kw, sh, sw, pt, pl = reg(8), reg(8), reg(4), reg(4), reg(4), reg(4)
    s0_signed, zero_skip = Signal(bool(0)), Signal(bool(0))
    daq = Signal(bool(0))
    levels = Signal(bool(0))  # DRQ or DAQ: the fill reads the level plane
    insens_hi = Signal(bool(0))  # DRQ/DAQ: 4-bit pixels by their high or low part
    sdp, lg, keep = Signal(bool(0)), reg(len(f_lg)), reg(len(f_k))  # SDP: log2 of g; parts kept per unit
    fplane = reg(33)  # level plane: units per channel (DRQ: region rows x input width; DAQ: 0, one plane)
    lrh = reg(len(f_lrh))
    split = Signal(bool(0))  # the reduction-split mapping: lane j takes input channel chunk * rows + j
    item_words, m_shift = reg(8), reg(3)  # weight words per item; log2 of the channels per item (block or chunk)
    plane_in, plane_out = reg(33), reg(33)
    pool, out_signed = Signal(bool(0)), Signal(bool(0))  # fused 2x2 max pooling; the outputs' signedness
    plane_pool, row_pool = reg(33), reg(16)  # pooled output: plane and row sizes
    # POOL: one pass per (block of BLOCK channels, output row, x tile); a comparator or adder per lane and slot
    pool_op, pool_max = Signal(bool(0)), Signal(bool(0))
    channels = reg(16)
    pool_mult, pool_shift = signed(17), reg(6)
    col_tiles, blocks, xtiles = reg(16), reg(16), reg(16)

    # ---- the fill item (one item ahead of compute) ---------------------------------------------------
    fi_gi, fi_ct, fi_oy, fi_xt, fi_a, fi_m = reg(16), reg(16), reg(16), reg(16), reg(8), reg(16)
    fi_valid = Signal(bool(0))
    # ---- the compute item ----------------------------------------------------------------------------
    ci_valid, ci_last = Signal(bool(0)), Signal(bool(0))
    ci_first = Signal(bool(0))  # the compute item is its pass's first
    ci_gi, ci_ct, ci_oy, ci_xt = reg(16), reg(16), reg(16), reg(16)
    ci_nch, ci_lanes = reg(5), reg(rb + 1)
    # ---- line registers ------------------------------------------------------------------------------
    line_a = [Signal(intbv(0)[8 * line_bytes:]) for _ in range(BLOCK)]
    low_a = [Signal(intbv(0)[line_bytes:]) for _ in range(BLOCK)]  # a DRQ-insensitive (one-step) byte
    take_b, shift_a = Signal(bool(0)), Signal(bool(0))
    slot_bits, window_bits = log2(BLOCK), log2(LINE_WINDOWS)
    # one-hot (slot t, window r) -> bit t * LINE_WINDOWS + r: the window the fill lands in this cycle, decoded a
    # cycle early so that each line register bit's next value is a single LUT (hold, shift, take, land)
    cap_hit = reg(BLOCK * LINE_WINDOWS)
    cap_data = Signal(intbv(0)[8 * rows:])
    cap_low = Signal(intbv(0)[rows:])
    # ---- fill unit -----------------------------------------------------------------------------------
    fl_busy = Signal(bool(0))
    fl_t, fl_r, fl_nch, fl_reads = reg(slot_bits + 1), reg(window_bits + 1), reg(5), reg(window_bits + 1)
    fl_row = reg(34)  # arena address of read 0 of the current slot (may be out of range: masked)
    fl_frow = reg(34)  # its flag-plane address
    fl_x0 = reg(18, True)  # input column of line byte 0
    fl_row_ok = Signal(bool(0))
    cap_row_ok = Signal(bool(0))
    # a split item's first reads (its channels' window and weight word 0), issued as the previous phase ends
    sp_issue = Signal(bool(0))
    sp_row, sp_word, sp_frow = reg(34), reg(34), reg(34)
    sp_lanes = reg(rb + 1)
    # ---- sequencer -----------------------------------------------------------------------------------
    st_t = enum("IDLE", "PRED", "RUN", "TAIL")
    state = Signal(st_t.IDLE)
    c_busy = Signal(bool(0))  # the compute item still has taps to run
    tap_b = reg(8)
    tap_start = Signal(bool(0))
    u_cur, s_cur = reg(3), reg(STEP_BITS)
    w_tap = reg(34)
    # per-lane part of this cycle
    lane_mag = [reg(MAG_BITS) for _ in range(rows)]
    lane_neg = [Signal(bool(0)) for _ in range(rows)]
    lane_hi = [Signal(bool(0)) for _ in range(rows)]
    lane_en = [Signal(bool(0)) for _ in range(rows)]
    lane_n = [reg(STEP_BITS) for _ in range(rows)]  # each lane's steps in the unit of this cycle
    lane_slot = [reg(slot_bits) for _ in range(rows)]  # the line slot (and weight byte) each lane computes with
    eff_u = reg(3)
    any_unit = Signal(bool(0))
    slot_work = [Signal(bool(0)) for _ in range(BLOCK)]  # some lane has a step in this slot (int8 rule)
    work = reg(BLOCK)  # units with a step for some lane: slots, or in SDP groups of g slots
    lane_steps = [[reg(2) for _ in range(BLOCK)] for _ in range(rows)]
    lane_vals = [[reg(8) for _ in range(BLOCK)] for _ in range(rows)]
    lane_low = [[Signal(bool(0)) for _ in range(BLOCK)] for _ in range(rows)]
    # ---- drain unit ----------------------------------------------------------------------------------
    dr_busy = Signal(bool(0))
    dr_k, dr_ncols = reg(16), reg(16)
    dr_co, dr_addr = reg(16), reg(34)
    dr_t_valid = [Signal(bool(0)) for _ in range(pipe)]
    dr_t_addr = [reg(abw) for _ in range(pipe)]
    dr_t_last = [Signal(bool(0)) for _ in range(pipe)]
    dr_mask = reg(rows)
    dr_t_mask = [reg(rows) for _ in range(pipe)]
    dr_rec = reg(max(recb, 1))
    dr_t_k = [reg(16) for _ in range(pipe)]
    dr_step, dr_xt = reg(33), reg(16)
    dr_store, dr_write = Signal(bool(0)), Signal(bool(0))  # fused pooling: an even row kept, an odd row written
    acc_sel = drain["acc"]
    d_bias, d_mult = drain["bias"], drain["mult"]
    d_shift = reg(6)
    shift_2, shift_3 = reg(6), drain["shift"]

    # phase bookkeeping
    pe_reset = Signal(bool(0))  # a pass starts in the next cycle: the PEs' sums start from 0
    phase_end = Signal(bool(0))
    c_done_now, f_done_now = Signal(bool(0)), Signal(bool(0))
    drain_free = Signal(bool(0))
    start_drain = Signal(bool(0))
    last_now = Signal(bool(0))

    # ---- PEs -----------------------------------------------------------------------------------------
    pe_w = [[signed(WEIGHT_BITS) for _ in range(cols)] for _ in range(rows)]
    pe_out = [[acc_signal() for _ in range(cols)] for _ in range(rows)]
    own_w = [[signed(WEIGHT_BITS) for _ in range(cols)] for _ in range(rows)]
    for j in range(rows):
        for k in range(cols):
            insts.append(pe_instance(clk, pe_reset, start_drain, lane_mag[j], lane_neg[j], lane_hi[j], pe_w[j][k],
                                     own_w[j][k], split, pe_out[j][k]))

    # split weights: word q of a chunk holds lanes q*BLOCK.. (byte t*cols + k: lane q*BLOCK + t, column k);
    # words land one a cycle, the last in the cycle its phase ends, so the others wait in shadow registers
    qb = log2(words)
    land_en, land_q = Signal(bool(0)), reg(qb)
    take_own = Signal(bool(0))
    def weight_byte(t: int, k: int) -> Signal:
        at = 8 * word_byte(t, k, cols)
        return wa_data(at + 8, at)

    for j in range(rows):
        q, t = divmod(j, BLOCK)
        for k in range(cols):
            insts.append(own_weight(clk, weight_byte(t, k), land_en, land_q, take_own, own_w[j][k], q,
                                    q == words - 1))
    pe_cols = [ConcatSignal(*reversed([pe_out[j][k] for k in range(cols)])) for j in range(rows)]

    # PE weights: the byte of the word for column k and the slot lane j computes with
    for k in range(cols):
        column = ConcatSignal(*reversed([weight_byte(t, k) for t in range(BLOCK)]))
        for j in range(rows):
            insts.append(slot_weight(column, lane_slot[j], pe_w[j][k]))

    # lanes: the byte of each slot at position stride*j, its steps; the part of this cycle
    sdp_step = Signal(bool(0))  # an SDP unit computes this cycle: the lanes mark the parts they take
    unit_slots = reg(BLOCK)  # SDP: the line slots of the unit computed this cycle
    g_logs = log2(BLOCK) + 1  # SDP's g is 2**lg, lg < g_logs (shifts by a loop constant: wiring, no shifter)
    for j in range(rows):
        for t in range(BLOCK):
            insts.append(lane_value(line_a[t], sw, lane_vals[j][t], j))
            insts.append(lane_value(low_a[t], sw, lane_low[j][t], j))
            insts.append(steps_of_lane(lane_vals[j][t], lane_low[j][t], s0_signed, zero_skip, ci_lanes, ci_nch,
                                       lane_steps[j][t], j, t))
        vals = ConcatSignal(*reversed(lane_vals[j]))
        pick = {"slot": reg(slot_bits), "part": signed(MAG_BITS + 1), "hi": Signal(bool(0)), "n": reg(STEP_BITS)}
        insts.append(sdp_pick(clk, vals, s0_signed, unit_slots, keep, zero_skip, ci_lanes, s_cur, sdp_step,
                              pick["slot"], pick["part"], pick["hi"], pick["n"], j))
        insts.append(part_of_lane(vals, lane_low[j], lane_steps[j], eff_u, s_cur, s0_signed, insens_hi, zero_skip,
                                  any_unit, sdp, pick, lane_slot[j], lane_mag[j], lane_neg[j], lane_hi[j], lane_en[j],
                                  lane_n[j]))

    for t in range(BLOCK):
        insts.append(slot_has_work([lane_steps[j][t] for j in range(rows)], slot_work[t]))
    slots_busy = ConcatSignal(*reversed(slot_work))

    @always_comb
    def unit_work():
        # int8/DRQ: a unit is a slot; SDP: unit u is slots u*g .. u*g+g-1, and none has work when k is 0
        # (the loops run unconditionally: loop variables assigned in one branch only synthesize to latches)
        bits = 0
        for u in range(BLOCK):
            in_unit = False
            for t in range(BLOCK):
                for g_log in range(g_logs):
                    if lg == g_log and (t >> g_log) == u and slots_busy[t]:
                        in_unit = True
            has = slots_busy[u]
            if sdp:
                has = in_unit and keep != 0
            if has:
                bits = bits | (1 << u)
        work.next = bits

    @always_comb
    def sdp_unit():
        bits = 0
        for t in range(BLOCK):
            for g_log in range(g_logs):
                if lg == g_log and (t >> g_log) == eff_u and t < ci_nch:
                    bits = bits | (1 << t)
        unit_slots.next = bits

    insts += [unit_work, sdp_unit]

    # ---- the level plane: DRQ's region predictor or DAQ's mask expansion writes it ---------------------
    lb = LEVEL_BITS
    pr_go, mx_go, pr_finish = Signal(bool(0)), Signal(bool(0)), Signal(bool(0))
    pr_addr = Signal(modbv(0)[abw:])
    flag_ra = Signal(modbv(0)[abw:])
    flag_rd = Signal(intbv(0)[lb * rows:])

    def plane_writer() -> tuple[Signal, ...]:  # en, addr, bits, mask, finish, sensitive and regions added
        return (Signal(bool(0)), Signal(modbv(0)[abw:]), Signal(intbv(0)[lb * rows:]), reg(rows), Signal(bool(0)),
                reg(16), reg(16))

    fw_en, fw_addr, fw_bits, fw_mask = plane_writer()[:4]  # the plane's write port
    pr_en, pr_wa, pr_bits, pr_mask, pr_done, pr_sensitive, pr_regions = plane_writer()  # DRQ writes it
    mx_en, mx_wa, mx_bits, mx_mask, mx_done, mx_sensitive, mx_regions = plane_writer()  # or DAQ does
    insts.append(region_predictor(rows, abw, clk, rst, pr_go, f, pr_addr, ar_data, pr_done, pr_en, pr_wa, pr_bits,
                                  pr_mask, pr_sensitive, pr_regions))
    insts.append(mask_expander(rows, abw, clk, rst, mx_go, f, f_mask, mx_done, mx_en, mx_wa, mx_bits, mx_mask,
                               mx_sensitive, mx_regions))
    insts.append(window_ram(clk, flag_ra, flag_rd, fw_en, fw_addr, fw_bits, fw_mask, rows, (1 << abw) // rows))

    @always_comb
    def predictor_go():
        pr_go.next = start and state == st_t.IDLE and f_drq
        mx_go.next = start and state == st_t.IDLE and f_daq
        pr_finish.next = pr_done or mx_done
        if daq:
            fw_en.next = mx_en
            fw_addr.next = mx_wa
            fw_bits.next = mx_bits
            fw_mask.next = mx_mask
        else:
            fw_en.next = pr_en
            fw_addr.next = pr_wa
            fw_bits.next = pr_bits
            fw_mask.next = pr_mask

    @always(clk.posedge)
    def level_counts():  # one pair of counters: the predictor and the mask expansion never run together
        if start and state == st_t.IDLE:
            n_sensitive.next = 0
            n_regions.next = 0
        else:
            n_sensitive.next = n_sensitive + (pr_sensitive | mx_sensitive)
            n_regions.next = n_regions + (pr_regions | mx_regions)

    insts += [predictor_go, level_counts]

    # ---- line register updates -----------------------------------------------------------------------
    for t in range(BLOCK):
        insts.append(line_slot(clk, line_a[t], take_b, shift_a, cap_hit, cap_data, t))
        insts.append(line_slot(clk, low_a[t], take_b, shift_a, cap_hit, cap_low, t, 1))

    # fill capture: the window's bytes [cap_lo, cap_hi) lie inside the input row, the others are padding
    read_x0 = reg(18, True)
    cap_lo, cap_hi = reg(rb + 1), reg(rb + 1)

    @always_comb
    def read_column():
        read_x0.next = fl_x0 + (fl_r << rb)

    @always(clk.posedge)
    def fill_capture():
        cap_hit.next = 0
        if sp_issue:
            cap_hit.next[0] = 1
            cap_row_ok.next = 1
            cap_lo.next = 0
            cap_hi.next = sp_lanes
        else:
            if fl_busy and not split:
                cap_hit.next[fl_t[slot_bits:] * LINE_WINDOWS + fl_r[window_bits:]] = 1
            cap_row_ok.next = fl_row_ok
            lo = 0
            if read_x0 < 0:
                lo = -read_x0
            if lo > rows:
                lo = rows
            cap_lo.next = lo
            hi = iw - read_x0
            if hi < 0:
                hi = 0
            if hi > rows:
                hi = rows
            cap_hi.next = hi

    cap_bytes = [reg(8) for _ in range(rows)]
    cap_lows = [Signal(bool(0)) for _ in range(rows)]
    pad_byte = reg(8)  # padding: 0, or for max pooling the smallest value, so that it never wins

    @always_comb
    def padding_value():
        if pool_op and pool_max and s0_signed:
            pad_byte.next = 0x80
        else:
            pad_byte.next = 0

    insts.append(padding_value)
    for i in range(rows):
        insts.append(capture_byte(ar_data(8 * i + 8, 8 * i), flag_rd(lb * i + lb, lb * i), cap_lo, cap_hi,
                                  cap_row_ok, pad_byte, levels, s0_signed, insens_hi, cap_bytes[i], cap_lows[i], i))
    masked = ConcatSignal(*reversed(cap_bytes))
    lows = ConcatSignal(*reversed(cap_lows))

    @always_comb
    def capture_mask():
        cap_data.next = masked
        cap_low.next = lows

    fill_at, flag_at = Signal(modbv(0)[abw:]), Signal(modbv(0)[abw:])

    @always_comb
    def fill_address():
        fill_at.next = fl_row + (fl_r << rb)
        flag_at.next = fl_frow + (fl_r << rb)

    @always_comb
    def fill_port():
        if state == st_t.PRED and not pr_finish:
            ar_addr.next = pr_addr
            flag_ra.next = flag_at
        elif sp_issue:
            ar_addr.next = sp_row[abw:]
            flag_ra.next = sp_frow[abw:]
        else:
            ar_addr.next = fill_at
            flag_ra.next = flag_at

    insts += [read_column, fill_capture, capture_mask, fill_address, fill_port]

    # ---- the tap sequencer ---------------------------------------------------------------------------
    next_u = reg(3)
    more_units = Signal(bool(0))

    first_u = reg(3)
    first_found = Signal(bool(0))

    @always_comb
    def first_unit():
        n = 0
        found = False
        for t in range(BLOCK):
            if not found and work[t]:
                n = t
                found = True
        first_u.next = n
        first_found.next = found

    @always_comb
    def unit_choice():
        # the unit processed this cycle: the current one, or at a tap's start the first with work
        if split:
            eff_u.next = 0
            any_unit.next = c_busy
        elif pool_op:
            eff_u.next = u_cur
            any_unit.next = c_busy
        elif tap_start:
            eff_u.next = first_u
            any_unit.next = first_found and c_busy
        else:
            eff_u.next = u_cur
            any_unit.next = work[u_cur] and c_busy

    @always_comb
    def following_unit():
        n = 0
        found = False
        for t in range(BLOCK):
            if not found and t > eff_u and work[t]:
                n = t
                found = True
        next_u.next = n
        more_units.next = found

    @always_comb
    def sdp_marks():
        sdp_step.next = sdp and any_unit

    # the unit goes on while some lane has a step left; a lane that finished early waits (a stall cycle)
    lanes_n = ConcatSignal(*reversed(lane_n))
    more_steps, lagging = Signal(bool(0)), Signal(bool(0))  # a lane has a step after this one; one is done
    step_mask = (1 << STEP_BITS) - 1

    @always_comb
    def lane_progress():
        more = False
        slow = False
        working = False
        for j in range(rows):
            n = int((lanes_n >> (STEP_BITS * j)) & step_mask)
            if s_cur + 1 < n:
                more = True
            if s_cur < n:
                working = True
            if j < ci_lanes and n <= s_cur:
                slow = True
        more_steps.next = more
        lagging.next = slow and working  # a split chunk runs on after its slowest lane: not a stall

    insts += [first_unit, unit_choice, following_unit, sdp_marks, lane_progress]

    # ---- weight address: the word of the tap computed in the next cycle -----------------------------
    # the fill item's first weight word, and that of its (group, column tile): counted, not multiplied
    fi_word, fi_tile = reg(34), reg(34)

    tap_end = Signal(bool(0))
    w_next = Signal(modbv(0)[wmw:])

    @always_comb
    def tap_logic():
        # the current tap ends this cycle: no unit with work, or the last step of the last unit with work
        finish = True
        if split:
            finish = s_cur + 1 >= words
        elif pool_op:
            finish = u_cur + 1 >= ci_nch
        elif any_unit:
            if more_steps or more_units:
                finish = False
        tap_end.next = c_busy and finish
        c_done_now.next = (not c_busy) or (finish and tap_b + 1 >= kw)
        f_done_now.next = not fl_busy and cap_hit == 0  # no window still to land

    @always_comb
    def weight_next():
        if sp_issue:
            w_next.next = sp_word
        elif split:
            if fl_busy:
                w_next.next = w_tap + 1
            else:
                w_next.next = w_tap
        elif phase_end:
            w_next.next = fi_word
        elif tap_end:
            w_next.next = w_tap + 1
        else:
            w_next.next = w_tap

    @always_comb
    def weight_port():
        wa_addr.next = w_next

    insts += [tap_logic, weight_next, weight_port]

    @always_comb
    def phase_logic():
        drain_free.next = (not dr_busy) or (dr_t_valid[pipe - 1] and dr_t_last[pipe - 1])
        ok = state == st_t.RUN and c_done_now and f_done_now
        if ci_valid and ci_last and not drain_free:
            ok = False
        phase_end.next = ok
        start_drain.next = ok and ci_valid and ci_last
        take_b.next = ok
        take_own.next = ok and split
        shift_a.next = c_busy and tap_end and tap_b + 1 < kw
        pe_reset.next = ok and fi_valid and fi_a == 0 and fi_m == 0

    insts.append(phase_logic)

    # ---- next fill item and its fill parameters -------------------------------------------------------
    nx_gi, nx_ct, nx_oy, nx_xt, nx_a, nx_m = reg(16), reg(16), reg(16), reg(16), reg(8), reg(16)
    nx_valid = Signal(bool(0))
    nx_word, nx_tile = reg(34), reg(34)
    nx_nch, nx_reads = reg(5), reg(3)
    nx_row, nx_x0, nx_frow = reg(34, True), reg(18, True), reg(34, True)
    nx_row_ok = Signal(bool(0))

    @always_comb
    def next_item():
        # order: group, column tile, output row, x tile | kernel row, block
        gi = int(fi_gi)
        ct = int(fi_ct)
        oy = int(fi_oy)
        xt = int(fi_xt)
        a = int(fi_a)
        m = int(fi_m)
        valid = bool(fi_valid)
        word = int(fi_word) + int(item_words)
        tile = int(fi_tile)
        m += 1
        if m >= blocks:
            m = 0
            a += 1
            if a >= kh:
                a = 0
                word = tile
                xt += 1
                if xt >= xtiles:
                    xt = 0
                    oy += 1
                    if oy >= oh:
                        oy = 0
                        ct += 1
                        tile = tile + int(tile_words)
                        word = tile
                        if ct >= col_tiles:
                            ct = 0
                            gi += 1
                            if gi >= groups:
                                valid = False
        nx_gi.next = gi
        nx_ct.next = ct
        nx_oy.next = oy
        nx_xt.next = xt
        nx_a.next = a
        nx_m.next = m
        nx_valid.next = valid
        nx_word.next = word
        nx_tile.next = tile

    nx_lanes = reg(rb + 1)

    @always_comb
    def next_fill():
        n = int(cin_g) - (int(nx_m) << bb)
        if pool_op:
            n = int(channels) - (int(nx_gi) << bb)
        if n > BLOCK:
            n = BLOCK
        lanes = int(ow) - (int(nx_xt) << rb)
        if lanes > rows:
            lanes = rows
        nx_reads.next = (int(sw) * (lanes - 1) + int(kw) + rows - 1) >> rb
        if split:
            n = 1
            lanes = int(cin_g) - (int(nx_m) << rb)
            if lanes > rows:
                lanes = rows
            nx_reads.next = words
        nx_nch.next = n
        nx_lanes.next = lanes
        iy = int(nx_oy) * int(sh) + int(nx_a) - int(pt)
        x0 = (int(nx_xt) << rb) * int(sw) - int(pl)
        nx_x0.next = x0
        nx_row_ok.next = iy >= 0 and iy < ih
        c0 = int(nx_gi) * int(cin_g) + (int(nx_m) << int(m_shift))
        nx_row.next = int(src0) + c0 * int(plane_in) + iy * int(iw) + x0
        nx_frow.next = c0 * int(fplane) + (iy >> int(lrh)) * int(iw) + x0

    @always_comb
    def split_issue():
        # at the start of a split layer: item 0 (from the fields); at a phase end: the next fill item
        n = int(f_cin_g)
        if n > rows:
            n = rows
        if state == st_t.IDLE:
            sp_issue.next = start and f_split and not f_drq
            sp_row.next = f_src0
            sp_word.next = f_src1 >> wbb
            sp_frow.next = 0
            sp_lanes.next = n
        elif state == st_t.PRED:
            sp_issue.next = split and pr_finish
            sp_row.next = src0
            sp_word.next = fi_word
            sp_frow.next = 0
            n = int(cin_g)
            if n > rows:
                n = rows
            sp_lanes.next = n
        else:
            sp_issue.next = split and phase_end and fi_valid and nx_valid
            sp_row.next = nx_row
            sp_word.next = nx_word
            sp_frow.next = nx_frow
            sp_lanes.next = nx_lanes

    @always(clk.posedge)
    def split_landing():
        land_en.next = sp_issue or (split and fl_busy)
        if sp_issue:
            land_q.next = 0
        else:
            land_q.next = fl_r[qb:]

    insts += [next_item, next_fill, split_issue, split_landing]

    # ---- main control --------------------------------------------------------------------------------

    @always(clk.posedge)
    def control():
        if rst:
            state.next = st_t.IDLE
            fl_busy.next = 0
            c_busy.next = 0
            ci_valid.next = 0
            fi_valid.next = 0
        elif state == st_t.IDLE:
            if start:
                cg = int(f_cin_g)
                src0.next = f_src0
                dst.next = f_dst
                fi_word.next = f_src1 >> wbb
                w_tap.next = f_src1 >> wbb
                fi_tile.next = f_src1 >> wbb
                tile_words.next = int(f_kh) * int(f_blocks) * int(f_kw)
                split.next = f_split
                pbase.next = f_param
                cin_g.next = cg
                cout_g.next = f_cout_g
                groups.next = f_groups
                ih.next = f_ih
                iw.next = f_iw
                oh.next = f_oh
                ow.next = f_ow
                kh.next = f_kh
                kw.next = f_kw
                sh.next = f_sh
                if f_split:
                    sw.next = 1  # one input pixel: lane j reads byte j
                    blocks.next = (cg + rows - 1) >> rb
                    item_words.next = words
                    m_shift.next = rb
                else:
                    sw.next = f_sw
                    blocks.next = f_blocks
                    item_words.next = f_kw
                    m_shift.next = bb
                pt.next = f_pt
                pl.next = f_pl
                s0_signed.next = f_s0_signed
                zero_skip.next = f_zero_skip
                daq.next = f_daq
                levels.next = f_drq or f_daq
                sdp.next = f_sdp
                lg.next = f_lg
                keep.next = f_k
                insens_hi.next = f_insens_hi
                if f_daq:  # one plane for every channel, a level per input pixel
                    lrh.next = 0
                    fplane.next = 0
                else:
                    lrh.next = f_lrh
                    fplane.next = ((int(f_ih) + int(f_rh) - 1) >> int(f_lrh)) * int(f_iw)
                plane_in.next = f_ih * f_iw
                plane_out.next = f_oh * f_ow
                pool.next = f_aux == 1 and not f_pool
                pool_op.next = f_pool
                pool_max.next = f_aux == 0
                channels.next = f_cin
                if f_aux == 0:  # max: the lanes pass the value through (x * 1 >> 0) to the clamp
                    pool_mult.next = 1
                    pool_shift.next = 0
                else:
                    pool_mult.next = f_mult0.signed()
                    sh0 = int(f_shift0)
                    if sh0 > shift_sat:
                        sh0 = shift_sat
                    pool_shift.next = sh0
                out_signed.next = f_out_signed
                plane_pool.next = (f_oh >> 1) * (f_ow >> 1)
                row_pool.next = f_ow >> 1
                col_tiles.next = f_col_tiles
                xtiles.next = (int(f_ow) + rows - 1) >> rb
                if f_drq or f_daq:  # the level plane is written first; the fill starts as it is
                    state.next = st_t.PRED
                else:
                    state.next = st_t.RUN
                # phase 0 fills item 0 and computes nothing
                fi_gi.next = 0
                fi_ct.next = 0
                fi_oy.next = 0
                fi_xt.next = 0
                fi_a.next = 0
                fi_m.next = 0
                fi_valid.next = 1
                ci_valid.next = 0
                c_busy.next = 0
                n0 = cg
                if f_pool:  # groups of BLOCK channels (the last one partial), one "column" per channel
                    n0 = int(f_cin)
                    cin_g.next = BLOCK
                    cout_g.next = BLOCK
                    groups.next = (int(f_cin) + BLOCK - 1) >> bb
                    col_tiles.next = 1
                    blocks.next = 1
                if n0 > BLOCK:
                    n0 = BLOCK
                lanes0 = int(f_ow)
                if lanes0 > rows:
                    lanes0 = rows
                fl_busy.next = not (f_drq or f_daq)
                fl_t.next = 0
                if f_split:  # read 0 is issued in this cycle, or as the predictor finishes (split_issue)
                    fl_r.next = 1
                    fl_nch.next = 1
                    fl_reads.next = words
                else:
                    fl_r.next = 0
                    fl_nch.next = n0
                    fl_reads.next = (int(f_sw) * (lanes0 - 1) + int(f_kw) + rows - 1) >> rb
                fl_x0.next = -int(f_pl)
                fl_row_ok.next = int(f_pt) == 0
                fl_row.next = int(f_src0) - int(f_pt) * int(f_iw) - int(f_pl)
                fl_frow.next = -int(f_pl)  # row 0's flags (a padding row reads none)
        elif state == st_t.PRED:
            if pr_finish:
                state.next = st_t.RUN
                fl_busy.next = 1
        elif state == st_t.RUN:
            # fill unit: one window read a cycle
            if fl_busy:
                if fl_r + 1 < fl_reads:
                    fl_r.next = fl_r + 1
                else:
                    fl_r.next = 0
                    if fl_t + 1 < fl_nch:
                        fl_t.next = fl_t + 1
                        fl_row.next = fl_row + plane_in
                        fl_frow.next = fl_frow + fplane
                    else:
                        fl_busy.next = 0
            # tap sequencer
            if c_busy and split:
                if tap_end:
                    c_busy.next = 0
                    s_cur.next = 0
                else:
                    s_cur.next = s_cur + 1
            elif c_busy and pool_op:  # a cycle per channel of the block, per tap
                if tap_end:
                    u_cur.next = 0
                    if tap_b + 1 < kw:
                        tap_b.next = tap_b + 1
                    else:
                        c_busy.next = 0
                else:
                    u_cur.next = u_cur + 1
            elif c_busy:
                if tap_end:
                    tap_start.next = 1
                    s_cur.next = 0
                    if tap_b + 1 < kw:
                        tap_b.next = tap_b + 1
                    else:
                        c_busy.next = 0
                elif more_steps:
                    s_cur.next = s_cur + 1
                    u_cur.next = eff_u
                    tap_start.next = 0
                else:
                    s_cur.next = 0
                    u_cur.next = next_u
                    tap_start.next = 0
            if split:
                w_tap.next = w_next
            elif tap_end:
                w_tap.next = w_tap + 1
            if phase_end:
                if not split:
                    w_tap.next = fi_word
                # the fill item becomes the compute item
                ci_valid.next = fi_valid
                ci_last.next = fi_a + 1 == kh and fi_m + 1 == blocks
                ci_first.next = fi_a == 0 and fi_m == 0
                ci_gi.next = fi_gi
                ci_ct.next = fi_ct
                ci_oy.next = fi_oy
                ci_xt.next = fi_xt
                n = int(cin_g) - (int(fi_m) << bb)
                if pool_op:
                    n = int(channels) - (int(fi_gi) << bb)
                if n > BLOCK:
                    n = BLOCK
                lanes = int(ow) - (int(fi_xt) << rb)
                if split:
                    n = 1
                    lanes = int(cin_g) - (int(fi_m) << rb)
                ci_nch.next = n
                if lanes > rows:
                    lanes = rows
                ci_lanes.next = lanes
                c_busy.next = fi_valid
                tap_b.next = 0
                tap_start.next = 1
                s_cur.next = 0
                u_cur.next = 0
                # the next item's fill starts
                fi_gi.next = nx_gi
                fi_ct.next = nx_ct
                fi_oy.next = nx_oy
                fi_xt.next = nx_xt
                fi_a.next = nx_a
                fi_m.next = nx_m
                fi_word.next = nx_word
                fi_tile.next = nx_tile
                fi_valid.next = fi_valid and nx_valid
                if fi_valid and nx_valid:
                    fl_busy.next = 1
                    fl_t.next = 0
                    if split:  # read 0 is issued in this cycle (split_issue)
                        fl_r.next = 1
                    else:
                        fl_r.next = 0
                    fl_nch.next = nx_nch
                    fl_reads.next = nx_reads
                    fl_x0.next = nx_x0
                    fl_row_ok.next = nx_row_ok
                    fl_row.next = nx_row
                    fl_frow.next = nx_frow
                if not fi_valid:
                    state.next = st_t.TAIL
        elif state == st_t.TAIL:
            if last_now:
                state.next = st_t.IDLE

    insts.append(control)

    # ---- drain ---------------------------------------------------------------------------------------
    param_at = Signal(modbv(0)[wmw:])

    # the split drain adds a column's lanes in a tree of `reduce` stages: its entries wait as long
    di_valid = [Signal(bool(0)) for _ in range(reduce)]
    di_last = [Signal(bool(0)) for _ in range(reduce)]
    di_addr = [reg(abw) for _ in range(reduce)]
    di_k = [reg(16) for _ in range(reduce)]
    issue_now, issue_last = Signal(bool(0)), Signal(bool(0))
    eff_valid, eff_last = Signal(bool(0)), Signal(bool(0))
    eff_addr, eff_k = reg(abw), reg(16)

    @always_comb
    def drain_issue():
        issue_now.next = dr_busy and dr_k < dr_ncols
        issue_last.next = dr_busy and dr_k + 1 == dr_ncols
        if split:
            eff_valid.next = di_valid[reduce - 1]
            eff_last.next = di_last[reduce - 1]
            eff_addr.next = di_addr[reduce - 1]
            eff_k.next = di_k[reduce - 1]
        else:
            eff_valid.next = issue_now
            eff_last.next = issue_last
            eff_addr.next = dr_addr[abw:]
            eff_k.next = dr_k

    @always(clk.posedge)
    def drain_delay():
        di_valid[0].next = issue_now
        di_last[0].next = issue_last
        di_addr[0].next = dr_addr[abw:]
        di_k[0].next = dr_k
        for i in range(1, reduce):
            di_valid[i].next = di_valid[i - 1]
            di_last[i].next = di_last[i - 1]
            di_addr[i].next = di_addr[i - 1]
            di_k[i].next = di_k[i - 1]

    insts += [drain_issue, drain_delay]

    @always_comb
    def drain_comb():
        param_at.next = (pbase + (dr_co + eff_k) * PARAM_BYTES) >> wbb
        last_now.next = state == st_t.TAIL and dr_t_valid[pipe - 1] and dr_t_last[pipe - 1]
        last.next = state == st_t.TAIL and dr_t_valid[pipe - 1] and dr_t_last[pipe - 1]
        rec = intbv(0)[8 * wbytes:]
        rec[:] = wb_data >> (8 * PARAM_BYTES * int(dr_rec))
        s = int(rec[72:64])
        if s > shift_sat:
            s = shift_sat
        if pool_op:
            d_bias.next = 0
            d_mult.next = pool_mult
            s = int(pool_shift)
        else:
            d_bias.next = rec[32:0].signed()
            d_mult.next = rec[48:32]
        d_shift.next = s
        aw_en.next = dr_t_valid[pipe - 1] and dr_write
        aw_addr.next = dr_t_addr[pipe - 1]
        aw_mask.next = dr_t_mask[pipe - 1]

    @always_comb
    def param_port():
        wb_addr.next = param_at

    @always(clk.posedge)
    def drain_seq():
        if rst:
            dr_busy.next = 0
            for i in range(pipe):
                dr_t_valid[i].next = 0
        else:
            issue = dr_busy and dr_k < dr_ncols
            dr_t_valid[0].next = eff_valid
            dr_t_last[0].next = eff_valid and eff_last
            dr_t_addr[0].next = eff_addr
            dr_t_mask[0].next = dr_mask
            dr_t_k[0].next = eff_k
            dr_rec.next = ((pbase >> 4) + dr_co + eff_k) & (records - 1)
            for i in range(1, pipe):
                dr_t_valid[i].next = dr_t_valid[i - 1]
                dr_t_last[i].next = dr_t_last[i - 1]
                dr_t_addr[i].next = dr_t_addr[i - 1]
                dr_t_mask[i].next = dr_t_mask[i - 1]
                dr_t_k[i].next = dr_t_k[i - 1]
            if issue:
                dr_k.next = dr_k + 1
                dr_addr.next = dr_addr + dr_step
            if dr_busy and dr_t_valid[pipe - 1] and dr_t_last[pipe - 1]:
                dr_busy.next = 0
            if start_drain:
                dr_busy.next = 1
                dr_k.next = 0
                n = int(cout_g) - int(ci_ct) * cols
                if n > cols:
                    n = cols
                if pool_op:  # a POOL pass drains its block of channels, whatever the array's width
                    n = int(channels) - (int(ci_gi) << bb)
                    if n > BLOCK:
                        n = BLOCK
                dr_ncols.next = n
                co = int(ci_gi) * int(cout_g) + int(ci_ct) * cols
                dr_co.next = co
                dr_xt.next = ci_xt
                if pool:  # pooled row oy // 2, pooled pixels of this x tile's lane pairs
                    dr_addr.next = (int(dst) + co * int(plane_pool) + (int(ci_oy) >> 1) * int(row_pool)
                                    + (int(ci_xt) << (rb - 1)))
                    dr_step.next = plane_pool
                    dr_mask.next = (1 << (int(ci_lanes) >> 1)) - 1
                    dr_store.next = not ci_oy[0] and ci_oy + 1 < oh
                    dr_write.next = ci_oy[0]
                else:
                    dr_addr.next = int(dst) + co * int(plane_out) + int(ci_oy) * int(ow) + (int(ci_xt) << rb)
                    dr_step.next = plane_out
                    dr_store.next = 0
                    dr_write.next = 1
                    if split:
                        dr_mask.next = 1  # one output pixel per channel: the adder tree's sum, in lane 0
                    else:
                        dr_mask.next = (1 << int(ci_lanes)) - 1

    insts += [drain_comb, param_port, drain_seq]

    # ---- fused 2x2 max pooling: lane pairs, then the kept even row ------------------------------------
    half = rows // 2
    tb = log2(POOL_ROW_TILES)
    pair_max = [reg(8) for _ in range(half)]
    pooled = [reg(8) for _ in range(half)]
    kept = Signal(intbv(0)[8 * half:])
    row_we = Signal(bool(0))
    row_wa, row_ra = reg(log2(cols) + tb), reg(log2(cols) + tb)
    pairs = ConcatSignal(*reversed(pair_max))
    insts.append(ram(clk, row_we, row_wa, pairs, row_ra, kept, cols * POOL_ROW_TILES))
    for i in range(half):
        insts.append(pool_pair(drain["y"], kept, out_signed, pair_max[i], pooled[i], i))
    pooled_word = ConcatSignal(intbv(0)[8 * (rows - half):], *reversed(pooled))

    @always_comb
    def pool_row():
        row_we.next = dr_t_valid[pipe - 1] and dr_store
        row_wa.next = (dr_t_k[pipe - 1] << tb) + dr_xt
        row_ra.next = (dr_t_k[pipe - 2] << tb) + dr_xt

    lanes_y, write_word = drain["y"], drain["data"]

    @always_comb
    def write_data():
        if pool:
            write_word.next = pooled_word
        else:
            write_word.next = lanes_y

    insts += [pool_row, write_data]

    picks = [acc_signal() for _ in range(rows)]
    for j in range(rows):
        flat = Signal(intbv(0)[PE_ACC_BITS * cols:])  # a plain signal: a template cannot read a ConcatSignal
        insts.append(wire(pe_cols[j], flat))
        insts.append(column_pick(clk, flat, dr_k, picks[j], cols))
    tree_sum = acc_signal()
    insts.append(adder_tree(clk, picks, tree_sum))

    # POOL: per lane, a comparator/adder over its BLOCK slot accumulators, one slot (channel) a cycle
    pool_upd, pool_first, pool_k = Signal(bool(0)), Signal(bool(0)), reg(bb)
    pool_bank, drain_bank = Signal(bool(0)), Signal(bool(0))
    pool_sums = [signed(POOL_ACC_BITS) for _ in range(rows)]

    @always_comb
    def pool_control():
        pool_upd.next = pool_op and c_busy
        pool_first.next = ci_first and tap_b == 0
        pool_k.next = dr_k[bb:]

    @always(clk.posedge)
    def pool_banks():
        # a pass accumulates in one bank; its drain reads it while the next pass uses the other
        if start_drain:
            drain_bank.next = pool_bank
        if pe_reset:
            pool_bank.next = not pool_bank

    insts += [pool_control, pool_banks]
    for j in range(rows):
        vals = ConcatSignal(*reversed(lane_vals[j]))
        insts.append(pool_lane(clk, vals, eff_u, s0_signed, pool_max, pool_upd, pool_first, pool_bank, drain_bank,
                               pool_k, pool_sums[j]))
        insts.append(lane_sum(split, pool_op, tree_sum if j == 0 else picks[j], picks[j], pool_sums[j], acc_sel[j]))

    @always(clk.posedge)
    def stage_terms():
        # the shift follows the sums into the lanes' third stage
        shift_2.next = d_shift
        shift_3.next = shift_2

    insts.append(stage_terms)

    # ---- counters: compute cycles; and, on a group's first column tile, lane steps and lock-step stalls ----
    lanes_en = ConcatSignal(*reversed(lane_en))
    k_compute, k_stall, k_steps = reg(32), reg(32), reg(32)
    cycle_steps, cycle_stall = reg(rb + 1), Signal(bool(0))

    @always_comb
    def count_cycle():
        # stall_cycles = sum over units of (slowest - fastest lane) = the unit's cycles with a lane done
        total = 0
        for j in range(rows):
            if (lanes_en >> j) & 1:
                total = total + 1
        cycle_steps.next = total
        cycle_stall.next = any_unit and lagging

    @always(clk.posedge)
    def count():
        if start and state == st_t.IDLE:
            k_compute.next = 0
            k_stall.next = 0
            k_steps.next = 0
        elif state == st_t.RUN and c_busy:
            k_compute.next = k_compute + 1
            if ci_ct == 0:
                k_steps.next = k_steps + cycle_steps
                k_stall.next = k_stall + cycle_stall

    @always_comb
    def counters_out():
        if pool_op:  # POOL reports busy cycles only
            n_compute.next = 0
            n_stall.next = 0
            n_steps.next = 0
        else:
            n_compute.next = k_compute
            n_stall.next = k_stall * col_tiles
            n_steps.next = k_steps * cout_g

    insts += [count_cycle, count, counters_out]
    return insts


@block
def wire(source, sink):
    @always_comb
    def copy():
        sink.next = source

    return copy


@block
def column_pick(clk, column_accs, k, out, cols: int):
    """The drain's accumulator of column k, registered (it meets the parameter record a cycle later)."""

    @always(clk.posedge)
    def pick():
        v = intbv(0)[PE_ACC_BITS * cols:]
        v[:] = column_accs >> (PE_ACC_BITS * int(k))
        out.next = v[PE_ACC_BITS:0].signed()

    out.driven = "reg"
    column_accs.read = k.read = True
    return pick


# a word multiplexer (an indexed part-select), not the barrel shifter the shift above converts to
_ACC, _TOP = str(PE_ACC_BITS), str(PE_ACC_BITS - 1)
column_pick.verilog_code = "always @(posedge $clk) $out <= $column_accs[$k * " + _ACC + " +: " + _ACC + "];"
column_pick.vhdl_code = ("process ($clk) begin if rising_edge($clk) then $out <= signed($column_accs(to_integer($k) * "
                         + _ACC + " + " + _TOP + " downto to_integer($k) * " + _ACC + ")); end if; end process;")


@block
def capture_byte(byte, level, lo, hi, row_ok, pad, levels, signed_in, use_hi, out, low, i: int):
    """Byte i of a fill window as the line takes it: `pad` where it lies outside the input row (outside
    [lo, hi)), else the pixel; in a DRQ or DAQ layer (`levels`) a pixel at level 1 becomes its 4-bit value
    (`numerics.insensitive`: the high part rounded with `use_hi`, else the magnitude saturated to 15) and
    `low` marks it one step; one at level 0 (cropped) becomes CROP_CODE, no step. Padding is one step in
    DRQ and DAQ, two in int8, as the contract's `pad_cost` says."""
    _, hi_signed = nx.part_range(True)
    _, hi_unsigned = nx.part_range(False)
    low_max, half, part_bits, scale = nx.LOW_MAX, nx.PART_SCALE // 2, nx.PART_BITS, nx.PART_SCALE
    cropped, four_bit = int(Level.CROPPED), int(Level.FOUR_BIT)

    @always_comb
    def take():
        q = 0
        v = int(byte)
        if signed_in and v >= 128:
            v = v - 256
        if not (row_ok and i >= lo and i < hi):
            out.next = pad
            low.next = levels
        elif levels and level == cropped:
            out.next = CROP_CODE
            low.next = True
        elif levels and level == four_bit:
            q = v
            if use_hi:  # the rounded high part; it never falls below the part's range
                q = (v + half) >> part_bits
                if signed_in and q > hi_signed:
                    q = hi_signed
                if not signed_in and q > hi_unsigned:
                    q = hi_unsigned
                q = q * scale
            elif q > low_max:
                q = low_max
            elif q < -low_max:
                q = -low_max
            if q < 0:
                q = q + 256
            out.next = q
            low.next = True
        else:
            out.next = byte
            low.next = False

    return take


@block
def slot_weight(column, slot, w):
    """A PE's weight: the byte of its lane's line slot among its column's BLOCK bytes of the weight word."""

    @always_comb
    def select():
        v = int((column >> (8 * int(slot))) & 0xFF)
        if v >= 128:
            v = v - 256
        w.next = v

    return select


@block
def lane_value(line, stride, value, j: int):
    """Lane j's unit (a byte, or a byte's `low` bit) of a line: position stride * j (the line shifts one unit
    per tap), stride 1..MAX_STRIDE."""
    unit = len(value)

    def at_position(p: int):  # a bit is taken by index: the converter mangles one-bit slices
        return line(p) if unit == 1 else line(unit * p + unit, unit * p)

    if j == 0:
        first = at_position(0)

        @always_comb
        def at_zero():
            value.next = first

        return at_zero
    at = ConcatSignal(*reversed([at_position(s * j) for s in range(1, MAX_STRIDE + 1)]))
    mask = (1 << unit) - 1

    @always_comb
    def pick():
        value.next = (at >> (unit * (int(stride) - 1))) & mask

    return pick


@block
def steps_of_lane(value, low, signed, zero_skip, lanes, nch, steps, j: int, t: int):
    """Steps of lane j in unit t: 2 parts (1 for a `low` byte, 0 for a cropped one), or with zero-part
    skipping its non-zero parts; 0 for lanes past the row's end and slots past the block's channels."""

    @always_comb
    def count():
        v = int(value)
        hi = v >> 4
        if signed and v >= 128:
            hi = (v - 256) >> 4
        lo = v & 15
        n = 2
        if low:
            n = 1
            if (value[CROP_TOP] != value[CROP_TOP - 1] and value[CROP_MARK]) or (zero_skip and v == 0):
                n = 0
        elif zero_skip:
            n = int(hi != 0) + int(lo != 0)
        if j >= lanes or t >= nch:
            n = 0
        steps.next = n

    return count


@block
def slot_has_work(steps, busy):
    """Some lane has a step in this slot (steps are 0, 1 or 2: an OR of their bits)."""
    bits = ConcatSignal(*reversed([n(0) for n in steps] + [n(1) for n in steps]))

    @always_comb
    def any_lane():
        busy.next = bits != 0

    return any_lane


@block
def sdp_pick(clk, values, signed_in, unit_slots, k, zero_skip, lanes, s, step, slot, part, hi_out, n_out, j: int):
    """SDP's term-part selector of lane j. The unit is the line slots set in `unit_slots` (slots u*g ..
    u*g+g-1 within the block's channels); at step s the lane takes the most important part of the unit it
    has not taken yet (importance 16|hi| for a high part, |lo| for a low one; ties to high parts, then to
    the lower slot: the order of `numerics.sdp_keep`), so its first k steps multiply exactly the k parts
    SDP keeps. Its steps in the unit: k, or with zero-part skipping min(k, its non-zero parts) (the kept
    zero parts add nothing); none past the row's end or in a unit past the block's channels. `step`: the
    unit computes this cycle, so the part is marked taken."""
    taken = Signal(intbv(0)[PARTS:])
    best_p = Signal(intbv(0)[log2(PARTS):])
    found = Signal(bool(0))
    part_mask = nx.PART_SCALE - 1
    slot_bits = log2(BLOCK)

    @always_comb
    def select():
        # narrow locals: a MyHDL integer is 32 bits, and a chain of 16 compares and muxes keeps every bit
        best = intbv(0)[KEY_BITS:]
        at = intbv(0)[len(best_p):]
        nonzero = intbv(0)[STEP_BITS:]
        got = False
        for p in range(PARTS):
            v = int((values >> (8 * (p % BLOCK))) & 0xFF)
            key = v & part_mask
            if p < BLOCK:  # 16 + |hi| (a high part outranks every low part), or 0 for a zero high part
                h = v >> nx.PART_BITS
                if signed_in and v >= 128:
                    h = ((h ^ part_mask) + 1) & part_mask  # |hi - 16|: 1..8
                key = 0
                if h != 0:
                    key = h | nx.PART_SCALE
            in_unit = unit_slots[p % BLOCK]
            if in_unit and key != 0:
                nonzero[:] = nonzero + 1
            if in_unit and (s == 0 or not taken[p]) and (not got or key > best):
                best[:] = key
                at[:] = p
                got = True
        best_p.next = at
        found.next = got
        n = int(k)
        if zero_skip and nonzero < n:
            n = int(nonzero)
        if j >= lanes or unit_slots == 0:
            n = 0
        n_out.next = n

    @always_comb
    def chosen():
        # a multiplexer written as compares with constants (a variable shift would be a barrel shifter)
        q = 0
        v = 0
        for p in range(PARTS):
            if found and best_p == p:
                v = int((values >> (8 * (p % BLOCK))) & 0xFF)
                if p < BLOCK:
                    if signed_in and v >= 128:
                        v = v - 256
                    q = v >> nx.PART_BITS
                else:
                    q = v & part_mask
        slot.next = best_p[slot_bits:]
        part.next = q
        hi_out.next = best_p < BLOCK

    @always(clk.posedge)
    def mark():
        if step:
            if s == 0:
                taken.next = 0
            for p in range(PARTS):
                if found and best_p == p:
                    taken.next[p] = 1

    return select, chosen, mark


@block
def part_of_lane(vals, lows, steps, u, s, signed_in, use_hi, zero_skip, active, sdp, pick, slot, mag, neg, hi_out,
                 en, n_out):
    """The term part lane j multiplies this cycle and its slot: step s of unit u (high part first; with
    zero-part skipping the first non-zero part first), as a magnitude and sign; magnitude 0 when the lane
    idles. A `low` byte is one part: its high part (`use_hi`, the value is 16 * part) or the value itself
    (|v| <= 15). In SDP the part, slot and steps are `sdp_pick`'s."""
    low_bits = ConcatSignal(*reversed(lows))
    p_slot, p_part, p_hi, p_n = pick["slot"], pick["part"], pick["hi"], pick["n"]
    stps = ConcatSignal(*reversed(steps))

    @always_comb
    def choose():
        v = int((vals >> (8 * int(u))) & 0xFF)
        n = int((stps >> (2 * int(u))) & 3)
        x = v
        if signed_in and v >= 128:
            x = v - 256
        h = x >> 4
        lo = v & 15
        take_hi = s == 0
        if zero_skip and h == 0:
            take_hi = False
        part = lo
        if (low_bits >> int(u)) & 1:
            take_hi = use_hi == 1
            part = x
            if use_hi:
                part = h
        elif take_hi:
            part = h
        t = int(u)
        if sdp:
            take_hi = p_hi == 1
            part = int(p_part)
            n = int(p_n)
            t = int(p_slot)
        on = active and s < n
        if not on:
            part = 0
        if part < 0:
            mag.next = -part
            neg.next = True
        else:
            mag.next = part
            neg.next = False
        hi_out.next = take_hi
        en.next = on
        n_out.next = n
        slot.next = t

    return choose


@block
def line_slot(clk, a, take_b, shift_a, cap_hit, cap_data, t: int, unit: int = 8):
    """Line slot t: set B receives the fill's windows (LINE_WINDOWS of them); A takes B at a phase end and
    shifts a unit (a byte, or its `low` bit) per tap."""
    width = len(cap_data)
    windows = [Signal(intbv(0)[width:]) for _ in range(LINE_WINDOWS)]
    insts = [line_window(clk, cap_hit(t * LINE_WINDOWS + r), cap_data, windows[r]) for r in range(LINE_WINDOWS)]
    whole = ConcatSignal(*reversed(windows))

    @always(clk.posedge)
    def update():
        if take_b:
            a.next = whole
        elif shift_a:
            a.next = a >> unit

    return insts, update


@block
def line_window(clk, hit, cap_data, window):
    """A window of a line slot in set B (`hit`: the fill lands in it this cycle)."""

    @always(clk.posedge)
    def write():
        if hit:
            window.next = cap_data

    return write


@block
def own_weight(clk, byte, land_en, land_q, take, own, q: int, last: bool):
    """A PE's own weight for the reduction split, from word q of its chunk. The last word lands in the cycle
    the phase ends and goes straight in; earlier words wait in a shadow register until then."""
    if last:

        @always(clk.posedge)
        def direct():
            if take:
                own.next = byte.signed()

        return direct
    shadow = signed(WEIGHT_BITS)

    @always(clk.posedge)
    def shadowed():
        if land_en and land_q == q:
            shadow.next = byte.signed()
        if take:
            own.next = shadow

    return shadowed


@block
def adder_tree(clk, values, total):
    """The sum of `values` (a power of two of them) through log2(len) registered stages of pairwise adds.
    The compiler's accumulator bound covers every partial sum, so no stage overflows."""
    insts = []
    level = list(values)
    while len(level) > 1:
        sums = [acc_signal() for _ in range(len(level) // 2)]
        insts += [pair_sum(clk, level[2 * i], level[2 * i + 1], sums[i]) for i in range(len(sums))]
        level = sums
    insts.append(wire(level[0], total))
    return insts


@block
def pair_sum(clk, a, b, out):
    @always(clk.posedge)
    def add():
        out.next = a + b

    return add


@block
def pool_pair(y, kept, signed_out, pair, out, i: int):
    """Pooled pixel i of a drained row: the larger of lanes 2i and 2i+1 (`pair`, kept for an even row),
    and the larger of that and the kept even row's (`out`, written for an odd row). Signed bytes compare
    with their top bit flipped."""
    flip = 0x80

    @always_comb
    def larger():
        a = int(y[16 * i + 8:16 * i])
        b = int(y[16 * i + 16:16 * i + 8])
        c = int(kept[8 * i + 8:8 * i])
        if signed_out:
            a = a ^ flip
            b = b ^ flip
            c = c ^ flip
        m = a
        if b > m:
            m = b
        p = m
        if signed_out:
            p = p ^ flip
        pair.next = p
        if c > m:
            m = c
        if signed_out:
            m = m ^ flip
        out.next = m

    return larger


@block
def lane_sum(split, pool_op, split_sum, pick, pool_sum, out):
    """The sum a requantizer lane takes: the PE column's, the split's adder tree (lane 0) or the POOL's."""

    @always_comb
    def choose():
        if pool_op:
            out.next = pool_sum
        elif split:
            out.next = split_sum
        else:
            out.next = pick

    return choose


@block
def pool_lane(clk, vals, u, signed_in, is_max, active, first, bank, drain_bank, k, out):
    """POOL for one lane: 2 x BLOCK accumulators in a small RAM (distributed RAM after synthesis), a bank
    per pass so that the drain reads one pass's results (slot k of `drain_bank`, registered into `out`)
    while the next pass accumulates in the other. Slot u of `bank` takes this cycle's value: its max, or its
    sum; the first tap of a pass's first item writes the value itself, so no bank is ever cleared."""
    mem = [signed(POOL_ACC_BITS) for _ in range(2 * BLOCK)]
    held, new = signed(POOL_ACC_BITS), signed(POOL_ACC_BITS)
    wi, ri = Signal(intbv(0)[4:]), Signal(intbv(0)[4:])
    assert BLOCK == 8, "a bank is addressed by a 3-bit slot"

    @always_comb
    def index():
        wi.next = concat(bank, u[3:])
        ri.next = concat(drain_bank, k[3:])

    @always_comb
    def slot_value():
        held.next = mem[wi]

    @always_comb
    def combine():
        v = int((vals >> (8 * int(u))) & 0xFF)
        if signed_in and v >= 128:
            v = v - 256
        if first:
            new.next = v
        elif is_max:  # a byte: the compare needs no more bits than one
            if v > held[BYTE_BITS:].signed():
                new.next = v
            else:
                new.next = held
        else:
            new.next = held + v

    @always(clk.posedge)
    def update():
        if active:
            mem[wi].next = new
        out.next = mem[ri]

    return index, slot_value, combine, update
