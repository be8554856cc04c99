"""Board-free pynq devices: the dynq overlay of a board, in-process, behind pynq's own device interface.

`SimOverlayDevice` is a `pynq.pl_server.device.Device` with the MEMORY_MAPPED capability, as a board's
device has: `pynq.MMIO` indexes the word array `mmap` returns, which on a board is a view of `/dev/mem` and
here a `RegisterWindow` whose every word access the device decodes with the contract's address map into
the core's register file (`EmulatedCore`) or the AXI DMA's (`AxiDmaModel`). So pynq's MMIO takes the same
code path as on a board. `read_registers` / `write_registers` (the REGISTER_RW interface) reach the same
words, for the virtual board's gRPC services. `allocate` hands out
`PynqBuffer`s backed by a model of the DDR. After every register write the device moves stream data: the
MM2S channel's packet into the core when the core's input stream is open, the core's output into the S2MM
buffer when a receive is programmed. So the driver code, pynq's MMIO, allocate and DMA classes run
unchanged, in the order a board needs, and a wrong order or a forgotten flush fails here as it would there.

`RtlOverlayDevice` is the same device with the generated core in Verilator (`RtlCore`) instead of the
emulator.
"""

from __future__ import annotations

import ctypes
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
from pynq.buffer import PynqBuffer
from pynq.pl_server.device import Device

from dynq import boards
from dynq.contract import address_map as amap
from dynq.errors import DynqError
from dynq.runtime.sim_core import EmulatedCore, StreamCore
from dynq.runtime.sim_dma import AxiDmaModel, DdrModel
from dynq.runtime.sim_faults import Faults

if TYPE_CHECKING:
    from dynq.hdl.sim import RtlSim


class BusError(DynqError, RuntimeError):
    """An access to an address where the overlay has no IP (on a board this hangs or faults the bus)."""


class RegisterWindow:
    """A register window as pynq's MMIO sees it on a board (a uint32 array), each word access reaching the
    simulated IP behind it."""

    def __init__(self, device: SimOverlayDevice, base: int, words: int):
        self.device, self.base, self.words = device, base, words

    def __len__(self) -> int:
        return self.words

    def _address(self, index: int) -> int:
        if not 0 <= index < self.words:
            raise IndexError(f"register word {index} is outside the {self.words}-word window at 0x{self.base:08x}")
        return self.base + 4 * index

    def __getitem__(self, index: int) -> int:
        return self.device.read_word(self._address(index))

    def __setitem__(self, index: int, value: int) -> None:
        self.device.write_word(self._address(index), int(value))


