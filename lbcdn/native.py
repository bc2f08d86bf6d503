"""The per-request modules, compiled with mypyc: build them, say which are built, remove them.

The hot paths (listener and upstream protocols, the exchange, HTTP heads, balancing, the access
log, metrics bookkeeping) are plain, fully typed Python. mypyc (the compiler mypy and black
ship with) turns those modules into C extensions written beside their sources, and Python
imports an extension in preference to the .py file. Interpreted, lbcdn does the same things,
only with more CPU per request; without a C compiler everything still runs.

An extension older than its source would run the old code, and one built by another mypyc,
C compiler or Python would not be the code this toolchain makes, so a build records a hash of
every source it compiled and the versions of what compiled it; `problems()` says what changed
since, and `lbcdn serve` and the test suite refuse to run on stale extensions.

LBCDN_NATIVE=0 in the environment makes Python ignore the extensions (lbcdn/__init__.py installs
a finder that returns the .py of each compiled module), so one tree runs either way: `make test`
runs the unit tests of the compiled modules a second time like that. LBCDN_NATIVE=1 requires
every module compiled; unset, what is built runs.

    python -m lbcdn.native build [--if-stale]   compile (needs a C compiler and Python.h)
    python -m lbcdn.native status               which modules run compiled; exit 1 if stale
    python -m lbcdn.native clean                remove the extensions: run interpreted
    python -m lbcdn.native tests                the unit tests of the compiled modules
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent
# The shared runtime of all compiled modules: lbcdn/_native__mypyc.<abi>.so (a dotted group
# name puts it inside the package instead of beside it).
GROUP = "lbcdn._native"
RECORD = PACKAGE / "_native.json"
ENV = "LBCDN_NATIVE"

# What runs for every request, and what those calls reach (balancer/sticky.py and plan.py hold
# frozen generic dataclasses, which mypyc cannot build, and stay interpreted).
MODULES = (
    "lbcdn/edge/connection.py",
    "lbcdn/edge/exchange.py",
    "lbcdn/edge/accounting.py",
    "lbcdn/edge/stream.py",
    "lbcdn/edge/listener.py",
    "lbcdn/edge/h2connection.py",
    "lbcdn/http/head.py",
    "lbcdn/http/response.py",
    "lbcdn/http/errors.py",
    "lbcdn/http/request_id.py",
    "lbcdn/upstream/connection.py",
    "lbcdn/upstream/pool.py",
    "lbcdn/upstream/targets.py",
    "lbcdn/balancer/base.py",
    "lbcdn/balancer/loaded.py",
    "lbcdn/balancer/round_robin.py",
    "lbcdn/balancer/random_choice.py",
    "lbcdn/balancer/consistent_hash.py",
    "lbcdn/balancer/least_outstanding.py",
    "lbcdn/balancer/policy.py",
    "lbcdn/balancer/retry.py",
    "lbcdn/balancer/slow_start.py",
    "lbcdn/routing/router.py",
    "lbcdn/routing/conditions.py",
    "lbcdn/memo.py",
    "lbcdn/writebatch.py",
    "lbcdn/timers.py",
    "lbcdn/metrics.py",
    "lbcdn/logs.py",
)


def _module(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def _suffix() -> str:
    return importlib.machinery.EXTENSION_SUFFIXES[0]


def _extension(path: str) -> Path:
    return ROOT / (path.removesuffix(".py") + _suffix())


def _shared_library() -> Path:
    return ROOT / (GROUP.replace(".", "/") + "__mypyc" + _suffix())


def _digest(path: str, root: Path | None = None) -> str:
    return hashlib.sha256(((root or ROOT) / path).read_bytes()).hexdigest()


def _cc() -> str:
    # what setuptools compiles with: $CC, else the compiler this Python was built with
    return (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]


def toolchain() -> dict[str, str]:
    """What the extensions' C code depends on besides the sources, as far as it is installed
    here: a runtime without mypy or a compiler (the Docker image) has only Python to compare."""
    tools = {"python": f"{platform.python_implementation()} {platform.python_version()}",
             "abi": str(sysconfig.get_config_var("SOABI"))}
    try:  # mypyc ships in mypy's distribution: mypy's version is mypyc's
        tools["mypy"] = importlib.metadata.version("mypy")
    except importlib.metadata.PackageNotFoundError:
        pass
    cc = shutil.which(_cc())
    if cc is not None:
        try:
            out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
        else:
            tools["cc"] = (out.stdout.splitlines() or ["?"])[0].strip()
    return tools


def _recorded() -> tuple[dict[str, str], dict[str, str]] | None:
    """(toolchain, source hashes) of the last build, or None without a readable record."""
    try:
        data = json.loads(RECORD.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    tools, sources = data.get("toolchain"), data.get("sources")
    if not isinstance(tools, dict) or not isinstance(sources, dict):
        return None  # no record, or one from before builds recorded their toolchain
    return ({str(k): str(v) for k, v in tools.items()},
            {str(k): str(v) for k, v in sources.items()})


def compiled() -> list[str]:
    """The modules that have an extension beside their source."""
    return [_module(p) for p in MODULES if _extension(p).exists()]


def problems() -> list[str]:
    """Why the extensions here must not run, one line each (none: they are what a build from
    these sources with this toolchain gives): running them would run other code than that."""
    built = [p for p in MODULES if _extension(p).exists()]
    if not built:
        return []
    recorded = _recorded()
    if recorded is None:
        return [f"no record of their build ({RECORD.name})"]
    tools, sources = recorded
    here = toolchain()
    out = [f"built with {name} {tools.get(name, '?')}, this is {name} {version}"
           for name, version in here.items() if tools.get(name) != version]
    out += [f"{_module(p)} (its source changed after the build)" for p in built
            if sources.get(p) != _digest(p)]
    return out


def mode() -> str:
    """LBCDN_NATIVE: "0" runs interpreted, "1" requires the compiled hot path, unset runs what
    is built."""
    return os.environ.get(ENV, "")


def refusal() -> str | None:
    """Why `lbcdn serve` and the test suite must not start on this hot path, or None."""
    if mode() not in ("", "0", "1"):
        return f"{ENV} must be 0 (run interpreted) or 1 (require compiled), not {mode()!r}"
    if mode() == "0":
        return None  # the extensions are not loaded, stale or not
    why = problems()
    if why:
        return (f"the compiled hot path is stale: {'; '.join(why)}: run `python -m lbcdn.native"
                " build` (or `clean` to run interpreted)")
    if mode() == "1" and len(compiled()) < len(MODULES):
        return (f"{ENV}=1 but the hot path is {describe()}: run `python -m lbcdn.native build`")
    return None


def source_spec(name: str) -> importlib.machinery.ModuleSpec | None:
    """The .py of a compiled module, for the finder that lbcdn/__init__.py puts before the path
    finder under LBCDN_NATIVE=0 (None: not a compiled module, found as usual)."""
    path = name.replace(".", "/") + ".py"
    return importlib.util.spec_from_file_location(name, ROOT / path) if path in MODULES else None


def describe() -> str:
    """One line for `lbcdn --version` and the startup log."""
    if mode() == "0":
        return f"interpreted ({ENV}=0)"
    done = compiled()
    if not done:
        return "interpreted"
    if len(done) < len(MODULES):
        return f"compiled: {len(done)} of {len(MODULES)} hot-path modules"
    return "compiled"


def tests() -> list[str]:
    """The unit tests of the compiled modules, as tests/ mirrors lbcdn/ (a package's whole test
    directory, a top-level module's test file), and this module's own; those that exist."""
    out: dict[str, None] = {}
    for p in MODULES:
        mirror = Path("tests", *Path(p).parts[1:-1], "test_" + Path(p).name)
        out[str(mirror if len(Path(p).parts) == 2 else mirror.parent)] = None
    out["tests/test_native.py"] = None
    return [t for t in out if (ROOT / t).exists()]


def clean() -> None:
    for p in MODULES:
        _extension(p).unlink(missing_ok=True)
    _shared_library().unlink(missing_ok=True)
    RECORD.unlink(missing_ok=True)


def compiler_missing() -> str | None:
    """Why a build cannot run here, or None."""
    cc = _cc()
    if shutil.which(cc) is None:
        return f"no C compiler ({cc})"
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").exists():
        return f"no Python headers ({include}/Python.h; Debian: python3-dev)"
    try:
        import mypyc  # noqa: F401
    except ImportError:
        return "mypyc is not installed (pip install mypy)"
    return None


def build() -> None:
    """Compile MODULES and put the extensions beside their sources. Old extensions go first, so
    that a failed build leaves an interpreted tree, never a half-old one."""
    from mypyc.build import mypycify
    from setuptools import setup

    clean()
    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="lbcdn-native-") as tmp:
        # A copy of the package, compiled in a directory of its own: mypyc names modules by
        # their path from the working directory, and in an installed package that directory
        # would be site-packages, whose other modules mypy would then take for ours.
        src = Path(tmp) / "src"
        shutil.copytree(PACKAGE, src / "lbcdn",
                        ignore=shutil.ignore_patterns("*.so", "__pycache__", RECORD.name))
        # Only the C code matters here (`make typecheck` is the strict check): one fixed
        # config, not whatever pyproject.toml mypy would find above the working directory.
        config = Path(tmp) / "mypy.ini"
        config.write_text("[mypy]\nignore_missing_imports = True\n")
        os.chdir(src)
        try:
            extensions = mypycify(["--config-file", str(config), *MODULES], opt_level="3",
                                  group_name=GROUP, target_dir=os.path.join(tmp, "c"))
            setup(name="lbcdn-native", ext_modules=extensions,
                  script_args=["-q", "build_ext", "--inplace", "--build-temp",
                               os.path.join(tmp, "o"), "--build-lib", os.path.join(tmp, "lib")])
        finally:
            os.chdir(here)
        for built in (*map(_extension, MODULES), _shared_library()):
            shutil.copy2(src / built.relative_to(ROOT), built)
        # the sources as compiled: a file edited during the build then reads as stale
        sources = {p: _digest(p, src) for p in MODULES}
    RECORD.write_text(json.dumps({"toolchain": toolchain(), "sources": sources},
                                 indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lbcdn.native", description=__doc__.split(
        "\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compile the hot-path modules in place")
    b.add_argument("--if-stale", action="store_true",
                   help="only when a module is not compiled or its source changed")
    b.add_argument("--optional", action="store_true",
                   help="without a C compiler, say so and exit 0 (lbcdn runs interpreted)")
    sub.add_parser("status", help="which modules run compiled; exit 1 if any is stale")
    sub.add_parser("clean", help="remove the extensions")
    sub.add_parser("tests", help="print the unit tests of the compiled modules")
    args = parser.parse_args(argv)
    if args.command == "clean":
        clean()
        return 0
    if args.command == "tests":
        found = tests()
        print(" ".join(found))
        return 0 if found else 1  # never an empty list, which would make pytest run everything
    if args.command == "status":
        print(f"lbcdn hot path: {describe()}")
        recorded = _recorded()
        if compiled() and recorded is not None:
            print("built with: " + ", ".join(f"{k} {v}" for k, v in recorded[0].items()))
        old = problems()
        for line in old:
            print(f"stale: {line}")
        return 1 if old else 0
    if args.if_stale and len(compiled()) == len(MODULES) and not problems():
        return 0
    why = compiler_missing()
    if why is not None:
        print(f"lbcdn.native: cannot compile the hot path: {why}", file=sys.stderr)
        if args.optional:
            clean()  # never leave extensions older than their sources
            print("lbcdn.native: lbcdn runs interpreted (same behaviour, more CPU per request)",
                  file=sys.stderr)
            return 0
        return 1
    build()
    print(f"lbcdn hot path: {describe()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
