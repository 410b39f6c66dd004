"""The kernel cache holds code znni runs: it must be private, never followed through planted
links, and recover from (or clearly report) entries that are not what they claim to be."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import znni
from znni import config
from znni.codegen import cache
from znni.codegen.loader import default_toolchain, load_kernel
from znni.errors import CompileError, ZnniError
from znni.planner import device
from znni.planner.tuning import Record, TuningRecords
from znni.primitives.mpf import mpf_source

SOURCE = mpf_source(znni.load("tiny").layers[1], (1, 3, 5, 5, 5))
FOREIGN_UID = 65534  # nobody


@pytest.fixture
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, not yet created ZNNI_CACHE_DIR for this test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("ZNNI_CACHE_DIR", str(root))
    return root


@pytest.fixture
def source(request: pytest.FixtureRequest) -> str:
    """A kernel source of this test alone (load_kernel memoises per source in the process)."""
    return f"{SOURCE}\n// {request.node.nodeid}\n"


def _chown_to_someone_else(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    os.chown(path, FOREIGN_UID, FOREIGN_UID, follow_symlinks=False)


def _make_unsafe_dir(path: Path, how: str) -> None:
    if how == "symlink":
        real = path.with_name(f"{path.name}-real")
        real.mkdir(mode=0o700)
        path.symlink_to(real)
    elif how == "regular_file":
        path.write_text("")
    else:
        path.mkdir(mode=0o700)
        if how == "foreign_owner":
            _chown_to_someone_else(path)
        else:
            path.chmod({"world_writable": 0o777, "group_writable": 0o770}[how])


UNSAFE_DIRS = {"world_writable": "writable by others (mode 0777)",
               "group_writable": "writable by others (mode 0770)",
               "symlink": "is a symlink", "foreign_owner": "owned by another user",
               "regular_file": "is not a directory"}
#: How each directory znni writes in the cache is first used.
DIR_USERS: dict[str, Callable[[], object]] = {
    "": config.cache_dir, "kernels": lambda: cache.lookup("0" * 64),
    "devices": lambda: device._cache_path(1)}


@pytest.mark.parametrize("how", UNSAFE_DIRS)
@pytest.mark.parametrize("sub", DIR_USERS)
def test_unsafe_cache_directories_are_refused(cache_root: Path, sub: str, how: str) -> None:
    if sub:
        config.cache_dir()
    _make_unsafe_dir(cache_root / sub, how)
    with pytest.raises(ZnniError, match="ZNNI_CACHE_DIR") as info:
        DIR_USERS[sub]()
    assert UNSAFE_DIRS[how] in info.value.message
    assert str(cache_root / sub) in info.value.message
    if how.endswith("writable"):
        assert info.value.hint.startswith(f"chmod 700 {cache_root / sub}")


def test_cache_directories_are_created_private(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "not" / "yet" / "there"
    monkeypatch.setenv("ZNNI_CACHE_DIR", str(root))
    for made in (config.cache_dir(), cache._kernel_dir(), device._cache_path(1).parent):
        assert made.is_relative_to(root) and stat.S_IMODE(made.stat().st_mode) == 0o700


def _compile(text: str, output: Path) -> bytes:
    """A shared object built from C++ ``text`` directly (not through znni)."""
    src = output.with_suffix(".cpp")
    src.write_text(text)
    subprocess.run([default_toolchain().cxx, "-shared", "-fPIC", str(src), "-o", str(output)],
                   check=True)
    return output.read_bytes()


def _planted_kernel(output: Path, marker: Path) -> bytes:
    """What an attacker plants: passes the ABI check, and its constructor runs on dlopen."""
    return _compile(f'#include <cstdio>\n__attribute__((constructor)) static void planted() {{\n'
                    f'  if (FILE *f = std::fopen("{marker}", "w")) std::fclose(f);\n}}\n'
                    'extern "C" int znni_abi_version() { return 1; }\n', output)


def _entry(kernels: Path, source: str, so: bytes | None) -> Path:
    """The .so path of ``source``'s entry; with ``so``, a manifest that matches those bytes."""
    key = cache.cache_key(source, default_toolchain())
    if so is not None:
        (kernels / f"{key}.json").write_text(
            json.dumps({"key": key, "sha256": hashlib.sha256(so).hexdigest()}))
    return kernels / f"{key}.so"


def _assert_private_file(path: Path) -> None:
    info = path.lstat()
    assert stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid()
    assert not info.st_mode & 0o022


@pytest.mark.parametrize("sub", ["", "kernels"])
def test_kernel_planted_in_a_shared_cache_never_runs(cache_root: Path, tmp_path: Path,
                                                     source: str, sub: str) -> None:
    kernels = cache_root / "kernels"
    kernels.mkdir(parents=True, mode=0o700)
    marker = tmp_path / "planted-code-ran"
    data = _planted_kernel(tmp_path / "planted.so", marker)
    so = _entry(kernels, source, data)
    so.write_bytes(data)
    (cache_root / sub).chmod(0o777)
    with pytest.raises(ZnniError, match="writable by others"):
        load_kernel(source, "planted")
    assert not marker.exists()


