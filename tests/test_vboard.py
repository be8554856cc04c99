"""The virtual board: `dynq vboard serve` in a process of its own, driven over PYNQ.remote's gRPC services by
pynq's unmodified remote client (`dynq run --backend remote:HOST:PORT`, and a plain pynq script). Every
result is compared with the emulator's; a board that dies or freezes mid-run ends in a connection error
within the timeout; the server listens on loopback unless told otherwise and stops cleanly on a signal."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import dynq
from dynq.cli import main
from dynq.contract import ErrorCode
from dynq.contract import registers as rg
from dynq.contract.registers import DeviceError
from dynq.runtime.remote import Link, RemoteBoardError, connect
from dynq.runtime.vboard import check_host
from tests.conftest import BOARD, MODELS
from tests.test_pynq_runtime import assert_same_rtl_run, assert_same_run, cli_run_verified, digits

START_WITHIN = {"emulator": 60.0, "rtl": 300.0}
"""Seconds a server may take to listen (the RTL core's simulator is built on first use)."""


class Served:
    """A `dynq vboard serve` process and the address it listens on (its first line of output)."""

    def __init__(self, core: str = "emulator", port: int = 0):
        self.proc = subprocess.Popen([sys.executable, "-m", "dynq.cli", "vboard", "serve", "--port", str(port),
                                      "--backend", core], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        try:
            first = self.lines.get(timeout=START_WITHIN[core])
        except queue.Empty:
            self.proc.kill()
            pytest.fail(f"the virtual board did not listen within {START_WITHIN[core]} s: {self.proc.stderr.read()}")
        match = re.search(r"listening on (\S+):(\d+) ", first)
        assert match, (first, self.proc.stderr.read() if self.proc.poll() is not None else "")
        self.host, self.port = match.group(1), int(match.group(2))
        self.backend = f"remote:{self.host}:{self.port}"

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)

    def stop(self, sig: int = signal.SIGINT, within: float = 10.0) -> str:
        """Signals the server and returns what it printed after listening; it must exit 0 within `within` s."""
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(within)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"the virtual board ignored signal {sig} for {within} s")
        stderr = self.proc.stderr.read()
        assert code == 0, stderr
        time.sleep(0.1)  # the pump thread's last line
        return "".join(self.lines.queue)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def vboard() -> Iterator[Served]:
    """One emulator-backed virtual board for the module; at the end Ctrl-C must stop it cleanly."""
    served = Served()
    yield served
    assert "dynq virtual board: stopped" in served.stop(signal.SIGINT)


@pytest.mark.parametrize("mode", ["int8", "drq", "sdp"])
@pytest.mark.parametrize("name", MODELS)
def test_zoo_model_over_the_virtual_board(builds: dict[str, Path], vboard: Served, name: str, mode: str) -> None:
    """LeNet-5 and the small ResNet through pynq's remote client (MMIO, allocate, DMA over gRPC) on the
    virtual board: every tensor, output and counter equals the emulator's."""
    model = dynq.load(builds[name], mode=mode)
    x = digits(8, 3)
    try:
        got = model.run(x, backend=vboard.backend, trace=True)
    finally:
        model.close()
    assert got.report.backend == vboard.backend
    assert_same_run(got, model.run(x, trace=True))


def test_cli_run_remote_verify_report(builds: dict[str, Path], vboard: Served, tmp_path: Path) -> None:
    """`dynq run --backend remote:HOST:PORT --verify --timeout 5`: the emulator's outputs, its report plus
    the backend and the verification."""
    cli_run_verified(builds["resnet_small"], digits(20, 4), vboard.backend, tmp_path, "--timeout", "5")


def test_refused_call_names_the_fault_and_keeps_the_link(vboard: Served) -> None:
    """Calls the board refuses (an MMIO window where the overlay has no IP, an access beyond a window, an
    8-byte read that the protocol's 32-bit answer cannot carry) are errors with the board's reason; the
    connection stays usable."""
    import pynq

    link = Link(f"{vboard.host}:{vboard.port}", 5.0)
    device = connect(vboard.host, vboard.port, link)
    try:
        assert (device.name, device.arch) == (BOARD, "armv7l")
        with pytest.raises(RemoteBoardError, match=r"refused /mmio.Mmio/get_mmio: no IP of the pynq-z2 overlay "
                                                   r"at 0x12340000: the core is at 0x43c00000"):
            pynq.MMIO(0x1234_0000, 4, device=device)
        core = pynq.MMIO(0x43C0_0000, 0x20, device=device)
        with pytest.raises(RemoteBoardError, match="refused /mmio.Mmio/read: an access of 4 bytes at offset 0x20 "
                                                   "is beyond the 32-byte MMIO window at 0x43c00000"):
            core.read(0x20)
        with pytest.raises(RemoteBoardError, match="an 8-byte MMIO read does not fit"):
            core.read(0, 8)
        assert core.read(rg.GLOBAL["ID"].offset) == rg.ID_MAGIC and link.lost is None
    finally:
        device.client.channel.close()


