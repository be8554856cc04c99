"""The pynq driver over simulated boards: pynq's own MMIO, allocate and DMA classes drive the overlay's
register file, AXI DMA and DDR in-process, with the core executed by the emulator (`sim-pynq`) or by the
Verilator simulation of the generated core (`sim-pynq-rtl`). Every result is checked against the emulator
run directly on the same inputs and registers; the faults a board can show end in errors that say where."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pynq
import pytest
from click.testing import CliRunner

import dynq
from dynq.cli import main
from dynq.contract import ErrorCode, Memory, Mode, Op, address_map
from dynq.contract import axi_dma as dma_regs
from dynq.contract import registers as rg
from dynq.contract.registers import DeviceError
from dynq.errors import UsageError
from dynq.runtime.core_driver import DeviceTimeout
from dynq.runtime.driver import DmaError, PynqDriver
from dynq.runtime.importance import DEFAULT_FRACTIONS, cell_scores, keypoint_density, levels
from dynq.runtime.model import InputError, Model, Result, VerifyError
from dynq.runtime.sim_faults import Faults
from dynq.runtime.sim_pynq import BusError, RtlOverlayDevice, SimOverlayDevice
from dynq.zoo import bundled_samples
from tests.conftest import BOARD, MODELS
from tests.rtl_cases import PRECISION_REWRITES


def digits(first: int, count: int) -> np.ndarray:
    images, _ = bundled_samples()
    return images[first:first + count].astype(np.float32) / 255


def assert_same_run(got: Result, want: Result) -> None:
    """Outputs, integer outputs, every device tensor and every layer's counters and derived figures."""
    for name, value in want.outputs.items():
        np.testing.assert_array_equal(got.outputs[name], value, err_msg=name)
        np.testing.assert_array_equal(got.raw[name], want.raw[name], err_msg=name)
    assert set(got.tensors) == set(want.tensors)
    for name, tensor in want.tensors.items():
        np.testing.assert_array_equal(got.tensors[name], tensor, err_msg=name)
    for have, expected in zip(got.report.layers, want.report.layers, strict=True):
        assert asdict(have) == asdict(expected)
    assert got.report.total_cycles == want.report.total_cycles > 0


def assert_same_rtl_run(got: Result, want: Result) -> None:
    """Outputs, and every layer's counters that the RTL core implements."""
    np.testing.assert_array_equal(got.output, want.output)
    for have, expected in zip(got.report.layers, want.report.layers, strict=True):
        for field in ("cycles", "compute_cycles", "stall_cycles", "mac_steps", "sensitive_share"):
            assert getattr(have, field) == getattr(expected, field), (have.name, field)


