"""A virtual board: a board-free dynq overlay (`SimOverlayDevice`, or `RtlOverlayDevice` with the Verilator
core) behind the gRPC services of PYNQ.remote, so that pynq's unmodified remote client, in another process
or on another host, drives it as it drives a board: `pynq.MMIO`, `pynq.allocate` and `pynq.lib.dma.DMA`.

The services are pynq's own (`pynq/remote/*_pb2_grpc.py`); what each call does is what PYNQ.remote does on a
board, mapped onto the simulated board:
- `Mmio`: a window on an IP's registers, word reads (1, 2 or 4 bytes, as `pynq.MMIO` reads them) and writes.
- `RemoteBuffer`: buffers in the simulated DDR. The client's bytes land in the board-side host view; `flush`
  and `invalidate` copy between that view and DDR, as the board's CPU cache does, so the board is no more
  forgiving about a missing flush than a Zynq.
- `RemoteDevice`: the few files the client reads (`/proc/version` for the processor, the board's name) and
  the files it writes, kept in memory. A bitstream written by `pynq.Overlay` is stored, not loaded: the dynq
  overlay is always there.
- `Gpio`: the dynq overlay wires no PS GPIO; the client finds no controller, and asking for a pin fails.

One lock serialises every call, so several clients share one board as they would share a real one.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any, TypeVar

import grpc
import numpy as np
from pynq.remote import (
    buffer_pb2,
    buffer_pb2_grpc,
    gpio_pb2,
    gpio_pb2_grpc,
    mmio_pb2,
    mmio_pb2_grpc,
    remote_device_pb2,
    remote_device_pb2_grpc,
)

from dynq.errors import DynqError, UsageError
from dynq.runtime.remote import address
from dynq.runtime.sim_pynq import SimOverlayDevice

CHUNK = 2 << 20
"""Bytes per streamed message, as pynq's client sends them (under gRPC's 4 MiB message limit)."""
GRACE = 2.0
"""Seconds a stopping server lets calls in flight finish."""

Handler = TypeVar("Handler", bound=Callable[..., Any])


def _locked(method: Handler) -> Handler:
    """One call under the board's lock; a DynqError (an access where the overlay has no IP, an unknown buffer)
    becomes the call's FAILED_PRECONDITION status with the error's message, which the client raises."""

    @functools.wraps(method)
    def call(self: _Service, request: Any, context: grpc.ServicerContext) -> Any:
        with self.board.lock:
            try:
                return method(self, request, context)
            except DynqError as exc:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))

    return call  # type: ignore[return-value]


def _chunks(data: bytes, message: Callable[..., Any]) -> Iterator[Any]:
    """`data` as a stream of `message(data=...)`, CHUNK bytes each (read under the lock, sent without it)."""
    for at in range(0, len(data), CHUNK):
        yield message(data=data[at:at + CHUNK])


class VirtualBoard:
    """What the services share: the simulated board, its lock, the client's MMIO windows and buffers, and the
    board's files."""

    def __init__(self, device: SimOverlayDevice):
        self.device = device
        self.lock = threading.Lock()
        self.windows: dict[str, tuple[int, int]] = {}
        """The client's MMIO windows: id -> (base address, length)."""
        self.buffers: dict[str, Any] = {}
        self._ids = itertools.count(1)
        board = device.board.name
        self.files = {
            "/proc/version": f"dynq virtual board {board}, no kernel; processor {device.address_map.cpu}\n".encode(),
            "/proc/device-tree/chosen/pynq_board": f"{board}\0".encode(),
            "/sys/class/fpga_manager/fpga0/state": b"operating\n",
            "/sys/class/fpga_manager/fpga0/flags": b"0\n",
        }

    def new_id(self) -> str:
        return str(next(self._ids))

    def buffer(self, buffer_id: str) -> Any:
        try:
            return self.buffers[buffer_id]
        except KeyError:
            raise DynqError(f"no buffer {buffer_id!r} on the virtual board (freed already, or allocated before "
                            "the board restarted); allocate it again") from None

    def window(self, mmio_id: str, offset: int, length: int) -> int:
        """The bus address of [offset, offset + length) in the client's window `mmio_id`, which must hold it
        (a board's server maps only the window's bytes)."""
        if mmio_id not in self.windows:
            raise DynqError(f"no MMIO window {mmio_id!r} on the virtual board; create the pynq.MMIO again")
        base, size = self.windows[mmio_id]
        if offset + length > size:
            raise DynqError(f"an access of {length} bytes at offset 0x{offset:x} is beyond the {size}-byte MMIO "
                            f"window at 0x{base:08x}; map a larger window")
        return base + offset


