"""OpenTelemetry end to end: the real CLI, the real OTLP/HTTP exporter, a receiver decoding its
protobuf. One CLIENT span per attempt after the GenAI conventions, a trace per row linked to
the run, `trace_id` on each output line, `traceparent` on each request, no content unless
asked for."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batch.testing import FakeOllama, Fault
from tests.conftest import read_jsonl, run_cli, summary_of, write_rows
from tests.otlp_receiver import OtlpReceiver, attributes

SCHEMA = {"type": "object", "properties": {"label": {"enum": ["a", "b"]}}, "required": ["label"]}
CLIENT = 3  # Span.SpanKind.SPAN_KIND_CLIENT
SPEC_DURATION_BOUNDS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24]
SPEC_DURATION_BOUNDS += [20.48, 40.96, 81.92]
SPEC_TOKEN_BOUNDS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304]
SPEC_TOKEN_BOUNDS += [16777216, 67108864]


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-collector-token=sesame")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "labelling-nightly")
        monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", raising=False)
        yield receiver


@pytest.fixture
def rows(tmp_path: Path) -> Path:
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    return write_rows(tmp_path / "in.jsonl", 4)


def fails_row_2(body: dict[str, Any]) -> str:
    return '{"label": "c"}' if "row 2" in body["messages"][0]["content"] else '{"label": "a"}'


OPTIONS = ("--option", "temperature=0.2", "--option", "seed=7", "--option", "num_predict=50")


def labelled(receiver: OtlpReceiver, rows: Path) -> tuple[list[Any], list[Any], Any]:
    """Runs 4 rows (a busy reply retried, row 2 failing validation twice) on a fresh fake;
    returns the attempt spans, the row spans and the run's span."""
    label(receiver, rows)
    spans = [span for _, span in receiver.spans()]
    attempts = [span for span in spans if span.name == "chat m"]
    row_spans = [span for span in spans if span.name == "label row"]
    [run] = [span for span in spans if span.name == "batch run"]
    return attempts, row_spans, run


def label(receiver: OtlpReceiver, rows: Path) -> None:
    with FakeOllama(models=["m"]) as server:
        server.add_fault(Fault("busy", times=1))
        server.responder = fails_row_2
        argv = [*OPTIONS, "--max-attempts", "2", "--concurrency", "1"]  # in order: row 0 busy
        assert run_cli(rows, server.url, *argv) == 1
        receiver.traceparents = list(server.traceparents)  # type: ignore[attr-defined]


def test_each_attempt_is_a_client_span_after_the_genai_conventions(
    receiver: OtlpReceiver, rows: Path
) -> None:
    attempts, _, _ = labelled(receiver, rows)
    summary = summary_of(rows)
    assert len(attempts) == summary["attempts"] == 6  # 4 rows, a busy retry, row 2 twice
    resources = [resource for resource, _ in receiver.spans()]
    assert {r["service.name"] for r in resources} == {"labelling-nightly"}
    assert all(h.get("x-collector-token") == "sesame" for h in receiver.headers)
    ok = [s for s in attempts if "error.type" not in attributes(s.attributes)]
    assert len(ok) == 3  # rows 0 (after its busy reply), 1 and 3
    for span in attempts:
        seen = attributes(span.attributes)
        assert span.kind == CLIENT
        assert seen["gen_ai.operation.name"] == "chat"
        assert seen["gen_ai.provider.name"] == "ollama"
        assert seen["gen_ai.request.model"] == "m"
        assert seen["gen_ai.output.type"] == "json"
        assert seen["gen_ai.request.temperature"] == 0.2
        assert (seen["gen_ai.request.seed"], seen["gen_ai.request.max_tokens"]) == (7, 50)
        assert seen["server.address"] == "127.0.0.1" and seen["server.port"] > 0
    for span in ok:
        seen = attributes(span.attributes)
        assert seen["gen_ai.response.model"] == "m"
        assert seen["gen_ai.response.finish_reasons"] == ["stop"]
        assert seen["gen_ai.usage.output_tokens"] >= 1
    errors = sorted(attributes(s.attributes).get("error.type", "") for s in attempts)
    assert [e for e in errors if e] == ["http_503", "validation", "validation"]
    tokens = sum(attributes(s.attributes).get("gen_ai.usage.output_tokens", 0) for s in attempts)
    assert tokens == summary["usage"]["output_tokens"]


