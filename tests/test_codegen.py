"""Rendering safety, compiler hygiene and the kernel cache (atomic, self-healing, concurrent)."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
from dataclasses import replace

import pytest

import znni
from znni.codegen import cache
from znni.codegen.loader import default_toolchain
from znni.codegen.render import check_context, render
from znni.codegen.toolchain import GccToolchain
from znni.errors import CompileError
from znni.primitives.direct import direct_source
from znni.primitives.fft import FftGeometry, mac_source
from znni.primitives.max_filter import max_filter_source
from znni.primitives.mpf import mpf_source
from znni.spec import Conv


@pytest.mark.parametrize("value", ["relu\"); system(\"x", "relu\n#include", 1.5, True, None,
                                   "sigmoid ", 1 << 50])
def test_context_refuses_anything_but_ints_and_enums(value) -> None:
    with pytest.raises((TypeError, ValueError)):
        check_context({"activation": value})


def test_missing_template_variable_is_an_error() -> None:
    import jinja2

    with pytest.raises(jinja2.UndefinedError):
        render("mpf.cpp.j2", {"channels": 1})


def test_spec_strings_never_reach_generated_source(tmp_path) -> None:
    evil = "\"; system(\"rm -rf ~\"); /*\n#include <evil>"
    net = znni.load({"name": evil, "description": evil, "input_channels": 1, "layers": [
        {"type": "conv", "kernel": [2, 2, 2], "out_channels": 2, "activation": "relu"},
        {"type": "pool", "window": [2, 2, 2]}]})
    sources = [direct_source(net.layers[0], (1, 1, 9, 9, 9), 16),
               mpf_source(net.layers[1], (1, 2, 8, 8, 8))]
    for src in sources:
        assert "system" not in src and "evil" not in src


@pytest.mark.parametrize("net_name", ["n337", "n537", "n726", "n926", "aniso2d3d"])
def test_generated_sources_compile_warning_free(net_name, tmp_path) -> None:
    net = znni.load(net_name)
    tc = default_toolchain()
    plan = znni.make_plan(net, net.fragmentation)
    for lp in plan.layers[:3]:
        layer = net.layers[lp.index]
        if isinstance(layer, Conv):  # and dilated, as after max-filtered pools
            sources = [direct_source(replace(layer, dilation=d), lp.input_shape, tc.vector_width)
                       for d in ((1, 1, 1), (2, 1, 2))]
        else:
            sources = [mpf_source(layer, lp.input_shape), max_filter_source(
                replace(layer, max_filter=True, dilation=(2, 2, 1)), lp.input_shape)]
        if isinstance(layer, Conv):
            for pruned in (True, False):  # fused (pruned) and plain spectral MAC
                geometry = FftGeometry.of(layer, lp.input_shape, True, pruned, tc.vector_width)
                sources.append(mac_source(layer, geometry))
                for to_planar in (0, 1):
                    sources.append(render("spectral_layout.cpp.j2", {
                        "planes": geometry.spectral.size[0], "plane": geometry.plane,
                        "tile": geometry.tile, "to_planar": to_planar,
                        "scale_denominator": 1}))
            sources.append(render("pruned_dft.cpp.j2", {
                "n": geometry.spectral.size[0], "a": layer.kernel[0], "m": geometry.plane,
                "vector_width": tc.vector_width}))
        for j, text in enumerate(sources):
            path = tmp_path / f"l{lp.index}_{j}.cpp"
            path.write_text(text)
            proc = subprocess.run([tc.cxx, *tc.flags(), "-Werror", "-fsyntax-only", str(path)],
                                  capture_output=True, text=True, check=False)
            assert proc.returncode == 0, proc.stderr


SOURCE = mpf_source(znni.load("tiny").layers[1], (1, 3, 5, 5, 5))


def test_second_build_is_a_cache_hit() -> None:
    tc = default_toolchain()
    first = cache.build(SOURCE, tc, "t")
    count = cache.compile_count
    assert cache.build(SOURCE, tc, "t") == first
    assert cache.compile_count == count


@pytest.mark.parametrize("damage", ["truncate_so", "garble_manifest", "drop_manifest"])
def test_corrupt_entries_are_detected_and_rebuilt(damage: str) -> None:
    tc = default_toolchain()
    so = cache.build(SOURCE, tc, "t")
    manifest = so.with_suffix(".json")
    if damage == "truncate_so":
        so.write_bytes(so.read_bytes()[:100])
    elif damage == "garble_manifest":
        manifest.write_text("{not json")
    else:
        manifest.unlink()
    assert cache.lookup(cache.cache_key(SOURCE, tc)) is None
    count = cache.compile_count
    rebuilt = cache.build(SOURCE, tc, "t")
    assert cache.compile_count == count + 1
    assert json.loads(rebuilt.with_suffix(".json").read_text())["sha256"]


def test_cache_key_depends_on_flags_and_source() -> None:
    tc = default_toolchain()
    other = GccToolchain(tc.cxx, (*tc.opt_flags, "-DZNNI_TEST_FLAG"))
    assert cache.cache_key(SOURCE, tc) != cache.cache_key(SOURCE, other)
    assert cache.cache_key(SOURCE, tc) != cache.cache_key(SOURCE + "\n", tc)
    assert cache.cache_key(SOURCE, tc) == cache.cache_key(SOURCE, default_toolchain())


def _load_in_child(source: str) -> tuple[str, int]:
    from znni.codegen.loader import load_kernel

    module = load_kernel(source, "concurrent")
    return str(module.path), module.lib.znni_abi_version()


def test_concurrent_processes_building_one_key_all_succeed(tmp_path, monkeypatch) -> None:
    """Three processes start on a cache that does not exist yet: all create and check its
    directories, build or wait for the same key, and load an intact, private entry."""
    root = tmp_path / "fresh" / "cache"
    monkeypatch.setenv("ZNNI_CACHE_DIR", str(root))  # inherited by the spawned children
    source = SOURCE + "\n// concurrent build test\n"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        loaded = pool.map(_load_in_child, [source] * 3)
    assert len({path for path, _ in loaded}) == 1 and {v for _, v in loaded} == {1}
    so = cache.lookup(cache.cache_key(source, default_toolchain()))
    assert so is not None and str(so) == loaded[0][0] and so.is_relative_to(root)
    for directory in (root, so.parent):
        assert (directory.stat().st_mode & 0o077) == 0
    assert not [p for p in so.parent.iterdir() if p.name.startswith(".")]  # no temporaries


def test_compiler_failure_is_a_clear_error(tmp_path) -> None:
    tc = default_toolchain()
    with pytest.raises(CompileError) as info:
        cache.build("this is not C++", tc, "broken")
    assert "failed" in str(info.value) and "command" in str(info.value)
    missing = GccToolchain("no-such-compiler-znni", tc.opt_flags)
    with pytest.raises(CompileError, match="not found"):
        missing.fingerprint  # noqa: B018


def test_kernel_cache_dir_is_private() -> None:
    from znni import config

    assert (config.cache_dir().stat().st_mode & 0o077) == 0
    assert (cache._kernel_dir().stat().st_mode & 0o077) == 0
