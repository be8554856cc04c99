"""The generated core in Verilator (`RtlSim`) behind the `StreamCore` interface of a board-free device.

Register accesses are the testbench's AXI4-Lite commands; a packet from the DMA is sent as beats with TLAST
on the last; the output stream is received beat by beat. The core's streams need no model: the interface
only has to know when the core's input is open (a CTRL.load it accepted) and how many bytes an accepted
CTRL.store will send (XFER_BYTES, in whole beats), which it learns from the same registers the host writes.
A STATUS read while a segment runs lets the simulated clock run on first, as the host's time does on a board.
"""

from __future__ import annotations

from dynq.contract import registers as rg
from dynq.hdl.sim import PollTimeout, RtlSim, RtlSimError
from dynq.runtime.core_driver import BUSY, CTRL, STATUS, XFER

POLL_CYCLES = 100_000
"""Cycles the clock may run before a STATUS read of a busy core answers (about a millisecond of a board)."""


class RtlCore:
    def __init__(self, sim: RtlSim, owned: bool = True):
        self.sim = sim
        self._owned = owned
        self._input_open = False
        self._output_left = 0

    def read(self, offset: int) -> int:
        if offset == STATUS.offset:
            try:
                self.sim.poll(offset, BUSY, 0, POLL_CYCLES)
            except PollTimeout:
                pass  # still busy: the host sees busy and polls again
        return self.sim.read(offset)

    def write(self, offset: int, value: int) -> None:
        self.sim.write(offset, value)
        if offset != CTRL.offset:
            return
        if value & CTRL.mask("reset"):
            self._input_open, self._output_left = False, 0
        elif value & (CTRL.mask("load") | CTRL.mask("store")) and self.sim.read(STATUS.offset) & XFER:
            if value & CTRL.mask("load"):
                self._input_open = True
            else:
                nbytes = self.sim.read(rg.GLOBAL["XFER_BYTES"].offset)
                self._output_left = -(-nbytes // rg.XFER_ALIGN) * rg.XFER_ALIGN

    def accepting(self) -> bool:
        return self._input_open

    def take(self, packet: bytes) -> None:
        self.sim.send(packet)
        self._input_open = False

    def output_ready(self) -> int:
        return self._output_left

    def give(self, nbytes: int) -> bytes:
        beats = self.sim.receive_beats(nbytes // rg.XFER_ALIGN)
        self._output_left -= nbytes
        lasts = [i for i, (_, last) in enumerate(beats) if last]
        if lasts != ([len(beats) - 1] if self._output_left == 0 else []):
            raise RtlSimError(f"the core's output stream had TLAST on beats {lasts} of {len(beats)}")
        return b"".join(word.to_bytes(rg.XFER_ALIGN, "little") for word, _ in beats)

    def close(self) -> None:
        if self._owned:
            self.sim.close()
