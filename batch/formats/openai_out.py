"""A row's result -> an OpenAI Batch output line (`BatchRequestOutput`), so code written to read
OpenAI batch results reads ours unchanged:

    {"id": "batch_req_...", "custom_id": "r1",
     "response": {"status_code": 200, "request_id": "req_...", "body": <chat.completion>},
     "error": null,
     "batch": <the native record: validated output, attempts, usage, timings, config>}

A failed row has `"response": null` and `"error": {"code": <error type>, "message": ...}`.
`batch` is an extra field, which OpenAI's own client models accept; resume reads it.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from batch.label import RowResult
from batch.rows import id_key

EXTRAS = "batch"


def openai_record(result: RowResult, fingerprint: str) -> dict[str, Any]:
    native = result.as_record(fingerprint)
    # Ids derived from the settings and the row, not random: a rerun writes the same ids.
    digest = hashlib.sha256(f"{fingerprint}/{id_key(result.row.id)}".encode()).hexdigest()[:24]
    record: dict[str, Any] = {
        "id": f"batch_req_{digest}",
        "custom_id": str(result.row.id),  # OpenAI's custom_id is always a string
        "response": None,
        "error": None,
    }
    if result.failure is None:
        record["response"] = {
            "status_code": 200,
            "request_id": f"req_{digest}",
            "body": _chat_completion(result, digest, fingerprint),
        }
    else:
        record["error"] = {"code": result.failure.kind, "message": result.failure.message}
    record[EXTRAS] = native
    return record


def _chat_completion(result: RowResult, digest: str, fingerprint: str) -> dict[str, Any]:
    usage = result.usage
    request = result.row.request
    return {
        "id": f"chatcmpl-{digest}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model if request is not None else "",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.content or "", "refusal": None},
                "logprobs": None,
                "finish_reason": "length" if result.done_reason == "length" else "stop",
            }
        ],
        # Summed over every attempt of the row, re-asks included: what the row cost.
        "usage": {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
        },
        "system_fingerprint": f"batch-{fingerprint}",
    }


def native_view(record: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The native record inside an output line, and the line's format (`native`/`openai`)."""
    extras = record.get(EXTRAS)
    if "custom_id" in record and isinstance(extras, dict):
        return extras, "openai"
    return record, "native"
