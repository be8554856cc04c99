"""The convolution engine: line registers, the nibble-serial PE array, the tap sequencer and the drain.

It implements `dynq.contract.timing` for the unpacked mapping (one pass at a time on the array): passes of
one output row and `rows` lanes, items of (kernel row, block of BLOCK input channels). While the PEs work on
the item in the active line registers (A), the fill unit reads the next item's lines into the shadow set (B)
one arena window a cycle; at the end of a phase A takes B. Per tap the sequencer visits the block's units
whose slowest lane has steps to do (zero-part skipping skips whole units in no cycle), one term part per
lane per cycle; a tap with nothing to do still takes its cycle. Each PE has two accumulator banks: a pass
accumulates into one while the drain requantizes the other, one output channel a cycle.
"""

from __future__ import annotations

from myhdl import ConcatSignal, Signal, always, always_comb, block, enum, intbv, modbv

from dynq.contract import numerics as nx
from dynq.contract import timing
from dynq.contract.array import BLOCK, LINE_WINDOWS
from dynq.contract.layout import PARAM_BYTES, word_bytes
from dynq.hdl.lanes import ACC_BITS, SHIFT_SAT, signed_acc

PE_ACC_BITS = nx.ACC_BITS
"""The PEs' accumulators: the compiler proves every layer's sums fit (`numerics.accumulator_bound`)."""
PART_BITS = nx.PART_BITS + 1
"""A term part as the PE multiplies it: signed, -16..15 (int8 high parts, low parts, DRQ's 4-bit values)."""
DRAIN_READ_LATENCY = 1
assert DRAIN_READ_LATENCY + 3 == timing.PIPE_CYCLES, "drain: parameter read + three requantizer stages"
assert timing.FILL_LATENCY == 1, "a fill's last window lands one cycle after its read"


def log2(n: int) -> int:
    assert n > 0 and n & (n - 1) == 0, f"{n} is not a power of two"
    return n.bit_length() - 1


def acc_signal() -> Signal:
    return Signal(intbv(0, min=-(1 << (PE_ACC_BITS - 1)), max=1 << (PE_ACC_BITS - 1)))


PE_MODULE = "dynq_pe"
"""The PE is its own module in the generated Verilog: one definition, `rows * cols` instances, so that
synthesis maps it once."""


@block
def pe(clk, en, clear, bank, part, hi, weight, drain_bank, result):
    """One PE: `acc[bank] += weight * part * (16 if hi else 1)` when `en`; `clear` starts the bank from it.
    `result` is the drain bank's accumulator. The product is shifts and adds (a 5-bit part): a PE needs no DSP."""
    acc0, acc1 = acc_signal(), acc_signal()

    @always(clk.posedge)
    def mac():
        w = int(weight)
        prod = 0
        if en:
            if part[0]:
                prod = prod + w
            if part[1]:
                prod = prod + w * 2
            if part[2]:
                prod = prod + w * 4
            if part[3]:
                prod = prod + w * 8
            if part[4]:
                prod = prod - w * 16
            if hi:
                prod = prod * 16
        if bank:
            if clear:
                acc1.next = prod
            else:
                acc1.next = acc1 + prod
        else:
            if clear:
                acc0.next = prod
            else:
                acc0.next = acc0 + prod

    @always_comb
    def read():
        if drain_bank:
            result.next = acc1
        else:
            result.next = acc0

    return mac, read


@block
def pe_instance(clk, en, clear, bank, part, hi, weight, drain_bank, result):
    """An instance of the PE module (`pe`, converted once as PE_MODULE)."""

    @always(clk.posedge)
    def stand_in():  # the converter uses the Verilog and VHDL templates below, never this body
        result.next = result

    result.driven = "wire"
    for s in (clk, en, clear, bank, part, hi, weight, drain_bank):
        s.read = True
    return stand_in


pe_instance.verilog_code = (
    PE_MODULE + " ${result}_pe (.clk($clk), .en($en), .clear($clear), .bank($bank), .part($part), .hi($hi), "
    ".weight($weight), .drain_bank($drain_bank), .result($result));")