def test_each_row_is_a_trace_linked_to_the_run_and_named_on_its_line_and_requests(
    receiver: OtlpReceiver, rows: Path
) -> None:
    attempts, row_spans, run = labelled(receiver, rows)
    assert len(row_spans) == 4
    assert len({span.trace_id for span in row_spans}) == 4  # a trace a row
    assert run.trace_id not in {span.trace_id for span in row_spans}
    for span in row_spans:
        [link] = span.links
        assert (link.trace_id, link.span_id) == (run.trace_id, run.span_id)
    by_trace = {span.trace_id: span for span in row_spans}
    for attempt in attempts:
        assert attempt.parent_span_id == by_trace[attempt.trace_id].span_id
    lines = read_jsonl(rows.with_name("in.out.jsonl"))
    assert {line["trace_id"] for line in lines} == {t.hex() for t in by_trace}
    sent = receiver.traceparents  # type: ignore[attr-defined]
    expected = {f"00-{a.trace_id.hex()}-{a.span_id.hex()}" for a in attempts}
    assert len(sent) == len(attempts) and {tp.rsplit("-", 1)[0] for tp in sent} == expected
    assert all(int(tp.rsplit("-", 1)[1], 16) & 1 for tp in sent)  # sampled


def test_the_genai_metrics_use_the_conventions_buckets_and_count_every_token(
    receiver: OtlpReceiver, rows: Path
) -> None:
    labelled(receiver, rows)
    summary = summary_of(rows)
    durations = receiver.metric_points("gen_ai.client.operation.duration")
    assert all(list(p.explicit_bounds) == SPEC_DURATION_BOUNDS for p in durations)
    assert sum(p.count for p in durations) == summary["attempts"]
    usage = receiver.metric_points("gen_ai.client.token.usage")
    assert all(list(p.explicit_bounds) == SPEC_TOKEN_BOUNDS for p in usage)
    by_type = {"input": 0.0, "output": 0.0}
    for point in usage:
        by_type[attributes(point.attributes)["gen_ai.token.type"]] += point.sum
    assert by_type["input"] == summary["usage"]["input_tokens"]
    assert by_type["output"] == summary["usage"]["output_tokens"]


def test_no_prompt_or_output_in_any_span_unless_content_capture_is_asked_for(
    receiver: OtlpReceiver, rows: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    labelled(receiver, rows)
    for _, span in receiver.spans():
        values = [str(value) for value in attributes(span.attributes).values()]
        assert not [v for v in values if "row " in v or "label" in v], values  # prompt, reply
    for _, span in receiver.spans():  # a failure's message quotes the reply: only its type
        assert span.status.message in ("", "validation", "http_503")
        assert not span.events

    receiver.traces.clear()
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    rows.with_name("in.out.jsonl").unlink()
    attempts, _, _ = labelled(receiver, rows)
    captured = [attributes(span.attributes) for span in attempts]
    assert any("row 1" in seen.get("gen_ai.input.messages", "") for seen in captured)
    assert any("label" in seen.get("gen_ai.output.messages", "") for seen in captured)


def test_each_vote_of_a_panel_names_its_trace(receiver: OtlpReceiver, rows: Path) -> None:
    with FakeOllama(models=["m", "n"]) as server:
        server.responder = lambda body: '{"label": "a"}'
        assert run_cli(rows, server.url, "--panel", "m,n") == 0
    row_traces = {s.trace_id.hex() for _, s in receiver.spans() if s.name == "label row"}
    votes = [vote for line in read_jsonl(rows.with_name("in.out.jsonl")) for vote in line["votes"]]
    assert len(votes) == 8 and {vote["trace_id"] for vote in votes} == row_traces


def test_metrics_keep_their_attributes_when_no_span_is_sampled(
    receiver: OtlpReceiver, rows: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    label(receiver, rows)
    assert not list(receiver.spans())  # no span went out
    durations = receiver.metric_points("gen_ai.client.operation.duration")
    assert sum(p.count for p in durations) == summary_of(rows)["attempts"]
    for point in durations:
        seen = attributes(point.attributes)
        assert seen["gen_ai.request.model"] == "m" and seen["server.address"] == "127.0.0.1"
    errors = {attributes(p.attributes).get("error.type") for p in durations}
    assert errors == {None, "http_503", "validation"}
    usage = receiver.metric_points("gen_ai.client.token.usage")
    assert all("error.type" not in attributes(p.attributes) for p in usage)
