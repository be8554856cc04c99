"""`dynq compile`: ONNX in, a build directory (program.bin, weights.bin, host_*.onnx, manifest.json) out."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

import dynq
from dynq import boards
from dynq.compiler import calibrate, passes, policy
from dynq.compiler.graph import CompileError, Graph, Node, import_model, load
from dynq.compiler.lower import DEVICE_OPS, HostPartition, Lowered, Lowerer
from dynq.contract import CONTRACT_VERSION, INSTR_BYTES, Instr, Mode, Op, PrecisionRegs, decode_program
from dynq.contract.array import predictor_limits, window_limits
from dynq.contract.artifacts import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    PROGRAM_FILE,
    PROGRAM_MAGIC,
    WEIGHTS_FILE,
    WEIGHTS_MAGIC,
    pack,
    seal_manifest,
    sha256,
)
from dynq.contract.numerics import quantize
from dynq.contract.precision import conv_cost


@dataclass(frozen=True)
class Placement:
    """Where one ONNX node runs, and why it is not on the overlay when it is not."""

    node: str
    op: str
    where: str  # "device", "host" or "fused"
    reason: str = ""


@dataclass(frozen=True)
class CompileResult:
    out_dir: Path
    placements: list[Placement]
    layers: int
    seconds: float


def compile_model(model_path: Path, board: str, out_dir: Path, calib: np.ndarray | None = None,
                  mode: str = "int8", policy_data: dict[str, Any] | None = None,
                  calib_method: str = "minmax", emulator_only: bool = False) -> CompileResult:
    """Compiles an fp32 (with calibration data) or QDQ ONNX model for `board` into `out_dir`. A model whose
    program, weights or arena the board's core cannot hold is refused, unless `emulator_only` (studies of
    models larger than a board; every device backend then refuses the build when it opens)."""
    start = time.perf_counter()
    if mode not in policy.MODES:
        raise CompileError(f"unknown mode {mode!r}; use one of {', '.join(policy.MODES)}")
    spec = boards.load(board)
    source = str(model_path)
    model = load(model_path)
    g = import_model(model, source)
    original = {n.output[0] for n in model.graph.node} | set(g.inputs)
    quant = passes.run_all(g, spec.arch.rows)
    if calib is not None:
        calib = _check_calib(calib, g, source)
    if not quant.act_scales and calib is None:
        raise CompileError(f"{source} is a float model: pass calibration images with --calib FILE.npy "
                           "(or quantize it to QDQ with onnxruntime first)")
    produced = [t for n in g.nodes for t in n.outputs if t] + g.inputs
    ranges, samples = ({}, {}) if calib is None else calibrate.collect(
        model, [t for t in produced if t in original], calib, calib_method)
    low = Lowerer(g, spec.arch, quant, ranges, source)
    placements = _lower(g, low, ranges, source)
    lowered = Lowered(low.tensors, low.layers, low.segments, low.weights, low.arena, g.inputs[0],
                      list(g.outputs))
    if not emulator_only:
        _check_fits(lowered, spec, source)
    presets = _presets(lowered, samples, policy_data or {}, spec.arch)
    _write(out_dir, g, lowered, presets, spec, mode, placements)
    return CompileResult(out_dir, placements, len(lowered.layers), time.perf_counter() - start)


def _check_fits(lowered: Lowered, spec: boards.Board, source: str) -> None:
    """Refuses a build that the core's on-chip memories cannot hold, before anything is written: found
    here, it names the memory; found on a board, only when a run starts."""
    instructions = sum(len(seg) for seg in lowered.segments if isinstance(seg, list))
    needs = {"instruction memory (IMEM)": (instructions * INSTR_BYTES, spec.arch.imem_bytes),
             "weight memory (WMEM)": (len(lowered.weights), spec.arch.wmem_bytes),
             "activation arena (AMEM)": (lowered.arena_bytes, spec.arch.amem_bytes)}
    over = [f"{what} {need:,} bytes, the core has {have:,}" for what, (need, have) in needs.items() if need > have]
    if over:
        raise CompileError(f"{source} does not fit the {spec.name} core: it needs {'; '.join(over)}. Compile for a "
                           "board with larger memories (see `dynq boards`) or a smaller input, or pass "
                           "--emulator-only to build it for the emulator alone")


def _check_calib(calib: np.ndarray, g: Graph, source: str) -> np.ndarray:
    expected = g.shapes[g.inputs[0]][1:]
    if calib.ndim != 4 or tuple(calib.shape[1:]) != tuple(expected):
        raise CompileError(f"calibration data has shape {list(calib.shape)}, the model {source} expects "
                           f"[N, {', '.join(map(str, expected))}]")
    if not np.issubdtype(calib.dtype, np.floating) or not np.all(np.isfinite(calib)):
        raise CompileError("calibration data must be finite floating-point values")
    return calib.astype(np.float32)


def _op_reason(g: Graph, node: Node, rows: int) -> str:
    """Empty when the overlay has this op with these attributes, else why not."""
    if node.op not in DEVICE_OPS:
        return f"{node.op} is not an overlay op"
    data = [t for t in node.inputs if t and t not in g.consts]
    if node.op == "Add" and (len(data) != 2 or g.shapes[data[0]] != g.shapes[data[1]]):
        return "Add with a constant or broadcasting runs on the host"
    if node.op == "Concat" and node.attr("axis") not in (1, -3):
        return "Concat along a non-channel axis"
    if node.op in ("Flatten", "Reshape"):
        out = g.shapes[node.outputs[0]]
        if not (len(out) == 2 and out[0] == 1) and tuple(out) != tuple(g.shapes[node.inputs[0]]):
            return "only flattening reshapes are free on the overlay"
    if node.op in ("Conv", "Gemm") and node.inputs[1] not in g.consts:
        return "weights are not constant"
    if node.op == "Gemm" and node.attr("transA", 0):
        return "Gemm with transA"
    if node.op in ("MaxPool", "AveragePool") and (node.attr("ceil_mode", 0)
                                                  or any(d != 1 for d in node.attr("dilations", [1, 1]))):
        return "pooling with ceil_mode or dilation"
    if node.op == "AveragePool" and any(node.attr("pads", [0])) and not node.attr("count_include_pad", 0):
        return "AveragePool with padding that excludes the pad"
    return _window_reason(g, node, rows)


def _window_reason(g: Graph, node: Node, rows: int) -> str:
    """Why the PE array's line registers cannot hold this Conv's or pooling's window, or empty."""
    if node.op == "Conv":
        kw = g.consts[node.inputs[1]].shape[-1]
    elif node.op in ("MaxPool", "AveragePool"):
        kw = node.attr("kernel_shape")[-1]
    elif node.op == "GlobalAveragePool":
        kw = g.shapes[node.inputs[0]][-1]
    else:
        return ""
    dilation = node.attr("dilations", [1, 1])
    ow = node.attr("pool", g.shapes[node.outputs[0]])[-1]
    return window_limits(node.attr("strides", [1, 1])[-1], kw, (dilation[0], dilation[-1]), ow, rows) or ""


