"""The dashboard's chart of the last hour, drawn on the server as SVG geometry.

Per minute: webhook attempts stacked by outcome (accepted, failed, dead) on the left
scale, and the average end-to-webhook latency (from the event being written to the
receiver accepting it) as a line on the right scale. The template only places what
is computed here; no script and no charting library are involved.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

# About the size it is shown at on a laptop, so its text keeps a readable size.
WIDTH, HEIGHT = 1200, 220
LEFT, RIGHT, TOP, BOTTOM = 44, 64, 12, 24
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
MINUTES = 60
OUTCOMES = ("accepted", "failed", "dead")


@dataclass(slots=True, frozen=True)
class Frame:
    """Where the plot sits in the SVG, for the template."""

    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = LEFT + PLOT_W
    top: int = TOP
    plot_height: int = PLOT_H


FRAME = Frame()


@dataclass(slots=True, frozen=True)
class Minute:
    """What one minute saw; ``start`` is its first second (unix time)."""

    start: float
    accepted: int = 0
    failed: int = 0
    dead: int = 0
    latency: float | None = None  # average seconds, over accepted attempts


@dataclass(slots=True, frozen=True)
class Segment:
    outcome: str
    y: float
    height: float


@dataclass(slots=True, frozen=True)
class Bar:
    minute: Minute
    label: str  # HH:MM UTC
    x: float
    width: float
    segments: list[Segment]
    title: str


@dataclass(slots=True, frozen=True)
class Tick:
    y: float
    text: str


@dataclass(slots=True, frozen=True)
class Chart:
    bars: list[Bar]
    latency_runs: list[str]  # SVG polyline points, one run per stretch of minutes with data
    latency_dots: list[tuple[float, float]]  # each minute's point, so a lone one shows too
    count_ticks: list[Tick]
    latency_ticks: list[Tick]
    time_ticks: list[tuple[float, str]]
    total: int


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2 or 5 times a power of ten at least ``value`` (1 for nothing)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power


def seconds_text(seconds: float) -> str:
    """A short duration: 0, 850 ms, 4.2 s, 3 min, 2.5 h."""
    if seconds <= 0:
        return "0"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s".replace(".0 s", " s")
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h".replace(".0 h", " h")


def _clock(t: float) -> str:
    return time.strftime("%H:%M", time.gmtime(t))


def _title(minute: Minute) -> str:
    text = (
        f"{_clock(minute.start)} UTC: {minute.accepted} accepted, "
        f"{minute.failed} failed, {minute.dead} dead"
    )
    if minute.latency is not None:
        text += f"; latency {seconds_text(minute.latency)} on average"
    return text


def build(minutes: list[Minute]) -> Chart:
    """The chart's geometry for consecutive minutes, oldest first."""
    slot = PLOT_W / max(1, len(minutes))
    top_count = nice_ceiling(max((m.accepted + m.failed + m.dead for m in minutes), default=0))
    latencies = [m.latency for m in minutes if m.latency is not None]
    top_latency = nice_ceiling(max(latencies, default=0.0))
    bars: list[Bar] = []
    runs: list[str] = []
    run: list[str] = []
    dots: list[tuple[float, float]] = []
    for index, minute in enumerate(minutes):
        x = LEFT + index * slot
        base = TOP + PLOT_H
        segments = []
        for outcome in OUTCOMES:
            count = getattr(minute, outcome)
            if count:
                height = PLOT_H * count / top_count
                base -= height
                segments.append(Segment(outcome, round(base, 2), round(height, 2)))
        bars.append(
            Bar(minute, _clock(minute.start), round(x + 1, 2), round(slot - 2, 2), segments,
                _title(minute))
        )  # fmt: skip
        if minute.latency is None:
            if run:
                runs.append(" ".join(run))
            run.clear()
            continue
        dot = (
            round(x + slot / 2, 2),
            round(TOP + PLOT_H - PLOT_H * minute.latency / top_latency, 2),
        )
        dots.append(dot)
        run.append(f"{dot[0]:.2f},{dot[1]:.2f}")
    if run:
        runs.append(" ".join(run))
    return Chart(
        bars=bars,
        latency_runs=runs,
        latency_dots=dots,
        count_ticks=_ticks(top_count, lambda v: f"{v:g}"),
        latency_ticks=_ticks(top_latency, seconds_text) if latencies else [],
        time_ticks=[
            (round(LEFT + index * slot, 2), _clock(minutes[index].start))
            for index in range(0, len(minutes), 15)
        ],
        total=sum(m.accepted + m.failed + m.dead for m in minutes),
    )


def _ticks(top: float, text: Callable[[float], str]) -> list[Tick]:
    return [Tick(round(TOP + PLOT_H * (1 - share), 2), text(top * share)) for share in (0, 0.5, 1)]


def window(now: float) -> list[float]:
    """The first second of each of the last 60 minutes, the current one last."""
    current = math.floor(now / 60) * 60
    return [current - 60 * back for back in range(MINUTES - 1, -1, -1)]
