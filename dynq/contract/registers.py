"""The overlay's AXI4-Lite register map, as data.

Three kinds of space: global control/status registers, one bank of precision registers per layer (the
runtime rewrites them between inferences: this is what makes precision a run-time choice), the
region-mask memory of the input-importance mode, and one bank of performance counters per layer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields

from dynq.contract.array import REGION_MAX, SDP_G_VALUES, is_pow2
from dynq.errors import DynqError

MAX_LAYERS = 256
"""Precision-register banks and counter banks; the `layer` field of an instruction indexes them."""

MASK_GRID = 16
"""The region mask is a MASK_GRID x MASK_GRID grid over the network input, scaled to every layer."""
MASK_BITS = 2
"""Bits per mask cell: a `Level`."""
MASK_WORDS = MASK_GRID * MASK_GRID * MASK_BITS // 32


class Level(enum.IntEnum):
    """A pixel's precision in DRQ and DAQ (a DAQ mask cell holds one; DRQ gives FOUR_BIT or EIGHT_BIT)."""

    CROPPED = 0
    FOUR_BIT = 1
    EIGHT_BIT = 2


class Mode(enum.IntEnum):
    """Per-layer precision mode (DESIGN.md section 4)."""

    INT8 = 0
    DRQ = 1
    SDP = 2
    DAQ = 3


class ErrorCode(enum.IntEnum):
    """Value of the ERROR register when STATUS.error is set."""

    OK = 0
    BAD_OPCODE = 1
    ADDR_RANGE = 2
    BUFFER_OVERFLOW = 3
    BAD_PRECISION = 4
    DMA = 5
    FINGERPRINT = 6
    XFER = 7


class DeviceError(DynqError, RuntimeError):
    """The overlay (or a model of it) stopped with an error code in the ERROR register."""

    def __init__(self, code: ErrorCode, pc: int, detail: str):
        super().__init__(f"overlay error {code.name} at instruction {pc}: {detail}")
        self.code, self.pc = code, pc


@dataclass(frozen=True)
class RegField:
    name: str
    lsb: int
    width: int
    doc: str


@dataclass(frozen=True)
class Register:
    name: str
    offset: int
    access: str
    doc: str
    fields: tuple[RegField, ...] = ()

    def field(self, name: str) -> RegField:
        return next(f for f in self.fields if f.name == name)

    def mask(self, name: str) -> int:
        """The bits of field `name` within the register's word, for drivers that test and set them."""
        f = self.field(name)
        return ((1 << f.width) - 1) << f.lsb


ID_MAGIC = 0x44594E51
"""'DYNQ': the ID register's value, how a driver knows it talks to this core."""

class Memory(enum.IntEnum):
    """The core's on-chip memories, as selected by XFER_MEM. Programs, weights and activations all live on
    chip; the host fills and drains them through the AXI4-Stream ports (the AXI DMA in simple mode)."""

    INSTR = 0
    WEIGHTS = 1
    ARENA = 2


XFER_ALIGN = 4
"""Stream transfers move 32-bit beats (byte 0 in bits 7:0); XFER_ADDR must be a multiple of this."""

