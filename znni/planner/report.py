"""A plan as a readable table (``znni plan`` without ``--json``)."""

from __future__ import annotations

from ..tta import variants
from .gpu_plan import format_gpu
from .plan import Plan

GIB = 2 ** 30


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _rate(voxels_per_second: float | None) -> str:
    return "-" if voxels_per_second is None else f"{voxels_per_second:,.0f} voxels/s"


def format_plan(plan: Plan) -> str:
    """Header, per-layer table ("in place": units per pass written over the layer's input;
    samples for convs, sample maps for pools) and the alternatives."""
    lines = [(f"network {plan.network}: output patch {_shape(plan.output_patch)} "
              f"(input {_shape(plan.input_patch)}), batch {plan.batch}")]
    if plan.planning is not None:
        p = plan.planning
        lines.append(f"planned for {p.device}, {p.threads} threads, budget "
                     f"{p.budget_bytes / GIB:.2f} GiB, effort {p.effort}")
    lines.append(f"predicted {_rate(plan.predicted_throughput)}, peak memory "
                 f"{plan.peak_bytes / GIB:.2f} GiB")
    if plan.tta != "none":
        lines.append(f"test-time augmentation {plan.tta}: {len(variants(plan.tta))} runs per "
                     "patch (the prediction and peak include them; the per-layer seconds "
                     "below are one run's)")
    if plan.extent is not None:
        lines.append(f"volume {_shape(plan.extent)}: {plan.runs} run(s), "
                     f"{100 * plan.padding_fraction:.1f} % of the computed voxels padding, "
                     f"{_rate(plan.predicted_volume_throughput)} of the volume")
    lines.append("")
    lines.append(f"{'layer':>5} {'kind':<5} {'primitive':<16} {'in place':>8} "
                 f"{'input (S,C,Z,Y,X)':<24} {'working':>10} {'seconds':>9} {'cost':<8}")
    for lp in plan.layers:
        seconds = "-" if lp.seconds is None else f"{lp.seconds:.3f}"
        passes = f"{lp.in_place}/pass" if lp.in_place else "-"
        lines.append(f"{lp.index:>5} {lp.kind:<5} {lp.primitive:<16} {passes:>8} "
                     f"{_shape(lp.input_shape):<24} {lp.working_bytes / GIB:>6.2f} GiB "
                     f"{seconds:>9} {lp.cost:<8}")
    if plan.gpu is not None:
        lines += ["", *format_gpu(plan.gpu)]
    if plan.alternatives:
        lines.append("")
        lines.append("alternatives considered:")
        for alt in plan.alternatives:
            lines.append(f"  patch {_shape(alt.output_patch)}, batch {alt.batch}: "
                         f"{_rate(alt.predicted_throughput)}, "
                         f"{alt.peak_bytes / GIB:.2f} GiB — {alt.why}")
    return "\n".join(lines)
