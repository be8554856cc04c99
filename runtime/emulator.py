"""The bit-exact emulator: executes `program.bin` over `weights.bin`, as the overlay would.

It never looks at the ONNX model; it decodes instructions and reads the weight image. Tensors are
batched (the overlay runs one image per start; the batch here is only vectorization) and held as float
tensors of exact integers. Convolutions use the float32 oneDNN path only where a bound proves every
partial sum stays below 2**24 (then float32 is exact); otherwise they run in float64, exact below 2**53.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from dynq.runtime.artifacts import Build

from dynq.contract import ErrorCode, Instr, Mode, Op, PrecisionRegs, timing
from dynq.contract import numerics as nx
from dynq.errors import DynqError

EXACT_F32 = float(1 << 24)
SAFETY = 1.001  # covers float32 rounding of the bound computations themselves


class DeviceError(DynqError, RuntimeError):
    """The overlay (or its model) stopped with an error code in the status register."""

    def __init__(self, code: ErrorCode, pc: int, detail: str):
        super().__init__(f"overlay error {code.name} at instruction {pc}: {detail}")
        self.code, self.pc = code, pc


@dataclass
class _ConvConsts:
    weight: torch.Tensor  # float32 [cout, cin/groups, kh, kw]
    weight64: torch.Tensor
    bias: torch.Tensor  # float64 [1, cout, 1, 1]
    scale: torch.Tensor  # float64 [1, cout, 1, 1], exactly mult * 2**-shift
    abs_sum_max: float
    l2_max: float


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

    def _flush(self, lo: int, hi: int) -> None:
        for off, (size, signed, t) in list(self.cache.items()):
            if off < hi and lo < off + size:
                dtype = torch.int8 if signed else torch.uint8
                self.bytes[:, off:off + size] = t.reshape(self.batch, size).to(dtype).view(torch.uint8)
                del self.cache[off]

    def write(self, offset: int, t: torch.Tensor, signed: bool, pc: int) -> None:
        size = t[0].numel()
        self._check(offset, size, pc)
        self._flush(offset, offset + size)
        self.cache[offset] = (size, signed, t)

    def read(self, offset: int, shape: tuple[int, ...], signed: bool, pc: int) -> torch.Tensor:
        size = int(np.prod(shape))
        self._check(offset, size, pc)
        hit = self.cache.get(offset)
        if hit is not None and hit[0] == size and hit[1] == signed:
            return hit[2].reshape(self.batch, *shape)
        self._flush(offset, offset + size)
        raw = self.bytes[:, offset:offset + size]
        raw = raw.view(torch.int8) if signed else raw
        return raw.to(torch.float32).reshape(self.batch, *shape)


class Emulator:
    """Executes device segments of a build; one instance per loaded build (weights are decoded once)."""

    def __init__(self, build: Build):
        self.build = build
        self.rows = int(build.manifest["arch"]["rows"])
        self.cols = int(build.manifest["arch"]["cols"])
        self._consts: dict[int, _ConvConsts] = {}

    def new_arena(self, batch: int) -> Arena:
        return Arena(batch, int(self.build.manifest["arena_bytes"]))

    def run_segment(self, arena: Arena, first: int, count: int, regs: list[PrecisionRegs],
                    mask: torch.Tensor | None, counters: dict[int, dict[str, int]]) -> None:
        """Runs instructions [first, first+count) up to END, adding each layer's counters."""
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
        cin_g = ins.cin // max(ins.groups, 1)
        count = ins.cout * cin_g * ins.kh * ins.kw
        w = self._weight_bytes(ins.src1, count, pc, np.int8).reshape(ins.cout, cin_g, ins.kh, ins.kw)
        params = self._weight_bytes(ins.param, 3 * ins.cout * 4, pc, np.uint8).view("<i4").reshape(3, ins.cout)
        w64 = torch.from_numpy(w.astype(np.float64))
        scale = nx.scale_of(torch.from_numpy(params[1].astype(np.int64)), torch.from_numpy(params[2].astype(np.int64)))
        flat = w64.reshape(ins.cout, -1)
        consts = _ConvConsts(
            weight=w64.to(torch.float32).contiguous(memory_format=torch.channels_last), weight64=w64,
            bias=torch.from_numpy(params[0].astype(np.float64)).view(1, -1, 1, 1), scale=scale.view(1, -1, 1, 1),
            abs_sum_max=float(flat.abs().sum(1).max()), l2_max=float(flat.square().sum(1).sqrt().max()))
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
        if ins.groups < 1 or ins.cin % ins.groups or ins.cout % ins.groups:
            raise DeviceError(ErrorCode.BAD_OPCODE, pc, f"groups={ins.groups} does not divide cin/cout")
        consts = self._conv_consts(ins, pc)
        x = arena.read(ins.src0, (ins.cin, ins.ih, ins.iw), bool(ins.s0_signed), pc)
        reg = regs[ins.layer]
        xq, steps, stats, units = apply_precision(x, reg, bool(ins.s0_signed), ins.groups, mask, pc)
        acc = exact_conv(xq, consts, ins)
        y = nx.requantize_fast(acc.add_(consts.bias) if acc.dtype == torch.float64 else
                               acc.to(torch.float64).add_(consts.bias), consts.scale, ins.clip_lo, ins.clip_hi)
        arena.write(ins.dst, y, bool(ins.out_signed), pc)
        geom = timing.ConvGeometry(units, ins.groups, ins.cout // ins.groups, ins.oh, ins.ow, ins.kh, ins.kw,
                                   ins.sh, ins.sw, ins.dh, ins.dw, ins.pt, ins.pl, ins.pb, ins.pr)
        predictor = timing.predictor_cycles(ins.cin * ins.ih * ins.iw, self.rows) if reg.mode == Mode.DRQ else 0
        counters = timing.conv_counters(steps, x.shape[0], nx.pad_cost(reg), geom, self.rows, self.cols, predictor)
        return {**counters, **stats}

    # ---- POOL / ADD / MOVE -------------------------------------------------------------------------
    def _pool(self, arena: Arena, ins: Instr, pc: int, regs: list[PrecisionRegs],
              mask: torch.Tensor | None) -> dict[str, int]:
        x = arena.read(ins.src0, (ins.cin, ins.ih, ins.iw), bool(ins.s0_signed), pc)
        pad = (ins.pl, ins.pr, ins.pt, ins.pb)
        if ins.aux == 0:
            y = F.max_pool2d(F.pad(x, pad, value=-1e9), (ins.kh, ins.kw), (ins.sh, ins.sw))
            y = y.clamp_(ins.clip_lo, ins.clip_hi)
        else:
            s = F.avg_pool2d(F.pad(x, pad), (ins.kh, ins.kw), (ins.sh, ins.sw), divisor_override=1)
            y = nx.requantize_fast(s, nx.scale_of(torch.tensor(ins.mult0), torch.tensor(ins.shift0)),
                                   ins.clip_lo, ins.clip_hi)
        self._check_shape(y, ins, pc)
        arena.write(ins.dst, y, bool(ins.out_signed), pc)
        return {"busy_cycles": x.shape[0] * timing.pool_cycles(ins.cin, ins.oh, ins.ow, ins.kh, ins.kw, self.rows)}

    def _add(self, arena: Arena, ins: Instr, pc: int, regs: list[PrecisionRegs],
             mask: torch.Tensor | None) -> dict[str, int]:
        shape = (ins.cin, ins.ih, ins.iw)
        a = arena.read(ins.src0, shape, bool(ins.s0_signed), pc).to(torch.float64)
        b = arena.read(ins.src1, shape, bool(ins.s1_signed), pc).to(torch.float64)
        acc = a.mul_(ins.mult0).add_(b.mul_(ins.mult1))
        y = nx.requantize_fast(acc, nx.scale_of(torch.tensor(1), torch.tensor(ins.shift0)), ins.clip_lo, ins.clip_hi)
        arena.write(ins.dst, y, bool(ins.out_signed), pc)
        return {"busy_cycles": a.shape[0] * timing.eltwise_cycles(a[0].numel(), self.rows)}

    def _move(self, arena: Arena, ins: Instr, pc: int, regs: list[PrecisionRegs],
              mask: torch.Tensor | None) -> dict[str, int]:
        x = arena.read(ins.src0, (ins.cin, ins.ih, ins.iw), bool(ins.s0_signed), pc)
        y = nx.requantize_fast(x, nx.scale_of(torch.tensor(ins.mult0), torch.tensor(ins.shift0)),
                               ins.clip_lo, ins.clip_hi)
        arena.write(ins.dst, y, bool(ins.out_signed), pc)
        return {"busy_cycles": x.shape[0] * timing.eltwise_cycles(x[0].numel(), self.rows)}

    @staticmethod
    def _check_shape(y: torch.Tensor, ins: Instr, pc: int) -> None:
        if tuple(y.shape[1:]) != (ins.cout, ins.oh, ins.ow):
            raise DeviceError(ErrorCode.BUFFER_OVERFLOW, pc, f"output is {list(y.shape[1:])}, instruction says "
                                                             f"{[ins.cout, ins.oh, ins.ow]}")


