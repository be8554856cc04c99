"""The RTL core against the emulator: random single-layer programs agree bit for bit and cycle for cycle,
bad programs stop the core with the emulator's error code, and `dynq run --backend rtl` matches the
emulator. More programs: `pytest tests/test_rtl.py --rtl-cases 2000 --rtl-seed 7`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

import dynq
from dynq.boards import load as load_board
from dynq.cli import main
from dynq.contract import ErrorCode, Memory, Mode, Op, PrecisionRegs, encode
from dynq.contract import registers as rg
from dynq.contract.registers import MASK_GRID, DeviceError
from dynq.hdl.sim import RtlSim, bit, build, reg
from dynq.runtime.emulator import Arena, Emulator
from dynq.runtime.model import Model, VerifyError
from dynq.runtime.rtl import RtlDevice, RtlUnsupported
from dynq.zoo import bundled_model, bundled_samples
from tests.rtl_cases import ARENA_BYTES, OPS_IN_RTL, PRECISION_REWRITES, Case, case_build, random_cases

BOARD = "pynq-z2"
AMEM = load_board(BOARD).arch.amem_bytes


@pytest.fixture(scope="module")
def sim():
    with RtlSim(BOARD, binary=build(BOARD), timeout=120) as s:
        yield s


def _emulate(case: Case) -> tuple[bytes, dict[int, dict[str, int]]]:
    emu = Emulator(case.build)
    arena = emu.new_arena(1)
    arena.put_rows(0, np.frombuffer(case.arena, np.uint8)[None], 0)
    counters: dict[int, dict[str, int]] = {}
    emu.run_segment(arena, 0, len(case.build.instructions), case.registers, case.mask, counters)
    return arena.rows(0, 1, 0, arena.nbytes).tobytes(), counters


def _on_rtl(case: Case, sim: RtlSim) -> tuple[bytes, dict[int, dict[str, int]]]:
    device = RtlDevice(case.build, sim)
    arena = Emulator(case.build).new_arena(1)
    arena.put_rows(0, np.frombuffer(case.arena, np.uint8)[None], 0)
    counters: dict[int, dict[str, int]] = {}
    device.run_segment(arena, 0, len(case.build.instructions), case.registers, case.mask, counters)
    return arena.rows(0, 1, 0, arena.nbytes).tobytes(), counters


def test_random_programs_agree(sim: RtlSim, request: pytest.FixtureRequest) -> None:
    count, seed = request.config.getoption("--rtl-cases"), request.config.getoption("--rtl-seed")
    cases = random_cases(load_board(BOARD), count, seed)
    assert {c.build.instructions[0].op for c in cases} == set(OPS_IN_RTL)
    assert {c.registers[0].mode for c in cases if c.build.instructions[0].op == Op.CONV} == set(Mode)
    for case in cases:
        want_bytes, want = _emulate(case)
        got_bytes, got = _on_rtl(case, sim)
        assert got_bytes == want_bytes, f"{case.name}: arena differs at byte " + str(
            next(i for i, (a, b) in enumerate(zip(got_bytes, want_bytes, strict=True)) if a != b))
        assert set(got) == set(want)
        # a CONV's part statistics (kept and total parts) are not counted by the core yet
        names = rg.COUNTERS if case.build.instructions[0].op != Op.CONV else (
            "busy_cycles", "compute_cycles", "stall_cycles", "mac_steps", "sensitive_regions", "total_regions")
        for layer, counters in want.items():
            for name in names:
                assert got[layer][name] == counters.get(name, 0), f"{case.name}: {name}"


def _raw_case(program: bytes, arena_bytes: int = ARENA_BYTES) -> Case:
    return Case("raw", case_build(load_board(BOARD), "raw", program, b"", arena_bytes), bytes(arena_bytes))


@pytest.mark.parametrize("program, code, pc", [
    (encode(Op.MOVE, src0=AMEM - 10, dst=0, cin=1, ih=1, iw=20, mult0=1) + encode(Op.END), ErrorCode.ADDR_RANGE, 0),
    (encode(Op.NOP) + encode(Op.ADD, src0=0, src1=1 << 30, dst=64, cin=2, ih=3, iw=4) + encode(Op.END),
     ErrorCode.ADDR_RANGE, 1),
    (encode(Op.NOP) + encode(Op.NOP), ErrorCode.ADDR_RANGE, 2),
    (encode(Op.MOVE, src0=0, dst=0, cin=4096, ih=1024, iw=1024, mult0=1) + encode(Op.END), ErrorCode.ADDR_RANGE, 0),
], ids=["source-past-arena", "operand-far-out", "no-end", "size-past-32-bits"])
def test_bad_programs_stop_like_the_emulator(sim: RtlSim, program: bytes, code: ErrorCode, pc: int) -> None:
    case = _raw_case(program, AMEM)  # the emulator's arena is as large as the core's: same range checks
    with pytest.raises(DeviceError) as emulated:
        _emulate(case)
    with pytest.raises(DeviceError) as simulated:
        _on_rtl(case, sim)
    assert (simulated.value.code, simulated.value.pc) == (emulated.value.code, emulated.value.pc) == (code, pc)
    status = sim.read(reg("STATUS"))
    assert status & bit("STATUS", "error") and not status & bit("STATUS", "done")
    assert sim.read(reg("ERROR")) == code and sim.read(reg("ERROR_PC")) == pc


def test_unknown_opcode_stops_the_core(sim: RtlSim) -> None:
    """An opcode the contract does not define (decoders refuse it before any emulation) stops the core."""
    unknown = next(v for v in range(16) if v not in set(Op))
    record = bytearray(encode(Op.NOP))
    record[0] = (record[0] & 0xF0) | unknown
    program = encode(Op.NOP) + bytes(record) + encode(Op.END)
    sim.load(Memory.INSTR, 0, program)
    with pytest.raises(DeviceError) as err:
        sim.run_segment(0, 3, max_cycles=1000)
    assert (err.value.code, err.value.pc) == (ErrorCode.BAD_OPCODE, 1)
    assert not sim.read(reg("STATUS")) & bit("STATUS", "done")


def _eltwise_model(path: Path) -> Path:
    """y = concat(relu(x) + 0.5 relu(x), relu(x)): ADD and MOVE on the overlay around a host Mul."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 8, 8])
    half = helper.make_tensor("half", TensorProto.FLOAT, [1], [0.5])
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "half"], ["h"]),
             helper.make_node("Add", ["r", "h"], ["s"]), helper.make_node("Concat", ["s", "r"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "eltwise", [x], [y], [half])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def eltwise_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eltwise")
    calib = np.random.default_rng(0).normal(size=(8, 3, 8, 8)).astype(np.float32)
    dynq.compile(_eltwise_model(root / "eltwise.onnx"), BOARD, root / "build", calib=calib)
    return root / "build"


def _rtl_agrees(model: Model, x: np.ndarray) -> None:
    """Every device tensor and every layer's busy cycles agree between the RTL and the emulator."""
    try:
        emulated = model.run(x, trace=True)
        simulated = model.run(x, trace=True, backend="rtl", verify=True)
    finally:
        model.close()
    assert simulated.report.backend == "rtl"
    for name, tensor in emulated.tensors.items():
        np.testing.assert_array_equal(simulated.tensors[name], tensor, err_msg=name)
    for want, got in zip(emulated.report.layers, simulated.report.layers, strict=True):
        assert (got.name, got.cycles) == (want.name, want.cycles)
        assert want.cycles > 0


def test_model_on_rtl_matches_emulator_every_tensor(eltwise_build: Path) -> None:
    """Device segments on the RTL around a host partition."""
    model = dynq.load(eltwise_build)
    kinds = [i.op for i in model.build.instructions]
    assert Op.ADD in kinds and Op.MOVE in kinds and any(s["kind"] == "host" for s in model.build.manifest["schedule"])
    _rtl_agrees(model, np.random.default_rng(1).normal(size=(3, 3, 8, 8)).astype(np.float32))


@pytest.fixture(scope="module")
def zoo_builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    images, _ = bundled_samples()
    root = tmp_path_factory.mktemp("zoo")
    for name in ("lenet5", "resnet_small"):
        dynq.compile(bundled_model(name), BOARD, root / name, calib=images[:32].astype(np.float32) / 255)
    return {name: root / name for name in ("lenet5", "resnet_small")}


@pytest.mark.parametrize("mode, zero_skip", [(m, z) for m in ("int8", "drq", "sdp") for z in (False, True)],
                         ids=[m + z for m in ("int8", "drq", "sdp") for z in ("", "-zero-skip")])
@pytest.mark.parametrize("name", ["lenet5", "resnet_small"])
def test_zoo_model_on_rtl_matches_emulator(zoo_builds: dict[str, Path], name: str, mode: str,
                                           zero_skip: bool) -> None:
    """The bundled LeNet-5 (fused pooling, Gemm) and ResNet (strided convs, residual Adds, global average
    pooling, Gemm) run on the RTL core entirely, in int8 and with the calibrated DRQ thresholds and SDP K."""
    model = dynq.load(zoo_builds[name], mode=mode)
    if mode != "int8":
        assert any(r.mode == Mode[mode.upper()] for r in model.registers), f"the policy kept no layer in {mode}"
    for index in range(len(model.layers)):
        model.set_layer(index, zero_skip=zero_skip)
    images, _ = bundled_samples()
    _rtl_agrees(model, images[32:36].astype(np.float32) / 255)


@pytest.mark.parametrize("mode, settings", list(PRECISION_REWRITES.values()), ids=list(PRECISION_REWRITES))
def test_precision_rewrite_between_runs(zoo_builds: dict[str, Path], mode: Mode, settings: list[dict]) -> None:
    """Precision is a register: a new DRQ threshold, SDP K or DAQ region mask, written between two runs of the
    program the core holds, changes outputs and cycles exactly as the emulator says (`verify` compares every
    tensor and layer)."""
    model = dynq.load(zoo_builds["resnet_small"], mode=mode.name.lower())
    layer = next(i for i, r in enumerate(model.registers) if r.mode == mode)
    x = bundled_samples()[0][40:42].astype(np.float32) / 255
    try:
        runs = []
        for setting in settings:
            model.set_layer(layer, **{k: v for k, v in setting.items() if k != "mask"})
            runs.append(model.run(x, backend="rtl", verify=True, trace=True, mask=setting.get("mask")))
            if len(runs) == 1:
                device = model._devices["rtl"]
        assert model._devices["rtl"] is device, "one simulator process (one Verilog build, one program load) ran both"
    finally:
        model.close()
    name = model.layers[layer]["output"]
    assert not np.array_equal(runs[0].tensors[name], runs[1].tensors[name])
    assert runs[0].report.layers[layer].cycles > runs[1].report.layers[layer].cycles


def test_cli_backend_rtl(eltwise_build: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(2).normal(size=(2, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    outputs = {}
    for backend in ("emulator", "rtl"):
        result = CliRunner().invoke(main, ["run", str(eltwise_build), "-i", str(tmp_path / "x.npy"), "--backend",
                                           backend, "-o", str(tmp_path / f"{backend}.npy"), "--report",
                                           str(tmp_path / f"{backend}.json")])
        assert result.exit_code == 0, result.output
        outputs[backend] = np.load(tmp_path / f"{backend}.npy")
    np.testing.assert_array_equal(outputs["rtl"], outputs["emulator"])


def test_rtl_refuses_what_it_lacks(sim: RtlSim) -> None:
    """Before anything runs, the runtime names the instruction and what of it the core lacks."""
    strided = encode(Op.CONV, cin=8, cout=4, ih=2, iw=2, oh=1, ow=1, kh=1, kw=1, sh=2, sw=2, groups=1)
    case = _raw_case(strided + encode(Op.END))
    arena = Emulator(case.build).new_arena(1)
    with pytest.raises(RtlUnsupported, match=r"instruction 0 \(layer 0\).*larger than 1x1"):
        RtlDevice(case.build, sim).run_segment(arena, 0, 2, case.registers, None, {})
    depthwise = encode(Op.CONV, layer=3, cin=8, cout=8, ih=3, iw=3, oh=1, ow=1, kh=3, kw=3, sh=1, sw=1, groups=8)
    case = _raw_case(depthwise + encode(Op.END))
    with pytest.raises(RtlUnsupported, match=r"instruction 0 \(layer 3\).*side by side"):
        RtlDevice(case.build, sim).run_segment(arena, 0, 2, case.registers, None, {})


@pytest.mark.parametrize("change, code", [
    (dict(dh=2, dw=2), ErrorCode.BUFFER_OVERFLOW),
    (dict(sw=4, kw=5), ErrorCode.BUFFER_OVERFLOW),
    (dict(src1=4), ErrorCode.ADDR_RANGE),
    (dict(groups=3), ErrorCode.BAD_OPCODE),
    (dict(dst=AMEM - 100), ErrorCode.ADDR_RANGE),
    (dict(cin=32, ih=16384, iw=16384), ErrorCode.ADDR_RANGE),
    (dict(oh=3), ErrorCode.BUFFER_OVERFLOW),
    (dict(ow=37), ErrorCode.BUFFER_OVERFLOW),
    (dict(sw=0), ErrorCode.BUFFER_OVERFLOW),
    (dict(sw=5, iw=8, ow=2), ErrorCode.BUFFER_OVERFLOW),
    (dict(ih=2, pt=0, oh=1), ErrorCode.BUFFER_OVERFLOW),
    (dict(aux=2), ErrorCode.BAD_OPCODE),
    (dict(aux=1, ih=3, oh=1), ErrorCode.BUFFER_OVERFLOW),
    (dict(aux=1, iw=140, ow=138), ErrorCode.BUFFER_OVERFLOW),
], ids=["dilated", "line-overflow", "weights-misaligned", "groups-do-not-divide", "output-past-arena",
        "input-size-past-33-bits", "rows-not-the-window's", "columns-not-the-window's", "stride-0", "stride-5",
        "kernel-taller-than-input", "aux-2", "pooling-one-row", "pooling-row-too-wide"])
def test_bad_convolutions_stop_like_the_emulator(sim: RtlSim, change: dict, code: ErrorCode) -> None:
    _bad_convolution(sim, change, PrecisionRegs(), code)


@pytest.mark.parametrize("change, regs, code", [
    ({}, PrecisionRegs(mode=Mode.DRQ, rh=3), ErrorCode.BAD_PRECISION),
    ({}, PrecisionRegs(mode=Mode.DRQ, rw=32), ErrorCode.BAD_PRECISION),
    (dict(iw=300, ow=298), PrecisionRegs(mode=Mode.DRQ), ErrorCode.BUFFER_OVERFLOW),
    ({}, PrecisionRegs(mode=Mode.SDP, g=3, k=2), ErrorCode.BAD_PRECISION),
    ({}, PrecisionRegs(mode=Mode.SDP, g=16, k=2), ErrorCode.BAD_PRECISION),
    ({}, PrecisionRegs(mode=Mode.SDP, g=4, k=9), ErrorCode.BAD_PRECISION),
    (dict(ih=1, iw=1, oh=1, ow=1, kh=1, kw=1), PrecisionRegs(mode=Mode.SDP, g=4, k=4), ErrorCode.BAD_PRECISION),
    (dict(ih=1, iw=1, oh=1, ow=1, kh=1, kw=1), PrecisionRegs(mode=Mode.DAQ), ErrorCode.BAD_PRECISION),
], ids=["region-not-a-power-of-two", "region-too-wide", "input-too-wide-for-the-predictor", "sdp-g-3",
        "sdp-g-past-the-block", "sdp-k-over-2g", "sdp-on-a-gemm", "daq-on-a-gemm"])
def test_bad_precision_stops_like_the_emulator(sim: RtlSim, change: dict, regs: PrecisionRegs,
                                               code: ErrorCode) -> None:
    _bad_convolution(sim, change, regs, code)


def test_daq_without_a_mask_stops_before_the_core_runs(sim: RtlSim) -> None:
    """The mask memory would hold whatever the last run left: the runtime stops as the emulator does."""
    _bad_convolution(sim, {}, PrecisionRegs(mode=Mode.DAQ), ErrorCode.BAD_PRECISION, with_mask=False)


def _bad_convolution(sim: RtlSim, change: dict, regs: PrecisionRegs, code: ErrorCode, with_mask: bool = True) -> None:
    fields = dict(cin=16, cout=20, ih=4, iw=40, oh=2, ow=38, kh=3, kw=3, sh=1, sw=1, dh=1, dw=1, groups=1,
                  src0=0, dst=1024, src1=0, param=8192, clip_lo=0, clip_hi=255)
    fields.update(change)
    program = encode(Op.CONV, **fields) + encode(Op.END)
    mask = torch.ones((MASK_GRID, MASK_GRID), dtype=torch.long) if regs.mode == Mode.DAQ and with_mask else None
    case = Case("bad", case_build(load_board(BOARD), "bad", program, bytes(16384), AMEM), bytes(AMEM),
                [regs] * rg.MAX_LAYERS, mask)
    with pytest.raises(DeviceError) as emulated:
        _emulate(case)
    with pytest.raises(DeviceError) as simulated:
        _on_rtl(case, sim)
    assert (simulated.value.code, simulated.value.pc) == (emulated.value.code, emulated.value.pc) == (code, 0)


def test_generate_writes_lint_clean_verilog_and_vhdl(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["hdl", "generate", "--board", "pynq-z2", "-o", str(tmp_path), "--vhdl"])
    assert result.exit_code == 0, result.output
    assert "lint clean" in result.output
    verilog = (tmp_path / "dynq_core.v").read_text()
    assert "module dynq_core" in verilog and (tmp_path / "dynq_core.vhd").is_file()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_verify_names_the_first_differing_layer(eltwise_build: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A device whose arena comes back with one wrong byte in the ADD's output is caught at that layer."""
    model = dynq.load(eltwise_build)
    add = next(i for i in model.build.instructions if i.op == Op.ADD)
    put_rows = Arena.put_rows

    def corrupt(arena: Arena, image: int, data: np.ndarray, lo: int) -> None:
        damaged = data.copy()
        damaged[:, add.dst + 5 - lo] ^= 0x01  # verify brings the whole arena back (lo = 0)
        put_rows(arena, image, damaged, lo)

    monkeypatch.setattr("dynq.runtime.emulator.Arena.put_rows", corrupt)
    x = np.random.default_rng(3).normal(size=(1, 3, 8, 8)).astype(np.float32)
    try:
        with pytest.raises(VerifyError, match=rf"at layer {add.layer} .*element \[0, 0, 0, 5\]"):
            model.run(x, backend="rtl", verify=True)
    finally:
        model.close()
