"""The watchdog's stall rules on an injected clock (whole stages, single partitions), and the
one-shot partition freeze that rehearses them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidegate.cli.partitions import PartitionStall, PartitionStallDetector, stall_alert
from tidegate.cli.watchdog import StallDetector
from tidegate.codec import Codec
from tidegate.errors import ConfigError
from tidegate.models.faults import PartitionFreeze
from tidegate.runtime.backpressure import PartitionOffsets
from tidegate.settings import load_settings

pytestmark = pytest.mark.unit

TOPIC = "t.events"


def test_a_booting_stage_gets_the_start_grace_a_reporting_one_does_not() -> None:
    detector = StallDetector(stall_after=5.0, start_grace=60.0)
    detector.expect(["ingest", "feature"], now=0.0)
    assert detector.stalled(now=30.0) == []  # both still starting
    detector.on_health({"stage": "ingest", "lag": 0, "records_in": 0}, now=30.0)
    assert detector.stalled(now=34.0) == []
    assert detector.stalled(now=36.0) == ["ingest"]  # silent 6 s; feature still booting
    assert detector.stalled(now=61.0) == ["feature", "ingest"]
    detector.forget("ingest", now=61.0)  # restarted: booting again
    assert detector.stalled(now=100.0) == ["feature"]
    assert detector.silent_for("ingest", now=100.0) == pytest.approx(39.0)


def test_a_restarted_stage_boots_in_peace_from_its_draining_predecessor() -> None:
    detector = StallDetector(stall_after=5.0, start_grace=60.0)
    detector.expect(["ingest"], now=0.0)
    detector.on_health({"stage": "ingest", "instance": "host-1"}, now=1.0)
    detector.forget("ingest", now=2.0)  # SIGTERM: host-1 still reports while it stops
    detector.on_health({"stage": "ingest", "instance": "host-1"}, now=3.0)
    assert detector.stalled(now=30.0) == []  # host-2 still booting: the start grace holds
    detector.on_health({"stage": "ingest", "instance": "host-2"}, now=31.0)
    assert detector.stalled(now=37.0) == ["ingest"]


def test_a_stage_with_input_and_no_progress_is_stalled_unless_paused() -> None:
    detector = StallDetector(stall_after=5.0)
    detector.expect(["feature"], now=0.0)
    for second in range(1, 8):
        detector.on_health({"stage": "feature", "lag": 9, "records_in": 0,
                            "paused": second < 3}, now=float(second))
    assert detector.stalled(now=6.5) == []  # no progress since 2, for 4.5 s: not yet
    assert detector.stalled(now=7.5) == ["feature"]


def _health(instance: str = "host-1", *, paused: bool = False) -> dict[str, object]:
    return {"stage": "ingest", "instance": instance, "paused": paused}


def _running(stall_after: float = 10.0) -> PartitionStallDetector:
    detector = PartitionStallDetector(stall_after=stall_after)
    detector.expect(["ingest"])
    detector.on_health(_health(), now=0.0)
    return detector


def _offsets(*pairs: tuple[int, int]) -> dict[int, PartitionOffsets]:
    return {p: PartitionOffsets(committed=c, end=e) for p, (c, e) in enumerate(pairs)}


def test_a_partition_unmoved_with_lag_is_stalled_while_the_others_move() -> None:
    detector = _running()
    for second in range(0, 12):
        # partition 0 moves every probe; partition 1 stays at 5 with 10 records waiting
        detector.observe("ingest", TOPIC, _offsets((second * 10, 200), (5, 15)),
                         now=float(second))
    assert detector.stalled(now=10.0) == []  # not longer than stall_after yet
    stalled = detector.stalled(now=11.5)
    assert [(s.stage, s.topic, s.partition) for s in stalled] == [("ingest", TOPIC, 1)]
    assert stalled[0].committed == 5 and stalled[0].lag == 10
    assert stalled[0].seconds == pytest.approx(11.5)


def test_a_partition_without_lag_or_that_moves_is_not_stalled() -> None:
    detector = _running()
    detector.observe("ingest", TOPIC, _offsets((7, 7), (3, 9)), now=0.0)
    detector.observe("ingest", TOPIC, _offsets((7, 7), (4, 9)), now=9.0)  # moved at 9
    assert detector.stalled(now=15.0) == []
    assert [s.partition for s in detector.stalled(now=19.5)] == [1]


def test_the_clock_starts_at_the_first_sample_with_lag() -> None:
    detector = _running()
    detector.observe("ingest", TOPIC, _offsets((4, 4)), now=0.0)  # caught up
    detector.observe("ingest", TOPIC, _offsets((4, 30)), now=5.0)  # records arrived since
    detector.observe("ingest", TOPIC, _offsets((4, 60)), now=10.0)
    assert detector.stalled(now=14.0) == []  # 9 s since lag was first seen
    assert len(detector.stalled(now=15.5)) == 1


def test_a_partition_the_group_never_committed_counts_from_its_first_sample() -> None:
    detector = _running()
    detector.observe("ingest", TOPIC, {3: PartitionOffsets(committed=-1, end=50)}, now=1.0)
    detector.observe("ingest", TOPIC, {3: PartitionOffsets(committed=-1, end=80)}, now=8.0)
    (stall,) = detector.stalled(now=11.5)
    assert (stall.partition, stall.committed, stall.lag) == (3, -1, 80)
    assert "stalled at its start (no commit)" in stall.describe()


def test_a_stage_is_not_watched_before_its_first_health_event() -> None:
    detector = PartitionStallDetector(stall_after=10.0)
    detector.expect(["ingest"])
    detector.observe("ingest", TOPIC, _offsets((0, 100)), now=0.0)
    assert detector.stalled(now=60.0) == []  # still starting: no partitions yet
    detector.on_health(_health(), now=60.0)
    detector.observe("ingest", TOPIC, _offsets((0, 100)), now=61.0)
    assert detector.stalled(now=70.0) == []
    assert len(detector.stalled(now=71.5)) == 1


def test_a_paused_stage_holds_its_partitions_on_purpose() -> None:
    detector = _running()
    detector.observe("ingest", TOPIC, _offsets((0, 100)), now=0.0)
    detector.on_health(_health(paused=True), now=5.0)  # backpressure, a command, the guard
    detector.observe("ingest", TOPIC, _offsets((0, 100)), now=30.0)
    assert detector.stalled(now=40.0) == []
    detector.on_health(_health(paused=False), now=40.0)
    detector.observe("ingest", TOPIC, _offsets((0, 100)), now=41.0)
    assert detector.stalled(now=50.0) == []  # the clock starts again at the resume
    assert len(detector.stalled(now=51.5)) == 1


def test_a_restarted_stage_gets_stall_after_from_its_new_instance_to_recover() -> None:
    detector = _running()
    detector.observe("ingest", TOPIC, _offsets((5, 15)), now=0.0)
    (stall,) = detector.stalled(now=11.0)
    assert detector.alert(stall) is True
    detector.forget("ingest")
    detector.on_health(_health("host-1"), now=12.0)  # the old process, draining: no news
    detector.observe("ingest", TOPIC, _offsets((5, 15)), now=13.0)
    assert detector.stalled(now=40.0) == []  # no new instance yet
    detector.on_health(_health("host-2"), now=40.0)
    detector.observe("ingest", TOPIC, _offsets((5, 15)), now=41.0)
    assert detector.stalled(now=50.0) == []
    (again,) = detector.stalled(now=51.5)  # the restart did not help: stalled again
    assert detector.alert(again) is False  # the same alert, still firing
    assert detector.recovered() == []


def test_a_stalled_partition_that_moves_again_is_recovered_once() -> None:
    detector = _running()
    detector.observe("ingest", TOPIC, _offsets((5, 15)), now=0.0)
    (stall,) = detector.stalled(now=11.0)
    detector.alert(stall)
    detector.forget("ingest")
    detector.on_health(_health("host-2"), now=14.0)
    detector.observe("ingest", TOPIC, _offsets((9, 15)), now=15.0)
    assert detector.recovered() == [stall]
    assert detector.recovered() == []
    detector.observe("ingest", TOPIC, _offsets((15, 15)), now=30.0)
    assert detector.stalled(now=60.0) == []


def test_a_new_worker_joining_starts_the_clock_again() -> None:
    detector = _running()
    detector.observe("ingest", TOPIC, _offsets((5, 15)), now=0.0)
    detector.on_health(_health("host-2"), now=8.0)  # a rebalance moves partitions
    detector.observe("ingest", TOPIC, _offsets((5, 15)), now=9.0)
    assert detector.stalled(now=15.0) == []
    detector.on_health(_health("host-1"), now=16.0)  # known workers: the clock runs on
    assert len(detector.stalled(now=19.5)) == 1


def test_the_alert_names_stage_topic_and_partition() -> None:
    stall = PartitionStall("feature", "t.validated", 4, 120, 180, 31.0)
    alert = stall_alert(stall, "firing", now=1000.0)
    assert alert.key == "feature/partition_stall/t.validated/4"
    assert (alert.stage, alert.kind, alert.severity, alert.time) == (
        "feature", "partition_stall", "critical", 1_000_000)
    assert "partition 4 of t.validated" in alert.message
    assert alert.details["lag"] == "60"
    encoded = Codec().encode("tidegate.Alert", alert.to_record())  # matches the schema
    assert Codec().decode(encoded)["details"]["partition"] == "4"
    assert stall_alert(stall, "resolved", now=1.0).status == "resolved"


def test_the_freeze_acts_once_per_data_dir(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDEGATE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TIDEGATE_FAULT_FREEZE_PARTITION", "ingest:2")
    settings = load_settings()
    assert PartitionFreeze.from_settings(settings, "feature") is None
    first = PartitionFreeze.from_settings(settings, "ingest")
    assert first is not None
    assert (first(1), first(2), first(2)) == (False, True, True)  # for its whole life
    assert (tmp_path / "faults" / "freeze-ingest-2").exists()
    replacement = PartitionFreeze.from_settings(settings, "ingest")  # the restarted process
    assert replacement is not None and replacement(2) is False


@pytest.mark.parametrize("value", ["ingest", "monitoring:0", "ingest:x", "nowhere:1"])
def test_a_bad_freeze_setting_is_refused(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDEGATE_FAULT_FREEZE_PARTITION", value)
    with pytest.raises(ConfigError, match="FAULT_FREEZE_PARTITION"):
        load_settings()
