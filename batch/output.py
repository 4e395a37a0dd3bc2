"""The output file: what an earlier run left (resume), and the one writer that appends to it.

Rows are appended as they complete, one `write` a batch of whole lines, so a killed worker
leaves at worst one partial last line. Before a run, `prepare_output` compacts the file to the
rows that are already `ok` (dropping failed rows, which are tried again, and any partial line),
through a temporary file and an atomic rename, so a kill during compaction loses nothing.
"""

from __future__ import annotations

import json
import logging
import os
from array import array
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os
import anyio
from aiofiles.threadpool.binary import AsyncFileIO

from batch.errors import ConfigError
from batch.formats.openai_out import native_view
from batch.idset import IdSet
from batch.reader import LineCountGuess
from batch.rows import id_key

log = logging.getLogger(__name__)


def encode_line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def prepare_output(
    path: Path, fingerprint: str, *, overwrite: bool, output_format: str = "native"
) -> IdSet:
    """Keep the earlier run's `ok` rows and return their ids; refuse a foreign configuration,
    and lines of the other output format (`native` or `openai`): one file, one format."""
    done = IdSet()
    if not path.exists():
        return done
    if overwrite:
        path.unlink()
        return done
    tail = f',"config":"{fingerprint}"}}\n'.encode()
    dropped = array("Q")  # line numbers to leave out; usually none, so no copy is made
    guess = LineCountGuess(path)
    with path.open("rb") as source:
        for number, raw in enumerate(source, start=1):
            if guess.pending and (expected := guess.after(raw)):
                done.reserve(expected)
            key = _ok_key_at_a_glance(raw, tail) if output_format == "native" else None
            if key is None:
                key = _ok_key(path, number, raw, fingerprint, output_format)
            if key is None or not done.add(key):
                dropped.append(number)
    if dropped:
        _leave_out(path, dropped)
    log.info("resuming %s: %d rows done, %d dropped to run again", path, len(done), len(dropped))
    return done


def _ok_key_at_a_glance(raw: bytes, tail: bytes) -> str | None:
    """The id key of an `ok` line as this version writes it (`{"id":…,"line":N,"status":"ok",`
    … `"config":"<fingerprint>"}`), found without parsing the whole line; None otherwise, and
    the line gets a full reading. Resume reads millions of these, so it matters."""
    if not (raw.endswith(tail) and raw.startswith(b'{"id":')):
        return None
    # Inside a JSON string a quote is escaped, so the first `,"line":` ends the id.
    id_end = raw.find(b',"line":', 6)
    status = raw.find(b",", id_end + 8) if id_end > 0 else -1
    if status < 0 or not raw.startswith(b',"status":"ok",', status):
        return None
    token = raw[6:id_end]
    try:
        if token.isdigit():
            return id_key(int(token))
        if token.startswith(b'"') and b"\\" not in token:  # a string with nothing escaped
            return id_key(token[1:-1].decode())
        row_id = json.loads(token)
    except ValueError:
        return None
    return id_key(row_id) if isinstance(row_id, str | int) else None


def _ok_key(
    path: Path, number: int, raw: bytes, fingerprint: str, output_format: str
) -> str | None:
    """The id key of an `ok` line; None for a row to run again (failed, or cut short by a kill).
    Raises `ConfigError` for a line batch did not write, or wrote under other settings or in
    the other output format."""
    record = _read_record(raw)
    if record is None:  # a line cut short by a kill: its row runs again
        return None
    record, shape = native_view(record)
    if "status" not in record or "id" not in record:
        raise ConfigError(
            f"{path} line {number} is not a row written by batch: "
            "choose another --output, or pass --overwrite to replace the file"
        )
    if shape != output_format:
        raise ConfigError(
            f"{path} holds {shape} rows (line {number}), not {output_format} ones: rerun "
            f"with --output-format {shape} to resume, or pass --overwrite to start over"
        )
    if record.get("config") != fingerprint:
        raise ConfigError(
            f"{path} holds rows labelled with a different model, schema, template, "
            f"system prompt or options (line {number}): rerun with the same settings "
            "to resume, choose another --output, or pass --overwrite to start over"
        )
    return id_key(record["id"]) if record["status"] == "ok" else None


def _read_record(raw: bytes) -> dict[str, Any] | None:
    if not raw.endswith(b"\n"):
        return None
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _leave_out(path: Path, dropped: array[int]) -> None:
    """Rewrites `path` without the `dropped` lines, through a temporary file and an atomic
    rename: a kill at any instant leaves either the old file or the new one."""
    scratch = path.with_name(path.name + ".resume-tmp")
    skip = iter(dropped)
    next_skip = next(skip, 0)
    with path.open("rb") as source, scratch.open("wb") as target:
        for number, raw in enumerate(source, start=1):
            if number == next_skip:
                next_skip = next(skip, 0)
            else:
                target.write(raw)
    os.replace(scratch, path)


class OutputWriter:
    """The only owner of the output file. Appends whole lines; fsyncs on close.

    `lazy`: the file is created by the first line written, not before (an errors file)."""

    def __init__(self, path: Path, *, lazy: bool = False) -> None:
        self._path = path
        self._lazy = lazy
        self._file: AsyncFileIO | None = None

    async def __aenter__(self) -> OutputWriter:
        if not self._lazy:
            await self._open()
        return self

    async def _open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._file = await aiofiles.open(self._path, "ab", buffering=0)

    async def __aexit__(self, *exc_info: object) -> None:
        if self._file is not None:
            with anyio.CancelScope(shield=True):  # what was written is made durable, always
                await aiofiles.os.wrap(os.fsync)(self._file.fileno())
                await self._file.close()

    async def write(self, lines: list[bytes]) -> None:
        if not lines:
            return
        if self._file is None and self._lazy:
            await self._open()
        assert self._file is not None, "use OutputWriter as an async context manager"
        data = memoryview(b"".join(lines))
        while data:  # an unbuffered write may be short
            written = await self._file.write(data)
            data = data[written or 0 :]
