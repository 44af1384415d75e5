"""The embedded broker's configuration files: small settings fit for one machine and tests."""

from __future__ import annotations

from pathlib import Path

__all__ = ["log4j_config", "server_properties"]


def server_properties(broker_port: int, controller_port: int, storage: Path) -> str:
    """A single KRaft node, broker and controller, listening on loopback only."""
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{broker_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(storage),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        # Internal topics sized for one node: replication 1 and few partitions.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # Tests create consumer groups by the dozen; none should wait for a rebalance delay.
        "group.initial.rebalance.delay.ms": "0",
        # The cleaner's default 128 MiB dedupe buffer is most of a small heap.
        "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
        "log.cleaner.io.buffer.size": str(256 * 1024),
        "log.cleaner.threads": "1",
        "log.retention.hours": "24",
        "log.segment.bytes": str(64 * 1024 * 1024),
        "auto.create.topics.enable": "false",
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        "background.threads": "4",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def log4j_config(log_dir: Path) -> str:
    """log4j2 properties: a size-bounded rolling server.log, quiet third-party loggers."""
    log = log_dir / "server.log"
    return f"""status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {log}
appender.file.filePattern = {log}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 10MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.state.name = state.change.logger
logger.state.level = WARN
logger.zk.name = org.apache.kafka.raft
logger.zk.level = WARN
"""
