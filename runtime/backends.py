"""The device backends of `Model.run`: where a build's device segments run besides the emulator.

- `rtl`: the Verilator simulation of the generated core, driven through the testbench's register and stream
  commands.
- `sim-pynq`: the pynq driver (`pynq.MMIO`, `pynq.allocate`, `pynq.lib.dma.DMA`) on a simulated board: the
  overlay's register file, AXI DMA and DDR in-process, the core executed by the emulator.
- `sim-pynq-rtl`: the same driver and simulated board, with the generated core in Verilator behind it.
- `pynq`: the same driver on a board, over a loaded `pynq.Overlay` of the dynq overlay.
- `remote:HOST[:PORT]`: the same driver on pynq's PYNQ.remote client, reaching a board's PYNQ.remote server
  or the virtual board of `dynq vboard serve` (port 7967 unless given).

Each is a `CoreDriver`: the same register protocol, a batch of images per start.
"""

from __future__ import annotations

from typing import Any

from dynq.errors import UsageError
from dynq.runtime.artifacts import Build
from dynq.runtime.core_driver import CoreDriver

REMOTE = "remote:"
BACKENDS = ("emulator", "rtl", "sim-pynq", "sim-pynq-rtl", "pynq", f"{REMOTE}HOST[:PORT]")
SIMULATED_BOARDS = ("sim-pynq", "sim-pynq-rtl")
RTL_TIMEOUT = 120.0
"""Default seconds per wait with the RTL core behind the pynq driver: the simulation runs ~0.25 M cycles/s."""


def open_device(build: Build, backend: str, device: Any = None, timeout: float | None = None,
                overlay: Any = None) -> CoreDriver:
    """Starts `backend` for `build`. Options of the pynq backends: `timeout`, the seconds any one wait (and,
    over the network, any one call) may take; for the simulated boards, `device`, a board to drive instead of
    a fresh one of the build's board (e.g. one with `Faults`); for `pynq`, `overlay`, the loaded
    `pynq.Overlay`."""
    given = {name for name, value in (("device", device), ("timeout", timeout), ("overlay", overlay))
             if value is not None}
    kind = REMOTE if backend.startswith(REMOTE) else backend
    accepted = {"rtl": set(), "sim-pynq": {"device", "timeout"}, "sim-pynq-rtl": {"device", "timeout"},
                "pynq": {"overlay", "timeout"}, REMOTE: {"timeout"}}.get(kind)
    if accepted is None:
        raise UsageError(f"unknown device backend {backend!r}; use one of {', '.join(BACKENDS[1:])}")
    if given - accepted:
        raise UsageError(f"backend {backend!r} takes {', '.join(sorted(accepted)) or 'no options'}, not "
                         f"{', '.join(sorted(given - accepted))}")
    if backend == "rtl":
        from dynq.runtime.rtl import RtlDevice

        return RtlDevice(build)
    from dynq.runtime.driver import DEFAULT_TIMEOUT, PynqDriver

    if kind == REMOTE:
        from dynq.runtime.remote import RemoteDriver

        return RemoteDriver(build, backend.removeprefix(REMOTE), timeout or DEFAULT_TIMEOUT)
    if backend == "pynq":
        if overlay is None:
            raise UsageError("backend 'pynq' drives a loaded overlay: on the board, call "
                             "model.open_backend('pynq', overlay=pynq.Overlay('dynq.bit')) first")
        return PynqDriver.from_overlay(build, overlay, timeout or DEFAULT_TIMEOUT)
    from dynq.runtime.sim_pynq import RtlOverlayDevice, SimOverlayDevice

    owned = device is None
    if owned:
        device = SimOverlayDevice(build.board) if backend == "sim-pynq" else RtlOverlayDevice(build.board)
    if timeout is None:
        timeout = DEFAULT_TIMEOUT if backend == "sim-pynq" else RTL_TIMEOUT
    try:
        return PynqDriver(build, device, device.address_map, timeout, owns_device=owned)
    except BaseException:
        if owned:
            device.close()
        raise
