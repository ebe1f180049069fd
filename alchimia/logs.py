"""Log output of every command: text lines, or one JSON object per line for log shippers
(journald, Loki, Elasticsearch). The JSON formatter is a few lines of the standard
library, so it needs no dependency (see README, "Dependencies")."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries whose routine lines would drown ours: one per HTTP request to InfluxDB.
QUIET = ("httpx", "httpcore")


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message"[, "exc"]}``; the message is a JSON string, so
    newlines or quotes in it can never forge another record."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for name in QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
