"""Lowering: quantize the float graph and turn each node into overlay instructions or a host partition.

Numerics follow DESIGN.md section 3: int8 symmetric per-output-channel weights, int32 bias at
s_x*s_w[c], 8-bit per-tensor activations with zero point 0 (uint8 where the value is known
non-negative), and per-channel (mult, shift) requantization from `dynq.contract.numerics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dynq.boards import Arch
from dynq.compiler.graph import CompileError, Graph, Node
from dynq.compiler.passes import QuantInfo, clip_bounds
from dynq.contract import MAX_LAYERS, Op, encode, layout, timing
from dynq.contract.isa import EncodeError, pool_padding_error
from dynq.contract.numerics import ACC_BITS, WEIGHT_MAX, accumulator_bound, quantize_multiplier, value_range

DEVICE_OPS = {"Conv", "Gemm", "MaxPool", "AveragePool", "GlobalAveragePool", "Add", "Relu", "Clip", "Concat",
              "Flatten", "Reshape"}
ALIGN = 64


@dataclass
class QTensor:
    """A device tensor: shape (C, H, W) of one image, scale, integer clamp range, arena offset."""

    name: str
    shape: tuple[int, int, int]
    scale: float
    lo: int
    hi: int
    offset: int = -1

    @property
    def signed(self) -> bool:
        return self.lo < 0

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "scale": self.scale, "lo": self.lo,
                "hi": self.hi, "signed": self.signed, "offset": self.offset}


@dataclass
class LayerInfo:
    index: int
    name: str
    kind: str  # conv, gemm, pool, add, move
    nodes: list[str]
    dynamic: bool = False  # eligible for dynamic precision under the default policy
    groups: int = 1
    input: str = ""
    output: str = ""


@dataclass
class HostPartition:
    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]


@dataclass
class Lowered:
    tensors: dict[str, QTensor]
    layers: list[LayerInfo]
    segments: list[list[bytes] | HostPartition]
    weights: bytearray
    arena_bytes: int
    input: str
    outputs: list[str]


class Lowerer:
    def __init__(self, g: Graph, arch: Arch, quant: QuantInfo, ranges: dict, source: str):
        self.g, self.arch, self.quant, self.ranges, self.source = g, arch, quant, ranges, source
        self.tensors: dict[str, QTensor] = {}
        self.layers: list[LayerInfo] = []
        self.segments: list[list[bytes] | HostPartition] = []
        self.weights = bytearray()
        self.arena = 0
        self.seen_conv = False

    # ---- tensors ---------------------------------------------------------------------------------
    def _shape(self, name: str) -> tuple[int, int, int]:
        s = self.g.shapes[name]
        if len(s) == 4 and s[0] == 1:
            return (s[1], s[2], s[3])
        if len(s) == 2 and s[0] == 1:
            return (s[1], 1, 1)
        raise CompileError(f"{self.source}: tensor {name!r} has shape {list(s)}; the overlay handles "
                           "[1, C, H, W] and [1, F]")

    def new_tensor(self, name: str, nonneg: bool = False, clip: tuple[float, float] | None = None,
                    like: QTensor | None = None, alias: bool = False) -> QTensor:
        """A device tensor; `like` copies another's scale and range, `alias` also its arena bytes."""
        shape = self._shape(name)
        scale, lo, hi = (like.scale, like.lo, like.hi) if like is not None else self._scale(name, nonneg, clip)
        t = QTensor(name, shape, scale, lo, hi, like.offset if alias and like is not None else self.arena)
        if not alias:
            self.arena += -(-t.nbytes // ALIGN) * ALIGN
        self.tensors[name] = t
        return t

    def _scale(self, name: str, nonneg: bool, clip: tuple[float, float] | None) -> tuple[float, int, int]:
        if name in self.quant.act_scales:
            scale, signed = self.quant.act_scales[name]
            lo, hi = value_range(signed)
            return scale, (0 if nonneg else lo), hi
        if name not in self.ranges:
            raise CompileError(f"{self.source}: no calibration range for tensor {name!r}")
        r = self.ranges[name]
        absmax = r.absmax
        if clip is not None and math.isfinite(clip[1]):
            absmax = min(absmax, clip[1]) if clip[1] > 0 else absmax
        nonneg = nonneg or (clip is not None and clip[0] >= 0)
        lo, hi = value_range(not nonneg)
        return absmax / hi, lo, hi

    def _input(self, name: str, node: Node) -> QTensor:
        if name not in self.tensors:
            raise CompileError(f"{self.source}: {node.name} ({node.op}) reads {name!r}, which is not a device "
                               "tensor")
        return self.tensors[name]

    # ---- instructions ----------------------------------------------------------------------------
    def _emit(self, op: Op, layer: LayerInfo | None, **fields: int) -> None:
        segment = self.segments[-1] if self.segments and isinstance(self.segments[-1], list) else None
        if segment is None:
            segment = []
            self.segments.append(segment)
        try:
            segment.append(encode(op, layer=layer.index if layer else 0, **fields))
        except EncodeError as exc:
            raise CompileError(f"{self.source}: {layer.name if layer else op.name} cannot be encoded: {exc}") from exc

    def _layer(self, node: Node, kind: str, dynamic: bool = False) -> LayerInfo:
        if len(self.layers) >= MAX_LAYERS:
            raise CompileError(f"{self.source}: more than {MAX_LAYERS} device layers; the overlay has "
                               f"{MAX_LAYERS} precision/counter banks")
        layer = LayerInfo(len(self.layers), node.name, kind, [node.name], dynamic=dynamic)
        self.layers.append(layer)
        return layer

    def _blob(self, data: bytes, align: int = 4) -> int:
        """Appends to the weight image at a multiple of `align` bytes; returns the offset."""
        self.weights += b"\0" * (-len(self.weights) % align)
        offset = len(self.weights)
        self.weights += data + b"\0" * (-len(data) % 4)
        return offset

    @staticmethod
    def _clip_q(out: QTensor, clip: tuple[float, float] | None) -> tuple[int, int]:
        lo, hi = out.lo, out.hi
        if clip is not None:
            if math.isfinite(clip[0]):
                lo = max(lo, min(hi, round(clip[0] / out.scale)))
            if math.isfinite(clip[1]):
                hi = min(hi, max(lo, round(clip[1] / out.scale)))
        return lo, hi

    # ---- ops -------------------------------------------------------------------------------------
    def conv(self, node: Node) -> None:
        x = self._input(node.inputs[0], node)
        if node.inputs[1] not in self.g.consts:
            raise CompileError(f"{self.source}: {node.name}: weights must be constant")
        w = self.g.consts[node.inputs[1]].astype(np.float64)
        b = self.g.consts[node.inputs[2]].astype(np.float64) if len(node.inputs) > 2 and node.inputs[2] else None
        if node.op == "Gemm":
            alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
            if node.attr("transA", 0):
                raise CompileError(f"{self.source}: {node.name}: Gemm with transA=1 is not supported")
            w = (w if node.attr("transB", 0) else w.T) * alpha
            b = None if b is None else (b.reshape(-1) * beta)
            w = w.reshape(w.shape[0], -1, 1, 1)
            if w.shape[1] != x.nbytes:
                raise CompileError(f"{self.source}: {node.name}: Gemm expects {w.shape[1]} inputs, "
                                   f"its input has {x.nbytes}")
            k = [1, 1]
            strides, dil, pads, groups = [1, 1], [1, 1], [0, 0, 0, 0], 1
            xin = (x.nbytes, 1, 1)
        else:
            k = list(w.shape[2:])
            if len(k) != 2:
                raise CompileError(f"{self.source}: {node.name}: only 2-D convolutions are supported")
            strides = list(node.attr("strides", [1, 1]))
            dil = list(node.attr("dilations", [1, 1]))
            groups = node.attr("group", 1)
            pads = self._pads(node, x.shape[1:], k, strides, dil)
            xin = x.shape
        clip = node.attr("clip")
        out = self.new_tensor(node.outputs[0], nonneg=False, clip=clip)
        cout, cin_g = w.shape[0], w.shape[1]
        wq, sw = self._weights(node.inputs[1], w)
        if b is None:
            b = np.zeros(cout)
        acc_scale = x.scale * sw
        bias = np.round(b / acc_scale)
        bound = accumulator_bound(cin_g * k[0] * k[1], int(np.abs(wq).max(initial=0)), x.signed)
        if bound + np.abs(bias).max(initial=0) >= 2 ** (ACC_BITS - 1):
            raise CompileError(f"{self.source}: {node.name}: the int32 accumulator could overflow "
                               f"(bound {bound:.3g}); split the layer")
        ms = [quantize_multiplier(float(r)) for r in acc_scale / out.scale]
        params = (bias, np.array([m for m, _ in ms]), np.array([s for _, s in ms]))
        lo, hi = self._clip_q(out, clip)
        pooled = node.attr("pool")  # the conv's own output shape, when a 2x2 max pooling is fused into it
        oh, ow = (pooled[-2], pooled[-1]) if pooled else (out.shape[1], out.shape[2])
        geom = timing.ConvGeometry(cin_g, 1, groups, cout // groups, oh, ow, k[0], k[1], strides[0], strides[1],
                                   *pads)
        split = timing.reduction_split(geom)
        # single-pixel layers (Gemm-like) stay 8-bit, like the first convolution
        dynamic = node.op == "Conv" and self.seen_conv and not split
        self.seen_conv = self.seen_conv or node.op == "Conv"
        layer = self._layer(node, "gemm" if node.op == "Gemm" else "conv", dynamic)
        layer.input, layer.output, layer.groups = x.name, out.name, groups
        src1 = self._blob(layout.conv_weight_bytes(wq, geom, self.arch.cols), layout.word_bytes(self.arch.cols))
        param = self._blob(layout.param_bytes(*params), layout.PARAM_BYTES)
        self._emit(Op.CONV, layer, s0_signed=int(x.signed), out_signed=int(out.signed), aux=int(bool(pooled)),
                   src0=x.offset, src1=src1, dst=out.offset, param=param, cin=xin[0], cout=cout, ih=xin[1],
                   iw=xin[2], oh=oh, ow=ow, kh=k[0], kw=k[1], sh=strides[0], sw=strides[1], dh=dil[0], dw=dil[1],
                   pt=pads[0], pl=pads[1], pb=pads[2], pr=pads[3], groups=groups, clip_lo=lo, clip_hi=hi)

    def _weights(self, name: str, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if name in self.quant.weights:
            q, scale = self.quant.weights[name]
            q = q.astype(np.int64).reshape(w.shape) if q.size == w.size else None
            if q is not None:
                return q, np.broadcast_to(scale.reshape(-1), (w.shape[0],)).astype(np.float64)
        absmax = np.abs(w).reshape(w.shape[0], -1).max(axis=1)
        scale = np.where(absmax > 0, absmax / WEIGHT_MAX, 1.0)
        q = np.clip(np.round(w / scale.reshape(-1, 1, 1, 1)), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int64)
        return q, scale

    def _pads(self, node: Node, hw: tuple[int, int], k: list[int], s: list[int], d: list[int]) -> list[int]:
        auto = node.attr("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("NOTSET", ""):
            p = list(node.attr("pads", [0, 0, 0, 0]))
            return [p[0], p[1], p[2], p[3]]
        if auto == "VALID":
            return [0, 0, 0, 0]
        pads = []
        for i in range(2):
            out = -(-hw[i] // s[i])
            total = max(0, (out - 1) * s[i] + (k[i] - 1) * d[i] + 1 - hw[i])
            first = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads.append((first, total - first))
        return [pads[0][0], pads[1][0], pads[0][1], pads[1][1]]

    def pool(self, node: Node) -> None:
        x = self._input(node.inputs[0], node)
        c, ih, iw = x.shape
        if node.op == "GlobalAveragePool":
            k, strides, pads = [ih, iw], [1, 1], [0, 0, 0, 0]
        else:
            k = list(node.attr("kernel_shape"))
            strides = list(node.attr("strides", [1, 1]))
            pads = self._pads(node, (ih, iw), k, strides, [1, 1])
            if node.attr("ceil_mode", 0) or any(v != 1 for v in node.attr("dilations", [1, 1])):
                raise CompileError(f"{self.source}: {node.name}: ceil_mode/dilations in pooling are not supported")
            if node.op == "AveragePool" and any(pads) and not node.attr("count_include_pad", 0):
                raise CompileError(f"{self.source}: {node.name}: AveragePool with padding needs "
                                   "count_include_pad=1 on the overlay")
        if reason := pool_padding_error(k[0], k[1], *pads):
            raise CompileError(f"{self.source}: {node.name}: {reason}")
        is_max = node.op == "MaxPool"
        if is_max:  # max pooling is exact: the output keeps the input's scale
            out, (mult, shift) = self.new_tensor(node.outputs[0], like=x), (0, 0)
        else:
            out = self.new_tensor(node.outputs[0], nonneg=not x.signed)
            mult, shift = quantize_multiplier(x.scale / (out.scale * k[0] * k[1]))
        layer = self._layer(node, "pool")
        layer.input, layer.output = x.name, out.name
        self._emit(Op.POOL, layer, s0_signed=int(x.signed), out_signed=int(out.signed), aux=0 if is_max else 1,
                   src0=x.offset, dst=out.offset, cin=c, cout=c, ih=ih, iw=iw, oh=out.shape[1], ow=out.shape[2],
                   kh=k[0], kw=k[1], sh=strides[0], sw=strides[1], dh=1, dw=1, pt=pads[0], pl=pads[1],
                   pb=pads[2], pr=pads[3], groups=c, clip_lo=out.lo, clip_hi=out.hi, mult0=mult, shift0=shift)

    def add(self, node: Node) -> None:
        a, b = (self._input(t, node) for t in node.inputs)
        if a.shape != b.shape:
            raise CompileError(f"{self.source}: {node.name}: broadcasting Add is not an overlay op")
        clip = node.attr("clip")
        out = self.new_tensor(node.outputs[0], nonneg=False, clip=clip)
        (m0, m1), shift = self._pair_multipliers(a.scale / out.scale, b.scale / out.scale)
        lo, hi = self._clip_q(out, clip)
        layer = self._layer(node, "add")
        layer.input, layer.output = a.name, out.name
        self._emit(Op.ADD, layer, s0_signed=int(a.signed), s1_signed=int(b.signed), out_signed=int(out.signed),
                   src0=a.offset, src1=b.offset, dst=out.offset, cin=out.shape[0], cout=out.shape[0],
                   ih=out.shape[1], iw=out.shape[2], oh=out.shape[1], ow=out.shape[2], clip_lo=lo, clip_hi=hi,
                   mult0=m0, mult1=m1, shift0=shift)

    @staticmethod
    def _pair_multipliers(r0: float, r1: float) -> tuple[tuple[int, int], int]:
        """Two multipliers sharing one shift, both within the signed 16-bit field."""
        _, shift = quantize_multiplier(max(r0, r1))
        return (round(r0 * 2.0**shift), round(r1 * 2.0**shift)), shift

    def move(self, node: Node, src: QTensor, dst: QTensor, dst_offset: int, clip: tuple[float, float] | None) -> None:
        mult, shift = quantize_multiplier(src.scale / dst.scale)
        lo, hi = self._clip_q(dst, clip)
        layer = self._layer(node, "move")
        layer.input, layer.output = src.name, dst.name
        c, h, w = src.shape
        self._emit(Op.MOVE, layer, s0_signed=int(src.signed), out_signed=int(dst.signed), src0=src.offset,
                   dst=dst_offset, cin=c, cout=c, ih=h, iw=w, oh=h, ow=w, clip_lo=lo, clip_hi=hi,
                   mult0=mult, shift0=shift)

    def clamp(self, node: Node) -> None:
        x = self._input(node.inputs[0], node)
        clip = clip_bounds(self.g, node)
        out = self.new_tensor(node.outputs[0], nonneg=False, clip=clip)
        self.move(node, x, out, out.offset, clip)

    def concat(self, node: Node) -> None:
        if node.attr("axis") not in (1, -3):
            raise CompileError(f"{self.source}: {node.name}: only channel Concat (axis=1) runs on the overlay")
        srcs = [self._input(t, node) for t in node.inputs]
        out = self.new_tensor(node.outputs[0], nonneg=all(not s.signed for s in srcs))
        offset = out.offset
        for s in srcs:
            self.move(node, s, out, offset, None)
            offset += s.nbytes

    def flatten(self, node: Node) -> None:
        x = self._input(node.inputs[0], node)
        if int(np.prod(self.g.shapes[node.outputs[0]])) != x.nbytes or self._shape(node.outputs[0])[1:] != (1, 1) \
                and self._shape(node.outputs[0]) != x.shape:
            raise CompileError(f"{self.source}: {node.name}: only flattening reshapes run on the overlay")
        self.new_tensor(node.outputs[0], like=x, alias=True)

    def end_segment(self) -> None:
        if self.segments and isinstance(self.segments[-1], list):
            self.segments[-1].append(encode(Op.END))
