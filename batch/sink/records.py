"""The output record: how a row's result is written, and how a line is read back.

Native lines (one JSON object a row; keys in this order, which resume relies on):

    {"id": …, "line": N, "id_from_line": true (for a row that gives no id: its id is N),
     "status": "ok"|"error", "output"|"error": …, "confidence": {…} (with --logprobs, or a
     panel's), "agreement": {…}, "votes": […] (a panel's: labelling/votes.py),
     "attempts": …, "usage": {…}, "model": …, "host": …, "done_reason": …,
     "durations_ns": {…}, "elapsed_s": …, "trace_id": … (with OpenTelemetry),
     "config": "<fingerprint>",
     "input_digest": "<16 hex digits>"}

(`same_as` or `cached` come after `usage` on rows whose result was reused.)

OpenAI lines (`--output-format openai`) wrap that record as OpenAI's `BatchRequestOutput`, so
code written to read OpenAI batch results reads ours unchanged:

    {"id": "batch_req_...", "custom_id": "r1",
     "response": {"status_code": 200, "request_id": "req_...", "body": <chat.completion>},
     "error": null, "batch": <the native record>}

A failed row has `"response": null` and `"error": {"code": <error type>, "message": ...}`.
`batch` is an extra field, which OpenAI's own client models accept; resume reads it.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any, Literal

from batch.core.digest import DIGEST_HEX, short
from batch.core.errors import Cause, ConfigError, InvalidOutput, SettingsChanged
from batch.core.jsontext import dumps_line
from batch.core.rows import ID_FROM_LINE, LineId, RowResult, id_key, id_of_record

OutputFormat = Literal["native", "openai"]
EXTRAS = "batch"  # the OpenAI line's key for the native record
DIGEST_KEY = "input_digest"
Done = tuple[str, int]  # an ok line's id key, and the short input digest it recorded (0: none)
_MARK = f',"{ID_FROM_LINE}":true'.encode()  # after `"line":N` on the line of a `LineId`
_OK = b',"status":"ok",'


def encode_line(record: dict[str, Any]) -> bytes:
    """Standard JSON only (see `batch.core.jsontext.dumps_line`)."""
    return dumps_line(record)


def native_record(result: RowResult, fingerprint: str) -> dict[str, Any]:
    request = result.row.request
    record: dict[str, Any] = {"id": result.row.id, "line": result.row.line}
    if isinstance(result.row.id, LineId):
        record[ID_FROM_LINE] = True
    if result.failure is None:
        record["status"] = "ok"
        record["output"] = result.output
        if result.confidence is not None:
            record["confidence"] = result.confidence
        if result.agreement is not None:
            record["agreement"] = result.agreement
    else:
        record["status"] = "error"
        record["error"] = result.failure.as_record()
    if result.votes is not None:
        record["votes"] = result.votes
    record["attempts"], record["usage"] = line_cost(result)
    if result.same_as is not None:
        record["same_as"] = result.same_as
    if result.cached:
        record["cached"] = True
    if request is not None:
        record["model"] = request.model
    if result.host is not None:
        record["host"] = result.host
    if result.done_reason is not None:
        record["done_reason"] = result.done_reason
    if result.durations_ns:
        record["durations_ns"] = result.durations_ns
    record["elapsed_s"] = round(result.elapsed_s, 3)
    if result.trace_id is not None:  # with OpenTelemetry: where this row's trace is
        record["trace_id"] = result.trace_id
    record["config"] = fingerprint
    if result.row.digest:  # last, at a fixed distance from the end: resume reads it at a glance
        record[DIGEST_KEY] = result.row.digest
    return record


def line_cost(result: RowResult) -> tuple[int, dict[str, int]]:
    """A line's attempts and usage: a panel's sum every vote it keeps, earlier runs' too."""
    if result.votes is None:
        return result.attempts, result.usage.as_record()
    usage = {"requests": 0, "input_tokens": 0, "output_tokens": 0}
    attempts = 0
    for vote in result.votes:
        attempts += vote.get("attempts", 0)
        for key, count in vote.get("usage", {}).items():
            usage[key] = usage.get(key, 0) + count
    return attempts, usage


