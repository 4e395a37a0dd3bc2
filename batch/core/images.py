"""Images for vision models: where a row says an image comes from, and its bytes, read off the
event loop just before the row is sent.

A row names an image as a file path (relative to the input file's folder), a `file:` URL, a
`data:` URL, or bare base64 (what Ollama itself takes). Building a row only records these
`ImageRef`s inside its messages; `attach_images` reads them, in one worker thread a row, so a
file of a million image rows never holds more images in memory than rows in flight.

Paths stay inside the job's folder unless the run allows others (`--allow-outside-images`):
an input file shared with you should not be able to send your other files to a model.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio

from batch.core.chat import ChatRequest
from batch.core.errors import BadInput

# The formats vision models take, by their first bytes: how bare base64 is told from a path.
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")
KINDS = "PNG, JPEG, GIF, WebP or BMP"


@dataclass(frozen=True, slots=True)
class ImagePolicy:
    """Where relative image paths start, and whether paths may leave that folder."""

    root: Path
    allow_outside: bool = False


@dataclass(frozen=True, slots=True)
class ImageRef:
    """One image as the row names it; `where` says where in the row, for error messages."""

    value: str
    where: str
    policy: ImagePolicy


def image_refs(values: Any, where: str, policy: ImagePolicy) -> list[ImageRef]:
    """`values` (a row's list of image strings) as refs, or `BadInput` saying what is wrong."""
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise BadInput(f"{where} must be an array of image paths, data: URLs or base64 strings")
    return [ImageRef(v, f"{where}[{i}]", policy) for i, v in enumerate(values)]


def has_images(request: ChatRequest) -> bool:
    return any(isinstance(m.get("images"), list) and m["images"] for m in request.messages)


async def attach_images(request: ChatRequest) -> ChatRequest:
    """The request with every `ImageRef` replaced by the image's bytes (the `ollama` client
    sends bytes as base64). Raises `BadInput` for an image that cannot be read."""
    return await anyio.to_thread.run_sync(_attach, request)


def _attach(request: ChatRequest) -> ChatRequest:
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        images = message.get("images")
        if isinstance(images, list) and any(isinstance(i, ImageRef) for i in images):
            loaded = [load_image(i) if isinstance(i, ImageRef) else i for i in images]
            message = {**message, "images": loaded}
        messages.append(message)
    return replace(request, messages=messages)


def load_image(ref: ImageRef) -> bytes:
    """The image's bytes. Blocking: call it from a worker thread."""
    value = ref.value
    if value.startswith("data:"):
        return _from_data_url(ref)
    scheme = urlsplit(value).scheme.lower()
    if scheme in ("http", "https"):
        raise BadInput(
            f"{ref.where} is a web URL, which Ollama cannot fetch: download the "
            "image into the job's folder and give its path, or a data: URL"
        )
    if scheme == "file":
        return _from_file(ref, Path(unquote(urlsplit(value).path)))
    decoded = _base64_image(value)
    if decoded is not None:
        return decoded
    return _from_file(ref, Path(value))


def _from_data_url(ref: ImageRef) -> bytes:
    header, comma, payload = ref.value.partition(",")
    if not comma or not header.endswith(";base64"):
        raise BadInput(
            f"{ref.where} is a data: URL without base64 data; write it as data:image/png;base64,..."
        )
    try:
        return binascii.a2b_base64(payload, strict_mode=True)
    except binascii.Error as exc:
        raise BadInput(f"{ref.where} holds invalid base64 ({exc})") from None


def _base64_image(text: str) -> bytes | None:
    """The decoded image when `text` is strict base64 of a known image format, else None.

    Paths with an extension never pass (a dot is not base64), and the signature check keeps
    an extension-less name that happens to be valid base64 a path."""
    if len(text) < 8 or len(text) % 4:
        return None
    try:
        data = binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error:
        return None
    webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    return data if webp or data.startswith(_SIGNATURES) else None


def _from_file(ref: ImageRef, path: Path) -> bytes:
    root = ref.policy.root.resolve()
    target = (root / path).resolve()  # an absolute path stays absolute
    if not ref.policy.allow_outside and not target.is_relative_to(root):
        raise BadInput(
            f"{ref.where} {ref.value!r} is outside the job's folder {root.name}/: "
            "move the image into it, or pass --allow-outside-images"
        )
    try:
        data = target.read_bytes()
    except FileNotFoundError:
        raise BadInput(
            f"{ref.where} {ref.value!r}: no such file (paths are relative to the "
            f"input file's folder), nor a data: URL, nor base64 of a {KINDS} image"
        ) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise BadInput(f"{ref.where} {ref.value!r} cannot be read: {reason}") from None
    if not data:
        raise BadInput(f"{ref.where} {ref.value!r} is an empty file")
    return data