pe_instance.vhdl_code = (
    "${result}_pe: entity work." + PE_MODULE + " port map (clk => $clk, en => $en, clear => $clear, bank => $bank, "
    "part => $part, hi => $hi, weight => $weight, drain_bank => $drain_bank, result => $result);")


def pe_ports() -> dict[str, Signal]:
    """The PE module's ports, as `conv_engine` connects them."""
    return {"clk": Signal(bool(0)), "en": Signal(bool(0)), "clear": Signal(bool(0)), "bank": Signal(bool(0)),
            "part": Signal(intbv(0, min=-(1 << (PART_BITS - 1)), max=1 << (PART_BITS - 1))),
            "hi": Signal(bool(0)), "weight": Signal(intbv(0, min=-128, max=128)), "drain_bank": Signal(bool(0)),
            "result": acc_signal()}


@block
def drain_lane(clk, acc, bias, mult, rnd, shift, clip_lo, clip_hi, y):
    """requant(acc + bias, mult, shift), clamped, in three registered stages (`rnd`, `shift` and the clamp
    bounds travel with the value)."""
    acc1, acc2 = signed_acc(), signed_acc()
    sh1, sh2 = Signal(intbv(0)[6:]), Signal(intbv(0)[6:])
    rnd1 = signed_acc()

    @always(clk.posedge)
    def stages():
        acc1.next = (acc + bias) * mult
        rnd1.next = rnd
        sh1.next = shift
        acc2.next = acc1 + rnd1
        sh2.next = sh1
        r = int(acc2 >> sh2)
        if r < clip_lo:
            r = int(clip_lo)
        elif r > clip_hi:
            r = int(clip_hi)
        y.next = r & 0xFF

    return stages


