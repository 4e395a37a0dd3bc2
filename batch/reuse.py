"""What a run's settings say about reuse and exclusion: the files it writes (each locked while
it runs), the cache it shares, and the settings outside a request that still shape its reply."""

from __future__ import annotations

from pathlib import Path

from batch.cache import AnswerCache
from batch.config import JobConfig


def written_by(config: JobConfig) -> list[Path]:
    """The files only one run at a time may write: the output, and the errors file."""
    return [config.output_path, *([config.errors_file] if config.errors_file else [])]


def open_answer_cache(path: Path | None) -> AnswerCache | None:
    """The --cache file, checked before any output is touched (`ConfigError` if not one)."""
    return None if path is None else AnswerCache(path)


def reply_salt(config: JobConfig) -> str:
    """Part of every request key: `think` is sent beside the request, not in it."""
    return "" if config.think is None else f"think={config.think}"
