"""Graph passes that bring an exported model to the overlay's op set without changing its function.

Order matters and is fixed by `run_all`: QDQ stripping (keeping the model's own scales), constant
folding, Identity/Dropout removal, BatchNormalization folding, MatMul->Gemm, activation fusion, ceil-mode
max pooling to explicit padding, max-pool fusion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx.reference import ReferenceEvaluator

from dynq.compiler.graph import CompileError, Graph, Node
from dynq.contract.array import fused_pool_limits


@dataclass(frozen=True)
class QuantInfo:
    """Scales a QDQ model fixes: per activation tensor, and int8 weights with per-channel scales."""

    act_scales: dict[str, tuple[float, bool]]  # tensor -> (scale, signed)
    weights: dict[str, tuple[np.ndarray, np.ndarray]]  # const -> (int8 array, per-output-channel scale)


def strip_qdq(g: Graph) -> QuantInfo:
    """Removes QuantizeLinear/DequantizeLinear, remembering the scales they carried."""
    act: dict[str, tuple[float, bool]] = {}
    weights: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for node in [n for n in g.nodes if n.op == "DequantizeLinear" and n.inputs[0] in g.consts]:
        q = g.consts[node.inputs[0]]
        scale = g.consts[node.inputs[1]].astype(np.float64)
        zp = g.consts[node.inputs[2]] if len(node.inputs) > 2 and node.inputs[2] else np.zeros(1)
        if np.any(zp != 0):
            raise CompileError(f"{node.name}: weight zero point must be 0 (quantize with WeightSymmetric=True)")
        axis = node.attr("axis", 1)
        shape = [1] * q.ndim
        if scale.size > 1:
            shape[axis] = scale.size
        g.consts[node.outputs[0]] = (q.astype(np.float64) * scale.reshape(shape)).astype(np.float32)
        if q.dtype == np.int8:
            weights[node.outputs[0]] = (q, scale)
        g.shapes[node.outputs[0]] = q.shape
        g.nodes.remove(node)
    for dq in [n for n in g.nodes if n.op == "DequantizeLinear"]:
        q = g.producer(dq.inputs[0])
        if q is None or q.op != "QuantizeLinear":
            raise CompileError(f"{dq.name}: DequantizeLinear of a non-constant must follow a QuantizeLinear")
        scale = float(g.consts[q.inputs[1]].reshape(-1)[0])
        zp_name = q.inputs[2] if len(q.inputs) > 2 else ""
        zp = g.consts[zp_name] if zp_name else np.zeros(1, np.uint8)
        if np.any(zp != 0):
            raise CompileError(f"{q.name}: activation zero point {int(zp.reshape(-1)[0])} is not 0; "
                               "quantize with ActivationSymmetric=True")
        signed = zp.dtype == np.int8
        g.nodes.remove(dq)
        if dq.outputs[0] in g.outputs:  # keep the graph output's name: its producer writes it directly
            producer = g.producer(q.inputs[0])
            if producer is not None:
                producer.outputs = [dq.outputs[0] if t == q.inputs[0] else t for t in producer.outputs]
            g.rename(q.inputs[0], dq.outputs[0])
            act[dq.outputs[0]] = (scale, signed)
        else:
            g.rename(dq.outputs[0], q.inputs[0])
            act[q.inputs[0]] = (scale, signed)
        if not g.consumers(q.outputs[0]):
            g.nodes.remove(q)
    return QuantInfo(act, weights)


def fold_constants(g: Graph) -> None:
    """Evaluates nodes whose inputs are all known (constants, or Shape of a static tensor)."""
    changed = True
    while changed:
        changed = False
        for node in list(g.nodes):
            if node.op == "Shape" and node.inputs[0] in g.shapes and node.inputs[0] not in g.consts:
                shape = np.array(g.shapes[node.inputs[0]], dtype=np.int64)
                start, end = node.attr("start", 0), node.attr("end", len(shape))
                _set_const(g, node, [shape[start:end]])
                changed = True
            elif node.inputs and all(t in g.consts or t == "" for t in node.inputs):
                _set_const(g, node, _evaluate(g, node))
                changed = True
            elif node.op == "Constant":
                _set_const(g, node, _evaluate(g, node))
                changed = True


def _evaluate(g: Graph, node: Node) -> list[np.ndarray]:
    model = g.to_onnx([node], [], [])
    del model.graph.output[:]
    for t in node.outputs:
        model.graph.output.add().name = t
    try:
        return list(ReferenceEvaluator(model).run(None, {}))
    except Exception as exc:
        raise CompileError(f"{node.name}: constant folding of {node.op} failed: {exc}") from exc


def _set_const(g: Graph, node: Node, values: list[np.ndarray]) -> None:
    for t, v in zip(node.outputs, values, strict=True):
        g.consts[t] = np.asarray(v)
        g.shapes[t] = np.asarray(v).shape
    g.nodes.remove(node)


def remove_identities(g: Graph) -> None:
    for node in [n for n in g.nodes if n.op in ("Identity", "Dropout")]:
        g.nodes.remove(node)
        if node.outputs[0] in g.outputs:
            producer = g.producer(node.inputs[0])
            if producer is None:
                raise CompileError(f"{node.name}: the graph output is a plain copy of its input")
            producer.outputs = [node.outputs[0] if t == node.inputs[0] else t for t in producer.outputs]
            g.rename(node.inputs[0], node.outputs[0])
        else:
            g.rename(node.outputs[0], node.inputs[0])


def fold_batchnorm(g: Graph) -> None:
    """Conv -> BatchNormalization becomes one Conv with scaled weights and bias."""
    for bn in [n for n in g.nodes if n.op == "BatchNormalization"]:
        conv = g.producer(bn.inputs[0])
        if conv is None or conv.op != "Conv" or len(g.consumers(conv.outputs[0])) != 1:
            continue
        if conv.inputs[1] not in g.consts or not all(t in g.consts for t in bn.inputs[1:5]):
            continue
        gamma, beta, mean, var = (g.consts[t].astype(np.float64) for t in bn.inputs[1:5])
        factor = gamma / np.sqrt(var + bn.attr("epsilon", 1e-5))
        w = g.consts[conv.inputs[1]].astype(np.float64)
        b = g.consts[conv.inputs[2]].astype(np.float64) if len(conv.inputs) > 2 else np.zeros(w.shape[0])
        wname, bname = f"{conv.name}.folded_w", f"{conv.name}.folded_b"
        g.consts[wname] = (w * factor.reshape(-1, 1, 1, 1)).astype(np.float32)
        g.consts[bname] = ((b - mean) * factor + beta).astype(np.float32)
        g.shapes[wname], g.shapes[bname] = w.shape, (w.shape[0],)
        conv.inputs = [conv.inputs[0], wname, bname]
        conv.outputs = [bn.outputs[0]]
        g.nodes.remove(bn)


def matmul_to_gemm(g: Graph) -> None:
    """MatMul(x, W const) [+ Add(b const)] on 2-D x becomes Gemm."""
    for mm in [n for n in g.nodes if n.op == "MatMul"]:
        if mm.inputs[1] not in g.consts or g.consts[mm.inputs[1]].ndim != 2 or len(g.shapes[mm.inputs[0]]) != 2:
            continue
        mm.op, mm.attrs = "Gemm", {}
        users = g.consumers(mm.outputs[0])
        if len(users) == 1 and users[0].op == "Add" and mm.outputs[0] not in g.outputs:
            add = users[0]
            other = next(t for t in add.inputs if t != mm.outputs[0])
            if other in g.consts and g.consts[other].size == g.shapes[mm.outputs[0]][-1]:
                mm.inputs.append(other)
                mm.outputs = list(add.outputs)
                g.nodes.remove(add)


def fuse_activations(g: Graph) -> None:
    """Conv/Gemm/Add followed by its only consumer Relu or Clip: the clamp moves into the producer."""
    for act in [n for n in g.nodes if n.op in ("Relu", "Clip")]:
        producer = g.producer(act.inputs[0])
        if producer is None or producer.op not in ("Conv", "Gemm", "Add") or "clip" in producer.attrs:
            continue
        if len(g.consumers(act.inputs[0])) != 1 or act.inputs[0] in g.outputs:
            continue
        producer.attrs["clip"] = clip_bounds(g, act)
        producer.outputs = list(act.outputs)
        g.nodes.remove(act)


def ceil_max_pool_to_pads(g: Graph) -> None:
    """MaxPool with ceil_mode=1 becomes the same MaxPool with ceil_mode=0 and explicit bottom/right padding.

    Caffe-trained nets (MTCNN among them) round pooled sizes up; the overlay's pooling rounds down. For max
    pooling the two agree once the windows that ceil mode lets run past the input get padding, because
    padding never wins a max (the ONNX rule and the emulator's). The output size is computed with ONNX's
    rule (a last window that would start in the end padding is dropped) and must match the inferred
    shape; any pooling this cannot prove equal is left alone (it then runs on the host)."""
    for pool in [n for n in g.nodes if n.op == "MaxPool" and n.attr("ceil_mode", 0)]:
        auto = pool.attr("auto_pad", b"NOTSET")
        k, strides = list(pool.attr("kernel_shape")), list(pool.attr("strides", [1] * len(pool.attr("kernel_shape"))))
        shape_in, shape_out = g.shapes.get(pool.inputs[0]), g.shapes.get(pool.outputs[0])
        if auto not in (b"NOTSET", "NOTSET") or len(k) != 2 or any(d != 1 for d in pool.attr("dilations", [1, 1])) \
                or shape_in is None or shape_out is None or len(pool.outputs) != 1:
            continue
        pads = list(pool.attr("pads", [0, 0, 0, 0]))
        for axis in range(2):
            size, begin, end = shape_in[2 + axis] + pads[axis], pads[axis], pads[axis + 2]
            out = -(-(size + end - k[axis]) // strides[axis]) + 1
            if (out - 1) * strides[axis] >= size:
                out -= 1
            pads[axis + 2] = end + max(0, (out - 1) * strides[axis] + k[axis] - size - end)
            if (size + pads[axis + 2] - k[axis]) // strides[axis] + 1 != out or out != shape_out[2 + axis] \
                    or pads[axis + 2] >= k[axis] or begin >= k[axis]:
                break
        else:
            pool.attrs["ceil_mode"], pool.attrs["pads"] = 0, pads


def fuse_max_pool(g: Graph, rows: int) -> None:
    """Conv followed by its only consumer, a 2x2 stride-2 MaxPool without padding: the array pools in its
    drain (`aux=1`), so the convolution's full-size output never goes through the arena (where the
    array's row buffer holds the convolution's output rows, `array.fused_pool_limits`)."""
    for pool in [n for n in g.nodes if n.op == "MaxPool"]:
        conv = g.producer(pool.inputs[0])
        if conv is None or conv.op != "Conv" or "pool" in conv.attrs:
            continue
        plain = (list(pool.attr("kernel_shape")) == [2, 2] and list(pool.attr("strides", [1, 1])) == [2, 2]
                 and not any(pool.attr("pads", [0])) and not pool.attr("ceil_mode", 0)
                 and all(d == 1 for d in pool.attr("dilations", [1, 1]))
                 and pool.attr("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET", b"VALID", "VALID"))
        if not plain or len(g.consumers(pool.inputs[0])) != 1 or pool.inputs[0] in g.outputs:
            continue
        if fused_pool_limits(*g.shapes[pool.inputs[0]][-2:], rows):
            continue
        conv.attrs["pool"] = g.shapes[pool.inputs[0]]
        conv.outputs = list(pool.outputs)
        g.nodes.remove(pool)


def clip_bounds(g: Graph, node: Node) -> tuple[float, float]:
    """The (lo, hi) float bounds of a Relu or Clip node (opset-11+ Clip takes them as inputs)."""
    if node.op == "Relu":
        return 0.0, float("inf")
    lo, hi = -float("inf"), float("inf")
    if len(node.inputs) > 1 and node.inputs[1]:
        lo = float(g.consts[node.inputs[1]])
    if len(node.inputs) > 2 and node.inputs[2]:
        hi = float(g.consts[node.inputs[2]])
    return node.attr("min", lo), node.attr("max", hi)


def run_all(g: Graph, rows: int) -> QuantInfo:
    quant = strip_qdq(g)
    fold_constants(g)
    remove_identities(g)
    fold_batchnorm(g)
    matmul_to_gemm(g)
    fuse_activations(g)
    ceil_max_pool_to_pads(g)
    fuse_max_pool(g, rows)
    return quant
