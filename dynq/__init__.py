"""dynq: dynamic-precision CNN inference on Xilinx Zynq boards.

    import dynq
    dynq.compile("model.onnx", board="pynq-z2", calib=images, out_dir="build/")
    model = dynq.load("build/")
    result = model.run(images)          # outputs + per-layer report
"""

from __future__ import annotations

__version__ = "0.1.0"

from pathlib import Path
from typing import Any

import numpy as np


def compile(model: str | Path, board: str, out_dir: str | Path, calib: np.ndarray | None = None,  # noqa: A001
            mode: str = "int8", policy: dict[str, Any] | None = None, calib_method: str = "minmax",
            emulator_only: bool = False):
    """Compiles an ONNX model for `board` into `out_dir`; see `dynq compile --help`."""
    from dynq.compiler.build import compile_model

    return compile_model(Path(model), board, Path(out_dir), calib, mode, policy, calib_method, emulator_only)


def load(build_dir: str | Path, board: str | None = None, mode: str | None = None):
    """Loads a verified build for running; see `dynq.runtime.model.Model`."""
    from dynq.runtime.model import load as _load

    return _load(build_dir, board, mode)
