"""Exactly-once hand-off: a batch's outputs and its input offsets commit in one Kafka transaction.

In exactly-once mode a stage produces everything a batch yields (next-stage batches, dead
letters, predictions, state changelog writes) inside a transaction that also carries the input
offsets for its consumer group (``send_offsets_to_transaction``). Readers use
``isolation.level=read_committed`` (librdkafka's default), so a batch is visible downstream
entirely or not at all, and a crash between produce and commit leaves nothing behind but an
aborted transaction: the restarted stage reads the same input again and nobody saw the first try.

The transactional id is stable per stage worker (``<group>-<worker>``): the replacement of a
killed worker calls ``init_transactions`` with the same id, which fences the old incarnation and
aborts its open transaction at once, instead of leaving downstream readers waiting for the
transaction timeout.

Example::

    outbox = TransactionalOutbox(config, transactional_id="tidegate.feature-0")
    await outbox.commit(messages, offsets=reader.next_offsets(batch),
                        group_metadata=reader.group_metadata())
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from tidegate.kafka.clients import PRODUCER_DEFAULTS
from tidegate.outputs import Message
from tidegate.retry import (
    RetryState,
    retry_sync,
    stop_after_attempt,
    stop_after_delay,
    stop_before_delay,
    wait_exponential,
    wait_fixed,
)
from tidegate.settings import ClientConfig

__all__ = ["TransactionError", "TransactionalOutbox"]

log = logging.getLogger(__name__)

_ATTEMPTS = 4


class TransactionError(Exception):
    """A transaction could not be committed within the deadline, or the producer was fenced."""


class TransactionalOutbox:
    """A transactional librdkafka producer; one transaction per input batch."""

    def __init__(self, config: ClientConfig, *, transactional_id: str,
                 transaction_timeout: float = 10.0, deadline: float = 60.0) -> None:
        self._producer = Producer({
            **PRODUCER_DEFAULTS, **config,
            "transactional.id": transactional_id,
            "transaction.timeout.ms": int(transaction_timeout * 1000),
        })
        self.transactional_id = transactional_id
        self._deadline = deadline
        self._timeout = max(5.0, transaction_timeout)
        self._ready = False

    def _init(self) -> None:
        if not self._ready:  # fences an earlier incarnation and aborts its open transaction
            self._producer.init_transactions(self._deadline)
            self._ready = True

    async def commit(self, messages: Sequence[Message], *, offsets: Sequence[TopicPartition],
                     group_metadata: Any) -> None:
        """Produce ``messages`` and commit them with ``offsets`` atomically, or raise.

        An abortable failure (a broker restart mid-transaction) is retried a few times; a
        fenced producer, a lost group generation or a fatal error raises at once: the stage
        then exits and its replacement reads the uncommitted input again.
        """
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._commit, messages, list(offsets), group_metadata)

    def _commit(self, messages: Sequence[Message], offsets: list[TopicPartition],
                group_metadata: Any) -> None:
        deadline = time.monotonic() + self._deadline

        def attempt() -> None:
            self._init()
            self._once(messages, offsets, group_metadata, deadline)

        try:
            retry_sync(attempt, stop=stop_after_attempt(_ATTEMPTS) | stop_before_delay(
                self._deadline), wait=wait_exponential(0.1, 5.0), retry_on=_abortable,
                on_retry=self._aborted)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if not _abortable(exc):
                raise TransactionError(f"transaction failed: {error.str()}") from exc
            raise TransactionError(f"transaction kept aborting: {error.str()}") from exc

    def _aborted(self, state: RetryState) -> None:
        """Before the next attempt: abort the transaction the broker gave up on."""
        error: KafkaError = cast(KafkaException, state.error).args[0]
        log.warning("transaction aborted (%s); producing the batch again", error.str())
        self._abort()

    def _once(self, messages: Sequence[Message], offsets: list[TopicPartition],
              group_metadata: Any, deadline: float) -> None:
        producer = self._producer
        producer.begin_transaction()
        for topic, key, value, partition, headers in messages:
            while True:
                try:
                    if partition is None:
                        producer.produce(topic, value, key, headers=headers)
                    else:
                        producer.produce(topic, value, key, partition, headers=headers)
                    break
                except BufferError:  # local queue full: serve deliveries, then try again
                    producer.poll(0.05)
        if offsets:
            self._retrying(lambda: producer.send_offsets_to_transaction(
                offsets, group_metadata, self._timeout), deadline)
        self._retrying(lambda: producer.commit_transaction(self._timeout), deadline)

    def _retrying(self, operation: Callable[[], object], deadline: float) -> None:
        """Repeat an operation the broker refused for a retriable reason, inside the deadline."""
        retry_sync(operation, stop=stop_after_delay(deadline - time.monotonic()),
                   wait=wait_fixed(0.1), retry_on=_retriable)

    def _abort(self) -> None:
        try:
            self._producer.abort_transaction(self._timeout)
        except KafkaException as exc:  # the next begin_transaction reports what is wrong
            log.warning("abort failed: %s", exc)

    def close(self) -> None:
        self._producer.flush(1.0)


def _abortable(exc: BaseException) -> bool:
    """An abortable transaction failure: abort, then produce the batch again."""
    if not isinstance(exc, KafkaException):
        return False
    error: KafkaError = exc.args[0]
    return not error.fatal() and bool(error.txn_requires_abort())


def _retriable(exc: BaseException) -> bool:
    """A call the broker refused for now: the same call may succeed in a moment."""
    return isinstance(exc, KafkaException) and bool(exc.args[0].retriable())
