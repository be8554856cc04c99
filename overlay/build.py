"""`dynq overlay build`: the build directory (Verilog, Tcl, manifest template) and, with Vivado, the package.

Everything is written into a temporary directory beside the output and renamed into place only when it is
complete: without Vivado once the sources are written; with Vivado once the build succeeded and its package
passed `check`. A failed Vivado build is moved to `<out>.failed` without any package files, for its log and
project; an earlier output directory stays as it was.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dynq import boards
from dynq.errors import DynqError, UsageError
from dynq.overlay import package, tcl, vivado


@dataclass(frozen=True)
class Result:
    out_dir: Path
    written: list[Path]
    """The build's sources, as they are in `out_dir`, build script last."""
    command: str
    """The one command that builds the package on a machine with Vivado."""
    report: package.Report | None = None
    """The checked package, when Vivado ran here."""


def build(board_name: str, out_dir: Path, vivado_exe: str | None = None, timeout: float = vivado.DEFAULT_TIMEOUT,
          progress: Callable[[str], None] | None = None) -> Result:
    """Writes the build for `board_name` into `out_dir`; with `vivado_exe`, also runs it and checks the package."""
    from dynq.hdl.generate import cached_verilog

    board = boards.load(board_name)
    out_dir = Path(out_dir)
    _check_target(out_dir)
    verilog = cached_verilog(board.name, quiet=False)
    tmp = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir(parents=True)
    try:
        names = [p.name for p in write_sources(board, tmp, verilog)]
        command = f"cd {shlex.quote(str(out_dir))} && {shlex.join(vivado.command())}"
        report = None
        if vivado_exe is not None:
            report = _run(vivado_exe, tmp, out_dir, timeout, progress)
        _replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    if report is not None:
        report.path = out_dir / package.PACKAGE_DIR
    return Result(out_dir, [out_dir / n for n in names], command, report)


def write_sources(board: boards.Board, out_dir: Path, verilog: str) -> list[Path]:
    """The core's Verilog, the Vivado scripts and the manifest template; build script last."""
    core = out_dir / tcl.VERILOG
    core.write_text(verilog)
    manifest = out_dir / package.TEMPLATE
    manifest.write_text(package.template(board, hashlib.sha256(verilog.encode()).hexdigest()))
    return [core, manifest, *tcl.write_scripts(board, out_dir)]


def _run(vivado_exe: str, tmp: Path, out_dir: Path, timeout: float,
         progress: Callable[[str], None] | None) -> package.Report:
    """Vivado, then the package check; on any failure the attempt goes to `<out>.failed`, without package."""
    failed = out_dir.with_name(f"{out_dir.name}.failed")
    try:
        vivado.run(vivado_exe, tmp, timeout, progress)
        return package.check(tmp / package.PACKAGE_DIR)
    except DynqError as exc:
        for name in (package.PACKAGE_DIR, f"{package.PACKAGE_DIR}.tmp"):
            shutil.rmtree(tmp / name, ignore_errors=True)
        _replace(tmp, failed)
        raise vivado.VivadoError(
            f"{exc}\nNo overlay package was written. The failed build is in {failed} (log: "
            f"{failed / vivado.LOG}); fix the cause and run `dynq overlay build` again, or on a machine with "
            f"Vivado: cd {shlex.quote(str(failed))} && {shlex.join(vivado.command())}") from exc


def _check_target(out_dir: Path) -> None:
    """An output directory is replaced only if it is empty or an earlier overlay build."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} is a file; give a directory for the overlay build")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / tcl.PARAMS).is_file():
        raise UsageError(f"{out_dir} exists and is not a dynq overlay build directory; give a new or empty "
                         "directory (an earlier overlay build there is replaced)")


def _replace(src: Path, dst: Path) -> None:
    """Renames `src` onto `dst`, replacing a directory there; readers see the old or the new one."""
    if not dst.exists():
        os.replace(src, dst)
        return
    old = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.old")
    os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old)
