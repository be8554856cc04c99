"""The board driver: the core protocol (`CoreDriver`) over the real pynq API.

`pynq.MMIO` reaches the core's AXI4-Lite registers, `pynq.allocate` gives the DMA buffers, and the unmodified
`pynq.lib.dma.DMA` in simple mode moves the program, the weights and every arena through the core's
streams. On a board the addresses come from the loaded overlay (`PynqDriver.from_overlay`); without one, from
the contract's address map, which is what the block-design generator assigns. The same code drives a real
board and the simulated boards of `dynq.runtime.sim_pynq`.

Every wait is bounded by `timeout` seconds of wall clock and ends in a readable error: pynq's own
`DMA.wait()` polls forever, so the driver polls the channel's status itself and calls `wait()` only once the
channel is idle (to let pynq invalidate the buffer and read the length).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np

from dynq.contract import AddressMap, Segment
from dynq.contract import address_map as amap
from dynq.contract import axi_dma as dma_regs
from dynq.contract.registers import XFER_ALIGN
from dynq.errors import DynqError
from dynq.runtime.artifacts import Build
from dynq.runtime.core_driver import CTRL, CoreDriver

DEFAULT_TIMEOUT = 10.0
"""Seconds any one wait (a transfer, a segment of one image) may take before the driver gives up."""


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
        arena = int(build.manifest["arena_bytes"])
        self._tx = self._allocate(max(len(build.program), len(build.weights), arena))
        self._rx = self._allocate(arena)
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

    def _allocate(self, nbytes: int) -> Any:
        from pynq import allocate

        return allocate((-(-nbytes // XFER_ALIGN) * XFER_ALIGN,), np.uint8, target=self.device)

    # ---- transport -------------------------------------------------------------------------------------
    def read(self, offset: int) -> int:
        return self.mmio.read(offset)

    def write(self, offset: int, value: int) -> None:
        self.mmio.write(offset, value)

    def send(self, data: bytes, what: str) -> None:
        n = len(data)
        if n > len(self._tx):
            raise DynqError(f"{what}: more than the {len(self._tx)}-byte DMA buffer this driver allocated for "
                            f"{self.build.path}")
        self._tx[:n] = np.frombuffer(data, np.uint8)
        self._transfer("mm2s", self.dma.sendchannel, self._tx, n, what)

    def receive(self, nbytes: int, what: str) -> bytes:
        beats = -(-nbytes // XFER_ALIGN) * XFER_ALIGN
        self._transfer("s2mm", self.dma.recvchannel, self._rx, beats, what)
        return self._rx[:nbytes].tobytes()

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
        for buffer in (self._tx, self._rx):
            buffer.freebuffer()
        if self._owns_device:
            self.device.close()

    # ---- the DMA -----------------------------------------------------------------------------------------
    def _transfer(self, name: str, channel: Any, buffer: Any, nbytes: int, what: str) -> None:
        """One simple-mode transfer with pynq's channel, waited for with a deadline. A DMA error resets the
        DMA (and the core, whose transfer it broke) and raises DmaError; the next transfer starts clean."""
        if not channel.running:
            channel.start()
        channel.transfer(buffer, 0, nbytes)
        status_offset = dma_regs.CHANNELS[name] + dma_regs.DMASR
        deadline = time.monotonic() + self.timeout
        while True:
            status = self.dma.mmio.read(status_offset)
            if status & (dma_regs.SR_INT_ERR | dma_regs.SR_SLV_ERR | dma_regs.SR_DEC_ERR):
                self._reset()
                raise DmaError(f"{what}: the AXI DMA's {name.upper()} channel stopped with "
                               f"{dma_regs.describe_errors(status)} (DMASR 0x{status:08x}); DMA and core were "
                               "reset. Check that the buffer came from pynq.allocate on this device and that "
                               "the overlay's DMA is configured as the address map says")
            if status & dma_regs.SR_IDLE:
                break
            if time.monotonic() > deadline:
                self._reset()
                raise DmaError(f"{what}: the AXI DMA's {name.upper()} channel did not finish within "
                               f"{self.timeout:g} s (DMASR 0x{status:08x}); DMA and core were reset. The core "
                               "did not take or give the stream: check the overlay's stream connections")
        channel.wait()

    def _reset(self) -> None:
        """DMACR.reset (both channels, self-clearing, bounded wait), the channels restarted, the core's open
        transfer aborted."""
        mm2s = dma_regs.CHANNELS["mm2s"]
        self.dma.mmio.write(mm2s + dma_regs.DMACR, dma_regs.CR_RESET)
        deadline = time.monotonic() + self.timeout
        while self.dma.mmio.read(mm2s + dma_regs.DMACR) & dma_regs.CR_RESET:
            if time.monotonic() > deadline:
                raise DmaError(f"the AXI DMA at 0x{self.addresses.dma.base:x} did not come out of reset within "
                               f"{self.timeout:g} s; reload the overlay")
        self.dma.sendchannel.start()
        self.dma.recvchannel.start()
        self.write(CTRL.offset, CTRL.mask("reset"))
