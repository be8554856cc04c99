"""The bit-exact emulator: executes `program.bin` over `weights.bin`, as the overlay would.

It never looks at the ONNX model; it decodes instructions and reads the weight image. Tensors are
batched (the overlay runs a batch image after image; here the batch is vectorization) and held as float
tensors of exact integers; convolutions go through `ExactConv`, which proves exactness per call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dynq.contract import ErrorCode, Instr, Op, PrecisionRegs, layout, timing
from dynq.contract import numerics as nx
from dynq.contract.precision import ConvPlan, check_geometry, check_window, conv_cost, conv_plan
from dynq.contract.registers import DeviceError
from dynq.runtime import laconic
from dynq.runtime.artifacts import Build
from dynq.runtime.exactconv import ExactConv
from dynq.runtime.transfers import Span


@dataclass
class _ConvConsts:
    conv: ExactConv
    weights: np.ndarray  # int8 [cout, cin/groups, kh, kw]
    scale: torch.Tensor  # float64 [1, cout, 1, 1], exactly mult * 2**-shift
    offset: torch.Tensor  # float64 [1, cout, 1, 1], bias * scale + 0.5: exact, so one multiply-add


class Arena:
    """The activation memory: bytes, with a cache of the float tensors last written at each offset.

    Reads that match a cached write are free; anything else (aliasing, concatenation, reinterpretation)
    goes through real bytes, so the memory semantics are those of the overlay's DDR arena.
    """

    def __init__(self, batch: int, nbytes: int):
        self.batch, self.nbytes = batch, nbytes
        self.bytes = torch.zeros((batch, nbytes), dtype=torch.uint8)
        self.cache: dict[int, tuple[int, bool, torch.Tensor]] = {}

    def _check(self, offset: int, size: int, pc: int) -> None:
        if offset < 0 or offset + size > self.nbytes:
            raise DeviceError(ErrorCode.ADDR_RANGE, pc, f"arena access [{offset}, {offset + size}) outside "
                                                        f"[0, {self.nbytes})")

    def flush(self, lo: int = 0, hi: int | None = None) -> None:
        """The cached tensors over bytes [lo, hi) (default: all) written back into the bytes (exact integers in
        range: the cast is exact)."""
        hi = self.nbytes if hi is None else hi
        for off, (size, signed, t) in list(self.cache.items()):
            if off < hi and lo < off + size:
                target = self.bytes[:, off:off + size]
                (target.view(torch.int8) if signed else target).copy_(t.reshape(self.batch, size))
                del self.cache[off]

    def image(self, image: int) -> torch.Tensor:
        """One image's whole arena with the cached tensors written into that row only: less work than `flush`
        when one row is wanted of a large batch (the cache stays, consistent with the row)."""
        row = self.bytes[image]
        for off, (size, signed, t) in self.cache.items():
            target = row[off:off + size]
            (target.view(torch.int8) if signed else target).copy_(t[image].reshape(size))
        return row

    def rows(self, image: int, images: int, lo: int, hi: int) -> np.ndarray:
        """Bytes [lo, hi) of images [image, image + images), cached tensors written back: what a device's
        arena must hold there. A [images, hi - lo] view; copy it before the next write."""
        self.flush(lo, hi)
        return self.bytes[image:image + images, lo:hi].numpy()

    def put_rows(self, image: int, data: np.ndarray, lo: int) -> None:
        """Replaces bytes from `lo` of images [image, image + len(data)) with what a device's arena holds
        there after a run ([images, n] uint8)."""
        hi = lo + data.shape[1]
        self.flush(lo, hi)
        self.bytes[image:image + len(data), lo:hi] = torch.tensor(data)

    def write(self, offset: int, t: torch.Tensor, signed: bool, pc: int) -> None:
        size = t[0].numel()
        self._check(offset, size, pc)
        self.flush(offset, offset + size)
        self.cache[offset] = (size, signed, t)

    def read(self, offset: int, shape: tuple[int, ...], signed: bool, pc: int) -> torch.Tensor:
        size = math.prod(shape)
        self._check(offset, size, pc)
        hit = self.cache.get(offset)
        if hit is not None and hit[0] == size and hit[1] == signed:
            return _canonical(hit[2].reshape(self.batch, *shape))
        self.flush(offset, offset + size)
        raw = self.bytes[:, offset:offset + size]
        raw = raw.view(torch.int8) if signed else raw
        return raw.to(torch.float32).reshape(self.batch, *shape)


def _canonical(t: torch.Tensor) -> torch.Tensor:
    """A batch of one may carry any batch stride; torch's fast channels-last kernels want the usual one."""
    if t.dim() == 4 and t.shape[0] == 1 and t.is_contiguous(memory_format=torch.channels_last):
        return t.as_strided(t.shape, (t[0].numel(), *t.stride()[1:]))
    return t