def exact_conv(x: torch.Tensor, c: _ConvConsts, ins: Instr) -> torch.Tensor:
    """The exact integer convolution (no bias), float32 where provably exact, else float64."""
    x = F.pad(x, (ins.pl, ins.pr, ins.pt, ins.pb))
    args = ((ins.sh, ins.sw), 0, (ins.dh, ins.dw), ins.groups)
    if _f32_exact(x, c, ins):
        out = F.conv2d(x.contiguous(memory_format=torch.channels_last), c.weight, None, *args)
    else:
        out = F.conv2d(x.to(torch.float64), c.weight64, None, *args)
    if tuple(out.shape[2:]) != (ins.oh, ins.ow):
        raise DeviceError(ErrorCode.BUFFER_OVERFLOW, -1, f"conv output {list(out.shape[2:])} != "
                                                         f"{[ins.oh, ins.ow]} from the instruction")
    return out


def _f32_exact(x: torch.Tensor, c: _ConvConsts, ins: Instr) -> bool:
    """Proves every partial sum of the conv is below 2**24: by max|x|*sum|w|, else by Cauchy-Schwarz."""
    xmax = float(x.abs().max()) if x.numel() else 0.0
    if xmax * c.abs_sum_max * SAFETY < EXACT_F32:
        return True
    energy = x.square().sum(dim=1, keepdim=True)
    window = torch.ones((1, 1, ins.kh, ins.kw), dtype=x.dtype)
    local = F.conv2d(energy, window, None, (ins.sh, ins.sw), 0, (ins.dh, ins.dw))
    return float(local.max()) ** 0.5 * c.l2_max * SAFETY**2 < EXACT_F32


