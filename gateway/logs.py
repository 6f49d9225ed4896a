"""Structured logs: one JSON object per line on stderr.

Fields: ``ts`` (UTC ISO-8601), ``level``, ``logger``, ``msg``, ``worker``, and ``call_sid`` /
``stream_sid`` when the record carries them (``extra=call._log_extra()``). A record may carry more
structured fields as ``extra={"fields": {...}}`` (the startup summary does); they are added at the
top level and never replace the fields above. Secrets never reach a record: settings are logged
through ``Settings.public()`` and tokens are never formatted.

picows logs "New connection accepted", "WS connection established" and "Disconnected" at INFO for
every socket, each on a child logger named after the socket's file descriptor
(``picows.server.17``). ``PicowsConnectionFilter`` (on the one handler) demotes those three to
DEBUG, and names every picows record after its parent logger with the descriptor as ``fd``.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import orjson

_CONTEXT_FIELDS = ("call_sid", "stream_sid", "fd")
_BASE_FIELDS = frozenset(("ts", "level", "logger", "msg", "worker", "exc", *_CONTEXT_FIELDS))
# picows' connection-level INFO lines (one or two per socket): DEBUG in the gateway's logs.
PICOWS_CONNECTION_MESSAGES = ("New connection accepted", "WS connection established", "Disconnected")


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: str | int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, Any] = {
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
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update({key: value for key, value in fields.items() if key not in _BASE_FIELDS})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class PicowsConnectionFilter(logging.Filter):
    """picows' per-connection INFO lines become DEBUG (dropped below ``threshold`` DEBUG), and
    ``picows.server.<fd>`` records are named ``picows.server`` with ``fd`` as a field."""

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("picows."):
            return True
        parent, _, last = record.name.rpartition(".")
        if last.isdigit():
            record.name = parent
            record.fd = int(last)
        if (record.levelno == logging.INFO and isinstance(record.msg, str)
                and record.msg.startswith(PICOWS_CONNECTION_MESSAGES)):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return self.threshold <= logging.DEBUG
        return True


def setup_logging(level: str = "INFO", worker: str | int | None = None, stream: TextIO | None = None) -> None:
    """Route every logger (ours, aiohttp's, picows') through one JSON handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(worker))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.setLevel(level.upper())
    handler.addFilter(PicowsConnectionFilter(root.level))
    root.addHandler(handler)
