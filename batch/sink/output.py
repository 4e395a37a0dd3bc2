"""The output file: what an earlier run left (resume), and the one writer that appends to it.

Rows are appended as they complete, one `write` a batch of whole lines, so a killed worker
leaves at worst one partial last line. Before a run, `prepare_output` compacts the file to the
rows that are already `ok` (dropping failed rows, which are tried again, and any partial line),
through a temporary file and an atomic rename, so a kill during compaction loses nothing.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import stat
from array import array
from collections.abc import Callable
from pathlib import Path

import anyio

from batch.core.errors import FatalRunError
from batch.core.idset import IdSet
from batch.sink.done import collect_done
from batch.sink.records import RecordCodec

log = logging.getLogger(__name__)


def prepare_output(path: Path, codec: RecordCodec, *, overwrite: bool) -> IdSet:
    """Keep the earlier run's `ok` rows and return their ids; refuse a foreign configuration,
    and lines of the other output format (`native` or `openai`): one file, one format."""
    done = IdSet()
    if not path.exists() or path.stat().st_size == 0:  # an empty file holds nothing to resume
        return done
    if overwrite:
        path.unlink()
        return done
    found = collect_done(path, codec, done)
    dropped, repeated = found.dropped, found.repeated
    if repeated:  # the later line is the newer label: keep it, drop the earlier ones
        dropped = array("Q", sorted([*dropped, *_earlier_lines(path, codec, repeated)]))
    if dropped:
        try:
            _leave_out(path, dropped)
        except OSError as exc:
            raise FatalRunError(
                f"cannot compact {path} before resuming: {exc.strerror or exc}; the file is "
                "unchanged: free space (or fix the folder), then rerun the same command"
            ) from None
    log.info("resuming %s: %d rows done, %d dropped to run again", path, len(done), len(dropped))
    return done


def drop_if_empty(path: Path) -> None:
    """Removes an output that holds no line: a run that failed before its first row leaves
    nothing a rerun would take for an earlier run's work."""
    try:
        found = path.stat()
        if stat.S_ISREG(found.st_mode) and found.st_size == 0:  # never /dev/null or a FIFO
            path.unlink()
    except OSError:  # gone, or not ours to remove: the run's own error is what to say
        pass


def _earlier_lines(path: Path, codec: RecordCodec, repeated: set[str]) -> list[int]:
    """The numbers of the ok lines of `repeated` ids that a later ok line of the id follows."""
    last: dict[str, int] = {}
    earlier: list[int] = []
    with path.open("rb") as source:
        for number, raw in enumerate(source, start=1):
            ok = codec.done_key(path, number, raw)
            if ok is not None and ok[0] in repeated:
                if ok[0] in last:
                    earlier.append(last[ok[0]])
                last[ok[0]] = number
    return earlier


def _leave_out(path: Path, dropped: array[int]) -> None:
    """Rewrites `path` without the `dropped` lines (ascending line numbers)."""
    skip = iter(dropped)
    next_skip = next(skip, 0)

    def keep(number: int, raw: bytes) -> bool:
        nonlocal next_skip
        if number != next_skip:
            return True
        next_skip = next(skip, 0)
        return False

    rewrite(path, keep)


def rewrite(path: Path, keep: Callable[[int, bytes], bool]) -> None:
    """Rewrites `path` with the lines (numbered from 1) that `keep` accepts, through a
    temporary file and an atomic rename: a kill at any instant leaves either the old file or
    the new one, and a failure (a full disk) leaves no half copy."""
    scratch = path.with_name(path.name + ".resume-tmp")
    try:
        with path.open("rb") as source, scratch.open("wb") as target:
            for number, raw in enumerate(source, start=1):
                if keep(number, raw):
                    target.write(raw)
            target.flush()
            os.fsync(target.fileno())
        os.replace(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)


Opener = Callable[[Path], io.RawIOBase]  # the seam a test uses for a disk that fills


def open_append(path: Path) -> io.RawIOBase:
    return open(path, "ab", buffering=0)


class WriteFailed(Exception):
    """The file at `path` could not be opened, written or made durable: `error` says why;
    `lines` whole lines of it are on disk from this run."""

    def __init__(self, path: Path, error: OSError, lines: int) -> None:
        super().__init__(f"cannot write {path}: {error.strerror or error}")
        self.path = path
        self.error = error
        self.lines = lines


class OutputWriter:
    """The only owner of the output file. Appends whole lines; fsyncs on close. Any OSError
    (a full disk, a read-only or vanished folder, no permission) comes out as `WriteFailed`.

    `lazy`: the file is created by the first line written, not before (an errors file)."""

    def __init__(self, path: Path, *, lazy: bool = False, opener: Opener = open_append) -> None:
        self._path = path
        self._lazy = lazy
        self._opener = opener
        self._file: io.RawIOBase | None = None
        self.lines = 0  # whole lines written by this writer

    async def __aenter__(self) -> OutputWriter:
        if not self._lazy:
            await self._open()
        return self

    async def _open(self) -> None:
        try:
            await anyio.to_thread.run_sync(self._open_now)
        except OSError as exc:
            raise WriteFailed(self._path, exc, self.lines) from None

    def _open_now(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self._opener(self._path)

    async def __aexit__(self, *exc_info: object) -> None:
        if self._file is not None:
            with anyio.CancelScope(shield=True):  # what was written is made durable, always
                try:
                    await anyio.to_thread.run_sync(self._close)
                except OSError as exc:
                    if exc_info[0] is None:  # else the first failure is the one to report
                        raise WriteFailed(self._path, exc, self.lines) from None

    def _close(self) -> None:
        assert self._file is not None
        try:
            os.fsync(self._file.fileno())
        finally:
            self._file.close()

    async def write(self, lines: list[bytes]) -> None:
        if not lines:
            return
        if self._file is None and self._lazy:
            await self._open()
        try:
            await anyio.to_thread.run_sync(self._write, b"".join(lines))
        except OSError as exc:
            raise WriteFailed(self._path, exc, self.lines) from None

    def _write(self, data: bytes) -> None:
        assert self._file is not None, "use OutputWriter as an async context manager"
        view, done = memoryview(data), 0
        try:
            while done < len(data):  # an unbuffered write may be short
                written = self._file.write(view[done:])
                if not written:
                    raise OSError(errno.EIO, "the write made no progress")
                done += written
        finally:
            self.lines += data.count(b"\n", 0, done)