def beats(nbytes: int) -> int:
    """Bytes on a stream for `nbytes` of data: whole 32-bit beats."""
    return -(-nbytes // rg.XFER_ALIGN) * rg.XFER_ALIGN


def arena_bytes(model: Model) -> int:
    return beats(int(model.build.manifest["arena_bytes"]))


@pytest.mark.parametrize("mode", ["int8", "drq", "sdp"])
@pytest.mark.parametrize("name", MODELS)
def test_zoo_model_through_pynq_matches_emulator(builds: dict[str, Path], name: str, mode: str) -> None:
    """LeNet-5 (fused pooling, Gemm) and the small ResNet (strided convs, residual Adds, global pooling)
    through pynq.MMIO / allocate / DMA on the simulated board: every tensor and every counter equals the
    emulator's, and every byte went through the DMA (program and weights once, each arena in and out).
    Without `trace` only each image goes in and only the logits come back, with the same results."""
    model = dynq.load(builds[name], mode=mode)
    if mode != "int8":
        assert any(r.mode == Mode[mode.upper()] for r in model.registers), f"the policy kept no layer in {mode}"
    x = digits(0, 6)
    try:
        driver = model.open_backend("sim-pynq")
        got = model.run(x, backend="sim-pynq", trace=True)
        moved, arena = dict(driver.device.dma.moved), model.build.manifest["arena_bytes"]
        lean = model.run(x, backend="sim-pynq")
    finally:
        model.close()
    want = model.run(x, trace=True)
    assert got.report.backend == "sim-pynq"
    assert_same_run(got, want)
    assert moved["mm2s"] == len(model.build.program) + len(model.build.weights) + len(x) * arena
    assert moved["s2mm"] == len(x) * arena_bytes(model)
    np.testing.assert_array_equal(lean.raw["logits"], want.raw["logits"])
    assert [asdict(layer) for layer in lean.report.layers] == [asdict(layer) for layer in want.report.layers]
    manifest = model.build.manifest
    logits = next(o for o in manifest["outputs"] if o["name"] == "logits")
    assert driver.device.dma.moved["mm2s"] - moved["mm2s"] == len(x) * beats(int(np.prod(manifest["input"]["shape"])))
    assert driver.device.dma.moved["s2mm"] - moved["s2mm"] == len(x) * beats(int(np.prod(logits["shape"])))


def test_host_partitions_between_segments_move_only_their_tensors(tmp_path: Path) -> None:
    """Conv, Erf (host), Conv, Erf (host), 1x1 Conv on 1x12x12 inputs: three device segments around two host
    partitions. Per image the DMA carries, counted by hand, the 144-byte input and the two 576-byte Erf
    results in, and the two 576-byte ReLU results and the 288-byte output back; outputs equal the
    emulator's, and `verify` (whole arenas) agrees."""
    import torch
    from torch import nn

    from tests.conftest import export

    class Erf(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.erf(x)

    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), Erf(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        Erf(), nn.Conv2d(4, 2, 1))
    x = np.random.default_rng(0).random((5, 1, 12, 12), dtype=np.float32)
    dynq.compile(export(net, tmp_path / "erf.onnx", (1, 12, 12)), BOARD, tmp_path / "b", calib=x)
    model = dynq.load(tmp_path / "b")
    assert [s["kind"] for s in model.build.manifest["schedule"]] == ["device", "host"] * 2 + ["device"]
    try:
        driver = model.open_backend("sim-pynq")
        before = dict(driver.device.dma.moved)
        got = model.run(x, backend="sim-pynq")
        moved = {k: v - before[k] for k, v in driver.device.dma.moved.items()}
        verified = model.run(x, backend="sim-pynq", verify=True)
    finally:
        model.close()
    want = model.run(x)
    assert moved == {"mm2s": len(x) * (144 + 576 + 576), "s2mm": len(x) * (576 + 576 + 288)}
    for name, value in want.outputs.items():
        np.testing.assert_array_equal(got.outputs[name], value)
        np.testing.assert_array_equal(verified.outputs[name], value)


def test_core_computes_with_what_it_was_sent(builds: dict[str, Path]) -> None:
    """The simulated core runs the weights in its own memory, not the build file's: a weight image rewritten
    through the stream changes the outputs, the original sent again restores them."""
    model = dynq.load(builds["lenet5"])
    x = digits(8, 2)
    want = model.run(x).output
    try:
        driver = model.open_backend("sim-pynq")
        weights = model.build.weights
        driver.load(Memory.WEIGHTS, 0, bytes(len(weights)))
        assert not np.array_equal(model.run(x, backend="sim-pynq").output, want)
        driver.load(Memory.WEIGHTS, 0, weights)
        np.testing.assert_array_equal(model.run(x, backend="sim-pynq").output, want)
    finally:
        model.close()


def test_core_error_code_names_the_layer(builds: dict[str, Path]) -> None:
    """A layer the core refuses (SDP on the Gemm, which has one output pixel) stops the core with an error
    code: the driver reads STATUS, ERROR and ERROR_PC into the emulator's DeviceError, naming the layer."""
    model = dynq.load(builds["resnet_small"])
    gemm = model.layers[-1]
    model.set_layer(gemm["index"], mode="sdp", g=4, k=2)
    x = digits(12, 1)
    with pytest.raises(DeviceError) as emulated:
        model.run(x)
    try:
        with pytest.raises(DeviceError) as simulated:
            model.run(x, backend="sim-pynq")
    finally:
        model.close()
    assert (simulated.value.code, simulated.value.pc) == (emulated.value.code, emulated.value.pc)
    assert simulated.value.code == ErrorCode.BAD_PRECISION
    assert f"layer {gemm['index']} ({gemm['name']})" in str(simulated.value)


def cli_run_verified(build: Path, x: np.ndarray, backend: str, tmp_path: Path, *options: str) -> None:
    """`dynq run --backend BACKEND --verify` against `dynq run` on the emulator: the same outputs, the
    emulator's report schema and layers plus the backend and the verification result."""
    np.save(tmp_path / "x.npy", x)
    runs = {"emulator": ["--backend", "emulator"], "device": ["--backend", backend, "--verify", *options]}
    for name, args in runs.items():
        result = CliRunner().invoke(main, ["run", str(build), "-i", str(tmp_path / "x.npy"), *args, "-o",
                                           str(tmp_path / f"{name}.npy"), "--report", str(tmp_path / f"{name}.json")])
        assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(tmp_path / "device.npy"), np.load(tmp_path / "emulator.npy"))
    emulated, device = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("emulator", "device"))
    assert set(device) == set(emulated) | {"verified"} and device["verified"] is True
    assert (device["backend"], emulated["backend"]) == (backend, "emulator")
    assert device["layers"] == emulated["layers"] and device["total_cycles"] == emulated["total_cycles"]


