"""The host side of the core's register protocol, written once for every way of reaching the core.

A run (docs/overlay.md): write the precision and mask registers, then for each batch of images that share
a mask write BATCH, the input and output spans and the segment, set CTRL.start, and stream the images'
inputs in and their outputs out in one packet each way, both channels at once (the core takes an image,
runs it, sends its output, takes the next); then wait for STATUS.busy to drop (bounded), read STATUS and the
error registers, and read the layer counters, summed over the batch. Before the first run the driver checks
the core (ID, FINGERPRINT, memory sizes) with reads only, then loads the program and the weight image once.

A transport supplies register reads and writes, the two streams and a bounded wait: the RTL simulator's
testbench (`dynq.runtime.rtl.RtlDevice`), or pynq's MMIO and AXI DMA on a board or on a simulated board
(`dynq.runtime.driver.PynqDriver`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NoReturn

import numpy as np
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
    """Runs a build's device segments on one dynq core, a batch of images per start, as `Emulator.run_segment`
    does. Subclasses connect a transport, then call `_check_core()` and `_load_build()`."""

    run_cycles = 100_000_000
    """Cycle budget of one segment on a simulated core (a hang is reported, never waited out)."""
    batch_bytes = 8 << 20
    """Stream bytes a start may move each way: the images per start follow from the spans' sizes."""

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
    def exchange(self, data: bytes, nbytes: int, images: int, what: str) -> bytes | None:
        """`data` (the inputs of `images` images) on the core's input stream, TLAST on its last beat, while
        `nbytes` bytes come back on the output stream, TLAST on the last beat, both streams moving at once.
        None when they did not complete (the core stopped, or the transport's limit passed): the transport's
        own side is then reset, and the caller reads the core's STATUS to say why."""

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

    def run_batch(self, first: int, count: int, inputs: Span, outputs: Span, images: int, data: bytes) -> bytes:
        """Runs instructions [first, first + count) up to END on `images` images: `data` holds each image's
        bytes of the arena span `inputs`, back to back; returns each image's bytes of `outputs`, back to back.
        Raises DeviceError with the ERROR code and the layer of ERROR_PC, or DeviceTimeout naming the layer
        and the image the core is still in."""
        (in_lo, in_hi), (out_lo, out_hi) = inputs, outputs
        for name, value in (("BATCH", images), ("IN_ADDR", in_lo), ("IN_BYTES", in_hi - in_lo), ("OUT_ADDR", out_lo),
                            ("OUT_BYTES", out_hi - out_lo), ("INSTR_FIRST", first), ("INSTR_COUNT", count)):
            self.write(rg.GLOBAL[name].offset, value)
        self.write(CTRL.offset, CTRL.mask("start"))
        what = (f"segment [{first}, {first + count}) on {images} image{'s' * (images > 1)} ({len(data)} bytes in, "
                f"{images * (out_hi - out_lo)} out)")
        if self.read(STATUS.offset) & ERROR_BIT:
            self._raise_device(what)
        out = self.exchange(data, images * (out_hi - out_lo), images, what)
        if out is None or not self.wait(STATUS.offset, BUSY, 0, self.run_cycles):
            self._stopped(what)
        status = self.read(STATUS.offset)
        if status & ERROR_BIT:
            self._raise_device(what)
        if not status & DONE:
            raise DynqError(f"{what}: the core is neither done nor failed (STATUS 0x{status:x})")
        return out

    def _stopped(self, what: str) -> NoReturn:
        """Why a batch's streams did not complete, raised: the core's error (it stays in STATUS and ERROR unless a
        transfer was left open, which a reset closes), or where it hangs (then it is reset)."""
        status = self.read(STATUS.offset)
        if status & ERROR_BIT:
            self._raise_device(what, reset=bool(status & XFER))
        if status & BUSY:
            pc = self.read(rg.GLOBAL["PC"].offset)
            image = self.read(rg.GLOBAL["IMAGE"].offset)
            self.write(CTRL.offset, CTRL.mask("reset"))
            raise DeviceTimeout(f"{what}: the core was still busy in {self.where(pc)} of image {image} after "
                                f"{self.limit(self.run_cycles)}; it has been reset. A hang in one layer points at "
                                "the bitstream or at that layer's registers")
        self.write(CTRL.offset, CTRL.mask("reset"))
        raise DynqError(f"{what}: the streams stopped with the core idle (STATUS 0x{status:x}); core reset. The "
                        "stream packets did not match BATCH, IN_BYTES and OUT_BYTES")

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

    def _raise_device(self, what: str, reset: bool = False) -> NoReturn:
        """The core's ERROR and ERROR_PC as an exception; with `reset`, the core is reset after they are read."""
        code = self.read(rg.GLOBAL["ERROR"].offset)
        pc = self.read(rg.GLOBAL["ERROR_PC"].offset)
        if reset:
            self.write(CTRL.offset, CTRL.mask("reset"))
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
        return {name: self.read(rg.counter_offset(layer, name)) | self.read(rg.counter_offset(layer, name, True)) << 32
                for name in rg.COUNTERS}

    def run_segment(self, arena: Arena, first: int, count: int, regs: list[PrecisionRegs],
                    mask: torch.Tensor | None, counters: dict[int, dict[str, int]],
                    keep: list[Span] | None = None) -> None:
        """Same contract as `Emulator.run_segment`, in batch starts. The core has one mask memory, so with one
        mask per image ([N, MASK_GRID, MASK_GRID]) a start takes the consecutive images that share a mask.
        `keep` (`transfers.needed_after`) lists the bytes the host needs back: then only the segment's
        live-in goes in and only its writes inside `keep` come back. Without it the whole arena goes both
        ways, so the host's arena is the core's."""
        layers = self._segment_layers(first, count)
        self._check_segment(first, count, regs, mask)
        inputs, outputs, stores = self._spans(arena.nbytes, first, count, keep)
        per_start = max(1, self.batch_bytes // max(inputs[1] - inputs[0], outputs[1] - outputs[0]))
        self.write_registers(layers, regs)
        written = None
        for image, images, cells in _starts(arena.batch, mask, per_start):
            if cells is not None and (written is None or not torch.equal(cells, written)):
                self.write_mask(cells)
                written = cells
            data = arena.rows(image, images, *inputs).tobytes()
            out = self.run_batch(first, count, inputs, outputs, images, data)
            rows = np.frombuffer(out, np.uint8).reshape(images, -1)
            for lo, hi in stores:
                arena.put_rows(image, rows[:, lo - outputs[0]:hi - outputs[0]], lo)
            for layer in layers:
                totals = counters.setdefault(layer, {})
                for name, value in self.read_counters(layer).items():
                    totals[name] = totals.get(name, 0) + value

    def _spans(self, nbytes: int, first: int, count: int, keep: list[Span] | None) -> tuple[Span, Span, list[Span]]:
        """(the arena span each image loads, the span it sends back, the bytes of that the host takes): the
        load covers the live-in widened to whole beats (any byte the host holds is current, so extra ones are
        harmless), the store covers the wanted bytes, and the host keeps exactly those (it may hold newer
        bytes next to them). A segment that needs nothing still moves one beat each way."""
        if nbytes % rg.XFER_ALIGN:
            raise DynqError(f"{self.build.path}: an arena of {nbytes} bytes is not whole {rg.XFER_ALIGN}-byte "
                            "stream beats; recompile the build")
        if keep is None:
            return (0, nbytes), (0, nbytes), [(0, nbytes)]
        live_in, written = transfers.segment_io(self.build.instructions, first, count)
        clip = [(0, nbytes)]
        loads = transfers.widen(transfers.intersect(live_in, clip), rg.XFER_ALIGN, nbytes)
        stores = transfers.intersect(transfers.intersect(written, keep), clip)
        beat = (0, rg.XFER_ALIGN)
        return (transfers.hull(loads) or beat, transfers.hull(transfers.widen(stores, rg.XFER_ALIGN, nbytes)) or beat,
                stores)

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


def _starts(batch: int, mask: torch.Tensor | None, per_start: int) -> list[tuple[int, int, torch.Tensor | None]]:
    """(first image, images, their mask) of each start: consecutive images with one mask, at most `per_start`."""
    starts: list[tuple[int, int, torch.Tensor | None]] = []
    for image in range(batch):
        cells = mask if mask is None or mask.dim() == 2 else mask[image]
        if starts and starts[-1][1] < per_start and (cells is None or torch.equal(cells, starts[-1][2])):
            first, images, _ = starts[-1]
            starts[-1] = (first, images + 1, cells)
        else:
            starts.append((image, 1, cells))
    return starts
