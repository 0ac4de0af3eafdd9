"""Every setting is documented where operators look: .env.example and the README."""

from pathlib import Path

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
            assert tuple(float(v) for v in value.split(",") if v) == default, name
        elif isinstance(default, str):
            assert value == default, name