GLOBAL_REGISTERS: tuple[Register, ...] = (
    Register("CTRL", 0x00, "RW", "control; every bit is self-clearing", (
        RegField("start", 0, 1, "write 1 to run INSTR_COUNT instructions from INSTR_FIRST"),
        RegField("reset", 1, 1, "write 1 to abort a run or transfer and clear STATUS and ERROR"),
        RegField("load", 2, 1, "write 1 to take XFER_BYTES bytes from the input stream into XFER_MEM at "
                 "XFER_ADDR; the stream's last beat must carry TLAST"),
        RegField("store", 3, 1, "write 1 to send XFER_BYTES bytes of XFER_MEM from XFER_ADDR on the output "
                 "stream, TLAST on the last beat, bytes past the end zero"),
    )),
    Register("STATUS", 0x04, "RO", "status", (
        RegField("done", 0, 1, "the segment ended at an END instruction without error"),
        RegField("busy", 1, 1, "running a segment"),
        RegField("error", 2, 1, "stopped on an error; see ERROR and ERROR_PC"),
        RegField("xfer", 3, 1, "a load or store is in progress"),
        RegField("xfer_done", 4, 1, "the last load or store completed without error"),
    )),
    Register("ERROR", 0x08, "RO", "error code (`ErrorCode`) of the last run or transfer"),
    Register("ERROR_PC", 0x0C, "RO", "index of the instruction that raised the error"),
    Register("ID", 0x10, "RO", f"constant 0x{ID_MAGIC:08X}"),
    Register("CONTRACT", 0x14, "RO", "contract version the core was built from"),
    Register("FINGERPRINT", 0x18, "RO", "architecture fingerprint the core was built for"),
    Register("INSTR_FIRST", 0x1C, "RW", "index in the instruction memory of the segment's first instruction"),
    Register("INSTR_COUNT", 0x20, "RW", "instructions in the segment"),
    Register("XFER_MEM", 0x24, "RW", "memory of the next load or store (`Memory`)"),
    Register("XFER_ADDR", 0x28, "RW", "byte address of the next load or store in XFER_MEM"),
    Register("XFER_BYTES", 0x2C, "RW", "bytes of the next load or store"),
    Register("IMEM_BYTES", 0x30, "RO", "size of the instruction memory"),
    Register("WMEM_BYTES", 0x34, "RO", "size of the weight memory"),
    Register("AMEM_BYTES", 0x38, "RO", "size of the activation arena"),
    Register("PC", 0x3C, "RO", "index of the instruction being executed"),
    Register("CYCLES", 0x40, "RO", "cycles the last start spent running instructions (summed over a batch's "
             "images; the stream transfers between them are not counted)"),
    Register("BATCH", 0x44, "RW", "images per start: 0 runs the segment once on the arena as it is; N >= 1 runs "
             "it N times, each time first taking IN_BYTES bytes from the input stream into the arena at IN_ADDR "
             "and afterwards sending OUT_BYTES bytes of the arena from OUT_ADDR on the output stream. The N "
             "images travel back to back as one packet each way, TLAST on the last beat only; from the second "
             "image on, each instruction adds its counters to its layer's bank"),
    Register("IN_ADDR", 0x48, "RW", "arena byte address of each image's input in a batch start"),
    Register("IN_BYTES", 0x4C, "RW", "bytes of each image's input in a batch start (addresses and sizes of a "
             "batch are multiples of XFER_ALIGN inside the arena, else the start stops with XFER)"),
    Register("OUT_ADDR", 0x50, "RW", "arena byte address of each image's output in a batch start"),
    Register("OUT_BYTES", 0x54, "RW", "bytes of each image's output in a batch start"),
    Register("IMAGE", 0x58, "RO", "images of the current (or last) batch start whose output has been sent"),
)
GLOBAL: dict[str, Register] = {r.name: r for r in GLOBAL_REGISTERS}

PRECISION_BASE = 0x1000
PRECISION_STRIDE = 0x10
MASK_BASE = 0x2000
COUNTER_BASE = 0x4000
COUNTER_STRIDE = 0x20
COUNTER_HIGH_BASE = 0x6000
"""Counters are 64 bits (a batch start sums its images into them): the low words at COUNTER_BASE, the high
words at the same layer and counter offsets from COUNTER_HIGH_BASE."""
COUNTER_BITS = 64
ADDRESS_SPACE = 0x8000
"""Bytes of AXI4-Lite address space the core decodes."""

PRECISION_REGISTERS: tuple[Register, ...] = (
    Register("MODE", 0x0, "RW", "precision mode of the layer", (
        RegField("mode", 0, 3, "`Mode`"),
        RegField("zero_skip", 3, 1, "skip term-part steps that are zero in every lane"),
        RegField("insens_hi", 4, 1, "DRQ/DAQ 4-bit rule: 0 = low part saturated, 1 = high part rounded"),
    )),
    Register("THRESHOLD", 0x4, "RW", "DRQ: a region is sensitive when the sum of |x| over it >= THRESHOLD"),
    Register("REGION", 0x8, "RW", "DRQ region geometry", (
        RegField("rh", 0, 8, "region height in input pixels"),
        RegField("rw", 8, 8, "region width in input pixels"),
    )),
    Register("SDP", 0xC, "RW", "SDP group geometry", (
        RegField("g", 0, 8, "values per group along the input channels"),
        RegField("k", 8, 8, "term parts kept per group (of 2g)"),
    )),
)

COUNTERS: tuple[str, ...] = (
    "busy_cycles",
    "stall_cycles",
    "compute_cycles",
    "mac_steps",
    "sensitive_regions",
    "total_regions",
    "kept_parts",
    "total_parts",
)
"""Per-layer performance counters, COUNTER_BITS each, in this order: the low 32-bit words at COUNTER_BASE +
layer*stride, the high words likewise from COUNTER_HIGH_BASE. The host reads them between starts."""
COUNTER_DOCS: dict[str, str] = {
    "busy_cycles": "cycles from the layer's instruction issue to its last output write",
    "stall_cycles": "compute cycles in which at least one active lane waited for a slower one",
    "compute_cycles": "cycles the PE array spent on multiply steps (busy_cycles minus overheads)",
    "mac_steps": "PE-steps that multiplied a term part (lane-steps x active columns): utilization is "
    "mac_steps / (rows * cols * busy_cycles)",
    "sensitive_regions": "DRQ: regions found sensitive (DAQ: mask cells at 8 bits, scaled)",
    "total_regions": "DRQ/DAQ: regions examined",
    "kept_parts": "SDP: non-masked term parts (int8/DRQ/DAQ: parts fed to the array)",
    "total_parts": "term parts of the input (2 per value)",
}
assert len(COUNTERS) * 4 <= COUNTER_STRIDE
assert COUNTER_BASE + MAX_LAYERS * COUNTER_STRIDE <= COUNTER_HIGH_BASE
assert COUNTER_HIGH_BASE + MAX_LAYERS * COUNTER_STRIDE <= ADDRESS_SPACE
assert PRECISION_BASE + MAX_LAYERS * PRECISION_STRIDE <= MASK_BASE


