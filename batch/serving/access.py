"""Settings for reaching a production Ollama: headers per host, keep-alive, think, and how a host
URL is shown. Parsed here so that run/settings.py stays a list of fields; secrets stay `SecretStr`.

Headers, the same shape from the job file's `[headers]` table and `BATCH_HEADERS` (JSON):
    {"X-Team": "labelling", "https://gw.example.com": {"X-Proxy-Token": "..."}}
and from the command line, curl-like, with an optional host URL and a space in front:
    --header "X-Team: labelling"   --header "https://gw.example.com X-Proxy-Token: ..."
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from batch.core.errors import ConfigError

EVERY_HOST = "*"
Headers = dict[str, dict[str, SecretStr]]
ThinkSetting = bool | Literal["low", "medium", "high", "max"] | None
OLLAMA_PORT = 11434

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # an HTTP header name (RFC 9110)
# "[HOST ]NAME: VALUE": a host never ends in a colon, a header name never holds a space.
_HEADER_FLAG = re.compile(r"^(?:(\S*[^\s:])\s+)?([!#$%&'*+\-.^_`|~0-9A-Za-z]+):(.*)$", re.DOTALL)
_GO_DURATION = re.compile(r"^[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+$")
_THINK_WORDS: dict[str, ThinkSetting] = {
    "auto": None,
    "on": True,
    "true": True,
    "yes": True,
    "1": True,
    "off": False,
    "false": False,
    "no": False,
    "0": False,
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",  # Ollama's ThinkValue takes it too (api/types.go)
}


def normal_host(url: str) -> str:
    """A host value as the ollama client reads it: `gpu1` and `gpu1:11434` are
    `http://gpu1:11434`; an explicit scheme keeps its own default port. Credentials stay."""
    url = url.strip()
    if "://" in url:
        return url
    parts = urlsplit(f"http://{url}")
    try:
        port = parts.port
    except ValueError:  # e.g. an IPv6 address without brackets: left for the client to refuse
        return f"http://{url}"
    if port is None and (parts.hostname or ""):
        hostport = parts.netloc + f":{OLLAMA_PORT}"
        return urlunsplit(("http", hostport, parts.path, "", ""))
    return f"http://{url}"


def display_host(url: str) -> str:
    """The host URL as shown to users (and matched, probed, sent to): normalised as the
    client does, never with credentials in it."""
    parts = urlsplit(normal_host(url))
    netloc = parts.hostname or ""
    if ":" in netloc:  # an IPv6 address
        netloc = f"[{netloc}]"
    try:
        port = parts.port
    except ValueError:
        return url.strip()  # not a URL the client can use; it says so on the first request
    if port:
        netloc = f"{netloc}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def redacted_host(url: str) -> str:
    """`url` as given, with any password replaced by `***` (for reprs, where the user's
    own spelling helps more than the normalised one)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, hostpart = rest.partition("@")
    if not at or "/" in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{hostpart}"


def host_key(url: str) -> str:
    """How a host is matched against a per-host headers key: as displayed, lower case."""
    return display_host(url.strip()).lower()


def parse_headers(raw: Any) -> Headers:
    """Flag strings, or a mapping of names to values and host URLs to such mappings."""
    headers: Headers = {}
    if isinstance(raw, str):
        raw = [raw]
    if isinstance(raw, list | tuple):
        for text in raw:
            host, name, value = _parse_header_flag(str(text))
            _add(headers, host, name, value)
        return headers
    if not isinstance(raw, Mapping):
        raise ValueError("headers must be a table of NAME = VALUE, or of host URL to such tables")
    for key, value in raw.items():
        if isinstance(value, Mapping):
            host = EVERY_HOST if key == EVERY_HOST else host_key(str(key))
            for name, text in value.items():
                _add(headers, host, str(name), text)
        else:
            _add(headers, EVERY_HOST, str(key), value)
    return headers


def _parse_header_flag(text: str) -> tuple[str, str, str]:
    match = _HEADER_FLAG.match(text.strip())
    if match is None:
        # Quote only the start: the rest may be the secret the user meant as the value.
        start = re.split(r"[\s:]", text.strip(), maxsplit=1)[0]
        raise ValueError(
            f"--header {start!r}...: write it as 'NAME: VALUE' or 'HOST_URL NAME: VALUE'"
        )
    host, name, value = match.groups()
    return (host_key(host) if host else EVERY_HOST), name, value.strip()


def _add(headers: Headers, host: str, name: str, value: Any) -> None:
    if not _TOKEN.match(name):
        raise ValueError(f"header name {name!r} is not a valid HTTP header name")
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    if not isinstance(text, str | int | float) or isinstance(text, bool):
        raise ValueError(f"header {name}: the value must be a string")
    text = str(text)
    if "\r" in text or "\n" in text:
        raise ValueError(f"header {name}: the value must be one line")
    for existing in list(headers.get(host, {})):
        if existing.lower() == name.lower():  # header names are case-insensitive
            del headers[host][existing]
    headers.setdefault(host, {})[name] = SecretStr(text)


def merge_headers(base: Headers, raw: Any, source: str) -> Headers:
    """`raw` (from one settings source) over `base`, name by name, host by host."""
    try:
        layer = parse_headers(raw)
    except ValueError as exc:
        raise ConfigError(f"{exc} (from {source})") from None
    merged: Headers = {host: dict(names) for host, names in base.items()}
    for host, names in layer.items():
        for name, value in names.items():
            _add(merged, host, name, value)
    return merged


def check_header_hosts(headers: Headers, hosts: Iterable[str]) -> None:
    """A per-host header naming no configured host is a typo that would send nothing."""
    known = {host_key(h) for h in hosts}
    for host in headers:
        if host != EVERY_HOST and host not in known:
            raise ValueError(
                f"headers are set for {host}, which is not one of the hosts "
                f"({', '.join(sorted(known))}): spell it as in --host"
            )


def headers_for(headers: Headers, host: str) -> dict[str, str]:
    """The headers sent to `host`: those for every host, then its own on top."""
    chosen: dict[str, str] = {}
    for key in (EVERY_HOST, host_key(host)):
        for name, value in headers.get(key, {}).items():
            for existing in list(chosen):
                if existing.lower() == name.lower():
                    del chosen[existing]
            chosen[name] = value.get_secret_value()
    return chosen


def keep_alive_value(value: Any) -> float | str | None:
    """Ollama's keep_alive: seconds (a number; negative: forever) or a Go duration ("30m")."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("keep_alive is a duration such as 30m or 1h, or seconds; -1 is forever")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)  # Ollama reads "-1" (a string) as a duration with no unit: an error
    except ValueError:
        pass
    if not _GO_DURATION.match(text):
        raise ValueError(
            f"keep_alive {text!r} is not a duration: write 30m, 1h30m or 90s, "
            "or a number of seconds (-1: forever, 0: unload at once)"
        )
    return text


def parse_think(value: Any) -> ThinkSetting:
    if value is None or isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word not in _THINK_WORDS:
        raise ValueError(f"think {value!r}: use auto, on, off, low, medium, high or max")
    return _THINK_WORDS[word]
