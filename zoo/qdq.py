"""Static int8 QDQ quantisation of a zoo model with onnxruntime, as the reference for the overlay.

The settings mirror the integer arithmetic of the FPGA datapath: int8 activations and weights, both
symmetric (zero point 0, so the MAC array needs no zero-point correction terms) and per-channel
weight scales (one requantisation multiplier per output channel). The QDQ format keeps the fp32
graph's structure with explicit QuantizeLinear/DequantizeLinear pairs, from which the compiler reads
every scale.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from dynq.contract.artifacts import atomic_path

CALIB_BATCH = 64


class _ArrayReader(CalibrationDataReader):
    """Feeds a calibration array to onnxruntime's calibrator in batches of `CALIB_BATCH`."""

    def __init__(self, input_name: str, calib: np.ndarray) -> None:
        self._batches: Iterator[np.ndarray] = (
            calib[start : start + CALIB_BATCH] for start in range(0, len(calib), CALIB_BATCH)
        )
        self._input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._input_name: batch}


def make_qdq(fp32_onnx: Path, out: Path, calib: np.ndarray) -> Path:
    """Quantise `fp32_onnx` to an int8 QDQ model at `out`, calibrated (min/max) on `calib`; return `out`.

    `calib` is a float32 batch shaped like the model input, e.g. a few hundred training images. The
    model is first run through `quant_pre_process` (shape inference and graph clean-up), which
    onnxruntime recommends so that every tensor has a known shape and quantisable pattern.
    """
    if len(calib) == 0:
        raise ValueError("make_qdq needs at least one calibration sample")
    input_name = onnx.load(str(fp32_onnx), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="dynq-qdq-") as tmp, atomic_path(out) as tmp_out:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_onnx), str(prepared))
        quantize_static(
            prepared,
            tmp_out,
            _ArrayReader(input_name, calib.astype(np.float32, copy=False)),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
    return out