def _lower(g: Graph, low: Lowerer, ranges: dict, source: str) -> list[Placement]:
    placements: list[Placement] = []
    host: list[Node] = []
    x = g.inputs[0]
    if any(not _op_reason(g, n, low.arch.rows) for n in g.consumers(x)):
        low.new_tensor(x, nonneg=x in ranges and ranges[x].nonneg)
    handlers = {"Conv": low.conv, "Gemm": low.conv, "MaxPool": low.pool, "AveragePool": low.pool,
                "GlobalAveragePool": low.pool, "Add": low.add, "Relu": low.clamp, "Clip": low.clamp,
                "Concat": low.concat, "Flatten": low.flatten, "Reshape": low.flatten}
    for node in g.nodes:
        reason = _op_reason(g, node, low.arch.rows)
        data = [t for t in node.inputs if t and t not in g.consts]
        if not reason and host and any(t in n.outputs for n in host for t in data):
            _host_partition(g, low, host, ranges, source)  # its outputs become device tensors
            host = []
        if not reason and any(t not in low.tensors for t in data):
            reason = "its input is only available on the host"
        if reason:
            host.append(node)
            placements.append(Placement(node.name, node.op, "host", reason))
            continue
        handlers[node.op](node)
        placements.append(Placement(node.name, node.op, "device"))
    if host:
        _host_partition(g, low, host, ranges, source)
    low.end_segment()
    for out in g.outputs:
        if out not in low.tensors and not any(out in p.outputs for p in low.segments
                                              if isinstance(p, HostPartition)):
            raise CompileError(f"{source}: graph output {out!r} is a constant or an input; nothing to run")
    return placements


