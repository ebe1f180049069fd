"""JSON log lines: one record per line whatever the message holds; httpx kept quiet."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from alchimia.logs import JsonFormatter, configure


def test_a_newline_in_a_message_stays_inside_one_json_line() -> None:
    record = logging.LogRecord(
        "alchimia.agent",
        logging.WARNING,
        __file__,
        1,
        "rejected %s",
        ("spec key 'a\n2026 ERROR forged'",),
        None,
    )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["level"] == "WARNING" and parsed["logger"] == "alchimia.agent"
    assert parsed["message"] == "rejected spec key 'a\n2026 ERROR forged'"


def test_exceptions_travel_in_the_record() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), None)
        record.exc_info = sys.exc_info()
    parsed = json.loads(JsonFormatter().format(record))
    assert "RuntimeError: boom" in parsed["exc"]


def test_configure_json_and_quiet_httpx(capsys: pytest.CaptureFixture[str]) -> None:
    configure("DEBUG", "json")
    try:
        logging.getLogger("httpx").info("HTTP Request: POST http://127.0.0.1:8086/write")
        logging.getLogger("alchimia.test").info("kept")
        err = capsys.readouterr().err.strip().splitlines()
        assert [json.loads(line)["message"] for line in err] == ["kept"]
    finally:
        configure("WARNING", "text")