class Emulator:
    """Executes device segments of a build; one instance per loaded build (weights are decoded once)."""

    def __init__(self, build: Build):
        self.build = build
        self.rows = int(build.manifest["arch"]["rows"])
        self.cols = int(build.manifest["arch"]["cols"])
        self._consts: dict[int, _ConvConsts] = {}
        self._plans: dict[tuple[int, PrecisionRegs], ConvPlan] = {}
        """`conv_plan` per instruction and registers: the checks and geometry that depend on no data, made
        once instead of on every image of a one-image-per-start device."""
        self.model_laconic = False
        """Also report `laconic_cycles`: the same layers on a Laconic term-serial array (a comparison)."""

    def new_arena(self, batch: int) -> Arena:
        return Arena(batch, int(self.build.manifest["arena_bytes"]))

    def run_segment(self, arena: Arena, first: int, count: int, regs: list[PrecisionRegs],
                    mask: torch.Tensor | None, counters: dict[int, dict[str, int]],
                    keep: list[Span] | None = None) -> None:
        """Runs instructions [first, first+count) up to END, adding each layer's counters. `keep` is for a
        device's driver (which bytes to bring back); the emulator works in the host's arena itself."""
        program = self.build.instructions
        for pc in range(first, first + count):
            if pc >= len(program):
                raise DeviceError(ErrorCode.ADDR_RANGE, pc, "instruction fetch past the end of the program")
            ins = program[pc]
            if ins.op == Op.END:
                return
            if ins.op == Op.NOP:
                continue
            result = {Op.CONV: self._conv, Op.POOL: self._pool, Op.ADD: self._add, Op.MOVE: self._move}[ins.op](
                arena, ins, pc, regs, mask)
            layer = counters.setdefault(ins.layer, {})
            for key, value in result.items():
                layer[key] = layer.get(key, 0) + int(value)
        raise DeviceError(ErrorCode.ADDR_RANGE, first + count, "segment has no END instruction")

    # ---- CONV ------------------------------------------------------------------------------------
    def _conv_consts(self, ins: Instr, pc: int) -> _ConvConsts:
        if pc in self._consts:
            return self._consts[pc]
        if ins.src1 % layout.word_bytes(self.cols) or ins.param % layout.PARAM_BYTES:
            raise DeviceError(ErrorCode.ADDR_RANGE, pc, f"weights at {ins.src1} / records at {ins.param}: the "
                                                        f"weight memory is read in {layout.word_bytes(self.cols)}-byte "
                                                        f"words and {layout.PARAM_BYTES}-byte records")
        geom = timing.conv_geometry(ins)
        stream = self._weight_bytes(ins.src1, layout.conv_weight_count(geom, self.cols), pc, np.int8)
        w = layout.conv_weights(stream, geom, self.cols)
        bias, mult, shift = layout.params(self._weight_bytes(ins.param, ins.cout * layout.PARAM_BYTES, pc, np.uint8))
        scale = nx.scale_of(torch.from_numpy(mult), torch.from_numpy(shift))
        consts = _ConvConsts(
            conv=ExactConv(w, ins.groups, (ins.sh, ins.sw), (ins.dh, ins.dw)), weights=w, scale=scale.view(1, -1, 1, 1),
            offset=(torch.from_numpy(bias.astype(np.float64)) * scale + 0.5).view(1, -1, 1, 1))
        self._consts[pc] = consts
        return consts

    def _weight_bytes(self, offset: int, count: int, pc: int, dtype: type) -> np.ndarray:
        size = count * np.dtype(dtype).itemsize
        if offset + size > len(self.build.weights):
            raise DeviceError(ErrorCode.ADDR_RANGE, pc, f"weight read [{offset}, {offset + size}) beyond the "
                                                        f"{len(self.build.weights)}-byte image")
        return np.frombuffer(self.build.weights, dtype=dtype, count=count, offset=offset)

    def _conv(self, arena: Arena, ins: Instr, pc: int, regs: list[PrecisionRegs],
              mask: torch.Tensor | None) -> dict[str, int]:
        x = arena.read(ins.src0, (ins.cin, ins.ih, ins.iw), bool(ins.s0_signed), pc)  # range errors first, as the core
        reg = regs[ins.layer]
        plan = self._plans.get((pc, reg))
        if plan is None:
            plan = self._plans[pc, reg] = conv_plan(reg, ins, self.rows, self.cols, pc)
        xq, counters, geom = conv_cost(x, reg, ins, self.rows, self.cols, mask, pc, plan)
        consts = self._conv_consts(ins, pc)
        if ins.pt == ins.pb and ins.pl == ins.pr:
            padding = (ins.pt, ins.pl)
        else:
            xq, padding = F.pad(xq, (ins.pl, ins.pr, ins.pt, ins.pb)), (0, 0)
        acc = consts.conv(xq, padding).to(torch.float64)  # its shape is the instruction's (check_geometry)
        # requant(acc + bias) = floor(acc * scale + (bias * scale + 0.5)): every step is exact in float64,
        # and in-place steps keep the channels-last layout the next convolution wants
        y = acc.mul_(consts.scale).add_(consts.offset).floor_().clamp_(ins.clip_lo, ins.clip_hi).float()
        if ins.aux == 1:
            y = F.max_pool2d(y, 2, 2)
        arena.write(ins.dst, y, bool(ins.out_signed), pc)
        if self.model_laconic:
            term_serial = laconic.conv_cycles(x, consts.weights, geom, self.rows, self.cols)
            counters["laconic_cycles"] = counters["busy_cycles"] - counters["compute_cycles"] + term_serial
        return counters

    # ---- POOL / ADD / MOVE -------------------------------------------------------------------------
    def _pool(self, arena: Arena, ins: Instr, pc: int, regs: list[PrecisionRegs],
              mask: torch.Tensor | None) -> dict[str, int]:
        check_window(ins, self.rows, pc)
        check_geometry(ins, pc)
        x = arena.read(ins.src0, (ins.cin, ins.ih, ins.iw), bool(ins.s0_signed), pc)
        pad = (ins.pl, ins.pr, ins.pt, ins.pb)
        if ins.aux == 0:
            symmetric = ins.pt == ins.pb and ins.pl == ins.pr and 2 * max(ins.pt, ins.pl) <= min(ins.kh, ins.kw)
            if symmetric:  # torch pads max pooling with -inf itself
                y = F.max_pool2d(x, (ins.kh, ins.kw), (ins.sh, ins.sw), (ins.pt, ins.pl))
            else:
                y = F.max_pool2d(F.pad(x, pad, value=-1e9), (ins.kh, ins.kw), (ins.sh, ins.sw))
            y = y.clamp_(ins.clip_lo, ins.clip_hi)
        else:
            s = F.avg_pool2d(F.pad(x, pad), (ins.kh, ins.kw), (ins.sh, ins.sw), divisor_override=1)
            y = nx.requantize_fast(s, nx.scale_of(torch.tensor(ins.mult0), torch.tensor(ins.shift0)),
                                   ins.clip_lo, ins.clip_hi)
        self._check_shape(y, ins, pc)
        arena.write(ins.dst, y, bool(ins.out_signed), pc)
        cycles = timing.pool_cycles(ins.cin, ins.oh, ins.ow, ins.kh, ins.kw, ins.sw, self.rows)
        return {"busy_cycles": x.shape[0] * cycles}

    def _add(self, arena: Arena, ins: Instr, pc: int, regs: list[PrecisionRegs],
             mask: torch.Tensor | None) -> dict[str, int]:
        shape = (ins.cin, ins.ih, ins.iw)
        a = arena.read(ins.src0, shape, bool(ins.s0_signed), pc)
        b = arena.read(ins.src1, shape, bool(ins.s1_signed), pc)
        y = _rescale_sum(a, ins.mult0, bool(ins.s0_signed), b, ins.mult1, bool(ins.s1_signed), ins)
        arena.write(ins.dst, y, bool(ins.out_signed), pc)
        return {"busy_cycles": a.shape[0] * timing.eltwise_cycles(a[0].numel(), self.rows, 2)}

    def _move(self, arena: Arena, ins: Instr, pc: int, regs: list[PrecisionRegs],
              mask: torch.Tensor | None) -> dict[str, int]:
        x = arena.read(ins.src0, (ins.cin, ins.ih, ins.iw), bool(ins.s0_signed), pc)
        y = _rescale_sum(x, ins.mult0, bool(ins.s0_signed), None, 0, False, ins)
        arena.write(ins.dst, y, bool(ins.out_signed), pc)
        return {"busy_cycles": x.shape[0] * timing.eltwise_cycles(x[0].numel(), self.rows, 1)}

    @staticmethod
    def _check_shape(y: torch.Tensor, ins: Instr, pc: int) -> None:
        if tuple(y.shape[1:]) != (ins.cout, ins.oh, ins.ow):
            raise DeviceError(ErrorCode.BUFFER_OVERFLOW, pc, f"output is {list(y.shape[1:])}, instruction says "
                                                             f"{[ins.cout, ins.oh, ins.ow]}")


def _rescale_sum(a: torch.Tensor, m0: int, a_signed: bool, b: torch.Tensor | None, m1: int, b_signed: bool,
                 ins: Instr) -> torch.Tensor:
    """requant(a*m0 + b*m1, 1, shift0), clamped: in float32 when |a*m0| + |b*m1| < 2**23 makes every step
    exact (products, the power-of-two scaling and the +0.5), else in float64."""
    bound = nx.peak(a_signed) * abs(m0) + (nx.peak(b_signed) * abs(m1) if b is not None else 0)
    dtype = torch.float32 if bound < (1 << 23) else torch.float64
    acc = a.to(dtype).mul(m0)
    if b is not None:
        acc.add_(b.to(dtype), alpha=m1)
    return acc.mul_(2.0 ** -ins.shift0).add_(0.5).floor_().clamp_(ins.clip_lo, ins.clip_hi).float()
