"""The shipped alert rules and dashboard query metrics the service really exposes."""

import json
import re
from pathlib import Path

import yaml

from tests.harness import eventually

ROOT = Path(__file__).resolve().parent.parent
SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def exposed(service):
    text = service.client.get("/metrics").text
    return {base(line.split()[2]) for line in text.splitlines() if line.startswith("# TYPE ")}


def base(name):
    return next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), name)


def referenced(expression):
    return {base(name) for name in re.findall(r"status_proxy_[a-z_]+", expression)}


def test_alerts_and_dashboard_use_real_metrics(service, upstream, hooks):
    service.register(upstream.add(duration=0.1, queued=0), f"{hooks.url}/m")
    eventually(lambda: hooks.at("/m"))
    families = exposed(service)
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus-alerts.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert {rule["alert"] for rule in alerts} >= {
        "StatusProxyOutboxStalled", "StatusProxyUpstreamAuthFailing", "StatusProxyWebhookFailureRate",
        "StatusProxyCircuitOpenLong",
    }  # fmt: skip
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    expressions = [rule["expr"] for rule in alerts]
    expressions += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = set().union(*(referenced(e) for e in expressions))
    assert used and used <= families, used - families
    assert {"status_proxy_outbox_depth", "status_proxy_poll_lag_seconds"} <= used
    assert "status_proxy_oldest_open_circuit_seconds" in used
