"""``tidegate dlq ls|show|replay``: dead letters by stage and code, open or resolved; decoded with
their context; back into the pipeline. The parsers of ``--where`` and ``--since`` serve notebooks::

    ReplayRequest(topic="validation", where=(parse_condition("amount>=1e6"),),
                  since_ms=parse_time("2024-05-01T12:00"))
"""

from __future__ import annotations

import json
import operator
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, cast

import click

from tidegate.cli.data import render
from tidegate.cli.replay import (
    REPLAY_OFFSET_HEADER,
    ReplayRequest,
    ReplaySummary,
    dlq_topic,
    replay,
)
from tidegate.codec import Codec
from tidegate.deadletter import Context, Headers, context_of, header_value
from tidegate.errors import CodecError, ConfigError
from tidegate.kafka.clients import client_config
from tidegate.kafka.scan import Message, read_topic
from tidegate.settings import ClientConfig, load_settings
from tidegate.topics import STAGES

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar

__all__ = ["Condition", "Tally", "dlq", "parse_condition", "parse_time", "tally"]

Op = Literal["=", "!=", "<", ">", "<=", ">="]
_DLQ_STAGES = tuple(stage for stage, spec in STAGES.items() if spec.dead_letter is not None)
_CONDITION = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(!=|<=|>=|==|=|<|>)\s*(.*?)\s*$")
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt,
    "<=": operator.le, ">=": operator.ge}


@dataclass(frozen=True, slots=True)
class Condition:
    """``field op value``, a ``where`` predicate of a ReplayRequest. Numbers compare as numbers,
    strings as strings, booleans with = and != to true/false; a missing or null field matches
    only ``field=null``; a literal of another type never matches."""

    field: str
    op: Op
    value: str

    def __str__(self) -> str:
        return f"{self.field}{self.op}{self.value}"

    def __call__(self, record: Mapping[str, Any]) -> bool:
        found: Any = record
        for part in self.field.split("."):
            found = found.get(part) if isinstance(found, Mapping) else None
        compare = _COMPARE[self.op]
        if found is None:
            return self.op == "=" and self.value == "null"
        if isinstance(found, bool):
            flag = {"true": True, "false": False}.get(self.value.lower())
            return flag is not None and self.op in ("=", "!=") and compare(found, flag)
        if isinstance(found, int | float):
            try:
                return compare(found, float(self.value))
            except ValueError:
                return False
        return isinstance(found, str) and compare(found, self.value)


def parse_condition(text: str) -> Condition:
    """``"amount>=1e6"`` -> ``Condition("amount", ">=", "1e6")``; quotes around VALUE go."""
    match = _CONDITION.match(text)
    if match is None:
        raise ConfigError(f"{text!r} is not FIELD OP VALUE with OP one of = != < > <= >=")
    name, op, value = match.groups()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return Condition(name, cast(Op, "=" if op == "==" else op), value)


def parse_time(text: str) -> int:
    """Epoch milliseconds from ISO 8601 (UTC unless it says otherwise) or epoch milliseconds."""
    if text.strip().isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ConfigError(f"{text!r} is neither ISO 8601 nor epoch milliseconds") from exc
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp() * 1000)


@dataclass
class Tally:
    """Dead letters of one stage and code, and the events they stand for, open or resolved."""

    dead_letters: int = 0
    events: int = 0
    open: int = 0
    resolved: int = 0


def tally(config: ClientConfig, prefix: str, codec: Codec | None = None
          ) -> dict[str, dict[str, Tally]]:
    """Per stage and code: dead letters, and the events behind them, each counted once.

    An event counts where it failed last, as resolved when its event id appears in the
    predictions topic (a replay succeeded), as open otherwise. A dead letter without an event id
    is an event of its own, unless it is a replay of an earlier one that failed again.
    """
    codec = codec or Codec()
    predicted = {_predicted_id(m, codec) for m in read_topic(config, prefix + "predictions")}
    tallies: dict[str, dict[str, Tally]] = {stage: {} for stage in _DLQ_STAGES}
    last: dict[str, tuple[int, str, str]] = {}  # event -> (failed at, stage, code)
    anonymous: dict[str, str] = {}  # position of a dead letter without event id -> event
    for stage in _DLQ_STAGES:
        topic = dlq_topic(stage, prefix)
        for message in read_topic(config, topic):
            headers = cast(Headers, message.headers() or [])
            context = context_of(headers)
            code = context.get(Context.ERROR_CODE, "?")
            tallies[stage].setdefault(code, Tally()).dead_letters += 1
            event = context.get(Context.EVENT_ID) or _event_id(message.value() or b"", codec)
            if event is None:
                position = f"{topic}:{message.partition()}:{message.offset()}"
                earlier = header_value(headers, REPLAY_OFFSET_HEADER)
                event = anonymous.get(earlier, earlier) if earlier else position
                anonymous[position] = event
            at = int(failed) if (failed := context.get(Context.FAILED_AT, "")).isdigit() else 0
            if event not in last or at >= last[event][0]:
                last[event] = (at, stage, code)
    for event, (_, stage, code) in last.items():
        entry = tallies[stage][code]
        entry.events += 1
        entry.resolved += event in predicted
        entry.open += event not in predicted
    return tallies


