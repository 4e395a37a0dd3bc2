"""Images for vision models: read from files beside the input, data: URLs or base64, sent to the
fake Ollama server as base64 through the real `ollama` client."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from batch.cli import main
from batch.core.errors import BadInput
from batch.core.images import ImagePolicy, ImageRef, load_image
from batch.testing import FakeOllama

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
JPEG_HEAD = b"\xff\xd8\xff\xe0" + bytes(16)


@pytest.fixture
def server() -> Iterator[FakeOllama]:
    with FakeOllama(models=["llava"]) as fake:
        yield fake


@pytest.fixture
def job(tmp_path: Path) -> Path:
    """A job folder with two images, one in a subfolder, and one image outside it."""
    folder = tmp_path / "job"
    (folder / "pics").mkdir(parents=True)
    (folder / "cat.png").write_bytes(PNG)
    (folder / "pics" / "dog.jpg").write_bytes(JPEG_HEAD)
    (tmp_path / "secret.png").write_bytes(b"\x89PNG\r\n\x1a\nsecret")
    return folder


def run(folder: Path, rows: list[Any], host: str, *extra: str) -> dict[Any, Any]:
    path = folder / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    main(["run", str(path), "--host", host, "--model", "llava", "-q", "--overwrite", *extra])
    lines = [json.loads(x) for x in (folder / "in.out.jsonl").read_text().splitlines()]
    return {r["id"]: r for r in lines}


def images_sent(server: FakeOllama) -> dict[str, list[bytes]]:
    """Decoded images of each request, by the text of its user message."""
    sent = {}
    for body in server.requests:
        [user] = [m for m in body["messages"] if m["role"] == "user"]
        sent[user["content"]] = [base64.b64decode(i) for i in user.get("images") or []]
    return sent


def test_images_from_files_urls_and_base64_reach_ollama(server: FakeOllama, job: Path) -> None:
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    bare = base64.b64encode(PNG).decode()
    rows = [
        {"id": "file", "prompt": "a file", "images": ["cat.png", "pics/dog.jpg"]},
        {"id": "url", "prompt": "a data url", "images": [data_url]},
        {"id": "bare", "prompt": "bare base64", "images": [bare]},
        {"id": "file-url", "prompt": "a file url", "images": [(job / "cat.png").as_uri()]},
        {
            "id": "message",
            "messages": [{"role": "user", "content": "in a message", "images": ["cat.png"]}],
        },
    ]
    out = run(job, rows, server.url)
    assert all(r["status"] == "ok" for r in out.values())
    sent = images_sent(server)
    assert sent["a file"] == [PNG, JPEG_HEAD]
    assert sent["a data url"] == [PNG]
    assert sent["bare base64"] == [PNG]
    assert sent["a file url"] == [PNG]
    assert sent["in a message"] == [PNG]


def test_an_image_that_cannot_be_read_fails_only_its_row(server: FakeOllama, job: Path) -> None:
    rows = [
        {"id": "missing", "prompt": "x", "images": ["nope.png"]},
        {"id": "outside", "prompt": "x", "images": ["../secret.png"]},
        {"id": "absolute", "prompt": "x", "images": [str(job.parent / "secret.png")]},
        {"id": "web", "prompt": "x", "images": ["https://example.com/cat.png"]},
        {"id": "bad-data", "prompt": "x", "images": ["data:image/png;base64,@@@"]},
        {"id": "folder", "prompt": "x", "images": ["pics"]},
        {"id": "not-a-list", "prompt": "x", "images": "cat.png"},
        {"id": "fine", "prompt": "fine", "images": ["cat.png"]},
    ]
    out = run(job, rows, server.url)
    assert out["fine"]["status"] == "ok"
    messages = {i: r["error"]["message"] for i, r in out.items() if r["status"] == "error"}
    assert {r["error"]["type"] for i, r in out.items() if i != "fine"} == {"bad_input"}
    assert "images[0] 'nope.png': no such file" in messages["missing"]
    assert "is outside the job's folder" in messages["outside"]
    assert "--allow-outside-images" in messages["absolute"]
    assert "Ollama cannot fetch" in messages["web"]
    assert "invalid base64" in messages["bad-data"]
    assert "cannot be read" in messages["folder"]
    assert "images must be an array" in messages["not-a-list"]
    assert all(m.startswith("line ") for m in messages.values())
    assert len(server.requests) == 1  # no failed row was sent


def test_images_outside_the_folder_when_the_user_allows_it(server: FakeOllama, job: Path) -> None:
    rows = [{"id": "outside", "prompt": "outside", "images": ["../secret.png"]}]
    out = run(job, rows, server.url, "--allow-outside-images")
    assert out["outside"]["status"] == "ok"
    assert images_sent(server)["outside"] == [b"\x89PNG\r\n\x1a\nsecret"]


def test_a_symlink_out_of_the_folder_is_outside_too(job: Path) -> None:
    (job / "link.png").symlink_to(job.parent / "secret.png")
    ref = ImageRef("link.png", "images[0]", ImagePolicy(job))
    with pytest.raises(BadInput, match="outside the job's folder"):
        load_image(ref)


def test_an_extensionless_name_that_is_valid_base64_is_still_a_path(job: Path) -> None:
    (job / "abcd").write_bytes(PNG)  # "abcd" decodes as base64, but not to an image
    assert load_image(ImageRef("abcd", "images[0]", ImagePolicy(job))) == PNG


def test_the_fake_server_refuses_images_that_are_not_base64(server: FakeOllama) -> None:
    message = {"role": "user", "content": "x", "images": ["cat.png"]}
    body = {"model": "llava", "stream": False, "messages": [message]}
    response = httpx.post(server.url + "/api/chat", json=body)
    assert response.status_code == 400
    assert response.json() == {"error": "illegal base64 data at input byte 3"}
