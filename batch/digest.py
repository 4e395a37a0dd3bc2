"""Digests: of a row's input (is the label still true to it?) and of a request (is this the
same question as another row's, or as one in the cache?).

An input digest is a short blake2b of the raw input line and the bytes of the images the line
names: the run-wide settings are the output's `config` fingerprint already. It is written as 16
hex digits at a fixed place at the end of each output line, so that resume finds it at a
glance. A request key hashes the request as sent (model, messages after templating, images,
options, format) and the schema its reply is checked against.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from batch.backends.base import ChatRequest
from batch.errors import BadInput
from batch.images import ImageRef, load_image

DIGEST_HEX = 16  # 64 bits in the file; the id table keeps 32 of them


def input_digest(raw: bytes, images: Sequence[bytes] = ()) -> str:
    """The digest of an input line (its line end left out) and its images' digests."""
    digest = hashlib.blake2b(raw.rstrip(b"\r\n"), digest_size=8)
    for image in images:
        digest.update(image)
    return digest.hexdigest()


def short(digest: str | bytes) -> int:
    """The 32 bits of a digest the id table keeps; never 0, which means "none recorded"."""
    return int(digest[-8:], 16) or 1


def may_name_images(raw: bytes) -> bool:
    """False when the line surely names no image (`images`, `image_url`): most lines are
    settled without building their request."""
    return b"image" in raw


def short_of_line(raw: bytes) -> int:
    """`short(input_digest(raw))` for a line that names no image, at a third of the cost:
    resume computes it for every done row."""
    digest = hashlib.blake2b(raw.rstrip(b"\r\n"), digest_size=8).digest()
    return int.from_bytes(digest[4:]) or 1


def id_at_a_glance(raw: bytes) -> int | str | None:
    """The id of a line that starts `{"id": 12,` or `{"id": "r12",` (nothing escaped), read
    without parsing the line; None for any other line. Only for a resume check that then
    compares the whole line's digest: a line equal to one labelled before parses the same."""
    if raw.startswith(b'{"id": '):
        start = 7
    elif raw.startswith(b'{"id":'):
        start = 6
    else:
        return None
    end = raw.find(b",", start)
    token = raw[start:end]
    if token.isdigit() and token[:1] != b"0":
        return int(token)
    if len(token) > 1 and token[:1] == token[-1:] == b'"' and b"\\" not in token:
        inner = token[1:-1]
        if b'"' not in inner:
            try:
                return inner.decode()
            except UnicodeDecodeError:
                return None
    return None


def image_digests(request: ChatRequest) -> tuple[bytes, ...]:
    """A digest of each image the request names, in order. Blocking: reads files. An image
    that cannot be read gets a digest of its name: the row fails when it is sent anyway."""
    digests = []
    for message in request.messages:
        for image in message.get("images") or ():
            if isinstance(image, ImageRef):
                try:
                    data = load_image(image)
                except BadInput:
                    data = b"unreadable:" + image.value.encode()
                digests.append(hashlib.blake2b(data, digest_size=16).digest())
    return tuple(digests)


def request_key(
    request: ChatRequest, schema: dict[str, Any] | None, images: Sequence[bytes], salt: str = ""
) -> bytes:
    """What identifies a request as sent, and the schema its reply must pass."""
    shaping = [request.model, request.messages, request.format, request.options, schema, salt]
    text = json.dumps(shaping, sort_keys=True, separators=(",", ":"), default=_image_slot)
    digest = hashlib.blake2b(text.encode(), digest_size=16)
    for image in images:
        digest.update(image)
    return digest.digest()


def _image_slot(value: Any) -> str:
    if isinstance(value, ImageRef):
        return "<image>"  # its bytes' digest follows the text
    raise TypeError(f"cannot key a request holding {type(value).__name__}")
