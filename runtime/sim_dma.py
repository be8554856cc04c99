"""The Xilinx AXI DMA in simple mode (PG021), register for register, and the DDR it reads and writes, for a
board-free pynq device. pynq's unmodified `DMA` class drives it: RS and reset in DMACR, HALTED, IDLE, the
error bits and the write-1-to-clear interrupt bits in DMASR, the buffer address, and the LENGTH write that
starts a transfer. Stream data flows when the device pumps it between a channel and the core.
"""

from __future__ import annotations

import bisect

import numpy as np

from dynq.contract import Segment
from dynq.contract import address_map as amap
from dynq.contract import axi_dma as reg
from dynq.contract.registers import XFER_ALIGN
from dynq.errors import DynqError
from dynq.runtime.sim_faults import Faults

PAGE = 4096


class DdrModel:
    """The board's DDR as the DMA sees it. Only buffers handed out by `allocate` exist (anything else is a
    decode error), and they are not coherent with the host's view of them: the device copies the host's bytes
    in on `flush` and out on `invalidate`, so a driver that skips either sees stale data, as on a Zynq."""

    def __init__(self, window: Segment):
        self.window = window
        self._pool = window.base + window.size // 2  # where Linux's CMA pool lives, away from address 0
        self._buffers: dict[int, np.ndarray] = {}
        self._bases: list[int] = []

    def allocate(self, nbytes: int) -> int:
        """A page-aligned buffer of `nbytes` in the first gap that fits (freed space is reused, so a virtual
        board serving run after run does not run out); returns its physical address."""
        size = self._pages(nbytes)
        base = self._pool
        for used in self._bases:
            if used - base >= size:
                break
            base = max(base, used + self._pages(len(self._buffers[used])))
        if base + size > self.window.base + self.window.size:
            raise DynqError(f"the simulated DDR window {self.window.name} is exhausted ({nbytes} bytes asked); "
                            "free buffers or open fewer drivers")
        self._buffers[base] = np.zeros(nbytes, np.uint8)
        bisect.insort(self._bases, base)
        return base

    @staticmethod
    def _pages(nbytes: int) -> int:
        return -(-max(nbytes, 1) // PAGE) * PAGE

    def free(self, base: int) -> None:
        if self._buffers.pop(base, None) is not None:
            self._bases.remove(base)

    def view(self, address: int, nbytes: int) -> np.ndarray | None:
        """The bytes [address, address + nbytes) if one live buffer holds them all, else None."""
        i = bisect.bisect_right(self._bases, address) - 1
        if i < 0:
            return None
        base = self._bases[i]
        offset = address - base
        buffer = self._buffers[base]
        return buffer[offset:offset + nbytes] if offset + nbytes <= len(buffer) else None


class DmaChannel:
    """One channel's registers and the transfer it has under way."""

    def __init__(self, name: str):
        self.name = name
        self.reset()

    def reset(self) -> None:
        self.control = self.errors = self.irqs = 0
        self.idle = False  # after reset and RS, simple mode reads not-idle until the first transfer ends
        self.address = self.address_msb = self.length = 0
        self.packet: bytes | None = None
        """MM2S: the bytes read for the core, waiting for its input stream."""
        self.room = self.received = 0
        self.open = False
        """S2MM: a buffer of `room` bytes waits for the core's output stream."""

    @property
    def running(self) -> bool:
        return bool(self.control & reg.CR_RUN)

    @property
    def status(self) -> int:
        return (0 if self.running else reg.SR_HALTED) | (reg.SR_IDLE if self.idle else 0) | self.errors | self.irqs

    @property
    def physical(self) -> int:
        return (self.address_msb << 32) | self.address


class AxiDmaModel:
    """Both channels of one AXI DMA (simple mode) over `memory`."""

    def __init__(self, memory: DdrModel, faults: Faults):
        self.memory = memory
        self.faults = faults
        self.channels = {name: DmaChannel(name) for name in reg.CHANNELS}
        self.mm2s, self.s2mm = self.channels["mm2s"], self.channels["s2mm"]
        self.moved = dict.fromkeys(reg.CHANNELS, 0)
        """Bytes each channel has moved since the device was made."""

    def _decode(self, offset: int) -> tuple[DmaChannel | None, int]:
        for name, base in reg.CHANNELS.items():
            if base <= offset < base + reg.CHANNEL_SPAN:
                return self.channels[name], offset - base
        return None, 0

    def read(self, offset: int) -> int:
        channel, register = self._decode(offset)
        if channel is None:
            return 0
        return {reg.DMACR: channel.control, reg.DMASR: channel.status, reg.ADDRESS: channel.address,
                reg.ADDRESS_MSB: channel.address_msb, reg.LENGTH: channel.length}.get(register, 0)

    def write(self, offset: int, value: int) -> None:
        channel, register = self._decode(offset)
        if channel is None:
            return
        if register == reg.DMACR:
            if value & reg.CR_RESET:  # resets the whole IP; the bit clears itself at once here
                for each in self.channels.values():
                    each.reset()
                return
            channel.control = value
            if not channel.running:
                channel.packet, channel.open = None, False
        elif register == reg.DMASR:
            channel.irqs &= ~(value & reg.SR_IRQS)
        elif register == reg.ADDRESS:
            channel.address = value
        elif register == reg.ADDRESS_MSB:
            channel.address_msb = value
        elif register == reg.LENGTH:
            self._start(channel, value & ((1 << amap.DMA_LENGTH_BITS) - 1))

    def _start(self, channel: DmaChannel, length: int) -> None:
        """A LENGTH write: ignored while halted; a zero length or an address outside memory is an error."""
        if not channel.running:
            return
        channel.length, channel.idle = length, False
        fault = self.faults.dma_error
        if fault is not None and fault[0] == channel.name:
            self.faults.dma_error = None
            self._fail(channel, fault[1])
            return
        if length == 0:
            self._fail(channel, reg.SR_INT_ERR)
            return
        view = self.memory.view(channel.physical, length)
        if view is None:
            self._fail(channel, reg.SR_DEC_ERR)
        elif channel is self.mm2s:
            channel.packet = view.tobytes()
        else:
            channel.room, channel.received, channel.open = length, 0, True

    def _fail(self, channel: DmaChannel, bit: int) -> None:
        """An error halts the channel (RS cleared) until a reset."""
        channel.errors |= bit
        channel.irqs |= reg.SR_ERR_IRQ
        channel.control &= ~reg.CR_RUN
        channel.packet, channel.open = None, False

    def _complete(self, channel: DmaChannel, nbytes: int) -> None:
        channel.idle = True
        channel.irqs |= reg.SR_IOC_IRQ
        self.moved[channel.name] += nbytes

    def sent(self) -> None:
        """The core took the MM2S packet."""
        nbytes = len(self.mm2s.packet or b"")
        self.mm2s.packet = None
        self._complete(self.mm2s, nbytes)

    def receive(self, data: bytes, last: bool) -> None:
        """Beats from the core's output stream into the S2MM buffer. At TLAST the transfer ends and LENGTH
        reads the bytes received; a packet longer than the buffer is an internal error."""
        channel = self.s2mm
        view = self.memory.view(channel.physical + channel.received, len(data))
        if view is None:  # the buffer was freed under the transfer
            self._fail(channel, reg.SR_DEC_ERR)
            return
        view[:] = np.frombuffer(data, np.uint8)
        channel.received += len(data)
        if last:
            channel.open, channel.length = False, channel.received
            self._complete(channel, channel.received)
        elif channel.received + XFER_ALIGN > channel.room:
            self._fail(channel, reg.SR_INT_ERR)

    def room(self) -> int:
        """Whole beats the S2MM buffer can still take."""
        return (self.s2mm.room - self.s2mm.received) // XFER_ALIGN * XFER_ALIGN
