"""lbcdn.logs: the access log writes JSON lines off the loop, flushes on stop, follows
logrotate's rename + reopen, and drops (counting) rather than grows when the writer lags."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import pytest

from lbcdn.logs import AccessLog, LogLimiter, format_time, held_note, setup_logging
from lbcdn.metrics import REGISTRY


def record(i: int, **extra: object) -> dict[str, object]:
    rec: dict[str, object] = {
        "time": 1714564800.123456, "client": "127.0.0.1:5555", "method": "GET",
        "path": f"/p/{i}", "status": 200, "bytes_in": 80, "bytes_out": 1024, "route": "web",
        "target": "127.0.0.1:8080", "upstream_time_s": 0.001, "total_time_s": 0.002,
        "request_id": f"req-{i}", "listener": "http", "user_agent": "curl/8",
    }
    rec.update(extra)
    return rec


def read_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def dropped_total() -> float:
    return REGISTRY.get_sample_value("lbcdn_access_log_dropped_total") or 0.0


def test_format_time_is_iso_utc_with_ms() -> None:
    assert format_time(1714564800.123456) == "2024-05-01T12:00:00.123Z"
    assert format_time(0) == "1970-01-01T00:00:00.000Z"


def test_writes_json_lines_and_stop_flushes(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    alog = AccessLog(True, str(path))
    alog.start()
    for i in range(1000):
        alog.log(record(i))
    alog.stop()
    lines = read_lines(path)
    assert len(lines) == 1000
    assert [line["request_id"] for line in lines] == [f"req-{i}" for i in range(1000)]
    assert lines[0]["time"] == "2024-05-01T12:00:00.123Z"
    assert lines[0]["status"] == 200 and lines[0]["path"] == "/p/0"
    assert set(lines[0]) == set(record(0))


def test_appends_to_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text('{"old":1}\n')
    alog = AccessLog(True, str(path))
    alog.start()
    alog.log(record(1))
    alog.stop()
    assert [line.get("request_id") for line in read_lines(path)] == [None, "req-1"]


def test_string_time_and_odd_values_pass_through(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    alog = AccessLog(True, str(path))
    alog.start()
    alog.log(record(1, time="2024-01-01T00:00:00.000Z", path='/a"b\n\u00e9', target=None,
                    extra=Path("/x")))
    alog.log({1: "not a string key"})  # type: ignore[dict-item]
    alog.log(record(2))
    alog.stop()
    lines = read_lines(path)
    assert lines[0]["time"] == "2024-01-01T00:00:00.000Z"
    assert lines[0]["path"] == '/a"b\n\u00e9'
    assert lines[0]["target"] is None and lines[0]["extra"] == "/x"
    assert lines[2]["request_id"] == "req-2"


def test_disabled_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    alog = AccessLog(False, str(path))
    alog.start()
    alog.log(record(1))
    alog.stop()
    assert not path.exists()


def test_stdout_when_no_path(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    alog = AccessLog(True, None)
    alog.start()
    alog.log(record(7))
    alog.stop()
    assert json.loads(out.getvalue())["request_id"] == "req-7"


def test_reopen_after_rename_writes_to_new_file(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"
    alog = AccessLog(True, str(path))
    alog.start()
    alog.log(record(1))
    path.rename(rotated)  # what logrotate does before signalling
    alog.log(record(2))  # may still go to the renamed file: it is the open one
    alog.reopen()
    alog.log(record(3))
    alog.stop()
    assert [line["request_id"] for line in read_lines(rotated)] == ["req-1", "req-2"]
    assert [line["request_id"] for line in read_lines(path)] == ["req-3"]


def test_overflow_drops_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    before = dropped_total()
    # Not started yet: nothing drains, so the bound is what decides.
    alog = AccessLog(True, str(path), max_queue=3)
    for i in range(10):
        alog.log(record(i))
    assert alog.dropped == 7
    assert dropped_total() - before == 7
    alog.start()
    alog.stop()
    assert [line["request_id"] for line in read_lines(path)] == ["req-0", "req-1", "req-2"]


def test_log_after_stop_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    alog = AccessLog(True, str(path))
    alog.start()
    alog.stop()
    alog.log(record(1))
    assert alog._queue == type(alog._queue)()
    assert path.read_text() == ""


def test_write_failure_counts_drops_and_recovers(tmp_path: Path) -> None:
    logdir = tmp_path / "logs"
    logdir.mkdir()
    path = logdir / "access.log"
    alog = AccessLog(True, str(path))
    alog.start()
    logdir.rename(tmp_path / "gone")  # the open file moves with it; reopen then fails
    alog.reopen()
    alog.log(record(1))
    alog.stop()
    assert alog.dropped == 1
    assert not path.exists()


def test_setup_logging_one_line_per_record(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    try:
        setup_logging("warning")
        setup_logging("info")  # replaces, does not add a second handler
        logging.getLogger("lbcdn.test").debug("hidden")
        logging.getLogger("lbcdn.test").info("hello %s", "world")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("lbcdn.test").exception("failed")
        with pytest.raises(ValueError):
            setup_logging("loud")
    finally:
        for h in list(root.handlers):
            if h not in saved_handlers:
                root.removeHandler(h)
        root.setLevel(saved_level)
    lines = err.getvalue().splitlines()
    assert len(lines) == 2
    stamp, level, name, message = lines[0].split(" ", 3)
    assert stamp.endswith("Z") and "T" in stamp and len(stamp) == 24
    assert (level, name, message) == ("INFO", "lbcdn.test", "hello world")
    assert "RuntimeError: boom" in lines[1] and "\\n" in lines[1]


def test_log_limiter_lets_one_line_through_per_interval_and_counts_the_rest() -> None:
    limiter = LogLimiter(interval_s=10.0)
    assert limiter.allow("admin client", 100.0) == 0
    assert [limiter.allow("admin client", t) for t in (100.5, 105.0, 109.9)] == [None] * 3
    assert limiter.allow("s3 client", 101.0) == 0          # keys are independent
    assert limiter.allow("admin client", 110.0) == 3        # says how many were held back
    assert limiter.allow("admin client", 121.0) == 0
    assert held_note(3) == " (3 more since the last line)" and held_note(0) == ""
