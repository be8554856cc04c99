"""The RTL simulation harness on the generated core: identity registers, memory round trips, transfer errors,
register banks, and a short MOVE segment. One simulator build per session (cached across sessions)."""

from __future__ import annotations

import random

import pytest

import dynq.boards
from dynq.contract import CONTRACT_VERSION, ErrorCode, Memory, Op, encode
from dynq.contract import registers as rg
from dynq.contract.isa import INSTR_BYTES
from dynq.contract.registers import DeviceError
from dynq.hdl.sim import PollTimeout, RtlSim, RtlSimError, bit, build, reg

BOARD = "pynq-z2"


@pytest.fixture(scope="session")
def rtl_binary():
    return build(BOARD)


@pytest.fixture
def sim(rtl_binary):
    with RtlSim(BOARD, binary=rtl_binary, timeout=60) as s:
        yield s


def test_identity_registers(sim: RtlSim) -> None:
    arch = dynq.boards.load(BOARD).arch
    assert sim.read(reg("ID")) == rg.ID_MAGIC == 0x44594E51
    assert sim.read(reg("CONTRACT")) == CONTRACT_VERSION
    assert sim.read(reg("FINGERPRINT")) == arch.fingerprint
    assert sim.read(reg("IMEM_BYTES")) == arch.imem_bytes
    assert sim.read(reg("WMEM_BYTES")) == arch.wmem_bytes
    assert sim.read(reg("AMEM_BYTES")) == arch.amem_bytes
    assert sim.read(reg("STATUS")) == 0