def test_cli_sim_pynq_verify_report(builds: dict[str, Path], tmp_path: Path) -> None:
    """`dynq run --backend sim-pynq --verify`: the emulator's outputs, the emulator's report schema plus the
    verification result; --timeout only where there is a device to wait on."""
    cli_run_verified(builds["resnet_small"], digits(10, 3), "sim-pynq", tmp_path)
    wrong = CliRunner().invoke(main, ["run", str(builds["resnet_small"]), "-i", str(tmp_path / "x.npy"),
                                      "--timeout", "1", "-o", str(tmp_path / "t.npy")])
    assert wrong.exit_code == 1 and "--timeout applies to" in wrong.output


def test_hang_times_out_naming_the_layer(builds: dict[str, Path]) -> None:
    """A core that never raises done: the wait ends after the configured time with the layer the core is in
    (read from its PC register); the core is reset, and once the fault is gone the next run is right."""
    model = dynq.load(builds["resnet_small"])
    pc = next(i for i, ins in enumerate(model.build.instructions) if ins.op == Op.ADD)
    layer = model.layers[model.build.instructions[pc].layer]
    device = SimOverlayDevice(BOARD, Faults(hang_at=pc))
    timeout = 0.5
    x = digits(20, 2)
    try:
        model.open_backend("sim-pynq", device=device, timeout=timeout)
        start = time.monotonic()
        with pytest.raises(DeviceTimeout) as err:
            model.run(x, backend="sim-pynq")
        elapsed = time.monotonic() - start
        assert timeout <= elapsed < timeout + 1.0
        assert f"layer {layer['index']} ({layer['name']}), instruction {pc}" in str(err.value)
        assert f"after {timeout:g} s" in str(err.value)
        device.faults.hang_at = None
        recovered = model.run(x, backend="sim-pynq", trace=True)
    finally:
        model.close()
    assert_same_run(recovered, model.run(x, trace=True))