def test_build_for_another_architecture_is_refused(builds: dict[str, Path], vboard: Served) -> None:
    """A zcu104 build on the pynq-z2 virtual board: the FINGERPRINT register, read over the network, refuses
    it with the boards named."""
    model = dynq.load(builds["lenet5-zcu104"])
    with pytest.raises(DeviceError) as err:
        model.open_backend(vboard.backend)
    assert err.value.code == ErrorCode.FINGERPRINT and "(zcu104); load the overlay of that board" in str(err.value)


CLIENT = textwrap.dedent("""
    import json
    import numpy as np
    import pynq
    from pynq.lib.dma import DMA
    from dynq.contract import Memory, address_map
    from dynq.contract import registers as rg

    amap = address_map.MAPS["ps7"]
    device = pynq.Device.active_device
    core = pynq.MMIO(amap.core.base, amap.core.size)
    dma = DMA({"phys_addr": amap.dma.base, "addr_range": amap.dma.size, "interrupts": {}, "device": device,
               "parameters": dict(address_map.DMA_CONFIG)})
    ctrl = rg.GLOBAL["CTRL"]

    def transfer(kind, channel, buffer):
        for name, value in (("XFER_MEM", Memory.ARENA), ("XFER_ADDR", 512), ("XFER_BYTES", buffer.nbytes)):
            core.write(rg.GLOBAL[name].offset, int(value))
        core.write(ctrl.offset, ctrl.mask(kind))
        channel.transfer(buffer)
        channel.wait()

    sent = pynq.allocate((256,), np.uint8)
    sent[:] = np.arange(256, dtype=np.uint8)[::-1]
    back = pynq.allocate((256,), np.uint8)
    transfer("load", dma.sendchannel, sent)
    transfer("store", dma.recvchannel, back)
    ident, fingerprint = (core.read(rg.GLOBAL[name].offset) for name in ("ID", "FINGERPRINT"))
    print(json.dumps({"device": type(device).__name__, "board": device.name, "arch": device.arch, "id": ident,
                      "fingerprint": fingerprint, "round_trip": bool(np.array_equal(back, sent)),
                      "received": dma.recvchannel.transferred}))
""")


def test_unmodified_client_through_pynq_remote_devices() -> None:
    """A plain pynq script with PYNQ_REMOTE_DEVICES=127.0.0.1 (pynq probes port 7967 itself): the default
    device is pynq's RemoteDevice, pynq.MMIO reads the core's ID and fingerprint, and pynq.allocate buffers
    go through the unmodified DMA driver into the core's arena and back."""
    from dynq import boards

    served = Served(port=7967)
    try:
        proc = subprocess.run([sys.executable, "-c", CLIENT], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYNQ_REMOTE_DEVICES": "127.0.0.1"})
    finally:
        served.stop()
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"device": "RemoteDevice", "board": BOARD, "arch": "armv7l", "id": rg.ID_MAGIC,
                    "fingerprint": boards.load(BOARD).arch.fingerprint, "round_trip": True, "received": 256}


TIMEOUT = 3.0


def test_killed_board_mid_run_is_a_connection_error(builds: dict[str, Path]) -> None:
    """The server killed while a batch runs: the run ends in a RemoteBoardError naming the board within the
    timeout (no hang); closing the model afterwards returns at once, and the next run fails at once."""
    served = Served()
    model = dynq.load(builds["lenet5"])
    x = np.concatenate([digits(0, 64)] * 4)
    try:
        model.open_backend(served.backend, timeout=TIMEOUT)
        killed: list[float] = []

        def kill() -> None:
            killed.append(time.monotonic())
            served.proc.kill()

        timer = threading.Timer(1.0, kill)
        start = time.monotonic()
        timer.start()
        with pytest.raises(RemoteBoardError) as err:
            while time.monotonic() < start + 10 * TIMEOUT:  # runs back to back: the kill lands in one
                model.run(x, backend=served.backend)
        raised = time.monotonic()
        timer.cancel()
        assert killed, "the runs ended before the board was killed"
        assert raised - killed[0] < TIMEOUT
        start = time.monotonic()
        with pytest.raises(RemoteBoardError) as again:
            model.run(x[:1], backend=served.backend)
        assert again.value is err.value and time.monotonic() - start < 0.5
    finally:
        start = time.monotonic()
        model.close()
        closed = time.monotonic() - start
        served.kill()
    assert closed < 0.5
    message = str(err.value)
    assert f"the board at {served.host}:{served.port} is unreachable during /" in message
    assert "Is `dynq vboard serve`" in message and "open the backend again" in message


