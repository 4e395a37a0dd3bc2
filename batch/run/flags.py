"""How a setting is given: the `Flag` each setting declares (settings.py), and what is built
from those declarations: the flags of `run` and `plan`, each setting's environment variable and
job-file key, and the name a message calls it by."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from batch.core.errors import ConfigError


@dataclass(frozen=True)
class Flag:
    """How a setting is given: on the command line, in the environment, in a job file."""

    names: tuple[str, ...]  # command-line names; () for a setting that has no flag
    help: str = ""
    metavar: str | None = None
    action: Literal["store_true", "store_false", "append"] | None = None
    type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    key: str | None = ""  # the job-file key; "": the setting's name; None: never from a file
    env: str = ""  # the environment variable; "": BATCH_ and the job-file key in capitals
    env_alias: str | None = None  # read before `env`: one value, stripped (OLLAMA_HOST)
    env_form: Literal["text", "stripped", "list", "object"] = "text"
    env_example: str = ""  # for `object`: what a JSON object for it looks like
    relative: Literal["path", "json_file"] | None = None  # to the job file that gives it
    secret: str = ""  # what the value is, when it must never come from a file
    # Folds a later layer's value into an earlier one's (options and headers add up).
    merge: Callable[[Any, Any, str], Any] | None = None
    from_flags: Callable[[Any], Any] | None = None  # the parsed flag's value -> the setting's


@dataclass(frozen=True)
class Setting:
    name: str  # the field's name: the flag's dest, and JobConfig's flat keyword
    group: str  # the JobConfig attribute that holds it
    flag: Flag

    @property
    def shown(self) -> str:
        """What messages call it: the flag a user types, else its name."""
        return self.flag.names[-1] if self.flag.names else self.name

    @property
    def key(self) -> str | None:
        return self.name if self.flag.key == "" else self.flag.key

    @property
    def env(self) -> str:
        return self.flag.env or "BATCH_" + (self.key or self.name).upper()


def settings_of(groups: Mapping[str, type[BaseModel]]) -> dict[str, Setting]:
    """Every field of every group that declares a `Flag`, by name, in declaration order."""
    found: dict[str, Setting] = {}
    for group, model in groups.items():
        for name, info in model.model_fields.items():
            flag = next((m for m in info.metadata if isinstance(m, Flag)), None)
            if flag is not None:
                found[name] = Setting(name, group, flag)
    return found


def add_flags(
    parser: argparse.ArgumentParser,
    groups: Mapping[str, type[BaseModel]],
    then: Mapping[str, Callable[[argparse._ArgumentGroup], None]] | None = None,
) -> None:
    """One argument group a settings group, titled as it is, holding its settings' flags, then
    whatever `then` adds to it (flags that are not settings). Only flags the user typed reach
    the namespace (default=SUPPRESS), so that the environment and the job file fill in the rest."""
    settings = settings_of(groups)
    for group, model in groups.items():
        made = parser.add_argument_group(getattr(model, "title", group))
        for setting in settings.values():
            if setting.group == group and setting.flag.names:
                _add(made, setting)
        if then is not None and group in then:
            then[group](made)


def _add(group: argparse._ArgumentGroup, setting: Setting) -> None:
    flag = setting.flag
    optional = {"metavar": flag.metavar, "action": flag.action, "type": flag.type}
    kwargs: dict[str, Any] = {k: v for k, v in optional.items() if v is not None}
    if flag.choices is not None:
        kwargs["choices"] = list(flag.choices)
    group.add_argument(
        *flag.names, dest=setting.name, default=argparse.SUPPRESS, help=flag.help, **kwargs
    )


def given_flags(namespace: argparse.Namespace, settings: Mapping[str, Setting]) -> dict[str, Any]:
    """The settings the user typed, as the settings take them (`--option` pairs as a table)."""
    given = {}
    for name, value in vars(namespace).items():
        setting = settings.get(name)
        convert = setting.flag.from_flags if setting is not None else None
        given[name] = convert(value) if convert is not None else value
    return given


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


def options_from_flags(given: list[str]) -> dict[str, Any]:
    return dict(parse_option(o) for o in given)
