"""The per-request modules, compiled with mypyc: build them, say which are built, remove them.

The hot paths (listener and upstream protocols, the exchange, HTTP heads, balancing, the access
log, metrics bookkeeping) are plain, fully typed Python. mypyc (the compiler mypy and black
ship with) turns those modules into C extensions written beside their sources, and Python
imports an extension in preference to the .py file. Interpreted, lbcdn does the same things,
only with more CPU per request; without a C compiler everything still runs.

An extension older than its source would run the old code, so a build records a hash of every
source it compiled; `stale()` names the modules whose source changed since, and `lbcdn serve`
and the test suite refuse to run on stale extensions.

    python -m lbcdn.native build [--if-stale]   compile (needs a C compiler and Python.h)
    python -m lbcdn.native status               which modules run compiled; exit 1 if stale
    python -m lbcdn.native clean                remove the extensions: run interpreted
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.machinery
import json
import os
import shutil
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

# What runs for every request, and what those calls reach (balancer/sticky.py and plan.py hold
# frozen generic dataclasses, which mypyc cannot build, and stay interpreted).
MODULES = (
    "lbcdn/edge/connection.py",
    "lbcdn/edge/exchange.py",
    "lbcdn/edge/accounting.py",
    "lbcdn/edge/stream.py",
    "lbcdn/edge/listener.py",
    "lbcdn/http/head.py",
    "lbcdn/http/response.py",
    "lbcdn/http/errors.py",
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


def _digest(path: str) -> str:
    return hashlib.sha256((ROOT / path).read_bytes()).hexdigest()


def _recorded() -> dict[str, str]:
    try:
        data = json.loads(RECORD.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def compiled() -> list[str]:
    """The modules that have an extension beside their source."""
    return [_module(p) for p in MODULES if _extension(p).exists()]


def stale() -> list[str]:
    """Modules whose extension was built from another source than the one beside it (or that
    has no record of its build): running them would run old code."""
    recorded = _recorded()
    return [_module(p) for p in MODULES
            if _extension(p).exists() and recorded.get(p) != _digest(p)]


def describe() -> str:
    """One line for `lbcdn --version` and the startup log."""
    done = compiled()
    if not done:
        return "interpreted"
    if len(done) < len(MODULES):
        return f"compiled: {len(done)} of {len(MODULES)} hot-path modules"
    return "compiled"


def clean() -> None:
    for p in MODULES:
        _extension(p).unlink(missing_ok=True)
    _shared_library().unlink(missing_ok=True)
    RECORD.unlink(missing_ok=True)


def compiler_missing() -> str | None:
    """Why a build cannot run here, or None."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
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
    RECORD.write_text(json.dumps({p: _digest(p) for p in MODULES}, indent=1) + "\n")


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
    args = parser.parse_args(argv)
    if args.command == "clean":
        clean()
        return 0
    if args.command == "status":
        old = stale()
        print(f"lbcdn hot path: {describe()}")
        for name in old:
            print(f"stale: {name} (its source changed after the build)")
        return 1 if old else 0
    if args.if_stale and len(compiled()) == len(MODULES) and not stale():
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
