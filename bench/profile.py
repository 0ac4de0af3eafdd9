"""py-spy recordings of a service process under load, and their summary.

``recording(pid, path)`` samples ``pid`` at 200 Hz while its block runs, writes the
collapsed stacks to ``path.folded`` and a summary to ``path.txt``: the share of samples
in each function (its own time, then its time with what it calls) and in each library,
which is what bench/README.md quotes.
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RATE = 200
TOP = 25


@contextmanager
def recording(pid: int, path: Path) -> Iterator[None]:
    """Record ``pid`` with py-spy meanwhile; a no-op (with a note) without py-spy."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy is not installed: no profile", file=sys.stderr)
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    folded = path.with_suffix(".folded")
    popen = subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw",
         "--nonblocking", "--output", str(folded)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield
    finally:
        popen.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
        try:
            popen.wait(30)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
    if folded.exists():
        path.with_suffix(".txt").write_text(summary(folded.read_text()))


def _frames(stack: str) -> list[str]:
    # py-spy's raw lines: "thread;frame (file:line);frame (file:line) count"
    return [frame.split(" (")[0] + " (" + _file(frame) + ")" for frame in stack.split(";")[1:]]


def _file(frame: str) -> str:
    inside = frame.rsplit(" (", 1)[-1].rstrip(")")
    name = inside.rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3."):
        if marker in name:
            name = name.split(marker, 1)[1]
    return name


def _library(frame: str) -> str:
    source = frame.rsplit(" (", 1)[-1].rstrip(")")
    if source.startswith(("service/", "/")) and "service/" in source:
        return "service"
    top = source.split("/", 1)[0]
    return top if "/" in source else source.split(".")[0]


def summary(folded: str) -> str:
    """Own and inclusive shares per function, and own shares per library."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    libraries: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        libraries[_library(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "no samples\n"

    def block(title: str, counts: collections.Counter[str]) -> list[str]:
        rows = [f"{title} ({total} samples at {RATE} Hz)"]
        rows += [f"{100 * n / total:5.1f} %  {name}" for name, n in counts.most_common(TOP)]
        return [*rows, ""]

    lines = block("own time by library", libraries)
    lines += block("own time by function", own)
    lines += block("time with callees by function", inclusive)
    return "\n".join(lines)
