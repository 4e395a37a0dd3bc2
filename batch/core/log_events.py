"""Log lines that are events: `log.warning(..., extra=event("host_down", host=...))`.

With `--log-format json` each becomes one JSON object with its event's name and fields
(`batch/observe/json_logs.py`); the human format shows the message as before. Events only a
machine wants (each failed row) go to the `batch.events` logger, quiet in the human format.
"""

from __future__ import annotations

import logging
from typing import Any

EVENTS_LOGGER = "batch.events"
FIELDS = "batch_fields"

events_log = logging.getLogger(EVENTS_LOGGER)


def event(name: str, **fields: Any) -> dict[str, Any]:
    """The `extra` of a log call that is an event."""
    return {"event": name, FIELDS: fields}
