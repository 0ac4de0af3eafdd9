"""Property-based fuzzing of the whole HTTP API against its own OpenAPI schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from service.main import create_app
from service.simulator import Simulator
from tests.conftest import test_settings
from tests.harness import UPSTREAM_KEY, ServerThread

API_KEY = "fuzz-key-3c1d"
EXAMPLES = 60  # per operation: the whole run stays well under a minute


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    simulator = Simulator(api_key=UPSTREAM_KEY, duration=1.0)
    upstream = ServerThread(simulator.create_app()).start()
    db: Path = tmp_path_factory.mktemp("fuzz") / "status-proxy.db"
    settings_ = test_settings(f"sqlite:///{db}", upstream.url, api_keys=API_KEY)
    service = ServerThread(create_app(settings_)).start()
    try:
        yield service.url
    finally:
        service.stop()
        upstream.stop()


# The schema is the app's own; building the app opens nothing until it is served.
schema = schemathesis.openapi.from_dict(
    create_app(test_settings("sqlite://", "http://127.0.0.1:9")).openapi()
)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
def test_api_answers_every_input_within_its_schema(case: schemathesis.Case, live_url: str) -> None:
    # A generated key is swapped for a real one, so cases reach past authentication; a
    # case that leaves the header out on purpose (negative data) goes without it.
    headers = (
        {"Authorization": f"Bearer {API_KEY}"} if "Authorization" in (case.headers or {}) else {}
    )
    case.call_and_validate(
        base_url=live_url,
        headers=headers,
        timeout=20,
        # Some rules cannot be said in JSON Schema (a callback host must resolve to a public
        # address, metadata is capped in bytes, ports stop at 65535), so a schema-valid body
        # may still earn a 422. Everything else is checked, invalid data rejection included.
        excluded_checks=[schemathesis.checks.positive_data_acceptance],
    )
