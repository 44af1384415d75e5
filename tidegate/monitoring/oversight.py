"""What the monitoring stage does with what it reads: the analyst fed, alerts and commands sent.

Monitoring reads health events (its Faust agent), and with librdkafka batch readers of their
own the predictions and labels topics (for online accuracy, joined by event id: a prediction is
decoded only when its label arrives) and the control
topic (so an operator's command takes a condition out of monitoring's hands). Every health
interval ``assess`` asks the :class:`~tidegate.monitoring.analyst.Analyst` what changed,
publishes alert transitions to the alerts topic and issues its control commands, each with the
alert as its reason; a rollback goes through the model registry first
(``tidegate.models.lifecycle.rollback``), and the recent actions show the command that step
sent, with its id, not the analyst's draft.

Example::

    oversight = Oversight(runtime, board)
    oversight.on_health(record)
    await oversight.assess()
    oversight.snapshot()["crisis"]["system"]     # 'NORMAL'
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from tidegate.errors import CodecError, TidegateError
from tidegate.kafka.clients import BULK_FETCH, client_config
from tidegate.kafka.reader import BatchReader, ReaderEvent
from tidegate.models.lifecycle import issue_command, promote, rollback
from tidegate.models.registry import PRIMARY, ModelRegistry
from tidegate.monitoring.analyst import Analyst, AnalystConfig
from tidegate.monitoring.status import StatusBoard
from tidegate.outputs import Outgoing
from tidegate.pipeline.feature import DRIFT_EXEMPT
from tidegate.runtime.stage import StageRuntime
from tidegate.signing import CommandGate
from tidegate.topics import by_key

__all__ = ["LazyJoin", "Oversight"]

log = logging.getLogger(__name__)


OnMessage = Callable[[ReaderEvent], None]

# Nothing waits on monitoring's reading of the predictions topic (a label joins whenever it
# comes): it is read in bulk (``BULK_FETCH``), each read lingering 200 ms. The quiet topics
# (labels, control) keep the defaults: a command is heard at once.
BULK_LINGER = 0.2


class LazyJoin:
    """Predictions kept as bytes until their label arrives, then decoded for the label join.

    Decoding every prediction cost monitoring about 28 µs each, and most are never labelled.
    The key of a prediction is its event id. Both maps are bounded; a label that arrives before
    its prediction waits in the analyst's join, and its id here, until the prediction comes.
    """

    def __init__(self, analyst: Analyst, decode: Callable[[bytes], Mapping[str, Any]], *,
                 max_predictions: int = 100_000, max_early: int = 20_000) -> None:
        self.analyst, self.decode = analyst, decode
        self._raw: OrderedDict[bytes, bytes] = OrderedDict()
        self._early: OrderedDict[bytes, None] = OrderedDict()
        self._max_predictions, self._max_early = max_predictions, max_early

    def on_prediction(self, key: bytes, value: bytes) -> None:
        if key in self._early:  # its label came first
            del self._early[key]
            self.analyst.on_prediction(self.decode(value))
            return
        self._raw[key] = value
        if len(self._raw) > self._max_predictions:
            self._raw.popitem(last=False)

    def on_label(self, record: Mapping[str, Any]) -> None:
        key = str(record["event_id"]).encode()
        raw = self._raw.pop(key, None)
        if raw is not None:
            self.analyst.on_prediction(self.decode(raw))
        else:
            self._early[key] = None
            if len(self._early) > self._max_early:
                self._early.popitem(last=False)
        self.analyst.on_label(record)


class Oversight:
    """The monitoring stage's analyst, its extra inputs and its outputs."""

    def __init__(self, runtime: StageRuntime, board: StatusBoard) -> None:
        self.runtime, self.board = runtime, board
        settings = runtime.settings
        self.analyst = Analyst(AnalystConfig(min_labels=settings.accuracy_min_labels,
                                             drift_min_events=settings.drift_min_events))
        self.registry = ModelRegistry(settings.registry_dir)
        self.served: str | None = None
        self.unknown: str | None = None  # the version last looked up and not in the registry
        self._alerts_topic = runtime.name(by_key("alerts"))
        self._encode_alert = runtime.codec.encoder("tidegate.Alert", topic=self._alerts_topic)
        self.join = LazyJoin(self.analyst, runtime.codec.decode)
        # every command, whatever its target, checked as the stages check theirs: a refused
        # one neither takes a condition out of monitoring's hands nor shows among the actions
        self.gate = CommandGate(settings.control_keys, max_age=settings.control_max_age)
        self._follow("predictions", lambda m: self.join.on_prediction(m.key or b"",
                                                                      m.value or b""),
                     bulk=True)
        self._follow("labels", self._decoded(self.join.on_label))
        self._follow("control", self.on_control)
        self.reference(None)

    def _decoded(self, on_record: Callable[[Mapping[str, Any]], None]) -> OnMessage:
        return lambda message: on_record(self.runtime.codec.decode(message.value or b""))

    def on_control(self, message: ReaderEvent) -> None:
        """One control-topic record: the analyst hears it if the gate lets it pass."""
        record = self.runtime.codec.decode(message.value or b"")
        stamp = message.timestamp
        if self.gate.check(record, offset=message.offset,
                           logged_ms=round(stamp * 1000) if stamp else None) is None:
            self.analyst.on_command(record)

    def _follow(self, key: str, on_message: OnMessage, *, bulk: bool = False) -> None:
        """A task reading ``key``'s topic in batches with its own consumer group; a ``bulk``
        topic in fewer, larger ones (``BULK_FETCH``)."""
        runtime = self.runtime
        topic = runtime.name(by_key(key))
        reader = BatchReader(client_config(runtime.settings, **(BULK_FETCH if bulk else {})),
                             topic=topic, group=f"{runtime.app.conf.id}-{key}")
        linger = BULK_LINGER if bulk else 0.0

        async def follow() -> None:
            try:
                while not runtime.app.should_stop:
                    events = await reader.next_batch(runtime.settings.batch_size, 0.5,
                                                     linger)
                    for event in events:
                        try:
                            on_message(event.message)
                        except (CodecError, KeyError, TypeError, ValueError) as exc:
                            runtime.metrics.record_error()  # one bad record: count it, go on
                            log.warning("unreadable %s record: %s", key, exc)
                    if events:
                        reader.commit(events)
            finally:
                reader.close()

        follow.__name__ = f"follow_{key}"
        runtime.app.task(follow)

    def on_health(self, record: Mapping[str, Any]) -> None:
        now = time.time()
        self.board.on_health(record, now=now)
        self.analyst.on_health(record, now)
        version = record.get("model_version")
        if record.get("stage") == "inference" and version not in (self.served, self.unknown):
            self.reference(version)

    def reference(self, served: str | None) -> None:
        """Tell the analyst which version serves, its reference, baselines and previous.

        A ``served`` version the registry does not hold is remembered in ``unknown``, so the
        registry is read once per version inference reports, not once per health event; the
        production version stands in for it meanwhile.
        """
        try:
            versions = self.registry.list(PRIMARY)
        except TidegateError as exc:  # no registry yet: nothing to compare against
            log.info("no model reference: %s", exc)
            return
        name, _, number = (served or "").partition(":")
        found = next((mv for mv in versions if name == PRIMARY and mv.version == number), None)
        self.unknown = None if found else served
        current = found or next((mv for mv in versions if mv.stage == "production"), None)
        if current is None:
            return
        earlier = [mv for mv in versions if mv.version != current.version
                   and mv.promoted_ms is not None and not mv.rolled_back]
        previous = max(earlier, key=lambda mv: mv.promoted_ms or 0, default=None)
        self.served = f"{PRIMARY}:{current.version}"
        self.analyst.set_reference(
            self.served, {name: bins for name, bins in current.reference.items()
                          if name not in DRIFT_EXEMPT},
            {f"{PRIMARY}:{mv.version}": mv.metrics["accuracy"] for mv in versions
             if "accuracy" in mv.metrics},
            previous_version=f"{PRIMARY}:{previous.version}" if previous else None)

    async def assess(self) -> None:
        """Publish alert transitions; issue the analyst's commands (unless auto actions are off)."""
        runtime = self.runtime
        assessment = self.analyst.assess(time.time())
        if assessment.alerts:
            await runtime.deliver([
                Outgoing(topic=self._alerts_topic, key=alert.key.encode(),
                         value=self._encode_alert(alert.to_record()))
                for alert in assessment.alerts])
        for record in assessment.commands:
            if not runtime.settings.auto_actions:
                log.warning("automatic actions are off; not issuing %s %s: %s",
                            record["action"], record["target"], record["reason"])
                continue
            sent = await asyncio.get_running_loop().run_in_executor(None, self._issue, record)
            if sent is not None and sent is not record:
                self._record_sent(record, sent)

    def _issue(self, record: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """Send ``record``; the command that went to the control topic, None if none did."""
        try:
            if record["action"] == "rollback":  # the registry first, then the pin
                done = rollback(self.runtime.settings, PRIMARY, reason=record["reason"],
                                issuer=record["issuer"])
                log.warning("rolled %s back to %s", PRIMARY, done.version.version)
                return done.command
            if record["action"] == "promote":  # a canary passed: the registry, then the pin
                promoted = promote(self.runtime.settings, PRIMARY, record["parameters"]["version"],
                               reason=record["reason"], issuer=record["issuer"], force=True)
                log.warning("promoted %s %s after its canary", PRIMARY,
                            promoted.version.version)
                return promoted.command
            issue_command(self.runtime.settings, record)
            return record
        except TidegateError as exc:
            log.error("could not issue %s %s: %s", record["action"], record["target"], exc)
            return None

    def _record_sent(self, record: Mapping[str, Any], sent: Mapping[str, Any]) -> None:
        """Show ``sent``, with its own id, in place of the analyst's ``record`` among the recent
        actions: a rollback's command is built by the registry step, not by the analyst."""
        actions = self.analyst.actions
        for index in range(len(actions) - 1, -1, -1):
            if actions[index]["id"] == record["id"]:
                actions[index] = dict(sent)
                return

    def snapshot(self) -> dict[str, Any]:
        """The board plus crisis levels, alerts, drift, accuracy, actions and how commands are
        authenticated (with the refusals monitoring saw, by reason)."""
        now = time.time()
        keys = self.gate.keys
        control = {"authenticated": keys.enabled, "key_ids": list(keys.ids),
                   "refused": dict(self.gate.rejected)}
        return {**self.board.snapshot(now=now), **self.analyst.snapshot(now), "control": control}
