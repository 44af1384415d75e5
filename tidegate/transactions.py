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
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from tidegate.delivery import Message
from tidegate.settings import ClientConfig

__all__ = ["TransactionError", "TransactionalOutbox"]

log = logging.getLogger("tidegate.transactions")

_ATTEMPTS = 4


class TransactionError(Exception):
    """A transaction could not be committed within the deadline, or the producer was fenced."""


class TransactionalOutbox:
    """A transactional librdkafka producer; one transaction per input batch."""

    def __init__(self, config: ClientConfig, *, transactional_id: str,
                 transaction_timeout: float = 10.0, deadline: float = 60.0) -> None:
        self._producer = Producer({
            "acks": "all", "enable.idempotence": True, "linger.ms": 2,
            "compression.type": "lz4", "log_level": 3,
            "queue.buffering.max.kbytes": 65536,  # librdkafka's default is 1 GiB
            **config,
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
        delay = 0.1
        for attempt in range(_ATTEMPTS):
            try:
                self._init()
                self._once(messages, offsets, group_metadata, deadline)
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.fatal() or not error.txn_requires_abort():
                    raise TransactionError(f"transaction failed: {error.str()}") from exc
                if attempt == _ATTEMPTS - 1 or time.monotonic() + delay > deadline:
                    raise TransactionError(f"transaction kept aborting: {error.str()}") from exc
                log.warning("transaction aborted (%s); producing the batch again", error.str())
                self._abort()
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

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
        while True:
            try:
                operation()
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if not error.retriable() or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _abort(self) -> None:
        try:
            self._producer.abort_transaction(self._timeout)
        except KafkaException as exc:  # the next begin_transaction reports what is wrong
            log.warning("abort failed: %s", exc)

    def close(self) -> None:
        self._producer.flush(1.0)
