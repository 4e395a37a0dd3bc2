"""Settings layering: flags over environment over the job file over defaults."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest

from batch.core.errors import ConfigError
from batch.run.config import DEFAULT_HOST, load_config
from batch.run.flags import parse_option


@pytest.fixture
def input_file(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "x"}\n')
    return path


def test_defaults(input_file: Path) -> None:
    config = load_config({"input": input_file}, environ={})
    assert config.serving.hosts == (DEFAULT_HOST,)
    assert config.serving.concurrency == "auto"
    assert config.retries.max_attempts == 5
    assert config.prompt.options == {"temperature": 0}
    assert config.output_path == input_file.with_name("in.out.jsonl")
    assert config.summary_path == input_file.with_name("in.out.summary.json")


def test_job_file_beside_the_input_is_read_with_paths_relative_to_it(input_file: Path) -> None:
    input_file.with_suffix(".toml").write_text(
        'model = "llama3.2"\nhost = "http://gpu:11434"\nconcurrency = 8\n'
        'schema = "labels.json"\noutput = "results/out.jsonl"\n[options]\nnum_ctx = 8192\n'
    )
    config = load_config({"input": input_file}, environ={})
    assert config.prompt.model == "llama3.2"
    assert config.serving.hosts == ("http://gpu:11434",)
    assert config.serving.concurrency == 8
    assert config.prompt.schema_ref == str(input_file.parent / "labels.json")
    assert config.output_path == input_file.parent / "results" / "out.jsonl"
    assert config.prompt.options == {"temperature": 0, "num_ctx": 8192}


def test_flags_win_over_environment_which_wins_over_the_file(input_file: Path) -> None:
    (input_file.parent / "batch.toml").write_text(
        'model = "from-file"\nconcurrency = 2\ntimeout = 7\n[options]\nseed = 1\ntop_k = 5\n'
    )
    environ = {
        "BATCH_MODEL": "from-env",
        "BATCH_CONCURRENCY": "3",
        "OLLAMA_HOST": "http://env-host:11434",
        "BATCH_OPTIONS": '{"seed": 2}',
    }
    flags = {"input": input_file, "model": "from-flag", "options": {"temperature": 0.5}}
    config = load_config(flags, environ=environ)
    assert config.prompt.model == "from-flag"
    assert config.serving.concurrency == 3
    assert config.retries.timeout == 7
    assert config.serving.hosts == ("http://env-host:11434",)
    assert config.prompt.options == {"temperature": 0.5, "seed": 2, "top_k": 5}


def test_invalid_values_name_their_source(input_file: Path) -> None:
    with pytest.raises(ConfigError, match=r"--concurrency \(from environment\)"):
        load_config({"input": input_file}, environ={"BATCH_CONCURRENCY": "many"})
    with pytest.raises(ConfigError, match=r"--max-attempts \(from --max-attempts\)"):
        load_config({"input": input_file, "max_attempts": 0}, environ={})


def test_unknown_job_file_keys_and_bad_toml_are_refused(input_file: Path) -> None:
    job = input_file.with_suffix(".toml")
    job.write_text('modle = "x"\n')
    with pytest.raises(ConfigError, match="unknown setting 'modle'"):
        load_config({"input": input_file}, environ={})
    job.write_text("model = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config({"input": input_file}, environ={})


def test_a_template_with_unnamed_or_broken_fields_is_refused(input_file: Path) -> None:
    with pytest.raises(ConfigError, match="must be named"):
        load_config({"input": input_file, "template": "say {}"}, environ={})
    with pytest.raises(ConfigError, match="cannot parse template"):
        load_config({"input": input_file, "template": "say {text"}, environ={})


def test_options_parse_as_json_values_else_strings() -> None:
    assert parse_option("num_ctx=8192") == ("num_ctx", 8192)
    assert parse_option('stop=["\\n"]') == ("stop", ["\n"])
    assert parse_option("mirostat_tau=5.0") == ("mirostat_tau", 5.0)
    assert parse_option("name=plain") == ("name", "plain")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_option("temperature")


def test_every_declared_setting_is_a_flag_of_run_and_plan_but_budgets_of_run_only() -> None:
    """plan's sample is bounded by its N rows: the budgets would be flags it ignores."""
    from batch.cli import build_parser
    from batch.run.settings import SETTINGS

    declared = {name for setting in SETTINGS.values() for name in setting.flag.names}
    budgets = {"--deadline", "--max-tokens", "--max-requests"}
    [commands] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for command, expected in (("run", declared), ("plan", declared - budgets)):
        parser = commands.choices[command]
        flags = {o for action in parser._actions for o in action.option_strings}
        not_settings = {"-h", "--help", "--job-file", "-v", "--verbose", "--json", "--sample"}
        assert flags - not_settings == expected


def test_every_placeholder_in_run_help_names_a_kind_of_value(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Not argparse's default (the setting's name in capitals, MAX_ATTEMPTS)."""
    from batch.cli import main

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    usage = capsys.readouterr().out.split("\n\n")[0]
    placeholders = set(re.findall(r"[-\w]+ ([A-Z][A-Z_]+)\b", usage))
    assert placeholders <= {
        "FILE",
        "N",
        "URL",
        "TEXT",
        "SECONDS",
        "DURATION",
        "MODEL",
        "P",
        "KEY",
        "NAME",
    }


def test_host_and_model_help_name_the_embedded_model_and_a_hosts_own_concurrency(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from batch.cli import main

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    host = help_text[help_text.index("--host URL|embedded ") :][:400]
    assert "embedded" in host and "URL#N" in host
    model = help_text[help_text.index("--model MODEL ") :][:300]
    assert ".gguf" in model and "gemma3:270m" in model


def test_every_declared_setting_is_read_from_its_job_file_key_and_variable(
    input_file: Path,
) -> None:
    from batch.run.settings import SETTINGS

    job = input_file.with_suffix(".toml")
    for setting in SETTINGS.values():
        if setting.flag.merge is not None:  # tables: any table is a valid value
            continue
        if setting.key is not None:  # a value of no setting's type reaches this setting
            job.write_text(f"{setting.key} = {{ wrong = 1 }}\n")
            with pytest.raises(ConfigError, match=f"{setting.shown} \\(from {job}\\)"):
                load_config({"input": input_file}, environ={})
        job.unlink(missing_ok=True)
        _reads_variable(input_file, setting.name, setting.env, setting.shown)


def _reads_variable(input_file: Path, name: str, variable: str, shown: str) -> None:
    """Setting `variable` changes the setting `name` alone, or is refused naming it."""
    from batch.run.settings import SETTINGS

    def flat(environ: dict[str, str]) -> dict[str, Any]:
        config = load_config({"input": input_file}, environ=environ)
        return {n: getattr(getattr(config, s.group), n) for n, s in SETTINGS.items()}

    before = flat({})
    try:
        after = flat({variable: "1/1"})
    except ConfigError as exc:
        assert shown in str(exc) or variable in str(exc)
        return
    assert [n for n in SETTINGS if after[n] != before[n]] == [name]


def test_flat_settings_join_their_group_and_are_never_dropped(input_file: Path) -> None:
    from pydantic import ValidationError

    from batch.run.config import JobConfig
    from batch.run.settings import PromptSettings

    config = JobConfig(input=input_file, prompt={"model": "m"}, template="Review: {text}")
    assert (config.prompt.model, config.prompt.template) == ("m", "Review: {text}")
    with pytest.raises(ValidationError, match=r"give prompt whole or its settings \(template\)"):
        JobConfig(input=input_file, prompt=PromptSettings(model="m"), template="Review: {text}")