def test_corrupted_element_is_named_by_verify(builds: dict[str, Path]) -> None:
    """A core that flips one bit of an inner layer's output after the run: the outputs still look right,
    but verify names the layer, the tensor, the element and both values."""
    model = dynq.load(builds["resnet_small"])
    layer = model.layers[4]
    tensor = model.build.manifest["tensors"][layer["output"]]
    element = (2, 3, 1)
    byte = tensor["offset"] + int(np.ravel_multi_index(element, tensor["shape"]))
    x = digits(30, 1)
    want = model.run(x, trace=True)
    expected = int(want.tensors[layer["output"]][(0, *element)])
    flipped = np.array([expected], np.int8 if tensor["signed"] else np.uint8).view(np.uint8) ^ 0x10
    got = int(flipped.view(np.int8 if tensor["signed"] else np.uint8)[0])
    try:
        model.open_backend("sim-pynq", device=SimOverlayDevice(BOARD, Faults(corrupt=(byte, 0x10))))
        unchecked = model.run(x, backend="sim-pynq")
        np.testing.assert_array_equal(unchecked.output, want.output)
        with pytest.raises(VerifyError) as err:
            model.run(x, backend="sim-pynq", verify=True)
    finally:
        model.close()
    assert str(err.value) == (f"sim-pynq differs from the emulator at layer {layer['index']} ({layer['name']}): "
                              f"tensor {layer['output']!r} element {[0, *element]} is {got}, the emulator has "
                              f"{expected}")


@pytest.mark.parametrize("channel, bit, words", [
    ("mm2s", dma_regs.SR_SLV_ERR, "slave error"),
    ("s2mm", dma_regs.SR_DEC_ERR, "decode error"),
    ("s2mm", dma_regs.SR_INT_ERR, "internal error"),
])
def test_dma_error_bit_is_a_clear_error(builds: dict[str, Path], channel: str, bit: int, words: str) -> None:
    """A DMA transfer that stops with an error bit: DmaError names the channel, the transfer and the bit;
    the driver resets DMA and core, so the next run is right."""
    model = dynq.load(builds["lenet5"])
    device = SimOverlayDevice(BOARD)
    x = digits(40, 2)
    try:
        model.open_backend("sim-pynq", device=device)
        device.faults.dma_error = (channel, bit)
        with pytest.raises(DmaError) as err:
            model.run(x, backend="sim-pynq")
        assert device.faults.dma_error is None, "the fault fired"
        recovered = model.run(x, backend="sim-pynq", trace=True)
    finally:
        model.close()
    message = str(err.value)
    manifest = model.build.manifest  # one batch start: both images in, both logits out
    logits = next(o for o in manifest["outputs"] if o["name"] == "logits")
    nbytes = [2 * beats(int(np.prod(t["shape"]))) for t in (manifest["input"], logits)]
    assert f"on 2 images ({nbytes[0]} bytes in, {nbytes[1]} out)" in message
    assert f"{channel.upper()} channel stopped with {words}" in message
    status = int(re.search(r"DMASR 0x([0-9a-f]{8})", message).group(1), 16)
    assert status & (dma_regs.SR_INT_ERR | dma_regs.SR_SLV_ERR | dma_regs.SR_DEC_ERR) == bit
    assert status & dma_regs.SR_HALTED and status & dma_regs.SR_ERR_IRQ, "an error halts the channel"
    assert_same_run(recovered, model.run(x, trace=True))


class RecordingDevice(SimOverlayDevice):
    """Remembers every register write and buffer allocation."""

    def __init__(self, board: str):
        super().__init__(board)
        self.writes: list[int] = []
        self.allocations = 0

    def write_word(self, address: int, value: int) -> None:
        self.writes.append(address)
        super().write_word(address, value)

    def allocate(self, shape: object, dtype: object, **kwargs: object) -> object:
        self.allocations += 1
        return super().allocate(shape, dtype, **kwargs)


