import base64
import json
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service import signing


def test_signature_verifies_with_standardwebhooks():
    secret = signing.new_secret()
    body = json.dumps({"id": "evt_1", "data": {"status": "completed"}}).encode()
    timestamp = int(time.time())
    headers = {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signing.sign(secret, "evt_1", timestamp, body),
    }
    wh = Webhook(secret)
    assert wh.verify(body, headers)["id"] == "evt_1"
    with pytest.raises(WebhookVerificationError):
        wh.verify(body + b" ", headers)


def test_verify_accepts_any_listed_signature_and_rejects_others():
    secret = signing.new_secret()
    good = signing.sign(secret, "m", 1, b"x")
    assert signing.verify(secret, "m", 1, b"x", f"v1,AAAA {good}")
    assert not signing.verify(secret, "m", 2, b"x", good)
    assert not signing.verify(signing.new_secret(), "m", 1, b"x", good)


def test_secret_shape():
    secret = signing.new_secret()
    assert secret.startswith("whsec_") and secret != signing.new_secret()
    assert signing.check(secret) and len(signing.key(secret)) == 32


def _whsec(size):
    return "whsec_" + base64.b64encode(bytes(range(size))).decode()


@pytest.mark.parametrize("size", [24, 32, 64])
def test_well_formed_secrets_are_taken(size):
    secret = _whsec(size)
    assert signing.check(secret) == secret
    assert signing.key(secret) == base64.b64decode(secret.removeprefix("whsec_"))


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("whsec_my-webhook-secret", "not padded standard base64"),  # the example
        ("whsec_!!!!", "not padded standard base64"),  # decoded leniently, an empty key
        ("whsec_", "0 bytes"),
        ("", "does not start with whsec_"),
        (base64.b64encode(bytes(32)).decode(), "does not start with whsec_"),
        ("WHSEC_" + _whsec(32)[6:], "does not start with whsec_"),
        (_whsec(23), "23 bytes"),
        (_whsec(65), "65 bytes"),
        (_whsec(32).rstrip("="), "not padded standard base64"),
        ("whsec_" + base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(), "standard base64"),
        (_whsec(32) + "\n", "not padded standard base64"),
        (" " + _whsec(32), "does not start with whsec_"),
        (_whsec(32)[:-2] + "B=", "not canonical"),  # stray bits in the last character
    ],
)
def test_malformed_secrets_are_refused_without_being_quoted(secret, why):
    with pytest.raises(signing.MalformedSecret, match=why) as refused:
        signing.key(secret)
    tail = secret.removeprefix("whsec_")
    assert not tail or tail not in str(refused.value)
    with pytest.raises(signing.MalformedSecret):
        signing.sign(secret, "m", 1, b"x")


def test_two_signatures_newest_first_each_verifies_alone():
    new, old, stranger = signing.new_secret(), signing.new_secret(), signing.new_secret()
    body, timestamp = b'{"id":"evt_2"}', int(time.time())
    value = signing.signatures((new, old), "evt_2", timestamp, body)
    first, second = value.split(" ")
    assert first == signing.sign(new, "evt_2", timestamp, body)
    assert second == signing.sign(old, "evt_2", timestamp, body)
    headers = {"webhook-id": "evt_2", "webhook-timestamp": str(timestamp)}
    for secret in (new, old):
        Webhook(secret).verify(body, headers | {"webhook-signature": value})
    with pytest.raises(WebhookVerificationError):
        Webhook(stranger).verify(body, headers | {"webhook-signature": value})


def test_nothing_to_sign_with_is_refused():
    with pytest.raises(signing.MalformedSecret, match="no secret"):
        signing.signatures((), "m", 1, b"x")