@pytest.mark.parametrize("memory", list(Memory))
def test_load_store_round_trip(sim: RtlSim, memory: Memory) -> None:
    rng = random.Random(int(memory))
    size = {Memory.INSTR: sim.board.arch.imem_bytes, Memory.WEIGHTS: sim.board.arch.wmem_bytes,
            Memory.ARENA: sim.board.arch.amem_bytes}[memory]
    # a length that is not a multiple of 4, one at the end of the memory, one whole word, one byte
    for addr, n in ((0, 1001), (size - 256, 256), (4 * rng.randrange(size // 8), 4), (8, 1)):
        data = rng.randbytes(n)
        sim.load(memory, addr, data)
        assert sim.store(memory, addr, n) == data, f"{memory.name} at {addr}, {n} bytes"


@pytest.mark.parametrize("memory", list(Memory))
def test_store_zeroes_past_the_end(sim: RtlSim, memory: Memory) -> None:
    """CTRL.store: the last beat's bytes past XFER_BYTES are zero (not the memory's next bytes)."""
    sim.load(memory, 64, bytes(range(8)))
    sim.write(reg("XFER_BYTES"), 6)
    sim.write(reg("CTRL"), bit("CTRL", "store"))
    assert sim.receive_beats(2) == [(0x03020100, False), (0x00000504, True)]
    sim.poll(reg("STATUS"), bit("STATUS", "xfer") | bit("STATUS", "xfer_done"), bit("STATUS", "xfer_done"), 100)


@pytest.mark.parametrize("memory", list(Memory))
def test_short_load_keeps_neighbours(sim: RtlSim, memory: Memory) -> None:
    """A load of XFER_BYTES bytes writes those bytes only, even when its last beat is partial."""
    sim.load(memory, 64, bytes(range(16)))
    sim.load(memory, 68, b"\xaa\xbb\xcc")
    assert sim.store(memory, 64, 16) == bytes(range(4)) + b"\xaa\xbb\xcc" + bytes(range(7, 16))


@pytest.mark.parametrize(("addr", "nbytes"), [(2, 8), (0, None), (None, 8), ((1 << 32) - 4, 8)],
                         ids=["misaligned", "length", "end", "end-wraps-32-bits"])
def test_transfer_errors(sim: RtlSim, addr: int | None, nbytes: int | None) -> None:
    size = sim.board.arch.amem_bytes
    addr = size - 4 if addr is None else addr
    nbytes = size + 4 if nbytes is None else nbytes
    with pytest.raises(DeviceError) as err:
        sim.load(Memory.ARENA, addr, bytes(nbytes))
    assert err.value.code == ErrorCode.XFER
    status = sim.read(reg("STATUS"))
    assert status & bit("STATUS", "error") and not status & bit("STATUS", "xfer")
    assert sim.read(reg("ERROR")) == ErrorCode.XFER
    with pytest.raises(DeviceError) as err:
        sim.store(Memory.ARENA, addr, nbytes)
    assert err.value.code == ErrorCode.XFER
    # the core still works: a good transfer clears the error
    sim.load(Memory.ARENA, 0, b"\x01\x02\x03\x04\x05")
    assert sim.store(Memory.ARENA, 0, 5) == b"\x01\x02\x03\x04\x05"
    assert not sim.read(reg("STATUS")) & bit("STATUS", "error")


def test_bad_memory_select(sim: RtlSim) -> None:
    sim.write(reg("XFER_MEM"), 3)
    sim.write(reg("XFER_ADDR"), 0)
    sim.write(reg("XFER_BYTES"), 4)
    sim.write(reg("CTRL"), bit("CTRL", "load"))
    sim.send(b"\0\0\0\0")
    sim.poll(reg("STATUS"), bit("STATUS", "xfer"), 0, 100)
    assert sim.read(reg("ERROR")) == ErrorCode.XFER


def test_register_banks(sim: RtlSim) -> None:
    for layer, name, value in ((0, "MODE", 0x19), (3, "THRESHOLD", 0xDEADBEEF), (255, "SDP", 0x1008),
                               (17, "REGION", 0x0404)):
        sim.write(rg.precision_offset(layer, name), value)
    assert sim.read(rg.precision_offset(0, "MODE")) == 0x19
    assert sim.read(rg.precision_offset(3, "THRESHOLD")) == 0xDEADBEEF
    assert sim.read(rg.precision_offset(255, "SDP")) == 0x1008
    assert sim.read(rg.precision_offset(17, "REGION")) == 0x0404
    assert sim.read(rg.precision_offset(4, "THRESHOLD")) == 0
    last = rg.MASK_BASE + 4 * (rg.MASK_WORDS - 1)
    sim.write(rg.MASK_BASE, 0x12345678)
    sim.write(last, 0xA5A5A5A5)
    assert sim.read(rg.MASK_BASE) == 0x12345678
    assert sim.read(last) == 0xA5A5A5A5
    assert sim.read(rg.MASK_BASE + 4) == 0
    for name in rg.COUNTERS:
        assert sim.read(rg.counter_offset(200, name)) == 0
    assert sim.read(rg.counter_offset(rg.MAX_LAYERS - 1, rg.COUNTERS[-1])) == 0


def test_move_segment(sim: RtlSim) -> None:
    """Identity MOVE (int8 to int8, multiplier 1, shift 0) of an odd length to an unaligned address."""
    from dynq.contract import timing

    rng = random.Random(7)
    n, src, dst = 333, 40, 1003
    data = rng.randbytes(n)
    move = encode(Op.MOVE, layer=5, src0=src, dst=dst, cin=3, ih=111, iw=1, mult0=1, shift0=0, clip_lo=-128,
                  clip_hi=127, s0_signed=1, out_signed=1)
    sim.load(Memory.INSTR, 2 * INSTR_BYTES, move + encode(Op.END))
    sim.load(Memory.ARENA, src, data)
    cycles = sim.run_segment(2, 2, max_cycles=10_000)
    assert sim.store(Memory.ARENA, dst & ~3, n + 4)[dst & 3:][:n] == data
    busy = timing.eltwise_cycles(n, sim.board.arch.rows, 1)
    assert sim.read(rg.counter_offset(5, "busy_cycles")) == busy
    assert sim.read(rg.counter_offset(5, "busy_cycles", high=True)) == 0  # the counter's upper 32 bits
    assert cycles > busy
    assert sim.read(reg("STATUS")) & bit("STATUS", "done")


def test_segment_errors(sim: RtlSim) -> None:
    sim.load(Memory.INSTR, 0, encode(Op.NOP) + encode(Op.CONV))
    with pytest.raises(DeviceError) as err:
        sim.run_segment(0, 2, max_cycles=1000)
    assert (err.value.code, err.value.pc) == (ErrorCode.BAD_OPCODE, 1)
    sim.reset()
    assert sim.read(reg("STATUS")) == 0
    sim.load(Memory.INSTR, 0, encode(Op.NOP))
    with pytest.raises(DeviceError) as err:
        sim.run_segment(0, 1, max_cycles=1000)
    assert (err.value.code, err.value.pc) == (ErrorCode.ADDR_RANGE, 1)


def test_poll_timeout_and_cycles(sim: RtlSim) -> None:
    c0 = sim.cycles()
    with pytest.raises(PollTimeout) as err:
        sim.poll(reg("ID"), 0xFFFFFFFF, 0, 50)
    assert err.value.cycles >= 50
    assert sim.cycles() >= c0 + 50
    assert sim.read(reg("ID")) == rg.ID_MAGIC  # still usable


def test_harness_errors(rtl_binary) -> None:
    with RtlSim(BOARD, binary=rtl_binary, timeout=30, handshake_cycles=100) as sim:
        sim._send("X 1\n")
        with pytest.raises(RtlSimError, match="bad command X 1"):
            sim.read(reg("ID"))
    with RtlSim(BOARD, binary=rtl_binary, timeout=30, handshake_cycles=100) as sim:
        with pytest.raises(RtlSimError, match="timeout m_axis_tvalid"):
            sim.receive(4)  # nothing to send: the testbench gives up after 100 cycles
        with pytest.raises(RtlSimError, match="exited with 0"):
            sim.read(reg("ID"))
    with RtlSim(BOARD, binary=rtl_binary, timeout=30) as sim:
        sim._send(f"P {reg('ID'):x} ffffffff 0 10000000\n")  # ~10 s of polling
        with pytest.raises(RtlSimError, match="no answer from the RTL simulator within 0.5 s"):
            sim._line("polling", timeout=0.5)
        assert sim._proc.poll() is not None  # killed, not left running
    with RtlSim(BOARD, binary=rtl_binary, timeout=30) as sim:
        sim._proc.kill()
        with pytest.raises(RtlSimError, match="exited with -9"):
            sim.read(reg("ID"))