def test_build_for_another_architecture_is_refused_before_any_write(builds: dict[str, Path]) -> None:
    """A zcu104 build on a pynq-z2 overlay: the FINGERPRINT register read refuses it; nothing was written to
    the device and no buffer taken. A pynq-z1 overlay (the same architecture) takes a pynq-z2 build."""
    model = dynq.load(builds["lenet5-zcu104"])
    device = RecordingDevice(BOARD)
    with pytest.raises(DeviceError) as err:
        model.open_backend("sim-pynq", device=device)
    assert err.value.code == ErrorCode.FINGERPRINT and "zcu104" in str(err.value)
    assert device.writes == [] and device.allocations == 0
    same_arch = dynq.load(builds["lenet5"])
    driver = same_arch.open_backend("sim-pynq", device=RecordingDevice("pynq-z1"))
    try:
        assert driver.device.writes and driver.device.allocations == 2
        x = digits(50, 1)
        np.testing.assert_array_equal(same_arch.run(x, backend="sim-pynq").output, same_arch.run(x).output)
    finally:
        same_arch.close()


@pytest.mark.parametrize("mode, settings", list(PRECISION_REWRITES.values()), ids=list(PRECISION_REWRITES))
def test_precision_rewrite_between_runs(builds: dict[str, Path], mode: Mode, settings: list[dict]) -> None:
    """One loaded model, the program and weights sent once: a new DRQ threshold, SDP K or DAQ mask written
    between two runs gives a different output, each equal to the emulator under the same registers."""
    model = dynq.load(builds["resnet_small"], mode=mode.name.lower())
    layer = next(i for i, r in enumerate(model.registers) if r.mode == mode)
    name = model.layers[layer]["output"]
    x = digits(44, 3)
    runs = []
    try:
        driver = model.open_backend("sim-pynq")
        for setting in settings:
            model.set_layer(layer, **{k: v for k, v in setting.items() if k != "mask"})
            got = model.run(x, backend="sim-pynq", trace=True, mask=setting.get("mask"))
            assert_same_run(got, model.run(x, trace=True, mask=setting.get("mask")))
            runs.append(got)
    finally:
        model.close()
    assert not np.array_equal(runs[0].tensors[name], runs[1].tensors[name])
    assert not np.array_equal(runs[0].raw["logits"], runs[1].raw["logits"])
    assert runs[0].report.layers[layer].cycles != runs[1].report.layers[layer].cycles
    assert driver.device.dma.moved["mm2s"] == (len(model.build.program) + len(model.build.weights)
                                               + 2 * len(x) * model.build.manifest["arena_bytes"])


def mask_writes(device: RecordingDevice, since: int) -> int:
    """Words written into the core's region-mask memory from write number `since` on."""
    lo = device.address_map.core.base + rg.MASK_BASE
    return sum(lo <= address < lo + 4 * rg.MASK_WORDS for address in device.writes[since:])


def test_per_image_masks_share_the_one_mask_memory(builds: dict[str, Path]) -> None:
    """Images with different region masks in one batch (A A B A): the core has one mask memory, so the driver
    rewrites it before each image whose mask differs from the previous image's, three times here. Every
    tensor and counter equals the emulator's on the whole batch, and each image's logits equal the emulator's
    on that image alone with its own mask."""
    model = dynq.load(builds["resnet_small"], mode="daq")
    full, columns = PRECISION_REWRITES["daq-mask"][1][0]["mask"], PRECISION_REWRITES["daq-mask"][1][1]["mask"]
    masks = np.stack([full, full, columns, full])
    x = digits(52, 4)
    device = RecordingDevice(BOARD)
    try:
        model.open_backend("sim-pynq", device=device)
        before = len(device.writes)
        got = model.run(x, backend="sim-pynq", mask=masks, trace=True)
    finally:
        model.close()
    assert mask_writes(device, before) == 3 * rg.MASK_WORDS
    assert_same_run(got, model.run(x, mask=masks, trace=True))
    for i, mask in enumerate(masks):
        np.testing.assert_array_equal(got.raw["logits"][i], model.run(x[i:i + 1], mask=mask).raw["logits"][0])
    assert not np.array_equal(model.run(x[2:3], mask=full).raw["logits"], got.raw["logits"][2:3])


