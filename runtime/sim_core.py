"""The dynq core behind its ports, for a board-free pynq device: the AXI4-Lite register file and the
AXI4-Stream transfer engine decoded as the RTL decodes them (hdl/core.py: `bus_write`, `bus_read_stage`,
`xfer_seq`, `sequencer`), every offset, bit and code taken from the contract, and each segment executed by
the bit-exact emulator over the core's own memories: the program and the weights it was sent through the
stream, not the build file, so a driver that sends the wrong bytes gets the wrong answer here too.

A segment runs to its end inside the write that sets CTRL.start (the core model has no clock): STATUS shows
done or an error at the next read. A batch start runs all its images when their packet arrives, and shows
done once its output has gone. `StreamCore` is what a device needs of a core; `RtlCore`
(`dynq.runtime.sim_rtl_core`) is the same interface over the Verilator simulation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from dynq.boards import Board
from dynq.contract import CONTRACT_VERSION, INSTR_BYTES, ErrorCode, Instr, Memory, Op, PrecisionRegs
from dynq.contract import registers as rg
from dynq.contract.isa import DecodeError, decode
from dynq.contract.registers import DeviceError
from dynq.contract.timing import LAYER_SETUP_CYCLES
from dynq.runtime.artifacts import Build
from dynq.runtime.emulator import Arena, Emulator
from dynq.runtime.sim_faults import Faults

WORD = 0xFFFF_FFFF
BEAT = rg.XFER_ALIGN
CTRL = rg.GLOBAL["CTRL"]
GLOBAL_AT = {r.offset: r.name for r in rg.GLOBAL_REGISTERS}
HOST_WRITTEN = tuple(r.name for r in rg.GLOBAL_REGISTERS if r.access == "RW" and r.name != "CTRL")
"""The RW registers other than CTRL: plain 32-bit words the host writes and reads back."""
PRECISION_END = rg.PRECISION_BASE + rg.MAX_LAYERS * rg.PRECISION_STRIDE
MASK_END = rg.MASK_BASE + 4 * rg.MASK_WORDS
COUNTER_END = rg.COUNTER_BASE + rg.MAX_LAYERS * rg.COUNTER_STRIDE
COUNTER_HIGH_END = rg.COUNTER_HIGH_BASE + rg.MAX_LAYERS * rg.COUNTER_STRIDE
COUNTER_MASK = (1 << rg.COUNTER_BITS) - 1


class StreamCore(Protocol):
    """A core as a board-free device sees it: registers, and the two streams of whole packets."""

    def read(self, offset: int) -> int: ...
    def write(self, offset: int, value: int) -> None: ...
    def accepting(self) -> bool:
        """The input stream is ready (a load, or a rejected load swallowing its packet, is open)."""
    def streaming(self) -> bool:
        """A batch start runs: the core takes its input packet only while its output is drained (a board's
        core stops taking input when its output stream is not read), so the S2MM channel must be open."""
    def take(self, packet: bytes) -> None:
        """One whole packet from the input stream, TLAST on its last beat."""
    def output_ready(self) -> int:
        """Bytes of whole beats the output stream holds, up to and including the TLAST beat."""
    def give(self, nbytes: int) -> bytes:
        """The next `nbytes` (whole beats, at most `output_ready()`) of the output stream."""
    def close(self) -> None: ...


class _Program(Sequence[Instr]):
    """The instruction memory as the sequencer fetches it: each record decoded on first fetch; a record that
    is no instruction of the contract stops the core with BAD_OPCODE there, as the RTL's decoder does."""

    def __init__(self, imem: bytes):
        self._imem = imem
        self._decoded: dict[int, Instr] = {}

    def __len__(self) -> int:
        return len(self._imem) // INSTR_BYTES

    def __getitem__(self, pc: int) -> Instr:  # type: ignore[override] - the sequencer fetches one at a time
        if not 0 <= pc < len(self):
            raise IndexError(pc)
        ins = self._decoded.get(pc)
        if ins is None:
            try:
                ins = decode(self._imem[pc * INSTR_BYTES:(pc + 1) * INSTR_BYTES])
            except DecodeError as exc:
                raise DeviceError(ErrorCode.BAD_OPCODE, pc, str(exc)) from None
            self._decoded[pc] = ins
        return ins