def test_frozen_board_is_held_to_the_deadline(builds: dict[str, Path]) -> None:
    """A board that stops answering without closing the connection (the server process stopped): pynq's
    client has no deadlines of its own, the link's deadline ends the call after the timeout. Resumed, the
    server stops cleanly on SIGTERM."""
    served = Served()
    model = dynq.load(builds["lenet5"])
    watchdog = threading.Timer(TIMEOUT + 5, served.proc.kill)  # a call without a deadline fails, not hangs
    try:
        model.open_backend(served.backend, timeout=TIMEOUT)
        served.proc.send_signal(signal.SIGSTOP)
        watchdog.start()
        start = time.monotonic()
        with pytest.raises(RemoteBoardError) as err:
            model.run(digits(0, 2), backend=served.backend)
        elapsed = time.monotonic() - start
        watchdog.cancel()
        model.close()
        served.proc.send_signal(signal.SIGCONT)
        assert "dynq virtual board: stopped" in served.stop(signal.SIGTERM)
    finally:
        watchdog.cancel()
        served.kill()
    assert TIMEOUT <= elapsed < TIMEOUT + 1.5
    assert "did not answer /mmio.Mmio/" in str(err.value) and f"within {TIMEOUT:g} s" in str(err.value)


def test_no_board_at_the_address(builds: dict[str, Path], tmp_path: Path) -> None:
    """Nothing listening: one clear line at once, naming the address and what to start."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    np.save(tmp_path / "x.npy", digits(0, 1))
    start = time.monotonic()
    result = CliRunner().invoke(main, ["run", str(builds["lenet5"]), "-i", str(tmp_path / "x.npy"), "--backend",
                                       f"remote:127.0.0.1:{port}", "--timeout", str(TIMEOUT), "-o",
                                       str(tmp_path / "y.npy")])
    assert time.monotonic() - start < TIMEOUT
    assert result.exit_code == 1 and not (tmp_path / "y.npy").exists()
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dynq: error: the board at 127.0.0.1:{port} is unreachable")
    assert "Is `dynq vboard serve`" in lines[0]


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_listening_beyond_loopback_needs_the_flag(host: str) -> None:
    """Any address other machines reach is refused without --allow-remote, before a board is built."""
    result = CliRunner().invoke(main, ["vboard", "serve", "--host", host])
    assert result.exit_code == 1
    assert f"--host {host} would listen on" in result.output and "pass --allow-remote" in result.output
    check_host(host, allow_remote=True)
    for loopback in ("127.0.0.1", "localhost", "::1"):
        check_host(loopback, allow_remote=False)


def test_taken_port_is_refused(vboard: Served) -> None:
    """A second board on a port in use: one clear line, no second listener sharing the port."""
    result = CliRunner().invoke(main, ["vboard", "serve", "--port", str(vboard.port)])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{vboard.port}: Address already in use" in result.output


def test_help_explains_the_virtual_board() -> None:
    result = CliRunner().invoke(main, ["vboard", "serve", "--help"])
    assert result.exit_code == 0
    for needle in ("PYNQ_REMOTE_DEVICES=127.0.0.1", "--backend remote:127.0.0.1:7967", "--allow-remote",
                   "no authentication", "Ctrl-C or SIGTERM"):
        assert needle in result.output


def test_rtl_backed_virtual_board(builds: dict[str, Path]) -> None:
    """The virtual board with the generated core in Verilator behind its registers: LeNet-5 and the small
    ResNet over the remote client, outputs and the counters the RTL implements equal to the emulator's."""
    served = Served(core="rtl")
    try:
        for name, count in (("lenet5", 2), ("resnet_small", 1)):
            model = dynq.load(builds[name])
            x = digits(40, count)
            try:
                model.open_backend(served.backend, timeout=120)
                got = model.run(x, backend=served.backend, verify=True)
            finally:
                model.close()
            assert got.report.extra["verified"] is True
            assert_same_rtl_run(got, model.run(x))
        assert "dynq virtual board: stopped" in served.stop(signal.SIGINT, within=30)
    finally:
        served.kill()
