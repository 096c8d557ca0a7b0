"""Logging: one line per event, as text or JSON; rate-limited warnings; the query log.

- Every record is one line. Text is `time level logger: message key=value...`;
  JSON is one object per line with the same fields, for log pipelines. A
  traceback is folded into the same line (escaped newlines), so a line-based
  collector never splits one event into several.
- Structured fields travel as `extra={"fields": {...}}` and are rendered by
  both formats (`key=value` in text, keys in JSON).
- `Throttle` keeps a repeated error (an upstream outage, a failing readiness
  check) to one line per interval, saying how many were suppressed.
- `QueryLog` writes one line per answered query, sampled or errors only.
  Listeners only call it when it is configured (they swap their receive
  method at construction), so with the query log off the hit path does not
  even test a flag.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from typing import Any, TextIO

from nodecache import wire
from nodecache.dnstext import rcode_name, type_name
from nodecache.names import name_text

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
QUERY_LOGGER = "nodecache.query"
TEXT_LAYOUT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DEFAULT_THROTTLE = 5.0  # seconds between two lines about the same trouble
ERROR_RCODES = frozenset((wire.SERVFAIL, wire.NXDOMAIN))


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


def _one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _text_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\\\n'):
        return json.dumps(text)
    return text


class TextFormatter(logging.Formatter):
    """`time level logger: message key=value ...`, always on one line."""

    def __init__(self) -> None:
        super().__init__(TEXT_LAYOUT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)  # includes a traceback when there is one
        extra = " ".join(f"{k}={_text_value(v)}" for k, v in _fields(record).items())
        if extra:
            head, sep, tail = line.partition("\n")
            line = f"{head} {extra}{sep}{tail}"
        return _one_line(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC), level, logger, msg, fields."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, Any] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _fields(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"), default=str)


def setup(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Configure the root logger once: level, format, stderr."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


class Throttle:
    """Let through one message per `interval` for each key; count the rest.

    `allow` answers whether to log now and, if so, how many messages were
    held back since the last one, so the line can say so.
    """

    def __init__(self, interval: float = DEFAULT_THROTTLE) -> None:
        self.interval = interval
        self._last: dict[Any, float] = {}
        self._held: dict[Any, int] = {}

    def allow(self, key: Any, now: float) -> tuple[bool, int]:
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False, 0
        self._last[key] = now
        return True, self._held.pop(key, 0)

    def warning(self, logger: logging.Logger, key: Any, now: float, msg: str, *args: Any) -> None:
        """logger.warning(msg, *args) unless the same key was logged within the interval."""
        ok, held = self.allow(key, now)
        if ok:
            more = f" ({held} more since the last message)" if held else ""
            logger.warning(msg + more, *args)


class QueryLog:
    """One line per answered query: client, name, type, rcode, cache outcome, duration.

    `sample` is the share of queries logged (1.0: all); `errors_only` keeps
    SERVFAIL and NXDOMAIN answers only. The decision is made after the
    answer, since it depends on its rcode.
    """

    def __init__(self, sample: float = 1.0, errors_only: bool = False) -> None:
        self.sample = sample
        self.errors_only = errors_only
        self.logger = logging.getLogger(QUERY_LOGGER)
        self._rng = random.Random()

    def wants(self, reply: bytes) -> bool:
        """Whether a query answered with `reply` is to be logged."""
        if self.errors_only and (len(reply) < wire.HEADER_LEN or reply[3] & 0x0F not in ERROR_RCODES):
            return False
        return self.sample >= 1.0 or self._rng.random() < self.sample

    def record(self, client: Any, query: bytes, reply: bytes, outcome: str, proto: str, seconds: float) -> None:
        """Log one query (the caller checked `wants`)."""
        try:
            q = wire.scan_query(query)
            name, qtype = name_text(q.lname), type_name(q.key[-5] << 8 | q.key[-4])
        except wire.Malformed:
            name, qtype = "", ""
        host, port = (client[0], client[1]) if isinstance(client, tuple) and len(client) >= 2 else (str(client), 0)
        rcode = rcode_name(reply[3] & 0x0F) if len(reply) >= wire.HEADER_LEN else ""
        self.logger.info(
            "query",
            extra={
                "fields": {
                    "client": host,
                    "port": port,
                    "proto": proto,
                    "name": name,
                    "type": qtype,
                    "rcode": rcode,
                    "cache": outcome,
                    "duration_ms": round(seconds * 1e3, 3),
                }
            },
        )
