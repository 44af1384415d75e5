"""The example's stream of Kafka messages: generated events, some of them made bad on purpose.

Used by ``tidegate produce``, the integration tests and the benchmark alike, so all three send
the same thing.

Example::

    for message in example_messages(1000, bad_rate=0.05):
        producer.produce(topic, key=message.key, value=message.value)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from tidegate.codec import Codec
from tidegate.example.badrecords import ALL_KINDS, BadKind, BadRecordInjector
from tidegate.example.generator import TransactionGenerator

__all__ = ["ExampleMessage", "example_messages"]

_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class ExampleMessage:
    """One message for the input topic, with what the pipeline must make of it."""

    key: bytes | None
    value: bytes
    event_id: str | None
    expected: BadKind | None
    label: bool


def example_messages(
    count: int, *, seed: int = 0, bad_rate: float = 0.0, drift: float = 0.0,
    json_share: float = 0.2, events_per_second: float = 1000.0, accounts: int = 2000,
    codec: Codec | None = None, kinds: Sequence[BadKind] = ALL_KINDS,
) -> Iterator[ExampleMessage]:
    """``count`` messages keyed by account id; a share ``bad_rate`` of them bad (every kind).

    Event times start now and advance steadily at ``events_per_second``, so a sender pacing at
    that rate sends each event about when it happened (no daily cycle: at night it would put
    the events of a minute's sending up to eight minutes ahead, and ingest refuses an event
    over five minutes in the future)."""
    generator = TransactionGenerator(seed=seed, drift=drift, accounts=accounts,
                                     events_per_second=events_per_second, daily_cycle=False)
    injector = BadRecordInjector(seed=seed, rate=bad_rate, kinds=kinds,
                                 json_share=json_share)
    encode = (codec or Codec()).encoder("tidegate.example.CardTransaction")
    left = count
    while left > 0:
        for event, label in generator.generate(min(_CHUNK, left)):
            value, expected = injector.inject(event, encode)
            account = event.get("account_id")
            yield ExampleMessage(
                key=str(account).encode() if account else None, value=value,
                event_id=injector.last_event_id, expected=expected, label=label,
            )
        left -= _CHUNK
