"""The overlay core: AXI4-Lite registers, stream transfers into the on-chip memories, and the sequencer.

Everything numeric comes from `dynq.contract`: register offsets and fields, instruction field positions,
opcodes, error codes, the requantization rule and the cycle model's constants. The board file gives the
array shape and memory sizes. The core runs one segment per start: it fetches an instruction, checks
it, executes it, writes the layer's performance counters, and moves on until END or an error.

Implemented units: the sequencer with its error checks, the element-wise unit (MOVE, ADD) on the
lane-banked arena, and the convolution engine (CONV in int8, POOL); what it lacks of CONV stops with
BAD_OPCODE (see `unsupported` and docs/overlay.md).
"""

from __future__ import annotations

from myhdl import ConcatSignal, ResetSignal, Signal, always, always_comb, block, concat, enum, intbv, modbv

from dynq.boards import Board
from dynq.contract import CONTRACT_VERSION, ErrorCode, Instr, Memory, Mode, Op, PrecisionRegs, timing
from dynq.contract import registers as rg
from dynq.contract.array import (
    BLOCK,
    LINE_WINDOWS,
    MAX_STRIDE,
    POOL_ROW_TILES,
    REGION_MAX,
    REGION_ROW_TILES,
    SDP_G_VALUES,
    log2,
)
from dynq.contract.isa import FIELD, INSTR_WORDS
from dynq.contract.layout import PARAM_BYTES, word_bytes
from dynq.hdl.axil import addr_bits, axil_slave, word
from dynq.hdl.conv import PE_ACC_BITS, conv_engine
from dynq.hdl.lanes import MULT_BITS, SHIFT_SAT, requant_lane, signed
from dynq.hdl.memories import ram, ram_bytes, ram_dual_bytes, window_ram
from dynq.hdl.predictor import REGION_BITS, REGION_LOG_MAX


def unsupported(ins: Instr, reg: PrecisionRegs, cols: int) -> str | None:
    """What of this instruction (with its layer's registers) the core does not run yet, or None. The core
    stops such an instruction with BAD_OPCODE; the runtime asks first, to say what is missing."""
    if ins.op != Op.CONV:
        return None
    geom = timing.conv_geometry(ins)
    if timing.reduction_split(geom) and ins.ih * ins.iw > 1:
        return "single-pixel CONV over an input larger than 1x1"
    if timing.packing(geom, cols) > 1:
        return "CONV with passes side by side (grouped, depthwise or few output channels)"
    return None


