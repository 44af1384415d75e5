"""The changelog-backed state store, without a broker: staging, eviction, revocation."""

from __future__ import annotations

import json

import pytest

from tidegate.runtime.state import ChangelogStore

pytestmark = pytest.mark.unit


def store(max_keys: int = 10) -> ChangelogStore:
    changelog = ChangelogStore({"bootstrap.servers": "127.0.0.1:9"}, topic="t.feature.accounts",
                               max_keys=max_keys)
    changelog.partitions = {0, 1}  # as if restored
    return changelog


def test_a_write_is_a_changelog_record_of_the_same_partition() -> None:
    changelog = store()
    write = changelog.put(1, "acct-1", {"n": 3})
    assert write is not None
    topic, key, value, partition = write
    assert (topic, key, partition) == ("t.feature.accounts", b"acct-1", 1)
    assert json.loads(value) == {"n": 3}


def test_writes_count_once_their_batch_is_delivered() -> None:
    changelog = store()
    changelog.put(0, "a", {"n": 1})
    assert changelog.get(0, "a") == {"n": 1}, "the running call sees its own write"
    changelog.drop()  # the call failed: the per-message retry starts from the stored state
    assert changelog.get(0, "a") is None
    changelog.put(0, "a", {"n": 1})
    changelog.keep()
    changelog.put(0, "b", {"n": 5})
    changelog.drop()
    assert len(changelog) == 0, "nothing is stored before delivery"
    changelog.commit()
    assert changelog.get(0, "a") == {"n": 1} and changelog.get(0, "b") is None
    assert len(changelog) == 1


def test_the_least_recently_used_keys_go_first() -> None:
    changelog = store(max_keys=2)
    for key in ("a", "b"):
        changelog.put(0, key, {"k": key})
    changelog.commit()
    assert changelog.get(0, "a") == {"k": "a"}  # "a" used: "b" is now the oldest
    changelog.put(0, "c", {"k": "c"})
    changelog.commit()
    assert changelog.get(0, "b") is None
    assert changelog.get(0, "a") == {"k": "a"} and changelog.get(0, "c") == {"k": "c"}


def test_a_revoked_partition_forgets_its_state_and_late_writes() -> None:
    changelog = store()
    changelog.put(0, "a", {"n": 1})
    changelog.put(1, "b", {"n": 2})
    changelog.commit()
    changelog.put(1, "c", {"n": 3})
    changelog.keep()
    changelog.forget([1])
    changelog.commit()  # the batch that was in flight when partition 1 moved away
    assert changelog.get(1, "b") is None and changelog.get(1, "c") is None
    assert changelog.get(0, "a") == {"n": 1}
    assert changelog.partitions == {0}


def test_deferred_writes_are_each_changed_keys_latest_value_once() -> None:
    changelog = ChangelogStore({"bootstrap.servers": "127.0.0.1:9"}, topic="t.feature.accounts",
                               max_keys=1, defer=True)
    changelog.partitions = {0, 1}
    assert changelog.put(0, "a", {"n": 1}) is None, "no write with the batch's outputs"
    changelog.keep()
    changelog.commit()
    changelog.put(0, "a", {"n": 2})
    changelog.put(1, "b", {"n": 7})  # evicts "a" from memory (max_keys=1) ...
    changelog.keep()
    changelog.commit()
    changelog.put(0, "c", {"n": 9})
    changelog.drop()  # a failed call: never written
    writes = changelog.unwritten()
    # ... yet its latest value is still owed to the changelog
    assert [(w.topic, w.key, json.loads(w.value), w.partition) for w in writes] == [
        ("t.feature.accounts", b"a", {"n": 2}, 0), ("t.feature.accounts", b"b", {"n": 7}, 1)]
    assert changelog.unwritten() == [], "each write once"


def test_a_revoked_partitions_deferred_writes_are_dropped() -> None:
    changelog = ChangelogStore({"bootstrap.servers": "127.0.0.1:9"}, topic="t", defer=True)
    changelog.partitions = {0, 1}
    changelog.put(0, "a", {"n": 1})
    changelog.put(1, "b", {"n": 2})
    changelog.keep()
    changelog.commit()
    changelog.forget([1])  # the next owner repeats the batch from the state last written
    assert [w.key for w in changelog.unwritten()] == [b"a"]