def precision_offset(layer: int, register: str) -> int:
    """Byte offset of a layer's precision register."""
    reg = next(r for r in PRECISION_REGISTERS if r.name == register)
    return PRECISION_BASE + layer * PRECISION_STRIDE + reg.offset


def counter_offset(layer: int, counter: str, high: bool = False) -> int:
    """Byte offset of a layer's performance counter: its low word, or with `high` its high word."""
    return (COUNTER_HIGH_BASE if high else COUNTER_BASE) + layer * COUNTER_STRIDE + 4 * COUNTERS.index(counter)


@dataclass(frozen=True)
class PrecisionRegs:
    """The values of one layer's precision-register bank; packs to and from the register words."""

    mode: Mode = Mode.INT8
    zero_skip: bool = False
    insens_hi: bool = False
    threshold: int = 0
    rh: int = 4
    rw: int = 4
    g: int = 8
    k: int = 16

    def to_words(self) -> dict[str, int]:
        """Register name -> 32-bit word."""
        values = {f.name: int(getattr(self, f.name)) for f in fields(self)}
        words = {}
        for reg in PRECISION_REGISTERS:
            if not reg.fields:
                words[reg.name] = values[reg.name.lower()] & 0xFFFFFFFF
                continue
            word = 0
            for f in reg.fields:
                if not 0 <= values[f.name] < (1 << f.width):
                    raise ValueError(f"precision register {reg.name}.{f.name}={values[f.name]} "
                                     f"does not fit {f.width} bits")
                word |= values[f.name] << f.lsb
            words[reg.name] = word
        return words

    @classmethod
    def from_words(cls, words: dict[str, int]) -> PrecisionRegs:
        values: dict[str, int] = {}
        for reg in PRECISION_REGISTERS:
            if not reg.fields:
                values[reg.name.lower()] = words[reg.name]
            for f in reg.fields:
                values[f.name] = (words[reg.name] >> f.lsb) & ((1 << f.width) - 1)
        return cls(mode=Mode(values.pop("mode")), zero_skip=bool(values.pop("zero_skip")),
                   insens_hi=bool(values.pop("insens_hi")), **values)

    def validate(self) -> None:
        """Raises ValueError for settings the overlay rejects (it would flag BAD_PRECISION)."""
        self.to_words()
        if self.mode == Mode.DRQ and not all(is_pow2(v) and v <= REGION_MAX for v in (self.rh, self.rw)):
            raise ValueError(f"DRQ region {self.rh}x{self.rw}: height and width must be powers of two up to "
                             f"{REGION_MAX}")
        if self.mode == Mode.SDP and not (self.g in SDP_G_VALUES and 0 <= self.k <= 2 * self.g):
            raise ValueError(f"SDP needs g in {SDP_G_VALUES} and 0 <= k <= 2g, got g={self.g} k={self.k}")


def pack_mask(mask) -> list[int]:  # noqa: ANN001 - numpy array, kept import-free
    """Packs a MASK_GRID x MASK_GRID array of cell precisions (0, 1, 2) into MASK_WORDS words."""
    flat = [int(v) for v in mask.reshape(-1)]
    if len(flat) != MASK_GRID * MASK_GRID or any(not 0 <= v <= 2 for v in flat):
        raise ValueError(f"region mask must be {MASK_GRID}x{MASK_GRID} with values 0, 1 or 2")
    per_word = 32 // MASK_BITS
    return [sum(v << (MASK_BITS * i) for i, v in enumerate(flat[w * per_word:(w + 1) * per_word]))
            for w in range(MASK_WORDS)]


def unpack_mask(words: list[int]) -> list[int]:
    """The MASK_GRID x MASK_GRID cell values, row-major, held by the MASK_WORDS mask registers: the inverse of
    `pack_mask`, for a model of the core that reads its mask memory as the hardware does."""
    if len(words) != MASK_WORDS:
        raise ValueError(f"the region mask is {MASK_WORDS} words, got {len(words)}")
    per_word = 32 // MASK_BITS
    return [(words[w] >> (MASK_BITS * i)) & ((1 << MASK_BITS) - 1) for w in range(MASK_WORDS) for i in range(per_word)]
