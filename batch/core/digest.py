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
import re
from collections.abc import Sequence
from typing import Any

from batch.core.chat import ChatRequest
from batch.core.errors import BadInput
from batch.core.images import ImageRef, load_image

DIGEST_HEX = 16  # 64 bits in the file; the id table keeps 32 of them


def json_digest(value: Any) -> str:
    """16 hex digits of sha256 over `value` as canonical JSON (keys sorted, no spaces): the
    settings stamp of an output (`config`) and the schema's digest in the summary."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:DIGEST_HEX]


def input_digest(raw: bytes, images: Sequence[bytes] = ()) -> str:
    """The digest of an input line (its line end left out) and its images' digests."""
    digest = hashlib.blake2b(raw.rstrip(b"\r\n"), digest_size=8)
    for image in images:
        digest.update(image)
    return digest.hexdigest()


_HEX8 = re.compile(r"[0-9a-fA-F]{8}")


def short(digest: str | bytes) -> int:
    """The 32 bits of a digest the id table keeps; never 0, which means "none recorded". One
    that does not end in 8 hex digits (a line edited by hand) reads as 1, which a line's digest
    is once in 2^32: its row is labelled again."""
    tail = digest[-8:]
    text = tail.decode("ascii", "replace") if isinstance(tail, bytes) else tail
    return int(text, 16) or 1 if _HEX8.fullmatch(text) else 1


def may_name_images(raw: bytes) -> bool:
    """False when the line surely names no image (`images`, `image_url`): most lines are
    settled without building their request."""
    return b"image" in raw


# A fresh state to copy: cheaper than making one with its parameters for each line.
_LINE_DIGEST = hashlib.blake2b(digest_size=8)


def short_of_line(raw: bytes) -> int:
    """`short(input_digest(raw))` for a line that names no image, at a fraction of the cost:
    resume computes it for every done row."""
    digest = _LINE_DIGEST.copy()
    digest.update(raw.rstrip(b"\r\n"))
    return int.from_bytes(digest.digest()) & 0xFFFFFFFF or 1


# `{"id": 12,` or `{"id": "r12",` with nothing escaped: the spellings `json.dumps` writes.
_GLANCED_ID = re.compile(rb'\{"id": ?(?:(-?[1-9][0-9]*|0)|"([^"\\]*)"),')


def key_at_a_glance(raw: bytes) -> str | None:
    """The id key (`batch.core.rows.id_key`) of a line that starts `{"id": 12,` or `{"id": "r12",`,
    read without parsing the line; None for any other line, which is then read in full. Only
    for a resume check that compares the line's digest (`short_of_line`) with the one its id
    recorded: a line equal to one labelled before parses the same, a wrong guess finds no
    equal digest, and neither does a line naming images, whose digest covers their bytes."""
    found = _GLANCED_ID.match(raw)
    if found is None:
        return None
    number, text = found.groups()
    if number is not None:
        return "i" + number.decode()
    try:
        return "s" + text.decode()
    except UnicodeDecodeError:
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
