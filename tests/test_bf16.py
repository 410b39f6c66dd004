"""bf16 layers (docs/design.md §5.7): the rounding rule, the kernel against a float64 reference
on bf16-rounded operands (native and emulated dot products), and the planner's use of it only
when asked and only on inner conv layers."""

from __future__ import annotations

import json

import numpy as np
import pytest

import znni
from znni.codegen.loader import default_toolchain, load_kernel
from znni.codegen.toolchain import GccToolchain
from znni.errors import PlanError
from znni.planner import Plan, make_plan, plan
from znni.planner.plan import inner_convs
from znni.precision import bf16_bits, check_precision, pair_channels, round_bf16
from znni.primitives import PRIMITIVES
from znni.primitives.base import padded_empty
from znni.primitives.direct import ConvStep, choose_block, direct_source, pack_weights
from znni.reference import forward
from znni.spec import Conv

from .conftest import net_from_layers, random_volume, relative_error
from .test_primitives import conv_reference

GIB = 1 << 30


def test_rounding_is_to_nearest_even_as_the_hardware_does() -> None:
    one = 1.0
    x = np.array([one, one + 2 ** -8, one + 3 * 2 ** -8, one + 2 ** -8 + 2 ** -20, -2.5,
                  3.4e38, 1e-40], np.float32)
    expected = np.array([one, one, one + 2 ** -6, one + 2 ** -7, -2.5, np.inf, 9.18355e-41],
                        np.float32)
    np.testing.assert_allclose(round_bf16(x), expected, rtol=1e-6)
    assert (bf16_bits(x)[:2] == 0x3F80).all()
    torch = pytest.importorskip("torch")
    values = np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * 100
    widened = torch.from_numpy(values).to(torch.bfloat16).to(torch.float32).numpy()
    assert (round_bf16(values) == widened).all()


def test_weights_pair_input_channels_low_half_first() -> None:
    w = np.arange(2 * 3 * 1 * 1 * 2, dtype=np.float32).reshape(2, 3, 1, 1, 2)
    pairs = pair_channels(w)
    assert pairs.shape == (2, 2, 1, 1, 2) and pairs.dtype == np.uint32
    assert (pairs & 0xFFFF == bf16_bits(w[:, 0::2])).all()
    assert (pairs[:, 0] >> 16 == bf16_bits(w[:, 1])).all()
    assert (pairs[:, 1] >> 16 == 0).all()  # no channel 3: a zero partner


def bf16_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray, act: str,
                   dilation: tuple[int, int, int] = (1, 1, 1)) -> np.ndarray:
    """The float64 layer on bf16-rounded input and weights: what a bf16 kernel computes, up to
    its float32 accumulation."""
    return conv_reference(round_bf16(x), round_bf16(w), b, act, dilation)


def run_bf16(layer: Conv, x: np.ndarray, w: np.ndarray, b: np.ndarray,
             toolchain: GccToolchain | None = None) -> np.ndarray:
    """The direct-bf16 kernel on ``x``: as the primitive prepares it, or built by ``toolchain``."""
    if toolchain is None:
        step = PRIMITIVES["direct-bf16"].prepare(0, layer, x.shape, (w, b), 2)
    else:
        vw = toolchain.vector_width
        module = load_kernel(direct_source(layer, x.shape, vw, "bf16"), "bf16 test", toolchain)
        block = choose_block(layer, x.shape, vw)
        step = ConvStep(module, layer, x.shape, pack_weights(w, b, block.ob, "bf16"), 2)
    buf = padded_empty(x.shape, step.input_slack)
    buf[...] = x
    return step.run(buf, 0)


CASES = [
    (1, 7, (2, 2, 2), (1, 5, 6, 7), "relu", (1, 1, 1)),
    (3, 13, (3, 3, 1), (2, 4, 9, 5), "tanh", (1, 1, 1)),        # odd maps: a zero partner
    (5, 2, (1, 3, 3), (1, 3, 7, 31), "sigmoid", (1, 1, 1)),
    (16, 17, (3, 3, 3), (3, 7, 7, 7), "linear", (1, 1, 1)),
    (33, 24, (3, 3, 3), (1, 9, 11, 13), "relu", (1, 1, 1)),
    (8, 5, (2, 3, 2), (2, 9, 12, 10), "linear", (2, 1, 3)),     # dilated (after max filters)
]


@pytest.mark.parametrize("fi,fo,kernel,shape,act,dilation", CASES)
def test_bf16_direct_matches_the_reference_on_rounded_operands(fi, fo, kernel, shape, act,
                                                                dilation, rng) -> None:
    layer = Conv(fi, fo, kernel, act, dilation=dilation)
    x = rng.standard_normal((shape[0], fi, *shape[1:]), dtype=np.float32)
    w = rng.standard_normal((fo, fi, *kernel), dtype=np.float32)
    b = rng.standard_normal(fo).astype(np.float32)
    expected = bf16_reference(x, w, b, act, dilation)
    assert relative_error(run_bf16(layer, x, w, b), expected) < 1e-4