def openai_record(result: RowResult, fingerprint: str) -> dict[str, Any]:
    native = native_record(result, fingerprint)
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
    usage = line_cost(result)[1]
    request = result.row.request
    return {
        "id": f"chatcmpl-{digest}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model if request is not None else "",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": _reply(result), "refusal": None},
                "logprobs": None,
                "finish_reason": "length" if result.done_reason == "length" else "stop",
            }
        ],
        # Summed over every attempt of the row, re-asks included: what the row cost.
        "usage": {
            "prompt_tokens": usage["input_tokens"],
            "completion_tokens": usage["output_tokens"],
            "total_tokens": usage["input_tokens"] + usage["output_tokens"],
        },
        "system_fingerprint": f"batch-{fingerprint}",
    }


def _reply(result: RowResult) -> str:
    """The reply's text: the model's; a panel's consensus, as JSON."""
    if result.votes is None or isinstance(result.output, str):
        return result.content or (result.output if isinstance(result.output, str) else "")
    return json.dumps(result.output, ensure_ascii=False, separators=(",", ":"))


def native_view(record: dict[str, Any]) -> tuple[dict[str, Any], OutputFormat]:
    """The native record inside an output line, and the line's format."""
    extras = record.get(EXTRAS)
    if "custom_id" in record and isinstance(extras, dict):
        return extras, "openai"
    return record, "native"


def read_native(raw: bytes) -> tuple[dict[str, Any], OutputFormat] | None:
    """A whole output line's native record and format; None for a line cut short by a kill or
    one that is not a JSON object."""
    if not raw.endswith(b"\n"):
        return None
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, too deep for a record of ours
        return None
    return native_view(record) if isinstance(record, dict) else None


def line_of(raw: bytes) -> int:
    """The input line number an output line records."""
    record, _ = native_view(json.loads(raw))
    line: int = record["line"]
    return line


