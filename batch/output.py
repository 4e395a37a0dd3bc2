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
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os
import anyio
from aiofiles.threadpool.binary import AsyncFileIO

from batch.errors import ConfigError
from batch.formats.openai_out import native_view
from batch.idset import IdSet
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
    scratch = path.with_name(path.name + ".resume-tmp")
    kept = dropped = 0
    with path.open("rb") as source, scratch.open("wb") as target:
        for number, raw in enumerate(source, start=1):
            record = _read_record(raw)
            if record is None:  # a line cut short by a kill: its row runs again
                dropped += 1
                continue
            record, shape = native_view(record)
            if "status" not in record or "id" not in record:
                scratch.unlink()
                raise ConfigError(
                    f"{path} line {number} is not a row written by batch: "
                    "choose another --output, or pass --overwrite to replace the file"
                )
            if shape != output_format:
                scratch.unlink()
                raise ConfigError(
                    f"{path} holds {shape} rows (line {number}), not {output_format} ones: rerun "
                    f"with --output-format {shape} to resume, or pass --overwrite to start over"
                )
            if record.get("config") != fingerprint:
                scratch.unlink()
                raise ConfigError(
                    f"{path} holds rows labelled with a different model, schema, template, "
                    f"system prompt or options (line {number}): rerun with the same settings "
                    "to resume, choose another --output, or pass --overwrite to start over"
                )
            if record["status"] == "ok" and done.add(id_key(record["id"])):
                target.write(raw)
                kept += 1
            else:
                dropped += 1
    if dropped:
        os.replace(scratch, path)
    else:
        scratch.unlink()
    log.info("resuming %s: %d rows done, %d dropped to run again", path, kept, dropped)
    return done


def _read_record(raw: bytes) -> dict[str, Any] | None:
    if not raw.endswith(b"\n"):
        return None
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


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