def test_persistent_importance_mask(builds: dict[str, Path]) -> None:
    """`set_mask("keypoints")` holds for every later run that passes no mask, through `set_mode`, computed
    afresh per image (masks made here from the importance functions directly, then run on the emulator, give
    the same logits); a mask passed to one call wins for that call; `set_mask(None)` clears it, and a DAQ run
    then stops before anything reaches the core. No recompilation: program and weights went over once."""
    model = dynq.load(builds["resnet_small"], mode="daq")
    x = digits(56, 3)
    by_hand = np.stack([levels(cell_scores(keypoint_density(image)), DEFAULT_FRACTIONS) for image in x])
    assert len({m.tobytes() for m in by_hand}) == 3, "the digits should get three different masks"
    try:
        driver = model.open_backend("sim-pynq")
        model.set_mask("keypoints")
        kept = model.run(x, backend="sim-pynq")
        np.testing.assert_array_equal(kept.masks, by_hand)
        np.testing.assert_array_equal(kept.raw["logits"], model.run(x, mask=by_hand).raw["logits"])
        assert kept.report.extra["mask"]["importance"] == "keypoints"
        other = model.run(x, backend="sim-pynq", mask="entropy")
        assert not np.array_equal(other.raw["logits"], kept.raw["logits"])
        model.set_mode("int8")
        model.set_mode("daq")
        np.testing.assert_array_equal(model.run(x, backend="sim-pynq").raw["logits"], kept.raw["logits"])
        model.set_mask(None)
        with pytest.raises(DeviceError, match="needs a region mask"):
            model.run(x, backend="sim-pynq")
        with pytest.raises(InputError, match=r"shape \[4, 4\]"):
            model.set_mask(np.full((4, 4), 2))
        with pytest.raises(UsageError, match="unknown importance 'saliency'"):
            model.set_mask("saliency")
    finally:
        model.close()
    image = beats(int(np.prod(model.build.manifest["input"]["shape"])))
    assert driver.device.dma.moved["mm2s"] == len(model.build.program) + len(model.build.weights) + 3 * len(x) * image


def store(driver: PynqDriver, addr: int, nbytes: int) -> bytes:
    """Arena bytes over the output stream, by hand: XFER registers, CTRL.store, a DMA receive."""
    ctrl = rg.GLOBAL["CTRL"]
    for name, value in (("XFER_MEM", Memory.ARENA), ("XFER_ADDR", addr), ("XFER_BYTES", nbytes)):
        driver.write(rg.GLOBAL[name].offset, int(value))
    driver.write(ctrl.offset, ctrl.mask("store"))
    buffer = pynq.allocate((nbytes,), np.uint8, target=driver.device)
    driver.dma.recvchannel.transfer(buffer)
    driver.dma.recvchannel.wait()
    return buffer.tobytes()


def test_stream_order_and_cache_coherence_as_on_a_board(builds: dict[str, Path]) -> None:
    """The simulated board is no softer than a real one: a DMA send started before CTRL.load still lands (the
    stream waits for the core), and bytes written into a buffer without a flush never reach the DDR."""
    model = dynq.load(builds["lenet5"])
    driver = model.open_backend("sim-pynq")
    ctrl, mm2s = rg.GLOBAL["CTRL"], dma_regs.CHANNELS["mm2s"]
    data = np.arange(64, dtype=np.uint8)
    try:
        buffer = pynq.allocate((64,), np.uint8, target=driver.device)
        buffer[:] = data
        driver.dma.sendchannel.transfer(buffer)  # flushes, then starts: the core is not listening yet
        assert not driver.dma.sendchannel.idle
        for name, value in (("XFER_MEM", Memory.ARENA), ("XFER_ADDR", 256), ("XFER_BYTES", 64)):
            driver.write(rg.GLOBAL[name].offset, int(value))
        driver.write(ctrl.offset, ctrl.mask("load"))
        assert driver.dma.sendchannel.idle
        driver.dma.sendchannel.wait()
        assert store(driver, 256, 64) == data.tobytes()
        buffer[:] = 0xFF  # the host's view only
        driver.write(ctrl.offset, ctrl.mask("load"))
        driver.dma.mmio.write(mm2s + dma_regs.ADDRESS, buffer.physical_address)
        driver.dma.mmio.write(mm2s + dma_regs.LENGTH, 64)  # started bare-metal, without a flush
        assert store(driver, 256, 64) == data.tobytes()
        driver.write(ctrl.offset, ctrl.mask("load"))
        driver.dma.sendchannel.transfer(buffer)  # pynq flushes first
        driver.dma.sendchannel.wait()
        assert store(driver, 256, 64) == bytes([0xFF] * 64)
    finally:
        model.close()


