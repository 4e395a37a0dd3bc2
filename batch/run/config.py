"""Run settings, layered: flags over environment (`OLLAMA_HOST`, `BATCH_*`) over a TOML job
file kept beside the data, over defaults. Validated once, here, into a frozen `JobConfig` whose
groups are declared in settings.py."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from batch.core.digest import json_digest
from batch.core.errors import ConfigError
from batch.core.schema import OutputSchema
from batch.run.flags import Setting
from batch.run.settings import (
    DEFAULT_HOST,
    DEFAULT_OPTIONS,
    GROUPS,
    SETTINGS,
    AccessTlsSettings,
    BudgetSettings,
    DisplaySettings,
    FileSettings,
    HostSettings,
    ObserveSettings,
    PanelSettings,
    PromptSettings,
    QualitySettings,
    RetrySettings,
    ReuseSettings,
    ShardSettings,
)
from batch.serving.access import check_header_hosts, redacted_host
from batch.serving.embedded import is_embedded
from batch.serving.hosts import parse_host
from batch.source.shards import Shard, shard_from_environ

__all__ = ["DEFAULT_HOST", "DEFAULT_OPTIONS", "JobConfig", "load_config"]


class JobConfig(BaseModel):
    """Everything a run needs, in groups. Paths are as given (relative to the working
    directory). Built from flat settings too, as `JobConfig(input=..., model=...)`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: Path
    files: FileSettings = Field(default_factory=FileSettings)
    prompt: PromptSettings = Field(default_factory=PromptSettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    voting: PanelSettings = Field(default_factory=PanelSettings)
    reuse: ReuseSettings = Field(default_factory=ReuseSettings)
    serving: HostSettings = Field(default_factory=HostSettings)
    retries: RetrySettings = Field(default_factory=RetrySettings)
    budgets: BudgetSettings = Field(default_factory=BudgetSettings)
    access: AccessTlsSettings = Field(default_factory=AccessTlsSettings)
    sharding: ShardSettings = Field(default_factory=ShardSettings)
    display: DisplaySettings = Field(default_factory=DisplaySettings)
    observe: ObserveSettings = Field(default_factory=ObserveSettings)

    def __init__(self, **settings: Any) -> None:
        """Settings flat (`model="llama3.2"`) or by group (`prompt=PromptSettings(...)`)."""
        super().__init__(**settings)

    @model_validator(mode="before")
    @classmethod
    def _grouped(cls, values: Any) -> Any:
        """Flat settings (`model=...`) go to their groups, on top of a group given as a table;
        a group given as a model takes no flat settings besides (they would be lost)."""
        if not isinstance(values, Mapping):
            return values
        grouped = {key: value for key, value in values.items() if key not in SETTINGS}
        flat: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            if key in SETTINGS:
                flat.setdefault(SETTINGS[key].group, {})[key] = value
        for group, settings in flat.items():
            given = grouped.get(group, {})
            if not isinstance(given, Mapping):
                names = ", ".join(settings)
                raise ValueError(f"give {group} whole or its settings ({names}) one by one")
            grouped[group] = {**given, **settings}
        return grouped

    @model_validator(mode="after")
    def _headers_name_hosts_of_the_run(self) -> JobConfig:
        check_header_hosts(self.access.headers, self.serving.hosts)
        return self

    @model_validator(mode="after")
    def _samples_name_a_model(self) -> JobConfig:
        if self.voting.samples > 1 and not self.voting.panel and not self.prompt.model:
            raise ValueError("--samples needs --model (or --panel): the model to ask N times")
        return self

    @property
    def members(self) -> tuple[str, ...]:
        """The models a panel run asks, in panel order: --panel, else --model alone."""
        if self.voting.panel:
            return self.voting.panel
        return (self.prompt.model,) if self.prompt.model else ()

    def __repr_args__(self) -> Any:
        # SecretStr hides keys and header values; hosts may carry user:password too.
        for name, value in super().__repr_args__():
            if name == "serving":
                value = value.model_copy(update={"hosts": tuple(map(redacted_host, value.hosts))})
            yield name, value

    def replace(self, **settings: Any) -> JobConfig:
        """A copy with some settings changed, named flat (`replace(system="be kind")`)."""
        by_group: dict[str, dict[str, Any]] = {}
        for key, value in settings.items():
            by_group.setdefault(SETTINGS[key].group, {})[key] = value
        return JobConfig.model_validate(
            {
                **{name: getattr(self, name) for name in ("input", *GROUPS)},
                **{g: getattr(self, g).model_copy(update=u) for g, u in by_group.items()},
            }
        )

    def check_paths(self) -> None:
        """The files a run reads and writes: the input exists, and nothing overwrites it."""
        errors_file = self.files.errors_file
        if not self.input.is_file():
            raise ConfigError(f"input file {self.input} does not exist")
        if self.output_path.is_dir():
            raise ConfigError(f"the output {self.output_path} is a folder: --output names a file")
        if self.output_path.resolve() == self.input.resolve():
            raise ConfigError(f"the output would overwrite the input {self.input}: change --output")
        if errors_file and errors_file.resolve() in (
            self.input.resolve(),
            self.output_path.resolve(),
        ):
            raise ConfigError(f"--errors-file {errors_file} must differ from input and output")
        if (review := self.review_path) and review.resolve() in (
            self.input.resolve(),
            self.output_path.resolve(),
            errors_file.resolve() if errors_file else None,
        ):
            raise ConfigError(f"--review-file {review} must differ from input and outputs")

    def fingerprint(self, schema: OutputSchema | None) -> str:
        """Names the settings that shape a label; rows from different settings never mix."""
        shaping: dict[str, Any] = {
            **self.shaping(),
            "schema": schema.json_schema if schema else None,
        }
        if shaping["think"] is None:  # only when set, so that earlier outputs keep their stamp
            del shaping["think"]
        if shaping.pop("backend") != "ollama":  # likewise: outputs made on Ollama keep theirs
            shaping["backend"] = self.backend
        return json_digest(shaping)

    def shaping(self) -> dict[str, Any]:
        """The settings that shape a label, but the schema: the summary records them, so that a
        refused rerun can say which one changed. No secret is among them (no URL, no header)."""
        prompt = self.prompt
        panel = self.voting.active
        shaping = {
            # A panel's members are not in the stamp: a rerun may add one, or leave one out.
            "model": None if panel else prompt.model,
            "template": prompt.template,
            "system": prompt.system,
            "options": prompt.options,
            "think": prompt.think,
            "backend": self.backend,
        }
        if panel:  # only then, so that outputs of one model keep their stamp
            shaping["panel"] = True
        return shaping

    @property
    def backend(self) -> str:
        """What labels: `ollama` servers, the `embedded` model in process, or `embedded+ollama`."""
        hosts = self.serving.hosts
        kinds = {"embedded" if is_embedded(parse_host(h).url) else "ollama" for h in hosts}
        return "+".join(sorted(kinds))

    @property
    def shard_spec(self) -> Shard | None:
        return self.sharding.spec

    @property
    def output_path(self) -> Path:
        sharded = self.shard_spec.suffix if self.shard_spec else ""
        return self.files.output or _swap_suffix(self.input, sharded + ".out.jsonl")

    @property
    def summary_path(self) -> Path:
        return self.files.summary or _swap_suffix(self.output_path, ".summary.json")

    @property
    def review_path(self) -> Path | None:
        """Where `--review-below` writes, when it is set."""
        if self.quality.review_below is None:
            return None
        return self.quality.review_file or _swap_suffix(self.output_path, ".review.jsonl")


def _swap_suffix(path: Path, suffix: str) -> Path:
    name = path.name.removesuffix(".jsonl") if path.name.endswith(".jsonl") else path.stem
    return path.with_name(name + suffix)


def load_config(
    flags: Mapping[str, Any], environ: Mapping[str, str] | None = None, job_file: Path | None = None
) -> JobConfig:
    """Build the config from flags (only those given), the environment and the job file."""
    environ = os.environ if environ is None else environ
    if "input" not in flags:
        raise ConfigError("no input file given")
    input_path = Path(flags["input"])
    file_values, file_name = _read_job_file(job_file or _find_job_file(input_path, environ))
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    layers = ((file_values, file_name), (_read_environ(environ), "environment"), (flags, ""))
    for values, source in layers:
        for key, value in values.items():
            setting = SETTINGS.get(key)
            if setting is not None and (merge := setting.flag.merge) is not None:
                value = merge(merged.get(key), value, source)
            merged[key] = value
            origin[key] = source or (setting.shown if setting else key)
    if "shard" not in merged and (shard := shard_from_environ(environ, merged.get("shards"))):
        merged["shard"], origin["shard"] = shard, "the scheduler's environment"
    try:
        return JobConfig(**merged)
    except ValidationError as exc:
        raise ConfigError(_invalid(exc, origin)) from None


def _invalid(exc: ValidationError, origin: Mapping[str, str]) -> str:
    """Each problem with the setting it is about and where its value came from."""
    problems = []
    for error in exc.errors():
        # (group, setting, ...) for one setting; (group,) or () for a check across settings.
        loc = [str(part) for part in error["loc"]]
        key = next((part for part in loc if part in (*SETTINGS, "input")), None)
        if key is None and loc and loc[0] not in GROUPS:
            key = loc[0]  # a name that is no setting
        if key is None:
            problems.append(_message(error))
            continue
        shown = SETTINGS[key].shown if key in SETTINGS else key
        problems.append(f"{shown} (from {origin.get(key, key)}): {_message(error)}")
    return "invalid settings:\n  " + "\n  ".join(problems)


def _message(error: ErrorDetails) -> str:
    """A check's own words, without the "Value error, " pydantic puts before them."""
    if error["type"] == "value_error" and "error" in error.get("ctx", {}):
        return str(error["ctx"]["error"])
    return error["msg"]


def _find_job_file(input_path: Path, environ: Mapping[str, str]) -> Path | None:
    if named := environ.get("BATCH_JOB_FILE"):
        return Path(named)
    for candidate in (input_path.with_suffix(".toml"), input_path.parent / "batch.toml"):
        if candidate.is_file():
            return candidate
    return None


# Job-file spellings that differ from a setting's name (`host`, `schema`).
_BY_FILE_KEY = {s.key: s for s in SETTINGS.values() if s.key and s.key != s.name}
# What an unknown key's message lists: every name a job file may use.
_FILE_KEYS = sorted({*_BY_FILE_KEY, *(s.name for s in SETTINGS.values() if s.key is not None)})


def _read_job_file(path: Path | None) -> tuple[dict[str, Any], str]:
    if path is None:
        return {}, ""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"job file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"job file {path} is not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in raw.items():
        setting = _BY_FILE_KEY.get(key) or SETTINGS.get(key.replace("-", "_"))
        if setting is not None and setting.flag.secret:
            secret, env = setting.flag.secret, setting.env
            raise ConfigError(f"job file {path}: keep the {secret} out of files: set {env}")
        if setting is None or setting.key is None:
            known = ", ".join(_FILE_KEYS)
            raise ConfigError(f"job file {path}: unknown setting {key!r} (known: {known})")
        values[setting.name] = _from_file(setting, value, path)
    return values, str(path)


def _from_file(setting: Setting, value: Any, path: Path) -> Any:
    if setting.flag.env_form == "list" and isinstance(value, str):
        return [value]
    # Paths in a job file are relative to the file, so the job runs from any directory.
    relative = setting.flag.relative
    if isinstance(value, str) and (
        relative == "path" or (relative == "json_file" and value.endswith(".json"))
    ):
        return str(path.parent / value)
    return value


def _read_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for setting in SETTINGS.values():
        flag = setting.flag
        if flag.env_alias and (alias := environ.get(flag.env_alias, "").strip()):
            values[setting.name] = [alias] if flag.env_form == "list" else alias
        raw = environ.get(setting.env)
        if flag.env_form == "stripped" and raw is not None:
            raw = raw.strip()
        if raw is None or raw == "":
            continue
        values[setting.name] = _from_environ(setting, raw)
    return values


def _from_environ(setting: Setting, raw: str) -> Any:
    form, name = setting.flag.env_form, setting.env
    if form == "list":
        return [h.strip() for h in raw.split(",") if h.strip()]
    if form == "object":
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            example = setting.flag.env_example
            raise ConfigError(f"{name} must be a JSON object, as in {name}='{example}'")
        return parsed
    return raw