class SimOverlayDevice(Device):
    """`board`'s dynq overlay without the board: core, AXI DMA and DDR as the address map places them."""

    def __init__(self, board: str, faults: Faults | None = None, core: StreamCore | None = None):
        """`faults` makes the device misbehave on purpose; `core` replaces the emulated core."""
        super().__init__(f"dynq-sim:{board}")
        self.capabilities = {"MEMORY_MAPPED": True}
        self.board = boards.load(board)
        self.address_map = amap.for_board(self.board)
        self.faults = faults or Faults()
        self.ddr = DdrModel(self.address_map.ddr)
        self.core = core or EmulatedCore(self.board, self.faults)
        self.dma = AxiDmaModel(self.ddr, self.faults)
        core_window, dma_window = self.address_map.core, self.address_map.dma
        self._windows = ((core_window.base, core_window.base + core_window.size, self.core),
                         (dma_window.base, dma_window.base + dma_window.size, self.dma))

    # ---- MMIO --------------------------------------------------------------------------------------------
    def target(self, address: int) -> tuple[Any, int]:
        """The IP model whose register window holds `address`, and the offset into it; BusError where the
        overlay has none."""
        for lo, hi, target in self._windows:
            if lo <= address < hi:
                return target, address - lo
        m = self.address_map
        raise BusError(f"no IP of the {self.board.name} overlay at 0x{address:08x}: the core is at "
                       f"0x{m.core.base:08x} (+0x{m.core.size:x}), the DMA at 0x{m.dma.base:08x} "
                       f"(+0x{m.dma.size:x}); take the addresses from the overlay or the contract's address map")

    def mmap(self, base_addr: int, length: int) -> RegisterWindow:
        """What pynq's MMIO indexes: `length` bytes of registers from `base_addr`, as 32-bit words."""
        return RegisterWindow(self, base_addr, length // 4)

    def read_word(self, address: int) -> int:
        target, offset = self.target(address)
        return target.read(offset)

    def write_word(self, address: int, value: int) -> None:
        """One register write; then the streams move what the write made ready."""
        target, offset = self.target(address)
        target.write(offset, value)
        self._pump()

    def read_registers(self, address: int, length: int) -> bytes:
        words = b"".join(self.read_word(at).to_bytes(4, "little") for at in range(address, address + length, 4))
        return words[:length]

    def write_registers(self, address: int, data: bytes) -> None:
        data = bytes(data).ljust(-(-len(data) // 4) * 4, b"\0")
        for i in range(0, len(data), 4):
            self.write_word(address + i, int.from_bytes(data[i:i + 4], "little"))

    def _pump(self) -> None:
        """Moves what both ends of a stream are ready for. A batch start's input goes in only once the S2MM
        channel is open: on a board the core stops taking input while its output is not drained."""
        if (self.dma.mm2s.packet is not None and self.core.accepting()
                and (self.dma.s2mm.open or not self.core.streaming())):
            self.core.take(self.dma.mm2s.packet)
            self.dma.sent()
        if self.dma.s2mm.open:
            ready = self.core.output_ready()
            if ready:
                nbytes = min(ready, self.dma.room())
                self.dma.receive(self.core.give(nbytes) if nbytes else b"", nbytes == ready)

    # ---- memory ------------------------------------------------------------------------------------------
    def allocate(self, shape: Any, dtype: Any, **kwargs: Any) -> PynqBuffer:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        physical = self.ddr.allocate(nbytes)
        buffer = PynqBuffer(shape, dtype, device=self, device_address=physical, bo=physical, coherent=False)
        weakref.finalize(buffer, self.ddr.free, physical)
        return buffer

    def _region(self, bo: int, offset: int, size: int) -> np.ndarray:
        view = self.ddr.view(bo + offset, size)
        if view is None:
            raise BusError(f"buffer at 0x{bo:x} (+{offset}, {size} bytes) is not memory of this device; "
                           "allocate it with pynq.allocate(..., target=device)")
        return view

    def flush(self, bo: int, offset: int, ptr: int, size: int) -> None:
        """The host's bytes of a buffer into DDR (the CPU's cache written back)."""
        ctypes.memmove(self._region(bo, offset, size).ctypes.data, ptr, size)

    def invalidate(self, bo: int, offset: int, ptr: int, size: int) -> None:
        """DDR's bytes of a buffer into the host's view (the CPU's stale cache lines dropped)."""
        ctypes.memmove(ptr, self._region(bo, offset, size).ctypes.data, size)

    def close(self) -> None:
        """Ends the core model (a simulator process, for the RTL-backed device)."""
        self.core.close()


class RtlOverlayDevice(SimOverlayDevice):
    """`board`'s overlay with the generated core in Verilator behind the same register, DMA and DDR model.
    Only DMA faults apply: the RTL core cannot be told to hang or corrupt."""

    def __init__(self, board: str, faults: Faults | None = None, sim: RtlSim | None = None):
        """Starts a simulator for `board` (first use builds it), or drives `sim` (which the caller closes)."""
        from dynq.hdl.sim import RtlSim
        from dynq.runtime.sim_rtl_core import RtlCore

        faults = faults or Faults()
        if faults.hang_at is not None or faults.corrupt is not None:
            raise ValueError("the RTL-backed device shows DMA faults only; use SimOverlayDevice for core faults")
        super().__init__(board, faults, RtlCore(sim or RtlSim(board), owned=sim is None))
