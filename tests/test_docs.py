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
        assert f"\n# {variable}=" in example, variable  # its default, commented
        assert f"`{variable}`" in readme, variable


def test_env_example_defaults_are_the_real_defaults():
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.startswith("# STATUS_PROXY_") and "=" in line:
            key, _, value = line.removeprefix("# ").partition("=")
            values[key] = value  # the last commented line is the production default
    settings = Settings(_env_file=None)
    for name in Settings.model_fields:
        value = values[f"STATUS_PROXY_{name.upper()}"]
        default = getattr(settings, name)
        if default is None or default == [] or default == {}:
            assert value == "", name
            continue
        if isinstance(default, float):
            assert float(value) == default, name
        elif isinstance(default, bool):
            assert value == str(default).lower(), name
        elif isinstance(default, int):
            assert int(value) == default, name
        elif isinstance(default, tuple):
            assert tuple(float(v) for v in value.split(",") if v) == default, name
        elif isinstance(default, str):
            assert value == default, name
        else:
            raise AssertionError(f"{name}: no check for {default!r}")


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


def test_env_example_as_dotenv_is_a_local_trial(tmp_path, monkeypatch):
    """Copied to .env, the example keeps a trial local; compose points it at its simulator."""
    for name in Settings.model_fields:
        monkeypatch.delenv(f"STATUS_PROXY_{name.upper()}", raising=False)
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.callback_allow_private is True
    assert settings.upstream_api_key is not None
    assert settings.upstream_api_key.get_secret_value() == "dev-upstream-key"
    assert settings.api_keys == [] and settings.webhook_secret is None
    assert settings.database_url == Settings(_env_file=None).database_url


def test_env_file_is_read_and_the_environment_wins(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text(
        "STATUS_PROXY_POLL_INTERVAL_MIN=2\nSTATUS_PROXY_API_KEYS=a,b\nSTATUS_PROXY_WEBHOOK_SECRET=\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STATUS_PROXY_API_KEYS", "c")
    settings = Settings()
    assert settings.poll_interval_min == 2
    assert [k.get_secret_value() for k in settings.api_keys] == ["c"]
    assert settings.webhook_secret is None


def test_an_empty_value_is_unset(monkeypatch):
    """Compose renders ${VAR:-} as an empty string: it must mean the default, never an error."""
    for name in Settings.model_fields:
        monkeypatch.delenv(f"STATUS_PROXY_{name.upper()}", raising=False)
    defaults = Settings(_env_file=None).model_dump()
    for name in Settings.model_fields:
        monkeypatch.setenv(f"STATUS_PROXY_{name.upper()}", "")
    settings = Settings(_env_file=None)
    assert settings.model_dump() == defaults
    assert settings.webhook_secret is None and settings.api_keys == []
    assert settings.upstream_api_key is None and settings.poll_interval_min == 5


def test_env_stays_out_of_git_and_the_image():
    for ignore in (".gitignore", ".dockerignore"):
        assert ".env" in (ROOT / ignore).read_text().splitlines(), ignore


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("log_level", "LOUD"),
        ("upstream_base_url", "notaurl"),
        ("upstream_base_url", "ftp://x"),
        ("upstreams", "{not json"),
    ],
)
def test_settings_that_cannot_work_are_refused_at_start(name, value):
    with pytest.raises(ValueError, match=name):
        Settings(_env_file=None, **{name: value})


def test_log_levels_are_read_in_any_case():
    assert Settings(_env_file=None, log_level="debug").log_level == "DEBUG"
