"""The broker's own meters, read over JMX with Kafka's JmxTool: requests by API, bytes by topic.

The benchmark reads them before and after a run; the difference says which requests the broker
served per event (produce, fetch, offset commit, metadata, list offsets, ...) and how many bytes
each topic took in and gave out.

Example::

    before = read_meters(settings, "127.0.0.1:9999")
    ... run ...
    spent = read_meters(settings, "127.0.0.1:9999") - before
    spent.requests["Fetch"], spent.bytes_in["tidegate.events"]
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from tidegate.errors import BrokerError
from tidegate.kafka.jars import run_tool
from tidegate.settings import Settings

__all__ = ["BrokerMeters", "parse_jmx_output", "read_meters"]

_REQUESTS = "kafka.network:type=RequestMetrics,name=RequestsPerSec,request=*,version=*"
_TOPIC_METERS = {
    "bytes_in": "kafka.server:type=BrokerTopicMetrics,name=BytesInPerSec,topic=*",
    "bytes_out": "kafka.server:type=BrokerTopicMetrics,name=BytesOutPerSec,topic=*",
    "messages_in": "kafka.server:type=BrokerTopicMetrics,name=MessagesInPerSec,topic=*",
}


@dataclass(frozen=True)
class BrokerMeters:
    """Cumulative counts: requests by API, and bytes in, bytes out and records in by topic."""

    requests: dict[str, float] = field(default_factory=dict)
    bytes_in: dict[str, float] = field(default_factory=dict)
    bytes_out: dict[str, float] = field(default_factory=dict)
    messages_in: dict[str, float] = field(default_factory=dict)

    def __sub__(self, earlier: BrokerMeters) -> BrokerMeters:
        def minus(now: dict[str, float], then: dict[str, float]) -> dict[str, float]:
            return {key: value - then.get(key, 0.0) for key, value in now.items()
                    if value - then.get(key, 0.0) > 0}

        return BrokerMeters(requests=minus(self.requests, earlier.requests),
                            bytes_in=minus(self.bytes_in, earlier.bytes_in),
                            bytes_out=minus(self.bytes_out, earlier.bytes_out),
                            messages_in=minus(self.messages_in, earlier.messages_in))


def _tags(name: str) -> dict[str, str]:
    """``domain:k=v,k=v`` -> {k: v}."""
    _, _, properties = name.partition(":")
    return dict(part.split("=", 1) for part in properties.split(",") if "=" in part)


def parse_jmx_output(text: str) -> BrokerMeters:
    """JmxTool's one-time tab-separated report (a line per ``object:attribute``, tab, value)
    folded into meters: request counts summed over API versions, topic meters by topic."""
    sums: dict[str, defaultdict[str, float]] = {
        kind: defaultdict(float) for kind in ("requests", *_TOPIC_METERS)}
    readings = 0
    for line in text.splitlines():
        column, _, value = line.partition("\t")
        name, _, attribute = column.rpartition(":")
        if attribute != "Count":
            continue
        try:
            count = float(value)
        except ValueError:
            continue
        readings += 1
        tags = _tags(name)
        if tags.get("name") == "RequestsPerSec" and "request" in tags:
            sums["requests"][tags["request"]] += count
        for kind, pattern in _TOPIC_METERS.items():
            if "topic" in tags and f"name={tags.get('name')}," in pattern:
                sums[kind][tags["topic"]] += count
    if not readings:
        raise BrokerError(f"unexpected JmxTool output: {text.strip()[:200]!r}")
    return BrokerMeters(**{kind: dict(counts) for kind, counts in sums.items()})


def read_meters(settings: Settings, address: str) -> BrokerMeters:
    """The broker's meters now, from its JMX port at ``address`` (host:port)."""
    objects = [arg for name in (_REQUESTS, *_TOPIC_METERS.values())
               for arg in ("--object-name", name)]
    return parse_jmx_output(run_tool(
        settings.cache_dir, settings.kafka_version, "JmxTool",
        ["--jmx-url", f"service:jmx:rmi:///jndi/rmi://{address}/jmxrmi", *objects,
         "--attributes", "Count", "--one-time", "true", "--report-format", "tsv"],
        jvm=("-Xmx128m", "-XX:TieredStopAtLevel=1"), timeout=120))