class _Service:
    def __init__(self, board: VirtualBoard):
        self.board = board


class DeviceService(_Service, remote_device_pb2_grpc.RemoteDeviceServicer):
    """The board's files, and the bitstream attributes the client sets before writing a bitstream."""

    @_locked
    def existsfile(self, request: Any, context: grpc.ServicerContext) -> Any:
        return remote_device_pb2.ExistsFileResponse(exists=request.file_path in self.board.files)

    def readfile(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        return _chunks(self._read(request, context), remote_device_pb2.ReadFileResponse)

    @_locked
    def _read(self, request: Any, context: grpc.ServicerContext) -> bytes:
        try:
            return self.board.files[request.file_path]
        except KeyError:
            raise DynqError(f"no file {request.file_path} on the virtual board") from None

    def writefile(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        """A file's content in chunks (the client sends 2 MiB at a time); it replaces what the file held."""
        written: dict[str, bytearray] = {}
        for chunk in request_iterator:
            written.setdefault(chunk.file_path, bytearray()).extend(chunk.data)
        with self.board.lock:
            self.board.files.update({path: bytes(data) for path, data in written.items()})
        return remote_device_pb2.WriteFileResponse()

    def set_bitstream_attrs(self, request: Any, context: grpc.ServicerContext) -> Any:
        return remote_device_pb2.SetBitstreamAttrsResponse(status=True)


class MmioService(_Service, mmio_pb2_grpc.MmioServicer):
    """Register windows of the overlay's IP (the core, the AXI DMA), read and written word by word."""

    @_locked
    def get_mmio(self, request: Any, context: grpc.ServicerContext) -> Any:
        last = request.base_addr + max(request.length, 1) - 1
        ends = {self.board.device.target(at)[0] for at in (request.base_addr, last)}
        if len(ends) != 1:
            raise DynqError(f"MMIO window 0x{request.base_addr:08x} (+0x{request.length:x}) spans more than one "
                            "IP of the overlay; map each IP's window on its own")
        mmio_id = self.board.new_id()
        self.board.windows[mmio_id] = (request.base_addr, request.length)
        return mmio_pb2.GetMmioResponse(status=True, mmio_id=mmio_id)

    @_locked
    def read(self, request: Any, context: grpc.ServicerContext) -> Any:
        """The word at the offset, cut to 1, 2 or 4 bytes as `pynq.MMIO` cuts it. The protocol's answer is a
        uint32, so an 8-byte read cannot travel; it is refused rather than truncated."""
        if request.length == 8:
            raise DynqError("an 8-byte MMIO read does not fit PYNQ.remote's 32-bit answer; read the two words "
                            "with two 4-byte reads")
        word = self.board.device.read_registers(self.board.window(request.mmio_id, request.offset, 4), 4)
        return mmio_pb2.ReadResponse(status=True, data=int.from_bytes(word, "little") & ((1 << 8 * request.length) - 1))

    @_locked
    def write(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.board.device.write_registers(self.board.window(request.mmio_id, request.offset, len(request.data)),
                                          request.data)
        return mmio_pb2.WriteResponse(status=True)


class BufferService(_Service, buffer_pb2_grpc.RemoteBufferServicer):
    """Buffers in the simulated DDR, with the board-side host view the client's bytes go to."""

    @_locked
    def allocate(self, request: Any, context: grpc.ServicerContext) -> Any:
        buffer_id = self.board.new_id()
        self.board.buffers[buffer_id] = self.board.device.allocate((request.size,), np.uint8)
        return buffer_pb2.AllocateResponse(buffer_id=buffer_id)

    def write(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        return self._write(list(request_iterator), context)

    @_locked
    def _write(self, requests: list[Any], context: grpc.ServicerContext) -> Any:
        """Chunks in order from byte 0, or each at its `start` when it gives one (as the protocol allows)."""
        at = 0
        for request in requests:
            buffer = self.board.buffer(request.buffer_id)
            at = request.start if request.end else at
            if at + len(request.data) > buffer.nbytes:
                raise DynqError(f"a write of {len(request.data)} bytes at {at} overruns buffer "
                                f"{request.buffer_id!r} of {buffer.nbytes} bytes")
            buffer[at:at + len(request.data)] = np.frombuffer(request.data, np.uint8)
            at += len(request.data)
        return buffer_pb2.BufferWriteResponse()

    def read(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        return _chunks(self._read(request, context), buffer_pb2.BufferReadResponse)

    @_locked
    def _read(self, request: Any, context: grpc.ServicerContext) -> bytes:
        buffer = self.board.buffer(request.buffer_id)
        return buffer[request.start:request.end or buffer.nbytes].tobytes()

    @_locked
    def freebuffer(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.board.buffer(request.buffer_id)
        del self.board.buffers[request.buffer_id]  # its DDR is freed with the last reference
        return buffer_pb2.FreeBufferResponse()

    @_locked
    def flush(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.board.buffer(request.buffer_id).flush()
        return buffer_pb2.FlushResponse()

    @_locked
    def invalidate(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.board.buffer(request.buffer_id).invalidate()
        return buffer_pb2.InvalidateResponse()

    @_locked
    def physical_address(self, request: Any, context: grpc.ServicerContext) -> Any:
        return buffer_pb2.AddressResponse(address=self.board.buffer(request.buffer_id).physical_address)

    @_locked
    def virtual_address(self, request: Any, context: grpc.ServicerContext) -> Any:
        return buffer_pb2.AddressResponse(address=self.board.buffer(request.buffer_id).virtual_address)


class GpioService(gpio_pb2_grpc.GpioServicer):
    """No PS GPIO: the client's controller lookups find none, and a pin request says why."""

    def get_gpio_base_path(self, request: Any, context: grpc.ServicerContext) -> Any:
        return gpio_pb2.GetGpioBasePathResponse(base_path="")

    def get_gpio_npins(self, request: Any, context: grpc.ServicerContext) -> Any:
        return gpio_pb2.GetGpioNPinsResponse(npins=0)

    def get_gpio(self, request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"GPIO {request.index}: the dynq overlay wires no PS "
                      "GPIO, so the virtual board has none")


def check_host(host: str, allow_remote: bool) -> None:
    """Refuses to listen where other machines reach the board unless `allow_remote`: the services have no
    authentication, and whoever reaches the port can write the board's memory."""
    try:
        resolved = {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: cannot resolve it ({exc.strerror}); give an address such as "
                         "127.0.0.1") from None
    outside = sorted(a for a in resolved if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if outside and not allow_remote:
        raise UsageError(f"--host {host} would listen on {', '.join(outside)}, where other machines reach it, "
                         "and the virtual board has no authentication (anyone reaching the port can write its "
                         "memory); listen on 127.0.0.1 (the default), or pass --allow-remote if you mean it")


def _check_port(host: str, port: int) -> None:
    """A free port, found out before gRPC tries (it reports a taken one only in a log line)."""
    family = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UsageError(f"cannot listen on {address(host, port)}: {exc.strerror} (another "
                             "`dynq vboard serve`?); pick another --port") from None


class Server:
    """The gRPC server of one virtual board, listening once constructed."""

    def __init__(self, device: SimOverlayDevice, host: str, port: int, allow_remote: bool = False):
        check_host(host, allow_remote)
        if port:
            _check_port(host, port)
        self.board = VirtualBoard(device)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                                   options=[("grpc.so_reuseport", 0)])
        remote_device_pb2_grpc.add_RemoteDeviceServicer_to_server(DeviceService(self.board), self._server)
        mmio_pb2_grpc.add_MmioServicer_to_server(MmioService(self.board), self._server)
        buffer_pb2_grpc.add_RemoteBufferServicer_to_server(BufferService(self.board), self._server)
        gpio_pb2_grpc.add_GpioServicer_to_server(GpioService(), self._server)
        try:
            self.port = self._server.add_insecure_port(address(host, port))
        except RuntimeError:
            raise UsageError(f"cannot listen on {address(host, port)}; pick another --port") from None
        self.address = address(host, self.port)
        self._server.start()

    def stop(self) -> None:
        """Stops listening, lets calls in flight finish (GRACE seconds at most), then ends the board's core."""
        self._server.stop(GRACE).wait()
        self.board.device.close()