@pytest.mark.parametrize("how", ["group_writable", "foreign_owner", "symlink"])
def test_a_cached_kernel_that_is_not_private_is_replaced(cache_root: Path, tmp_path: Path,
                                                        source: str, how: str) -> None:
    marker = tmp_path / "planted-code-ran"
    planted = tmp_path / "planted.so"
    data = _planted_kernel(planted, marker)
    so = _entry(cache._kernel_dir(), source, data)
    if how == "symlink":
        so.symlink_to(planted)
    else:
        so.write_bytes(data)
    if how == "group_writable":
        so.chmod(0o775)
    elif how == "foreign_owner":
        _chown_to_someone_else(so)
    count = cache.compile_count
    module = load_kernel(source, "planted")
    assert module.lib.znni_abi_version() == 1 and cache.compile_count == count + 1
    assert not marker.exists()
    _assert_private_file(so)


def test_planted_symlinks_are_replaced_not_followed(cache_root: Path, tmp_path: Path,
                                                   source: str) -> None:
    victim, never = tmp_path / "victim", tmp_path / "never-created"
    victim.write_text("precious")
    so = _entry(cache._kernel_dir(), source, None)
    for suffix, target in ((".lock", never), (".cpp", victim), (".json", victim),
                           (".so", victim)):
        so.with_suffix(suffix).symlink_to(target)
    assert cache.lookup(so.stem) is None
    assert cache.build(source, default_toolchain(), "symlinks") == so
    assert victim.read_text() == "precious" and not never.exists()
    for suffix in (".lock", ".cpp", ".json", ".so"):
        _assert_private_file(so.with_suffix(suffix))
    assert cache.lookup(so.stem) == so


def test_symlinked_fftw_wisdom_is_replaced_not_followed(cache_root: Path,
                                                        tmp_path: Path) -> None:
    from znni.fft.fftw import fftw

    victim = tmp_path / "victim"
    victim.write_text("precious")
    wisdom = fftw().wisdom_path()
    wisdom.symlink_to(victim)
    fftw().save_wisdom()
    assert victim.read_text() == "precious"
    _assert_private_file(wisdom)


def test_symlinked_device_description_is_neither_read_nor_followed(
        cache_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    measured = device.Device.load("xeon-2core")
    calls: list[int] = []
    monkeypatch.delenv("ZNNI_DEVICE", raising=False)
    monkeypatch.setattr(device, "calibrate", lambda threads: calls.append(threads) or measured)
    victim = tmp_path / "victim.json"
    victim.write_text(measured.to_json())
    path = device._cache_path(2)
    path.symlink_to(victim)
    assert device.this_machine(2) == measured and calls == [2]  # not read through the link
    assert victim.read_text() == measured.to_json()
    _assert_private_file(path)
    assert device.this_machine(2) == measured and calls == [2]  # now read from the cache


def test_symlinked_tuning_records_are_replaced_not_followed(cache_root: Path,
                                                            tmp_path: Path) -> None:
    victim, never = tmp_path / "victim", tmp_path / "never-created"
    victim.write_text("{}")
    path = config.cache_dir() / "tuning.json"
    path.symlink_to(victim)
    path.with_name(".tuning.json.lock").symlink_to(never)
    TuningRecords().add({"k": Record(1.0, (1.0,), "measure", 1.0)})
    assert victim.read_text() == "{}" and not never.exists()
    _assert_private_file(path)
    assert TuningRecords().get("k", "measure") == Record(1.0, (1.0,), "measure", 1.0)


def test_a_directory_in_place_of_a_cached_kernel_is_replaced(cache_root: Path,
                                                             source: str) -> None:
    so = _entry(cache._kernel_dir(), source, b"")
    (so / "inside").mkdir(parents=True)
    assert load_kernel(source, "was a directory").lib.znni_abi_version() == 1
    _assert_private_file(so)


@pytest.mark.parametrize("content", ["unrelated_shared_object", "not_a_shared_object"])
def test_a_cached_kernel_that_does_not_load_is_rebuilt(cache_root: Path, tmp_path: Path,
                                                       source: str, content: str) -> None:
    if content == "unrelated_shared_object":  # loads, but has none of the ABI's symbols
        data = _compile('extern "C" int unrelated() { return 7; }\n', tmp_path / "other.so")
    else:
        data = b"\x7fELF but not really"
    so = _entry(cache._kernel_dir(), source, data)
    so.write_bytes(data)
    assert cache.lookup(so.stem) == so  # the checksum matches: only loading can tell
    count = cache.compile_count
    assert load_kernel(source, content).lib.znni_abi_version() == 1
    assert cache.compile_count == count + 1


@dataclass(frozen=True)
class _JunkToolchain:
    """A "compiler" whose output never loads."""

    fingerprint: str = "junk"

    def compile(self, source: Path, output: Path) -> None:
        output.write_bytes(b"not a shared object")


def test_a_kernel_that_never_loads_is_a_compile_error(cache_root: Path, source: str) -> None:
    count = cache.compile_count
    with pytest.raises(CompileError, match="cannot be loaded") as info:
        load_kernel(source, "junk", _JunkToolchain())
    assert "ZNNI_CXX" in info.value.hint and cache.compile_count == count + 2
