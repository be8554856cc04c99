"""The board driver: the core protocol (`CoreDriver`) over the real pynq API.

`pynq.MMIO` reaches the core's AXI4-Lite registers, `pynq.allocate` gives the DMA buffers, and the unmodified
`pynq.lib.dma.DMA` in simple mode moves the program, the weights and each batch's images through the core's
streams. On a board the addresses come from the loaded overlay (`PynqDriver.from_overlay`); without one, from
the contract's address map, which is what the block-design generator assigns. The same code drives a real
board and the simulated boards of `dynq.runtime.sim_pynq`.

Every wait is bounded by `timeout` seconds of wall clock and ends in a readable error: pynq's own
`DMA.wait()` polls forever, so the driver polls the channel's status itself and calls `wait()` only once the
channel is idle (to let pynq invalidate the buffer and read the length). A batch may take longer as long as
the core keeps finishing images: the limit is on the time without progress.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np

from dynq.contract import AddressMap, Segment
from dynq.contract import address_map as amap
from dynq.contract import axi_dma as dma_regs
from dynq.contract.registers import GLOBAL, XFER_ALIGN
from dynq.errors import DynqError
from dynq.runtime.artifacts import Build
from dynq.runtime.core_driver import CTRL, ERROR_BIT, STATUS, CoreDriver

DEFAULT_TIMEOUT = 10.0
"""Seconds any one wait (a transfer, one image of a batch) may take before the driver gives up."""
BUFFERS_KEPT = 2
"""DMA buffers kept per channel, one per transfer size."""
DMA_ERRORS = dma_regs.SR_INT_ERR | dma_regs.SR_SLV_ERR | dma_regs.SR_DEC_ERR


class DmaError(DynqError, RuntimeError):
    """The AXI DMA stopped a transfer with an error bit; the message names the channel, transfer and bit."""


class PynqDriver(CoreDriver):
    """A build loaded onto the dynq core of a pynq `device` (a board, or a simulated one)."""

    def __init__(self, build: Build, device: Any, addresses: AddressMap, timeout: float = DEFAULT_TIMEOUT,
                 dma_description: dict[str, Any] | None = None, owns_device: bool = False):
        """Checks the core (reads only), then sets up the DMA and its buffers and loads the program and the
        weights. `dma_description` is the DMA's `ip_dict` entry when an overlay gave one; with `owns_device`,
        `close` closes the device too (a simulated board the caller made for this driver alone)."""
        from pynq import MMIO

        super().__init__(build)
        self.device = device
        self._owns_device = owns_device
        self.addresses = addresses
        self.timeout = timeout
        self.mmio = MMIO(addresses.core.base, addresses.core.size, device=device)
        self._check_core()
        self._open_dma(dma_description or {
            "phys_addr": addresses.dma.base, "addr_range": addresses.dma.size, "device": device,
            "parameters": dict(amap.DMA_CONFIG), "interrupts": {}})
        self._buffers: dict[tuple[str, int], Any] = {}
        self._load_build()

    @classmethod
    def from_overlay(cls, build: Build, overlay: Any, timeout: float = DEFAULT_TIMEOUT) -> PynqDriver:
        """The driver for a loaded `pynq.Overlay` of the dynq overlay: core and DMA addresses from its
        `ip_dict`, under the instance names of the contract's address map."""
        from dynq import boards

        expected = amap.for_board(boards.load(build.board))
        ips = overlay.ip_dict
        missing = [s.name for s in (expected.core, expected.dma) if s.name not in ips]
        if missing:
            raise amap.AddressMapError(f"the overlay has no IP named {', '.join(missing)} (it has: "
                                       f"{', '.join(sorted(ips))}); load the dynq overlay built for {build.board}")
        core, dma = ips[expected.core.name], ips[expected.dma.name]
        addresses = replace(expected,
                            core=Segment(expected.core.name, int(core["phys_addr"]), int(core["addr_range"])),
                            dma=Segment(expected.dma.name, int(dma["phys_addr"]), int(dma["addr_range"])))
        return cls(build, overlay.device, addresses, timeout, dma_description={**dma, "device": overlay.device})

    def _open_dma(self, description: dict[str, Any]) -> None:
        from pynq.lib.dma import DMA

        self.dma = DMA(description)

    def _buffer(self, channel: str, nbytes: int) -> Any:
        """A DMA buffer of exactly `nbytes` for `channel`. pynq flushes and invalidates whole buffers (a
        remote board's buffers cannot even be sliced), so each size gets its own; the channel keeps its last
        BUFFERS_KEPT sizes (the batches of a run repeat their sizes)."""
        from pynq import allocate

        key = (channel, nbytes)
        buffer = self._buffers.pop(key, None)
        if buffer is None:
            mine = [k for k in self._buffers if k[0] == channel]
            for old in mine[:max(0, len(mine) - BUFFERS_KEPT + 1)]:
                self._buffers.pop(old).freebuffer()
            buffer = allocate((nbytes,), np.uint8, target=self.device)
        self._buffers[key] = buffer  # the most recently used last
        return buffer

    # ---- transport -------------------------------------------------------------------------------------
    def read(self, offset: int) -> int:
        return self.mmio.read(offset)

    def write(self, offset: int, value: int) -> None:
        self.mmio.write(offset, value)

    def send(self, data: bytes, what: str) -> None:
        buffer = self._buffer("mm2s", -(-len(data) // XFER_ALIGN) * XFER_ALIGN)
        buffer[:len(data)] = np.frombuffer(data, np.uint8)
        self._transfer("mm2s", self.dma.sendchannel, buffer, what)

    def exchange(self, data: bytes, nbytes: int, images: int, what: str) -> bytes | None:
        """The output channel is started first: the core sends an image's output before it takes the next
        image's input, so with only the input channel running a batch would stall after its first image."""
        tx, rx = self._buffer("mm2s", len(data)), self._buffer("s2mm", nbytes)
        tx[:] = np.frombuffer(data, np.uint8)
        channels = {"s2mm": (self.dma.recvchannel, rx), "mm2s": (self.dma.sendchannel, tx)}
        for channel, buffer in channels.values():
            if not channel.running:
                channel.start()
            channel.transfer(buffer)
        image, deadline = -1, 0.0
        while not all([self._idle(name, what) for name in channels]):  # every channel's error bits, each time
            progress = self.read(GLOBAL["IMAGE"].offset)
            if progress != image:
                image, deadline = progress, time.monotonic() + self.timeout
            if self.read(STATUS.offset) & ERROR_BIT or time.monotonic() > deadline:
                self._reset_dma()
                return None
        for channel, _ in channels.values():
            channel.wait()
        return rx.tobytes()

    def wait(self, offset: int, mask: int, value: int, cycles: int) -> bool:
        deadline = time.monotonic() + self.timeout
        while self.mmio.read(offset) & mask != value:
            if time.monotonic() > deadline:
                return False
        return True

    def limit(self, cycles: int) -> str:
        return f"{self.timeout:g} s"

    def close(self) -> None:
        """Returns the DMA buffers (and closes an owned device)."""
        for buffer in self._buffers.values():
            buffer.freebuffer()
        self._buffers.clear()
        if self._owns_device:
            self.device.close()

    # ---- the DMA -----------------------------------------------------------------------------------------
    def _transfer(self, name: str, channel: Any, buffer: Any, what: str) -> None:
        """One simple-mode transfer of all of `buffer` with pynq's channel, waited for with a deadline."""
        if not channel.running:
            channel.start()
        channel.transfer(buffer)
        deadline = time.monotonic() + self.timeout
        while not self._idle(name, what):
            if time.monotonic() > deadline:
                status = self.dma.mmio.read(dma_regs.CHANNELS[name] + dma_regs.DMASR)
                self._reset()
                raise DmaError(f"{what}: the AXI DMA's {name.upper()} channel did not finish within "
                               f"{self.timeout:g} s (DMASR 0x{status:08x}); DMA and core were reset. The core "
                               "did not take or give the stream: check the overlay's stream connections")
        channel.wait()

    def _idle(self, name: str, what: str) -> bool:
        """Whether channel `name` finished its transfer. A DMA error resets the DMA (and the core, whose
        transfer it broke) and raises DmaError; the next transfer starts clean."""
        status = self.dma.mmio.read(dma_regs.CHANNELS[name] + dma_regs.DMASR)
        if status & DMA_ERRORS:
            self._reset()
            raise DmaError(f"{what}: the AXI DMA's {name.upper()} channel stopped with "
                           f"{dma_regs.describe_errors(status)} (DMASR 0x{status:08x}); DMA and core were "
                           "reset. Check that the buffer came from pynq.allocate on this device and that "
                           "the overlay's DMA is configured as the address map says")
        return bool(status & dma_regs.SR_IDLE)

    def _reset(self) -> None:
        """The DMA reset and the core's open transfer aborted."""
        self._reset_dma()
        self.write(CTRL.offset, CTRL.mask("reset"))

    def _reset_dma(self) -> None:
        """DMACR.reset (both channels, self-clearing, bounded wait), the channels restarted."""
        mm2s = dma_regs.CHANNELS["mm2s"]
        self.dma.mmio.write(mm2s + dma_regs.DMACR, dma_regs.CR_RESET)
        deadline = time.monotonic() + self.timeout
        while self.dma.mmio.read(mm2s + dma_regs.DMACR) & dma_regs.CR_RESET:
            if time.monotonic() > deadline:
                raise DmaError(f"the AXI DMA at 0x{self.addresses.dma.base:x} did not come out of reset within "
                               f"{self.timeout:g} s; reload the overlay")
        self.dma.sendchannel.start()
        self.dma.recvchannel.start()