@block
def conv_engine(rows: int, cols: int, abw: int, wmw: int, clk, rst, start, f, ar_addr, ar_data, aw_en, aw_addr,
                aw_data, aw_mask, wa_addr, wa_data, wb_addr, wb_data, last, n_compute, n_stall, n_steps):
    """`start` (one cycle) latches the instruction fields `f` (a dict of signals, valid in that cycle).
    Arena: read port (`ar_addr` -> `ar_data` a cycle later), write port. Weight memory: port A for weights,
    port B for the per-channel records. `last` marks the layer's final busy cycle (its last output write);
    then `n_compute`, `n_stall` and `n_steps` hold the layer's compute_cycles, stall_cycles and mac_steps."""
    line_bytes = LINE_WINDOWS * rows
    f_cin = f["cin"]
    f_clip_hi = f["clip_hi"]
    f_clip_lo = f["clip_lo"]
    f_cout = f["cout"]
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
    wbytes = word_bytes(cols)
    records = wbytes // PARAM_BYTES
    rb, wbb = log2(rows), log2(wbytes)
    recb = log2(records)
    pipe = timing.PIPE_CYCLES
    shift_sat = SHIFT_SAT
    insts = []

    # ---- latched instruction and derived sizes ------------------------------------------------------
    def reg(bits: int, signed: bool = False) -> Signal:
        if signed:
            return Signal(intbv(0, min=-(1 << (bits - 1)), max=1 << (bits - 1)))
        return Signal(intbv(0)[bits:])

    src0, dst, wbase, pbase = reg(33), reg(33), reg(33), reg(33)
    cin_g, cout_g, groups = reg(16), reg(16), reg(16)
    ih, iw, oh, ow = reg(16), reg(16), reg(16), reg(16)
    kh, kw, sh, sw, pt, pl = reg(8), reg(8), reg(4), reg(4), reg(4), reg(4)
    s0_signed, zero_skip = Signal(bool(0)), Signal(bool(0))
    clip_lo, clip_hi = reg(16, True), reg(16, True)
    plane_in, plane_out = reg(33), reg(33)
    col_tiles, blocks, xtiles = reg(16), reg(16), reg(16)

    # ---- the fill item (one item ahead of compute) ---------------------------------------------------
    fi_gi, fi_ct, fi_oy, fi_xt, fi_a, fi_m = reg(16), reg(16), reg(16), reg(16), reg(8), reg(16)
    fi_valid = Signal(bool(0))
    # ---- the compute item ----------------------------------------------------------------------------
    ci_valid, ci_last = Signal(bool(0)), Signal(bool(0))
    ci_gi, ci_ct, ci_oy, ci_xt = reg(16), reg(16), reg(16), reg(16)
    ci_nch, ci_lanes = reg(5), reg(rb + 1)
    # ---- line registers ------------------------------------------------------------------------------
    line_a = [Signal(intbv(0)[8 * line_bytes:]) for _ in range(BLOCK)]
    line_b = [Signal(intbv(0)[8 * line_bytes:]) for _ in range(BLOCK)]
    take_b, shift_a = Signal(bool(0)), Signal(bool(0))
    cap_en = Signal(bool(0))
    cap_t, cap_r = reg(3), reg(2)
    cap_data = Signal(intbv(0)[8 * rows:])
    # ---- fill unit -----------------------------------------------------------------------------------
    fl_busy = Signal(bool(0))
    fl_t, fl_r, fl_nch, fl_reads = reg(4), reg(3), reg(5), reg(3)
    fl_row = reg(34)  # arena address of read 0 of the current slot (may be out of range: masked)
    fl_x0 = reg(18, True)  # input column of line byte 0
    fl_row_ok = Signal(bool(0))
    cap_x0 = reg(18, True)
    cap_row_ok = Signal(bool(0))
    # ---- sequencer -----------------------------------------------------------------------------------
    st_t = enum("IDLE", "RUN", "TAIL")
    state = Signal(st_t.IDLE)
    c_busy = Signal(bool(0))  # the compute item still has taps to run
    tap_b = reg(8)
    tap_start = Signal(bool(0))
    u_cur, s_cur = reg(3), reg(2)
    w_tap = reg(34)
    bank = Signal(bool(0))
    # per-lane part of this cycle
    lane_part = [reg(PART_BITS, True) for _ in range(rows)]
    lane_hi = [Signal(bool(0)) for _ in range(rows)]
    lane_en = [Signal(bool(0)) for _ in range(rows)]
    lane_n = [reg(2) for _ in range(rows)]  # each lane's steps in the unit of this cycle
    eff_u = reg(3)
    any_unit = Signal(bool(0))
    unit_cost = [reg(2) for _ in range(BLOCK)]
    lane_steps = [[reg(2) for _ in range(BLOCK)] for _ in range(rows)]
    lane_vals = [[reg(8) for _ in range(BLOCK)] for _ in range(rows)]
    # ---- drain unit ----------------------------------------------------------------------------------
    dr_busy = Signal(bool(0))
    dr_bank = Signal(bool(0))
    dr_k, dr_ncols = reg(16), reg(16)
    dr_co, dr_addr = reg(16), reg(34)
    dr_t_valid = [Signal(bool(0)) for _ in range(pipe)]
    dr_t_addr = [reg(abw) for _ in range(pipe)]
    dr_t_last = [Signal(bool(0)) for _ in range(pipe)]
    dr_mask = reg(rows)
    dr_t_mask = [reg(rows) for _ in range(pipe)]
    dr_rec = reg(max(recb, 1))
    acc_sel = [acc_signal() for _ in range(rows)]
    d_bias, d_mult = signed_acc(34), signed_acc(17)
    d_shift = reg(6)
    d_rnd = signed_acc()
    lane_y = [reg(8) for _ in range(rows)]

    # phase bookkeeping
    first_cycle = Signal(bool(0))  # the first compute cycle of a pass: the PEs start their bank afresh
    phase_end = Signal(bool(0))
    c_done_now, f_done_now = Signal(bool(0)), Signal(bool(0))
    drain_free = Signal(bool(0))
    start_drain = Signal(bool(0))
    last_now = Signal(bool(0))

    # ---- PEs -----------------------------------------------------------------------------------------
    col_w = [reg(8, True) for _ in range(cols)]
    pe_out = [[acc_signal() for _ in range(cols)] for _ in range(rows)]
    pe_clear = Signal(bool(0))
    for j in range(rows):
        for k in range(cols):
            insts.append(pe_instance(clk, lane_en[j], pe_clear, bank, lane_part[j], lane_hi[j], col_w[k], dr_bank,
                                     pe_out[j][k]))
    pe_cols = [ConcatSignal(*reversed([pe_out[j][k] for k in range(cols)])) for j in range(rows)]

    # column weights: byte (u * cols + k) of the word, for the sequencer's unit u
    for k in range(cols):
        insts.append(column_weight(wa_data, eff_u, col_w[k], k, cols))

    # lanes: the byte of each slot at position stride*j, its steps; the part of this cycle
    for j in range(rows):
        for t in range(BLOCK):
            insts.append(lane_value(line_a[t], sw, lane_vals[j][t], j))
            insts.append(steps_of_lane(lane_vals[j][t], s0_signed, zero_skip, ci_lanes, ci_nch, lane_steps[j][t],
                                     j, t))
        insts.append(part_of_lane(lane_vals[j], lane_steps[j], eff_u, s_cur, s0_signed, zero_skip, any_unit,
                                  lane_part[j], lane_hi[j], lane_en[j], lane_n[j]))

    for t in range(BLOCK):
        insts.append(cost_of_unit([lane_steps[j][t] for j in range(rows)], unit_cost[t]))

    # ---- line register updates -----------------------------------------------------------------------
    for t in range(BLOCK):
        insts.append(line_slot(clk, line_a[t], line_b[t], take_b, shift_a, cap_en, cap_t, cap_r, cap_data, t,
                                rows))

    # fill capture: mask bytes outside the input row
    @always(clk.posedge)
    def fill_capture():
        cap_en.next = fl_busy
        cap_t.next = fl_t[3:]
        cap_r.next = fl_r[2:]
        cap_x0.next = fl_x0 + (fl_r << rb)
        cap_row_ok.next = fl_row_ok

    cap_bytes = [reg(8) for _ in range(rows)]
    for i in range(rows):
        insts.append(padding_mask(ar_data(8 * i + 8, 8 * i), cap_x0, cap_row_ok, iw, cap_bytes[i], i))
    masked = ConcatSignal(*reversed(cap_bytes))

    @always_comb
    def capture_mask():
        cap_data.next = masked

    fill_at = Signal(modbv(0)[abw:])

    @always_comb
    def fill_address():
        fill_at.next = fl_row + (fl_r << rb)

    @always_comb
    def fill_port():
        ar_addr.next = fill_at

    insts += [fill_capture, capture_mask, fill_address, fill_port]

    # ---- the tap sequencer ---------------------------------------------------------------------------
    costs = ConcatSignal(*reversed(unit_cost))
    next_u = reg(3)

    @always_comb
    def unit_choice():
        # the unit processed this cycle: the current one, or at a tap's start the first with work
        u = int(u_cur)
        found = False
        if tap_start:
            for t in range(BLOCK):
                if not found and ((costs >> (2 * t)) & 3) != 0:
                    u = t
                    found = True
        else:
            found = ((costs >> (2 * int(u_cur))) & 3) != 0
        eff_u.next = u
        any_unit.next = found and c_busy

    @always_comb
    def following_unit():
        n = 0
        found = False
        for t in range(BLOCK):
            if not found and t > eff_u and ((costs >> (2 * t)) & 3) != 0:
                n = t
                found = True
        next_u.next = n
        more_units.next = found

    insts += [unit_choice, following_unit]

    # ---- weight address: the word of the tap computed in the next cycle -----------------------------
    fi_word = reg(34)

    @always_comb
    def item_word():
        fi_word.next = wbase + ((fi_gi * col_tiles + fi_ct) * kh + fi_a) * blocks * kw + fi_m * kw

    tap_end = Signal(bool(0))
    more_units = Signal(bool(0))
    w_next = Signal(modbv(0)[wmw:])

    @always_comb
    def tap_logic():
        # the current tap ends this cycle: no unit with work, or the last step of the last unit with work
        finish = True
        if any_unit:
            if s_cur + 1 < ((costs >> (2 * int(eff_u))) & 3) or more_units:
                finish = False
        tap_end.next = c_busy and finish
        c_done_now.next = (not c_busy) or (finish and tap_b + 1 >= kw)
        f_done_now.next = not fl_busy

    @always_comb
    def weight_next():
        if phase_end:
            w_next.next = fi_word
        elif tap_end:
            w_next.next = w_tap + 1
        else:
            w_next.next = w_tap

    @always_comb
    def weight_port():
        wa_addr.next = w_next

    insts += [item_word, tap_logic, weight_next, weight_port]

    @always_comb
    def phase_logic():
        drain_free.next = (not dr_busy) or (dr_t_valid[pipe - 1] and dr_t_last[pipe - 1])
        ok = state == st_t.RUN and c_done_now and f_done_now
        if ci_valid and ci_last and not drain_free:
            ok = False
        phase_end.next = ok
        start_drain.next = ok and ci_valid and ci_last
        take_b.next = ok
        shift_a.next = c_busy and tap_end and tap_b + 1 < kw
        pe_clear.next = first_cycle

    insts.append(phase_logic)

    # ---- next fill item and its fill parameters -------------------------------------------------------
    nx_gi, nx_ct, nx_oy, nx_xt, nx_a, nx_m = reg(16), reg(16), reg(16), reg(16), reg(8), reg(16)
    nx_valid = Signal(bool(0))
    nx_nch, nx_reads = reg(5), reg(3)
    nx_row, nx_x0 = reg(34, True), reg(18, True)
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
        m += 1
        if m >= blocks:
            m = 0
            a += 1
            if a >= kh:
                a = 0
                xt += 1
                if xt >= xtiles:
                    xt = 0
                    oy += 1
                    if oy >= oh:
                        oy = 0
                        ct += 1
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

    @always_comb
    def next_fill():
        n = int(cin_g) - int(nx_m) * BLOCK
        if n > BLOCK:
            n = BLOCK
        nx_nch.next = n
        lanes = int(ow) - (int(nx_xt) << rb)
        if lanes > rows:
            lanes = rows
        nx_reads.next = (int(sw) * (lanes - 1) + int(kw) + rows - 1) >> rb
        iy = int(nx_oy) * int(sh) + int(nx_a) - int(pt)
        x0 = (int(nx_xt) << rb) * int(sw) - int(pl)
        nx_x0.next = x0
        nx_row_ok.next = iy >= 0 and iy < ih
        c0 = int(nx_gi) * int(cin_g) + int(nx_m) * BLOCK
        nx_row.next = int(src0) + c0 * int(plane_in) + iy * int(iw) + x0

    insts += [next_item, next_fill]

    # ---- main control --------------------------------------------------------------------------------

    @always(clk.posedge)
    def control():
        if rst:
            state.next = st_t.IDLE
            fl_busy.next = 0
            c_busy.next = 0
            ci_valid.next = 0
            fi_valid.next = 0
            first_cycle.next = 0
        elif state == st_t.IDLE:
            if start:
                cg = int(f_cin) // int(f_groups)
                og = int(f_cout) // int(f_groups)
                src0.next = f_src0
                dst.next = f_dst
                wbase.next = f_src1 >> wbb
                pbase.next = f_param
                cin_g.next = cg
                cout_g.next = og
                groups.next = f_groups
                ih.next = f_ih
                iw.next = f_iw
                oh.next = f_oh
                ow.next = f_ow
                kh.next = f_kh
                kw.next = f_kw
                sh.next = f_sh
                sw.next = f_sw
                pt.next = f_pt
                pl.next = f_pl
                s0_signed.next = f_s0_signed
                zero_skip.next = f_zero_skip
                clip_lo.next = f_clip_lo.signed()
                clip_hi.next = f_clip_hi.signed()
                plane_in.next = f_ih * f_iw
                plane_out.next = f_oh * f_ow
                col_tiles.next = (og + cols - 1) // cols
                blocks.next = (cg + BLOCK - 1) // BLOCK
                xtiles.next = (int(f_ow) + rows - 1) >> rb
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
                bank.next = 1
                n0 = cg
                if n0 > BLOCK:
                    n0 = BLOCK
                lanes0 = int(f_ow)
                if lanes0 > rows:
                    lanes0 = rows
                fl_busy.next = 1
                fl_t.next = 0
                fl_r.next = 0
                fl_nch.next = n0
                fl_reads.next = (int(f_sw) * (lanes0 - 1) + int(f_kw) + rows - 1) >> rb
                fl_x0.next = -int(f_pl)
                fl_row_ok.next = int(f_pt) == 0
                fl_row.next = int(f_src0) - int(f_pt) * int(f_iw) - int(f_pl)
        elif state == st_t.RUN:
            first_cycle.next = 0
            # fill unit: one window read a cycle
            if fl_busy:
                if fl_r + 1 < fl_reads:
                    fl_r.next = fl_r + 1
                else:
                    fl_r.next = 0
                    if fl_t + 1 < fl_nch:
                        fl_t.next = fl_t + 1
                        fl_row.next = fl_row + plane_in
                    else:
                        fl_busy.next = 0
            # tap sequencer
            if c_busy:
                if tap_end:
                    tap_start.next = 1
                    s_cur.next = 0
                    if tap_b + 1 < kw:
                        tap_b.next = tap_b + 1
                    else:
                        c_busy.next = 0
                elif s_cur + 1 < ((costs >> (2 * int(eff_u))) & 3):
                    s_cur.next = s_cur + 1
                    u_cur.next = eff_u
                    tap_start.next = 0
                else:
                    s_cur.next = 0
                    u_cur.next = next_u
                    tap_start.next = 0
            if tap_end:
                w_tap.next = w_tap + 1
            if phase_end:
                w_tap.next = fi_word
                # the fill item becomes the compute item
                ci_valid.next = fi_valid
                first = fi_a == 0 and fi_m == 0
                ci_last.next = fi_a + 1 == kh and fi_m + 1 == blocks
                ci_gi.next = fi_gi
                ci_ct.next = fi_ct
                ci_oy.next = fi_oy
                ci_xt.next = fi_xt
                n = int(cin_g) - int(fi_m) * BLOCK
                if n > BLOCK:
                    n = BLOCK
                ci_nch.next = n
                lanes = int(ow) - (int(fi_xt) << rb)
                if lanes > rows:
                    lanes = rows
                ci_lanes.next = lanes
                c_busy.next = fi_valid
                tap_b.next = 0
                tap_start.next = 1
                s_cur.next = 0
                first_cycle.next = fi_valid and first
                if fi_valid and first:
                    bank.next = not bank
                # the next item's fill starts
                fi_gi.next = nx_gi
                fi_ct.next = nx_ct
                fi_oy.next = nx_oy
                fi_xt.next = nx_xt
                fi_a.next = nx_a
                fi_m.next = nx_m
                fi_valid.next = fi_valid and nx_valid
                if fi_valid and nx_valid:
                    fl_busy.next = 1
                    fl_t.next = 0
                    fl_r.next = 0
                    fl_nch.next = nx_nch
                    fl_reads.next = nx_reads
                    fl_x0.next = nx_x0
                    fl_row_ok.next = nx_row_ok
                    fl_row.next = nx_row
                if not fi_valid:
                    state.next = st_t.TAIL
        elif state == st_t.TAIL:
            if last_now:
                state.next = st_t.IDLE

    insts.append(control)

    # ---- drain ---------------------------------------------------------------------------------------
    param_at = Signal(modbv(0)[wmw:])

    @always_comb
    def drain_comb():
        param_at.next = (pbase + (dr_co + dr_k) * PARAM_BYTES) >> wbb
        last_now.next = state == st_t.TAIL and dr_t_valid[pipe - 1] and dr_t_last[pipe - 1]
        last.next = state == st_t.TAIL and dr_t_valid[pipe - 1] and dr_t_last[pipe - 1]
        rec = intbv(0)[8 * wbytes:]
        rec[:] = wb_data >> (8 * PARAM_BYTES * int(dr_rec))
        d_bias.next = rec[32:0].signed()
        d_mult.next = rec[48:32]
        s = int(rec[72:64])
        if s > shift_sat:
            s = shift_sat
        d_shift.next = s
        half = intbv(0)[ACC_BITS + 1:]
        half[:] = 1
        half[:] = half << s
        d_rnd.next = half >> 1
        aw_en.next = dr_t_valid[pipe - 1]
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
            dr_t_valid[0].next = issue
            dr_t_last[0].next = issue and dr_k + 1 == dr_ncols
            dr_t_addr[0].next = dr_addr[abw:]
            dr_t_mask[0].next = dr_mask
            dr_rec.next = ((pbase >> 4) + dr_co + dr_k) & (records - 1)
            for i in range(1, pipe):
                dr_t_valid[i].next = dr_t_valid[i - 1]
                dr_t_last[i].next = dr_t_last[i - 1]
                dr_t_addr[i].next = dr_t_addr[i - 1]
                dr_t_mask[i].next = dr_t_mask[i - 1]
            if issue:
                dr_k.next = dr_k + 1
                dr_addr.next = dr_addr + plane_out
            if dr_busy and dr_t_valid[pipe - 1] and dr_t_last[pipe - 1]:
                dr_busy.next = 0
            if start_drain:
                dr_busy.next = 1
                dr_bank.next = bank
                dr_k.next = 0
                n = int(cout_g) - int(ci_ct) * cols
                if n > cols:
                    n = cols
                dr_ncols.next = n
                co = int(ci_gi) * int(cout_g) + int(ci_ct) * cols
                dr_co.next = co
                dr_addr.next = int(dst) + co * int(plane_out) + int(ci_oy) * int(ow) + (int(ci_xt) << rb)
                dr_mask.next = (1 << int(ci_lanes)) - 1

    insts += [drain_comb, param_port, drain_seq]

    for j in range(rows):
        flat = Signal(intbv(0)[PE_ACC_BITS * cols:])  # a plain signal: a template cannot read a ConcatSignal
        insts.append(wire(pe_cols[j], flat))
        insts.append(column_pick(clk, flat, dr_k, acc_sel[j], cols))
        insts.append(drain_lane(clk, acc_sel[j], d_bias, d_mult, d_rnd, d_shift, clip_lo, clip_hi, lane_y[j]))
    y_all = ConcatSignal(*reversed(lane_y))

    @always_comb
    def write_data():
        aw_data.next = y_all

    insts.append(write_data)

    # ---- counters: compute cycles; and, on a group's first column tile, lane steps and lock-step stalls ----
    lanes_n = ConcatSignal(*reversed(lane_n))
    lanes_en = ConcatSignal(*reversed(lane_en))
    k_compute, k_stall, k_steps = reg(32), reg(32), reg(32)
    cycle_steps, cycle_stall = reg(rb + 1), reg(2)

    @always_comb
    def count_cycle():
        total = 0
        fastest = 3
        for j in range(rows):
            n = int((lanes_n >> (2 * j)) & 3)
            if (lanes_en >> j) & 1:
                total = total + 1
            if j < ci_lanes and n < fastest:
                fastest = n
        cycle_steps.next = total
        n = 0
        if any_unit and s_cur == 0:
            n = int((costs >> (2 * int(eff_u))) & 3) - fastest
        cycle_stall.next = n

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
def padding_mask(byte, x0, row_ok, iw, out, i: int):
    """Byte i of a fill window, or 0 where it lies outside the input row (padding)."""

    @always_comb
    def keep():
        x = int(x0) + i
        if row_ok and x >= 0 and x < iw:
            out.next = byte
        else:
            out.next = 0

    return keep


