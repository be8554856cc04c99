"""The `rtl` backend: device segments run on the Verilator simulation of the generated core.

It drives the core the way the board driver does (`CoreDriver`: the program and the weight image once
through the input stream, then per batch the precision and mask registers, the batch start, both streams at
once, the wait for done or an error code, the layer counters), over the testbench's AXI4-Lite and
AXI4-Stream commands. Outputs and counters therefore come from the simulated hardware, not from the cycle
model.
"""

from __future__ import annotations

import torch

from dynq.contract import Op, PrecisionRegs
from dynq.contract import registers as rg
from dynq.errors import DynqError
from dynq.hdl import core
from dynq.hdl.sim import PollTimeout, RtlSim, received_packet
from dynq.runtime.artifacts import Build
from dynq.runtime.core_driver import CoreDriver


class RtlUnsupported(DynqError, ValueError):
    """The build uses an operation the RTL core does not implement yet."""


class RtlDevice(CoreDriver):
    """Runs a build's device segments on one simulator process (use `with`, or call `close`)."""

    def __init__(self, build: Build, sim: RtlSim | None = None):
        """Starts a simulator for the build's board, or reuses `sim` (which the caller then closes)."""
        super().__init__(build)
        self._owned = sim is None
        self.sim = sim or RtlSim(self.board.name)
        try:
            self._check_core()
            self._load_build()
        except BaseException:
            if self._owned:
                self.sim.kill()
            raise

    def read(self, offset: int) -> int:
        return self.sim.read(offset)

    def write(self, offset: int, value: int) -> None:
        self.sim.write(offset, value)

    def send(self, data: bytes, what: str) -> None:
        self.sim.send(data)

    def exchange(self, data: bytes, nbytes: int, images: int, what: str) -> bytes | None:
        result = self.sim.exchange(data, nbytes // rg.XFER_ALIGN, timeout=self.sim.timeout * images)
        return received_packet(result.received, what) if result.state == "ok" else None

    def wait(self, offset: int, mask: int, value: int, cycles: int) -> bool:
        try:
            self.sim.poll(offset, mask, value, cycles)
        except PollTimeout:
            return False
        return True

    def limit(self, cycles: int) -> str:
        return f"{cycles:,} simulated cycles"

    def close(self) -> None:
        if self._owned:
            self.sim.close()

    def _check_segment(self, first: int, count: int, regs: list[PrecisionRegs], mask: torch.Tensor | None) -> None:
        super()._check_segment(first, count, regs, mask)
        for pc, ins in enumerate(self.build.instructions[first:first + count], first):
            if ins.op == Op.END:
                return
            reason = core.unsupported(ins, regs[ins.layer], self.board.arch.cols)
            if reason:
                raise RtlUnsupported(f"{self.build.path}: instruction {pc} (layer {ins.layer}): the RTL core does "
                                     f"not run {reason} yet; run this build with --backend emulator")