def _host_partition(g: Graph, low: Lowerer, nodes: list[Node], ranges: dict, source: str) -> None:
    """Closes the device segment and appends a host partition; quantizes what the device reads next."""
    produced = {t for n in nodes for t in n.outputs}
    inputs = sorted({t for n in nodes for t in n.inputs if t and t not in produced and t not in g.consts})
    later = {t for n in g.nodes if n not in nodes for t in n.inputs}
    outputs = [t for n in nodes for t in n.outputs if t in later or t in g.outputs]
    low.end_segment()
    partition = HostPartition(list(nodes), inputs, outputs)
    try:
        ort.InferenceSession(g.to_onnx(nodes, inputs, outputs).SerializeToString(),
                             providers=["CPUExecutionProvider"])
    except Exception as exc:
        ops = ", ".join(sorted({n.op for n in nodes}))
        raise CompileError(f"{source}: host partition ({ops}) cannot run on the host CPU either: "
                           f"{str(exc).splitlines()[0]}") from exc
    low.segments.append(partition)
    for t in outputs:
        if t in later:
            if t not in ranges:
                raise CompileError(f"{source}: no calibration range for host output {t!r}; pass --calib")
            low.new_tensor(t, nonneg=ranges[t].nonneg)


def _presets(lowered: Lowered, samples: dict[str, np.ndarray], pol: dict[str, Any],
             arch: boards.Arch) -> dict[str, list[dict]]:
    """Register values per mode; DRQ thresholds and SDP K are calibrated on the layer's quantized input, and a
    dynamic mode that would not save cycles on it (or DRQ over an input wider than the region predictor's
    band) falls back to int8 with zero-part skipping."""
    convs = _conv_instructions(lowered)
    presets: dict[str, list[dict]] = {}
    for preset in policy.MODES:
        regs = []
        for layer in lowered.layers:
            s = policy.settings_for(layer.name, layer.dynamic, preset, pol)
            sample = _quantized_sample(lowered, layer.input, samples) if layer.kind == "conv" else None
            threshold = int(s.get("threshold") or 0)
            k = int(s.get("k") or 2 * int(s["g"]))
            if sample is not None and s["mode"] == "drq":
                threshold = policy.drq_threshold(sample, s, lowered.tensors[layer.input].signed)
            if sample is not None and s["mode"] == "sdp":
                k = policy.sdp_k(sample, s, layer.groups)
            chosen = policy.to_registers(s, threshold, k)
            wide = s["mode"] == "drq" and sample is not None and predictor_limits(sample.shape[-1], arch.rows)
            if wide and policy.mode_forced(layer.name, pol):
                raise CompileError(f"layer {layer.name}: {wide}")
            if wide:
                chosen = replace(chosen, mode=Mode.INT8, zero_skip=True)
            elif sample is not None and s["mode"] in ("drq", "sdp") and not policy.mode_forced(layer.name, pol):
                chosen = _cheaper(chosen, sample[:COST_IMAGES], convs[layer.index], arch)
            regs.append(chosen.to_words())
        presets[preset] = regs
    return presets


COST_IMAGES = 8
"""Calibration images the cost check runs the cycle model on."""


