"""Running the generated build script in Vivado: batch mode, a bounded wall-clock time, progress from the log
(the build script's own `dynq: step` marks and Vivado's `Starting synth_design` / `Command: place_design`
lines), and the log kept as `vivado.log`. A failure ends in a VivadoError carrying the end of the log."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from dynq.errors import DynqError
from dynq.overlay.tcl import BUILD_SCRIPT

LOG = "vivado.log"
TAIL_LINES = 20
DEFAULT_TIMEOUT = 6 * 3600.0
"""Seconds: a zcu104 build takes about an hour on a fast machine; six leave room for a slow one."""

_STEP = re.compile(r"^(?:dynq: step (\S+)|(?:Starting|Command:) (synth_design|opt_design|place_design|"
                   r"phys_opt_design|route_design|write_bitstream)\b)")


class VivadoError(DynqError, RuntimeError):
    """Vivado failed, was killed, or ran out of time; the message holds the end of its log."""


def command(vivado: str = "vivado", *options: str) -> list[str]:
    """The batch run of the build script, as the user types it in the build directory (no options) or as
    `run` starts it."""
    return [vivado, "-mode", "batch", *options, "-source", BUILD_SCRIPT]


def step_of(line: str) -> str | None:
    """The build step a log line starts, if any."""
    match = _STEP.match(line.strip())
    return None if match is None else match.group(1) or match.group(2)


def run(vivado: str, build_dir: Path, timeout: float = DEFAULT_TIMEOUT,
        progress: Callable[[str], None] | None = None) -> None:
    """Runs `vivado` on the build script in `build_dir`; stdout and stderr go to `build_dir/vivado.log` (Vivado's
    own log and journal are off: this is the log). Calls `progress(step)` at each new step. Raises VivadoError
    on a non-zero exit or after `timeout` seconds (the whole process group is killed)."""
    log_path = build_dir / LOG
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    args = command(vivado, "-nojournal", "-nolog")
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, cwd=build_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", start_new_session=True)
        timed_out = threading.Event()
        timer = threading.Timer(timeout, lambda: (timed_out.set(), _kill(proc)))
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                tail.append(line.rstrip("\n"))
                step = step_of(line)
                if step is not None and progress is not None:
                    progress(step)
            code = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                _kill(proc)
    elapsed = time.monotonic() - started
    if code == 0:
        return
    last = "\n".join(f"    {t}" for t in tail) or "    (no output)"
    why = (f"did not finish within {timeout:g} s and was stopped (give --timeout SECONDS)"
           if timed_out.is_set() else f"failed (exit code {code}) after {elapsed:.0f} s")
    raise VivadoError(f"Vivado {why}; the last lines of {log_path.name}:\n{last}")


def _kill(proc: subprocess.Popen) -> None:
    """Vivado starts helper processes (runs, loaders): stop the whole group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
