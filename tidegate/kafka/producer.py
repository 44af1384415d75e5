"""Produce a batch of messages with librdkafka and await the broker's acknowledgement of all.

Stages produce through confluent-kafka rather than Faust's pure-Python producer: a message costs
a couple of microseconds instead of tens. One background thread serves delivery reports; a batch
completes (or fails with the first error) when every one of its messages is reported.

Example::

    outbox = Outbox(config)
    await outbox.send_all([("topic", key, value, partition, headers), ...])
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from tidegate.errors import DeliveryError
from tidegate.kafka.clients import PRODUCER_DEFAULTS
from tidegate.outputs import Message
from tidegate.settings import ClientConfig

__all__ = ["Outbox", "delivery_error"]

def delivery_error(error: KafkaError) -> DeliveryError:
    """The DeliveryError for librdkafka's ``error``, with its retriable and fatal flags."""
    return DeliveryError(error.str(), retriable=error.retriable(), fatal=error.fatal())


class _Batch:
    """Counts outstanding delivery reports of one batch; resolves its future once, on the loop."""

    __slots__ = ("error", "future", "loop", "pending")

    def __init__(self, loop: asyncio.AbstractEventLoop, pending: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.pending = pending
        self.error: KafkaError | None = None

    def on_delivery(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None and self.error is None:
            self.error = error
        self.pending -= 1
        if self.pending == 0:
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if self.future.done():
            return
        if self.error is not None:
            self.future.set_exception(delivery_error(self.error))
        else:
            self.future.set_result(None)


class Outbox:
    """A librdkafka producer (acks=all, idempotent) with asyncio-awaitable batches."""

    def __init__(self, config: ClientConfig) -> None:
        self._producer = Producer({**PRODUCER_DEFAULTS, **config})
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="delivery-reports", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.05)

    async def send_all(self, messages: Sequence[Message]) -> None:
        """Produce every message; return once the broker acknowledged all, else raise."""
        if not messages:
            return
        batch = _Batch(asyncio.get_running_loop(), len(messages))
        produce = self._producer.produce
        for topic, key, value, partition, headers in messages:
            while True:
                try:
                    if partition is None:
                        produce(topic, value, key, headers=headers, on_delivery=batch.on_delivery)
                    else:
                        produce(topic, value, key, partition, headers=headers,
                                on_delivery=batch.on_delivery)
                    break
                except BufferError:  # local queue full: wait for deliveries to drain it
                    await asyncio.sleep(0.01)
                except KafkaException as exc:
                    batch.pending -= 1
                    raise delivery_error(exc.args[0]) from exc
        await batch.future

    def close(self, timeout: float = 10.0) -> None:
        self._producer.flush(timeout)
        self._closed.set()