def _predicted_id(message: Message, codec: Codec) -> str | None:
    key = message.key()  # predictions are keyed by event id
    return key.decode("utf-8", "replace") if key else _event_id(message.value() or b"", codec)


def _event_id(value: bytes, codec: Codec) -> str | None:
    try:
        found = codec.decode_any(value)[1].get("event_id")
    except CodecError:
        return None
    return found if isinstance(found, str) and found else None


def _total(tallies: Iterable[Tally]) -> Tally:
    every = list(tallies)
    return Tally(*(sum(getattr(t, name) for t in every) for name in vars(Tally())))


@click.group()
def dlq() -> None:
    """Inspect and replay the dead-letter topics."""


@dlq.command(name="ls")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object: dead letters by stage and code, plus open, resolved, totals.")
def ls(as_json: bool) -> None:
    """Count dead letters by stage and error code, and their events: open or resolved.

    An event is resolved once its event id appears in the predictions topic (say, after a
    replay); an event that failed several times counts once, under its latest failure.
    """
    settings = load_settings()
    tallies = tally(client_config(settings), settings.topic_prefix,
                    Codec(registry_url=settings.schema_registry_url))
    if as_json:
        out: dict[str, Any] = {stage: {code: t.dead_letters for code, t in codes.items()}
                               for stage, codes in tallies.items()}
        for name in ("open", "resolved"):
            out[name] = {stage: {code: getattr(t, name) for code, t in codes.items()}
                         for stage, codes in tallies.items()}
        out["totals"] = vars(_total(t for codes in tallies.values() for t in codes.values()))
        click.echo(json.dumps(out))
        return
    click.echo(f"{'stage':12} {'code':24} {'letters':>8} {'events':>8} {'open':>8} "
               f"{'resolved':>8}")
    for stage, codes in tallies.items():
        rows = [("(all)", _total(codes.values())),
                *sorted(codes.items(), key=lambda item: -item[1].dead_letters)]
        for index, (code, t) in enumerate(rows):
            click.echo(f"{stage if index == 0 else '':12} {code:24} {t.dead_letters:>8} "
                       f"{t.events:>8} {t.open:>8} {t.resolved:>8}")


@dlq.command()
@click.argument("stage", type=click.Choice(_DLQ_STAGES))
@click.option("--code", "codes", multiple=True, help="Only these error codes (repeatable).")
@click.option("-n", "--max", "limit", type=click.IntRange(min=1), default=20, show_default=True)
def show(stage: str, codes: tuple[str, ...], limit: int) -> None:
    """Print dead letters of STAGE, decoded, with their error context, as JSON lines."""
    settings = load_settings()
    codec = Codec(registry_url=settings.schema_registry_url)
    shown = 0
    for message in read_topic(client_config(settings), dlq_topic(stage, settings.topic_prefix)):
        context = context_of(message.headers())
        if codes and context.get(Context.ERROR_CODE) not in codes:
            continue
        record = render(message, codec, meta=True)
        record["context"] = context
        click.echo(json.dumps(record, default=str))
        shown += 1
        if shown >= limit:
            break