@block
def column_weight(word, u, w, k: int, cols: int):
    """Column k's weight for unit (line slot) u: byte u*cols + k of the weight word, signed."""
    parts = ConcatSignal(*reversed([word(8 * (t * cols + k) + 8, 8 * (t * cols + k)) for t in range(BLOCK)]))

    @always_comb
    def select():
        v = int((parts >> (8 * int(u))) & 0xFF)
        if v >= 128:
            v = v - 256
        w.next = v

    return select


@block
def lane_value(line, stride, value, j: int):
    """Lane j's byte of a line: position stride * j (the line shifts one byte per tap)."""

    @always_comb
    def pick():
        if stride == 1:
            value.next = line[8 * j + 8:8 * j]
        elif stride == 2:
            value.next = line[16 * j + 8:16 * j]
        elif stride == 3:
            value.next = line[24 * j + 8:24 * j]
        else:
            value.next = line[32 * j + 8:32 * j]

    return pick


@block
def steps_of_lane(value, signed, zero_skip, lanes, nch, steps, j: int, t: int):
    """Steps of lane j in unit t: 2 parts, or with zero-part skipping its non-zero parts; 0 for lanes past
    the row's end and slots past the block's channels."""

    @always_comb
    def count():
        v = int(value)
        hi = v >> 4
        if signed and v >= 128:
            hi = (v - 256) >> 4
        lo = v & 15
        n = 2
        if zero_skip:
            n = int(hi != 0) + int(lo != 0)
        if j >= lanes or t >= nch:
            n = 0
        steps.next = n

    return count


