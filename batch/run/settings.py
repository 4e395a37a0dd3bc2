"""Every setting of `run` and `plan`, declared once, in the groups a run uses them in.

A setting is one field below: its type, default and checks (pydantic), and in its `Flag` its
command-line names, help text, help group (the group's `title`), environment variable and
job-file key. `run --help`, the environment and job-file readers (config.py) and `JobConfig`
are all built from these declarations: a new setting is one new field.

Unless a `Flag` says otherwise, a setting's job-file key is its name (dashes allowed) and its
environment variable is `BATCH_` and that key in capitals.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from batch.core.errors import ConfigError
from batch.core.ollama_options import checked_options
from batch.labelling.budget import Budgets, parse_deadline
from batch.run.flags import Flag, Setting, options_from_flags, settings_of
from batch.serving.access import (
    Headers,
    ThinkSetting,
    keep_alive_value,
    merge_headers,
    parse_headers,
    parse_think,
)
from batch.serving.hosts import check_host_list
from batch.serving.limits import DEFAULT_CEILING
from batch.source.shards import Shard, parse_shard

DEFAULT_HOST = "http://127.0.0.1:11434"
# Labelling wants the same answer on every run: greedy decoding unless the user says otherwise.
DEFAULT_OPTIONS: dict[str, Any] = {"temperature": 0}


def _concurrency(text: str) -> int | str:
    return text if text == "auto" else int(text)


def _merge_options(earlier: Any, later: Any, source: str) -> dict[str, Any]:
    if not isinstance(later, Mapping):
        raise ConfigError(f"options (from {source or '--option'}) must be a table")
    return {**(DEFAULT_OPTIONS if earlier is None else earlier), **later}


def _merge_headers(earlier: Any, later: Any, source: str) -> Headers:
    return merge_headers(earlier or {}, later, source or "--header")


class SettingsGroup(BaseModel):
    """Settings used together; `title` heads their flags in `--help`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    title: ClassVar[str]


class FileSettings(SettingsGroup):
    title = "input and output"

    output: Annotated[
        Path | None,
        Flag(
            ("-o", "--output"),
            "output JSONL (default: INPUT with .out.jsonl)",
            metavar="FILE",
            type=Path,
            relative="path",
        ),
    ] = None
    summary: Annotated[
        Path | None,
        Flag(
            ("--summary",),
            "summary JSON (default: the output with .summary.json)",
            metavar="FILE",
            type=Path,
            relative="path",
        ),
    ] = None
    # OpenAI Batch files: output lines as OpenAI writes them, in input order, image paths.
    output_format: Annotated[
        Literal["native", "openai"],
        Flag(
            ("--output-format",),
            "native rows (default), or OpenAI Batch output lines (BatchRequestOutput)",
            choices=("native", "openai"),
        ),
    ] = "native"
    ordered: Annotated[
        bool, Flag(("--ordered",), "write output rows in input order", action="store_true")
    ] = False
    errors_file: Annotated[
        Path | None,
        Flag(
            ("--errors-file",),
            "write failed rows here instead of the output (rewritten by every run)",
            metavar="FILE",
            type=Path,
            relative="path",
        ),
    ] = None  # failed rows go here instead of the output, as OpenAI does
    allow_outside_images: Annotated[
        bool,
        Flag(
            ("--allow-outside-images",),
            "let rows read image files outside the input file's folder",
            action="store_true",
        ),
    ] = False
    overwrite: Annotated[
        bool,
        Flag(
            ("--overwrite",),
            "discard an existing output instead of resuming",
            action="store_true",
        ),
    ] = False
    prune: Annotated[
        bool,
        Flag(("--prune",), "take out output rows whose id left the input", action="store_true"),
    ] = False


