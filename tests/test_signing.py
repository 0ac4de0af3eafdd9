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
