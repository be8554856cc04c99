"""The emulator against the independent integer reference, every tensor, every mode; and against
onnxruntime fp32 for sanity of the whole quantization flow."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import dynq
from dynq.boards import load as load_board
from dynq.contract import MASK_GRID, MAX_LAYERS, Mode, Op, PrecisionRegs, encode
from dynq.contract.array import BLOCK
from dynq.contract.registers import DeviceError
from dynq.runtime.emulator import Emulator
from tests import reference
from tests.conftest import export, images
from tests.rtl_cases import case_build

SHAPE = (3, 16, 16)


@pytest.fixture(scope="module")
def ops_build(ops_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("opsbuild") / "build"
    dynq.compile(ops_model, "pynq-z2", out, calib=images(32, SHAPE, seed=1, signed=True), mode="drq")
    return out


def _check_against_reference(model: dynq.runtime.model.Model, x: np.ndarray, regs: list, mask=None) -> None:
    result = model.run(x, registers=regs, mask=mask, trace=True)
    inp = model.build.manifest["input"]
    x_q = np.clip(np.rint(x / inp["scale"]), inp["lo"], inp["hi"])
    mem = reference.run(model.build, x_q, regs, mask)
    for name, t in model.build.manifest["tensors"].items():
        ref = mem[:, t["offset"]:t["offset"] + int(np.prod(t["shape"]))].reshape(result.tensors[name].shape)
        diff = np.argwhere(ref != result.tensors[name])
        assert diff.size == 0, f"{name}: first mismatch at {diff[0].tolist()}"


@pytest.mark.parametrize("mode", ["int8", "drq", "sdp"])
@pytest.mark.parametrize("zero_skip", [False, True])
def test_every_tensor_matches_reference(ops_build: Path, mode: str, zero_skip: bool) -> None:
    model = dynq.load(ops_build)
    regs = [replace(r, zero_skip=zero_skip) for r in model.build.preset(mode)]
    _check_against_reference(model, images(4, SHAPE, seed=2, signed=True), regs)


def test_every_layer_dynamic_with_odd_settings(ops_build: Path) -> None:
    """All convs (first conv and Gemm too) in DRQ with the high-part rule, then every spatial layer in SDP
    with groups of 8 over 12 channels (a padded group); SDP on the single-pixel Gemm is refused."""
    model = dynq.load(ops_build)
    x = images(3, SHAPE, seed=3, signed=True)
    drq = [replace(r, mode=Mode.DRQ, insens_hi=True, rh=2, rw=8, threshold=40) for r in model.build.preset("int8")]
    _check_against_reference(model, x, drq)
    kinds = [layer["kind"] for layer in model.build.manifest["layers"]]
    sdp = [replace(r, mode=Mode.SDP, g=8, k=5, zero_skip=True) if kind != "gemm" else r
           for r, kind in zip(model.build.preset("int8"), kinds, strict=True)]
    _check_against_reference(model, x, sdp)
    everywhere = [replace(r, mode=Mode.SDP, g=8, k=5) for r in model.build.preset("int8")]
    with pytest.raises(DeviceError, match="BAD_PRECISION.*single output pixel"):
        model.run(x, registers=everywhere)


def test_daq_mask(ops_build: Path) -> None:
    model = dynq.load(ops_build)
    mask = np.random.default_rng(4).integers(0, 3, (MASK_GRID, MASK_GRID))
    _check_against_reference(model, images(2, SHAPE, seed=4, signed=True), model.build.preset("daq"), mask)


def test_int8_close_to_fp32(ops_model: Path, ops_build: Path) -> None:
    x = images(16, SHAPE, seed=5, signed=True)
    ref = ort.InferenceSession(str(ops_model)).run(None, {"input": x})[0]
    out = dynq.load(ops_build).run(x, mode="int8").output
    assert np.corrcoef(ref.ravel(), out.ravel())[0, 1] > 0.99


def test_zero_skip_changes_cycles_not_outputs(ops_build: Path) -> None:
    model = dynq.load(ops_build)
    x = images(4, SHAPE, seed=6, signed=True)
    plain = model.run(x, registers=[replace(r, zero_skip=False) for r in model.build.preset("int8")])
    skip = model.run(x, registers=[replace(r, zero_skip=True) for r in model.build.preset("int8")])
    np.testing.assert_array_equal(plain.output, skip.output)
    assert skip.report.total_cycles < plain.report.total_cycles


def test_host_partitions_run_and_are_reported(host_model: Path, tmp_path: Path) -> None:
    result = dynq.compile(host_model, "pynq-z2", tmp_path / "b", calib=images(32, (1, 8, 8), seed=7))
    host_ops = {p.op for p in result.placements if p.where == "host"}
    assert {"LeakyRelu", "Sigmoid", "Mul", "Softmax"} <= host_ops
    assert {p.op for p in result.placements if p.where == "device"} >= {"Conv", "Gemm"}
    assert any(p.op == "Conv" and p.where == "host" and "dilation" in p.reason for p in result.placements)
    x = images(8, (1, 8, 8), seed=8)
    ref = ort.InferenceSession(str(host_model)).run(None, {"input": x})[0]
    out = dynq.load(tmp_path / "b").run(x).output
    assert np.abs(out - ref).max() < 0.05


def test_max_pool_fuses_into_conv(ops_build: Path) -> None:
    """Conv -> ReLU -> 2x2 stride-2 MaxPool is one CONV with aux=1 (checked bit-exact by the tests above)."""
    convs = [ins for ins in dynq.load(ops_build).build.instructions if ins.op == Op.CONV]
    assert [ins.aux for ins in convs].count(1) == 1


def test_max_pool_too_wide_for_the_row_buffer_stays_separate(tmp_path: Path) -> None:
    """A 140-pixel-wide conv output exceeds pynq-z2's fused-pooling row (8 x 16 lanes), not zcu104's (8 x 32):
    the compiler fuses only where the array can, and both builds compute the same outputs."""
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2))
    path = export(net, tmp_path / "wide.onnx", (1, 4, 140))
    x = images(4, (1, 4, 140), seed=3)
    outputs = {}
    for board, fused in (("pynq-z2", False), ("zcu104", True)):
        dynq.compile(path, board, tmp_path / board, calib=x)
        model = dynq.load(tmp_path / board)
        ops = [(ins.op, ins.aux) for ins in model.build.instructions if ins.op != Op.END]
        assert ops == ([(Op.CONV, 1)] if fused else [(Op.CONV, 0), (Op.POOL, 0)]), board
        outputs[board] = model.run(x).raw
    for name, tensor in outputs["pynq-z2"].items():
        np.testing.assert_array_equal(outputs["zcu104"][name], tensor)


@pytest.mark.parametrize("field, value", [("src1", 4), ("param", 8)])
def test_misaligned_weights_are_an_address_error(field: str, value: int) -> None:
    """The weight memory is read in words of BLOCK x cols bytes and 16-byte records (contract.layout)."""
    fields = dict(cin=8, cout=4, ih=3, iw=3, oh=1, ow=1, kh=3, kw=3, sh=1, sw=1, dh=1, dw=1, groups=1, src0=0,
                  dst=128, src1=0, param=4096, clip_lo=0, clip_hi=255)
    fields[field] = value
    board = load_board("pynq-z2")
    build = case_build(board, "raw", encode(Op.CONV, **fields) + encode(Op.END), bytes(8192), 1024)
    emu = Emulator(build)
    word = BLOCK * board.arch.cols
    with pytest.raises(DeviceError, match=f"ADDR_RANGE.*weight memory is read in {word}-byte words"):
        emu.run_segment(emu.new_arena(1), 0, 2, [PrecisionRegs()] * MAX_LAYERS, None, {})
