"""Run settings, layered: flags over environment (`OLLAMA_HOST`, `BATCH_*`) over a TOML job
file kept beside the data, over defaults. Validated once, here, into a frozen `JobConfig`."""

from __future__ import annotations

import hashlib
import json
import os
import string
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from batch.core.errors import ConfigError
from batch.core.ollama_options import checked_options
from batch.core.schema import OutputSchema
from batch.labelling.budget import Budgets, parse_deadline
from batch.serving.access import (
    Headers,
    ThinkSetting,
    check_header_hosts,
    keep_alive_value,
    merge_headers,
    parse_headers,
    parse_think,
    redacted_host,
)
from batch.serving.hosts import check_host_list
from batch.serving.limits import DEFAULT_CEILING
from batch.source.shards import Shard, parse_shard, shard_from_environ

DEFAULT_HOST = "http://127.0.0.1:11434"
# Labelling wants the same answer on every run: greedy decoding unless the user says otherwise.
DEFAULT_OPTIONS: dict[str, Any] = {"temperature": 0}


class JobConfig(BaseModel):
    """Everything a run needs. Paths are as given (relative to the working directory)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: Path
    output: Path | None = None
    summary: Path | None = None
    model: str | None = None
    hosts: tuple[str, ...] = (DEFAULT_HOST,)
    # "auto": each host's limit is found as the run goes (serving/limits.py), up to the ceiling.
    concurrency: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] = "auto"
    max_concurrency: int = Field(DEFAULT_CEILING, ge=1, le=1024)
    # Budgets (batch/labelling/budget.py): met, the run stops taking rows and exits 3.
    deadline: float | None = None  # a Unix time; given as a duration from now or an ISO time
    max_tokens: int | None = Field(None, ge=1)
    max_requests: int | None = Field(None, ge=1)
    timeout: float = Field(300.0, gt=0)
    options: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_OPTIONS))
    schema_ref: str | None = None
    template: str | None = None
    system: str | None = None
    max_attempts: int = Field(5, ge=1)
    backoff: float = Field(0.5, ge=0, description="first retry wait, seconds; doubles per retry")
    backoff_max: float = Field(10.0, ge=0)
    grace_period: float = Field(5.0, ge=0, description="seconds in-flight rows get after a signal")
    overwrite: bool = False
    quiet: bool = False
    log_every: float = Field(10.0, gt=0, description="seconds between progress lines in logs")
    # llama.cpp contexts for --host embedded; None: one a core (measured fastest on 2 cores).
    embedded_contexts: int | None = Field(None, ge=1, le=64)
    # OpenAI Batch files: output lines as OpenAI writes them, in input order, image paths.
    output_format: Literal["native", "openai"] = "native"
    ordered: bool = False
    allow_outside_images: bool = False
    errors_file: Path | None = None  # failed rows go here instead of the output, as OpenAI does
    # Reaching Ollama in production (README "Production setups"). The key comes from
    # OLLAMA_API_KEY only: never a flag (visible in `ps`) nor the job file (often committed).
    api_key: SecretStr | None = None
    headers: Headers = Field(default_factory=dict)  # host ("*": every host) -> name -> value
    ca_bundle: Path | None = None
    insecure: bool = False
    proxy: SecretStr | None = None  # for every host, loopback included; None: HTTP(S)_PROXY
    keep_alive: float | str | None = None  # None: 30m while running, then the server's default
    think: ThinkSetting = None  # None: off when a schema is set, else the model's default
    # Shards (batch/source/shards.py): "K/N", or N alone with K from the scheduler's environment.
    shard: str | None = None
    shards: int | None = Field(None, ge=1, le=100_000)
    # Label quality (README "Label quality"): confidence per label, and rows for a person.
    logprobs: bool = False
    review_below: float | None = Field(None, gt=0, le=1)
    review_file: Path | None = None  # None: OUTPUT with .review.jsonl
    # Reruns and reuse (README "Rerun and resume"): pruning, duplicates, the shared cache.
    prune: bool = False  # take out output rows whose id left the input
    dedup: bool = True  # one request for identical rows
    cache: Path | None = None  # SQLite file of accepted replies, shared across runs

    @field_validator("headers", mode="before")
    @classmethod
    def _headers_parse(cls, headers: Any) -> Any:
        return parse_headers(headers) if headers else {}

    @field_validator("options")
    @classmethod
    def _options_known(cls, options: dict[str, Any]) -> dict[str, Any]:
        return checked_options(options)  # names and types as Ollama reads them

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _keep_alive_parses(cls, value: Any) -> float | str | None:
        return keep_alive_value(value)

    @field_validator("deadline", mode="before")
    @classmethod
    def _deadline_parses(cls, value: Any) -> float | None:
        return parse_deadline(value) if isinstance(value, str) else value

    @property
    def budgets(self) -> Budgets:
        return Budgets(self.deadline, self.max_tokens, self.max_requests)

    @field_validator("think", mode="before")
    @classmethod
    def _think_parses(cls, value: Any) -> ThinkSetting:
        return parse_think(value)

    @field_validator("shard")
    @classmethod
    def _shard_parses(cls, shard: str | None) -> str | None:
        return None if shard is None else str(parse_shard(shard))

    @model_validator(mode="after")
    def _shards_agree(self) -> JobConfig:
        if self.shards is not None and self.shard is None:
            raise ValueError(
                f"--shards {self.shards} needs the shard to run: give --shard K/{self.shards}, "
                "or run under a Kubernetes Indexed Job (JOB_COMPLETION_INDEX)"
            )
        if self.shards is not None and (spec := self.shard_spec) and spec.count != self.shards:
            raise ValueError(f"--shard {spec} and --shards {self.shards} disagree on N")
        return self

    @property
    def shard_spec(self) -> Shard | None:
        return None if self.shard is None else parse_shard(self.shard)

    @model_validator(mode="after")
    def _access_is_consistent(self) -> JobConfig:
        check_header_hosts(self.headers, self.hosts)
        if self.insecure and self.ca_bundle is not None:
            raise ValueError("give --ca-bundle or --insecure, not both")
        return self

    def __repr_args__(self) -> Any:
        # SecretStr hides keys and header values; hosts may carry user:password too.
        for name, value in super().__repr_args__():
            yield name, tuple(map(redacted_host, value)) if name == "hosts" else value

    @field_validator("hosts")
    @classmethod
    def _some_host(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        if not hosts or not all(h.strip() for h in hosts):
            raise ValueError("give at least one non-empty host URL")
        check_host_list(hosts)  # URL#N syntax, no host twice
        return hosts

    @field_validator("template")
    @classmethod
    def _template_parses(cls, template: str | None) -> str | None:
        if template is not None:
            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
            except ValueError as exc:
                hint = "write literal braces as {{ and }}"
                raise ValueError(f"cannot parse template: {exc} ({hint})") from None
            if any(f == "" or f.isdigit() for f in fields):
                raise ValueError("template fields must be named, as in {text}")
        return template

    def check_paths(self) -> None:
        """The files a run reads and writes: the input exists, and nothing overwrites it."""
        if not self.input.is_file():
            raise ConfigError(f"input file {self.input} does not exist")
        if self.output_path.is_dir():
            raise ConfigError(f"the output {self.output_path} is a folder: --output names a file")
        if self.output_path.resolve() == self.input.resolve():
            raise ConfigError(f"the output would overwrite the input {self.input}: change --output")
        if self.errors_file and self.errors_file.resolve() in (
            self.input.resolve(),
            self.output_path.resolve(),
        ):
            raise ConfigError(f"--errors-file {self.errors_file} must differ from input and output")
        if (review := self.review_path) and review.resolve() in (
            self.input.resolve(),
            self.output_path.resolve(),
            self.errors_file.resolve() if self.errors_file else None,
        ):
            raise ConfigError(f"--review-file {review} must differ from input and outputs")

    def fingerprint(self, schema: OutputSchema | None) -> str:
        """Names the settings that shape a label; rows from different settings never mix."""
        shaping: dict[str, Any] = {
            "model": self.model,
            "schema": schema.json_schema if schema else None,
            "template": self.template,
            "system": self.system,
            "options": self.options,
        }
        if self.think is not None:  # only when set, so that earlier outputs keep their stamp
            shaping["think"] = self.think
        canonical = json.dumps(shaping, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def output_path(self) -> Path:
        sharded = self.shard_spec.suffix if self.shard_spec else ""
        return self.output or _swap_suffix(self.input, sharded + ".out.jsonl")

    @property
    def summary_path(self) -> Path:
        return self.summary or _swap_suffix(self.output_path, ".summary.json")

    @property
    def review_path(self) -> Path | None:
        """Where `--review-below` writes, when it is set."""
        if self.review_below is None:
            return None
        return self.review_file or _swap_suffix(self.output_path, ".review.jsonl")

    @property
    def asks_logprobs(self) -> bool:
        """--review-below needs confidence, so it asks for log-probabilities too."""
        return self.logprobs or self.review_below is not None

    @model_validator(mode="after")
    def _review_file_has_a_threshold(self) -> JobConfig:
        if self.review_file is not None and self.review_below is None:
            raise ValueError("--review-file needs --review-below P")
        return self


def _swap_suffix(path: Path, suffix: str) -> Path:
    name = path.name.removesuffix(".jsonl") if path.name.endswith(".jsonl") else path.stem
    return path.with_name(name + suffix)


# Settings the environment and job file may carry, with the flag each is known by.
FLAG_NAMES = {
    "output": "--output",
    "summary": "--summary",
    "model": "--model",
    "hosts": "--host",
    "concurrency": "--concurrency",
    "max_concurrency": "--max-concurrency",
    "timeout": "--timeout",
    "options": "--option",
    "schema_ref": "--schema",
    "template": "--template",
    "system": "--system",
    "max_attempts": "--max-attempts",
    "deadline": "--deadline",
    "max_tokens": "--max-tokens",
    "max_requests": "--max-requests",
    "backoff": "--backoff",
    "backoff_max": "--backoff-max",
    "grace_period": "--grace-period",
    "overwrite": "--overwrite",
    "quiet": "--quiet",
    "log_every": "--log-every",
    "embedded_contexts": "--embedded-contexts",
    "output_format": "--output-format",
    "ordered": "--ordered",
    "allow_outside_images": "--allow-outside-images",
    "errors_file": "--errors-file",
    "headers": "--header",
    "ca_bundle": "--ca-bundle",
    "insecure": "--insecure",
    "proxy": "--proxy",
    "keep_alive": "--keep-alive",
    "think": "--think",
    "shard": "--shard",
    "shards": "--shards",
    "logprobs": "--logprobs",
    "review_below": "--review-below",
    "review_file": "--review-file",
    "prune": "--prune",
    "dedup": "--no-dedup",
    "cache": "--cache",
}
FILE_KEYS = {"host": "hosts", "schema": "schema_ref"}  # job-file spellings of field names
PATH_KEYS = ("output", "summary", "errors_file", "ca_bundle", "review_file", "cache")


def load_config(
    flags: Mapping[str, Any], environ: Mapping[str, str] | None = None, job_file: Path | None = None
) -> JobConfig:
    """Build the config from flags (only those given), the environment and the job file."""
    environ = os.environ if environ is None else environ
    if "input" not in flags:
        raise ConfigError("no input file given")
    input_path = Path(flags["input"])
    file_values, file_name = _read_job_file(job_file or _find_job_file(input_path, environ))
    env_values = _read_environ(environ)
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for values, source in ((file_values, file_name), (env_values, "environment"), (flags, "")):
        for key, value in values.items():
            if key == "options":
                if not isinstance(value, Mapping):
                    raise ConfigError(f"options (from {source or '--option'}) must be a table")
                value = {**merged.get("options", DEFAULT_OPTIONS), **value}
            if key == "headers":
                value = merge_headers(merged.get("headers", {}), value, source or "--header")
            merged[key] = value
            origin[key] = source or FLAG_NAMES.get(key, key)
    if "shard" not in merged and (shard := shard_from_environ(environ, merged.get("shards"))):
        merged["shard"], origin["shard"] = shard, "the scheduler's environment"
    try:
        return JobConfig(**merged)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            if not error["loc"]:  # a check across settings: its message names them
                problems.append(error["msg"].removeprefix("Value error, "))
                continue
            key = str(error["loc"][0])
            where = origin.get(key, key)
            problems.append(f"{FLAG_NAMES.get(key, key)} (from {where}): {error['msg']}")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems)) from None


def _find_job_file(input_path: Path, environ: Mapping[str, str]) -> Path | None:
    if named := environ.get("BATCH_JOB_FILE"):
        return Path(named)
    for candidate in (input_path.with_suffix(".toml"), input_path.parent / "batch.toml"):
        if candidate.is_file():
            return candidate
    return None


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
        field = FILE_KEYS.get(key, key.replace("-", "_"))
        if field == "api_key":
            raise ConfigError(f"job file {path}: keep the API key out of files: set OLLAMA_API_KEY")
        if field not in FLAG_NAMES:
            known = ", ".join(sorted({FILE_KEYS.get(k, k) for k in FLAG_NAMES} | set(FILE_KEYS)))
            raise ConfigError(f"job file {path}: unknown setting {key!r} (known: {known})")
        if field == "hosts" and isinstance(value, str):
            value = [value]
        # Paths in a job file are relative to the file, so the job runs from any directory.
        if field in PATH_KEYS and isinstance(value, str):
            value = str(path.parent / value)
        if field == "schema_ref" and isinstance(value, str) and value.endswith(".json"):
            value = str(path.parent / value)
        values[field] = value
    return values, str(path)


def _read_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if host := environ.get("OLLAMA_HOST", "").strip():
        values["hosts"] = [host]
    if api_key := environ.get("OLLAMA_API_KEY", "").strip():
        values["api_key"] = api_key
    for field in FLAG_NAMES:
        name = "BATCH_" + ("HOST" if field == "hosts" else field.upper())
        if field == "schema_ref":
            name = "BATCH_SCHEMA"
        raw = environ.get(name)
        if raw is None or raw == "":
            continue
        if field == "hosts":
            values[field] = [h.strip() for h in raw.split(",") if h.strip()]
        elif field in ("options", "headers"):
            try:
                parsed = json.loads(raw)
            except json.JSONDecodeError:
                parsed = None
            if not isinstance(parsed, dict):
                example = '{"seed": 1}' if field == "options" else '{"X-Proxy-Token": "..."}'
                raise ConfigError(f"{name} must be a JSON object, as in {name}='{example}'")
            values[field] = parsed
        else:
            values[field] = raw
    return values


def parse_option(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` from --option; the value is read as JSON when it parses, else as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--option {text!r}: write it as KEY=VALUE, e.g. --option num_ctx=8192")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value