@block
def cost_of_unit(steps, cost):
    """A unit costs its slowest lane."""
    every = ConcatSignal(*reversed(steps))
    lanes = len(steps)

    @always_comb
    def slowest():
        m = 0
        for j in range(lanes):
            v = int((every >> (2 * j)) & 3)
            if v > m:
                m = v
        cost.next = m

    return slowest


@block
def part_of_lane(values, steps, u, s, signed, zero_skip, active, part, hi_out, en, n_out):
    """The term part lane j multiplies this cycle: step s of unit u (high part first; with zero-part
    skipping the first non-zero part first)."""
    vals = ConcatSignal(*reversed(values))
    stps = ConcatSignal(*reversed(steps))

    @always_comb
    def choose():
        v = int((vals >> (8 * int(u))) & 0xFF)
        n = int((stps >> (2 * int(u))) & 3)
        h = v >> 4
        if signed and v >= 128:
            h = (v - 256) >> 4
        lo = v & 15
        take_hi = s == 0
        if zero_skip and h == 0:
            take_hi = False
        if take_hi:
            part.next = h
        else:
            part.next = lo
        hi_out.next = take_hi
        en.next = active and s < n
        n_out.next = n

    return choose


@block
def line_slot(clk, a, b, take_b, shift_a, cap_en, cap_t, cap_r, cap_data, t: int, rows: int):
    """Line slot t: A takes B at a phase end (with a window landing in that cycle), shifts a byte per tap;
    B receives the fill's windows."""
    width = len(a)

    @always(clk.posedge)
    def update():
        merged = intbv(0)[width:]
        merged[:] = b
        if cap_en and cap_t == t:
            if cap_r == 0:
                merged[8 * rows:0] = cap_data
            elif cap_r == 1:
                merged[16 * rows:8 * rows] = cap_data
            elif cap_r == 2:
                merged[24 * rows:16 * rows] = cap_data
            else:
                merged[32 * rows:24 * rows] = cap_data
        b.next = merged
        if take_b:
            a.next = merged
        elif shift_a:
            a.next = a >> 8

    return update
