"""The one contract: instruction set, register map, artifact formats and integer numerics.

Everything that the compiler, the emulator, the MyHDL overlay and the host driver must agree on is
defined here, once, as data. The other parts import it and derive what they need (encoders, decoders,
register offsets, documentation tables); none of them writes a field width or an opcode again.
"""

from dynq.contract.address_map import AddressMap, Segment
from dynq.contract.isa import FIELDS, INSTR_BYTES, INSTR_WORDS, Field, Instr, Op, decode_program, encode
from dynq.contract.registers import (
    MASK_GRID,
    MAX_LAYERS,
    ErrorCode,
    Memory,
    Mode,
    PrecisionRegs,
    RegField,
    Register,
)

CONTRACT_VERSION = 8
"""Bumped whenever any encoding, register offset or numeric rule changes; part of every fingerprint."""

__all__ = [
    "CONTRACT_VERSION",
    "AddressMap",
    "FIELDS",
    "INSTR_BYTES",
    "INSTR_WORDS",
    "MASK_GRID",
    "MAX_LAYERS",
    "ErrorCode",
    "Memory",
    "Field",
    "Instr",
    "Mode",
    "Op",
    "PrecisionRegs",
    "RegField",
    "Register",
    "Segment",
    "decode_program",
    "encode",
]
