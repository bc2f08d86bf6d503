"""native: the hot path runs compiled after `make test`'s build, an extension whose source
changed is reported stale (and `lbcdn serve` refuses to run it), and a machine without a C
compiler runs interpreted, never on leftovers of an old build."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lbcdn import cli, native


def test_every_hot_path_module_runs_compiled() -> None:
    # make test builds before pytest; an interpreted module here means the build did not take
    missing = [m for m in (native._module(p) for p in native.MODULES)
               if not str(importlib.import_module(m).__file__).endswith(native._suffix())]
    assert missing == []
    assert native.describe() == "compiled" and native.stale() == []


def test_status_and_version_say_compiled() -> None:
    status = subprocess.run([sys.executable, "-m", "lbcdn.native", "status"],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and status.stdout == "lbcdn hot path: compiled\n"
    version = subprocess.run([sys.executable, "-m", "lbcdn", "--version"],
                             capture_output=True, text=True, timeout=60)
    assert version.stdout.strip().endswith("(hot path compiled)")


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake checkout with two 'compiled' modules, built from the sources beside them."""
    monkeypatch.setattr(native, "ROOT", tmp_path)
    monkeypatch.setattr(native, "RECORD", tmp_path / "lbcdn" / "_native.json")
    monkeypatch.setattr(native, "MODULES", ("lbcdn/a.py", "lbcdn/sub/b.py"))
    for path in native.MODULES:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(f"# {path}\n")
        native._extension(path).write_bytes(b"\x7fELF")
    native._shared_library().write_bytes(b"\x7fELF")
    native.RECORD.write_text(json.dumps({p: native._digest(p) for p in native.MODULES}))
    return tmp_path


def test_extensions_built_from_their_sources_are_not_stale(tree: Path) -> None:
    assert native.compiled() == ["lbcdn.a", "lbcdn.sub.b"]
    assert native.stale() == []


def test_a_changed_source_makes_its_extension_stale(tree: Path) -> None:
    (tree / "lbcdn/sub/b.py").write_text("# edited\n")
    assert native.stale() == ["lbcdn.sub.b"]


def test_extensions_without_a_build_record_are_stale(tree: Path) -> None:
    native.RECORD.unlink()
    assert native.stale() == ["lbcdn.a", "lbcdn.sub.b"]
    native.RECORD.write_text("not json")
    assert native.stale() == ["lbcdn.a", "lbcdn.sub.b"]


def test_describe_counts_what_is_compiled(tree: Path) -> None:
    assert native.describe() == "compiled"
    native._extension("lbcdn/a.py").unlink()
    assert native.describe() == "compiled: 1 of 2 hot-path modules"
    native.clean()
    assert native.describe() == "interpreted"


def test_clean_removes_every_extension_and_the_record(tree: Path) -> None:
    native.clean()
    assert sorted(p.name for p in tree.rglob("*") if p.is_file()) == ["a.py", "b.py"]


def test_status_exits_1_and_names_stale_modules(tree: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tree / "lbcdn/a.py").write_text("# edited\n")
    assert native.main(["status"]) == 1
    assert "stale: lbcdn.a (its source changed after the build)" in capsys.readouterr().out


def test_without_a_compiler_optional_build_cleans_and_runs_interpreted(
        tree: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(native, "compiler_missing", lambda: "no C compiler (cc)")
    (tree / "lbcdn/a.py").write_text("# edited\n")
    assert native.main(["build", "--if-stale", "--optional"]) == 0
    assert native.compiled() == [] and native.stale() == []  # no old code left to run
    assert "no C compiler (cc)" in capsys.readouterr().err
    assert native.main(["build"]) == 1  # not optional: a missing compiler is an error


def test_if_stale_does_nothing_when_everything_is_current(
        tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def build() -> None:
        raise AssertionError("rebuilt although nothing changed")
    monkeypatch.setattr(native, "build", build)
    assert native.main(["build", "--if-stale"]) == 0


def test_serve_refuses_stale_extensions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(native, "stale", lambda: ["lbcdn.edge.exchange"])
    assert cli.main(["serve", "--config", str(tmp_path / "none.yaml")]) == 1
    err = capsys.readouterr().err
    assert "older than their sources (lbcdn.edge.exchange)" in err
    assert "python -m lbcdn.native build" in err