@dataclass(frozen=True)
class _CoreImage(Build):
    """The core's memories seen as a build, so that the emulator executes what the core was sent."""

    memory: _Program

    @property
    def instructions(self) -> _Program:  # type: ignore[override]
        return self.memory


def _fits(addr: int, nbytes: int, size: int) -> bool:
    """A stream transfer's span as the RTL checks it: a whole-beat address, at least one byte, inside a memory
    of `size` bytes (0 for no such memory)."""
    return addr % BEAT == 0 and 0 < nbytes and addr + nbytes <= size


class EmulatedCore:
    """One dynq core of `board`'s architecture, out of reset."""

    def __init__(self, board: Board, faults: Faults | None = None):
        arch = board.arch
        self.board = board
        self.faults = faults or Faults()
        self.sizes = {Memory.INSTR: arch.imem_bytes, Memory.WEIGHTS: arch.wmem_bytes, Memory.ARENA: arch.amem_bytes}
        self._arena = Arena(1, arch.amem_bytes)
        self.memories = {Memory.INSTR: np.zeros(arch.imem_bytes, np.uint8),
                         Memory.WEIGHTS: np.zeros(arch.wmem_bytes, np.uint8),
                         Memory.ARENA: self._arena.bytes[0].numpy()}
        """The arena is the emulator's own arena of one image: the stream and the sequencer share its bytes."""
        self.host = dict.fromkeys(HOST_WRITTEN, 0)
        self.precision = [[0] * len(rg.PRECISION_REGISTERS) for _ in range(rg.MAX_LAYERS)]
        self.banks: list[PrecisionRegs | None] = [self._decode_bank(layer) for layer in range(rg.MAX_LAYERS)]
        self.mask_words = [0] * rg.MASK_WORDS
        self.counters = [[0] * len(rg.COUNTERS) for _ in range(rg.MAX_LAYERS)]
        self.cycles = self.image = 0
        self._mask: torch.Tensor | None = None
        self._emulator: Emulator | None = None
        self.reset()

    def reset(self) -> None:
        """CTRL.reset: the sequencer and the transfer engine back to idle, STATUS and ERROR cleared."""
        self.busy = self.done = self.error = False
        self.error_code, self.error_pc, self.pc = ErrorCode.OK, 0, 0
        self.xfer_busy = self.xfer_done = self.x_err = False
        self._state = "idle"
        self._target: tuple[Memory, int, int] | None = None
        self._out = b""
        self._batch: tuple[int, int, int, int, int] | None = None
        """A batch start's (images, IN_ADDR, IN_BYTES, OUT_ADDR, OUT_BYTES)."""

    # ---- registers ---------------------------------------------------------------------------------------
    def read(self, offset: int) -> int:
        offset &= rg.ADDRESS_SPACE - 1
        name = GLOBAL_AT.get(offset)
        if name is not None:
            return self._global(name)
        if rg.PRECISION_BASE <= offset < PRECISION_END:
            layer, index = divmod(offset - rg.PRECISION_BASE, rg.PRECISION_STRIDE)
            return self.precision[layer][index // 4] if index // 4 < len(rg.PRECISION_REGISTERS) else 0
        if rg.MASK_BASE <= offset < MASK_END:
            return self.mask_words[(offset - rg.MASK_BASE) // 4]
        for base, end, shift in ((rg.COUNTER_BASE, COUNTER_END, 0), (rg.COUNTER_HIGH_BASE, COUNTER_HIGH_END, 32)):
            if base <= offset < end:
                layer, index = divmod(offset - base, rg.COUNTER_STRIDE)
                return (self.counters[layer][index // 4] >> shift) & WORD if index // 4 < len(rg.COUNTERS) else 0
        return 0

    def _global(self, name: str) -> int:
        if name in self.host:
            return self.host[name]
        if name == "STATUS":
            bits = {"done": self.done, "busy": self.busy, "error": self.error or self.x_err, "xfer": self.xfer_busy,
                    "xfer_done": self.xfer_done}
            return sum(rg.GLOBAL["STATUS"].mask(field) for field, on in bits.items() if on)
        return {"ERROR": ErrorCode.XFER if self.x_err else self.error_code, "ERROR_PC": self.error_pc,
                "ID": rg.ID_MAGIC, "CONTRACT": CONTRACT_VERSION, "FINGERPRINT": self.board.arch.fingerprint,
                "IMEM_BYTES": self.sizes[Memory.INSTR], "WMEM_BYTES": self.sizes[Memory.WEIGHTS],
                "AMEM_BYTES": self.sizes[Memory.ARENA], "PC": self.pc, "CYCLES": self.cycles,
                "IMAGE": self.image}.get(name, 0)

    def write(self, offset: int, value: int) -> None:
        offset &= rg.ADDRESS_SPACE - 1
        value &= WORD
        name = GLOBAL_AT.get(offset)
        if name == "CTRL":
            self._control(value)
        elif name in self.host:
            self.host[name] = value
        elif rg.PRECISION_BASE <= offset < PRECISION_END:
            layer, index = divmod(offset - rg.PRECISION_BASE, rg.PRECISION_STRIDE)
            self.precision[layer][index // 4] = value
            self.banks[layer] = self._decode_bank(layer)
        elif rg.MASK_BASE <= offset < MASK_END:
            self.mask_words[(offset - rg.MASK_BASE) // 4] = value
            self._mask = None

    def _decode_bank(self, layer: int) -> PrecisionRegs | None:
        """None for a MODE word that names no mode (the core stops on a CONV that reads it)."""
        words = zip((r.name for r in rg.PRECISION_REGISTERS), self.precision[layer], strict=True)
        try:
            return PrecisionRegs.from_words(dict(words))
        except ValueError:
            return None

    def _control(self, value: int) -> None:
        """One CTRL write, as the RTL's processes see its self-clearing bits in the next cycle (each reads the
        other's state from before the write)."""
        if value & CTRL.mask("reset"):
            self.reset()
            return
        start, busy, xfer_busy = bool(value & CTRL.mask("start")), self.busy, self.xfer_busy
        load, store = bool(value & CTRL.mask("load")), bool(value & CTRL.mask("store"))
        if self._state == "idle":
            if start:
                self.x_err = False
            if (load or store) and not busy:
                self._open_transfer(load)
        if start and not busy and not xfer_busy:
            if self.host["BATCH"]:
                self._start_batch()
            else:
                self._run(self.host["INSTR_FIRST"], self.host["INSTR_COUNT"])
                self._arena.flush()  # the tensors the emulator keeps, into the arena's bytes the stream reads
                self._corrupt(self._arena)

    # ---- streams -----------------------------------------------------------------------------------------
    def _open_transfer(self, load: bool) -> None:
        kind, addr, nbytes = self.host["XFER_MEM"], self.host["XFER_ADDR"], self.host["XFER_BYTES"]
        try:
            memory: Memory | None = Memory(kind)
        except ValueError:
            memory = None  # no such memory: size 0, an XFER error
        size = self.sizes[memory] if memory is not None else 0
        self.xfer_done = self.x_err = False
        if not _fits(addr, nbytes, size):
            self.x_err = True
            if load:  # the packet is still swallowed, so the DMA never hangs
                self.xfer_busy, self._state = True, "swallow"
        elif load:
            self.xfer_busy, self._state, self._target = True, "load", (memory, addr, nbytes)
        else:
            self.xfer_busy, self._state = True, "send"
            self._out = self.memories[memory][addr:addr + nbytes].tobytes() + bytes(-nbytes % BEAT)

    def accepting(self) -> bool:
        return self._state in ("load", "swallow", "batch")

    def streaming(self) -> bool:
        return self._state == "batch"

    def take(self, packet: bytes) -> None:
        """A load writes the bytes it was told to; a packet that ends early or late is an XFER error (the late
        one's extra beats are swallowed up to TLAST). A batch start runs its images."""
        if self._state == "batch":
            self._run_batch(packet)
            return
        if self._state == "load":
            memory, addr, left = self._target
            beats, need = -(-len(packet) // BEAT), -(-left // BEAT)
            written = left if beats >= need else beats * BEAT
            self.memories[memory][addr:addr + written] = np.frombuffer(packet[:written].ljust(written, b"\0"),
                                                                       np.uint8)
            self.xfer_done, self.x_err = beats == need, beats != need
            if memory != Memory.ARENA:
                self._emulator = None  # a new program or weight image: decode afresh
        self.xfer_busy, self._state = False, "idle"

    def output_ready(self) -> int:
        return len(self._out) if self._state == "send" else 0

    def give(self, nbytes: int) -> bytes:
        data, self._out = self._out[:nbytes], self._out[nbytes:]
        if self._batch is not None:
            images, _, _, _, out_bytes = self._batch
            self.image = images - len(self._out) // out_bytes
            if not self._out:
                self.busy, self.done, self._state, self._batch = False, True, "idle", None
        elif not self._out:
            self.xfer_busy, self.xfer_done, self._state = False, True, "idle"
        return data

    def close(self) -> None:
        """Nothing to release: the core lives in this process."""

    # ---- the sequencer -----------------------------------------------------------------------------------
    def _start_batch(self) -> None:
        """CTRL.start with BATCH set: spans checked as the RTL checks them, then the core waits for the packet
        of all the images' inputs."""
        self.done = self.error = False
        self.error_code, self.cycles, self.image = ErrorCode.OK, 0, 0
        spans = [self.host[name] for name in ("IN_ADDR", "IN_BYTES", "OUT_ADDR", "OUT_BYTES")]
        arena = self.sizes[Memory.ARENA]
        if not (_fits(*spans[:2], arena) and _fits(*spans[2:], arena) and spans[1] % BEAT == spans[3] % BEAT == 0):
            self.error, self.error_code, self.error_pc = True, ErrorCode.XFER, self.host["INSTR_FIRST"]
            return
        self.busy, self._state, self._batch = True, "batch", (self.host["BATCH"], *spans)

    def _run_batch(self, packet: bytes) -> None:
        """All the images of a batch start at once, on a batched arena whose rows start as the core's arena
        with each image's input in place: what the RTL computes image after image, since a segment reads
        no byte outside its input that it has not written first. The output waits in `_out` for the DMA. A
        packet that is not exactly the batch's inputs is an XFER error before any image runs (the RTL runs
        the images before the one whose input is wrong)."""
        images, in_addr, in_bytes, out_addr, out_bytes = self._batch
        self._state = "idle"
        if len(packet) != images * in_bytes:
            self.busy, self.x_err, self._batch = False, True, None
            return
        self._arena.flush()
        arena = Arena(images, self.sizes[Memory.ARENA])
        arena.bytes[:] = self._arena.bytes[0]
        arena.bytes[:, in_addr:in_addr + in_bytes] = torch.frombuffer(bytearray(packet), dtype=torch.uint8).view(
            images, in_bytes)
        if not self._run(self.host["INSTR_FIRST"], self.host["INSTR_COUNT"], arena):
            self._batch = None
            return
        arena.flush(out_addr, out_addr + out_bytes)  # what goes out; of the rest only the last image stays
        self._arena.bytes[0] = arena.image(images - 1)
        self._corrupt(arena)
        self._out = arena.bytes[:, out_addr:out_addr + out_bytes].contiguous().numpy().tobytes()
        self.busy, self.done, self._state = True, False, "send"  # done once the last output beat has gone

    def _run(self, first: int, count: int, arena: Arena | None = None) -> bool:
        """Runs the segment on `arena` (the core's own, or a batch start's with one row per image) and sets
        STATUS, the counters and CYCLES as the RTL leaves them. True when it ended at END."""
        arena = arena or self._arena
        self.done = self.error = False
        self.error_code, self.cycles = ErrorCode.OK, 0
        if self._emulator is None:
            imem = self.memories[Memory.INSTR].tobytes()
            image = _CoreImage(Path(f"<{self.board.name} core>"),
                               {"arch": self.board.arch.as_dict(), "arena_bytes": self.sizes[Memory.ARENA]},
                               b"", self.memories[Memory.WEIGHTS].tobytes(), {}, _Program(imem))
            self._emulator = Emulator(image)
        program = self._emulator.build.instructions
        stop, end = self._walk(program, first, count)
        counters: dict[int, dict[str, int]] = {}
        failure = None
        try:
            self._emulator.run_segment(arena, first, (first + count if stop is None else stop) - first,
                                       self.banks, self._mask_tensor(), counters)
        except DeviceError as exc:
            if not (stop is not None and exc.pc == stop and exc.code == ErrorCode.ADDR_RANGE):
                failure = exc  # not the end of the shortened segment: an error of the core
        for layer, values in counters.items():
            self.counters[layer] = [values.get(name, 0) & COUNTER_MASK for name in rg.COUNTERS]
        last = failure.pc if failure else stop if stop is not None else end
        self.cycles = self._cycles(program, first, last, counters, arena.batch) & WORD
        self.busy = False
        if failure is not None:
            self.error, self.error_code, self.error_pc, self.pc = True, failure.code, failure.pc, failure.pc
        elif stop is not None and stop == self.faults.hang_at:
            self.busy, self.pc = True, stop
        elif stop is not None:
            self.error, self.error_code, self.error_pc, self.pc = True, ErrorCode.BAD_OPCODE, stop, stop
        else:
            self.done, self.pc = True, end
        return self.done

    def _corrupt(self, arena: Arena) -> None:
        """The `corrupt` fault, after a segment that ended at END: the byte's bits flipped in every image (and,
        for a batch, in the core's own arena too, which the last image left)."""
        if self.faults.corrupt is not None and self.done:
            byte, bits = self.faults.corrupt
            arena.flush(byte, byte + 1)
            arena.bytes[:, byte] ^= bits
            if arena is not self._arena:
                self._arena.bytes[0, byte] ^= bits

    def _walk(self, program: _Program, first: int, count: int) -> tuple[int | None, int | None]:
        """(stop, end): where the segment must stop short of what the emulator would run (a hang fault, or a
        CONV whose MODE register names no mode: the RTL's BAD_OPCODE), and where its END is."""
        for pc in range(first, min(first + count, len(program))):
            try:
                ins = program[pc]
            except DeviceError:
                return None, None  # the emulator stops there itself
            if pc == self.faults.hang_at:
                return pc, None
            if ins.op == Op.END:
                return None, pc
            if ins.op == Op.CONV and self.banks[ins.layer] is None:
                return pc, None
        return None, None

    @staticmethod
    def _cycles(program: _Program, first: int, last: int | None, counters: dict[int, dict[str, int]],
                images: int) -> int:
        """CYCLES as the RTL counts them: each completed instruction's busy cycles (which include its
        LAYER_SETUP_CYCLES of fetch; `counters` holds them summed over the images) and, per image, one
        write-back cycle per instruction and LAYER_SETUP_CYCLES for a NOP and for the END. On an error, the
        instructions completed before it."""
        fixed = 0
        for pc in range(first, first if last is None else last):
            fixed += LAYER_SETUP_CYCLES if program[pc].op == Op.NOP else 1
        if last is not None and 0 <= last < len(program) and program[last].op == Op.END:
            fixed += LAYER_SETUP_CYCLES
        return sum(values.get("busy_cycles", 0) for values in counters.values()) + images * fixed

    def _mask_tensor(self) -> torch.Tensor:
        """The region mask the mask registers hold (at power-up: every cell cropped)."""
        if self._mask is None:
            cells = rg.unpack_mask(self.mask_words)
            self._mask = torch.tensor(cells, dtype=torch.int64).view(rg.MASK_GRID, rg.MASK_GRID)
        return self._mask
