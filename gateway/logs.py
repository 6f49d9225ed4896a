"""Structured logs: one JSON object per line on stderr.

Fields: ``ts`` (UTC ISO-8601), ``level``, ``logger``, ``msg``, ``worker``, and ``call_sid`` /
``stream_sid`` when the record carries them (``extra=call._log_extra()``). Secrets never reach a
record: settings are logged through ``Settings.public()`` and tokens are never formatted.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

import orjson

_CONTEXT_FIELDS = ("call_sid", "stream_sid")


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: str | int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "worker": self.worker,
        }
        for field in _CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                out[field] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def setup_logging(level: str = "INFO", worker: str | int | None = None, stream: TextIO | None = None) -> None:
    """Route every logger (ours, aiohttp's, picows') through one JSON handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(worker))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
