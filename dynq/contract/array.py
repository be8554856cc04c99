"""Structural constants of the PE array that bound what a layer or a precision setting may ask for.

They live apart from `timing` (which needs torch) so that the register map and a board-side driver can
check settings without importing the cycle model.
"""

from __future__ import annotations

BLOCK = 8
"""Input channels the array takes together: one weight word holds BLOCK channels x `cols` output channels of
one kernel tap, and the line registers hold BLOCK input channels. SDP groups must fit a block."""
LINE_WINDOWS = 4
"""A line register holds LINE_WINDOWS * rows bytes of one input row: lane j reads byte stride*j + tap."""
MAX_STRIDE = LINE_WINDOWS
"""Lane j reads line byte stride*j: with strides up to LINE_WINDOWS every lane's byte lies in the line, so a
lane chooses among MAX_STRIDE fixed positions. A single lane (an output one pixel wide) reads byte 0 at any
stride."""
MAX_DILATION = 1
"""The lines shift by one byte per kernel tap, so the array runs undilated kernels only."""
REGION_MAX = 16
"""DRQ regions are powers of two up to this in both dimensions (and boards have at least this many rows),
so an arena window read at a multiple of `rows` covers whole regions and a region row is found by a shift."""
REGION_ROW_TILES = 16
"""The DRQ predictor keeps the running sums of one band of regions (Rh input rows): one entry per window of
`rows` pixels across, so a DRQ layer's input is at most REGION_ROW_TILES * rows pixels wide."""
SDP_G_VALUES = tuple(1 << i for i in range(BLOCK.bit_length()))
"""Allowed SDP group sizes: powers of two up to BLOCK."""
POOL_ROW_TILES = 8
"""A CONV with fused 2x2 max pooling keeps the pooled pairs of an even output row, for every column of a
column tile, until the odd row arrives: a buffer of POOL_ROW_TILES x tiles of `rows` pixels."""


def is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def log2(n: int) -> int:
    """The exponent of a power of two (sizes the hardware splits into address bits)."""
    if not is_pow2(n):
        raise ValueError(f"{n} is not a power of two")
    return n.bit_length() - 1


def line_reads(stride: int, kw: int, lanes: int, rows: int) -> int:
    """Arena windows (rows bytes each) that fill one line: the bytes `lanes` active lanes need for every tap."""
    return -(-(stride * (lanes - 1) + kw) // rows)


def predictor_limits(iw: int, rows: int) -> str | None:
    """Why the DRQ region predictor cannot run over an input `iw` pixels wide, or None."""
    if -(-iw // rows) > REGION_ROW_TILES:
        return (f"DRQ on an input {iw} pixels wide: the region predictor keeps the sums of rows of at most "
                f"{REGION_ROW_TILES * rows} pixels; run this layer in int8 or SDP")
    return None


def fused_pool_limits(oh: int, ow: int, rows: int) -> str | None:
    """Why a CONV of output oh x ow cannot fuse a 2x2 stride-2 max pooling on the array, or None."""
    if min(oh, ow) < 2:
        return f"fused 2x2 pooling needs an output at least 2x2, not {oh}x{ow}"
    if -(-ow // rows) > POOL_ROW_TILES:
        return (f"fused 2x2 pooling keeps one output row of at most {POOL_ROW_TILES * rows} pixels; this one has "
                f"{ow}: pool in a separate layer")
    return None


def window_limits(stride: int, kw: int, dilation: tuple[int, int], ow: int, rows: int) -> str | None:
    """Why the array cannot run a window of this shape over an output `ow` wide, or None when it can."""
    if max(dilation) > MAX_DILATION:
        return f"dilation {dilation} is not supported (the array runs dilation 1 only)"
    lanes = min(ow, rows)
    if stride > MAX_STRIDE and lanes > 1:
        return (f"stride {stride} across is not supported on an output {ow} wide (the array runs strides up to "
                f"{MAX_STRIDE}, or any stride for an output one pixel wide)")
    if line_reads(stride, kw, lanes, rows) > LINE_WINDOWS:
        return (f"stride {stride} with a kernel {kw} wide needs {stride * (lanes - 1) + kw} bytes of an input "
                f"row per line; the line holds {LINE_WINDOWS * rows}")
    return None
