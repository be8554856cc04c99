"""A small, mutable graph IR over ONNX: nodes, constants and static shapes with batch size 1.

ONNX protobufs are awkward to rewrite in place, so the importer copies the model into this IR once;
passes edit it, and host partitions are turned back into ONNX with `to_onnx`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from dynq.errors import DynqError

OPSET_MIN, OPSET_MAX = 11, 21


class CompileError(DynqError, ValueError):
    """The model cannot be compiled; the message names the node or file and what to change."""


@dataclass
class Node:
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)


@dataclass
class Graph:
    nodes: list[Node]
    consts: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]
    inputs: list[str]
    outputs: list[str]
    opset: int

    def producer(self, tensor: str) -> Node | None:
        return next((n for n in self.nodes if tensor in n.outputs), None)

    def consumers(self, tensor: str) -> list[Node]:
        return [n for n in self.nodes if tensor in n.inputs]

    def rename(self, old: str, new: str) -> None:
        """Every use of tensor `old` reads `new` instead."""
        for node in self.nodes:
            node.inputs = [new if t == old else t for t in node.inputs]
        self.outputs = [new if t == old else t for t in self.outputs]

    def to_onnx(self, nodes: list[Node], inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
        """A standalone float ONNX model of `nodes` (used for host partitions)."""
        used = {t for n in nodes for t in n.inputs}
        inits = [numpy_helper.from_array(self.consts[t], t) for t in sorted(used) if t in self.consts]

        def info(t: str) -> onnx.ValueInfoProto:
            return helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, ["N", *self.shapes[t][1:]])

        onnx_nodes = []
        for n in nodes:
            attrs = {k: v for k, v in n.attrs.items() if k not in ("clip", "pool")}
            # fused activations and pooling go back to being their own nodes
            stages = [("clip", "Clip"), ("pool", "MaxPool")]
            fused = [(key, op) for key, op in stages if key in n.attrs]
            current = f"{n.outputs[0]}__pre_{fused[0][0]}" if fused else n.outputs[0]
            onnx_nodes.append(helper.make_node(n.op, n.inputs, [current], name=n.name, **attrs))
            for i, (key, op) in enumerate(fused):
                out = f"{n.outputs[0]}__pre_{fused[i + 1][0]}" if i + 1 < len(fused) else n.outputs[0]
                if key == "clip":
                    bounds = [f"{n.outputs[0]}__clip_{side}" for side in ("min", "max")]
                    for name, value in zip(bounds, n.attrs["clip"], strict=True):
                        inits.append(numpy_helper.from_array(np.array(value, dtype=np.float32), name))
                    onnx_nodes.append(helper.make_node(op, [current, *bounds], [out], name=f"{n.name}/clip"))
                else:
                    onnx_nodes.append(helper.make_node(op, [current], [out], name=f"{n.name}/pool",
                                                       kernel_shape=[2, 2], strides=[2, 2]))
                current = out
        graph = helper.make_graph(onnx_nodes, "host_partition", [info(t) for t in inputs],
                                  [info(t) for t in outputs], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = min(model.ir_version, 10)
        return model


def load(path: Path) -> onnx.ModelProto:
    """Reads and checks an ONNX file; every failure becomes one CompileError line."""
    if not path.is_file():
        raise CompileError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, google.protobuf errors, OSError ...
        raise CompileError(f"{path}: not a readable ONNX model ({type(exc).__name__}); "
                           "export it again with torch.onnx.export or check the file") from exc
    if not model.graph.node:
        raise CompileError(f"{path}: the ONNX graph has no nodes (truncated or not an ONNX model?)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CompileError(f"{path}: invalid ONNX model: {first}") from exc
    return model


def import_model(model: onnx.ModelProto, source: str) -> Graph:
    """Copies an ONNX model into the IR with static shapes for batch size 1."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not OPSET_MIN <= opset <= OPSET_MAX:
        raise CompileError(f"{source}: opset {opset} is not supported (use opset {OPSET_MIN}..{OPSET_MAX}, "
                           "e.g. torch.onnx.export(..., opset_version=17))")
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in consts]
    if len(inputs) != 1:
        raise CompileError(f"{source}: the model has {len(inputs)} inputs; dynq compiles single-input models")
    model = _fix_batch(model, inputs[0], source)
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise CompileError(f"{source}: ONNX shape inference failed: {str(exc).splitlines()[0]}") from exc
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(d.dim_value for d in dims)
    for name, value in consts.items():
        shapes[name] = value.shape
    nodes = []
    for i, n in enumerate(inferred.graph.node):
        if n.domain not in ("", "ai.onnx"):
            raise CompileError(f"{source}: node {n.name or n.op_type} uses operator {n.op_type} of the custom "
                               f"domain {n.domain!r}, which neither the overlay nor the host runtime has")
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        nodes.append(Node(n.op_type, list(n.input), list(n.output), attrs, n.name or f"{n.op_type}_{i}"))
    for n in nodes:
        for t in n.outputs:
            if t and t not in shapes:
                raise CompileError(f"{source}: cannot infer a static shape for {t!r} (output of {n.name})")
    return Graph(nodes, consts, shapes, inputs, [o.name for o in model.graph.output], opset)


def _fix_batch(model: onnx.ModelProto, name: str, source: str) -> onnx.ModelProto:
    """Sets the input's batch dimension to 1; every other dimension must be static."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph_input = next(i for i in model.graph.input if i.name == name)
    dims = graph_input.type.tensor_type.shape.dim
    if graph_input.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise CompileError(f"{source}: input {name!r} must be float32")
    if len(dims) != 4:
        raise CompileError(f"{source}: input {name!r} has rank {len(dims)}; dynq expects [N, C, H, W]")
    for d in list(dims)[1:]:
        if not d.HasField("dim_value"):
            raise CompileError(f"{source}: input {name!r} has a dynamic non-batch dimension; export it static")
    dims[0].Clear()
    dims[0].dim_value = 1
    for vi in [*model.graph.value_info, *model.graph.output]:
        d = vi.type.tensor_type.shape.dim
        if d and not d[0].HasField("dim_value"):
            d[0].Clear()
    del model.graph.value_info[:]
    return model
