"""On-chip memories, written so that synthesis infers block RAM: one write port, registered reads.

`window_ram` is the activation arena: one byte bank per lane, each with its own address, so that any
`rows` consecutive bytes, at any byte address, are read or written in one cycle (bank b of a window at
address A holds byte (b - A) mod rows of the window, at word A // rows, or the next word for b < A mod rows).
The DRQ flag plane is the same memory with one-bit units.
"""

from __future__ import annotations

from myhdl import ConcatSignal, Signal, always, always_comb, block, concat, intbv, modbv


@block
def ram(clk, we, waddr, wdata, raddr, rdata, depth: int):
    """Simple dual-port RAM of `depth` words of `len(wdata)` bits, one-cycle registered read."""
    mem = [Signal(intbv(0)[len(wdata):]) for _ in range(depth)]

    @always(clk.posedge)
    def access():
        if we:
            mem[waddr].next = wdata
        rdata.next = mem[raddr]

    return access


@block
def ram_bytes(clk, we, waddr, wdata, raddr, rdata, depth: int):
    """Word RAM with one write enable per byte (bit i of `we` writes byte i): a byte lane per RAM."""
    lanes = len(we)
    outs = [Signal(intbv(0)[8:]) for _ in range(lanes)]
    insts = [ram(clk, we(i), waddr, wdata(8 * i + 8, 8 * i), raddr, outs[i], depth) for i in range(lanes)]
    joined = ConcatSignal(*reversed(outs))

    @always_comb
    def join():
        rdata.next = joined

    return insts, join


@block
def window_ram(clk, rd_addr, rd_data, wr_en, wr_addr, wr_data, wr_mask, rows: int, depth: int):
    """`rows` (a power of two) banks of `depth` units (a unit is len(rd_data) // rows bits: a byte for the
    arena, a bit for the DRQ flag plane). Read: `rd_data` (lane j = unit rd_addr + j) one cycle after
    `rd_addr`. Write: lanes j with `wr_mask[j]` set store unit j of `wr_data` at `wr_addr + j`."""
    ob = (rows - 1).bit_length()
    wb = (depth - 1).bit_length()
    unit = len(rd_data) // rows
    rd_off = Signal(intbv(0)[ob:])
    bank_out = [Signal(intbv(0)[unit:]) for _ in range(rows)]
    bank_raddr = [Signal(modbv(0)[wb:]) for _ in range(rows)]
    bank_waddr = [Signal(modbv(0)[wb:]) for _ in range(rows)]
    bank_we = [Signal(bool(0)) for _ in range(rows)]
    wr_banked = Signal(intbv(0)[unit * rows:])
    mask_banked = Signal(intbv(0)[rows:])
    rd_banked = ConcatSignal(*reversed(bank_out))
    insts = []

    @always_comb
    def rotate_write():
        # lane j goes to bank (A + j) mod rows: rotate left by A mod rows units
        off = int(wr_addr[ob:])
        d = intbv(0)[2 * unit * rows:]
        d[:] = concat(wr_data, wr_data)
        d[:] = d >> (unit * (rows - off))
        wr_banked.next = d[unit * rows:]
        m = intbv(0)[2 * rows:]
        m[:] = concat(wr_mask, wr_mask)
        m[:] = m >> (rows - off)
        mask_banked.next = m[rows:]

    insts.append(rotate_write)

    @always(clk.posedge)
    def remember_offset():
        rd_off.next = rd_addr[ob:]

    insts.append(remember_offset)

    @always_comb
    def rotate_read():
        d = intbv(0)[2 * unit * rows:]
        d[:] = concat(rd_banked, rd_banked)
        d[:] = d >> (unit * rd_off)
        rd_data.next = d[unit * rows:]

    insts.append(rotate_read)

    for b in range(rows):
        insts.append(bank_addresses(rd_addr, wr_addr, wr_en, mask_banked, bank_raddr[b], bank_waddr[b],
                                     bank_we[b], b, ob))
        insts.append(ram(clk, bank_we[b], bank_waddr[b], wr_banked(unit * b + unit, unit * b), bank_raddr[b],
                         bank_out[b], depth))
    return insts


@block
def bank_addresses(rd_addr, wr_addr, wr_en, mask_banked, raddr, waddr, we, b: int, ob: int):
    @always_comb
    def addresses():
        if b < rd_addr[ob:]:
            raddr.next = (rd_addr >> ob) + 1
        else:
            raddr.next = rd_addr >> ob
        if b < wr_addr[ob:]:
            waddr.next = (wr_addr >> ob) + 1
        else:
            waddr.next = wr_addr >> ob
        we.next = wr_en and mask_banked[b]

    return addresses


@block
def ram_dual_bytes(clk, we, addr_a, wdata, rdata_a, addr_b, rdata_b, nbytes: int, depth: int):
    """`depth` words of `nbytes` bytes: port A writes (bit i of `we` enables byte i) and reads at `addr_a`,
    port B reads at `addr_b`; both reads registered. Converted from a Verilog template (MyHDL cannot convert
    a write to part of a memory word): the form synthesis maps to true-dual-port block RAM with byte
    enables."""
    mem = [Signal(intbv(0)[8 * nbytes:]) for _ in range(depth)]

    @always(clk.posedge)
    def access():
        word = intbv(int(mem[int(addr_a)]))[8 * nbytes:]
        for i in range(nbytes):
            if we[i]:
                word[8 * i + 8:8 * i] = wdata[8 * i + 8:8 * i]
        mem[int(addr_a)].next = word
        rdata_a.next = mem[int(addr_a)]
        rdata_b.next = mem[int(addr_b)]

    rdata_a.driven = "reg"
    rdata_b.driven = "reg"
    we.read = wdata.read = addr_a.read = addr_b.read = True
    return access


ram_dual_bytes.vhdl_code = """
${rdata_a}_ram: block
    type mem_t is array(0 to $depth-1) of unsigned(8*$nbytes-1 downto 0);
    signal mem: mem_t;
begin
    process ($clk) begin
        if rising_edge($clk) then
            for i in 0 to $nbytes-1 loop
                if $we(i) = '1' then
                    mem(to_integer($addr_a))(8*i+7 downto 8*i) <= $wdata(8*i+7 downto 8*i);
                end if;
            end loop;
            $rdata_a <= mem(to_integer($addr_a));
            $rdata_b <= mem(to_integer($addr_b));
        end if;
    end process;
end block;
"""
ram_dual_bytes.verilog_code = """
reg [8*$nbytes-1:0] ${rdata_a}_mem [0:$depth-1];
integer ${rdata_a}_i;
always @(posedge $clk) begin
    for (${rdata_a}_i = 0; ${rdata_a}_i < $nbytes; ${rdata_a}_i = ${rdata_a}_i + 1)
        if ($we[${rdata_a}_i]) ${rdata_a}_mem[$addr_a][8*${rdata_a}_i +: 8] <= $wdata[8*${rdata_a}_i +: 8];
    $rdata_a <= ${rdata_a}_mem[$addr_a];
    $rdata_b <= ${rdata_a}_mem[$addr_b];
end
"""