def test_the_emulated_dot_product_computes_the_same(rng) -> None:
    """Where the compiler may not use AVX512_BF16 (AVX2 machines, older AVX-512) the kernel
    emulates the dot product with FMAs on the widened halves: same values."""
    base = default_toolchain()
    flags = (*base.opt_flags, "-mno-avx512bf16")
    emulated = GccToolchain(base.cxx, flags)
    layer = Conv(9, 11, (3, 3, 3), "relu")
    x = rng.standard_normal((2, 9, 8, 9, 10), dtype=np.float32)
    w = rng.standard_normal((11, 9, 3, 3, 3), dtype=np.float32)
    b = rng.standard_normal(11).astype(np.float32)
    expected = bf16_reference(x, w, b, "relu")
    assert relative_error(run_bf16(layer, x, w, b, emulated), expected) < 1e-4
    assert relative_error(run_bf16(layer, x, w, b), expected) < 1e-4


def _net() -> znni.Network:
    return net_from_layers([
        {"type": "conv", "out_channels": 8, "kernel": [3, 3, 3], "activation": "relu"},
        {"type": "pool", "window": [2, 2, 2]},
        {"type": "conv", "out_channels": 12, "kernel": [3, 3, 1], "activation": "relu"},
        {"type": "conv", "out_channels": 12, "kernel": [1, 3, 3], "activation": "tanh"},
        {"type": "conv", "out_channels": 2, "kernel": [2, 2, 2], "activation": "sigmoid"},
    ])


def test_the_planner_uses_bf16_only_when_asked_and_only_between_first_and_last() -> None:
    net = _net()
    assert inner_convs(net) == {2, 3}
    fp32 = plan(net, GIB)
    assert fp32.precision == "fp32" and fp32.planning.precision == "fp32"
    assert all(PRIMITIVES[lp.primitive].precision == "fp32" for lp in fp32.layers)
    bf16 = plan(net, GIB, precision="bf16")
    assert bf16.planning.precision == "bf16"
    for lp in bf16.layers:
        if lp.index not in inner_convs(net):
            assert PRIMITIVES[lp.primitive].precision == "fp32"
    # the bundled device has no bf16 calibration: the model's ideal 2× makes direct-bf16 win
    # these small layers
    assert {bf16.layers[2].primitive, bf16.layers[3].primitive} == {"direct-bf16"}
    assert bf16.precision == "bf16"
    again = Plan.from_json(bf16.to_json(), net)
    assert again == bf16 and json.loads(bf16.to_json())["precision"] == "bf16"
    with pytest.raises(PlanError, match="unknown precision 'fp16'"):
        plan(net, GIB, precision="fp16")


def test_a_plan_refuses_bf16_on_the_first_or_last_conv_layer() -> None:
    net = _net()
    with pytest.raises(PlanError, match="layer 0 is the network's first or last conv layer"):
        make_plan(net, (2, 2, 2), 1, {0: "direct-bf16"})
    with pytest.raises(PlanError, match="layer 4 is the network's first or last"):
        make_plan(net, (2, 2, 2), 1, {4: "direct-bf16"})
    every = make_plan(net, (2, 2, 2), 1, "direct-bf16")  # one name: first and last in fp32
    assert [lp.primitive for lp in every.layers] == ["direct", "mpf", "direct-bf16",
                                                      "direct-bf16", "direct"]
    data = json.loads(every.to_json())
    data["planning"] = {"budget_bytes": 1, "threads": 1, "device": "d", "effort": "estimate",
                        "precision": "fp8"}
    with pytest.raises(PlanError, match="unknown precision 'fp8'"):
        Plan.from_dict(data, net)
    del data["planning"]["precision"]  # plans saved before bf16 existed load as fp32 plans
    assert Plan.from_dict(data, net).planning.precision == "fp32"
    assert check_precision("bf16") == "bf16"


def test_bf16_inference_stays_near_fp32_and_says_so_when_fixed_choices_skip_it() -> None:
    net = _net()
    volume = random_volume((30, 31, 29))
    fp32 = forward(net, volume)
    out = znni.infer(net, volume, precision="bf16", memory=GIB)
    # bf16 operands: each product ±2⁻⁸ relative; sigmoid outputs agree to ~1e-3
    assert 1e-7 < relative_error(out, fp32) < 2e-2
    with pytest.raises(PlanError, match="precision bf16 is the planner's choice"):
        znni.infer(net, volume, patch=(2, 2, 2), precision="bf16")


def test_cli_plan_takes_precision(tmp_path) -> None:
    from click.testing import CliRunner

    from znni.cli import main

    spec = tmp_path / "net.json"
    spec.write_text(json.dumps(_net().to_dict()))
    result = CliRunner().invoke(main, ["plan", str(spec), "--memory", "1GiB", "--precision",
                                       "bf16", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["planning"]["precision"] == "bf16"
    result = CliRunner().invoke(main, ["plan", str(spec), "--precision", "fp16"])
    assert result.exit_code == 2 and "bf16" in result.output
