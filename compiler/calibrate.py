"""Activation ranges from calibration data: run the float model with every tensor exposed.

The fp32 model is run by onnxruntime (the reference we are measured against), so calibration sees
exactly the values an fp32 deployment would compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from dynq.compiler.graph import CompileError

METHODS = ("minmax", "percentile")


@dataclass(frozen=True)
class Range:
    absmax: float
    nonneg: bool


def collect(model: onnx.ModelProto, tensors: list[str], data: np.ndarray, method: str = "minmax",
            percentile: float = 99.99, batch: int = 64) -> tuple[dict[str, Range], dict[str, np.ndarray]]:
    """Ranges of `tensors` over `data`, plus a sample of each tensor (first batch) for DRQ thresholds."""
    if method not in METHODS:
        raise CompileError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"  # run calibration in batches
    del model.graph.value_info[:]
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    known = {o.name for o in model.graph.output}
    for t in tensors:
        if t not in known:
            model.graph.output.add().name = t
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise CompileError(f"onnxruntime cannot run the model for calibration: {str(exc).splitlines()[0]}") from exc
    input_name = session.get_inputs()[0].name
    maxima: dict[str, list[float]] = {t: [] for t in tensors}
    minima: dict[str, float] = dict.fromkeys(tensors, np.inf)
    samples: dict[str, np.ndarray] = {}
    for start in range(0, len(data), batch):
        values = session.run(tensors, {input_name: data[start:start + batch].astype(np.float32)})
        for t, v in zip(tensors, values, strict=True):
            minima[t] = min(minima[t], float(v.min()))
            a = np.abs(v.astype(np.float64))
            maxima[t].append(float(a.max()) if method == "minmax" else float(np.percentile(a, percentile)))
            samples.setdefault(t, v)
    ranges = {}
    for t in tensors:
        absmax = max(maxima[t]) if method == "minmax" else float(np.mean(maxima[t]))
        ranges[t] = Range(absmax if absmax > 0 else 1.0, minima[t] >= 0)
    return ranges, samples
