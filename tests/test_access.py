"""Production settings as parsed: headers per host from every source, keep-alive, think, and a
config whose repr holds no secret."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batch.core.errors import ConfigError
from batch.run.config import load_config
from batch.serving.access import (
    Headers,
    display_host,
    headers_for,
    keep_alive_value,
    parse_headers,
    parse_think,
)
from batch.serving.http_client import AccessSettings, connect


def plain(headers: Headers) -> dict[str, dict[str, str]]:
    return {h: {n: v.get_secret_value() for n, v in names.items()} for h, names in headers.items()}


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("X-Team: ml", {"*": {"X-Team": "ml"}}),
        ("Authorization: Bearer a:b==", {"*": {"Authorization": "Bearer a:b=="}}),
        ("https://gw:8443 X-Gate: a: b", {"https://gw:8443": {"X-Gate": "a: b"}}),
        # A bare host is read as the ollama client reads it: http, port 11434.
        ("gw.example.com X-Gate:v", {"http://gw.example.com:11434": {"X-Gate": "v"}}),
    ],
)
def test_header_flags(flag: str, expected: dict[str, dict[str, str]]) -> None:
    assert plain(parse_headers([flag])) == expected


@pytest.mark.parametrize("flag", ["no colon", "a b c: d", "Bad@Name: x", "X-A: one\ntwo"])
def test_bad_header_flags(flag: str) -> None:
    with pytest.raises(ValueError):
        parse_headers([flag])


def test_a_malformed_header_flag_is_not_echoed_whole() -> None:
    with pytest.raises(ValueError) as info:
        parse_headers(["X-Token s3cret-value"])  # the colon forgotten
    assert "X-Token" in str(info.value) and "s3cret" not in str(info.value)


def test_headers_merge_from_file_environment_and_flags(tmp_path: Path) -> None:
    rows = tmp_path / "in.jsonl"
    rows.write_text("")
    (tmp_path / "in.toml").write_text(
        'host = ["http://a:1", "https://b"]\n'
        '[headers]\n"X-Team" = "file"\n"X-Keep" = "k"\n'
        '[headers."https://b/"]\n"X-Gate" = "from-file"\n'
    )
    environ = {"BATCH_HEADERS": json.dumps({"x-team": "env"})}
    config = load_config({"input": rows, "headers": ["https://b X-Gate: flag"]}, environ)
    assert headers_for(config.access.headers, "http://a:1") == {"X-Keep": "k", "x-team": "env"}
    assert headers_for(config.access.headers, "https://b") == {
        "X-Keep": "k",
        "x-team": "env",
        "X-Gate": "flag",
    }


def test_the_api_key_is_read_from_the_environment_and_never_from_the_job_file(
    tmp_path: Path,
) -> None:
    rows = tmp_path / "in.jsonl"
    rows.write_text("")
    config = load_config({"input": rows}, {"OLLAMA_API_KEY": "k-12345"})
    assert (
        config.access.api_key is not None and config.access.api_key.get_secret_value() == "k-12345"
    )
    (tmp_path / "in.toml").write_text('api_key = "k-12345"\n')
    with pytest.raises(ConfigError, match="OLLAMA_API_KEY"):
        load_config({"input": rows}, {})


def test_the_config_repr_holds_no_secret(tmp_path: Path) -> None:
    rows = tmp_path / "in.jsonl"
    rows.write_text("")
    config = load_config(
        {
            "input": rows,
            "hosts": ["https://u:pw-secret-1@gw.example.com"],
            "headers": ["X-Gate: hdr-secret-2"],
            "proxy": "http://p:proxy-secret-3@proxy:3128",
        },
        {"OLLAMA_API_KEY": "key-secret-4"},
    )
    for text in (repr(config), str(config)):
        assert "secret" not in text
        assert "https://u:***@gw.example.com" in text


def test_connect_sends_each_host_only_its_own_headers() -> None:
    headers = parse_headers({"X-All": "1", "https://a": {"X-Only-A": "2"}})
    access = AccessSettings(api_key="key-1234", headers=headers)
    to_a, to_b = connect("https://a", access), connect("https://b", access)
    assert to_a.headers == {
        "X-All": "1",
        "X-Only-A": "2",
        "Authorization": "Bearer key-1234",
    }
    assert to_b.headers == {"X-All": "1", "Authorization": "Bearer key-1234"}
    # A host's own Authorization header wins over the API key, which is then not sent at all.
    own = parse_headers({"https://a": {"authorization": "Token abcd"}})
    assert connect("https://a", AccessSettings(api_key="key-1234", headers=own)).headers == {
        "authorization": "Token abcd"
    }


def test_credentials_in_the_url_leave_the_client_url_and_the_display() -> None:
    conn = connect("https://us%40er:p%3Ass@h.example:8443/ollama", AccessSettings())
    assert conn.host == "https://h.example:8443/ollama"
    assert conn.secrets == ("p:ss",)
    assert display_host("https://us%40er:p%3Ass@h.example:8443/ollama/") == (
        "https://h.example:8443/ollama"
    )


@pytest.mark.parametrize(
    ("raw", "value"),
    [("30m", "30m"), ("1h30m", "1h30m"), ("-1", -1.0), ("300", 300.0), (0, 0.0), (None, None)],
)
def test_keep_alive_values(raw: object, value: object) -> None:
    assert keep_alive_value(raw) == value


@pytest.mark.parametrize(
    ("raw", "value"),
    [("auto", None), ("on", True), ("off", False), ("LOW", "low"), (True, True), (None, None)],
)
def test_think_values(raw: object, value: object) -> None:
    assert parse_think(raw) == value
