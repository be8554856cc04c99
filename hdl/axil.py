"""AXI4-Lite slave: turns the host's register accesses into a one-cycle register bus inside the core.

Writes take the whole 32-bit word (WSTRB is not used: every register of the contract is written whole).
A read request on the bus expects its data one cycle later, which gives every register space behind it
(flip-flops or block RAM) the same latency.
"""

from __future__ import annotations

from myhdl import Signal, always, always_comb, block, intbv


@block
def axil_slave(clk, rst, awaddr, awvalid, awready, wdata, wvalid, wready, bresp, bvalid, bready,
               araddr, arvalid, arready, rdata, rresp, rvalid, rready,
               wr_en, wr_addr, wr_data, rd_addr, rd_data):
    """`wr_en` pulses with `wr_addr`/`wr_data`; a read presents `rd_addr` for one cycle and samples `rd_data`
    the cycle after (reads have no side effects)."""
    write_go = Signal(bool(0))
    read_pending = Signal(bool(0))
    reading = Signal(bool(0))

    @always_comb
    def handshake():
        write_go.next = awvalid and wvalid and not bvalid
        awready.next = awvalid and wvalid and not bvalid
        wready.next = awvalid and wvalid and not bvalid
        arready.next = not rvalid and not read_pending and not reading
        bresp.next = 0
        rresp.next = 0

    @always(clk.posedge)
    def seq():
        if rst:
            bvalid.next = 0
            rvalid.next = 0
            wr_en.next = 0
            read_pending.next = 0
            reading.next = 0
        else:
            wr_en.next = write_go
            if write_go:
                wr_addr.next = awaddr
                wr_data.next = wdata
                bvalid.next = 1
            elif bready:
                bvalid.next = 0
            if arvalid and not rvalid and not read_pending and not reading:
                rd_addr.next = araddr
                read_pending.next = 1
            elif read_pending:
                read_pending.next = 0
                reading.next = 1
            elif reading:
                rdata.next = rd_data
                rvalid.next = 1
                reading.next = 0
            elif rvalid and rready:
                rvalid.next = 0

    return handshake, seq


def addr_bits(space: int) -> int:
    return max(1, (space - 1).bit_length())


def word(value: int = 0) -> Signal:
    return Signal(intbv(value)[32:])
