"""The runtime every stage shares: micro-batches in, outputs delivered, then offsets acked.

A stage supplies one async handler, a one-way function from a batch of input events to its
``Outputs`` (next-stage batches, predictions, state writes, dead letters, counts). The runtime:

- takes micro-batches with a librdkafka ``BatchReader`` (default), or with Faust's
  ``take_events``, which acks a batch only when the loop asks for the next one;
- ends every batch in its checkpoint (``tidegate.runtime.checkpoint``): outputs delivered and
  acknowledged, then input offsets committed; in exactly-once mode both in one transaction;
- holds its input while the stage is paused: by a control command, by the dead-letter-rate
  breaker, or by backpressure from the next stage (see ``Steering``);
- never lets an exception reach Faust: a failing batch is retried message by message, and a
  message that still fails is dead-lettered with code INTERNAL_ERROR;
- emits a health event every ``health_interval`` seconds;
- opens one trace span per batch (``tidegate.runtime.tracing``), linked to its events.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import faust
from threadpoolctl import threadpool_limits

from tidegate.codec import Codec
from tidegate.control import StageMode
from tidegate.errors import BrokerError, CodecError
from tidegate.kafka.clients import BATCH_PRODUCER, client_config, hop_fetch
from tidegate.kafka.delayed import DelayedReader
from tidegate.kafka.producer import Outbox
from tidegate.kafka.reader import BatchReader, ReaderEvent, batch_messages, read_linger
from tidegate.kafka.scan import read_topic
from tidegate.kafka.transactions import TransactionalOutbox
from tidegate.models.faults import PartitionFreeze
from tidegate.outputs import Handler, Outgoing, Staged, messages
from tidegate.runtime.app import create_app, input_group
from tidegate.runtime.backpressure import LagProbe
from tidegate.runtime.checkpoint import AtLeastOnce, Checkpoint, Deferred, ExactlyOnce, deliver
from tidegate.runtime.handling import Handling
from tidegate.runtime.metrics import StageMetrics
from tidegate.runtime.steering import Received, Steering, refusal_audit
from tidegate.runtime.tracing import StageTracer
from tidegate.settings import Settings
from tidegate.topics import STAGES, TopicSpec, by_key, downstream_of

__all__ = ["StageRuntime", "tune_gc"]

log = logging.getLogger(__name__)

_HEALTH_TAIL = 500  # health records read back at start: minutes of every stage's reports
# How old a guard report may be and still reopen the guard: a wrong reopening costs one wait
# and a probe batch, a forgotten storm a batch of dead letters per restart.
_GUARD_MEMORY_MS = 600_000


def tune_gc(threshold: int) -> None:
    """Collect cycles every ``threshold`` allocations instead of every 700, and leave the
    objects that exist now (the models, rules, schemas a stage built) out of every collection.

    A stage allocates and frees several containers per event; nearly all of them die by
    reference counting, yet at Python's default each 700 allocations run a collection, and
    every tenth of those walks the older generations too (on the ingest handler: 18.6 against
    15.7 µs of CPU per event, with the collector on at 50,000). ``threshold`` 0 changes nothing.
    """
    if threshold > 0:
        gc.collect()
        gc.freeze()
        gc.set_threshold(threshold, 20, 100)


class StageRuntime:
    """One stage's Faust app, its topics, its metrics and the batch loop around its handler."""

    def __init__(self, stage: str, settings: Settings) -> None:
        self.stage = stage
        self.settings = settings
        self.topics = STAGES[stage]
        # Native thread pools (OpenMP in scikit-learn's models, BLAS under numpy) at one thread:
        # a stage scales by processes, and on shared cores idle pool threads spin (a 512-row
        # predict costs 4.7 ms of CPU with two OpenMP threads, 3.0 ms with one). The variables
        # reach libraries loaded later (OpenMP arrives with the first unpickled model), the
        # limits those already loaded.
        for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[variable] = str(settings.compute_threads)
        threadpool_limits(limits=settings.compute_threads)
        self.app = create_app(stage, settings, partitions=self.topics.source.partitions)
        self.codec = Codec(registry_url=settings.schema_registry_url)
        self.metrics = StageMetrics(stage=stage)
        self.source = self.topic(self.topics.source)
        self._health_encode = self.codec.encoder("tidegate.HealthEvent",
                                                 topic=self.name(by_key("health")))
        self._positions: dict[tuple[str, int], int] = {}
        self._outbox: Outbox | None = None
        self._reader: BatchReader | None = None
        self._handling: Handling | None = None
        self._tracer: StageTracer | None = None
        self.app.timer(settings.health_interval)(self._emit_health)
        self.steering: Steering | None = None
        self._audits: list[dict[str, Any]] = []  # refused commands, sent with the next health

    def follow_control(self) -> Steering:
        """Obey the control topic: recover the stage's mode now, then follow new commands.

        Also watches the lag of the next stage for backpressure. The steering itself is pure
        state; reading the control topic and probing the lag happen here.
        """
        self.steering = Steering.from_settings(self.stage, self.settings,
                                               on_change=self._report_steering)
        control = self.name(by_key("control"))
        try:
            self._apply_commands([ReaderEvent(m) for m in
                                  read_topic(client_config(self.settings), control)])
        except BrokerError as exc:
            log.warning("could not read %s to recover the mode: %s", control, exc)
        self._recover_guard(self.steering)

        async def follow_control(stream: Any) -> None:
            async for events in stream.take_events(100, within=0.2):
                self._apply_commands(events)

        self.app.agent(self.topic(by_key("control")), name="follow_control")(follow_control)
        self._watch_downstream(self.steering)
        return self.steering

    def _recover_guard(self, steering: Steering) -> None:
        """Start with the dead-letter guard open if the previous process left it so: the tail of
        the health topic holds its last reports (after the control commands, so a later resume
        wins)."""
        health = self.name(by_key("health"))
        try:
            events = [self.codec.decode(m.value() or b"") for m in read_topic(
                client_config(self.settings), health, tail=_HEALTH_TAIL)
                if m.key() == self.stage.encode()]
        except (BrokerError, CodecError) as exc:
            log.warning("could not read %s to recover the dead-letter guard: %s", health, exc)
            return
        steering.recover_guard(events, now_ms=int(time.time() * 1000), max_age_ms=_GUARD_MEMORY_MS)

    def _apply_commands(self, events: Sequence[Any]) -> None:
        """Decode, check and apply control commands (Faust events or reader records); audit
        each one the steering refuses."""
        assert self.steering is not None
        received = []
        for event in events:
            message = event.message
            try:
                record = self.codec.decode(message.value or b"")
            except CodecError as exc:
                log.warning("unreadable control command: %s", exc)
                continue
            stamp = message.timestamp
            received.append(Received(record, offset=message.offset,
                                     logged_ms=round(stamp * 1000) if stamp else None))
        refused = self.steering.receive(received)
        for item, rejection in refused:
            cmd = item.record
            log.error("refused control command %s (%s %s by %s): %s, %s", cmd.get("id"),
                      cmd.get("action"), cmd.get("target"), cmd.get("issuer"),
                      rejection.reason, rejection.detail)
            self._audits.append(refusal_audit(self.stage, item, rejection))
        if refused:
            self.metrics.extra["control_refused"] = str(sum(self.steering.gate.rejected.values()))
            self.emit_health_soon()  # sends the audit records too

    def _watch_downstream(self, steering: Steering) -> None:
        """Every second, the lag of the stage that reads this one's output (if one of ours)."""
        following, sink = downstream_of(self.stage), self.topics.sink
        if following is None or sink is None:
            return
        probe = LagProbe(client_config(self.settings), topic=self.name(sink),
                         group=input_group(following, self.settings))

        async def check_downstream() -> None:
            lag = await asyncio.get_running_loop().run_in_executor(None, probe.lag)
            if lag is not None:
                self.metrics.extra["downstream_lag"] = str(lag)
                steering.downstream_lag(lag)

        self.app.timer(1.0)(check_downstream)

    def _report_steering(self) -> None:
        assert self.steering is not None
        report = self.steering.report()
        self.metrics.mode, self.metrics.paused = report.mode, report.paused
        self.metrics.pause_reason = report.pause_reason
        self.metrics.breakers["dead-letters"] = report.guard
        self.emit_health_soon()

    @property
    def mode(self) -> StageMode:
        return self.steering.mode if self.steering else StageMode(stage=self.stage)

    def name(self, spec: TopicSpec) -> str:
        return spec.name(self.settings.topic_prefix)

    def topic(self, spec: TopicSpec) -> faust.TopicT:
        return self.app.topic(self.name(spec), key_serializer="raw", value_serializer="raw",
                              partitions=spec.partitions, internal=False)

    def _handle_with(self, state: Sequence[Staged], *, topic: str, group: str) -> None:
        dead_letter = self.topics.dead_letter
        self._handling = Handling(
            stage=self.stage, dead_letter_topic=self.name(dead_letter) if dead_letter else None,
            codec=self.codec, metrics=self.metrics, internal=self.topics.source.internal,
            staged=state)
        self._tracer = StageTracer(self.stage, topic=topic, group=group)

    def run_batches(self, handler: Handler, *, name: str, source: faust.TopicT | None = None,
                    state: Sequence[Staged] = ()) -> None:
        """Register ``handler`` as a Faust agent over micro-batches of ``source`` (default: input).

        Faust acks a batch only when the loop asks for the next one, i.e. after its outputs
        were delivered and acknowledged.
        """
        source = source or self.source
        self._handle_with(state, topic=source.get_topic_name(), group=self.app.conf.id)
        checkpoint = AtLeastOnce(self._send, None, deadline=self.settings.delivery_deadline)

        async def agent(stream: Any) -> None:
            size, within = self.settings.batch_size, self.settings.batch_within
            async for events in stream.take_events(size, within=within):
                if self.steering:  # paused: hold the batch unacked; buffers are bounded
                    await self.steering.wait_while_paused()
                await self._process(handler, events, checkpoint)
                for event in events:
                    message = event.message
                    self._positions[(message.topic, message.partition)] = message.offset

        agent.__name__ = name
        self.app.agent(source, name=name)(agent)

    def consume(self, handler: Handler, *, name: str, state: Sequence[Staged] = (),
                on_assign: Callable[[list[int]], None] | None = None,
                on_revoke: Callable[[list[int]], None] | None = None,
                deferred: Deferred | None = None) -> None:
        """Run ``handler`` over the stage's input with the configured reader.

        ``state`` is what the handler stages until its batch is delivered (see ``Staged``);
        ``on_assign`` and ``on_revoke`` hear the input partitions the reader gains and loses;
        ``deferred`` is state whose writes the checkpoint makes before committing (at least
        once, librdkafka reader only).
        """
        if self.settings.reader == "librdkafka":
            self.read_batches(handler, name=name, state=state, on_assign=on_assign,
                              on_revoke=on_revoke, deferred=deferred)
        else:
            self.run_batches(handler, name=name, state=state)

    def read_batches(self, handler: Handler, *, name: str, state: Sequence[Staged] = (),
                     on_assign: Callable[[list[int]], None] | None = None,
                     on_revoke: Callable[[list[int]], None] | None = None,
                     deferred: Deferred | None = None) -> None:
        """Run ``handler`` over micro-batches of the input read by librdkafka (``BatchReader``).

        Faust hands an agent one message at a time; this takes a whole batch in one call. The
        checkpoint ends each batch: at least once, offsets are committed after delivery (after
        the ``deferred`` state's writes, once per commit interval); exactly once, outputs and
        offsets commit in one transaction (``tidegate.runtime.checkpoint``).
        """
        group = input_group(self.stage, self.settings)
        self._handle_with(state, topic=self.source.get_topic_name(), group=group)
        at_least_once: AtLeastOnce | None = None

        def revoked(partitions: list[int]) -> None:
            if at_least_once is not None:
                at_least_once.forget(partitions)
            if on_revoke is not None:
                on_revoke(partitions)

        reader = BatchReader(client_config(self.settings,
                                           **hop_fetch(self.topics.source.internal)),
                             topic=self.source.get_topic_name(), group=group,
                             on_assign=on_assign, on_revoke=revoked,
                             hold=PartitionFreeze.from_settings(self.settings, self.stage),
                             commit_interval=self.settings.commit_interval)
        self._reader = reader
        at_least_once = AtLeastOnce(self._send, reader, deadline=self.settings.delivery_deadline,
                                    deferred=deferred,  # the store defers at least once only
                                    interval=self.settings.commit_interval)
        checkpoint: Checkpoint = at_least_once
        if self.settings.exactly_once:
            checkpoint = ExactlyOnce(TransactionalOutbox(
                client_config(self.settings), transactional_id=f"{group}-{self.settings.worker}",
                transaction_timeout=self.settings.transaction_timeout,
                deadline=self.settings.delivery_deadline), reader)

        size = batch_messages(self.settings, self.topics.source)
        within, linger = self.settings.batch_within, read_linger(self.settings, self.topics.source)
        retries = self._retry_reader(group)
        retried: Checkpoint | None = None
        if retries is not None:
            retried = (ExactlyOnce(checkpoint.outbox, retries)
                       if isinstance(checkpoint, ExactlyOnce) else
                       AtLeastOnce(self._send, retries, deadline=self.settings.delivery_deadline))

        async def read() -> None:
            try:
                while not self.app.should_stop:
                    blocked = self.steering is not None and self.steering.blocked()
                    for consumer in (reader, retries):
                        if consumer is None:
                            continue
                        if blocked:
                            consumer.pause()  # keeps polling, so the group keeps the member
                        else:
                            consumer.resume()
                    events = await reader.next_batch(size, within, linger)
                    if events:
                        await self._process(handler, events, checkpoint)
                    else:
                        await checkpoint.settle()  # idle: deferred state is written all the same
                    if retries is not None and retried is not None:
                        # never waits: a record not due yet waits in Kafka, not in this loop
                        due = await retries.next_due(size)
                        if due:
                            await self._process(handler, due, retried)
            finally:
                try:
                    await checkpoint.settle(now=True)
                except Exception:  # stopping all the same: the next owner repeats those batches
                    log.exception("could not write the deferred state before stopping")
                reader.close()
                if retries is not None:
                    retries.close()

        read.__name__ = name
        self.app.task(read)

    def _retry_reader(self, group: str) -> DelayedReader | None:
        """A reader of the stage's retry topics, if it has any. They are read even with
        ``TIDEGATE_RETRY_DELAYS`` empty, so records left there by an earlier setting still end
        somewhere."""
        if not self.topics.retry:
            return None
        return DelayedReader(client_config(self.settings, **hop_fetch(internal=True)),
                             topics=[self.name(spec) for spec in self.topics.retry],
                             group=f"{group.removesuffix('-input')}-retry",
                             commit_interval=self.settings.commit_interval)

    async def _process(self, handler: Handler, events: Sequence[Any],
                       checkpoint: Checkpoint) -> None:
        assert self._tracer is not None, "consume() or run_batches() sets up the tracer"
        totals = self.metrics.totals
        records, out, dead = totals["in"], totals["out"], totals["dead_lettered"]
        with self._tracer.batch(messages=len(events)) as traced:
            began = time.perf_counter()
            outgoing = await self._handle(handler, events)
            handled = time.perf_counter()
            await checkpoint.commit(outgoing, events)
            assert self._handling is not None
            for staged in self._handling.staged:
                staged.commit()
            await checkpoint.settle()
            self.metrics.record_timing(len(events), handled - began,
                                       time.perf_counter() - handled)
            traced.finish(records_in=totals["in"] - records, records_out=totals["out"] - out,
                         dead_lettered=totals["dead_lettered"] - dead)
        if self.steering is not None:
            self.steering.record_batch(records=totals["in"] - records,
                                       dead=totals["dead_lettered"] - dead)

    async def _handle(self, handler: Handler, events: Sequence[Any]) -> list[Outgoing]:
        assert self._handling is not None, "consume() or run_batches() sets up the handling"
        return await self._handling.run(handler, events)

    async def deliver(self, outgoing: Sequence[Outgoing]) -> None:
        """Produce every message and wait for the broker's acks; retry, or exit for a restart."""
        await deliver(self._send, outgoing, deadline=self.settings.delivery_deadline)

    @property
    def outbox(self) -> Outbox:
        """The stage's librdkafka producer, created on first use; a stage whose sink is
        internal writes whole batches (``BATCH_PRODUCER``)."""
        if self._outbox is None:
            sink = self.topics.sink
            batches = sink is not None and sink.internal
            self._outbox = Outbox(client_config(self.settings,
                                                **(BATCH_PRODUCER if batches else {})))
        return self._outbox

    async def _send(self, outgoing: Sequence[Outgoing]) -> None:
        await self._send_all(outgoing)  # looked up per call: tests replace _send_all

    async def _send_all(self, outgoing: Sequence[Outgoing]) -> None:
        """The producer call behind every delivery."""
        await self.outbox.send_all(messages(outgoing))

    def lag(self) -> int:
        """Records waiting on the assigned input partitions (high watermark minus position)."""
        if self._reader is not None:
            return self._reader.lag()
        consumer = self.app.consumer
        total = 0
        for tp in consumer.assignment():
            if tp.topic != self.source.get_topic_name():
                continue
            high: int | None = consumer.highwater(tp)  # None until the first fetch answers
            if high is None:
                continue
            done = self._positions.get((tp.topic, tp.partition))
            total += max(0, high - (done + 1 if done is not None else 0))
        return total

    def emit_health_soon(self) -> None:
        """Send a health event now (a breaker moved), not at the next interval."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.create_task(self._emit_health())  # noqa: RUF006 -- fire and forget; it logs errors

    async def _emit_health(self) -> None:
        audits, self._audits = self._audits, []
        try:
            event = self.metrics.snapshot(lag=self.lag())
            await self.deliver([Outgoing(topic=self.name(by_key("health")),
                                         key=self.stage.encode(),
                                         value=self._health_encode(event)),
                                *(Outgoing(topic=self.name(by_key("audit")), key=b"control",
                                           value=json.dumps(audit).encode())
                                  for audit in audits)])
        except Exception:
            self._audits[:0] = audits  # kept for the next try
            log.exception("could not emit a health event")