@pytest.mark.parametrize("backend", ["sim-pynq", "sim-pynq-rtl"])
def test_batch_start_as_on_a_board(builds: dict[str, Path], backend: str) -> None:
    """A batch start, driven by hand on both cores: spans that are not whole beats inside the arena stop it
    with XFER before any stream moves; the input packet waits while the output channel is not running (a
    board's core stops taking input it cannot answer) and flows once it is; the outputs equal the
    emulator's, image by image; a packet that ends early stops the batch with XFER."""
    model = dynq.load(builds["lenet5"])
    manifest = model.build.manifest
    x = digits(20, 3)
    logits = next(o for o in manifest["outputs"] if o["name"] == "logits")
    first, count = next((s["first"], s["count"]) for s in manifest["schedule"] if s["kind"] == "device")
    in_lo, in_n = int(manifest["tensors"][manifest["input"]["name"]]["offset"]), beats(int(np.prod(x.shape[1:])))
    out_lo, out_n = int(manifest["tensors"]["logits"]["offset"]), beats(int(np.prod(logits["shape"])))
    status, error = rg.GLOBAL["STATUS"], rg.GLOBAL["ERROR"]
    try:
        driver = model.open_backend(backend)
        expected = model.run(x, trace=True)

        def start(**regs: int) -> None:
            values = {"BATCH": len(x), "IN_ADDR": in_lo, "IN_BYTES": in_n, "OUT_ADDR": out_lo, "OUT_BYTES": out_n,
                      "INSTR_FIRST": first, "INSTR_COUNT": count, **regs}
            for name, value in values.items():
                driver.write(rg.GLOBAL[name].offset, value)
            driver.write(rg.GLOBAL["CTRL"].offset, rg.GLOBAL["CTRL"].mask("start"))

        for bad in ({"IN_BYTES": in_n + 2}, {"OUT_ADDR": out_lo + 1}, {"OUT_BYTES": 0},
                    {"IN_ADDR": driver.read(rg.GLOBAL["AMEM_BYTES"].offset) - 4}, {"OUT_ADDR": (1 << 32) - 4}):
            start(**bad)
            assert driver.read(status.offset) & (status.mask("error") | status.mask("busy")) == status.mask("error")
            assert driver.read(error.offset) == ErrorCode.XFER, bad
        start()
        tx = pynq.allocate((len(x) * in_n,), np.uint8, target=driver.device)
        rx = pynq.allocate((len(x) * out_n,), np.uint8, target=driver.device)
        dtype = np.int8 if manifest["input"]["signed"] else np.uint8
        quantized = [expected.tensors[manifest["input"]["name"]][i].astype(dtype).tobytes() for i in range(len(x))]
        tx[:] = np.frombuffer(b"".join(q.ljust(in_n, b"\0") for q in quantized), np.uint8)
        driver.dma.sendchannel.transfer(tx)
        assert not driver.dma.sendchannel.idle, "the core took input with its output channel stopped"
        driver.dma.recvchannel.transfer(rx)
        driver.dma.recvchannel.wait()
        driver.dma.sendchannel.wait()
        assert driver.read(status.offset) & status.mask("done")
        got = np.asarray(rx).reshape(len(x), out_n)[:, :int(np.prod(logits["shape"]))].view(np.int8)
        start()  # a packet one beat short: TLAST before the last image is whole
        driver.dma.recvchannel.transfer(rx)
        driver.dma.sendchannel.transfer(tx[:-4])
        assert driver.read(status.offset) & (status.mask("error") | status.mask("busy")) == status.mask("error")
        assert driver.read(error.offset) == ErrorCode.XFER
        assert not driver.dma.recvchannel.idle, "no whole output packet came back"
        driver._reset()
    finally:
        model.close()
    np.testing.assert_array_equal(got, expected.tensors["logits"].reshape(len(x), -1))


