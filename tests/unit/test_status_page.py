"""The chart history (rates, bound, levels) and the status page document itself."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest

from tidegate.agents.monitoring import _since
from tidegate.monitoring.page import status_page
from tidegate.monitoring.status import History, StatusBoard
from tidegate.settings import load_settings

pytestmark = pytest.mark.unit

T0 = 1_000_000.0


def health(stage: str, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"stage": stage, "instance": "i-1", "records_in": 0,
                             "records_out": 0, "dead_lettered": 0, "errors": 0, "lag": 0,
                             "latency_p50_ms": 0.0, "latency_p99_ms": 0.0}
    event.update(fields)
    return event


def predicted(board: StatusBoard, count: int, *, at: float) -> None:
    board.on_health(health("inference", **{"extra": {"predictions.primary": str(count)}}), now=at)


def test_the_first_point_has_no_rate_and_later_ones_divide_by_elapsed_time() -> None:
    board, history = StatusBoard(stale_after=10.0), History(window=1)
    first = history.record(board.snapshot(now=T0))
    assert (first["predictions_per_s"], first["dead_letters_per_s"]) == (None, None)
    predicted(board, 500, at=T0 + 1)
    board.on_health(health("validation", dead_lettered=20), now=T0 + 1)
    second = history.record(board.snapshot(now=T0 + 2.0))
    assert second["predictions_per_s"] == 250.0
    assert second["dead_letters_per_s"] == 10.0
    third = history.record(board.snapshot(now=T0 + 6.0))
    assert (third["predictions_per_s"], third["dead_letters_per_s"]) == (0.0, 0.0)
    assert [point["time"] for point in history.points()] == [T0, T0 + 2.0, T0 + 6.0]


def test_a_counter_that_goes_back_or_a_clock_that_stands_still_gives_no_rate() -> None:
    history = History(window=1)
    snap = {"time": T0, "stages": {}, "predictions": {"total": 100}}
    history.record(snap)
    assert history.record({**snap, "time": T0})["predictions_per_s"] is None
    assert history.record({**snap, "time": T0 + 1, "predictions": {"total": 5}}
                          )["predictions_per_s"] is None
    assert history.record({**snap, "time": T0 + 2, "predictions": {"total": 7}}
                          )["predictions_per_s"] == 2.0


def test_latency_and_lag_come_from_stages_that_are_up() -> None:
    board, history = StatusBoard(stale_after=10.0), History()
    board.on_health(health("ingest", latency_p99_ms=12.5, lag=40), now=T0)
    board.on_health(health("feature", latency_p99_ms=99.0, lag=7), now=T0 - 60)
    point = history.record(board.snapshot(now=T0))
    assert point["latency_p99_ms"] == {"ingest": 12.5}
    assert point["lag"] == {"ingest": 40}
    assert point["level"] is None


def test_the_system_level_is_taken_when_monitoring_reports_one() -> None:
    history = History()
    snap: dict[str, Any] = {"time": T0, "stages": {}, "predictions": {"total": 0}}
    assert history.record({**snap, "crisis": {"system": "WARNING", "stages": {}}}
                          )["level"] == "WARNING"
    assert history.record({**snap, "crisis": "garbled"})["level"] is None
    assert history.record({"time": T0 + 1})["level"] is None  # every other key missing


def test_the_history_is_bounded_and_keeps_the_newest_points() -> None:
    history = History(size=5)
    for second in range(12):
        history.record({"time": T0 + second, "stages": {}, "predictions": {"total": second * 3}})
    points = history.points()
    assert len(history) == len(points) == 5
    assert [point["time"] for point in points] == [T0 + s for s in range(7, 12)]
    assert {point["predictions_per_s"] for point in points} == {3.0}
    with pytest.raises(ValueError):
        History(size=0)
    with pytest.raises(ValueError):
        History(window=0)


def test_a_rate_spans_the_window_so_chunky_reports_chart_steadily() -> None:
    # Inference reports 200 predictions every other second: 100/s, seen in chunks.
    history = History(window=4)
    rates = [history.record({"time": T0 + second, "stages": {},
                             "predictions": {"total": 200 * ((second + 1) // 2)}}
                            )["predictions_per_s"] for second in range(9)]
    assert rates[:5] == [None, 200.0, 100.0, 133.333, 100.0]
    assert rates[4:] == [100.0] * 5
    # After a restart of monitoring's board the window starts again.
    assert history.record({"time": T0 + 9, "predictions": {"total": 10}}
                          )["predictions_per_s"] is None
    assert history.record({"time": T0 + 11, "predictions": {"total": 30}}
                          )["predictions_per_s"] == 10.0


def test_points_since_a_time_are_the_newer_ones() -> None:
    history = History()
    for second in range(4):
        history.record({"time": T0 + second, "stages": {}, "predictions": {"total": 0}})
    assert [p["time"] for p in history.points(since=T0 + 1)] == [T0 + 2, T0 + 3]
    assert history.points(since=T0 + 3) == []
    assert (_since(None), _since(""), _since("x"), _since("nan")) == (None, None, None, None)
    assert _since("12.5") == 12.5


class _Elements(HTMLParser):
    """Element ids, tags and the text of every script and style in a document."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: dict[str, str] = {}
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.code: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if dict(attrs).get("id"):
            self.ids[str(dict(attrs)["id"])] = tag

    def handle_data(self, data: str) -> None:
        if self.lasttag in ("script", "style"):
            self.code.append(data)


def test_the_page_has_every_section_the_operators_and_tests_look_for() -> None:
    parsed = _Elements()
    parsed.feed(status_page())
    assert parsed.ids["crisis-level"] == "span"
    assert parsed.ids["stages"] == "table"
    for section in ("predictions", "alerts", "drift", "accuracy", "actions", "dead-letters"):
        assert parsed.ids[section] == "div"
    for chart in ("throughput", "dead-letters", "latency", "lag"):
        assert parsed.ids[f"chart-{chart}"] == "svg"


def test_the_page_is_self_contained_and_never_parses_data_as_markup() -> None:
    html = status_page()
    parsed = _Elements()
    parsed.feed(html)
    # Nothing loaded from elsewhere: no src/href attributes, imports or url() in styles.
    assert all("src" not in attrs and "href" not in attrs for _, attrs in parsed.tags)
    code = "\n".join(parsed.code)
    assert not re.search(r"@import|url\(|<link|import\(", html)
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", code)
    # Only the two endpoints beside the page are fetched, relative to its own address.
    assert set(re.findall(r'getJson\("([a-z]+)', code)) == {"status", "history"}


def test_the_poll_interval_is_written_into_the_script() -> None:
    assert "const POLL_MS = 2000," in status_page()
    assert "const POLL_MS = 500," in status_page(poll_seconds=0.5)
    assert "@POLL_MS@" not in status_page()



def test_the_status_command_prints_the_crisis_level_and_alerts(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tidegate.cli import up
    from tidegate.cli.main import main

    board = StatusBoard().snapshot(now=0.0)
    board["crisis"] = {"system": "WARNING", "stages": {"inference": "WARNING", "ingest": "NORMAL"}}
    board["alerts"] = [{"severity": "warning", "message": "inference: 2 inputs drifted"}]
    monkeypatch.setattr(up, "_board", lambda settings: board)
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "crisis level: WARNING (inference WARNING)" in out
    assert "alert warning: inference: 2 inputs drifted" in out
    assert "crisis level WARNING" in up._progress_line(load_settings())
