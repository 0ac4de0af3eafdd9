"""STATUS_PROXY_UPSTREAMS: named upstreams next to ``default``, refused at start when
malformed, with a message that names the setting and never quotes a key."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.config import Settings

COMMAND = str(Path(sys.executable).parent / "status-proxy")
KEY = "sk-never-shown-4d1e"


def entry(**fields):
    return {
        "base_url": "https://ark.example.com/",
        "api_key": KEY,
        "family": "openai-video",
    } | fields


def settings(value, **overrides):
    text = value if isinstance(value, str) else json.dumps(value)
    return Settings(_env_file=None, upstreams=text, **overrides)


def test_named_upstreams_take_the_global_values_they_leave_unset():
    found = settings(
        {"acme": entry(rate_limit=2, poll_interval_min=6, poll_interval_max=60)},
        upstream_base_url="https://octopusx.ai",
        upstream_rate_limit=20,
        upstream_timeout=7,
    ).upstream_configs()
    assert list(found) == ["default", "acme"]
    default, acme = found["default"], found["acme"]
    assert (default.family, default.base_url, default.rate_limit) == (
        "openai-video",
        "https://octopusx.ai",
        20,
    )
    assert acme.base_url == "https://ark.example.com"  # no trailing slash
    assert acme.api_key.get_secret_value() == KEY
    assert (acme.rate_limit, acme.timeout, acme.max_concurrency) == (2, 7, 16)
    assert (acme.poll_interval_min, acme.poll_interval_max) == (6, 60)


def test_empty_means_unset(monkeypatch):
    monkeypatch.setenv("STATUS_PROXY_UPSTREAMS", "")
    assert list(Settings(_env_file=None).upstream_configs()) == ["default"]
    assert list(settings("  ").upstream_configs()) == ["default"]
    assert list(settings({}).upstream_configs()) == ["default"]


def test_the_environment_variable_is_read(monkeypatch):
    monkeypatch.setenv("STATUS_PROXY_UPSTREAMS", json.dumps({"b-2": entry()}))
    assert list(Settings(_env_file=None).upstream_configs()) == ["default", "b-2"]


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("{not json", "is not JSON"),
        ("[1, 2]", "must be a JSON object"),
        ({"default": entry()}, "cannot be redefined"),
        ({"Acme": entry()}, "upstream names are 1-32 characters"),
        ({"a" * 33: entry()}, "upstream names are 1-32 characters"),
        ({"acme": "https://x"}, "'acme' must be a JSON object"),
        ({"acme": entry(family="sora")}, "family: Value error, must be one of"),
        ({"acme": entry(base_url="ftp://x")}, "base_url"),
        ({"acme": {"base_url": "https://x", "family": "openai-video"}}, "api_key: Field required"),
        ({"acme": entry(api_key="")}, "api_key"),
        ({"acme": entry(rate_limit=-1)}, "rate_limit"),
        ({"acme": entry(max_concurrency=0)}, "max_concurrency"),
        ({"acme": entry(timeout=0)}, "timeout"),
        ({"acme": entry(poll_interval_min=10, poll_interval_max=5)}, "poll_interval_max"),
        ({"acme": entry(poll_interval_min=60)}, "poll_interval_max must be at least"),
        ({"acme": entry(colour="blue")}, "colour: Extra inputs are not permitted"),
        # A key goes into an Authorization header: visible ASCII only.
        ({"acme": entry(api_key=KEY + "\r\nX-Evil: 1")}, "api_key: Value error, must be visible"),
        ({"acme": entry(api_key=KEY + "é")}, "api_key: Value error, must be visible"),
        ({"acme": entry(api_key="   ")}, "api_key: Value error, must be visible"),
        ('{"acme": {}, "acme": {}}', "'acme' is given twice"),
    ],
)
def test_malformed_upstreams_are_refused_without_showing_the_key(value, words):
    with pytest.raises(ValueError) as refused:
        settings(value)
    message = str(refused.value)
    assert "STATUS_PROXY_UPSTREAMS" in message and words in message, message
    assert KEY not in message


@pytest.mark.parametrize("key", [KEY + "é", KEY + "\n", "two words"])
def test_a_default_key_that_cannot_be_a_header_is_refused(key):
    with pytest.raises(ValueError) as refused:
        Settings(_env_file=None, upstream_api_key=key)
    assert "upstream_api_key" in str(refused.value) and key not in str(refused.value)


def test_the_command_refuses_to_start_and_names_the_setting(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATUS_PROXY_")}
    env.update(
        STATUS_PROXY_DATABASE_URL=f"sqlite:///{tmp_path / 's.db'}",
        STATUS_PROXY_UPSTREAMS=json.dumps({"acme": entry(family="nope")}),
    )
    result = subprocess.run([COMMAND, "migrate"], env=env, capture_output=True)
    assert result.returncode == 2
    assert b"STATUS_PROXY_UPSTREAMS: upstream 'acme': family" in result.stderr
    assert KEY.encode() not in result.stderr + result.stdout
    assert not (tmp_path / "s.db").exists()


def test_the_command_names_a_bad_default_key_by_its_variable(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATUS_PROXY_")}
    env.update(
        STATUS_PROXY_DATABASE_URL=f"sqlite:///{tmp_path / 's.db'}",
        STATUS_PROXY_UPSTREAM_API_KEY=KEY + "é",
    )
    result = subprocess.run([COMMAND, "migrate"], env=env, capture_output=True)
    assert result.returncode == 2
    said = result.stderr.decode()
    assert said.startswith("status-proxy: bad configuration: STATUS_PROXY_UPSTREAM_API_KEY: ")
    assert KEY not in said + result.stdout.decode() and "pydantic" not in said