def _cheaper(regs: PrecisionRegs, sample: torch.Tensor, ins: Instr, arch: boards.Arch) -> PrecisionRegs:
    """`regs`, or int8 with zero-part skipping when that costs no more cycles on the sample."""
    fallback = replace(regs, mode=Mode.INT8, zero_skip=True)
    cost = [conv_cost(sample.float(), r, ins, arch.rows, arch.cols, None, 0)[1]["busy_cycles"]
            for r in (regs, fallback)]
    return regs if cost[0] < cost[1] else fallback


def _conv_instructions(lowered: Lowered) -> dict[int, Instr]:
    """The CONV instruction of every conv/gemm layer, by layer index."""
    found = {}
    for seg in lowered.segments:
        if isinstance(seg, list):
            for ins in decode_program(b"".join(seg)):
                if ins.op == Op.CONV:
                    found[ins.layer] = ins
    return found


def _quantized_sample(lowered: Lowered, tensor: str, samples: dict[str, np.ndarray]) -> torch.Tensor | None:
    """The calibration sample of a layer input on the device's integer grid."""
    if tensor not in samples:
        return None
    t = lowered.tensors[tensor]
    q = quantize(samples[tensor], t.scale, t.lo, t.hi).reshape(-1, *t.shape)
    return torch.from_numpy(q.astype(np.float64))


def _write(out_dir: Path, g: Graph, lowered: Lowered, presets: dict[str, list[dict]], spec: boards.Board,
           mode: str, placements: list[Placement]) -> None:
    """Writes every artifact into a temporary directory, then moves it into place in one step."""
    fp = spec.arch.fingerprint
    program = bytearray()
    schedule: list[dict[str, Any]] = []
    files: dict[str, bytes] = {}
    for seg in lowered.segments:
        if isinstance(seg, list):
            schedule.append({"kind": "device", "first": len(program) // 64, "count": len(seg)})
            program += b"".join(seg)
        else:
            name = f"host_{sum(1 for s in schedule if s['kind'] == 'host')}.onnx"
            files[name] = g.to_onnx(seg.nodes, seg.inputs, seg.outputs).SerializeToString()
            schedule.append({"kind": "host", "file": name, "inputs": seg.inputs, "outputs": seg.outputs,
                             "nodes": [n.name for n in seg.nodes]})
    files[PROGRAM_FILE] = pack(PROGRAM_MAGIC, fp, bytes(program))
    files[WEIGHTS_FILE] = pack(WEIGHTS_MAGIC, fp, bytes(lowered.weights))
    outputs = []
    for name in lowered.outputs:
        shape = list(g.shapes[name][1:])
        t = lowered.tensors.get(name)
        outputs.append({**(t.to_json() if t else {}), "name": name, "shape": shape, "device": t is not None})
    manifest = {
        "format": FORMAT_VERSION,
        "contract": CONTRACT_VERSION,
        "dynq_version": dynq.__version__,
        "board": spec.name,
        "arch": spec.arch.as_dict(),
        "fingerprint": fp,
        "mode": mode,
        "files": {name: sha256(data) for name, data in files.items()},
        "input": {"name": lowered.input, "shape": list(g.shapes[lowered.input][1:]),
                  **(lowered.tensors[lowered.input].to_json() if lowered.input in lowered.tensors else {})},
        "outputs": outputs,
        "arena_bytes": lowered.arena_bytes,
        "tensors": {name: t.to_json() for name, t in lowered.tensors.items()},
        "layers": [{"index": layer.index, "name": layer.name, "kind": layer.kind, "dynamic": layer.dynamic,
                    "input": layer.input, "output": layer.output} for layer in lowered.layers],
        "presets": presets,
        "schedule": schedule,
        "placements": [p.__dict__ for p in placements],
    }
    files[MANIFEST_FILE] = seal_manifest(manifest)
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        if out_dir.exists():
            if not (out_dir / MANIFEST_FILE).exists() and any(out_dir.iterdir()):
                raise CompileError(f"{out_dir} exists and is not a dynq build; choose another -o directory")
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