class PromptSettings(SettingsGroup):
    title = "model and prompt"

    model: Annotated[
        str | None,
        Flag(
            ("-m", "--model"),
            "Ollama model name; with --host embedded, a .gguf file or gemma3:270m (bundled). "
            "A row's own 'model' wins",
        ),
    ] = None
    options: Annotated[
        dict[str, Any],
        Flag(
            ("--option",),
            "Ollama option, repeatable, e.g. num_ctx=8192 (default temperature=0)",
            metavar="KEY=VALUE",
            action="append",
            env_form="object",
            env_example='{"seed": 1}',
            merge=_merge_options,
            from_flags=options_from_flags,
        ),
    ] = Field(default_factory=lambda: dict(DEFAULT_OPTIONS))
    schema_ref: Annotated[
        str | None,
        Flag(
            ("--schema",),
            "validate each result against a pydantic model or a JSON Schema",
            metavar="module:Class|file.json",
            key="schema",
            relative="json_file",
        ),
    ] = None
    template: Annotated[
        str | None,
        Flag(
            ("--template",),
            "build the prompt from row fields: 'Review: {text}'",
            metavar="TEXT",
        ),
    ] = None
    system: Annotated[
        str | None, Flag(("--system",), "system prompt for every row", metavar="TEXT")
    ] = None
    think: Annotated[
        ThinkSetting,
        Flag(
            ("--think",),
            "thinking for thinking models (default auto: off when a schema is set)",
            choices=("auto", "on", "off", "low", "medium", "high", "max"),
        ),
    ] = None  # None: off when a schema is set, else the model's default

    @field_validator("options")
    @classmethod
    def _options_known(cls, options: dict[str, Any]) -> dict[str, Any]:
        return checked_options(options)  # names and types as Ollama reads them

    @field_validator("think", mode="before")
    @classmethod
    def _think_parses(cls, value: Any) -> ThinkSetting:
        return parse_think(value)

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


class QualitySettings(SettingsGroup):
    """Label quality (docs/quality.md): confidence per label, and rows for a person."""

    title = "label quality (see also: batch eval)"

    logprobs: Annotated[
        bool,
        Flag(
            ("--logprobs",),
            "ask for token log-probabilities and record each categorical field's confidence "
            '("confidence" in output rows; Ollama 0.12.11+ or --host embedded)',
            action="store_true",
        ),
    ] = False
    review_below: Annotated[
        float | None,
        Field(gt=0, le=1),
        Flag(
            ("--review-below",),
            "write ok rows whose least confident label is below P to the review file "
            "(implies --logprobs)",
            metavar="P",
            type=float,
        ),
    ] = None
    review_file: Annotated[
        Path | None,
        Flag(
            ("--review-file",),
            "where --review-below writes (default: OUTPUT with .review.jsonl)",
            metavar="FILE",
            type=Path,
            relative="path",
        ),
    ] = None

    @model_validator(mode="after")
    def _review_file_has_a_threshold(self) -> QualitySettings:
        if self.review_file is not None and self.review_below is None:
            raise ValueError("--review-file needs --review-below P")
        return self

    @property
    def asks_logprobs(self) -> bool:
        """--review-below needs confidence, so it asks for log-probabilities too."""
        return self.logprobs or self.review_below is not None


def _members(text: str) -> list[str]:
    return [name.strip() for name in text.split(",")]


class PanelSettings(SettingsGroup):
    """Several answers a row, voted into one (docs/panels.md): a panel of models, samples."""

    title = "panels of models (see also: batch aggregate)"

    panel: Annotated[
        tuple[str, ...],
        Flag(
            ("--panel",),
            "ask each row of every one of these models and vote (a row's own model is not "
            "asked): M1,M2,M3",
            metavar="M1,M2,...",
            type=_members,
            env_form="list",
        ),
    ] = ()
    samples: Annotated[
        int,
        Field(ge=1, le=100),
        Flag(
            ("--samples",),
            "answers from each member (or from --model alone), each with its own seed; "
            "useful with --option temperature above 0",
            metavar="N",
            type=int,
        ),
    ] = 1
    vote: Annotated[
        Literal["majority", "dawid-skene"],
        Flag(
            ("--vote",),
            "majority (default; a tie goes to the earliest member), or dawid-skene: each "
            "member's errors learned over the run, the output re-voted at its end",
            choices=("majority", "dawid-skene"),
        ),
    ] = "majority"
    escalate: Annotated[
        bool,
        Flag(
            ("--escalate",),
            "ask the members after the first two only where those two disagree",
            action="store_true",
        ),
    ] = False
    quorum: Annotated[
        int | None,
        Field(ge=1),
        Flag(
            ("--quorum",),
            "valid votes a row needs to be ok (default: a majority of the answers asked)",
            metavar="K",
            type=int,
        ),
    ] = None

    @field_validator("panel", mode="before")
    @classmethod
    def _panel_parses(cls, value: Any) -> Any:
        """`a,b` or `["a", "b"]`, from a flag, the environment or a job file."""
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list | tuple):
            value = [n.strip() for item in value for n in str(item).split(",")]
            if any(not name for name in value):
                raise ValueError("name every member: M1,M2,M3, with no empty name")
            if len(set(value)) < len(value):
                raise ValueError("a model is named twice: --samples asks one model several times")
        return value

    @model_validator(mode="after")
    def _panel_is_consistent(self) -> PanelSettings:
        if self.escalate and len(self.panel) < 3:
            raise ValueError("--escalate needs a --panel of three or more models")
        voters = max(len(self.panel), 1) * self.samples
        if self.quorum is not None and self.quorum > voters:
            raise ValueError(
                f"--quorum {self.quorum} is more than the {voters} answers a row gets "
                "(--panel members times --samples)"
            )
        return self

    @property
    def active(self) -> bool:
        """Rows get votes: a panel, or several samples of one model."""
        return bool(self.panel) or self.samples > 1