class RecordCodec:
    """Results -> output lines, and output lines -> the ids already done, for one run's
    settings (`fingerprint`) and output format."""

    def __init__(self, fingerprint: str, output_format: OutputFormat = "native") -> None:
        self.fingerprint = fingerprint
        self.output_format = output_format
        self._tail = f',"config":"{fingerprint}"}}\n'.encode()  # a line written before digests
        self._digest_tail = f',"config":"{fingerprint}","{DIGEST_KEY}":"'.encode()
        # The lines `ok_key_at_a_glance` accepts (a negative id short enough for `json` to
        # read); the id, the mark of a `LineId`, and the digest's short half.
        self._ok_lines = re.compile(
            rb'^\{"id":([1-9][0-9]*|0|-[1-9][0-9]{0,17}|"[^"\\\n]*"),"line":[0-9]+'
            rb'(,"id_from_line":true)?,"status":"ok",[^\n]*,"config":"'
            + re.escape(fingerprint.encode())
            + rb'"(?:,"input_digest":"[0-9a-f]{8}([0-9a-f]{8})")?\}\n',
            re.MULTILINE,
        )

    def encode(self, result: RowResult) -> bytes:
        try:
            return self._encode(result)
        except (ValueError, RecursionError) as exc:
            # A value JSON cannot carry (NaN from a custom validator): the row fails, and the
            # file stays JSON. Replies are checked before this; it is the last guard.
            result.fail(
                InvalidOutput(
                    Cause.VALIDATION,
                    f"the result cannot be written as JSON ({exc}), so it was not kept",
                    raw=result.content or "",
                    feedback="",
                )
            )
            return self._encode(result)

    def _encode(self, result: RowResult) -> bytes:
        if self.output_format == "openai":
            return encode_line(openai_record(result, self.fingerprint))
        return encode_line(native_record(result, self.fingerprint))

    def done_key(self, path: Path, number: int, raw: bytes) -> Done | None:
        """The id key and short input digest of an `ok` line; None for a row to run again
        (failed, or cut short by a kill). Raises `ConfigError` for a line batch did not
        write, or wrote under other settings or in the other output format."""
        read = read_native(raw)
        if read is None:  # a line cut short by a kill: its row runs again
            return None
        record, shape = read
        if "status" not in record or "id" not in record:
            raise ConfigError(
                f"{path} line {number} is not a row written by batch: "
                "choose another --output, or pass --overwrite to replace the file"
            )
        if shape != self.output_format:
            raise ConfigError(
                f"{path} holds {shape} rows (line {number}), not {self.output_format} ones: "
                f"rerun with --output-format {shape} to resume, or pass --overwrite to start over"
            )
        if record.get("config") != self.fingerprint:
            raise SettingsChanged(
                f"{path} holds rows labelled with a different model, schema, template, "
                f"system prompt or options (line {number}): rerun with the same settings "
                "to resume, choose another --output, or pass --overwrite to start over",
                line=number,
                stamp=record.get("config"),
                model=record.get("model"),
            )
        row_id = id_of_record(record)
        if record["status"] != "ok" or row_id is None:
            return None
        digest = record.get(DIGEST_KEY)
        return id_key(row_id), short(digest) if isinstance(digest, str) and digest else 0

    def read_done(self, path: Path, number: int, raw: bytes) -> Done | None:
        """An `ok` line's id key and digest: at a glance when it can be, else by `done_key`'s
        full reading (with its refusals)."""
        if self.output_format == "native" and (ok := self.ok_key_at_a_glance(raw)) is not None:
            return ok
        return self.done_key(path, number, raw)

    def ok_keys_at_a_glance(self, block: bytes) -> list[Done] | None:
        """`ok_key_at_a_glance` of each line of `block` (whole lines), found in one pass of a
        regular expression; None unless every line is an `ok` native line as `native_record`
        writes it (then the block is read a line at a time). Resume reads these by the million."""
        if self.output_format != "native" or not block.endswith(b"\n"):
            return None
        found = self._ok_lines.findall(block)
        if len(found) != block.count(b"\n"):
            return None
        try:
            return [
                (
                    "s" + token[1:-1].decode()
                    if token[:1] == b'"'
                    else ("l" if marked else "i") + token.decode(),
                    int(digest, 16) or 1 if digest else 0,
                )
                for token, marked, digest in found
            ]
        except UnicodeDecodeError:
            return None

    def ok_key_at_a_glance(self, raw: bytes) -> Done | None:
        """The id key and short digest of an `ok` native line as `native_record` writes it,
        found without parsing the whole line; None otherwise, and the line gets `done_key`'s
        full reading. Resume reads millions of these, so it matters."""
        if not raw.startswith(b'{"id":'):
            return None
        if raw[-3:] == b'"}\n' and raw.endswith(self._digest_tail, 0, -3 - DIGEST_HEX):
            digest = short(raw[-3 - DIGEST_HEX : -3])
        elif raw.endswith(self._tail):
            digest = 0
        else:
            return None
        # Inside a JSON string a quote is escaped, so the first `,"line":` ends the id.
        id_end = raw.find(b',"line":', 6)
        status = raw.find(b",", id_end + 8) if id_end > 0 else -1
        marked = status > 0 and raw.startswith(_MARK, status)
        if status < 0 or not raw.startswith(_OK, status + len(_MARK) if marked else status):
            return None
        token = raw[6:id_end]
        try:
            if token.isdigit():  # id_key of a JSON integer, spelled alike
                return ("l" if marked else "i") + token.decode(), digest
            if token.startswith(b'"') and b"\\" not in token:  # a string with nothing escaped
                return id_key(token[1:-1].decode()), digest
            row_id = json.loads(token)
        except ValueError:
            return None
        if isinstance(row_id, int) and not isinstance(row_id, bool) and marked:
            row_id = LineId(row_id)
        return (id_key(row_id), digest) if isinstance(row_id, str | int) else None
