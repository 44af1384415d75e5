"""feature: vectorised features plus per-account state kept in a changelog-backed store."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import faust

from tidegate.batches import Batch, unpack_messages
from tidegate.kafka.clients import client_config
from tidegate.outputs import Outgoing, Outputs, forward
from tidegate.pipeline.feature import AccountState, decode_state, encode_state, features_of_fields
from tidegate.runtime.stage import StageRuntime
from tidegate.runtime.state import ChangelogStore, StateWrite
from tidegate.settings import Settings
from tidegate.topics import ACCOUNTS

__all__ = ["STAGE", "build"]

STAGE = "feature"


def build(settings: Settings) -> StageRuntime:
    """The feature stage: ``validated`` in, ``features`` and ``dlq.feature`` out.

    The account table is partitioned like ``validated`` (ingest routes by Kafka's default
    partitioner on the account id, and the table's changelog uses the same partitioner), so a
    worker holds the state of exactly the accounts whose events it reads.
    """
    runtime = StageRuntime(STAGE, settings)
    steering = runtime.follow_control()
    assert runtime.topics.sink is not None
    sink = runtime.topics.sink
    sink_name = runtime.name(sink)
    accounts = _account_store(runtime)

    async def featurize_events(events: Sequence[Any]) -> Outputs:
        batches, dead = unpack_messages(runtime.codec, events, stage=STAGE)
        batch = Batch.concat(batches)
        fields = batch.by_field()
        degraded = steering.mode.degraded_to == "imputed"
        states: dict[str, AccountState | None] = {}
        partitions: dict[str, int] = {}
        if not degraded:  # degraded: no state store calls at all, imputed values instead
            owners = fields.get("account_id") or [None] * len(batch)
            for partition, account in zip(batch.partitions.tolist(), owners, strict=True):
                if account not in states:
                    partitions[account] = partition
                    states[account] = _stored(accounts, partition, account)
        features, updated = features_of_fields(fields, len(batch), states,
                                               now_ms=int(time.time() * 1000))
        writes: list[Outgoing] = []
        if degraded:
            features.quality[:] = [f"{q},degraded" if q != "ok" else "degraded"
                                   for q in features.quality]
        else:
            for account, state in updated.items():
                write = accounts.put(partitions[account], account, state)
                if write is not None:
                    topic, key, value, partition = write
                    writes.append(Outgoing(topic=topic, key=key, value=value, partition=partition))
        featured = batch.with_features(features.matrix, features.quality)
        runtime.metrics.extra["accounts"] = str(len(accounts))
        out = forward(runtime.codec, featured, topic=sink_name, stage=STAGE,
                      by_account=sink.by_account)
        return Outputs(out + writes, dead=dead, records_in=len(batch),
                       records_out=len(featured), latencies_ms=featured.ages_ms(),
                       traceparents=batch.traceparents)

    if isinstance(accounts, ChangelogStore):  # the changelog written before the offsets commit
        runtime.consume(featurize_events, name="featurize_events", state=[accounts],
                        on_assign=accounts.restore, on_revoke=accounts.forget,
                        deferred=accounts if accounts.defer else None)
    else:
        runtime.consume(featurize_events, name="featurize_events")
    return runtime


class AccountStore(Protocol):
    def __len__(self) -> int: ...

    def get(self, partition: int, key: str) -> Any: ...

    def put(self, partition: int, key: str, value: Any) -> StateWrite | None: ...


class _TableStore:
    """The Faust table, for the Faust reader: its changelog is written by Faust itself."""

    def __init__(self, table: Any) -> None:
        self._table = table

    def __len__(self) -> int:
        return len(self._table)

    def get(self, partition: int, key: str) -> Any:
        return self._table.get(key)

    def put(self, partition: int, key: str, value: Any) -> None:
        self._table[key] = value


def _account_store(runtime: StageRuntime) -> AccountStore:
    """Per-account state: a changelog store with the librdkafka reader, else a Faust table.

    The librdkafka reader's store writes its changelog before the input offsets are committed:
    at least once, each changed account's latest state once per commit interval (deferred); in
    exactly-once mode as outputs of the batch, inside its transaction.
    """
    settings = runtime.settings
    if settings.reader == "librdkafka":
        return ChangelogStore(client_config(settings), topic=runtime.name(ACCOUNTS),
                              max_keys=settings.feature_state_max_accounts,
                              encode=encode_state, decode=decode_state,
                              defer=not settings.exactly_once)
    return _TableStore(runtime.app.Table(
        "accounts", default=None,
        schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json"),
        partitions=runtime.topics.source.partitions, use_partitioner=True,
        help="per-account rolling state",
    ))


def _stored(store: AccountStore, partition: int, account: str) -> AccountState | None:
    """The stored state, or None when it is missing or unreadable (features impute then)."""
    try:
        value = store.get(partition, account)
    except Exception:  # noqa: BLE001 -- a state store failure degrades to imputed features, never a crash
        return None
    return value if isinstance(value, dict) else None  # type: ignore[return-value]
