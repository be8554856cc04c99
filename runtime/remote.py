"""The board driver over the network: `PynqDriver` on pynq's own PYNQ.remote client (`RemoteDevice`), which
reaches a board's PYNQ.remote gRPC server or the virtual board of `dynq vboard serve`.

pynq's client sends its calls without a deadline, so a board that stops answering mid-call would hang the
host forever. `Link` is a gRPC client interceptor on the client's own channel that gives every call the
driver's timeout and turns a failed call into a `RemoteBoardError` naming the board, the call and the fix.
After a lost connection every further call fails at once (the board's state is unknown; the backend has to
be opened again). The client's classes (`RemoteMMIO`, `RemoteBuffer`) and pynq's DMA driver run unchanged.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from dynq.contract import address_map as amap
from dynq.errors import DynqError, UsageError
from dynq.runtime.artifacts import Build
from dynq.runtime.driver import DEFAULT_TIMEOUT, PynqDriver

PORT = 7967
"""PYNQ.remote's port (the only one pynq's `PYNQ_REMOTE_DEVICES` probing uses)."""
LOST = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
"""Outcomes after which the board's state is unknown: gone, or slower than the timeout."""


class RemoteBoardError(DynqError, ConnectionError):
    """A call to a board over PYNQ.remote failed: the board is unreachable, did not answer in time, or refused
    the call; the message names the board, the call and what to check."""


def parse_target(target: str) -> tuple[str, int]:
    """`HOST`, `HOST:PORT` or `[IPv6]:PORT` (what follows `remote:` in a backend name) as (host, port)."""
    host, port = target, str(PORT)
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        if rest:
            port = rest.removeprefix(":")
    elif target.count(":") == 1:
        host, port = target.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"backend 'remote:{target}': give the board as remote:HOST or remote:HOST:PORT "
                         f"(e.g. remote:127.0.0.1:{PORT}, remote:[::1]:{PORT})")
    return host, int(port)


def address(host: str, port: int) -> str:
    """`host:port` as gRPC takes it (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_Details = collections.namedtuple("_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                                               "compression"))


class _CallDetails(_Details, grpc.ClientCallDetails):
    """A call's details with the link's deadline in place of the client's none."""


class Link(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor, grpc.StreamUnaryClientInterceptor):
    """Deadlines and readable errors for every call of pynq's remote client to one board."""

    def __init__(self, where: str, timeout: float):
        self.where = where
        self.timeout = timeout
        self.lost: RemoteBoardError | None = None
        """The failure that broke the connection; every later call raises it again without waiting."""

    def intercept_unary_unary(self, continuation: Callable, details: grpc.ClientCallDetails, request: Any) -> Any:
        return self._checked(details, continuation(self._bounded(details), request))

    def intercept_stream_unary(self, continuation: Callable, details: grpc.ClientCallDetails,
                               request_iterator: Iterator[Any]) -> Any:
        return self._checked(details, continuation(self._bounded(details), request_iterator))

    def intercept_unary_stream(self, continuation: Callable, details: grpc.ClientCallDetails, request: Any) -> Any:
        return self._streamed(details, continuation(self._bounded(details), request))

    def _bounded(self, details: grpc.ClientCallDetails) -> _CallDetails:
        if self.lost is not None:
            raise self.lost
        return _CallDetails(details.method, self.timeout, details.metadata, details.credentials,
                            details.wait_for_ready, details.compression)

    def _checked(self, details: grpc.ClientCallDetails, outcome: Any) -> Any:
        error = outcome.exception()
        if error is not None:
            raise self._failure(details.method, error)
        return outcome

    def _streamed(self, details: grpc.ClientCallDetails, responses: Iterator[Any]) -> Iterator[Any]:
        try:
            yield from responses
        except grpc.RpcError as error:
            raise self._failure(details.method, error) from None

    def _failure(self, method: str, error: grpc.RpcError) -> RemoteBoardError:
        code, details = error.code(), error.details()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            text = (f"the board at {self.where} did not answer {method} within {self.timeout:g} s: it hangs, or "
                    "it is slower than the timeout allows (the RTL-backed virtual board wants --timeout 120).")
        elif code in LOST:
            text = (f"the board at {self.where} is unreachable during {method} ({code.name}: {details}). Is "
                    "`dynq vboard serve` (or the board's PYNQ.remote server) running there?")
        else:
            return RemoteBoardError(f"the board at {self.where} refused {method}: {details}")
        self.lost = RemoteBoardError(f"{text} The connection is given up: open the backend again once the "
                                     "board answers.")
        return self.lost


def connect(host: str, port: int, link: Link) -> Any:
    """pynq's `RemoteDevice` for the board at host:port, its calls bounded by `link`. A probe call with the
    deadline comes first, so neither an absent board nor a port that is no PYNQ.remote server can stall the
    client's constructor (whose own calls have no deadline)."""
    from pynq.pl_server.remote_device import RemoteDevice
    from pynq.remote import remote_device_pb2, remote_device_pb2_grpc

    probe = grpc.insecure_channel(address(host, port))
    try:
        stub = remote_device_pb2_grpc.RemoteDeviceStub(grpc.intercept_channel(probe, link))
        stub.existsfile(remote_device_pb2.ExistsFileRequest(file_path="/proc/version"))
    finally:
        probe.close()
    try:
        device = RemoteDevice(0, host, port)
    except RuntimeError as exc:
        raise RemoteBoardError(f"the board at {link.where} answered a probe, then refused pynq's client ({exc}); "
                               "is it a PYNQ.remote server?") from None
    # The one place pynq's client is configured from outside: its stubs, rebuilt on its own channel with the
    # link in between (tests/test_vboard.py holds a frozen board to the deadline).
    bounded = grpc.intercept_channel(device.client.channel, link)
    device._stub = {name: type(stub)(bounded) for name, stub in device._stub.items()}
    return device


class RemoteDriver(PynqDriver):
    """A build loaded onto the dynq core of a board reached over PYNQ.remote. The core's and the DMA's
    addresses come from the contract's address map for the board's processor (the numbers the block-design
    generator assigns); every call and every wait is bounded by `timeout` seconds."""

    def __init__(self, build: Build, target: str, timeout: float = DEFAULT_TIMEOUT):
        host, port = parse_target(target)
        self.link = Link(address(host, port), timeout)
        device = connect(host, port, self.link)
        try:
            super().__init__(build, device, amap.for_cpu(device.arch), timeout)
        except BaseException:
            device.client.channel.close()
            raise

    def close(self) -> None:
        """Returns the DMA buffers to a board that still answers, then closes the connection."""
        try:
            if self.link.lost is None:
                super().close()
        finally:
            self.device.client.channel.close()
