"""native: the hot path runs compiled after `make test`'s build and interpreted under
LBCDN_NATIVE=0 (`make test` runs this file both ways); an extension whose source changed or that
another mypy, C compiler or Python built is reported stale (and `lbcdn serve` refuses to run it),
and a machine without a C compiler runs interpreted, never on leftovers of an old build."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from lbcdn import cli, native

NAMES = [native._module(p) for p in native.MODULES]
TOOLS = {"python": "CPython 3.11.2", "abi": "cpython-311-x86_64-linux-gnu", "mypy": "2.4.1",
         "cc": "gcc (Debian 12.2.0-14) 12.2.0"}


def _loaded_compiled(name: str) -> bool:
    return str(importlib.import_module(name).__file__).endswith(native._suffix())


def test_the_hot_path_runs_as_lbcdn_native_says() -> None:
    # make test: compiled (LBCDN_NATIVE=1: the build must have taken), then interpreted
    # (LBCDN_NATIVE=0: the extensions are there but must not be loaded); unset: what is built
    loaded = {m: _loaded_compiled(m) for m in NAMES}
    built = set(native.compiled())
    assert loaded == {m: native.mode() != "0" and m in built for m in NAMES}
    if native.mode() == "1":
        assert all(loaded.values()) and native.describe() == "compiled"
    if native.mode() == "0":
        assert "lbcdn._native__mypyc" not in sys.modules  # the shared runtime either
        assert native.describe() == "interpreted (LBCDN_NATIVE=0)"
    if built:  # what is built was built by this toolchain from these sources
        assert native.problems() == []


def test_lbcdn_native_0_imports_the_sources_in_any_process() -> None:
    code = ("import lbcdn.edge.exchange as e, lbcdn.cli, sys; "
            "print(e.__file__, 'lbcdn._native__mypyc' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != native.ENV}
    off = subprocess.run([sys.executable, "-c", code], env={**env, native.ENV: "0"},
                         capture_output=True, text=True, timeout=60, check=True)
    assert off.stdout == f"{native.ROOT / 'lbcdn/edge/exchange.py'} False\n"
    on = subprocess.run([sys.executable, "-c", code], env=env,
                        capture_output=True, text=True, timeout=60, check=True)
    built = native._extension("lbcdn/edge/exchange.py")
    assert on.stdout == (f"{built} True\n" if built.exists()
                         else f"{native.ROOT / 'lbcdn/edge/exchange.py'} False\n")


def test_status_and_version_say_how_the_hot_path_runs() -> None:
    status = subprocess.run([sys.executable, "-m", "lbcdn.native", "status"],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and status.stderr == ""
    lines = status.stdout.splitlines()
    assert lines[0] == f"lbcdn hot path: {native.describe()}"
    if native.compiled():  # the toolchain of the build, this one
        assert lines[1:] == ["built with: " + ", ".join(
            f"{k} {v}" for k, v in native.toolchain().items())]
    version = subprocess.run([sys.executable, "-m", "lbcdn", "--version"],
                             capture_output=True, text=True, timeout=60)
    assert version.stdout.strip().endswith(f"(hot path {native.describe()})")


def test_the_toolchain_is_the_one_installed_here() -> None:
    tools = native.toolchain()
    assert tools["python"] == f"{platform.python_implementation()} {platform.python_version()}"
    assert native._suffix().startswith(f".{tools['abi']}.")
    assert tools["mypy"] == importlib.metadata.version("mypy")  # mypyc is mypy's
    assert tools["cc"]  # make test installs gcc: its --version line


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake checkout with two 'compiled' modules, built from the sources beside them by the
    toolchain here (TOOLS), with LBCDN_NATIVE unset."""
    monkeypatch.delenv(native.ENV, raising=False)
    monkeypatch.setattr(native, "toolchain", lambda: dict(TOOLS))
    monkeypatch.setattr(native, "ROOT", tmp_path)
    monkeypatch.setattr(native, "RECORD", tmp_path / "lbcdn" / "_native.json")
    monkeypatch.setattr(native, "MODULES", ("lbcdn/a.py", "lbcdn/sub/b.py"))
    for path in native.MODULES:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(f"# {path}\n")
        native._extension(path).write_bytes(b"\x7fELF")
    native._shared_library().write_bytes(b"\x7fELF")
    _record(TOOLS)
    return tmp_path


def _record(tools: dict[str, str]) -> None:
    native.RECORD.write_text(json.dumps({
        "toolchain": tools, "sources": {p: native._digest(p) for p in native.MODULES}}))


def test_extensions_built_from_their_sources_are_not_stale(tree: Path) -> None:
    assert native.compiled() == ["lbcdn.a", "lbcdn.sub.b"]
    assert native.problems() == [] and native.refusal() is None


def test_a_changed_source_makes_its_extension_stale(tree: Path) -> None:
    (tree / "lbcdn/sub/b.py").write_text("# edited\n")
    assert native.problems() == ["lbcdn.sub.b (its source changed after the build)"]


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_extensions_another_toolchain_built_are_stale(tree: Path, tool: str) -> None:
    _record({**TOOLS, tool: "0.9"})
    assert native.problems() == [f"built with {tool} 0.9, this is {tool} {TOOLS[tool]}"]
    refusal = native.refusal()
    assert refusal is not None and f"built with {tool} 0.9" in refusal


