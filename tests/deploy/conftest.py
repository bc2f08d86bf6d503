"""The container image that test_image.py runs takes minutes to build from nothing (as in CI),
mostly on one core. So its build starts as soon as the session has collected those tests, in
the background at the lowest CPU priority (it gets what the other tests leave idle), and those
tests run last: the build overlaps the rest of the suite instead of adding to it."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from tests.deploy.helpers import REPO

IMAGE_TESTS = Path(__file__).with_name("test_image.py")


@dataclass
class Build:
    """`make image`, running or done; its output in `log`."""

    log: IO[bytes] = field(default_factory=tempfile.TemporaryFile)
    started: float = field(default_factory=time.monotonic)
    proc: subprocess.Popen[bytes] = field(init=False)

    def __post_init__(self) -> None:
        self.proc = subprocess.Popen(
            ["nice", "-n", "19", "make", "--no-print-directory", "image"], cwd=REPO,
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def wait(self, timeout_s: float) -> tuple[int, str]:
        """Exit status and the output's last lines."""
        code = self.proc.wait(timeout_s)
        self.log.seek(0)
        return code, self.log.read().decode(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


BUILD = pytest.StashKey[Build]()


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected what they do
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    image = [item for item in items if item.path == IMAGE_TESTS]
    if image and not config.option.collectonly:
        items[:] = [item for item in items if item.path != IMAGE_TESTS] + image
        config.stash[BUILD] = Build()


def pytest_unconfigure(config: pytest.Config) -> None:
    build = config.stash.get(BUILD, None)
    if build is not None:  # a session cut short must not leave the build running
        build.stop()
