"""Property tests: hostile lines, replies, schemas and job files, through `main` and the real
Ollama client against the fake server. On every example: no traceback, exit 0 or 1 for a
row's trouble and 2 (with one message) for the run's, one output line per non-blank input
line, and every output line strict JSON.

Example counts are small so the suite stays fast; HYPOTHESIS_PROFILE=deep runs many more,
without the per-test timeout (tests/conftest.py registers the profiles).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batch.cli import main
from batch.core.jsontext import MAX_DEPTH, MAX_REPLY_CHARS
from batch.source.reader import BOM
from batch.testing import FakeOllama
from tests.conftest import FAST_RETRIES, assert_strict_jsonl

MODEL = "fake-model"
# The deep profile runs for minutes: no per-test timeout then.
pytestmark = pytest.mark.timeout(0 if os.environ.get("HYPOTHESIS_PROFILE") == "deep" else 60)
SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["pos", "neg"]}, "score": {"type": "number"}},
    "required": ["label"],
}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOllama]:
    with FakeOllama() as fake:
        yield fake


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("hostile")


_examples = itertools.count()


def fresh(workdir: Path) -> Path:
    """A folder of its own for each example (hypothesis reruns a test body many times)."""
    folder = workdir / f"example-{next(_examples)}"
    folder.mkdir()
    (folder / "schema.json").write_text(json.dumps(SCHEMA))
    return folder


def run(folder: Path, url: str, *extra: str) -> tuple[int, str]:
    """`batch run` on folder/in.jsonl: (exit code, stderr). An exception escaping `main`
    fails the example: that is the traceback a user would see."""
    argv = ["run", str(folder / "in.jsonl"), "--host", url, "--model", MODEL, "-q"]
    argv += ["--schema", str(folder / "schema.json"), "--max-attempts", "2", *FAST_RETRIES]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([*argv, *extra])
    return code, err.getvalue()


def check_run(code: int, err: str, *, allowed: tuple[int, ...]) -> None:
    assert code in allowed, err
    assert "Traceback" not in err and "unexpected" not in err, err
    if code == 2:
        errors = [line for line in err.splitlines() if " ERROR " in line]
        assert len(errors) == 1, err


def rows_in(data: bytes) -> int:
    """Non-blank lines, as the reader counts them (a BOM opening the file is not a line)."""
    return sum(1 for raw in data.removeprefix(BOM).split(b"\n") if raw.strip())


def check_output(folder: Path, expected_rows: int | None) -> None:
    for path in folder.glob("*.out.jsonl"):
        assert_strict_jsonl(path)
        if expected_rows is not None:
            assert path.read_bytes().count(b"\n") == expected_rows


# --- hostile input lines ---------------------------------------------------------------------

SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
TEXT = st.text(alphabet=st.one_of(st.characters(), SURROGATES), max_size=30)
ODD_IDS = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    TEXT,
    st.floats(),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.just(""),
)


def _json(value: Any, ascii_only: bool) -> str:
    # allow_nan: Python writes NaN into JSONL files, so inputs hold it.
    return json.dumps(value, ensure_ascii=ascii_only)


@st.composite
def row_line(draw: st.DrawFn) -> bytes:
    """A JSON object (often), with odd ids, surrogates, deep or huge values, repeated keys."""
    ascii_only = draw(st.booleans())  # False: surrogates go out as raw (invalid) UTF-8 bytes
    members = []
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.sampled_from(["id", "id", "prompt", "prompt", "custom_id", "meta", "system"]))
        value = draw(
            st.one_of(
                ODD_IDS.map(lambda v: _json(v, ascii_only)),
                st.integers(1, 3 * MAX_DEPTH).map(lambda d: "[" * d + "]" * d),
                st.integers(0, 40_000).map(lambda n: json.dumps("x" * n)),
                st.sampled_from(["NaN", "-Infinity", "1e999", "9" * 5000, "{", "]"]),
            )
        )
        members.append(f"{json.dumps(key)}: {value}")
    text = "{" + ", ".join(members) + "}"
    raw = text.encode("utf-8", "surrogatepass")
    cut = draw(st.integers(0, len(raw)))
    insert = draw(st.sampled_from([b"", b"", BOM, b"\r", b"\x00", b"\xff"]))
    return raw[:cut] + insert + raw[cut:] + draw(st.sampled_from([b"", b"\r", b" "]))


LINES = st.lists(
    st.one_of(
        row_line(),
        st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")),
        st.just(b"   \r"),
    ),
    min_size=1,
    max_size=6,
)


@given(lines=LINES, final_newline=st.booleans())
def test_hostile_lines_fail_only_their_own_rows(
    server: FakeOllama, workdir: Path, lines: list[bytes], final_newline: bool
) -> None:
    server.responder = None
    folder = fresh(workdir)
    data = b"\n".join(lines) + (b"\n" if final_newline else b"")
    (folder / "in.jsonl").write_bytes(data)
    code, err = run(folder, server.url)
    check_run(code, err, allowed=(0, 1))
    check_output(folder, rows_in(data))


# --- hostile replies -------------------------------------------------------------------------

REPLIES = st.one_of(
    TEXT,
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
    st.integers(1, 30_000).map(lambda d: "[" * d + "]" * d),
    st.integers(1, 300).map(lambda d: '{"label": "pos", "x": ' + "{" * d + "}" * d + "}"),
    st.sampled_from(
        [
            "NaN",
            "-Infinity",
            '{"label": "pos", "score": NaN}',
            '{"label": "pos", "score": Infinity}',
            '{"label": "pos", "score": 1e999}',
            '{"label": "pos", "score": ' + "9" * 5000 + "}",
            '{"label": "pos", "label": "neg"}',
            '{"label": "pos", "x": "\\ud800"}',
            '\ufeff{"label": "pos"}',
            '```json\n{"label": "pos"}\n```',
            '{"label": "pos"}\r\n',
            '{"label": "pos", "score": 0.5}',
        ]
    ),
    st.integers(MAX_REPLY_CHARS - 40, MAX_REPLY_CHARS + 40).map(
        lambda n: '{"label": "pos", "pad": "' + "y" * (n - 27) + '"}'
    ),
)


@given(replies=st.lists(REPLIES, min_size=1, max_size=4))
def test_hostile_replies_fail_only_their_own_rows(
    server: FakeOllama, workdir: Path, replies: list[str]
) -> None:
    turn = itertools.count()
    server.responder = lambda _: replies[next(turn) % len(replies)]
    folder = fresh(workdir)
    (folder / "in.jsonl").write_text(
        "".join(f'{{"id": {i}, "prompt": "p{i}"}}\n' for i in range(3))
    )
    code, err = run(folder, server.url)
    check_run(code, err, allowed=(0, 1))
    check_output(folder, 3)


# --- hostile schemas and job files --------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=8,
)
KEYWORDS = [
    "type", "properties", "required", "enum", "items", "pattern", "minimum", "maximum", "$ref",
    "anyOf", "oneOf", "not", "const", "format", "additionalProperties", "$schema", "$defs",
    "minLength", "maxLength",
]  # fmt: skip
SCHEMAS = st.one_of(
    JSON_VALUES,
    st.dictionaries(st.sampled_from(KEYWORDS), JSON_VALUES, max_size=4),
    st.fixed_dictionaries(
        {"type": st.just("object"), "properties": st.dictionaries(TEXT, JSON_VALUES, max_size=3)}
    ),
)


@given(schema=SCHEMAS, raw=st.booleans())
def test_hostile_schemas_stop_the_run_with_one_message_or_fail_rows(
    server: FakeOllama, workdir: Path, schema: Any, raw: bool
) -> None:
    server.responder = None
    folder = fresh(workdir)
    text = json.dumps(schema, ensure_ascii=raw)
    (folder / "schema.json").write_bytes(text.encode("utf-8", "surrogatepass"))
    (folder / "in.jsonl").write_text('{"id": 1, "prompt": "a"}\n{"id": 2, "prompt": "b"}\n')
    code, err = run(folder, server.url)
    check_run(code, err, allowed=(0, 1, 2))
    check_output(folder, 2 if code != 2 else None)


JOB_KEYS = [
    "model", "schema", "template", "system", "concurrency", "timeout", "options", "think",
    "ordered", "output_format", "keep_alive", "shard", "shards", "headers", "grace_period",
    "log_every", "backoff_max", "embedded_contexts", "ca_bundle", "overwrite", "no_such_key",
]  # fmt: skip
TOML_VALUES = st.sampled_from(
    [
        '"x"', '""', "-1", "0", "3", "1e9", "nan", "inf", "-inf", "true", '[1, "a"]', "{a = 1}",
        '{num_predict = 1}', '{num_ctx = 2}', '"{prompt} {missing}"', '"{"', '"0/2"', '"5/2"',
        '"http://127.0.0.1:9"', '"openai"', '"high"', "1979-05-27", '"\\u00e9"',
    ]
)  # fmt: skip


@st.composite
def job_file(draw: st.DrawFn) -> bytes:
    lines = [
        f"{draw(st.sampled_from(JOB_KEYS))} = {draw(TOML_VALUES)}"
        for _ in range(draw(st.integers(0, 4)))
    ]
    text = "\n".join(lines).encode()
    return draw(st.sampled_from([text, text, text + b"\n= broken", b"\xff\xfe" + text]))


@given(job=job_file())
def test_hostile_job_files_stop_the_run_with_one_message_or_fail_rows(
    server: FakeOllama, workdir: Path, job: bytes
) -> None:
    server.responder = None
    folder = fresh(workdir)
    (folder / "in.toml").write_bytes(job)
    (folder / "in.jsonl").write_text('{"id": 1, "prompt": "a"}\n{"id": 2, "prompt": "b"}\n')
    code, err = run(folder, server.url, "--timeout", "10")
    check_run(code, err, allowed=(0, 1, 2))
    check_output(folder, None)