def _parsed(parse: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        try:
            if isinstance(value, tuple):
                return tuple(parse(item) for item in value)
            return None if value is None else parse(value)
        except ConfigError as exc:
            raise click.BadParameter(str(exc)) from exc
    return callback


@dlq.command(name="replay")
@click.argument("topic")
@click.option("--to", "target", metavar="TOPIC",
              help="Send here (catalog key or topic name) instead of each one's source topic.")
@click.option("--code", "codes", multiple=True, metavar="CODE",
              help="Only these error codes (repeatable).")
@click.option("--where", "where", multiple=True, callback=_parsed(parse_condition),
              metavar="FIELD<OP>VALUE", help="Only dead letters whose decoded event satisfies "
              "this; OP is = != < > <= >=; repeatable, all must hold.")
@click.option("--since", callback=_parsed(parse_time), metavar="TIME",
              help="Only dead letters that failed at or after TIME (ISO 8601, UTC unless it "
              "says otherwise, or epoch ms).")
@click.option("--until", callback=_parsed(parse_time), metavar="TIME",
              help="Only dead letters that failed before TIME.")
@click.option("-n", "--max", "limit", type=click.IntRange(min=1), metavar="N",
              help="Replay at most N.")
@click.option("--rate", type=click.FloatRange(min=0), default=0.0, show_default=True,
              metavar="R", help="Replays per second; 0 sends as fast as the broker takes them.")
@click.option("--max-replays", type=click.IntRange(min=1), default=3, show_default=True,
              metavar="N", envvar="TIDEGATE_MAX_REPLAYS", show_envvar=True,
              help="Loop guard: refuse a record already replayed this many times.")
@click.option("--all", "from_beginning", is_flag=True,
              help="Start from the oldest dead letter, not where the last replay stopped.")
@click.option("--dry-run", is_flag=True, help="Change nothing; print what would be replayed.")
def replay_command(topic: str, target: str | None, codes: tuple[str, ...],
                   where: tuple[Condition, ...], since: int | None, until: int | None,
                   limit: int | None, rate: float, max_replays: int, from_beginning: bool,
                   dry_run: bool) -> None:
    """Send dead letters of TOPIC back to the topic they came from.

    TOPIC is a stage (validation), a catalog key (dlq.validation) or a topic name. Progress is
    remembered per topic: a run starts after the last dead letter the previous run read, selected
    or not; --all starts from the oldest again. DUPLICATE_EVENT_ID dead letters are replayed
    only when --code names them.
    """
    if topic in STAGES and topic not in _DLQ_STAGES:
        raise click.BadParameter(f"the {topic} stage has no dead-letter topic", param_hint="TOPIC")
    if since is not None and until is not None and since >= until:
        raise click.BadParameter("must lie before --until", param_hint="--since")
    settings = load_settings()
    request = ReplayRequest(topic=topic, to=target, codes=codes, where=where, since_ms=since,
                            until_ms=until, limit=limit, rate=rate, max_replays=max_replays,
                            from_beginning=from_beginning, dry_run=dry_run)
    progress = _Progress("dry run" if dry_run else "replaying")
    try:
        summary = replay(client_config(settings), request, prefix=settings.topic_prefix,
                         codec=Codec(registry_url=settings.schema_registry_url),
                         on_progress=progress)
    finally:
        progress.close()
    _report(summary, max_replays)


class _Progress:
    """A progress bar on stderr, opened once the number of dead letters to read is known."""

    bar: ProgressBar[int] | None = None

    def __init__(self, label: str) -> None:
        self.label = label

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr,
                                         show_pos=True)
        self.bar.update(done - self.bar.pos)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.render_finish()


def _report(summary: ReplaySummary, max_replays: int) -> None:
    skipped = ", ".join(f"{n} {why}" for why, n in summary.skipped.most_common()) or "none"
    for code, count in summary.by_code.most_common():
        click.echo(f"  code {code:24} {count:>8}")
    for target, count in summary.by_target.most_common():
        click.echo(f"  to   {target:24} {count:>8}")
    if summary.dry_run:
        for sample in summary.sample:
            click.echo(f"  {json.dumps(sample)}")
    rate = summary.replayed / summary.seconds if summary.seconds > 0 else 0.0
    took = "" if summary.dry_run else f" in {summary.seconds:.1f} s ({rate:.0f}/s)"
    click.echo(f"{'dry run: would replay' if summary.dry_run else 'replayed'} {summary.replayed}"
               f" of {summary.examined} dead letters from {summary.topic}{took}; refused "
               f"{summary.refused} by the loop guard (--max-replays {max_replays}); skipped "
               f"{skipped}; run {summary.run_id}")
