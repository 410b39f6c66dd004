"""The ``znni`` command line: ``plan``, ``tune``, ``infer``, ``bench``, ``demo``, ``import``
and ``export``.

Every user error becomes one paragraph on stderr and exit status 2; no tracebacks.

Only click and light znni modules are imported here: each command imports what it runs, so
``znni --help`` starts in a fraction of a second (numpy, the planner and the kernels'
toolchain cost most of a second).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import __version__, config
from .bundled import bundled_nets
from .errors import ZnniError

if TYPE_CHECKING:
    from .graph import Graph
    from .spec import Network, Vec3

EXIT_USER_ERROR = 2
#: ``--effort`` choices of ``tune`` and of ``plan``/``bench``: literal copies of
#: ``znni.planner.tuning.EFFORTS`` and ``znni.planner.search.EFFORT_LEVELS`` (importing those
#: would import the planner); tests/test_startup.py checks that they agree.
TUNING_EFFORTS = ("measure", "exhaustive")
EFFORT_LEVELS = ("estimate", *TUNING_EFFORTS)
#: ``--precision`` choices: a literal copy of ``znni.precision.PRECISIONS`` (checked likewise).
PRECISIONS = ("fp32", "bf16")
#: ``--tta`` choices: a literal copy of ``znni.tta.TTA_MODES`` (checked likewise).
TTA_MODES = ("none", "flips", "flips+transpose")


class ConvPrimitive(click.ParamType):  # type: ignore[type-arg]  # generic in typeshed only
    """``auto`` or a CPU conv primitive of :data:`znni.primitives.CONV_PRIMITIVES`, checked on
    use: listing them up front would import the primitives for every ``znni --help``."""

    name = "auto|PRIMITIVE"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        from .primitives import CONV_PRIMITIVES

        choices = ("auto", *CONV_PRIMITIVES)
        if value not in choices:
            self.fail(f"{value!r} is not one of {', '.join(choices)}", param, ctx)
        return str(value)


def _run_guarded(fn: Callable[[], None]) -> None:
    try:
        fn()
    except ZnniError as exc:
        click.echo(f"znni: error: {exc}", err=True)
        sys.exit(EXIT_USER_ERROR)
    except MemoryError:
        click.echo("znni: error: out of memory\n  hint: pass a smaller --patch or --memory",
                   err=True)
        sys.exit(EXIT_USER_ERROR)


def _parse_patch(text: str | None) -> Vec3 | None:
    if text is None:
        return None
    parts = text.replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise ZnniError(f"cannot read --patch {text!r}", "write Z,Y,X (e.g. 16,64,64) or N")
    return (values[0], values[1], values[2])


def _check_weights_choice(weights: str | None, seed: int | None) -> None:
    if (weights is None) == (seed is None):
        raise ZnniError("give exactly one of --weights W.npz or --random-weights SEED",
                        "trained weights come from --weights; benchmarks use --random-weights")


def _network(spec: str, weights: str | None, seed: int | None) -> Network:
    _check_weights_choice(weights, seed)
    from .spec import load

    net = load(spec)
    if weights is not None:
        return net.with_weights(weights)
    assert seed is not None  # exactly one of the two was given
    return net.random_weights(seed)


def _graph(spec: str, weights: str | None, seed: int | None) -> Graph | None:
    """The DAG network of a v2 spec (None for a v1 spec or a bundled name), with weights."""
    path = Path(spec)
    if not path.is_file():
        return None
    from .errors import SpecError
    from .spec import parse_json, read_text

    hint = "fix the JSON syntax (docs/design.md §2)"
    data = parse_json(read_text(path, "network spec", SpecError, hint), spec, SpecError, hint)
    if not isinstance(data, dict) or "nodes" not in data:
        return None
    _check_weights_choice(weights, seed)
    from .graph import load_graph

    graph = load_graph(data)
    return graph.with_weights(weights) if weights is not None else graph.random_weights(
        seed or 0)


def _write_atomic(path: str, write: Callable[[Any], None], suffix: str) -> None:
    """Write via a temporary file and rename: a failed run never clobbers ``path``."""
    target = Path(path)
    if target.suffix != suffix:
        raise ZnniError(f"output {path!r} must end in {suffix}", f"name it OUT{suffix}")
    if not target.parent.is_dir():
        raise ZnniError(f"output directory {str(target.parent)!r} does not exist",
                        "create it first")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


def _write_text_atomic(path: str, text: str) -> None:
    _write_atomic(path, lambda handle: handle.write(text.encode()), ".json")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="znni")
@click.option("-v", "--verbose", is_flag=True, help="Log compilation and timing details.")
def main(verbose: bool) -> None:
    """znni: dense 3D ConvNet inference at maximum throughput."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="znni: %(message)s")


