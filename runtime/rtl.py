"""The `rtl` backend: device segments run on the Verilator simulation of the generated core.

It drives the core the way the board driver does: loads the program and the weight image once through the
input stream, then per image writes the precision and mask registers, loads the arena, starts the segment,
waits for done (or an error code), reads the layer counters from their registers and stores the arena.
Outputs and counters therefore come from the simulated hardware, not from the cycle model.
"""

from __future__ import annotations

import torch

from dynq import boards
from dynq.contract import ErrorCode, Memory, Op, PrecisionRegs
from dynq.contract import registers as rg
from dynq.contract.precision import require_mask
from dynq.contract.registers import DeviceError
from dynq.errors import DynqError
from dynq.hdl import core
from dynq.hdl.sim import RtlSim, reg
from dynq.runtime.artifacts import Build
from dynq.runtime.emulator import Arena

RUN_CYCLES = 100_000_000
"""Cycle budget of one segment before the wait gives up (a hang is reported, never waited out)."""


class RtlUnsupported(DynqError, ValueError):
    """The build uses an operation the RTL core does not implement yet."""


class RtlDevice:
    """Runs a build's device segments on one simulator process (start it with `open`, or use `with`)."""

    def __init__(self, build: Build, sim: RtlSim | None = None):
        """Starts a simulator for the build's board, or reuses `sim` (which the caller then closes)."""
        self.build = build
        self.board = boards.load(build.board)
        self._owned = sim is None
        self.sim = sim or RtlSim(self.board.name)
        try:
            self._check_core()
            self.sim.load(Memory.INSTR, 0, build.program, max_cycles=4 * len(build.program))
            if build.weights:
                self.sim.load(Memory.WEIGHTS, 0, build.weights, max_cycles=4 * len(build.weights))
        except BaseException:
            if self._owned:
                self.sim.kill()
            raise

    def _check_core(self) -> None:
        """The core must be this contract's, built for the build's architecture, with room for its data."""
        ident = self.sim.read(reg("ID"))
        if ident != rg.ID_MAGIC:
            raise DeviceError(ErrorCode.FINGERPRINT, -1, f"ID register reads 0x{ident:08x}, not a dynq core")
        fingerprint = self.sim.read(reg("FINGERPRINT"))
        if fingerprint != self.build.fingerprint:
            raise DeviceError(ErrorCode.FINGERPRINT, -1, f"core fingerprint {fingerprint:08x} differs from the "
                                                         f"build's {self.build.fingerprint:08x}")
        needs = {"IMEM_BYTES": len(self.build.program), "WMEM_BYTES": len(self.build.weights),
                 "AMEM_BYTES": int(self.build.manifest["arena_bytes"])}
        for name, size in needs.items():
            have = self.sim.read(reg(name))
            if size > have:
                raise DeviceError(ErrorCode.ADDR_RANGE, -1, f"the build needs {size} bytes of {name[:4]}, the "
                                                            f"{self.board.name} core has {have}")

    def close(self) -> None:
        if self._owned:
            self.sim.close()

    def __enter__(self) -> RtlDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write_registers(self, layers: set[int], regs: list[PrecisionRegs], mask: torch.Tensor | None) -> None:
        for layer in sorted(layers):
            for name, value in regs[layer].to_words().items():
                self.sim.write(rg.precision_offset(layer, name), value)
        if mask is not None:
            for i, value in enumerate(rg.pack_mask(mask.numpy())):
                self.sim.write(rg.MASK_BASE + 4 * i, value)

    def read_counters(self, layer: int) -> dict[str, int]:
        return {name: self.sim.read(rg.counter_offset(layer, name)) for name in rg.COUNTERS}

    def run_segment(self, arena: Arena, first: int, count: int, regs: list[PrecisionRegs],
                    mask: torch.Tensor | None, counters: dict[int, dict[str, int]]) -> None:
        """Same contract as `Emulator.run_segment`: one image of the batch after the other."""
        layers = self._segment_layers(first, count)
        self._check_supported(first, count, regs, mask)
        self.write_registers(layers, regs, mask)
        for image in range(arena.batch):
            self.sim.load(Memory.ARENA, 0, arena.snapshot(image), max_cycles=arena.nbytes)
            self.sim.run_segment(first, count, RUN_CYCLES)
            arena.restore(image, self.sim.store(Memory.ARENA, 0, arena.nbytes, max_cycles=4 * arena.nbytes))
            for layer in layers:
                totals = counters.setdefault(layer, {})
                for name, value in self.read_counters(layer).items():
                    totals[name] = totals.get(name, 0) + value

    def _check_supported(self, first: int, count: int, regs: list[PrecisionRegs], mask: torch.Tensor | None) -> None:
        for pc, ins in enumerate(self.build.instructions[first:first + count], first):
            if ins.op == Op.END:
                return
            if ins.op == Op.CONV:
                require_mask(regs[ins.layer], mask, pc)
            reason = core.unsupported(ins, regs[ins.layer], self.board.arch.cols)
            if reason:
                raise RtlUnsupported(f"{self.build.path}: instruction {pc} (layer {ins.layer}): the RTL core does "
                                     f"not run {reason} yet; run this build with --backend emulator")

    def _segment_layers(self, first: int, count: int) -> set[int]:
        layers = set()
        for ins in self.build.instructions[first:first + count]:
            if ins.op == Op.END:
                break
            if ins.op != Op.NOP:
                layers.add(ins.layer)
        return layers
