"""Log lines as operators see them: JSON for collectors, readable on a terminal."""

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import logging
from service import logs
logs.configure("INFO")
logs.task_id.set("task_1")
logging.getLogger("service.poller").info("hello")
logging.getLogger("service.poller").debug("not at info")
"""


def run(stdout):
    return subprocess.run([sys.executable, "-c", SCRIPT], stdout=stdout, timeout=30, check=True)


def test_json_lines_when_stdout_is_not_a_terminal():
    out = run(subprocess.PIPE).stdout.decode().splitlines()
    assert len(out) == 1
    line = json.loads(out[0])
    assert line["message"] == "hello" and line["level"] == "info"
    assert line["logger"] == "service.poller" and line["task_id"] == "task_1"
    assert "request_id" not in line  # ids that do not apply are left out


def test_readable_lines_on_a_terminal():
    master, slave = pty.openpty()
    try:
        run(slave)
        os.close(slave)
        text = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the terminal closed: everything is read
                break
            if not chunk:
                break
            text += chunk
    finally:
        os.close(master)
    lines = text.decode().splitlines()
    assert len(lines) == 1 and not lines[0].startswith("{")
    assert "INFO" in lines[0] and lines[0].endswith("service.poller: hello [task_id=task_1]")


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    ignored = (Path(__file__).parent.parent / ".dockerignore").read_text().split()
    for entry in (".venv", ".git", "**/__pycache__", ".pytest_cache", ".mypy_cache"):
        assert entry in ignored
