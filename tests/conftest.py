"""Shared fixtures: small torch nets exported to ONNX that exercise every overlay op and mode."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import dynq
from dynq.zoo import bundled_model, bundled_samples

torch.set_num_threads(2)
warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.onnx")


class OpsNet(nn.Module):
    """Every overlay op in one net: grouped 5x5, depthwise and strided convs with asymmetric padding, a conv
    with fused max pooling, signed activations, BatchNorm, ReLU6, max/avg/global pooling, residual Add,
    Concat, Gemm."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 5, padding=2, groups=2)
        self.bn2 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=(0, 1), groups=8)
        self.pw = nn.Conv2d(8, 12, 1)
        self.c3 = nn.Conv2d(12, 12, 3, padding=1)
        self.c4 = nn.Conv2d(12, 12, 3, padding=1)
        self.fc = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.c1(x)  # signed output (no ReLU)
        b = torch.relu(self.bn2(self.c2(a)))
        c = nn.functional.relu6(self.dw(nn.functional.max_pool2d(b, 2, 1)))
        d = torch.relu(self.pw(c))
        e = torch.relu(self.c3(d) + d)
        pooled = nn.functional.max_pool2d(torch.relu(self.c4(d)), 2)  # fused into the conv
        f = torch.cat([nn.functional.avg_pool2d(e, 2), pooled], dim=1)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(f, 1), 1))


class HostNet(nn.Module):
    """Ops the overlay lacks, between overlay layers: they must become host partitions."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 6, 3, padding=2, dilation=2)  # the array runs undilated kernels only
        self.fc = nn.Linear(6 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = nn.functional.leaky_relu(self.c1(x), 0.1)
        b = nn.functional.max_pool2d(torch.relu(self.c2(a)), 2)  # conv + relu + pool fused, then back on the host
        b = b * torch.sigmoid(b)  # SiLU-style gating
        return torch.softmax(self.fc(torch.flatten(b, 1)), dim=1)


def export(model: nn.Module, path: Path, shape: tuple[int, ...], seed: int = 0) -> Path:
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    torch.onnx.export(model, torch.rand(1, *shape), str(path), input_names=["input"], output_names=["out"],
                      dynamic_axes={"input": {0: "N"}}, opset_version=17, dynamo=False)
    return path


@pytest.fixture(scope="session")
def ops_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return export(OpsNet(), tmp_path_factory.mktemp("ops") / "ops.onnx", (3, 16, 16))


@pytest.fixture(scope="session")
def host_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    return export(HostNet(), tmp_path_factory.mktemp("host") / "host.onnx", (1, 8, 8))


BOARD = "pynq-z2"
MODELS = ("lenet5", "resnet_small")
"""The board and the bundled models the pynq driver's tests run (simulated board, virtual board)."""


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """MODELS compiled for BOARD, and LeNet-5 for the zcu104 (another architecture)."""
    samples, _ = bundled_samples()
    root = tmp_path_factory.mktemp("pynq")
    calib = samples[:32].astype(np.float32) / 255
    out = {name: root / name for name in MODELS}
    for name in MODELS:
        dynq.compile(bundled_model(name), BOARD, out[name], calib=calib)
    dynq.compile(bundled_model("lenet5"), "zcu104", root / "lenet5-zcu104", calib=calib)
    out["lenet5-zcu104"] = root / "lenet5-zcu104"
    return out


def images(n: int, shape: tuple[int, ...], seed: int = 0, signed: bool = False) -> np.ndarray:
    x = np.random.default_rng(seed).random((n, *shape), dtype=np.float32)
    return (2 * x - 1) if signed else x


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--rtl-cases", type=int, default=200,
                     help="random single-layer programs run on the RTL and the emulator (default 200)")
    parser.addoption("--rtl-seed", type=int, default=2026, help="seed of the random RTL programs")


CORE_SYNTH = ("hdl", "synth", "--board", "pynq-z2", "--json")
"""The full pynq-z2 core through `dynq hdl synth`: Yosys takes about ten minutes on it, single-threaded."""
CORE_SYNTH_TIMEOUT = 1800
_core_synth = pytest.StashKey[tuple[subprocess.Popen, Path]]()


def _start_core_synth(config: pytest.Config) -> None:
    if _core_synth not in config.stash:
        err = Path(tempfile.mkstemp(prefix="dynq-core-synth-", suffix=".err")[1])
        proc = subprocess.Popen([sys.executable, "-m", "dynq.cli", *CORE_SYNTH], stdout=subprocess.PIPE,
                                stderr=err.open("w"), text=True)
        config.stash[_core_synth] = (proc, err)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the full-core synthesis as soon as a selected test needs it, so Yosys runs on the second core
    while the other tests run on the first (in series it made the suite 10 minutes longer)."""
    if any("core_synth_json" in getattr(item, "fixturenames", ()) for item in items):
        _start_core_synth(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    started = config.stash.get(_core_synth, None)
    if started and started[0].poll() is None:
        started[0].kill()
        started[0].wait()


@pytest.fixture(scope="session")
def core_synth_json(request: pytest.FixtureRequest) -> subprocess.CompletedProcess:
    """The result of `dynq hdl synth` on the full pynq-z2 core (started at collection, awaited here)."""
    _start_core_synth(request.config)
    proc, err = request.config.stash[_core_synth]
    try:
        out, _ = proc.communicate(timeout=CORE_SYNTH_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"`dynq {' '.join(CORE_SYNTH)}` did not finish within {CORE_SYNTH_TIMEOUT} s")
    stderr = err.read_text()
    err.unlink()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, stderr)
