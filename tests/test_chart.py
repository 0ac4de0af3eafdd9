"""The dashboard's chart geometry: a pure function of per-minute figures."""

import pytest

from service.dashboard import chart
from service.dashboard.chart import Minute


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 1), (-3, 1), (0.3, 0.5), (1, 1), (3, 5), (7, 10), (12, 20), (250, 500), (0.013, 0.02)],
)
def test_nice_ceiling(value, expected):
    assert chart.nice_ceiling(value) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0424, "42 ms"), (1, "1 s"), (4.25, "4.2 s"), (90, "2 min"), (7200, "2 h"), (9000, "2.5 h")],
)
def test_seconds_text(seconds, text):
    assert chart.seconds_text(seconds) == text


def test_the_window_is_the_last_sixty_whole_minutes():
    starts = chart.window(3600 * 10 + 125.5)
    assert len(starts) == 60 and starts[-1] == 3600 * 10 + 120 and starts[0] == starts[-1] - 3540


def test_bars_stack_by_outcome_on_a_shared_scale():
    starts = chart.window(1_800_000_000)
    minutes = [Minute(start) for start in starts]
    minutes[10] = Minute(starts[10], accepted=2, failed=1, dead=1, latency=0.5)
    minutes[11] = Minute(starts[11], accepted=1)
    drawn = chart.build(minutes)
    assert len(drawn.bars) == 60 and drawn.total == 5
    busy = drawn.bars[10]
    assert [s.outcome for s in busy.segments] == ["accepted", "failed", "dead"]
    # The busiest minute (4) fills the scale of 5: 4/5 of the plot's height.
    assert sum(s.height for s in busy.segments) == pytest.approx(chart.PLOT_H * 4 / 5, abs=0.05)
    bottom = chart.TOP + chart.PLOT_H
    assert busy.segments[0].y + busy.segments[0].height == pytest.approx(bottom)
    assert busy.segments[1].y + busy.segments[1].height == pytest.approx(busy.segments[0].y)
    assert drawn.bars[0].segments == []
    assert "2 accepted, 1 failed, 1 dead" in busy.title and "500 ms" in busy.title
    assert [t.text for t in drawn.count_ticks] == ["0", "2.5", "5"]  # bottom up


def test_latency_runs_break_where_no_event_was_accepted():
    starts = chart.window(1_800_000_000)
    minutes = [Minute(start) for start in starts]
    for index, latency in ((3, 1.0), (4, 2.0), (8, 4.0)):
        minutes[index] = Minute(starts[index], accepted=1, latency=latency)
    drawn = chart.build(minutes)
    assert [len(run.split()) for run in drawn.latency_runs] == [2, 1]
    # The highest latency (4 s) is on the top line of its scale (5 s).
    top_y = float(drawn.latency_runs[1].split(",")[1])
    assert top_y == pytest.approx(chart.TOP + chart.PLOT_H * (1 - 4 / 5), abs=0.01)
    assert [t.text for t in drawn.latency_ticks] == ["0", "2.5 s", "5 s"]  # bottom up


def test_an_empty_hour_draws_an_empty_chart():
    drawn = chart.build([Minute(start) for start in chart.window(1_800_000_000)])
    assert drawn.total == 0 and drawn.latency_runs == [] and drawn.latency_ticks == []
    assert all(bar.segments == [] for bar in drawn.bars)
