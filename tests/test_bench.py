"""The benchmarks at tiny sizes: they must keep running, whatever their numbers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_smoke_run_produces_every_figure(tmp_path):
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(out)],
        cwd=ROOT, capture_output=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    results = json.loads(out.read_text())
    for figure in ("cached_get", "register", "polls", "webhooks"):
        assert results[figure]["reference"] > 0 and "ratio" in results[figure], figure
    assert results["webhooks"]["status_proxy"] > 0
    assert all(results["footprint"][n]["rss_mb"] > 0 for n in ("20", "200"))
    assert results["latency"]["10"]["delivered"] == 10
    assert "| 6 |" in done.stdout.decode()