FETCH_WORDS = max(f.word for f in FIELD.values()) + 1
"""Instruction words the core reads; the rest of the record is reserved."""
FETCH_PAIRS = -(-FETCH_WORDS // 2)
"""The instruction memory is two 32-bit banks (even and odd words): a pair per cycle."""
assert FETCH_PAIRS + 1 == timing.LAYER_SETUP_CYCLES, "setup = fetch pairs + one cycle of checks"
BEAT = rg.XFER_ALIGN
"""Bytes per stream beat; the instruction and weight memories' words are one beat wide."""
EXEC_READ_LATENCY = 1
assert EXEC_READ_LATENCY + 3 == timing.PIPE_CYCLES, "PIPE = arena read + three lane stages"


def ports(board: Board) -> dict[str, Signal]:
    """The core's top-level ports, in order: clock and reset, AXI4-Lite slave, AXI4-Stream in and out."""
    aw = addr_bits(rg.ADDRESS_SPACE)
    return {
        "clk": Signal(bool(0)),
        "aresetn": ResetSignal(1, active=0, isasync=False),
        "s_axil_awaddr": Signal(intbv(0)[aw:]), "s_axil_awvalid": Signal(bool(0)), "s_axil_awready": Signal(bool(0)),
        "s_axil_wdata": word(), "s_axil_wstrb": Signal(intbv(0)[4:]), "s_axil_wvalid": Signal(bool(0)),
        "s_axil_wready": Signal(bool(0)),
        "s_axil_bresp": Signal(intbv(0)[2:]), "s_axil_bvalid": Signal(bool(0)), "s_axil_bready": Signal(bool(0)),
        "s_axil_araddr": Signal(intbv(0)[aw:]), "s_axil_arvalid": Signal(bool(0)), "s_axil_arready": Signal(bool(0)),
        "s_axil_rdata": word(), "s_axil_rresp": Signal(intbv(0)[2:]), "s_axil_rvalid": Signal(bool(0)),
        "s_axil_rready": Signal(bool(0)),
        "s_axis_tdata": Signal(intbv(0)[8 * BEAT:]), "s_axis_tvalid": Signal(bool(0)), "s_axis_tready": Signal(bool(0)),
        "s_axis_tlast": Signal(bool(0)),
        "m_axis_tdata": Signal(intbv(0)[8 * BEAT:]), "m_axis_tvalid": Signal(bool(0)), "m_axis_tready": Signal(bool(0)),
        "m_axis_tlast": Signal(bool(0)),
        "irq": Signal(bool(0)),
    }


@block
def counter_sum(new, bank, acc, out):
    """One counter's write data: the instruction's value, plus the bank's when a batch start accumulates."""

    @always_comb
    def add():
        if acc:
            out.next = new + bank
        else:
            out.next = new

    return add


@block
def dynq_core(board: Board, clk, aresetn, s_axil_awaddr, s_axil_awvalid, s_axil_awready, s_axil_wdata, s_axil_wstrb,
              s_axil_wvalid, s_axil_wready, s_axil_bresp, s_axil_bvalid, s_axil_bready, s_axil_araddr,
              s_axil_arvalid, s_axil_arready, s_axil_rdata, s_axil_rresp, s_axil_rvalid, s_axil_rready,
              s_axis_tdata, s_axis_tvalid, s_axis_tready, s_axis_tlast, m_axis_tdata, m_axis_tvalid,
              m_axis_tready, m_axis_tlast, irq):
    arch = board.arch
    rows = arch.rows
    ob = log2(rows)
    aw = addr_bits(rg.ADDRESS_SPACE)
    imem_pairs = arch.imem_bytes // 8
    wbytes = word_bytes(arch.cols)
    wmem_words = arch.wmem_bytes // wbytes
    lane_words = wbytes // BEAT
    amem_depth = arch.amem_bytes // rows
    ipw, wmw, abw = log2(imem_pairs), log2(wmem_words), log2(arch.amem_bytes)
    word_shift = log2(wbytes)
    pair_stride = INSTR_WORDS // 2
    imem_instrs = imem_pairs // pair_stride
    lw = log2(rg.MAX_LAYERS)
    n_counters = len(rg.COUNTERS)

    # constants from the contract, bound to names the converter inlines
    off_ctrl, off_status, off_error, off_error_pc = (rg.GLOBAL[n].offset for n in ("CTRL", "STATUS", "ERROR",
                                                                                     "ERROR_PC"))
    off_id, off_contract, off_fp = (rg.GLOBAL[n].offset for n in ("ID", "CONTRACT", "FINGERPRINT"))
    off_first, off_count = rg.GLOBAL["INSTR_FIRST"].offset, rg.GLOBAL["INSTR_COUNT"].offset
    off_xmem, off_xaddr, off_xbytes = (rg.GLOBAL[n].offset for n in ("XFER_MEM", "XFER_ADDR", "XFER_BYTES"))
    off_imem, off_wmem, off_amem = (rg.GLOBAL[n].offset for n in ("IMEM_BYTES", "WMEM_BYTES", "AMEM_BYTES"))
    off_pc, off_cycles = rg.GLOBAL["PC"].offset, rg.GLOBAL["CYCLES"].offset
    off_batch, off_in_addr, off_in_bytes, off_out_addr, off_out_bytes, off_image = (
        rg.GLOBAL[n].offset for n in ("BATCH", "IN_ADDR", "IN_BYTES", "OUT_ADDR", "OUT_BYTES", "IMAGE"))
    b_start, b_reset, b_load, b_store = (rg.GLOBAL["CTRL"].field(n).lsb for n in ("start", "reset", "load", "store"))
    id_magic, contract_version, fingerprint = rg.ID_MAGIC, CONTRACT_VERSION, board.arch.fingerprint
    imem_bytes, wmem_bytes, amem_bytes = arch.imem_bytes, arch.wmem_bytes, arch.amem_bytes
    prec_lo, prec_hi = rg.PRECISION_BASE, rg.MASK_BASE
    mask_lo, mask_hi = rg.MASK_BASE, rg.MASK_BASE + 4 * rg.MASK_WORDS
    cnt_lo, cnt_hi = rg.COUNTER_BASE, rg.COUNTER_BASE + rg.MAX_LAYERS * rg.COUNTER_STRIDE
    cnt_high_lo, cnt_high_hi = rg.COUNTER_HIGH_BASE, rg.COUNTER_HIGH_BASE + rg.MAX_LAYERS * rg.COUNTER_STRIDE
    cnt_bits = rg.COUNTER_BITS
    prec_shift, cnt_shift = log2(rg.PRECISION_STRIDE), log2(rg.COUNTER_STRIDE)
    e_ok, e_opcode, e_range, e_xfer = ErrorCode.OK, ErrorCode.BAD_OPCODE, ErrorCode.ADDR_RANGE, ErrorCode.XFER
    m_instr, m_weights, m_arena = Memory.INSTR, Memory.WEIGHTS, Memory.ARENA
    op_nop, op_move, op_add, op_end, op_conv, op_pool = (int(Op.NOP), int(Op.MOVE), int(Op.ADD), int(Op.END),
                                                         int(Op.CONV), int(Op.POOL))
    e_overflow, e_precision = ErrorCode.BUFFER_OVERFLOW, ErrorCode.BAD_PRECISION
    mode_drq, mode_sdp, mode_daq, mode_last = int(Mode.DRQ), int(Mode.SDP), int(Mode.DAQ), int(max(Mode))
    mode_reg = next(r for r in rg.PRECISION_REGISTERS if r.name == "MODE")
    mode_field, skip_field, hi_field = (mode_reg.field(n) for n in ("mode", "zero_skip", "insens_hi"))
    mode_index = rg.PRECISION_REGISTERS.index(mode_reg)
    region_reg = next(r for r in rg.PRECISION_REGISTERS if r.name == "REGION")
    rh_field, rw_field = region_reg.field("rh"), region_reg.field("rw")
    region_index = rg.PRECISION_REGISTERS.index(region_reg)
    threshold_index = next(i for i, r in enumerate(rg.PRECISION_REGISTERS) if r.name == "THRESHOLD")
    sdp_reg = next(r for r in rg.PRECISION_REGISTERS if r.name == "SDP")
    g_field, k_field = sdp_reg.field("g"), sdp_reg.field("k")
    sdp_index = rg.PRECISION_REGISTERS.index(sdp_reg)
    sdp_g_max, sdp_log_max = max(SDP_G_VALUES), log2(max(SDP_G_VALUES))
    assert SDP_G_VALUES == tuple(1 << i for i in range(sdp_log_max + 1)), "SDP's g: the powers of two up to a maximum"
    region_max, region_log_max = REGION_MAX, REGION_LOG_MAX
    region_row = REGION_ROW_TILES * rows
    cols = arch.cols
    line_bytes = LINE_WINDOWS * rows
    setup_last = timing.LAYER_SETUP_CYCLES - 1
    pipe = timing.PIPE_CYCLES
    shift_sat = SHIFT_SAT

    rst = Signal(bool(0))

    # ---- register bus ---------------------------------------------------------------------------------
    wr_en = Signal(bool(0))
    wr_addr, rd_addr, rd_addr_q = Signal(intbv(0)[aw:]), Signal(intbv(0)[aw:]), Signal(intbv(0)[aw:])
    wr_data, rd_data = word(), word()
    bus = axil_slave(clk, rst, s_axil_awaddr, s_axil_awvalid, s_axil_awready, s_axil_wdata, s_axil_wvalid,
                     s_axil_wready, s_axil_bresp, s_axil_bvalid, s_axil_bready, s_axil_araddr, s_axil_arvalid,
                     s_axil_arready, s_axil_rdata, s_axil_rresp, s_axil_rvalid, s_axil_rready,
                     wr_en, wr_addr, wr_data, rd_addr, rd_data)

    instr_first, instr_count = word(), word()
    xfer_mem, xfer_addr, xfer_bytes = word(), word(), word()
    batch, in_addr, in_bytes, out_addr, out_bytes = word(), word(), word(), word(), word()
    b_image = word()  # images of the batch start whose output has been sent
    start, soft_reset, load_go, store_go = (Signal(bool(0)) for _ in range(4))
    done, busy, error, xfer_busy, xfer_done = (Signal(bool(0)) for _ in range(5))
    error_code, error_pc, pc, cycles = word(), word(), word(), word()
    global_q = word()
    any_error = Signal(bool(0))
    status_bits = {"done": done, "busy": busy, "error": any_error, "xfer": xfer_busy, "xfer_done": xfer_done}
    status_fields = sorted(rg.GLOBAL["STATUS"].fields, key=lambda f: f.lsb)
    assert [f.lsb for f in status_fields] == list(range(len(status_fields)))
    status_word = ConcatSignal(intbv(0)[32 - len(status_fields):],
                               *[status_bits[f.name] for f in reversed(status_fields)])

    # precision banks: one RAM per register, written by the host
    n_prec = len(rg.PRECISION_REGISTERS)
    prec_we = Signal(intbv(0)[n_prec:])
    prec_wa = Signal(intbv(0)[lw:])
    prec_ra_bus = Signal(intbv(0)[lw:])
    prec_bus = [word() for _ in range(n_prec)]
    prec_bus_all = ConcatSignal(*reversed(prec_bus))
    mask_regs = [word() for _ in range(rg.MASK_WORDS)]
    mask_q = word()

    # counter banks: one RAM per counter, written by the core at the end of each instruction
    cnt_we = Signal(bool(0))
    cnt_wa, cnt_ra = Signal(intbv(0)[lw:]), Signal(intbv(0)[lw:])
    cnt_new = Signal(intbv(0)[32 * n_counters:])  # an instruction's counters, registered with cnt_we
    cnt_sum = [Signal(modbv(0)[cnt_bits:]) for _ in range(n_counters)]  # what the bank is written with
    cnt_acc = Signal(bool(0))  # a batch start past its first image: add to the bank instead of replacing it
    cnt_out = [Signal(intbv(0)[cnt_bits:]) for _ in range(n_counters)]
    cnt_out_all = ConcatSignal(*reversed(cnt_out))
    cnt_sel = Signal(intbv(0)[log2(rg.COUNTER_STRIDE // 4):])
    prec_sel = Signal(intbv(0)[2:])

    insts = [bus]
    for i in range(n_prec):
        insts.append(ram(clk, prec_we(i), prec_wa, wr_data, prec_ra_bus, prec_bus[i], rg.MAX_LAYERS))
    for i in range(n_counters):
        insts.append(ram(clk, cnt_we, cnt_wa, cnt_sum[i], cnt_ra, cnt_out[i], rg.MAX_LAYERS))
        insts.append(counter_sum(cnt_new(32 * i + 32, 32 * i), cnt_out[i], cnt_acc, cnt_sum[i]))

    @always_comb
    def reset_logic():
        rst.next = not aresetn

    @always_comb
    def bus_decode():
        prec_wa.next = wr_addr[lw + prec_shift:prec_shift]
        prec_ra_bus.next = rd_addr[lw + prec_shift:prec_shift]
        if wr_en and wr_addr >= prec_lo and wr_addr < prec_hi:
            prec_we.next = 1 << wr_addr[prec_shift:2]
        else:
            prec_we.next = 0

    @always(clk.posedge)
    def bus_write():
        start.next = 0
        soft_reset.next = 0
        load_go.next = 0
        store_go.next = 0
        if rst:
            instr_first.next = 0
            instr_count.next = 0
            xfer_mem.next = 0
            xfer_addr.next = 0
            xfer_bytes.next = 0
            batch.next = 0
            in_addr.next = 0
            in_bytes.next = 0
            out_addr.next = 0
            out_bytes.next = 0
        elif wr_en:
            if wr_addr == off_ctrl:
                start.next = wr_data[b_start]
                soft_reset.next = wr_data[b_reset]
                load_go.next = wr_data[b_load]
                store_go.next = wr_data[b_store]
            elif wr_addr == off_first:
                instr_first.next = wr_data
            elif wr_addr == off_count:
                instr_count.next = wr_data
            elif wr_addr == off_xmem:
                xfer_mem.next = wr_data
            elif wr_addr == off_xaddr:
                xfer_addr.next = wr_data
            elif wr_addr == off_xbytes:
                xfer_bytes.next = wr_data
            elif wr_addr == off_batch:
                batch.next = wr_data
            elif wr_addr == off_in_addr:
                in_addr.next = wr_data
            elif wr_addr == off_in_bytes:
                in_bytes.next = wr_data
            elif wr_addr == off_out_addr:
                out_addr.next = wr_data
            elif wr_addr == off_out_bytes:
                out_bytes.next = wr_data

    @always(clk.posedge)
    def mask_write():
        # a small RAM, like the precision banks: no reset, the host writes a mask before a DAQ run
        if wr_en and wr_addr >= mask_lo and wr_addr < mask_hi:
            mask_regs[wr_addr[aw:2] - mask_lo // 4].next = wr_data

    @always(clk.posedge)
    def bus_read_stage():
        # one cycle after rd_en: register the global value and remember which space was read
        rd_addr_q.next = rd_addr
        cnt_sel.next = rd_addr[cnt_shift:2]
        prec_sel.next = rd_addr[prec_shift:2]
        if rd_addr == off_status:
            global_q.next = status_word
        elif rd_addr == off_error:
            if x_err:
                global_q.next = e_xfer
            else:
                global_q.next = error_code
        elif rd_addr == off_error_pc:
            global_q.next = error_pc
        elif rd_addr == off_id:
            global_q.next = id_magic
        elif rd_addr == off_contract:
            global_q.next = contract_version
        elif rd_addr == off_fp:
            global_q.next = fingerprint
        elif rd_addr == off_first:
            global_q.next = instr_first
        elif rd_addr == off_count:
            global_q.next = instr_count
        elif rd_addr == off_xmem:
            global_q.next = xfer_mem
        elif rd_addr == off_xaddr:
            global_q.next = xfer_addr
        elif rd_addr == off_xbytes:
            global_q.next = xfer_bytes
        elif rd_addr == off_imem:
            global_q.next = imem_bytes
        elif rd_addr == off_wmem:
            global_q.next = wmem_bytes
        elif rd_addr == off_amem:
            global_q.next = amem_bytes
        elif rd_addr == off_pc:
            global_q.next = pc
        elif rd_addr == off_cycles:
            global_q.next = cycles
        elif rd_addr == off_batch:
            global_q.next = batch
        elif rd_addr == off_in_addr:
            global_q.next = in_addr
        elif rd_addr == off_in_bytes:
            global_q.next = in_bytes
        elif rd_addr == off_out_addr:
            global_q.next = out_addr
        elif rd_addr == off_out_bytes:
            global_q.next = out_bytes
        elif rd_addr == off_image:
            global_q.next = b_image
        else:
            global_q.next = 0
        if rd_addr >= mask_lo and rd_addr < mask_hi:
            mask_q.next = mask_regs[rd_addr[aw:2] - mask_lo // 4]
        else:
            mask_q.next = 0

    @always_comb
    def bus_read_mux():
        if rd_addr_q >= prec_lo and rd_addr_q < prec_hi:
            rd_data.next = (prec_bus_all >> (32 * prec_sel)) & 0xFFFFFFFF
        elif rd_addr_q >= cnt_lo and rd_addr_q < cnt_hi and cnt_sel < n_counters:
            rd_data.next = (cnt_out_all >> (cnt_bits * cnt_sel)) & 0xFFFFFFFF
        elif rd_addr_q >= cnt_high_lo and rd_addr_q < cnt_high_hi and cnt_sel < n_counters:
            rd_data.next = (cnt_out_all >> (cnt_bits * cnt_sel + 32)) & 0xFFFFFFFF
        elif rd_addr_q >= mask_lo and rd_addr_q < mask_hi:
            rd_data.next = mask_q
        else:
            rd_data.next = global_q

    insts += [reset_logic, bus_decode, bus_write, mask_write, bus_read_stage, bus_read_mux]

    # ---- memories ---------------------------------------------------------------------------------------
    im_we0, im_we1 = Signal(intbv(0)[BEAT:]), Signal(intbv(0)[BEAT:])
    im_wa, im_ra = Signal(modbv(0)[ipw:]), Signal(modbv(0)[ipw:])
    im_wd = Signal(intbv(0)[8 * BEAT:])
    im_rd0, im_rd1 = Signal(intbv(0)[8 * BEAT:]), Signal(intbv(0)[8 * BEAT:])
    wm_we = Signal(intbv(0)[wbytes:])
    wm_addr_a, wm_addr_b = Signal(modbv(0)[wmw:]), Signal(modbv(0)[wmw:])
    wm_rd_a, wm_rd_b = Signal(intbv(0)[8 * wbytes:]), Signal(intbv(0)[8 * wbytes:])
    beat_everywhere = ConcatSignal(*([s_axis_tdata] * lane_words))  # the beat on every lane; `wm_we` picks one
    wm_wd = Signal(intbv(0)[8 * wbytes:])
    x_wm_addr = Signal(modbv(0)[wmw:])
    x_lane, x_lane_q = Signal(intbv(0)[max(1, log2(lane_words)):]), Signal(intbv(0)[max(1, log2(lane_words)):])
    am_ra, am_wa = Signal(modbv(0)[abw:]), Signal(modbv(0)[abw:])
    am_rd, am_wd = Signal(intbv(0)[8 * rows:]), Signal(intbv(0)[8 * rows:])
    am_we = Signal(bool(0))
    am_mask = Signal(intbv(0)[rows:])
    insts.append(ram_bytes(clk, im_we0, im_wa, im_wd, im_ra, im_rd0, imem_pairs))
    insts.append(ram_bytes(clk, im_we1, im_wa, im_wd, im_ra, im_rd1, imem_pairs))
    insts.append(ram_dual_bytes(clk, wm_we, wm_addr_a, wm_wd, wm_rd_a, wm_addr_b, wm_rd_b, wbytes, wmem_words))
    insts.append(window_ram(clk, am_ra, am_rd, am_we, am_wa, am_wd, am_mask, rows, amem_depth))

    # ---- stream transfers ---------------------------------------------------------------------------------
    beat, beat_bits, full_beat = BEAT, log2(BEAT), (1 << BEAT) - 1
    x_state_t = enum("IDLE", "LOAD", "SWALLOW", "READ", "WAIT", "SEND")
    x_state = Signal(x_state_t.IDLE)
    x_ptr = word()  # byte address of the current beat
    x_left = word()  # bytes still to move, including the current beat
    x_mem = Signal(intbv(0)[2:])
    x_word = Signal(intbv(0)[8 * BEAT:])
    x_rd_word = Signal(intbv(0)[8 * BEAT:])
    x_im_ra = Signal(modbv(0)[ipw:])
    x_am_ra, x_am_wa = Signal(modbv(0)[abw:]), Signal(modbv(0)[abw:])
    x_am_we = Signal(bool(0))
    x_am_mask = Signal(intbv(0)[rows:])
    x_bmask = Signal(intbv(0)[BEAT:])  # bytes of the current beat inside the transfer
    x_am_wd = Signal(intbv(0)[8 * rows:])
    x_err = Signal(bool(0))
    x_beat = Signal(bool(0))
    x_ptr_q = word()
    x_tlast = Signal(bool(0))  # this transfer ends its packet: TLAST expected (load) or sent (store)
    b_in_go, b_out_go = Signal(bool(0)), Signal(bool(0))  # the sequencer asks for a batch image's load or store
    b_last = Signal(bool(0))  # the batch image in flight is the last

    @always_comb
    def beat_mask():
        if x_left >= beat:
            x_bmask.next = full_beat
        else:
            x_bmask.next = (1 << x_left[beat_bits:]) - 1

    @always_comb
    def xfer_comb():
        x_beat.next = x_state == x_state_t.LOAD and s_axis_tvalid
        s_axis_tready.next = x_state == x_state_t.LOAD or x_state == x_state_t.SWALLOW
        m_axis_tvalid.next = x_state == x_state_t.SEND
        # bytes past the end of a store are zero
        if x_left >= beat:
            m_axis_tdata.next = x_word
        else:
            m_axis_tdata.next = x_word & ((1 << (8 * x_left[beat_bits:])) - 1)
        m_axis_tlast.next = x_state == x_state_t.SEND and x_left <= beat and x_tlast
        words = x_ptr >> beat_bits
        im_wa.next = words >> 1
        im_wd.next = s_axis_tdata
        im_we0.next = 0
        im_we1.next = 0
        if x_beat and x_mem == m_instr:
            if words[0]:
                im_we1.next = x_bmask
            else:
                im_we0.next = x_bmask
        x_im_ra.next = words >> 1
        x_wm_addr.next = x_ptr >> word_shift
        wm_wd.next = beat_everywhere
        x_lane.next = words & (lane_words - 1)
        wm_we.next = 0
        if x_beat and x_mem == m_weights:
            wm_we.next = x_bmask << (BEAT * (words & (lane_words - 1)))
        x_am_wa.next = x_ptr
        x_am_ra.next = x_ptr
        x_am_we.next = x_beat and x_mem == m_arena
        x_am_wd.next = s_axis_tdata
        x_am_mask.next = x_bmask
        # the word a store sends: the arena's first four lanes, or the selected instruction bank
        if x_mem == m_arena:
            x_rd_word.next = am_rd[8 * beat:]
        elif x_mem == m_weights:
            x_rd_word.next = (wm_rd_a >> (8 * BEAT * x_lane_q)) & ((1 << (8 * BEAT)) - 1)
        elif x_ptr_q[beat_bits]:
            x_rd_word.next = im_rd1
        else:
            x_rd_word.next = im_rd0

    @always(clk.posedge)
    def xfer_seq():
        x_ptr_q.next = x_ptr
        x_lane_q.next = x_lane
        if rst or soft_reset:
            x_state.next = x_state_t.IDLE
            xfer_busy.next = 0
            xfer_done.next = 0
            x_err.next = 0
        elif x_state == x_state_t.IDLE:
            if start:
                x_err.next = 0
            if (load_go or store_go) and not busy:
                size = 0
                if xfer_mem == m_instr:
                    size = imem_bytes
                elif xfer_mem == m_weights:
                    size = wmem_bytes
                elif xfer_mem == m_arena:
                    size = amem_bytes
                x_mem.next = xfer_mem[2:]
                x_ptr.next = xfer_addr
                x_left.next = xfer_bytes
                x_tlast.next = 1
                xfer_done.next = 0
                x_err.next = 0
                if (xfer_addr[beat_bits:] != 0 or xfer_bytes == 0 or size == 0 or xfer_addr > size or xfer_bytes > size
                        or xfer_addr + xfer_bytes > size):
                    x_err.next = 1
                    if load_go:
                        xfer_busy.next = 1
                        x_state.next = x_state_t.SWALLOW
                elif load_go:
                    xfer_busy.next = 1
                    x_state.next = x_state_t.LOAD
                else:
                    xfer_busy.next = 1
                    x_state.next = x_state_t.READ
            elif b_in_go or b_out_go:
                # a batch image: spans checked at the start, packets that span the whole batch
                x_mem.next = m_arena
                x_tlast.next = b_last
                xfer_done.next = 0
                x_err.next = 0
                xfer_busy.next = 1
                if b_in_go:
                    x_ptr.next = in_addr
                    x_left.next = in_bytes
                    x_state.next = x_state_t.LOAD
                else:
                    x_ptr.next = out_addr
                    x_left.next = out_bytes
                    x_state.next = x_state_t.READ
        elif x_state == x_state_t.LOAD:
            if s_axis_tvalid:
                x_ptr.next = x_ptr + beat
                if x_left <= beat:
                    x_left.next = 0
                    if s_axis_tlast == x_tlast:
                        xfer_busy.next = 0
                        xfer_done.next = 1
                        x_state.next = x_state_t.IDLE
                    elif s_axis_tlast:  # the packet ended before the batch's last image
                        x_err.next = 1
                        xfer_busy.next = 0
                        x_state.next = x_state_t.IDLE
                    else:
                        x_err.next = 1
                        x_state.next = x_state_t.SWALLOW
                else:
                    x_left.next = x_left - beat
                    if s_axis_tlast:
                        x_err.next = 1
                        xfer_busy.next = 0
                        x_state.next = x_state_t.IDLE
        elif x_state == x_state_t.SWALLOW:
            if s_axis_tvalid and s_axis_tlast:
                xfer_busy.next = 0
                x_state.next = x_state_t.IDLE
        elif x_state == x_state_t.READ:
            x_state.next = x_state_t.WAIT
        elif x_state == x_state_t.WAIT:
            x_word.next = x_rd_word
            x_state.next = x_state_t.SEND
        elif x_state == x_state_t.SEND:
            if m_axis_tready:
                x_ptr.next = x_ptr + beat
                if x_left <= beat:
                    x_left.next = 0
                    xfer_busy.next = 0
                    xfer_done.next = 1
                    x_state.next = x_state_t.IDLE
                else:
                    x_left.next = x_left - beat
                    x_state.next = x_state_t.READ

    insts += [beat_mask, xfer_comb, xfer_seq]

    # ---- the convolution engine's ports (the engine and its checks are at the end) ----------------------------
    c_ar_addr, c_aw_addr = Signal(intbv(0)[abw:]), Signal(intbv(0)[abw:])
    c_aw_mask = Signal(intbv(0)[rows:])
    c_sums = [signed(PE_ACC_BITS) for _ in range(rows)]
    c_bias, c_mult, c_shift = signed(PE_ACC_BITS), signed(MULT_BITS), Signal(intbv(0)[6:])
    c_y, c_wdata = Signal(intbv(0)[8 * rows:]), Signal(intbv(0)[8 * rows:])  # the lanes' bytes; what the engine writes
    c_drain = {"acc": c_sums, "bias": c_bias, "mult": c_mult, "shift": c_shift, "y": c_y,
               "data": c_wdata}
    c_aw_en, c_last, c_start = Signal(bool(0)), Signal(bool(0)), Signal(bool(0))
    c_wa_addr, c_wb_addr = Signal(intbv(0)[wmw:]), Signal(intbv(0)[wmw:])
    conv_err = Signal(intbv(0)[8:])
    c_compute, c_stall, c_steps, c_sensitive, c_regions = word(), word(), word(), word(), word()
    i_busy, i_stall, i_compute, i_steps, i_sensitive, i_regions = (rg.COUNTERS.index(n) for n in (
        "busy_cycles", "stall_cycles", "compute_cycles", "mac_steps", "sensitive_regions", "total_regions"))

    # ---- sequencer ----------------------------------------------------------------------------------------
    s_t = enum("IDLE", "FETCH", "EXEC", "DRAIN", "CONV", "WRITEBACK", "B_IN", "B_IN_WAIT", "B_OUT", "B_OUT_WAIT")
    state = Signal(s_t.IDLE)
    batch_n = word()  # BATCH as it was at the start
    batch_run = Signal(bool(0))  # the start runs a batch

    @always_comb
    def batch_flags():
        b_in_go.next = state == s_t.B_IN
        b_out_go.next = state == s_t.B_OUT
        b_last.next = b_image + 1 == batch_n
        cnt_acc.next = b_image != 0

    insts.append(batch_flags)
    instr = Signal(intbv(0)[64 * (FETCH_PAIRS - 1):])
    # pairs shift in from the top: in the last fetch cycle `fetched` holds the whole instruction
    fetched = Signal(intbv(0)[64 * FETCH_PAIRS:])
    fields = {f.name: fetched(32 * f.word + f.lsb + f.width, 32 * f.word + f.lsb) if f.width > 1
              else fetched(32 * f.word + f.lsb) for f in FIELD.values()}
    f_opcode, f_layer, f_s0_signed, f_s1_signed = (fields[n] for n in ("opcode", "layer", "s0_signed", "s1_signed"))
    f_src0, f_src1, f_dst = fields["src0"], fields["src1"], fields["dst"]
    f_cin, f_ih, f_iw = fields["cin"], fields["ih"], fields["iw"]
    f_mult0, f_mult1, f_shift0 = fields["mult0"], fields["mult1"], fields["shift0"]
    f_clip_lo, f_clip_hi = fields["clip_lo"], fields["clip_hi"]
    cyc = word()
    seg_end = Signal(intbv(0)[33:])
    n_elems = Signal(intbv(0)[48:])
    # sizes of the instruction's tensors, wide enough that no field values wrap them (the range checks
    # compare them with memory sizes as the emulator does, in unbounded integers)
    size_bits = FIELD["cin"].width + FIELD["ih"].width + FIELD["iw"].width + 1
    in_size = Signal(intbv(0)[size_bits:])

    @always_comb
    def input_size():
        in_size.next = f_cin * f_ih * f_iw

    insts.append(input_size)
    e_im_ra = Signal(modbv(0)[ipw:])
    e_am_ra, e_am_wa = Signal(modbv(0)[abw:]), Signal(modbv(0)[abw:])
    e_am_we = Signal(bool(0))
    e_am_mask = Signal(intbv(0)[rows:])
    layer = Signal(intbv(0)[lw:])
    # element-wise unit
    rd_ptr_a, rd_ptr_b, wr_ptr = Signal(intbv(0)[33:]), Signal(intbv(0)[33:]), Signal(intbv(0)[33:])
    left = Signal(intbv(0)[48:])  # elements not yet read
    second = Signal(bool(0))  # ADD: the next read is the second operand
    is_add = Signal(bool(0))
    s0_signed, s1_signed = Signal(bool(0)), Signal(bool(0))
    mult0 = Signal(intbv(0, min=-(1 << 15), max=1 << 15))
    mult1 = Signal(intbv(0, min=-(1 << 15), max=1 << 15))
    shift = Signal(intbv(0)[6:])
    clip_lo = Signal(intbv(0, min=-(1 << 15), max=1 << 15))
    clip_hi = Signal(intbv(0, min=-(1 << 15), max=1 << 15))
    # pipeline tags: stage 1 (read data here), 2, 3, write stage
    t_valid = [Signal(bool(0)) for _ in range(pipe)]
    t_comp = [Signal(bool(0)) for _ in range(pipe)]
    t_last = [Signal(bool(0)) for _ in range(pipe)]
    t_addr = [Signal(intbv(0)[abw:]) for _ in range(pipe)]
    t_mask = [Signal(intbv(0)[rows:]) for _ in range(pipe)]
    issue_valid, issue_comp, issue_last = Signal(bool(0)), Signal(bool(0)), Signal(bool(0))
    issue_mask = Signal(intbv(0)[rows:])
    lane_y = [Signal(intbv(0)[8:]) for _ in range(rows)]
    lane_x_signed = Signal(bool(0))
    lane_capture = Signal(bool(0))
    # the requantizer lanes, shared by the element-wise unit and the convolution drain
    lane_conv = Signal(bool(0))
    lane_m0 = signed(MULT_BITS)
    lane_shift = Signal(intbv(0)[6:])

    for j in range(rows):
        insts.append(requant_lane(clk, lane_conv, c_sums[j], c_bias, am_rd(8 * j + 8, 8 * j),
                                  lane_x_signed, lane_capture, is_add, lane_m0, mult1, lane_shift,
                                  clip_lo, clip_hi, lane_y[j]))
    y_all = ConcatSignal(*reversed(lane_y))

    @always_comb
    def lane_bytes():
        c_y.next = y_all

    insts.append(lane_bytes)

    @always_comb
    def lane_operands():
        lane_conv.next = state == s_t.CONV
        if state == s_t.CONV:
            lane_m0.next = c_mult
            lane_shift.next = c_shift
        else:
            lane_m0.next = mult0
            lane_shift.next = shift

    @always_comb
    def fetch_shift():
        fetched.next = concat(im_rd1, im_rd0, instr)

    @always_comb
    def exec_comb():
        e_im_ra.next = pc * pair_stride + cyc
        issue_valid.next = state == s_t.EXEC
        issue_comp.next = state == s_t.EXEC and (not is_add or second)
        issue_last.next = state == s_t.EXEC and (not is_add or second) and left <= rows
        if left >= rows:
            issue_mask.next = (1 << rows) - 1
        else:
            issue_mask.next = (1 << left[ob + 1:]) - 1
        if second:
            e_am_ra.next = rd_ptr_b[abw:]
        else:
            e_am_ra.next = rd_ptr_a[abw:]
        lane_capture.next = t_valid[0] and not t_comp[0]
        if is_add and t_comp[0]:
            lane_x_signed.next = s1_signed
        else:
            lane_x_signed.next = s0_signed
        e_am_wa.next = t_addr[pipe - 1]
        e_am_mask.next = t_mask[pipe - 1]
        e_am_we.next = t_valid[pipe - 1] and t_comp[pipe - 1]

    @always(clk.posedge)
    def pipeline_tags():
        t_valid[0].next = issue_valid
        t_comp[0].next = issue_comp
        t_last[0].next = issue_last
        t_addr[0].next = wr_ptr[abw:]
        t_mask[0].next = issue_mask
        for i in range(1, pipe):
            t_valid[i].next = t_valid[i - 1]
            t_comp[i].next = t_comp[i - 1]
            t_last[i].next = t_last[i - 1]
            t_addr[i].next = t_addr[i - 1]
            t_mask[i].next = t_mask[i - 1]

    @always(clk.posedge)
    def sequencer():
        cnt_we.next = 0
        if rst or soft_reset:
            state.next = s_t.IDLE
            busy.next = 0
            done.next = 0
            error.next = 0
            error_code.next = e_ok
            error_pc.next = 0
            pc.next = 0
        elif state == s_t.IDLE:
            if start and not xfer_busy:
                done.next = 0
                error.next = 0
                error_code.next = e_ok
                pc.next = instr_first
                seg_end.next = instr_first + instr_count
                cycles.next = 0
                cyc.next = 0
                b_image.next = 0
                batch_n.next = batch
                batch_run.next = batch != 0
                if batch == 0:
                    busy.next = 1
                    state.next = s_t.FETCH
                elif (in_addr[beat_bits:] != 0 or in_bytes[beat_bits:] != 0 or in_bytes == 0 or in_addr > amem_bytes
                      or in_bytes > amem_bytes or in_addr + in_bytes > amem_bytes
                      or out_addr[beat_bits:] != 0 or out_bytes[beat_bits:] != 0 or out_bytes == 0
                      or out_addr > amem_bytes or out_bytes > amem_bytes or out_addr + out_bytes > amem_bytes):
                    # each term at most the arena's size before the sum: no 32-bit wrap lets a span through
                    error.next = 1
                    error_code.next = e_xfer
                    error_pc.next = instr_first
                else:
                    busy.next = 1
                    state.next = s_t.B_IN
        elif state == s_t.B_IN:
            state.next = s_t.B_IN_WAIT  # the transfer engine takes the request at this edge
        elif state == s_t.B_IN_WAIT:
            if not xfer_busy:
                if x_err:
                    busy.next = 0
                    error_pc.next = pc
                    state.next = s_t.IDLE
                else:
                    pc.next = instr_first
                    cyc.next = 0
                    state.next = s_t.FETCH
        elif state == s_t.B_OUT:
            state.next = s_t.B_OUT_WAIT
        elif state == s_t.B_OUT_WAIT:
            if not xfer_busy:
                b_image.next = b_image + 1
                if b_last:
                    busy.next = 0
                    done.next = 1
                    state.next = s_t.IDLE
                else:
                    state.next = s_t.B_IN
        elif state == s_t.FETCH:
            cycles.next = cycles + 1
            cyc.next = cyc + 1
            if cyc == 0 and (pc >= seg_end or pc >= imem_instrs):
                busy.next = 0
                error.next = 1
                error_code.next = e_range
                error_pc.next = pc
                state.next = s_t.IDLE
            if cyc >= 1 and cyc <= FETCH_PAIRS:
                instr.next = fetched[64 * FETCH_PAIRS:64]
            if cyc == setup_last:
                # the last pair arrives now: every field is read from `fetched`
                opc = int(f_opcode)
                n_elems.next = in_size
                layer.next = f_layer
                is_add.next = opc == op_add
                s0_signed.next = f_s0_signed
                s1_signed.next = f_s1_signed
                mult0.next = f_mult0.signed()
                mult1.next = f_mult1.signed()
                clip_lo.next = f_clip_lo.signed()
                clip_hi.next = f_clip_hi.signed()
                sh = int(f_shift0)
                if sh > shift_sat:
                    sh = shift_sat
                shift.next = sh
                rd_ptr_a.next = f_src0
                rd_ptr_b.next = f_src1
                wr_ptr.next = f_dst
                left.next = in_size
                second.next = 0
                if opc == op_end:
                    if batch_run:
                        state.next = s_t.B_OUT
                    else:
                        busy.next = 0
                        done.next = 1
                        state.next = s_t.IDLE
                elif opc == op_nop:
                    pc.next = pc + 1
                    cyc.next = 0
                elif opc == op_conv or opc == op_pool:
                    if conv_err != e_ok:
                        busy.next = 0
                        error.next = 1
                        error_code.next = conv_err
                        error_pc.next = pc
                        state.next = s_t.IDLE
                    else:
                        state.next = s_t.CONV
                elif opc != op_move and opc != op_add:
                    busy.next = 0
                    error.next = 1
                    error_code.next = e_opcode
                    error_pc.next = pc
                    state.next = s_t.IDLE
                elif (f_src0 + in_size > amem_bytes or f_dst + in_size > amem_bytes
                      or (opc == op_add and f_src1 + in_size > amem_bytes)):
                    busy.next = 0
                    error.next = 1
                    error_code.next = e_range
                    error_pc.next = pc
                    state.next = s_t.IDLE
                elif in_size == 0:
                    state.next = s_t.DRAIN
                else:
                    state.next = s_t.EXEC
        elif state == s_t.CONV:
            cycles.next = cycles + 1
            cyc.next = cyc + 1
            if c_last:
                cnt_we.next = 1
                cnt_wa.next = layer
                bank_words = intbv(0)[32 * n_counters:]
                bank_words[32 * i_busy + 32:32 * i_busy] = cyc + 1
                bank_words[32 * i_stall + 32:32 * i_stall] = c_stall
                bank_words[32 * i_compute + 32:32 * i_compute] = c_compute
                bank_words[32 * i_steps + 32:32 * i_steps] = c_steps
                bank_words[32 * i_sensitive + 32:32 * i_sensitive] = c_sensitive
                bank_words[32 * i_regions + 32:32 * i_regions] = c_regions
                cnt_new.next = bank_words
                state.next = s_t.WRITEBACK
        elif state == s_t.EXEC:
            cycles.next = cycles + 1
            cyc.next = cyc + 1
            if is_add and not second:
                second.next = 1
                rd_ptr_a.next = rd_ptr_a + rows
            else:
                second.next = 0
                if not is_add:
                    rd_ptr_a.next = rd_ptr_a + rows
                rd_ptr_b.next = rd_ptr_b + rows
                wr_ptr.next = wr_ptr + rows
                if left <= rows:
                    left.next = 0
                    state.next = s_t.DRAIN
                else:
                    left.next = left - rows
        elif state == s_t.DRAIN:
            cycles.next = cycles + 1
            cyc.next = cyc + 1
            if n_elems == 0 or (t_valid[pipe - 1] and t_last[pipe - 1]):
                cnt_we.next = 1
                cnt_wa.next = layer
                cnt_new.next = cyc + 1
                state.next = s_t.WRITEBACK
        elif state == s_t.WRITEBACK:
            cycles.next = cycles + 1
            pc.next = pc + 1
            cyc.next = 0
            state.next = s_t.FETCH

    @always_comb
    def arena_ports():
        if xfer_busy:
            am_ra.next = x_am_ra
            am_wa.next = x_am_wa
            am_wd.next = x_am_wd
            am_mask.next = x_am_mask
            am_we.next = x_am_we
            im_ra.next = x_im_ra
        else:
            im_ra.next = e_im_ra
            if state == s_t.CONV or c_start:  # a split CONV reads its first window as it starts
                am_wd.next = c_wdata
                am_ra.next = c_ar_addr
                am_wa.next = c_aw_addr
                am_mask.next = c_aw_mask
                am_we.next = c_aw_en
            else:
                am_wd.next = y_all
                am_ra.next = e_am_ra
                am_wa.next = e_am_wa
                am_mask.next = e_am_mask
                am_we.next = e_am_we
        if xfer_busy:
            wm_addr_a.next = x_wm_addr
        else:
            wm_addr_a.next = c_wa_addr
        wm_addr_b.next = c_wb_addr
        any_error.next = error or x_err
        irq.next = done or error or x_err

    insts += [fetch_shift, exec_comb, pipeline_tags, sequencer, arena_ports, lane_operands]

    # ---- convolution engine -------------------------------------------------------------------------------
    mode_core, region_core, threshold_core, sdp_core = word(), word(), word(), word()
    layer_q = Signal(intbv(0)[lw:])
    f_zero_skip, f_insens_hi, f_drq = Signal(bool(0)), Signal(bool(0)), Signal(bool(0))
    f_rh, f_rw = Signal(intbv(0)[rh_field.width:]), Signal(intbv(0)[rw_field.width:])
    f_lrh, f_lrw = Signal(intbv(0)[REGION_BITS:]), Signal(intbv(0)[REGION_BITS:])  # their log2 (when valid)
    f_sdp, f_daq = Signal(bool(0)), Signal(bool(0))
    f_lg = Signal(intbv(0)[log2(max(SDP_G_VALUES)).bit_length():])  # log2 of SDP's g (when valid)
    f_k = Signal(intbv(0)[(2 * max(SDP_G_VALUES)).bit_length():])  # SDP's k (when valid: at most 2g)
    layer_lsb = FIELD["layer"].lsb
    assert FIELD["layer"].word == 0
    # the engine's copies of the layer's precision registers, read at the fetched layer
    insts.append(ram(clk, prec_we(mode_index), prec_wa, wr_data, layer_q, mode_core, rg.MAX_LAYERS))
    insts.append(ram(clk, prec_we(region_index), prec_wa, wr_data, layer_q, region_core, rg.MAX_LAYERS))
    insts.append(ram(clk, prec_we(threshold_index), prec_wa, wr_data, layer_q, threshold_core, rg.MAX_LAYERS))
    insts.append(ram(clk, prec_we(sdp_index), prec_wa, wr_data, layer_q, sdp_core, rg.MAX_LAYERS))
    cin_g, cout_g = Signal(intbv(0)[FIELD["cin"].width:]), Signal(intbv(0)[FIELD["cout"].width:])
    col_tiles = Signal(intbv(0)[FIELD["cout"].width:])
    blocks = Signal(intbv(0)[FIELD["cin"].width:])
    f_split, f_pool = Signal(bool(0)), Signal(bool(0))
    engine_fields = {**fields, "zero_skip": f_zero_skip, "cin_g": cin_g, "cout_g": cout_g, "col_tiles": col_tiles,
                     "blocks": blocks, "split": f_split, "pool": f_pool, "drq": f_drq, "insens_hi": f_insens_hi,
                     "rh": f_rh, "lrh": f_lrh, "lrw": f_lrw, "threshold": threshold_core, "sdp": f_sdp, "lg": f_lg,
                     "k": f_k, "daq": f_daq, "mask": mask_regs}
    insts.append(conv_engine(rows, arch.cols, abw, wmw, clk, rst, c_start, engine_fields, c_ar_addr, am_rd,
                             c_aw_en, c_aw_addr, c_aw_mask, c_wa_addr, wm_rd_a, c_wb_addr, wm_rd_b, c_drain,
                             c_last, c_compute, c_stall, c_steps, c_sensitive, c_regions))
    f_aux, f_cout, f_groups, f_oh, f_ow = fields["aux"], fields["cout"], fields["groups"], fields["oh"], fields["ow"]
    f_kh, f_kw, f_sw, f_dh, f_dw = fields["kh"], fields["kw"], fields["sw"], fields["dh"], fields["dw"]
    f_pt, f_pl, f_pb, f_pr, f_param = fields["pt"], fields["pl"], fields["pb"], fields["pr"], fields["param"]

    @always_comb
    def counter_port():
        # a run reads the bank of the instruction's layer (to add to it); the host reads between runs
        if busy:
            cnt_ra.next = layer_q
        else:
            cnt_ra.next = rd_addr[lw + cnt_shift:cnt_shift]

    insts.append(counter_port)

    @always(clk.posedge)
    def layer_of_instruction():
        # word 0 (with the layer field) arrives in the first fetch cycle; the mode register follows it
        if state == s_t.FETCH and cyc == 1:
            layer_q.next = im_rd0[layer_lsb + lw:layer_lsb]

    weight_size = Signal(intbv(0)[64:])  # bytes: groups * col_tiles < 2**16, the other factors are fields
    out_size = Signal(intbv(0)[size_bits:])

    @always_comb
    def group_sizes():
        # one pair of field-wide dividers, for the checks and the engine (as are the tile counts below)
        if f_groups == 0:
            cin_g.next = 0
            cout_g.next = 0
        else:
            cin_g.next = f_cin // f_groups
            cout_g.next = f_cout // f_groups

    cols_bits, block_bits = log2(cols), log2(BLOCK)
    pool_row = POOL_ROW_TILES * rows

    @always_comb
    def weight_tiles():
        col_tiles.next = (cout_g + cols - 1) >> cols_bits
        blocks.next = (cin_g + BLOCK - 1) >> block_bits

    # the output size must be the window's over the input (contract isa.geometry_error; dilation is 1 here):
    # (oh - 1) * sh <= ih + pt + pb - kh < oh * sh, likewise across
    span_bits = FIELD["ih"].width + FIELD["pt"].width + 2
    span_h, span_w = signed(span_bits), signed(span_bits)
    step_bits = FIELD["oh"].width + FIELD["sh"].width
    first_h, last_h = Signal(intbv(0)[step_bits:]), Signal(intbv(0)[step_bits:])
    first_w, last_w = Signal(intbv(0)[step_bits:]), Signal(intbv(0)[step_bits:])
    bad_geometry = Signal(bool(0))
    f_sh = fields["sh"]

    @always_comb
    def window_spans():
        span_h.next = f_ih + f_pt + f_pb - f_kh
        span_w.next = f_iw + f_pl + f_pr - f_kw
        first_h.next = (f_oh - 1) * f_sh
        last_h.next = f_oh * f_sh
        first_w.next = (f_ow - 1) * f_sw
        last_w.next = f_ow * f_sw

    @always_comb
    def window_geometry():
        bad = f_sh == 0 or f_sw == 0 or f_kh == 0 or f_kw == 0 or f_oh == 0 or f_ow == 0
        if span_h < 0 or span_w < 0:
            bad = True
        elif span_h[span_bits - 1:] < first_h or span_h[span_bits - 1:] >= last_h:
            bad = True
        elif span_w[span_bits - 1:] < first_w or span_w[span_bits - 1:] >= last_w:
            bad = True
        bad_geometry.next = bad

    @always_comb
    def conv_sizes():
        weight_size.next = f_groups * col_tiles * f_kh * blocks * f_kw * wbytes
        if f_aux == 1 and f_opcode == op_conv:  # fused 2x2 pooling writes the pooled output
            out_size.next = f_cout * (f_oh >> 1) * (f_ow >> 1)
        else:
            out_size.next = f_cout * f_oh * f_ow

    @always_comb
    def split_mapping():
        # contract timing.reduction_split: one output pixel of a 1x1 kernel, no padding
        f_split.next = (f_opcode == op_conv and f_oh == 1 and f_ow == 1 and f_kh == 1 and f_kw == 1
                        and f_pt + f_pl + f_pb + f_pr == 0)

    @always_comb
    def conv_check():
        f_zero_skip.next = mode_core[skip_field.lsb]
        f_insens_hi.next = mode_core[hi_field.lsb]
        mode = mode_core[mode_field.lsb + mode_field.width:mode_field.lsb]
        f_drq.next = f_opcode == op_conv and mode == mode_drq
        rh = region_core[rh_field.lsb + rh_field.width:rh_field.lsb]
        rw = region_core[rw_field.lsb + rw_field.width:rw_field.lsb]
        f_rh.next = rh
        f_rw.next = rw
        good_region = (rh != 0 and (rh & (rh - 1)) == 0 and rh <= region_max
                       and rw != 0 and (rw & (rw - 1)) == 0 and rw <= region_max)
        f_sdp.next = f_opcode == op_conv and mode == mode_sdp
        f_daq.next = f_opcode == op_conv and mode == mode_daq
        g_sdp = int(sdp_core[g_field.lsb + g_field.width:g_field.lsb])
        k_sdp = int(sdp_core[k_field.lsb + k_field.width:k_field.lsb])
        good_sdp = g_sdp != 0 and (g_sdp & (g_sdp - 1)) == 0 and g_sdp <= sdp_g_max and k_sdp <= 2 * g_sdp
        f_k.next = k_sdp & ((1 << len(f_k)) - 1)
        err = e_ok
        g = int(f_groups)
        cin = int(f_cin)
        cout = int(f_cout)
        lanes = int(f_ow)
        if lanes > rows:
            lanes = rows
        cg = int(cin_g)
        og = int(cout_g)
        f_pool.next = f_opcode == op_pool
        if f_opcode == op_pool:  # in the emulator's order: window, geometry, input, shape, output
            if f_dh > 1 or f_dw > 1 or (f_sw > MAX_STRIDE and lanes > 1):
                err = e_overflow
            elif int(f_sw) * (lanes - 1) + int(f_kw) > line_bytes:
                err = e_overflow
            elif bad_geometry:
                err = e_overflow
            elif f_pt >= f_kh or f_pb >= f_kh or f_pl >= f_kw or f_pr >= f_kw:
                err = e_overflow  # contract isa.geometry_error: every window holds an input pixel
            elif f_src0 + in_size > amem_bytes:
                err = e_range
            elif cout != cin:
                err = e_overflow
            elif f_dst + out_size > amem_bytes:
                err = e_range
        elif f_src0 + in_size > amem_bytes:
            err = e_range
        elif g == 0 or cg * g != cin or og * g != cout:
            err = e_opcode
        elif f_aux > 1:
            err = e_opcode
        elif mode == mode_drq and not good_region:
            err = e_precision  # contract PrecisionRegs.validate
        elif mode == mode_sdp and not good_sdp:
            err = e_precision
        elif (mode == mode_sdp or mode == mode_daq) and f_split:
            err = e_precision  # contract precision.conv_cost: SDP and DAQ need a spatial layer
        elif mode > mode_last:
            err = e_opcode  # no such mode
        elif f_split and in_size != cin:
            err = e_opcode  # a split over an input larger than 1x1 is not in this build
        elif not f_split and cg * 2 <= BLOCK and og * 2 <= cols and ((g > 1) or (f_oh > 1)):
            err = e_opcode  # passes side by side are not in this build
        elif f_dh != 1 or f_dw != 1 or (f_sw > MAX_STRIDE and lanes > 1):
            err = e_overflow
        elif int(f_sw) * (lanes - 1) + int(f_kw) > line_bytes:
            err = e_overflow
        elif bad_geometry:
            err = e_overflow
        elif f_aux == 1 and (f_oh < 2 or f_ow < 2 or f_ow > pool_row):
            err = e_overflow  # contract array.fused_pool_limits
        elif mode == mode_drq and f_iw > region_row:
            err = e_overflow  # contract array.predictor_limits
        elif (f_src1 & (wbytes - 1)) != 0 or f_src1 + weight_size > wmem_bytes:
            err = e_range
        elif (f_param & (PARAM_BYTES - 1)) != 0 or f_param + cout * PARAM_BYTES > wmem_bytes:
            err = e_range
        elif f_dst + out_size > amem_bytes:
            err = e_range
        conv_err.next = err

    @always_comb
    def region_logs():
        f_lrh.next = 0
        f_lrw.next = 0
        for i in range(1, region_log_max + 1):
            if f_rh == (1 << i):
                f_lrh.next = i
            if f_rw == (1 << i):
                f_lrw.next = i

    g_of_sdp = sdp_core(g_field.lsb + g_field.width, g_field.lsb)

    @always_comb
    def group_log():
        f_lg.next = 0
        for i in range(1, sdp_log_max + 1):
            if g_of_sdp == (1 << i):
                f_lg.next = i

    @always_comb
    def conv_go():
        c_start.next = (state == s_t.FETCH and cyc == setup_last and (f_opcode == op_conv or f_opcode == op_pool)
                        and conv_err == e_ok)

    insts += [layer_of_instruction, group_sizes, weight_tiles, window_spans, window_geometry, conv_sizes, split_mapping,
              conv_check, region_logs, group_log, conv_go]
    return insts
