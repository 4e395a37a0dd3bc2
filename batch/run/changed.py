"""Why a rerun is refused: which setting that shapes a label changed since the output was made.

An output line carries only a stamp of those settings (`config`) and its model; the summary of
the run that wrote it records the settings themselves (`settings`). The message compares ours
with the most the earlier run left, and names the two ways on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from batch.core.digest import json_digest
from batch.core.errors import ConfigError, SettingsChanged
from batch.core.schema import OutputSchema, load_schema
from batch.run.config import JobConfig

SHAPING_FLAGS = "--model, --schema, --template, --system, --option, --think and --host"
TEXT_SHOWN = 40  # characters of a prompt text the message shows


def recorded_settings(config: JobConfig, schema: OutputSchema | None) -> dict[str, Any]:
    """The summary's `settings`: what the run's stamp stands for, the schema as a digest."""
    return {**config.shaping(), "schema": json_digest(schema.json_schema) if schema else None}


def refusal(config: JobConfig, found: SettingsChanged) -> ConfigError:
    """The message for `found`, naming each setting that changed, its old and new value."""
    schema = load_schema(config.prompt.schema_ref) if config.prompt.schema_ref else None
    path = config.output_path
    head = f"{path} holds rows labelled under other settings (line {found.line})"
    earlier = _earlier_settings(config.summary_path, found.stamp)
    now = recorded_settings(config, schema)
    if earlier is not None:
        differences = _differences(earlier, now, earlier.keys() | now.keys())
    elif found.model is not None and found.model != config.prompt.model:
        differences = _differences({"model": found.model}, now, {"model"})
    else:
        differences = []
    if differences:
        what = "; ".join(differences)
    else:
        what = (
            "the run that wrote them left no summary to say which setting differs; the settings "
            f"that shape a label are {SHAPING_FLAGS}"
        )
    ways_on = (
        "rerun with the earlier settings to resume, pass --overwrite to label every row again, "
        "or choose another --output to keep both"
    )
    return ConfigError(f"{head}: {what}. To go on: {ways_on}")


def _earlier_settings(summary_path: Path, stamp: Any) -> dict[str, Any] | None:
    """The settings the earlier run's summary records, if it stamped the refused line."""
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("config") != stamp:
        return None
    settings = summary.get("settings")
    return settings if isinstance(settings, dict) else None


def _differences(earlier: dict[str, Any], now: dict[str, Any], keys: set[str]) -> list[str]:
    found: list[str] = []
    for key in keys:
        was, new = earlier.get(key), now.get(key)
        if was == new:
            continue
        if key == "options":
            found += _option_differences(was or {}, new or {})
        elif key == "schema":
            found.append("--schema: the schema differs")
        elif key == "backend":
            found.append(f"--host: was {_backend(was)}, now {_backend(new)}")
        elif key == "panel":
            found.append(f"--panel: {'a panel made them' if was else 'one model made them'}")
        else:
            found.append(f"--{key}: was {_shown(was)}, now {_shown(new)}")
    order = ["--model", "--schema", "--template", "--system", "--option", "--think", "--host"]
    order.append("--panel")
    return sorted(found, key=lambda text: _rank(text, order))


def _rank(text: str, order: list[str]) -> int:
    """Where a difference goes: the flags in `order`'s order, anything else last."""
    return next((i for i, flag in enumerate(order) if text.startswith(flag)), len(order))


def _option_differences(was: dict[str, Any], now: dict[str, Any]) -> list[str]:
    return [
        f"--option {name}: was {_shown(was.get(name))}, now {_shown(now.get(name))}"
        for name in sorted(was.keys() | now.keys())
        if was.get(name) != now.get(name)
    ]


def _shown(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, str) and value and " " not in value and len(value) <= TEXT_SHOWN:
        return value
    if isinstance(value, str):
        return json.dumps(
            value if len(value) <= TEXT_SHOWN else value[:TEXT_SHOWN] + "…", ensure_ascii=False
        )
    return json.dumps(value, ensure_ascii=False)


def _backend(kind: Any) -> str:
    return {
        "embedded": "embedded (in process)",
        "ollama": "an Ollama server",
        "embedded+ollama": "embedded and Ollama servers",
    }.get(str(kind), str(kind))
