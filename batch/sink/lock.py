"""One run per output at a time: an OS lock on a file beside each output the run writes.

`fcntl.flock` on `OUT.lock`: the kernel releases it when its holder dies, even by `kill -9`, so
a dead run never blocks the next one. The holder writes its pid, host name and start time into
the file, so a run turned away can name the run in its way. The file is removed on release;
a run that opened it just before checks, once locked, that it still holds the file at that
path (else it locks the new one).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from batch.core.errors import ConfigError


def lock_path(output: Path) -> Path:
    return output.with_name(output.name + ".lock")


@contextmanager
def hold_outputs(outputs: Iterable[Path]) -> Iterator[None]:
    """Holds the lock of each of `outputs` for the block; raises `ConfigError` at once, before
    any of them is touched, when another live run holds one."""
    with ExitStack() as stack:
        for output in sorted({p.resolve() for p in outputs}):
            stack.enter_context(_held(lock_path(output), output))
        yield


@contextmanager
def _held(path: Path, output: Path) -> Iterator[None]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = _acquire(path, output)
    except OSError as exc:  # a file where the folder should be, a read-only folder, a full disk
        raise ConfigError(
            f"cannot write {output}: {exc.strerror or exc} (its lock {path.name} cannot be "
            "made): choose another --output, or fix the folder"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(_holder()) + "\n")
        handle.flush()
        yield
    finally:
        path.unlink(missing_ok=True)  # while still locked: the next run locks a fresh file
        handle.close()


def _acquire(path: Path, output: Path) -> IO[str]:
    while True:
        handle = path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read()
            handle.close()
            raise ConfigError(_busy(output, holder)) from None
        if _same_file(handle, path):
            return handle
        handle.close()  # the holder removed it as we opened it: lock the one there now


def _same_file(handle: IO[str], path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


def _holder() -> dict[str, object]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _busy(output: Path, holder: str) -> str:
    try:
        info = json.loads(holder)
        who = f"pid {info['pid']} on {info['host']}, started {info['started_at']}"
    except (ValueError, KeyError, TypeError):
        who = "a run that is starting"
    return (
        f"another run is writing {output} ({who}): wait for it to end, or write elsewhere "
        "(--output, --errors-file)"
    )
