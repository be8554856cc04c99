"""`dynq demo`: the whole flow on bundled data, in seconds, with no download and no board.

Compiles the bundled LeNet-5 (trained in this repo on real MNIST) for the PYNQ-Z2 overlay, runs the
64 bundled test digits through the bit-exact emulator in every precision mode, and prints accuracy
against onnxruntime fp32 with the cycle model's figures.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

import dynq
from dynq.zoo import bundled_model, bundled_samples


def demo(out: Path | None = None, board: str = "pynq-z2") -> None:
    console = Console(width=120)
    images, labels = bundled_samples()
    x = (images.astype(np.float32) / 255.0).astype(np.float32)
    onnx_path = bundled_model("lenet5")
    fp32 = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with tempfile.TemporaryDirectory() as tmp:
        build = out or Path(tmp) / "lenet5"
        result = dynq.compile(onnx_path, board, build, calib=x, mode="drq")
        console.print(f"compiled {onnx_path.name} for {board} in {result.seconds:.2f} s: {result.layers} overlay "
                      f"layers -> {build}")
        model = dynq.load(build, board=board)
        table = Table(title=f"LeNet-5 on {len(x)} bundled MNIST test digits (emulator, calibrated on the same "
                            "digits; `dynq bench --quick` uses a held-out split)")
        for col in ("mode", "top-1", "agrees with fp32", "cycles/image", "speed-up", "energy uJ/image"):
            table.add_column(col, justify="left" if col == "mode" else "right")
        table.add_row("fp32 (onnxruntime)", f"{(fp32.argmax(1) == labels).mean():.3f}", "-", "-", "-", "-")
        base = None
        for mode in ("int8", "drq", "sdp"):
            run = model.run(x, mode=mode)
            cycles = run.report.total_cycles / len(x)
            base = base or cycles
            table.add_row(mode, f"{(run.output.argmax(1) == labels).mean():.3f}",
                          f"{(run.output.argmax(1) == fp32.argmax(1)).mean():.3f}", f"{cycles:.0f}",
                          f"{base / cycles:.2f}x", f"{run.report.energy_uj / len(x):.3f}")
        console.print(table)
        console.print("Next: `dynq compile your.onnx --calib calib.npy -o build/` and `dynq run build/ --input "
                      "x.npy --output y.npy --report report.json`.")
