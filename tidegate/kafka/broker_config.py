"""The embedded broker's configuration files: small settings fit for one machine and tests.

Example::

    server_properties(9092, 9093, Path("data"))                  # PLAINTEXT, no authorizer
    server_properties(9092, 9093, Path("data"), secure=material)  # SASL_SSL, ACLs enforced
"""

from __future__ import annotations

from pathlib import Path

from tidegate.kafka.secure import ADMIN, MECHANISM, SecureMaterial

__all__ = ["log4j_config", "secure_settings", "server_properties"]


def server_properties(broker_port: int, controller_port: int, storage: Path, *,
                      secure: SecureMaterial | None = None) -> str:
    """A single KRaft node, broker and controller, listening on loopback only.

    With ``secure``, clients connect with SASL_SSL and are authorised by ACLs (see
    :func:`secure_settings`); without, everything is PLAINTEXT and every client may do anything.
    """
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
    if secure is not None:
        settings.update(secure_settings(broker_port, controller_port, secure))
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def secure_settings(broker_port: int, controller_port: int,
                    secure: SecureMaterial) -> dict[str, str]:
    """The listeners and authorizer of the secured broker.

    CLIENT (SASL_SSL, SCRAM-SHA-512) carries clients and inter-broker traffic; the broker
    authenticates as ``admin``. CONTROLLER is SASL_PLAINTEXT with PLAIN and only the admin
    user, on loopback: SCRAM cannot guard it (its credentials live in the metadata the
    controller serves), and an unauthenticated controller listener would make every local
    process a super user. ACLs decide everything else; no ACL means no access.
    """
    admin_password = secure.password(ADMIN)
    plain = secure.jaas(ADMIN, "plain.PlainLoginModule") + f' user_{ADMIN}="{admin_password}";'
    return {
        "listeners": f"CLIENT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"CLIENT://127.0.0.1:{broker_port}",
        "listener.security.protocol.map": "CLIENT:SASL_SSL,CONTROLLER:SASL_PLAINTEXT",
        "inter.broker.listener.name": "CLIENT",
        "sasl.mechanism.inter.broker.protocol": MECHANISM,
        "sasl.mechanism.controller.protocol": "PLAIN",
        "listener.name.client.sasl.enabled.mechanisms": MECHANISM,
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        f"listener.name.client.{MECHANISM.lower()}.sasl.jaas.config": secure.jaas(ADMIN) + ";",
        "listener.name.controller.plain.sasl.jaas.config": plain,
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(secure.keystore),
        "ssl.keystore.password": secure.keystore_password,
        "ssl.key.password": secure.keystore_password,
        # the broker is a TLS client of itself (inter-broker traffic): it trusts the same CA
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(secure.ca),
        "ssl.client.auth": "none",
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found": "false",
        "super.users": f"User:{ADMIN}",
    }


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
