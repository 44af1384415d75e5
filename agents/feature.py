"""feature: vectorised features plus per-account state in a Faust table with a changelog."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import faust

from tidegate.batches import ages_ms, pack
from tidegate.features import AccountState, compute_features
from tidegate.settings import Settings
from tidegate.stage import Outgoing, StageRuntime

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
    sink_name = runtime.name(runtime.topics.sink)
    accounts = runtime.app.Table(
        "accounts", default=None,
        schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json"),
        partitions=runtime.topics.source.partitions, use_partitioner=True,
        help="per-account rolling state",
    )

    async def featurize_events(events: Sequence[Any]) -> list[Outgoing]:
        envelopes, dead = runtime.unpack_batches(events)
        records = [json.loads(env["fields"]) for _, env in envelopes]
        degraded = steering.mode.degraded_to == "imputed"
        states: dict[str, AccountState | None] = {}
        if not degraded:  # degraded: no state store calls at all, imputed values instead
            for record in records:
                account = record["account_id"]
                if account not in states:
                    states[account] = _stored(accounts, account)
        features, updated = compute_features(records, states, now_ms=int(time.time() * 1000))
        if degraded:
            features.quality[:] = [f"{q},degraded" if q != "ok" else "degraded"
                                   for q in features.quality]
        else:
            for account, state in updated.items():
                accounts[account] = state
        matrix = features.matrix.astype("<f8", copy=False)
        for index, ((_, envelope), quality) in enumerate(zip(envelopes, features.quality,
                                                             strict=True)):
            envelope["feature_vector"] = matrix[index].tobytes()
            envelope["feature_quality"] = quality
        runtime.metrics.record_batch(records_in=len(envelopes), records_out=len(envelopes),
                                     latencies_ms=ages_ms(env for _, env in envelopes))
        runtime.metrics.extra["accounts"] = str(len(accounts))
        out = [Outgoing(topic=sink_name, partition=partition, value=value)
               for partition, value in pack(runtime.codec, envelopes, stage=STAGE)]
        return out + runtime.dead_letters(dead)

    runtime.run_batches(featurize_events, name="featurize_events")
    return runtime


def _stored(table: Any, account: str) -> AccountState | None:
    """The stored state, or None when it is missing or unreadable (features impute then)."""
    try:
        value = table.get(account)
    except Exception:  # noqa: BLE001 -- a state store failure degrades to imputed features, never a crash
        return None
    return value if isinstance(value, dict) else None  # type: ignore[return-value]
