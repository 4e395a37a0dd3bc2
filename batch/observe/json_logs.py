"""`--log-format json`: every stderr line one JSON object, with a `time` and an `event`.

Log calls name their event and its fields (`batch.core.log_events.event`); a line with no
event of its own is `"event": "log"`, with its level and message.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from batch.core.log_events import FIELDS


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "event": getattr(record, "event", "log"),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        line.update(getattr(record, FIELDS, {}))
        if record.exc_info and record.levelno <= logging.DEBUG:  # -v: the traceback, as text
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)
