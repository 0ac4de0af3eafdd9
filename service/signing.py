"""Standard Webhooks signatures and the secrets that make them.

A secret is ``whsec_`` followed by the standard, padded base64 of 24 to 64 random bytes
(the Standard Webhooks spec asks for 24 to 64). Every secret is checked before it signs
anything: a configured one at start, a stored one each time it is read.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import secrets
from collections.abc import Sequence

PREFIX = "whsec_"
MIN_BYTES, MAX_BYTES = 24, 64
NEW_BYTES = 32
SHAPE = f"{PREFIX} followed by the base64 of {MIN_BYTES} to {MAX_BYTES} random bytes"


class MalformedSecret(ValueError):
    """The message says what is wrong, never what the secret is."""


def new_secret() -> str:
    """A fresh ``whsec_`` signing secret of 32 random bytes."""
    return PREFIX + base64.b64encode(secrets.token_bytes(NEW_BYTES)).decode()


@functools.lru_cache(maxsize=1024)
def key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret; raises MalformedSecret for anything that is not
    exactly that form (no URL-safe alphabet, no missing padding, no stray characters).
    Worked out once per secret: a busy worker signs with the same few secrets all day."""
    if not secret.startswith(PREFIX):
        raise MalformedSecret(f"it does not start with {PREFIX}")
    text = secret.removeprefix(PREFIX)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedSecret(f"what follows {PREFIX} is not padded standard base64") from None
    if base64.b64encode(raw).decode() != text:  # stray bits in the last character
        raise MalformedSecret(f"what follows {PREFIX} is not canonical base64")
    if not MIN_BYTES <= len(raw) <= MAX_BYTES:
        raise MalformedSecret(
            f"it holds {len(raw)} bytes where {MIN_BYTES} to {MAX_BYTES} are needed"
        )
    return raw


def check(secret: str) -> str:
    """``secret`` itself when it is well formed; else MalformedSecret."""
    key(secret)
    return secret


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of ``{msg_id}.{timestamp}.{body}``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.digest(key(secret), signed, "sha256")).decode()


def signatures(secrets_: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: one signature per secret, in the order
    given (the newest first during a rotation), separated by spaces as the spec says.
    No secret at all is refused: a webhook never leaves unsigned."""
    if not secrets_:
        raise MalformedSecret("there is no secret to sign with")
    return " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets_)


def verify(secret: str, msg_id: str, timestamp: int, body: bytes, header: str) -> bool:
    """Whether any ``v1`` signature in ``header`` matches."""
    expected = sign(secret, msg_id, timestamp, body)
    return any(
        hmac.compare_digest(expected.encode(), candidate.encode()) for candidate in header.split()
    )
