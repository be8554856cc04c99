"""The host side of the core's register protocol, written once for every way of reaching the core.

A run (docs/overlay.md): write the precision and mask registers, load the image into the arena over the
input stream, write INSTR_FIRST and INSTR_COUNT, set CTRL.start, wait for STATUS.busy to drop (bounded), read
STATUS and the error registers, read the layer counters, store the arena over the output stream. Before the
first run the driver checks the core (ID, FINGERPRINT, memory sizes) with reads only, then loads the
program and the weight image once.

A transport supplies register reads and writes, the two streams and a bounded wait: the RTL simulator's
testbench (`dynq.runtime.rtl.RtlDevice`), or pynq's MMIO and AXI DMA on a board or on a simulated board
(`dynq.runtime.driver.PynqDriver`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from dynq import boards
from dynq.contract import ErrorCode, Memory, Op, PrecisionRegs
from dynq.contract import registers as rg
from dynq.contract.precision import require_mask
from dynq.contract.registers import DeviceError
from dynq.errors import DynqError
from dynq.runtime import transfers
from dynq.runtime.artifacts import Build
from dynq.runtime.emulator import Arena
from dynq.runtime.transfers import Span

CTRL, STATUS = rg.GLOBAL["CTRL"], rg.GLOBAL["STATUS"]
BUSY, DONE, ERROR_BIT = STATUS.mask("busy"), STATUS.mask("done"), STATUS.mask("error")
XFER, XFER_DONE = STATUS.mask("xfer"), STATUS.mask("xfer_done")


class DeviceTimeout(DynqError, TimeoutError):
    """A wait on the overlay ran out of time; the message names where the core was."""


class CoreDriver(ABC):
    """Runs a build's device segments on one dynq core, one image per start, as `Emulator.run_segment` does
    on a batch. Subclasses connect a transport, then call `_check_core()` and `_load_build()`."""

    run_cycles = 100_000_000
    """Cycle budget of one segment on a simulated core (a hang is reported, never waited out)."""

    def __init__(self, build: Build):
        self.build = build
        self.board = boards.load(build.board)

    # ---- transport -------------------------------------------------------------------------------------
    @abstractmethod
    def read(self, offset: int) -> int:
        """One AXI4-Lite read of the core's register at byte `offset`."""

    @abstractmethod
    def write(self, offset: int, value: int) -> None:
        """One AXI4-Lite write of the core's register at byte `offset`."""

    @abstractmethod
    def send(self, data: bytes, what: str) -> None:
        """`data` on the core's input stream as 32-bit beats (the last padded), TLAST on the last."""

    @abstractmethod
    def receive(self, nbytes: int, what: str) -> bytes:
        """`nbytes` bytes from the core's output stream (whole beats, TLAST on the last)."""

    @abstractmethod
    def wait(self, offset: int, mask: int, value: int, cycles: int) -> bool:
        """Reads `offset` until (word & mask) == value. False when the transport's limit passed first: a
        simulator's budget of `cycles` clock cycles, a board's timeout in seconds."""

    @abstractmethod
    def limit(self, cycles: int) -> str:
        """What `wait(..., cycles)` waits at most, in words, for timeout messages."""

    @abstractmethod
    def close(self) -> None:
        """Releases what the transport holds."""

    def __enter__(self) -> CoreDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- opening -----------------------------------------------------------------------------------------
    def _check_core(self) -> None:
        """The core must be this contract's, built for the build's architecture, with room for its data.
        Reads only: a mismatched device is refused before anything is written to it."""
        ident = self.read(rg.GLOBAL["ID"].offset)
        if ident != rg.ID_MAGIC:
            raise DeviceError(ErrorCode.FINGERPRINT, -1, f"ID register reads 0x{ident:08x}, not a dynq core; is the "
                                                         "dynq overlay loaded?")
        fingerprint = self.read(rg.GLOBAL["FINGERPRINT"].offset)
        if fingerprint != self.build.fingerprint:
            raise DeviceError(ErrorCode.FINGERPRINT, -1, f"core fingerprint {fingerprint:08x} differs from the "
                                                         f"build's {self.build.fingerprint:08x} ({self.build.board}); "
                                                         "load the overlay of that board or recompile for this one")
        needs = {"IMEM_BYTES": len(self.build.program), "WMEM_BYTES": len(self.build.weights),
                 "AMEM_BYTES": int(self.build.manifest["arena_bytes"])}
        for name, size in needs.items():
            have = self.read(rg.GLOBAL[name].offset)
            if size > have:
                raise DeviceError(ErrorCode.ADDR_RANGE, -1, f"the build needs {size} bytes of {name[:4]}, the "
                                                            f"{self.board.name} core has {have}")

    def _load_build(self) -> None:
        """The program and the weight image, once: they stay on chip for every run."""
        self.load(Memory.INSTR, 0, self.build.program)
        if self.build.weights:
            self.load(Memory.WEIGHTS, 0, self.build.weights)

    # ---- the protocol ------------------------------------------------------------------------------------
    def load(self, memory: Memory, addr: int, data: bytes) -> None:
        """Fills `memory` at byte `addr` with `data` over the input stream. The bytes are sent even when the
        core rejects the transfer (it swallows them up to TLAST, so the stream never hangs); then raises
        DeviceError (code XFER)."""
        what = f"load of {len(data)} bytes into {memory.name} at 0x{addr:x}"
        self._xfer_setup(memory, addr, len(data))
        self.write(CTRL.offset, CTRL.mask("load"))
        self.send(data, what)
        self._xfer_finish(what, 4 * len(data))

    def store(self, memory: Memory, addr: int, nbytes: int) -> bytes:
        """`nbytes` bytes of `memory` from byte `addr`, over the output stream. Raises DeviceError (code XFER)
        when the core rejects the transfer."""
        what = f"store of {nbytes} bytes from {memory.name} at 0x{addr:x}"
        self._xfer_setup(memory, addr, nbytes)
        self.write(CTRL.offset, CTRL.mask("store"))
        if not self.read(STATUS.offset) & XFER:  # a started store holds STATUS.xfer until its stream is read
            self._raise_device(what)
        data = self.receive(nbytes, what)
        self._xfer_finish(what, 4 * nbytes)
        return data

    def run(self, first: int, count: int) -> None:
        """Runs instructions [first, first + count) up to END. Raises DeviceError with the ERROR code and the
        layer of ERROR_PC, or DeviceTimeout naming the layer the core is still in."""
        self.write(rg.GLOBAL["INSTR_FIRST"].offset, first)
        self.write(rg.GLOBAL["INSTR_COUNT"].offset, count)
        self.write(CTRL.offset, CTRL.mask("start"))
        what = f"segment [{first}, {first + count})"
        if not self.wait(STATUS.offset, BUSY, 0, self.run_cycles):
            pc = self.read(rg.GLOBAL["PC"].offset)
            self.write(CTRL.offset, CTRL.mask("reset"))
            raise DeviceTimeout(f"{what}: the core was still busy in {self.where(pc)} after "
                                f"{self.limit(self.run_cycles)}; it has been reset. A hang in one layer points at "
                                "the bitstream or at that layer's registers")
        status = self.read(STATUS.offset)
        if status & ERROR_BIT:
            self._raise_device(what)
        if not status & DONE:
            raise DynqError(f"{what}: the core is neither done nor failed (STATUS 0x{status:x})")

    def _xfer_setup(self, memory: Memory, addr: int, nbytes: int) -> None:
        self.write(rg.GLOBAL["XFER_MEM"].offset, int(memory))
        self.write(rg.GLOBAL["XFER_ADDR"].offset, addr)
        self.write(rg.GLOBAL["XFER_BYTES"].offset, nbytes)

    def _xfer_finish(self, what: str, cycles: int) -> None:
        if not self.wait(STATUS.offset, XFER, 0, cycles):
            self.write(CTRL.offset, CTRL.mask("reset"))
            raise DeviceTimeout(f"{what}: the core still had the transfer open after {self.limit(cycles)}; it "
                                "has been reset")
        if not self.read(STATUS.offset) & XFER_DONE:
            self._raise_device(what)

    def _raise_device(self, what: str) -> None:
        code = self.read(rg.GLOBAL["ERROR"].offset)
        pc = self.read(rg.GLOBAL["ERROR_PC"].offset)
        try:
            code = ErrorCode(code)
        except ValueError:
            raise DynqError(f"{what}: the ERROR register holds {code}, not an error code; is the overlay this "
                            "contract's?") from None
        where = "" if code == ErrorCode.XFER else f" in {self.where(pc)}"
        raise DeviceError(code, pc, f"{what}{where}")

    def where(self, pc: int) -> str:
        """Instruction `pc` and the layer it belongs to, for error messages."""
        program = self.build.instructions
        if not 0 <= pc < len(program) or program[pc].op in (Op.NOP, Op.END):
            return f"instruction {pc}"
        layer = program[pc].layer
        names = {int(e["index"]): e["name"] for e in self.build.manifest.get("layers", [])}
        named = f" ({names[layer]})" if layer in names else ""
        return f"layer {layer}{named}, instruction {pc}"

    # ---- device segments ---------------------------------------------------------------------------------
    def write_registers(self, layers: set[int], regs: list[PrecisionRegs]) -> None:
        for layer in sorted(layers):
            for name, value in regs[layer].to_words().items():
                self.write(rg.precision_offset(layer, name), value)

    def write_mask(self, mask: torch.Tensor) -> None:
        """The region-mask memory: one MASK_GRID x MASK_GRID mask, which every DAQ layer of a start reads."""
        for i, value in enumerate(rg.pack_mask(mask.numpy())):
            self.write(rg.MASK_BASE + 4 * i, value)

    def read_counters(self, layer: int) -> dict[str, int]:
        return {name: self.read(rg.counter_offset(layer, name)) for name in rg.COUNTERS}

    def run_segment(self, arena: Arena, first: int, count: int, regs: list[PrecisionRegs],
                    mask: torch.Tensor | None, counters: dict[int, dict[str, int]],
                    keep: list[Span] | None = None) -> None:
        """Same contract as `Emulator.run_segment`: one image of the batch after the other. The core has one
        mask memory, so with one mask per image ([N, MASK_GRID, MASK_GRID]) the mask is rewritten before
        each image whose mask differs from the previous image's. `keep` (`transfers.needed_after`) lists
        the bytes the host needs back: then only the segment's live-in goes in and only its writes inside
        `keep` come out. Without it the whole arena goes both ways, so the host's arena is the core's."""
        layers = self._segment_layers(first, count)
        self._check_segment(first, count, regs, mask)
        loads, stores = self._transfers(arena.nbytes, first, count, keep)
        self.write_registers(layers, regs)
        written = None
        for image in range(arena.batch):
            cells = mask if mask is None or mask.dim() == 2 else mask[image]
            if cells is not None and (written is None or not torch.equal(cells, written)):
                self.write_mask(cells)
                written = cells
            for lo, hi in loads:
                self.load(Memory.ARENA, lo, arena.snapshot(image, lo, hi))
            self.run(first, count)
            for lo, hi in stores:
                start = lo - lo % rg.XFER_ALIGN
                arena.restore(image, self.store(Memory.ARENA, start, hi - start)[lo - start:], lo)
            for layer in layers:
                totals = counters.setdefault(layer, {})
                for name, value in self.read_counters(layer).items():
                    totals[name] = totals.get(name, 0) + value

    def _transfers(self, nbytes: int, first: int, count: int, keep: list[Span] | None) -> tuple[list[Span], list[Span]]:
        """(arena spans to load, spans to store) around one image's run of the segment: loads widened to whole
        beats (any byte the host holds is current, so extra ones are harmless), stores exactly the bytes
        wanted (the host may hold newer bytes next to them)."""
        if keep is None:
            return [(0, nbytes)], [(0, nbytes)]
        live_in, written = transfers.segment_io(self.build.instructions, first, count)
        clip = [(0, nbytes)]
        return (transfers.widen(transfers.intersect(live_in, clip), rg.XFER_ALIGN, nbytes),
                transfers.intersect(transfers.intersect(written, keep), clip))

    def _check_segment(self, first: int, count: int, regs: list[PrecisionRegs], mask: torch.Tensor | None) -> None:
        """What the host refuses before the core runs: a DAQ layer without a mask (the mask memory would hold
        whatever the last run left)."""
        for pc, ins in enumerate(self.build.instructions[first:first + count], first):
            if ins.op == Op.END:
                return
            if ins.op == Op.CONV:
                require_mask(regs[ins.layer], mask, pc)

    def _segment_layers(self, first: int, count: int) -> set[int]:
        layers = set()
        for ins in self.build.instructions[first:first + count]:
            if ins.op == Op.END:
                break
            if ins.op != Op.NOP:
                layers.add(ins.layer)
        return layers
