"""Small output and gold files for the `eval` tests, with their figures worked out by hand in
the tests that use them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# id: (label, n, city). r5's "bird" is never predicted; r7 has no output row.
GOLD = {
    "r1": ("cat", 3, "Paris"),
    "r2": ("cat", 5, "Rome"),
    "r3": ("dog", 2, "Oslo"),
    "r4": ("dog", 4, "Lima"),
    "r5": ("bird", 1, "Kyiv"),
    "r6": ("cat", 2, "Bern"),
    "r7": ("dog", 1, "Riga"),
}
# id: (label, n, city, confidence of label) or None for a failed row. r5's "fish" is never in
# the gold; r8 has no gold row.
OUTPUT: dict[str, tuple[str, int, str, float] | None] = {
    "r1": ("Cat ", 3, "paris", 0.97),
    "r2": ("cat", 6, " Rome", 0.85),
    "r3": ("dog", 2, "OSLO", 0.9),
    "r4": ("cat", 4, "Lyon", 0.55),
    "r5": ("fish", 7, "Kyiv", 0.3),
    "r6": None,
    "r8": ("cat", 1, "Nice", 1.0),
}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def gold_rows() -> list[dict[str, Any]]:
    """As an input file that carries its labels: `text` is the row's input, the rest gold."""
    return [
        {"id": key, "text": f"a text about {key}", "label": label, "n": n, "city": city}
        for key, (label, n, city) in GOLD.items()
    ]


def native_rows() -> list[dict[str, Any]]:
    rows = []
    for line, (key, values) in enumerate(OUTPUT.items(), start=1):
        row: dict[str, Any] = {"id": key, "line": line}
        if values is None:
            row |= {"status": "error", "error": {"type": "validation", "message": "prose"}}
        else:
            label, n, city, confidence = values
            row |= {
                "status": "ok",
                "output": {"label": label, "n": n, "city": city},
                "confidence": {"label": confidence},
            }
        rows.append(row | {"attempts": 1, "config": "0123456789abcdef"})
    return rows


def openai_line(native: dict[str, Any]) -> dict[str, Any]:
    """The shape batch.sink.records writes for --output-format openai: OpenAI's fields, the native
    record in `batch`."""
    ok = native["status"] == "ok"
    body = {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "{}"}}],
    }
    return {
        "id": f"batch_req_{native['id']}",
        "custom_id": str(native["id"]),
        "response": {"status_code": 200, "body": body} if ok else None,
        "error": None if ok else {"code": "validation", "message": "prose"},
        "batch": native,
    }