@pytest.mark.parametrize("name", MODELS)
def test_rtl_core_behind_the_simulated_board(builds: dict[str, Path], name: str) -> None:
    """sim-pynq-rtl: the same driver and board model with the generated core in Verilator: outputs and the
    counters the RTL implements equal the emulator's (verify checks every tensor), and after the same
    segment the CYCLES register of the emulated core equals the RTL's."""
    model = dynq.load(builds[name])
    x = digits(60, 2)
    try:
        rtl = model.open_backend("sim-pynq-rtl")
        got = model.run(x, backend="sim-pynq-rtl", verify=True, trace=True)
        emulated = model.open_backend("sim-pynq")
        cycles, images = [], []
        for batch in (x[:1], x):  # a start of one image, then one of two (CYCLES sums its images)
            model.run(batch, backend="sim-pynq")
            model.run(batch, backend="sim-pynq-rtl")
            cycles.append([driver.read(rg.GLOBAL["CYCLES"].offset) for driver in (emulated, rtl)])
            images.append([driver.read(rg.GLOBAL["IMAGE"].offset) for driver in (emulated, rtl)])
    finally:
        model.close()
    assert isinstance(rtl.device, RtlOverlayDevice) and got.report.extra["verified"] is True
    assert_same_rtl_run(got, model.run(x))
    assert cycles[0][0] == cycles[0][1] > model.run(x[:1]).report.total_cycles
    assert cycles[1][0] == cycles[1][1] > cycles[0][0]
    assert images == [[1, 1], [2, 2]]


class StandInOverlay:
    """What the driver reads of a loaded `pynq.Overlay`: its device and its `ip_dict` (from the `.hwh`)."""

    def __init__(self, device: SimOverlayDevice, core_base: int | None = None, with_dma: bool = True):
        amap = device.address_map
        self.device = device
        self.ip_dict = {amap.core.name: {"phys_addr": amap.core.base if core_base is None else core_base,
                                         "addr_range": amap.core.size, "type": "dynq:user:dynq_core:1.0"}}
        if with_dma:
            self.ip_dict[amap.dma.name] = {"phys_addr": amap.dma.base, "addr_range": amap.dma.size,
                                           "type": "xilinx.com:ip:axi_dma:7.1", "interrupts": {},
                                           "parameters": dict(address_map.DMA_CONFIG)}


def test_board_backend_takes_addresses_from_the_overlay(builds: dict[str, Path]) -> None:
    """Backend `pynq` reads the core's and the DMA's addresses from the overlay's ip_dict under the contract's
    instance names: the right ones run the model, a moved core is looked for where the overlay says, an
    overlay without the DMA is refused with the names it has."""
    model = dynq.load(builds["lenet5"])
    device = SimOverlayDevice(BOARD)
    x = digits(61, 2)
    try:
        model.open_backend("pynq", overlay=StandInOverlay(device))
        np.testing.assert_array_equal(model.run(x, backend="pynq").output, model.run(x).output)
        moved = device.address_map.core.base + 0x1_0000
        with pytest.raises(BusError, match=f"at 0x{moved + rg.GLOBAL['ID'].offset:08x}"):
            model.open_backend("pynq", overlay=StandInOverlay(device, core_base=moved))
        with pytest.raises(address_map.AddressMapError, match="no IP named axi_dma .*has: dynq_core"):
            model.open_backend("pynq", overlay=StandInOverlay(device, with_dma=False))
    finally:
        model.close()
