"""Instruction set of the overlay: opcodes, one field table, and the encoder/decoder derived from it.

Every instruction is a fixed-size record of little-endian 32-bit words. Field positions are not typed
in by hand: they are assigned from the ordered table `_FIELD_SPECS` (a field never straddles a word),
so the compiler's encoder, the emulator's decoder, the HDL decoder and `docs/isa.md` cannot disagree.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from dynq.contract.array import POOL_ROW_TILES


class Op(enum.IntEnum):
    """Opcodes. Semantics are documented in `docs/isa.md` (generated from `OP_DOCS`)."""

    NOP = 0
    CONV = 1
    POOL = 2
    ADD = 3
    MOVE = 4
    END = 15


OP_DOCS: dict[Op, str] = {
    Op.NOP: "Does nothing; costs `NOP_CYCLES`.",
    Op.CONV: (
        "Convolution (Gemm is a 1x1 convolution on a 1x1 map). `out[co,y,x] = clamp(requant(sum(x' * w) + "
        "bias[co], mult[co], shift[co]), clip_lo, clip_hi)` where x' is the input after the layer's "
        "precision rule (registers of `layer`). Weights int8 at `src1` and per-channel records (bias, mult, shift) at "
        "`param`, laid out as in 'Weight image layout'. `aux=1` fuses a 2x2 stride-2 max "
        "pooling: `oh, ow` stay the convolution's, `dst` receives `[cout, oh // 2, ow // 2]`; the output must be "
        f"at least 2x2 and at most {POOL_ROW_TILES} x `rows` wide (`array.POOL_ROW_TILES`; BUFFER_OVERFLOW otherwise)."
    ),
    Op.POOL: (
        "Pooling. `aux=0`: max over the window (padding never wins). `aux=1`: "
        "`clamp(requant(sum(window), mult0, shift0))`, padding counts as zero."
    ),
    Op.ADD: (
        "Element-wise add with rescale: `clamp(requant(src0*mult0 + src1*mult1, 1, shift0))` "
        "(mult0/mult1 signed)."
    ),
    Op.MOVE: "Rescaled copy (Concat, scale changes): `clamp(requant(src0 * mult0, 1, shift0))`.",
    Op.END: "Ends a device segment: the core raises `done`.",
}


@dataclass(frozen=True)
class Field:
    """One instruction field: its place (`word`, `lsb`), `width`, and whether it is two's complement."""

    name: str
    width: int
    signed: bool
    word: int
    lsb: int
    doc: str

    @property
    def lo(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def hi(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1


# (name, width, signed, doc), in packing order.
_FIELD_SPECS: tuple[tuple[str, int, bool, str], ...] = (
    ("opcode", 4, False, "operation, see `Op`"),
    ("layer", 8, False, "precision-register bank and counter slot of this layer"),
    ("s0_signed", 1, False, "src0 holds int8 (1) or uint8 (0)"),
    ("s1_signed", 1, False, "src1 holds int8 (1) or uint8 (0) (ADD only)"),
    ("out_signed", 1, False, "dst holds int8 (1) or uint8 (0)"),
    ("aux", 4, False, "POOL: 0 max, 1 average; CONV: 1 fused 2x2 max pooling"),
    ("src0", 32, False, "byte offset of the input tensor in the activation arena"),
    ("src1", 32, False, "CONV: byte offset of the weights in the weight image; ADD: second input in the arena"),
    ("dst", 32, False, "byte offset of the output tensor in the activation arena"),
    ("param", 32, False, "CONV: byte offset of per-channel bias/mult/shift in the weight image"),
    ("cin", 16, False, "input channels"),
    ("cout", 16, False, "output channels"),
    ("ih", 16, False, "input height"),
    ("iw", 16, False, "input width"),
    ("oh", 16, False, "output height"),
    ("ow", 16, False, "output width"),
    ("kh", 8, False, "kernel height"),
    ("kw", 8, False, "kernel width"),
    ("sh", 4, False, "stride along height"),
    ("sw", 4, False, "stride along width"),
    ("dh", 4, False, "dilation along height"),
    ("dw", 4, False, "dilation along width"),
    ("pt", 4, False, "padding top"),
    ("pl", 4, False, "padding left"),
    ("pb", 4, False, "padding bottom"),
    ("pr", 4, False, "padding right"),
    ("groups", 16, False, "convolution groups (cin for depthwise)"),
    ("clip_lo", 16, True, "lower clamp of the output"),
    ("clip_hi", 16, True, "upper clamp of the output"),
    ("mult0", 16, True, "POOL/ADD/MOVE multiplier of src0"),
    ("mult1", 16, True, "ADD multiplier of src1"),
    ("shift0", 8, False, "POOL/ADD/MOVE rounding right shift"),
)


def _pack(specs: tuple[tuple[str, int, bool, str], ...]) -> tuple[Field, ...]:
    fields, word, lsb = [], 0, 0
    for name, width, signed, doc in specs:
        if lsb + width > 32:
            word, lsb = word + 1, 0
        fields.append(Field(name, width, signed, word, lsb, doc))
        lsb += width
    return tuple(fields)


FIELDS: tuple[Field, ...] = _pack(_FIELD_SPECS)
FIELD: dict[str, Field] = {f.name: f for f in FIELDS}
INSTR_WORDS = 16
"""Words per instruction; the packed table needs fewer, the rest is reserved (zero)."""
INSTR_BYTES = 4 * INSTR_WORDS
assert FIELDS[-1].word < INSTR_WORDS


@dataclass(frozen=True)
class Instr:
    """A decoded instruction: the opcode and every field value (absent fields are 0)."""

    op: Op
    values: dict[str, int]

    def __post_init__(self) -> None:
        """Every field also as a plain attribute (`ins.cin`): read many times per image, so no lookup hook."""
        self.__dict__.update(self.values)


def window_output(size: int, kernel: int, stride: int, dilation: int, padding: int) -> int:
    """Output length along one axis of a CONV's or POOL's window (floor mode, `padding` on both sides
    together); 0 when the window does not fit."""
    span = size + padding - dilation * (kernel - 1) - 1
    return span // stride + 1 if span >= 0 else 0


def geometry_error(ins: Instr) -> str | None:
    """Why a CONV's or POOL's output size `oh x ow` is not what its input, window, stride, dilation (CONV)
    and padding give, or None. The array computes the output the fields say, so a mismatch is a malformed
    instruction (BUFFER_OVERFLOW)."""
    dh, dw = (ins.dh, ins.dw) if ins.op == Op.CONV else (1, 1)
    if min(ins.kh, ins.kw, ins.sh, ins.sw, dh, dw) < 1:
        return (f"window {ins.kh}x{ins.kw}, stride {ins.sh}x{ins.sw} and dilation {dh}x{dw}: each must be at "
                "least 1")
    oh = window_output(ins.ih, ins.kh, ins.sh, dh, ins.pt + ins.pb)
    ow = window_output(ins.iw, ins.kw, ins.sw, dw, ins.pl + ins.pr)
    if (oh, ow) != (ins.oh, ins.ow) or min(oh, ow) < 1:
        return (f"output {ins.oh}x{ins.ow} is not the {ins.kh}x{ins.kw} window's over the {ins.ih}x{ins.iw} "
                f"input ({oh}x{ow})")
    if ins.op == Op.POOL:
        return pool_padding_error(ins.kh, ins.kw, ins.pt, ins.pl, ins.pb, ins.pr)
    return None


def pool_padding_error(kh: int, kw: int, pt: int, pl: int, pb: int, pr: int) -> str | None:
    """Why this padding is not allowed around a kh x kw pooling window, or None: padding must be smaller
    than the window, so that every window holds an input pixel."""
    if max(pt, pb) >= kh or max(pl, pr) >= kw:
        return (f"pooling padding (top {pt}, left {pl}, bottom {pb}, right {pr}) must be smaller than the "
                f"{kh}x{kw} window, so that every window holds an input pixel")
    return None


def arena_reads(ins: Instr) -> tuple[tuple[int, int], ...]:
    """The arena bytes [lo, hi) an instruction reads: src0 (and src1 of an ADD), one image's input tensor
    each. A host that keeps a copy of the arena moves exactly these in before a segment needs them."""
    if ins.op not in (Op.CONV, Op.POOL, Op.ADD, Op.MOVE):
        return ()
    size = ins.cin * ins.ih * ins.iw
    sources = (ins.src0, ins.src1) if ins.op == Op.ADD else (ins.src0,)
    return tuple((src, src + size) for src in sources)


def arena_write(ins: Instr) -> tuple[int, int] | None:
    """The arena bytes [lo, hi) an instruction writes (None for NOP and END): a CONV's output, halved on
    both axes by a fused pooling (`aux=1`); a POOL's `[cout, oh, ow]`; an ADD's or MOVE's, its input's size."""
    if ins.op == Op.CONV:
        size = ins.cout * (ins.oh // 2) * (ins.ow // 2) if ins.aux == 1 else ins.cout * ins.oh * ins.ow
    elif ins.op == Op.POOL:
        size = ins.cout * ins.oh * ins.ow
    elif ins.op in (Op.ADD, Op.MOVE):
        size = ins.cin * ins.ih * ins.iw
    else:
        return None
    return ins.dst, ins.dst + size


class EncodeError(ValueError):
    """A field value does not fit its width: the layer cannot be expressed in this ISA."""


def encode(op: Op, **values: int) -> bytes:
    """Encodes one instruction; unknown field names and out-of-range values raise EncodeError."""
    words = [0] * INSTR_WORDS
    values = {"opcode": int(op), **values}
    for name, value in values.items():
        field = FIELD.get(name)
        if field is None:
            raise EncodeError(f"unknown instruction field {name!r}")
        value = int(value)
        if not field.lo <= value <= field.hi:
            raise EncodeError(
                f"{op.name}.{name}={value} does not fit {field.width} bits ({field.lo}..{field.hi})"
            )
        words[field.word] |= (value & ((1 << field.width) - 1)) << field.lsb
    return np.asarray(words, dtype="<u4").tobytes()


class DecodeError(ValueError):
    """The bytes are not a valid instruction of this contract (unknown opcode, wrong length)."""


def decode(record: bytes) -> Instr:
    """Decodes one instruction record."""
    if len(record) != INSTR_BYTES:
        raise DecodeError(f"instruction record has {len(record)} bytes, expected {INSTR_BYTES}")
    words = np.frombuffer(record, dtype="<u4")
    values = {}
    for field in FIELDS:
        raw = (int(words[field.word]) >> field.lsb) & ((1 << field.width) - 1)
        if field.signed and raw >> (field.width - 1):
            raw -= 1 << field.width
        values[field.name] = raw
    try:
        op = Op(values["opcode"])
    except ValueError:
        raise DecodeError(f"unknown opcode {values['opcode']}") from None
    return Instr(op, values)


def decode_program(body: bytes) -> list[Instr]:
    """Decodes a whole instruction stream (the body of `program.bin`)."""
    if len(body) % INSTR_BYTES:
        raise DecodeError(f"instruction stream of {len(body)} bytes is not a multiple of {INSTR_BYTES}")
    return [decode(body[i : i + INSTR_BYTES]) for i in range(0, len(body), INSTR_BYTES)]