_common: list[Callable[[Any], Any]] = [
    click.option("--weights", type=str, default=None, help="Trained weights (.npz)."),
    click.option("--random-weights", "seed", type=int, default=None,
                 help="Seeded He-initialised weights instead of --weights."),
    click.option("--patch", default=None, help="Dense output patch Z,Y,X (multiples of the "
                 "network's fragmentation); default: the largest that fits."),
    click.option("--memory", default=None, help="Memory budget for the default patch, e.g. 4GiB."),
    click.option("--threads", type=int, default=None, help="Threads (default: usable cores)."),
    click.option("--primitive", default="auto", show_default=True,
                 type=ConvPrimitive(),
                 help="Convolution primitive for every conv layer (a wrong name lists them); "
                 "auto: the planner's choice "
                 "per layer (with --patch: pruned FFT for kernels ≥ 100 taps with ≥ 16 input "
                 "and output maps on images ≥ 16³, Winograd for 3³ kernels with ≥ 16 maps, "
                 "direct otherwise)."),
]


_precision = click.option(
    "--precision", default="fp32", show_default=True, type=click.Choice(list(PRECISIONS)),
    help="bf16: the planner may run the inner conv layers in bf16 (float32 accumulation; the "
    "first and last layers stay fp32) where that is faster on this CPU.")


_tta = click.option(
    "--tta", default="none", show_default=True, type=click.Choice(list(TTA_MODES)),
    help="Test-time augmentation: the mean of the net over the 8 flips (16 with the y/x "
    "transpose, for nets the same along y and x) of every patch; costs that many runs.")


def _with_common(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_common):
        fn = option(fn)
    return fn


@main.command()
@click.argument("spec")
@_with_common
@click.option("--input", "input_path", required=True,
              help="Input volume: .npy, .zarr, FILE.h5:/dataset or .tif (Z,Y,X or C,Z,Y,X; "
              "uint8, uint16 or float32).")
@click.option("--output", "output_path", required=True,
              help="Output volume: .zarr (chunked, compressed), .npy or FILE.h5:/dataset. "
              "Re-running the same job resumes it.")
@click.option("--plan", "plan_path", default=None, help="Run a saved plan (JSON).")
@click.option("--output-dtype", default="float32", show_default=True,
              type=click.Choice(["float32", "uint8"]), help="uint8: [0, 1] scaled to 0..255.")
@click.option("--bbox", default=None, help="Input sub-volume z0:z1,y0:y1,x0:x1 (e.g. 0:512,:,:).")
@click.option("--mode", default="valid", show_default=True, type=click.Choice(["valid", "same"]),
              help="valid: output shrinks by FOV − 1; same: input reflected at its border, "
              "output as large as the input.")
@click.option("--quiet", is_flag=True, help="No progress report.")
@click.option("--workers", type=int, default=None,
              help="Run the blocks on a local Dask cluster of N worker processes.")
@click.option("--scheduler", default=None,
              help="Run the blocks on a Dask cluster (tcp://host:port); workers need the "
              "volumes' paths.")
@_precision
@click.option("--overlap", default=0.25, show_default=True, type=float,
              help="DAG nets with padded convs: overlap of the --patch windows.")
@click.option("--blend", default="gaussian", show_default=True,
              type=click.Choice(["gaussian", "constant", "bump", "none"]),
              help="DAG nets with padded convs: how overlapping windows are averaged (MONAI's "
              "sliding_window_inference for gaussian and constant).")
@_tta
@click.option("--mask", "mask_path", default=None,
              help="A volume (the input's grid or a coarser mip) that is zero where output "
              "blocks are filled with --mask-fill instead of computed (chain nets).")
@click.option("--mask-fill", default=0.0, show_default=True, type=float,
              help="The value of output voxels in blocks the mask skips.")
