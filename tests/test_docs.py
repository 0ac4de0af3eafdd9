"""Every setting is documented where operators look: .env.example and the README."""

import time
from pathlib import Path

import pytest

from service.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_in_env_example_and_readme():
    example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        variable = f"STATUS_PROXY_{name.upper()}"
        assert f"\n{variable}=" in example, variable
        assert f"`{variable}`" in readme, variable


def test_env_example_defaults_are_the_real_defaults():
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.startswith("STATUS_PROXY_") and "=" in line:
            key, _, value = line.partition("=")
            values[key] = value
    settings = Settings(_env_file=None)
    for name in Settings.model_fields:
        value = values[f"STATUS_PROXY_{name.upper()}"]
        default = getattr(settings, name)
        if isinstance(default, float):
            assert float(value) == default, name
        elif isinstance(default, bool):
            assert value == str(default).lower(), name
        elif isinstance(default, int):
            assert int(value) == default, name
        elif isinstance(default, tuple):
            assert tuple(float(v) for v in value.split(",")) == default, name
        elif isinstance(default, str):
            assert value == default, name


def test_the_readme_verification_with_two_secrets_works():
    """The README's receiver code, run as written against real signatures."""
    from standardwebhooks.webhooks import WebhookVerificationError

    from service import signing

    readme = (ROOT / "README.md").read_text()
    section = readme.split("Verifying with two secrets:", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    new, old, stranger = (signing.new_secret() for _ in range(3))
    code = code.replace('"whsec_new…"', repr(new)).replace('"whsec_old…"', repr(old))
    namespace: dict = {}
    exec(code, namespace)  # our own README, run as a reader would
    body, stamp = b'{"id":"evt_1"}', int(time.time())
    for secrets in ((new, old), (new,), (old,)):
        headers = {
            "webhook-id": "evt_1",
            "webhook-timestamp": str(stamp),
            "webhook-signature": signing.signatures(secrets, "evt_1", stamp, body),
        }
        assert namespace["verify"](body, headers) == {"id": "evt_1"}
    headers["webhook-signature"] = signing.sign(stranger, "evt_1", stamp, body)
    with pytest.raises(WebhookVerificationError):
        namespace["verify"](body, headers)
