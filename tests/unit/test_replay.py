"""Replay without a broker: --where and time parsing, selection, replay headers, the loop guard."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tidegate.cli.dlq import Condition, parse_condition, parse_time
from tidegate.cli.main import main
from tidegate.cli.replay import (
    REPLAY_AT_HEADER,
    REPLAY_HEADER,
    REPLAY_OFFSET_HEADER,
    ReplayRequest,
    decide,
    dlq_topic,
    replay_count,
    replay_group,
    replay_headers,
)
from tidegate.deadletter import DeadLetter, Headers, SourceRecord
from tidegate.errors import ConfigError

pytestmark = pytest.mark.unit

EVENT = {"event_id": "e-1", "amount": 5_000_000.0, "currency": "XXX", "card_present": True,
         "customer_age": None, "previous_declines_24h": 2, "geo": {"country": "DE"}}


def letter(code: str = "OUT_OF_RANGE", *, headers: Headers | None = None,
           value: bytes | None = None, failed_at: int | None = None) -> Headers:
    """The headers of a dead letter as the validation stage writes them."""
    source = SourceRecord(topic="p.events", partition=2, offset=17, timestamp=1, key=b"acct-1",
                          value=value if value is not None else json.dumps(EVENT).encode(),
                          headers=list(headers or [("traceparent", b"00-abc")]))
    dead = DeadLetter.of(source, stage="validation", code=code, error_class="ValidationError",
                         message="amount: above 1e6", event_id="e-1")
    if failed_at is None:
        return dead.headers
    return [(k, str(failed_at).encode() if k == "tidegate.dlq.failed.at" else v)
            for k, v in dead.headers]


# --- --where ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("amount>=1e6", Condition("amount", ">=", "1e6")),
    ("  amount >  5 ", Condition("amount", ">", "5")),
    ("currency==XXX", Condition("currency", "=", "XXX")),
    ("currency!=USD", Condition("currency", "!=", "USD")),
    ("amount<=10", Condition("amount", "<=", "10")),
    ("amount<10", Condition("amount", "<", "10")),
    ("description=a=b", Condition("description", "=", "a=b")),
    ('description="two words"', Condition("description", "=", "two words")),
    ("geo.country=DE", Condition("geo.country", "=", "DE")),
    ("device_id=", Condition("device_id", "=", "")),
])
def test_parse_condition(text: str, expected: Condition) -> None:
    assert parse_condition(text) == expected
    assert str(parse_condition(str(expected))) == str(expected)


@pytest.mark.parametrize("text", ["amount", ">5", "5amount=1", "amount~5", ""])
def test_a_malformed_condition_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="FIELD OP VALUE"):
        parse_condition(text)


@pytest.mark.parametrize(("text", "matches"), [
    ("amount>1e6", True), ("amount>=5000000", True), ("amount<1e6", False),
    ("amount=5e6", True), ("amount!=5e6", False), ("amount>abc", False), ("amount!=abc", False),
    ("previous_declines_24h<3", True), ("previous_declines_24h=2.0", True),
    ("currency=XXX", True), ("currency!=USD", True), ("currency<YYY", True),
    ("currency>XXX", False), ("currency=xxx", False),
    ("card_present=true", True), ("card_present!=true", False), ("card_present=yes", False),
    ("card_present>false", False),
    ("customer_age=null", True), ("customer_age>0", False), ("customer_age!=5", False),
    ("customer_age!=null", False), ("no_such_field=null", True), ("no_such_field!=x", False),
    ("geo.country=DE", True), ("geo.country.x=DE", False), ("event_id.x=e", False),
])
def test_condition_matching(text: str, matches: bool) -> None:
    assert parse_condition(text)(EVENT) is matches


# --- --since / --until ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "ms"), [
    ("1700000000123", 1_700_000_000_123),
    ("2023-11-14T22:13:20Z", 1_700_000_000_000),
    ("2023-11-14T22:13:20", 1_700_000_000_000),
    ("2023-11-14T23:13:20+01:00", 1_700_000_000_000),
    ("2023-11-14 22:13:20.5", 1_700_000_000_500),
    ("2023-11-14", 1_699_920_000_000),
])
def test_parse_time(text: str, ms: int) -> None:
    assert parse_time(text) == ms


@pytest.mark.parametrize("text", ["yesterday", "-5", "2023-13-01", "1.5"])
def test_a_bad_time_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="ISO 8601"):
        parse_time(text)


# --- selection --------------------------------------------------------------------------------


def test_codes_select_any_of_them() -> None:
    assert ReplayRequest(topic="v").judge(letter()) == "replay"
    assert ReplayRequest(topic="v", codes=("OUT_OF_RANGE",)).judge(letter()) == "replay"
    assert ReplayRequest(topic="v", codes=("REQUIRED", "OUT_OF_RANGE")).judge(letter()) == "replay"
    assert ReplayRequest(topic="v", codes=("NOT_ALLOWED",)).judge(letter()) == "filtered"


def test_time_window_is_since_inclusive_until_exclusive() -> None:
    headers = letter(failed_at=1000)
    assert ReplayRequest(topic="v", since_ms=1000).judge(headers) == "replay"
    assert ReplayRequest(topic="v", since_ms=1001).judge(headers) == "filtered"
    assert ReplayRequest(topic="v", until_ms=1001).judge(headers) == "replay"
    assert ReplayRequest(topic="v", until_ms=1000).judge(headers) == "filtered"
    no_time = [(k, v) for k, v in headers if k != "tidegate.dlq.failed.at"]
    assert ReplayRequest(topic="v").judge(no_time) == "replay"
    assert ReplayRequest(topic="v", since_ms=0).judge(no_time) == "filtered"


def test_where_holds_on_the_decoded_value_and_never_on_an_undecodable_one() -> None:
    big = (parse_condition("amount>1e6"), parse_condition("currency=XXX"))
    value = json.dumps(EVENT).encode()
    assert ReplayRequest(topic="v", where=big).judge(letter(), value) == "replay"
    small = (parse_condition("amount<1e6"),)
    assert ReplayRequest(topic="v", where=small).judge(letter(), value) == "filtered"
    for garbage in (b"", b"{not json", b"\xc3\x01\x00", b"[1, 2]"):
        assert ReplayRequest(topic="v", where=big).judge(letter(), garbage) == "filtered"
        matches_null = (parse_condition("amount=null"),)
        assert ReplayRequest(topic="v", where=matches_null).judge(letter(), garbage) == "filtered"
    by_lambda = (lambda event: event["amount"] > 1e6,)
    assert ReplayRequest(topic="v", where=by_lambda).judge(letter(), value) == "replay"


def test_superseded_duplicate_and_unroutable_dead_letters_are_skipped() -> None:
    request = ReplayRequest(topic="v")
    assert request.judge(letter(), position="d:0:5", superseded={"d:0:5"}) == "superseded"
    assert request.judge(letter(), position="d:0:6", superseded={"d:0:5"}) == "replay"
    assert request.judge(letter("DUPLICATE_EVENT_ID")) == "duplicate"
    named = ReplayRequest(topic="v", codes=("DUPLICATE_EVENT_ID",))
    assert named.judge(letter("DUPLICATE_EVENT_ID")) == "replay"
    unroutable = [(k, v) for k, v in letter() if k != "tidegate.dlq.source.topic"]
    assert request.judge(unroutable) == "no source topic"
    assert ReplayRequest(topic="v", to="elsewhere").judge(unroutable) == "replay"


@pytest.mark.parametrize("bad", [
    {"rate": -1.0}, {"max_replays": 0}, {"limit": 0}, {"since_ms": 5, "until_ms": 5},
])
def test_an_impossible_request_is_a_config_error(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        ReplayRequest(topic="v", **bad)  # type: ignore[arg-type]


def test_topic_names() -> None:
    assert dlq_topic("validation", "p.") == "p.dlq.validation"
    assert dlq_topic("dlq.ingest", "p.") == "p.dlq.ingest"
    assert dlq_topic("someone.elses.dlq", "p.") == "someone.elses.dlq"
    assert replay_group("p.", "p.dlq.feature") == "p.replay.p.dlq.feature"


# --- replay headers and the loop guard --------------------------------------------------------


def test_replay_headers_keep_the_original_ones_and_add_count_position_and_time() -> None:
    original: Headers = [("traceparent", b"00-abc"), ("blank", None), ("dup", b"1"), ("dup", b"2")]
    headers = replay_headers(letter(headers=original), position="p.dlq.validation:1:42",
                             now_ms=1_700_000_000_000)
    assert headers[:len(original)] == original
    assert headers[len(original):] == [
        (REPLAY_HEADER, b"1"), (REPLAY_OFFSET_HEADER, b"p.dlq.validation:1:42"),
        (REPLAY_AT_HEADER, b"1700000000000")]
    assert not any(name.startswith("tidegate.dlq.") for name, _ in headers)


def test_a_second_failure_keeps_the_replay_headers_and_the_count_goes_on() -> None:
    first = replay_headers(letter(), position="d:0:1", now_ms=1)
    again = replay_headers(letter(headers=first), position="d:0:9", now_ms=2)
    assert [name for name, _ in again].count(REPLAY_HEADER) == 1
    assert dict(again)[REPLAY_HEADER] == b"2"
    assert dict(again)[REPLAY_OFFSET_HEADER] == b"d:0:9"


@pytest.mark.parametrize(("count", "max_replays", "decision"), [
    (None, 3, "replay"), ("0", 3, "replay"), ("2", 3, "replay"), ("3", 3, "refuse"),
    ("7", 3, "refuse"), ("1", 1, "refuse"), (None, 1, "replay"), ("garbage", 3, "replay"),
    ("-4", 3, "replay"),
])
def test_loop_guard(count: str | None, max_replays: int, decision: str) -> None:
    headers = letter(headers=[] if count is None else [(REPLAY_HEADER, count.encode())])
    assert decide(headers, max_replays) == decision
    request = ReplayRequest(topic="v", max_replays=max_replays)
    assert request.judge(headers) == decision
    assert replay_count(headers) >= 0


def test_the_loop_guard_stops_a_record_after_max_replays() -> None:
    headers, replays = letter(), 0
    while decide(headers, 3) == "replay":
        replays += 1
        headers = letter(headers=replay_headers(headers, position=f"d:0:{replays}", now_ms=0))
        assert replays <= 3
    assert replays == 3
    assert replay_count(headers) == 3


# --- the command line: argument errors are one line and exit 2 ----------------------------------


@pytest.fixture
def no_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("TIDEGATE_", "KAFKA_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TIDEGATE_DATA_DIR", str(tmp_path / "data"))


@pytest.mark.usefixtures("no_cluster")
@pytest.mark.parametrize(("argv", "says"), [
    (["validation", "--where", "amount"], "--where"),
    (["validation", "--since", "yesterday"], "--since"),
    (["validation", "--since", "2024-01-02", "--until", "2024-01-01"], "--since"),
    (["validation", "--max-replays", "0"], "--max-replays"),
    (["validation", "--rate", "-1"], "--rate"),
    (["validation", "--max", "0"], "--max"),
    (["monitoring"], "no dead-letter topic"),
    ([], "TOPIC"),
])
def test_replay_argument_errors_exit_2_with_one_line(
        argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dlq", "replay", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert says in err


@pytest.mark.usefixtures("no_cluster")
def test_max_replays_reads_its_environment_variable(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TIDEGATE_MAX_REPLAYS", "many")
    assert main(["dlq", "replay", "validation"]) == 2
    assert "TIDEGATE_MAX_REPLAYS" in capsys.readouterr().err
    monkeypatch.setenv("TIDEGATE_MAX_REPLAYS", "5")
    assert main(["dlq", "replay", "validation", "--dry-run"]) == 1  # valid; no cluster to read
    assert "no Kafka cluster" in capsys.readouterr().err