def test_a_tool_not_installed_here_is_not_compared(tree: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # the Docker image runs what its build stage compiled, without mypy or a C compiler
    monkeypatch.setattr(native, "toolchain", lambda: {"python": TOOLS["python"],
                                                      "abi": TOOLS["abi"]})
    assert native.problems() == []


def test_extensions_without_a_build_record_are_stale(tree: Path) -> None:
    stale = ["no record of their build (_native.json)"]
    native.RECORD.unlink()
    assert native.problems() == stale
    native.RECORD.write_text("not json")
    assert native.problems() == stale
    # a record from before builds recorded their toolchain: source hashes only
    native.RECORD.write_text(json.dumps({p: native._digest(p) for p in native.MODULES}))
    assert native.problems() == stale


def test_describe_counts_what_is_compiled(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert native.describe() == "compiled"
    monkeypatch.setenv(native.ENV, "0")
    assert native.describe() == "interpreted (LBCDN_NATIVE=0)"
    monkeypatch.delenv(native.ENV)
    native._extension("lbcdn/a.py").unlink()
    assert native.describe() == "compiled: 1 of 2 hot-path modules"
    native.clean()
    assert native.describe() == "interpreted"


def test_lbcdn_native_says_what_must_run(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tree / "lbcdn/a.py").write_text("# edited\n")
    monkeypatch.setenv(native.ENV, "0")
    assert native.refusal() is None  # stale, but not loaded
    monkeypatch.setenv(native.ENV, "1")
    assert "lbcdn.a (its source changed" in str(native.refusal())
    native._extension("lbcdn/a.py").unlink()
    assert native.refusal() == ("LBCDN_NATIVE=1 but the hot path is compiled: 1 of 2 hot-path "
                                "modules: run `python -m lbcdn.native build`")
    monkeypatch.setenv(native.ENV, "yes")
    assert native.refusal() == ("LBCDN_NATIVE must be 0 (run interpreted) or 1 (require "
                                "compiled), not 'yes'")


def test_source_spec_finds_the_py_of_compiled_modules_only() -> None:
    spec = native.source_spec("lbcdn.edge.exchange")
    assert spec is not None and spec.origin == str(native.ROOT / "lbcdn/edge/exchange.py")
    assert native.source_spec("lbcdn.cli") is None  # not compiled: found as usual


def test_the_unit_tests_of_the_compiled_modules_mirror_them(
        tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert native.main(["tests"]) == 1  # none: never an empty list (pytest would run all)
    for path in ("tests/test_a.py", "tests/sub/test_other.py", "tests/test_native.py"):
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_text("")
    capsys.readouterr()
    assert native.main(["tests"]) == 0
    assert capsys.readouterr().out == "tests/test_a.py tests/sub tests/test_native.py\n"


def test_the_real_unit_tests_of_the_compiled_modules() -> None:
    found = native.tests()
    assert {"tests/edge", "tests/http", "tests/test_writebatch.py", "tests/test_native.py"} <= set(
        found)
    assert not any(t.startswith("tests/e2e") for t in found)


def test_clean_removes_every_extension_and_the_record(tree: Path) -> None:
    native.clean()
    assert sorted(p.name for p in tree.rglob("*") if p.is_file()) == ["a.py", "b.py"]


def test_status_shows_the_toolchain_and_exits_1_naming_why_stale(
        tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _record({**TOOLS, "mypy": "1.0"})
    (tree / "lbcdn/a.py").write_text("# edited\n")
    assert native.main(["status"]) == 1
    assert capsys.readouterr().out == (
        "lbcdn hot path: compiled\n"
        "built with: python CPython 3.11.2, abi cpython-311-x86_64-linux-gnu, mypy 1.0, "
        "cc gcc (Debian 12.2.0-14) 12.2.0\n"
        "stale: built with mypy 1.0, this is mypy 2.4.1\n"
        "stale: lbcdn.a (its source changed after the build)\n")


def test_without_a_compiler_optional_build_cleans_and_runs_interpreted(
        tree: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(native, "compiler_missing", lambda: "no C compiler (cc)")
    (tree / "lbcdn/a.py").write_text("# edited\n")
    assert native.main(["build", "--if-stale", "--optional"]) == 0
    assert native.compiled() == [] and native.problems() == []  # no old code left to run
    assert "no C compiler (cc)" in capsys.readouterr().err
    assert native.main(["build"]) == 1  # not optional: a missing compiler is an error


def test_if_stale_does_nothing_when_everything_is_current(
        tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def build() -> None:
        raise AssertionError("rebuilt although nothing changed")
    monkeypatch.setattr(native, "build", build)
    assert native.main(["build", "--if-stale"]) == 0


def test_serve_refuses_stale_extensions_naming_why(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(native.ENV, raising=False)
    monkeypatch.setattr(native, "problems", lambda: ["built with mypy 1.0, this is mypy 2.4.1"])
    assert cli.main(["serve", "--config", str(tmp_path / "none.yaml")]) == 1
    assert capsys.readouterr().err == (
        "lbcdn serve: the compiled hot path is stale: built with mypy 1.0, this is mypy 2.4.1: "
        "run `python -m lbcdn.native build` (or `clean` to run interpreted)\n")
