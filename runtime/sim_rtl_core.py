"""The generated core in Verilator (`RtlSim`) behind the `StreamCore` interface of a board-free device.

Register accesses are the testbench's AXI4-Lite commands; a packet from the DMA is sent as beats with TLAST
on the last; the output stream is received beat by beat. The core's streams need no model: the interface
only has to know when the core's input is open (a CTRL.load it accepted, or a batch start) and how many
bytes will come out (an accepted CTRL.store's XFER_BYTES in whole beats, or a batch's BATCH x OUT_BYTES),
which it learns from the same registers the host writes. A batch's packet goes in while its output comes
out, in the same simulated cycles, as a DMA with both channels running moves them. A STATUS read while a
segment runs lets the simulated clock run on first, as the host's time does on a board.
"""

from __future__ import annotations

from dynq.contract import registers as rg
from dynq.hdl.sim import PollTimeout, RtlSim, RtlSimError, received_packet
from dynq.runtime.core_driver import BUSY, CTRL, STATUS, XFER

POLL_CYCLES = 100_000
"""Cycles the clock may run before a STATUS read of a busy core answers (about a millisecond of a board)."""


def _register(name: str) -> int:
    return rg.GLOBAL[name].offset


class RtlCore:
    def __init__(self, sim: RtlSim, owned: bool = True):
        self.sim = sim
        self._owned = owned
        self._input_open = False
        self._output_left = 0
        self._batch: tuple[int, int] | None = None
        """A running batch start's (images, output bytes), until its packet has gone in."""
        self._out = b""

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
            self._input_open, self._output_left, self._batch, self._out = False, 0, None, b""
        elif value & CTRL.mask("start") and self.sim.read(_register("BATCH")):
            if self.sim.read(STATUS.offset) & BUSY:
                images = self.sim.read(_register("BATCH"))
                self._batch = images, images * self.sim.read(_register("OUT_BYTES"))
        elif value & (CTRL.mask("load") | CTRL.mask("store")) and self.sim.read(STATUS.offset) & XFER:
            if value & CTRL.mask("load"):
                self._input_open = True
            else:
                nbytes = self.sim.read(_register("XFER_BYTES"))
                self._output_left = -(-nbytes // rg.XFER_ALIGN) * rg.XFER_ALIGN

    def accepting(self) -> bool:
        return self._input_open or self._batch is not None

    def streaming(self) -> bool:
        return self._batch is not None

    def take(self, packet: bytes) -> None:
        if self._batch is None:
            self.sim.send(packet)
            self._input_open = False
            return
        images, nbytes = self._batch
        self._batch = None
        result = self.sim.exchange(packet, nbytes // rg.XFER_ALIGN, timeout=self.sim.timeout * images)
        if result.state == "ok":  # else the core stopped or hangs: no output, the host sees why in STATUS
            self._out = received_packet(result.received, "the core's batch output")

    def output_ready(self) -> int:
        return len(self._out) or self._output_left

    def give(self, nbytes: int) -> bytes:
        if self._out:
            data, self._out = self._out[:nbytes], self._out[nbytes:]
            return data
        beats = self.sim.receive_beats(nbytes // rg.XFER_ALIGN)
        self._output_left -= nbytes
        lasts = [i for i, (_, last) in enumerate(beats) if last]
        if lasts != ([len(beats) - 1] if self._output_left == 0 else []):
            raise RtlSimError(f"the core's output stream had TLAST on beats {lasts} of {len(beats)}")
        return b"".join(word.to_bytes(rg.XFER_ALIGN, "little") for word, _ in beats)

    def close(self) -> None:
        if self._owned:
            self.sim.close()