class ReuseSettings(SettingsGroup):
    """Reruns and reuse (docs/deployment.md): duplicates, the shared cache."""

    title = "reuse"

    dedup: Annotated[
        bool,
        Flag(
            ("--no-dedup",),
            "send every row, identical requests too (for independent samples at temperature > 0)",
            action="store_false",
        ),
    ] = True
    cache: Annotated[
        Path | None,
        Flag(
            ("--cache",),
            "SQLite cache of replies shared across runs",
            metavar="FILE",
            type=Path,
            relative="path",
        ),
    ] = None


class HostSettings(SettingsGroup):
    title = "hosts and concurrency"

    hosts: Annotated[
        tuple[str, ...],
        Flag(
            ("--host",),
            "Ollama host URL, or embedded: the model in process (llama.cpp); URL#N gives a host "
            "its own concurrency N; repeatable (default: $OLLAMA_HOST, else "
            "http://127.0.0.1:11434)",
            metavar="URL|embedded",
            action="append",
            key="host",
            env_alias="OLLAMA_HOST",
            env_form="list",
        ),
    ] = (DEFAULT_HOST,)
    # "auto": each host's limit is found as the run goes (serving/limits.py), up to the ceiling.
    concurrency: Annotated[
        Annotated[int, Field(ge=1, le=1024)] | Literal["auto"],
        Flag(
            ("-c", "--concurrency"),
            "requests in flight per host; auto (default): found per host from its replies",
            metavar="N|auto",
            type=_concurrency,
        ),
    ] = "auto"
    max_concurrency: Annotated[
        int,
        Field(ge=1, le=1024),
        Flag(
            ("--max-concurrency",),
            "with auto: the most a host is ever given (default 64)",
            metavar="N",
            type=int,
        ),
    ] = DEFAULT_CEILING
    # llama.cpp contexts for --host embedded; None: one a core (measured fastest on 2 cores).
    embedded_contexts: Annotated[
        int | None,
        Field(ge=1, le=64),
        Flag(
            ("--embedded-contexts",),
            "with --host embedded: llama.cpp contexts, each serving one row at a time "
            "(default: one a core)",
            metavar="N",
            type=int,
        ),
    ] = None

    @field_validator("hosts")
    @classmethod
    def _some_host(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        if not hosts or not all(h.strip() for h in hosts):
            raise ValueError("give at least one non-empty host URL")
        check_host_list(hosts)  # URL#N syntax, no host twice
        return hosts


class RetrySettings(SettingsGroup):
    title = "retries and time"

    timeout: Annotated[
        float,
        Field(gt=0),
        Flag(
            ("--timeout",),
            "limit for each request (default 300)",
            metavar="SECONDS",
            type=float,
        ),
    ] = 300.0
    max_attempts: Annotated[
        int,
        Field(ge=1),
        Flag(("--max-attempts",), "tries per row, any cause (default 5)", metavar="N", type=int),
    ] = 5
    backoff: Annotated[
        float,
        Field(ge=0),
        Flag(("--backoff",), "first retry wait (default 0.5)", metavar="SECONDS", type=float),
    ] = 0.5
    backoff_max: Annotated[
        float,
        Field(ge=0),
        Flag(("--backoff-max",), "longest retry wait (default 10)", metavar="SECONDS", type=float),
    ] = 10.0
    grace_period: Annotated[
        float,
        Field(ge=0),
        Flag(
            ("--grace-period",),
            "time in-flight rows get after SIGINT/SIGTERM (default 5)",
            metavar="SECONDS",
            type=float,
        ),
    ] = 5.0
    keep_alive: Annotated[
        float | str | None,
        Flag(
            ("--keep-alive",),
            "keep_alive sent with each request, e.g. 1h or -1 (default: 30m during the run, "
            "then the server's default)",
            metavar="DURATION",
        ),
    ] = None  # None: 30m while running, then the server's default

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _keep_alive_parses(cls, value: Any) -> float | str | None:
        return keep_alive_value(value)


class BudgetSettings(SettingsGroup):
    """Met, the run stops taking rows and exits 3 (labelling/budget.py)."""

    title = "budgets (met: exit 3, run again to continue)"

    deadline: Annotated[
        float | None,
        Flag(
            ("--deadline",),
            "start no row that cannot end by then (50m, 1h30m, or an ISO time); in-flight rows "
            "finish, the summary is written",
            metavar="DURATION|TIME",
        ),
    ] = None  # a Unix time; given as a duration from now or an ISO time
    max_tokens: Annotated[
        int | None,
        Field(ge=1),
        Flag(
            ("--max-tokens",),
            "input plus output tokens, every attempt",
            metavar="N",
            type=int,
        ),
    ] = None
    max_requests: Annotated[
        int | None,
        Field(ge=1),
        Flag(("--max-requests",), "requests sent, every attempt", metavar="N", type=int),
    ] = None

    @field_validator("deadline", mode="before")
    @classmethod
    def _deadline_parses(cls, value: Any) -> float | None:
        return parse_deadline(value) if isinstance(value, str) else value

    def limits(self) -> Budgets:
        return Budgets(self.deadline, self.max_tokens, self.max_requests)


class AccessTlsSettings(SettingsGroup):
    """Reaching Ollama in production (docs/deployment.md)."""

    title = "access and TLS"

    # Host ("*": every host) -> name -> value.
    headers: Annotated[
        Headers,
        Flag(
            ("--header",),
            "HTTP header for every host, or for one host; repeatable. Keep secrets in "
            "BATCH_HEADERS or the job file: flags show in `ps`. The API key is OLLAMA_API_KEY",
            metavar="'[HOST_URL ]NAME: VALUE'",
            action="append",
            env_form="object",
            env_example='{"X-Proxy-Token": "..."}',
            merge=_merge_headers,
        ),
    ] = Field(default_factory=dict)
    ca_bundle: Annotated[
        Path | None,
        Flag(
            ("--ca-bundle",),
            "PEM file of the CAs to trust for https",
            metavar="FILE",
            type=Path,
            relative="path",
        ),
    ] = None
    insecure: Annotated[
        bool,
        Flag(("--insecure",), "do not verify TLS certificates (warns)", action="store_true"),
    ] = False
    proxy: Annotated[
        SecretStr | None,
        Flag(
            ("--proxy",),
            "proxy for every host, loopback included (default: HTTP(S)_PROXY, never loopback)",
            metavar="URL",
        ),
    ] = None  # for every host, loopback included; None: HTTP(S)_PROXY
    # Never a flag (visible in `ps`) nor the job file (often committed).
    api_key: Annotated[
        SecretStr | None,
        Flag((), key=None, env="OLLAMA_API_KEY", env_form="stripped", secret="API key"),
    ] = None

    @field_validator("headers", mode="before")
    @classmethod
    def _headers_parse(cls, headers: Any) -> Any:
        return parse_headers(headers) if headers else {}

    @model_validator(mode="after")
    def _tls_is_consistent(self) -> AccessTlsSettings:
        if self.insecure and self.ca_bundle is not None:
            raise ValueError("give --ca-bundle or --insecure, not both")
        return self


class ShardSettings(SettingsGroup):
    """Shards (source/shards.py): "K/N", or N alone with K from the scheduler's environment."""

    title = "shards"

    shard: Annotated[
        str | None,
        Flag(
            ("--shard",),
            "run only shard K (from 0) of N; see docs/deployment.md 'Shards'",
            metavar="K/N",
        ),
    ] = None
    shards: Annotated[
        int | None,
        Field(ge=1, le=100_000),
        Flag(
            ("--shards",),
            "shard count when K comes from the scheduler",
            metavar="N",
            type=int,
        ),
    ] = None

    @field_validator("shard")
    @classmethod
    def _shard_parses(cls, shard: str | None) -> str | None:
        return None if shard is None else str(parse_shard(shard))

    @model_validator(mode="after")
    def _shards_agree(self) -> ShardSettings:
        if self.shards is not None and self.shard is None:
            raise ValueError(
                f"--shards {self.shards} needs the shard to run: give --shard K/{self.shards}, "
                "or run under a Kubernetes Indexed Job (JOB_COMPLETION_INDEX)"
            )
        if self.shards is not None and (spec := self.spec) and spec.count != self.shards:
            raise ValueError(f"--shard {spec} and --shards {self.shards} disagree on N")
        return self

    @property
    def spec(self) -> Shard | None:
        return None if self.shard is None else parse_shard(self.shard)


class DisplaySettings(SettingsGroup):
    title = "display"

    quiet: Annotated[bool, Flag(("-q", "--quiet"), "no progress display", action="store_true")] = (
        False
    )
    log_every: Annotated[
        float,
        Field(gt=0),
        Flag(
            ("--log-every",),
            "seconds between progress lines when stderr is not a terminal (default 10)",
            metavar="SECONDS",
            type=float,
        ),
    ] = 10.0


class ObserveSettings(SettingsGroup):
    title = "metrics, traces and logs (see docs/observe.md)"

    metrics_textfile: Annotated[
        Path | None,
        Flag(
            ("--metrics-textfile",),
            "write Prometheus metrics here for node_exporter's textfile collector, during the "
            "run and at its end",
            metavar="FILE",
            type=Path,
            relative="path",
        ),
    ] = None
    pushgateway: Annotated[
        str | None,
        Flag(
            ("--pushgateway",),
            "push Prometheus metrics to this Pushgateway during the run and at its end",
            metavar="URL",
        ),
    ] = None
    metrics_job: Annotated[
        str,
        Field(min_length=1),
        Flag(("--metrics-job",), "the Pushgateway's job label (default batch)", metavar="NAME"),
    ] = "batch"
    metrics_port: Annotated[
        str | None,
        Flag(
            ("--metrics-port",),
            "serve a live Prometheus /metrics while the run lasts",
            metavar="[ADDR:]PORT",
        ),
    ] = None
    otel: Annotated[
        bool,
        Flag(
            ("--otel",),
            "export OpenTelemetry traces and metrics over OTLP (on by itself when "
            "OTEL_EXPORTER_OTLP_ENDPOINT is set)",
            action="store_true",
        ),
    ] = False
    log_format: Annotated[
        Literal["human", "json"],
        Flag(
            ("--log-format",),
            "human (default), or json: one JSON object a stderr line, each with an event",
            choices=("human", "json"),
        ),
    ] = "human"

    @field_validator("metrics_port")
    @classmethod
    def _port_parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value

    @field_validator("pushgateway")
    @classmethod
    def _gateway_is_a_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not a URL: give http://HOST:9091")
        return value

    @property
    def listen(self) -> tuple[str, int] | None:
        return None if self.metrics_port is None else parse_listen(self.metrics_port)

    @property
    def metrics_wanted(self) -> bool:
        return any((self.metrics_textfile, self.pushgateway, self.metrics_port))


def parse_listen(text: str) -> tuple[str, int]:
    """`[ADDR:]PORT` -> (address, port); every interface when no address is given."""
    address, _, port = text.strip().rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not [ADDR:]PORT: give e.g. 9464 or 127.0.0.1:9464")
    return address.strip("[]") or "0.0.0.0", int(port)


# JobConfig's attribute for each group, in the order `--help` shows them.
GROUPS: dict[str, type[SettingsGroup]] = {
    "files": FileSettings,
    "prompt": PromptSettings,
    "quality": QualitySettings,
    "voting": PanelSettings,
    "reuse": ReuseSettings,
    "serving": HostSettings,
    "retries": RetrySettings,
    "budgets": BudgetSettings,
    "access": AccessTlsSettings,
    "sharding": ShardSettings,
    "display": DisplaySettings,
    "observe": ObserveSettings,
}
SETTINGS: dict[str, Setting] = settings_of(GROUPS)