def infer(spec: str, weights: str | None, seed: int | None, patch: str | None,
          memory: str | None, threads: int | None, primitive: str, input_path: str,
          output_path: str, plan_path: str | None, output_dtype: str, bbox: str | None,
          mode: str, quiet: bool, workers: int | None, scheduler: str | None,
          precision: str, overlap: float, blend: str, tta: str, mask_path: str | None,
          mask_fill: float) -> None:
    """Dense inference of network SPEC (a JSON file or a bundled name) on a volume on disk,
    block by block (memory: the budget plus one block); resumable. A DAG spec (v2): --patch
    is each block's input (valid nets tile exactly) or window (padded nets blend overlapping
    windows, block by block)."""

    def run() -> None:
        from .planner import Plan
        from .runtime.job import infer_volume
        from .runtime.progress import progress_report

        graph = _graph(spec, weights, seed)
        if graph is not None and (mask_path is not None or tta != "none"):
            raise ZnniError("--mask and --tta are for chain networks; DAG specs run without "
                            "them for now", "run without --mask and --tta")
        if graph is not None:
            from .graph.job import infer_graph_volume
            from .runtime.progress import progress_report

            with progress_report(quiet) as report:
                done = infer_graph_volume(graph, input_path, output_path, _parse_patch(patch),
                                          overlap, blend, _threads(threads), memory, report)
            how = "blended windows" if done.blended else "exact blocks"
            skipped = (f"; {done.stats.blocks_skipped} blocks already done"
                       if done.stats.blocks_skipped else "")
            click.echo(f"wrote {output_path}: {list(done.output_shape)} ({how}{skipped}) in "
                       f"{done.stats.seconds:.2f} s")
            return
        net = _network(spec, weights, seed)
        plan = None if plan_path is None else Plan.load(plan_path, net)
        n_threads = _threads(threads)
        client = None
        if workers is not None or scheduler is not None:
            from .runtime.cluster import connect

            if n_threads is None and workers:  # share this machine's cores between workers
                n_threads = max(1, config.default_threads() // workers)
            client = connect(scheduler, workers, n_threads)
        try:
            with progress_report(quiet) as report:
                stats = infer_volume(
                    net, input_path, output_path, plan=plan, patch=_parse_patch(patch),
                    primitives=primitive, threads=n_threads,
                    memory=None if memory is None else config.parse_bytes(memory), mode=mode,
                    bbox=bbox, output_dtype=output_dtype, progress=report, client=client,
                    precision=precision, mask=mask_path, mask_fill=mask_fill, tta=tta)
        finally:
            if client is not None:
                client.close()
        skipped = f" ({stats.blocks_skipped} blocks already done)" if stats.blocks_skipped else ""
        if mask_path is not None and stats.blocks_run:
            skipped += (f"; the mask skipped {stats.blocks_masked} of {stats.blocks_run} blocks "
                        f"({100 * stats.blocks_masked / stats.blocks_run:.0f} %)")
        click.echo(f"wrote {output_path}: {stats.output_voxels} voxels in {stats.seconds:.2f} s "
                   f"({stats.voxels_per_second:,.0f} voxels/s){skipped}")

    _run_guarded(run)


def _threads(threads: int | None) -> int | None:
    return None if threads is None else config.check_threads(threads, "--threads")


def _parse_extent(text: str | None) -> Vec3 | None:
    extent = _parse_patch(text)
    if extent is not None and min(extent) < 1:
        raise ZnniError(f"--extent must be positive, got {text!r}", "write Z,Y,X (e.g. 64,512,512)")
    return extent


@main.command("plan")
@click.argument("spec")
@click.option("--memory", default=None, help="Memory budget, e.g. 4GiB (default: 80 % of the "
              "available RAM).")
@click.option("--threads", type=int, default=None, help="Threads (default: usable cores).")
@click.option("--device", "device_path", default=None,
              help="Plan for the machine described by this JSON file instead of this one.")
@click.option("--effort", default="estimate", show_default=True,
              type=click.Choice(list(EFFORT_LEVELS)),
              help="estimate: cost model; measure/exhaustive: time kernels (tuning records).")
@click.option("--extent", default=None, help="Output volume Z,Y,X: no patch beyond it.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--output", "-o", "output_path", default=None, help="Also write the JSON here.")
@_precision
@_tta
def plan_command(spec: str, memory: str | None, threads: int | None, device_path: str | None,
                 effort: str, extent: str | None, as_json: bool,
                 output_path: str | None, precision: str, tta: str) -> None:
    """Search the fastest plan of network SPEC (JSON file or bundled name) within a budget."""

    def run() -> None:
        from .planner.report import format_plan
        from .planner.search import plan as search_plan
        from .spec import load

        graph = _graph(spec, None, 0)
        if graph is not None:
            from .graph.planner import plan_graph
            from .graph.report import describe

            if not as_json:
                click.echo(describe(graph))
            chosen = plan_graph(graph, memory, _threads(threads), _parse_extent(extent))
            if output_path is not None:  # what `znni export PLAN.json --net SPEC` reads
                _write_text_atomic(output_path, chosen.to_json() + "\n")
            if as_json:
                click.echo(chosen.to_json())
                return
            click.echo(f"  block {'x'.join(map(str, chosen.block_input))} -> output "
                       f"{'x'.join(map(str, chosen.block_output))}, predicted "
                       f"{chosen.throughput:,.0f} voxels/s, peak "
                       f"{chosen.peak_bytes / 2**30:.2f} GiB of "
                       f"{chosen.budget_bytes / 2**30:.2f} GiB\n  conv nodes: "
                       + ", ".join(f"{n} {p}" for n, p in chosen.primitives))
            return
        net = load(spec)
        result = search_plan(net, memory, _threads(threads), device_path, effort,
                             _parse_extent(extent), precision=precision, tta=tta)
        if output_path is not None:
            _write_text_atomic(output_path, result.to_json() + "\n")
        click.echo(result.to_json() if as_json else format_plan(result))

    _run_guarded(run)


@main.command()
@click.argument("spec")
@click.option("--memory", default=None, help="Memory budget, e.g. 4GiB.")
@click.option("--threads", type=int, default=None, help="Threads (default: usable cores).")
@click.option("--effort", default="measure", show_default=True,
              type=click.Choice(list(TUNING_EFFORTS)),
              help="measure: the best candidates' layers; exhaustive: more candidates, every "
              "primitive, more repetitions.")
@_precision
def tune(spec: str, memory: str | None, threads: int | None, effort: str,
         precision: str) -> None:
    """Time candidate primitives of SPEC's best plans on this machine; keep tuning records."""

    def run() -> None:
        from .planner.report import format_plan
        from .planner.search import plan as search_plan
        from .spec import load

        net = load(spec)
        result = search_plan(net, memory, _threads(threads), None, effort,
                             precision=precision)
        click.echo(format_plan(result))

    _run_guarded(run)


@main.command()
@click.argument("spec")
@click.option("--memory", default=None, help="Memory budget, e.g. 4GiB (default: 80 % of the "
              "available RAM).")
@click.option("--threads", type=int, default=None, help="Threads (default: usable cores).")
@click.option("--vs", "versus", default="all", show_default=True,
              type=click.Choice(["all", "torch", "onnxruntime", "none"]),
              help="Peers to run alongside (all: every installed one; the fastest within the "
              "budget is the baseline).")
@click.option("--sizes", default="32,48,64", show_default=True,
              help="Output patch edges for the peers and for znni's best plan at each size.")
@click.option("--repeats", default=3, show_default=True, help="Alternating repetitions.")
@click.option("--effort", default="estimate", show_default=True,
              type=click.Choice(list(EFFORT_LEVELS)), help="Planner effort for znni's plans.")
@click.option("--plot", "plot_path", default=None, help="Write throughput vs patch size (PNG).")
@_precision
def bench(spec: str, memory: str | None, threads: int | None, versus: str, sizes: str,
          repeats: int, effort: str, plot_path: str | None, precision: str) -> None:
    """Planned znni vs PyTorch and ONNX Runtime dense inference of SPEC (random weights), same
    run."""

    def run() -> None:
        from .benchmark import plot, run_bench
        from .peers import select
        from .planner.search import plan as search_plan
        from .spec import load

        graph = _graph(spec, None, 0)
        if graph is not None:
            _bench_graph(graph, memory, _threads(threads) or config.default_threads(), repeats)
            return
        net = load(spec).random_weights(0)
        edges = [int(v) for v in sizes.split(",") if v.strip()] if sizes else []
        if any(e < 1 for e in edges) or repeats < 1:
            raise ZnniError("--sizes and --repeats must be positive", "e.g. --sizes 32,64")
        peers, missing = select(versus)
        if missing:
            click.echo(f"not installed, left out: {', '.join(missing)} "
                       "(pip install 'znni[bench]')", err=True)
        n_threads = _threads(threads) or config.default_threads()
        chosen = search_plan(net, memory, n_threads, None, effort, precision=precision)
        budget = chosen.planning.budget_bytes if chosen.planning else 0
        # The per-size candidates only draw the throughput curve: planned from the model
        # (and whatever tuning records exist), not tuned again.
        others = [search_plan(net, memory, n_threads, None, "estimate", (e, e, e),
                              precision=precision) for e in edges]
        plans = [chosen] + [p for p in others if p.output_patch != chosen.output_patch]
        result = run_bench(net, plans, n_threads, budget, peers, edges, repeats)
        click.echo(f"{net.name}, {n_threads} threads, budget {budget / 2**30:.2f} GiB, "
                   f"median of {repeats} alternating runs (dense output voxels/s):")
        for m, p in zip(result.znni, plans, strict=True):
            predicted = p.predicted_throughput or 0
            click.echo(f"  {m.label:<15} patch {'x'.join(map(str, m.output_patch)):<12} batch "
                       f"{p.batch}: {m.voxels_per_second:>10,.0f}  (predicted {predicted:,.0f}; "
                       f"peak +{m.peak_bytes / 2**30:.2f} GiB)")
        width = max([15] + [len(m.label) for m in result.peers])
        for m in result.peers:
            click.echo(f"  {m.label:<{width}} patch {'x'.join(map(str, m.output_patch)):<12}"
                       f"        : {m.voxels_per_second:>10,.0f}  "
                       f"(peak +{m.peak_bytes / 2**30:.2f} GiB)")
        if peers and edges:
            best = result.peer_best
            if best is None:
                click.echo("  no peer configuration stayed within the budget")
            else:
                click.echo(f"  znni / fastest peer (within budget: {best.label} "
                           f"{'x'.join(map(str, best.output_patch))}) = {result.ratio:.2f}x")
        if plot_path is not None:
            plot(result, plot_path, f"{net.name}, {n_threads} threads")
            click.echo(f"  plot: {plot_path}")

    _run_guarded(run)


def _bench_graph(graph: Graph, memory: str | None, threads: int, repeats: int) -> None:
    """``znni bench`` on a DAG spec (random weights): znni's plan against PyTorch."""
    from .graph.benchmark import bench_graph

    result = bench_graph(graph, memory, threads, repeats)
    plan = result.plan
    click.echo(f"{graph.name} (DAG), {threads} threads, budget {plan.budget_bytes / 2**30:.2f} "
               f"GiB, volume {'x'.join(map(str, result.volume))}, median of {repeats} "
               "alternating runs:")
    for name, seconds in result.seconds.items():
        click.echo(f"  {name:<8} {seconds:8.2f} s  {result.output_voxels / seconds:>12,.0f} "
                   "voxels/s")
    click.echo(f"  znni: block {'x'.join(map(str, plan.block_input))}, predicted peak "
               f"{plan.peak_bytes / 2**30:.2f} GiB; max relative difference "
               f"{result.difference:.1e}\n  znni / PyTorch = {result.ratio:.2f}x")


@main.command("import")
@click.argument("model")
@click.option("--out", "out_path", required=True, help="Network spec to write (.json).")
@click.option("--weights-out", "weights_path", required=True, help="Weights to write (.npz).")
@click.option("--spec", default=None, help="znni spec (JSON) of a PyTorch state_dict's network.")
@click.option("--trust-pickle", is_flag=True, help="Allow a pickled nn.Module: loading it runs "
              "code from the file, so only for files you trust.")
@click.option("--no-check", is_flag=True, help="Skip running the source model to compare.")
@click.option("--input-size", default=None, help="Import as a DAG (U-Nets, residual nets; "
              "spec v2), traced on an input of Z,Y,X voxels (a size the model takes). "
              "torch.export programs (.pt2) carry their own.")
def import_command(model: str, out_path: str, weights_path: str, spec: str | None,
                   trust_pickle: bool, no_check: bool, input_size: str | None) -> None:
    """Import a trained PyTorch (TorchScript, state_dict + --spec, torch.export .pt2) or ONNX
    (.onnx) model."""

    def run() -> None:
        from .importers import import_model

        if input_size is not None or model.endswith(".pt2"):
            from .graph.report import describe
            from .importers import import_graph

            graph = import_graph(model, _parse_patch(input_size), trust_pickle, not no_check)
            _write_text_atomic(out_path, json.dumps(graph.to_dict(), indent=1) + "\n")
            _write_atomic(weights_path, graph.save_weights, ".npz")
            click.echo(f"imported a DAG of {len(graph.nodes)} nodes"
                       + ("" if no_check else "; output checked against the source model")
                       + f"\n{describe(graph)}\n  wrote {out_path} and {weights_path}")
            return

        net = import_model(model, spec, trust_pickle, not no_check)
        _write_text_atomic(out_path, json.dumps(net.to_dict(), indent=1) + "\n")
        _write_atomic(weights_path, net.save_weights, ".npz")
        click.echo(f"imported {net.name!r}: {len(net.layers)} layers, FOV {list(net.fov)}, "
                   f"fragmentation {list(net.fragmentation)}"
                   + ("" if no_check else "; output checked against the source model")
                   + f"\n  wrote {out_path} and {weights_path}")

    _run_guarded(run)


@main.command()
@click.argument("volumes", nargs=-1, required=True)
@click.option("--bind", default="127.0.0.1", show_default=True,
              help="Address the viewer's server listens on (0.0.0.0: other machines too).")
@click.option("--port", default=0, show_default=True, type=int, help="0: any free port.")
def view(volumes: tuple[str, ...], bind: str, port: int) -> None:
    """Show VOLUMES (an input and its output, any format) in Neuroglancer, served from this
    machine, in their world coordinates; prints the URL and serves until interrupted."""

    def run() -> None:
        from .view import serve

        viewer = serve(list(volumes), bind, port)
        click.echo(f"znni view: open {viewer} in a browser (Ctrl-C ends)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass

    _run_guarded(run)


@main.command("export")
@click.argument("plan_path", metavar="PLAN.json")
@click.option("--net", "spec", required=True, help="The plan's network spec (JSON or bundled).")
@click.option("--weights", type=str, default=None, help="Trained weights (.npz).")
@click.option("--random-weights", "seed", type=int, default=None,
              help="Seeded He-initialised weights instead of --weights.")
@click.option("--out", "out_dir", required=True, help="New directory for the library sources.")
@click.option("--fftw", is_flag=True, help="FFT layers as FFTW3 kernels (the build links "
              "libfftw3f) instead of direct convolution.")
def export_command(plan_path: str, spec: str, weights: str | None, seed: int | None,
                   out_dir: str, fftw: bool) -> None:
    """Write PLAN.json as a standalone C library (sources, header, weights, Makefile). A DAG
    spec (v2) takes a plan of `znni plan SPEC.json -o PLAN.json`; its library runs one block."""

    def run() -> None:
        from .export import export_plan
        from .planner import Plan

        graph = _graph(spec, weights, seed)
        if graph is not None:
            from .export_graph import export_graph_plan
            from .graph.planner import GraphPlan

            name = graph.name
            result = export_graph_plan(GraphPlan.load(plan_path, graph), graph, out_dir,
                                       fftw=fftw)
        else:
            net = _network(spec, weights, seed)
            name = net.name
            result = export_plan(Plan.load(plan_path, net), net, out_dir, fftw=fftw)
        for note in result.notes():
            click.echo(f"znni: note: {note}", err=True)
        click.echo(f"exported {name!r} ({len(result.files)} files) to {out_dir}; build it "
                   f"with `make -C {out_dir}` and run `{out_dir}/example {out_dir}/weights.bin`")

    _run_guarded(run)


@main.command()
@click.option("--net", "spec", default="n337", show_default=True,
              help=f"Bundled net ({', '.join(bundled_nets())}) or a JSON spec.")
@click.option("--size", default=64, show_default=True, help="Dense output edge length.")
@click.option("--threads", type=int, default=None, help="Threads (default: usable cores).")
def demo(spec: str, size: int, threads: int | None) -> None:
    """Run a bundled net with random weights on a synthetic EM-like volume; print voxels/s."""

    def run() -> None:
        from .runtime.infer import infer_with_stats
        from .spec import load
        from .synthetic import em_like_volume

        net = load(spec).random_weights(0)
        if size < 1:
            raise ZnniError(f"--size must be ≥ 1, got {size}", "e.g. --size 64")
        fov = net.fov
        shape = (size + fov[0] - 1, size + fov[1] - 1, size + fov[2] - 1)
        volume = em_like_volume(shape, seed=0)
        click.echo(f"network {net.name}: FOV {list(fov)}, fragmentation "
                   f"{list(net.fragmentation)}; input {list(shape)} (synthetic EM)")
        start = time.perf_counter()
        out, first = infer_with_stats(net, volume, threads=_threads(threads))
        setup = time.perf_counter() - start - first.seconds
        _, again = infer_with_stats(net, volume, threads=_threads(threads))
        best = min(first.seconds, again.seconds)
        click.echo(f"output {list(out.shape)} in {best:.2f} s: "
                   f"{first.output_voxels / best:,.0f} voxels/s "
                   f"(setup incl. kernel compilation {setup:.1f} s; "
                   f"output range [{out.min():.3f}, {out.max():.3f}])")

    _run_guarded(run)