def apply_precision(x: torch.Tensor, reg: PrecisionRegs, signed: bool, groups: int, mask: torch.Tensor | None,
                    pc: int) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, int], int]:
    """The input as the PE array computes with it under the layer's registers.

    Returns (x', steps per sync unit and position or None when uniform, statistics counters, units per
    convolution group).
    """
    n, c, h, w = x.shape
    values = x.numel()
    stats = {"total_parts": 2 * values}
    if reg.mode == Mode.INT8:
        if not reg.zero_skip:
            return x, None, {**stats, "kept_parts": 2 * values}, c // groups
        hi, lo = nx.split_parts(x)
        steps = (hi != 0).to(torch.int16) + (lo != 0).to(torch.int16)
        return x, steps, {**stats, "kept_parts": int(steps.sum())}, c // groups
    if reg.mode in (Mode.DRQ, Mode.DAQ):
        if reg.mode == Mode.DRQ:
            sums = nx.region_sums(x, reg.rh, reg.rw)
            sensitive_regions = sums >= reg.threshold
            level = nx.expand_regions(sensitive_regions, reg.rh, reg.rw, h, w).to(torch.int16) + 1
            stats.update(sensitive_regions=int(sensitive_regions.sum()), total_regions=sensitive_regions.numel())
        else:
            if mask is None:
                raise DeviceError(ErrorCode.BAD_PRECISION, pc, "DAQ mode needs a region mask")
            level = nx.mask_cells(mask, h, w).to(torch.int16).expand(n, c, h, w)
            stats.update(sensitive_regions=int((level == 2).sum()), total_regions=values)
        low = nx.insensitive(x, signed, reg.insens_hi)
        xq = torch.where(level == 2, x, torch.where(level == 1, low, torch.zeros_like(x)))
        if reg.zero_skip:
            hi, lo = nx.split_parts(xq)
            full = (hi != 0).to(torch.int16) + (lo != 0).to(torch.int16)
            steps = torch.where(level == 2, full, (xq != 0).to(torch.int16))
        else:
            steps = level.clone() if reg.mode == Mode.DAQ else level.expand(n, c, h, w).clone()
        return xq, steps, {**stats, "kept_parts": int(steps.sum())}, c // groups
    cin_g = c // groups
    xg = x.reshape(n * groups, cin_g, h, w)
    xq, keep_hi, keep_lo = nx.sdp_keep(xg, reg.g, reg.k)
    units = -(-cin_g // reg.g)
    stats["kept_parts"] = int(keep_hi.sum() + keep_lo.sum())
    xq = xq.reshape(n, c, h, w)
    if not reg.zero_skip:
        return xq, None, stats, units
    hi, lo = nx.split_parts(xq.reshape(n * groups, cin_g, h, w))
    used = ((hi != 0) & keep_hi).to(torch.int16) + ((lo != 0) & keep_lo).to(torch.int16)
    padded = F.pad(used, (0, 0, 0, 0, 0, units * reg.g - cin_g))
    steps = padded.view(n * groups, units, reg.g, h, w).sum(dim=2).reshape(n, groups * units, h, w)
    return xq, steps, stats, units
