"""The alert book: de-duplication, hold-down before resolving, crisis levels, bounds, the schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tidegate.monitoring.alerting import LEVELS, Alert, AlertBook, Finding, level_of, system_level

pytestmark = pytest.mark.unit

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "alert.avsc"
T0 = 1_700_000_000.0


def fire(book: AlertBook, key: str, severity: str = "warning", now: float = T0,
         stage: str = "validation") -> Alert | None:  # fmt: skip
    return book.fire(key, severity, stage, key.rsplit("/", 1)[-1], f"{key} now", {"v": "1"},  # type: ignore[arg-type]
                     now)  # fmt: skip


def test_a_record_has_exactly_the_schema_fields() -> None:
    alert = fire(AlertBook(), "validation/dead_letter_rate")
    assert alert is not None
    record = alert.to_record()
    fields = [f["name"] for f in json.loads(SCHEMA.read_text())["fields"]]
    assert list(record) == fields
    assert record["status"] == "firing" and record["time"] == int(T0 * 1000)
    assert all(isinstance(v, str) for v in record["details"].values())


def test_repeats_are_one_alert_until_severity_changes() -> None:
    book = AlertBook()
    first = fire(book, "inference/error_rate")
    assert first is not None
    assert fire(book, "inference/error_rate", now=T0 + 2) is None
    worse = fire(book, "inference/error_rate", "critical", now=T0 + 4)
    assert worse is not None and worse.severity == "critical" and worse.id != first.id
    better = fire(book, "inference/error_rate", "warning", now=T0 + 6)
    assert better is not None and better.severity == "warning"
    assert [a.status for a in book.history] == ["firing"] * 3
    active = book.get("inference/error_rate")
    assert active is not None and active.since == T0  # the same alert since it started


def test_repeat_updates_message_and_details_silently() -> None:
    book = AlertBook()
    book.fire("k", "warning", "feature", "lag_trend", "lag +100", {"rise": "100"}, T0)
    assert book.fire("k", "warning", "feature", "lag_trend", "lag +900", {"rise": "900"},
                     T0 + 1) is None  # fmt: skip
    (active,) = book.active()
    assert active.message == "lag +900" and active.details == {"rise": "900"}


def test_resolution_waits_for_the_hold_and_a_flap_resets_it() -> None:
    book = AlertBook(resolve_after=30.0)
    fire(book, "k")
    assert book.resolve("k", T0 + 10) is None
    assert fire(book, "k", now=T0 + 20) is None  # back within the hold: same alert, no news
    assert book.resolve("k", T0 + 25) is None
    assert book.resolve("k", T0 + 54) is None  # clear since 25: 29 s
    resolved = book.resolve("k", T0 + 55)
    assert resolved is not None and resolved.status == "resolved"
    assert resolved.time == (T0 + 55) * 1000
    assert book.active() == [] and book.resolve("k", T0 + 60) is None
    again = fire(book, "k", now=T0 + 70)
    assert again is not None and again.status == "firing"  # a new episode is news again


def test_resolve_without_hold_and_of_unknown_keys() -> None:
    book = AlertBook(resolve_after=30.0)
    fire(book, "k")
    assert book.resolve("missing", T0) is None
    resolved = book.resolve("k", T0 + 1, hold=False)
    assert resolved is not None and resolved.status == "resolved"


def test_settle_fires_present_and_resolves_absent_after_hold() -> None:
    book = AlertBook(resolve_after=5.0)
    a = Finding("ingest/lag_trend", "warning", "ingest", "lag_trend", "lag up")
    b = Finding("feature/latency", "critical", "feature", "latency", "slow")
    assert [x.key for x in book.settle([a, b], T0)] == ["ingest/lag_trend", "feature/latency"]
    assert book.settle([a, b], T0 + 1) == []
    assert book.settle([a], T0 + 2) == []  # b clear, on hold
    out = book.settle([a], T0 + 7)
    assert [(x.key, x.status) for x in out] == [("feature/latency", "resolved")]


def test_levels_per_stage_and_system() -> None:
    book = AlertBook()
    assert book.levels(["ingest", "inference"]) == {"ingest": "NORMAL", "inference": "NORMAL",
                                                    "system": "NORMAL"}  # fmt: skip
    fire(book, "inference/info", "info", stage="inference")
    assert book.levels()["inference"] == "NORMAL"  # info is no crisis
    fire(book, "inference/drift", "warning", stage="inference")
    fire(book, "inference/breaker", "critical", stage="inference")
    fire(book, "ingest/lag_trend", "warning", stage="ingest")
    levels = book.levels(["ingest", "validation", "inference"])
    assert levels == {"ingest": "WARNING", "validation": "NORMAL", "inference": "CRITICAL",
                      "system": "CRITICAL"}  # fmt: skip
    fire(book, "feature/liveness", "critical", stage="feature")
    assert book.levels()["system"] == "EMERGENCY"  # two critical stages
    assert [a.severity for a in book.active()][:2] == ["critical", "critical"]


def test_a_system_alert_counts_for_the_system_directly() -> None:
    book = AlertBook()
    fire(book, "system/broker", "emergency", stage="system")
    levels = book.levels(["ingest"])
    assert levels == {"ingest": "NORMAL", "system": "EMERGENCY"}


def test_system_level_rule_and_level_of() -> None:
    assert system_level({}) == "NORMAL"
    assert system_level({"a": "WARNING", "b": "CRITICAL"}) == "CRITICAL"
    assert system_level({"a": "EMERGENCY"}) == "EMERGENCY"
    assert system_level({"a": "CRITICAL", "b": "EMERGENCY"}) == "EMERGENCY"
    assert [level_of(s) for s in ("info", "warning", "critical", "emergency")] == [
        "NORMAL", *LEVELS[1:]]  # fmt: skip


def test_unknown_severity_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown severity"):
        fire(AlertBook(), "k", "fatal")


def test_active_and_history_are_bounded() -> None:
    book = AlertBook(max_active=3, history=4)
    for i in range(5):
        fire(book, f"k{i}", now=T0 + i)
    assert [a.key for a in book.active()] == ["k0", "k1", "k2"] and book.dropped == 2
    for i in range(3):
        book.resolve(f"k{i}", T0 + 10, hold=False)
    assert len(book.history) == 4
    assert [a.status for a in book.history] == ["firing", "resolved", "resolved", "resolved"]
    assert fire(book, "k3", now=T0 + 11) is not None  # room again
