"""Create and describe the catalog's topics; report, never silently accept, a mismatch.

Example::

    reports = ensure_topics(config, CATALOG, prefix="tidegate.", replication=1)
    [r.action for r in reports]   # ['created', ...] the first time, ['exists', ...] after
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from tidegate.errors import BrokerError
from tidegate.kafka.refusal import Refusals, authorization_error
from tidegate.settings import ClientConfig
from tidegate.topics import TopicSpec

__all__ = ["TopicReport", "describe_topics", "ensure_topics"]

Action = Literal["created", "exists", "mismatch", "missing"]
_TIMEOUT = 30.0


@dataclass(frozen=True, kw_only=True)
class TopicReport:
    """What a catalog topic looks like on the cluster, and what was done about it."""

    name: str
    action: Action
    partitions: int | None = None
    replication: int | None = None
    configs: dict[str, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()


def ensure_topics(
    config: ClientConfig, specs: Iterable[TopicSpec], *, prefix: str, replication: int
) -> list[TopicReport]:
    """Create missing topics; compare existing ones with the catalog. Idempotent."""
    specs = list(specs)
    admin = _admin(config)
    existing = _existing(admin)
    missing = [spec for spec in specs if spec.name(prefix) not in existing]
    created: set[str] = set()
    if missing:
        futures = admin.create_topics(
            [NewTopic(spec.name(prefix), num_partitions=spec.partitions,
                      replication_factor=replication, config=spec.configs())
             for spec in missing],
            operation_timeout=_TIMEOUT, request_timeout=_TIMEOUT,
        )
        for name, future in futures.items():
            try:
                future.result()
                created.add(name)
            except KafkaException as exc:
                error = exc.args[0]
                if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise (authorization_error(error, config, f"create topic {name}")
                           or BrokerError(f"cannot create topic {name}: {error.str()}")) from exc
    # A topic created a moment ago (here or by someone else) may be missing from metadata yet.
    deadline = time.monotonic() + _TIMEOUT
    while True:
        reports = describe_topics(config, specs, prefix=prefix, replication=replication,
                                  admin=admin)
        if all(r.action != "missing" for r in reports) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return [
        TopicReport(**{**report.__dict__, "action": "created"})
        if report.name in created and report.action == "exists" else report
        for report in reports
    ]


def describe_topics(
    config: ClientConfig, specs: Iterable[TopicSpec], *, prefix: str, replication: int,
    admin: AdminClient | None = None,
) -> list[TopicReport]:
    """Each catalog topic as the cluster has it, with every difference from the catalog."""
    admin = admin or _admin(config)
    specs = list(specs)
    metadata = _list(admin)
    present = [spec for spec in specs if spec.name(prefix) in metadata]
    resources = [ConfigResource("topic", spec.name(prefix)) for spec in present]
    described = admin.describe_configs(resources, request_timeout=_TIMEOUT) if resources else {}
    topic_configs = {
        resource.name: {key: entry.value for key, entry in future.result().items()}
        for resource, future in described.items()
    }
    reports = []
    for spec in specs:
        name = spec.name(prefix)
        if name not in metadata:
            reports.append(TopicReport(name=name, action="missing", problems=("does not exist",)))
            continue
        partitions = metadata[name].partitions
        replicas = len(next(iter(partitions.values())).replicas) if partitions else 0
        actual = topic_configs.get(name, {})
        problems = _compare(spec, len(partitions), replicas, actual, replication)
        reports.append(TopicReport(
            name=name, action="mismatch" if problems else "exists", partitions=len(partitions),
            replication=replicas,
            configs={key: actual.get(key, "?") for key in spec.configs()}, problems=problems,
        ))
    return reports


def _compare(
    spec: TopicSpec, partitions: int, replicas: int, actual: dict[str, str], replication: int
) -> tuple[str, ...]:
    problems = []
    if partitions != spec.partitions:
        problems.append(f"partitions {partitions}, catalog says {spec.partitions}")
    if replicas != replication:
        problems.append(f"replication {replicas}, catalog says {replication}")
    for key, wanted in spec.configs().items():
        if actual.get(key) != wanted:
            problems.append(f"{key}={actual.get(key)}, catalog says {wanted}")
    return tuple(problems)


def _existing(admin: AdminClient) -> set[str]:
    return set(_list(admin))


def _list(admin: AdminClient) -> dict[str, Any]:
    """The cluster's topics (those this principal may describe); a refusal says its cause."""
    if isinstance(admin, _Admin):
        return dict(admin.refusals.request(
            admin, lambda step: admin.list_topics(timeout=step), timeout=_TIMEOUT).topics)
    try:
        return dict(admin.list_topics(timeout=_TIMEOUT).topics)
    except KafkaException as exc:
        raise BrokerError(f"cannot reach the cluster: {exc.args[0].str()}") from exc


class _Admin(AdminClient):
    """An admin client that knows why the cluster refused it."""

    def __init__(self, config: ClientConfig) -> None:
        self.refusals = Refusals(config)
        # librdkafka's own log goes to the Refusals, not to a CLI user's terminal
        super().__init__({**config, **self.refusals.hooks()})


def _admin(config: ClientConfig) -> AdminClient:
    return _Admin(config)
