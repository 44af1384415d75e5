"""A real single-node Apache Kafka broker (KRaft, broker and controller in one) on loopback.

The broker runs as a ``java`` process from the cached jars. Its state file (pid, ports,
bootstrap address) lets every tidegate command find it; ``stop`` is idempotent and leaves no
java process behind.

Example::

    state = start_broker(settings)
    print(state.bootstrap)        # 127.0.0.1:41234
    stop_broker(settings)

With ``secure=True`` the broker listens with SASL_SSL (SCRAM-SHA-512) and enforces ACLs; its CA,
certificate and principals are made once under ``<broker dir>/secure`` (``tidegate.kafka.secure``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import shlex
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from tidegate.errors import BrokerStartError
from tidegate.kafka.broker_config import log4j_config, server_properties
from tidegate.kafka.host import alive, choose_ports, death_signal_prefix, free_port, terminate
from tidegate.kafka.jars import classpath, require_tool, resolve_jars
from tidegate.kafka.secure import (
    ADMIN,
    SecureMaterial,
    create_principals,
    ensure_material,
    load_material,
    write_private,
)
from tidegate.settings import ClientConfig, Settings

__all__ = [
    "BrokerState",
    "broker_status",
    "death_signal_prefix",
    "read_state",
    "secure_dir",
    "start_broker",
    "stop_broker",
]

_STATE = "broker.json"
_MAIN_CLASS = "kafka.Kafka"
_FORMATTED_SECURE = "formatted"  # in the secure dir: the storage holds the admin's credential


@dataclass(frozen=True, kw_only=True)
class BrokerState:
    """What a running embedded broker left for other commands to find it by."""

    pid: int
    bootstrap: str
    broker_port: int
    controller_port: int
    directory: str
    version: str
    started_at: float
    start_seconds: float
    jmx_port: int | None = None
    already_running: bool = False
    secure: bool = False


def read_state(directory: Path) -> BrokerState | None:
    """The state of the broker in ``directory`` if its process is still alive."""
    path = directory / _STATE
    try:
        data = json.loads(path.read_text())
        # fields a newer or older tidegate wrote are ignored, not fatal
        known = {f.name for f in fields(BrokerState)}
        state = BrokerState(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    return state if _is_our_broker(state.pid, directory) else None


def secure_dir(settings: Settings) -> Path:
    """Where the secure broker keeps its CA, certificate and credentials."""
    return settings.broker_dir.resolve() / "secure"


def start_broker(settings: Settings, *, die_with_parent: bool = False,
                 jmx: bool = False, secure: bool = False) -> BrokerState:
    """Start the broker unless one already runs in the data dir; return once it answers.

    ``die_with_parent`` ties the broker's life to the calling process (test sessions, ``up``),
    so a killed parent leaves no java process behind. ``jmx`` opens the broker's JMX metrics on
    a free loopback port (``BrokerState.jmx_port``), without authentication: for the benchmark's
    request counts, not for a broker other users share. ``secure`` starts it with SASL_SSL and
    ACLs; a data dir keeps the mode it was first started in.
    """
    directory = settings.broker_dir.resolve()
    running = read_state(directory)
    if running is not None:
        if running.secure != secure:
            raise BrokerStartError(f"a broker {_mode(running.secure)} already runs in "
                                   f"{directory}; stop it first")
        return BrokerState(**{**asdict(running), "already_running": True})
    java = require_tool("java")
    libs = resolve_jars(settings.cache_dir, settings.kafka_version)
    directory.mkdir(parents=True, exist_ok=True)
    storage = directory / "data"
    formatted = (storage / "meta.properties").exists()
    was_secure = (secure_dir(settings) / _FORMATTED_SECURE).exists()
    if formatted and was_secure != secure:
        raise BrokerStartError(
            f"the broker in {directory} was created {_mode(was_secure)}; start it "
            f"{'with' if was_secure else 'without'} --secure, or use another TIDEGATE_DATA_DIR")
    material = ensure_material(secure_dir(settings)) if secure else None
    broker_port, controller_port = choose_ports(
        (settings.broker_port, settings.controller_port), directory)
    properties = directory / "server.properties"
    text = server_properties(broker_port, controller_port, storage, secure=material)
    if material is None:
        properties.write_text(text)
    else:  # it holds the admin's password and the keystore's
        write_private(properties, text)
    (directory / "log4j2.properties").write_text(log4j_config(directory / "logs"))
    cp = classpath(settings.cache_dir, settings.kafka_version)
    # C1 only: with C2, the JIT's compiler threads spent about 60 µs of CPU per event in the
    # benchmark's first minutes, more than the broker's request handling; C1 code is within a
    # few per cent of it for this broker's load (see the README's benchmark).
    jvm = [java, f"-Xmx{settings.broker_heap}", "-Xms128m", "-XX:+UseG1GC",
           "-XX:TieredStopAtLevel=1", "-Xshare:auto", *shlex.split(settings.broker_jvm_options),
           f"-Dlog4j2.configurationFile={directory / 'log4j2.properties'}",
           f"-Dkafka.logs.dir={directory / 'logs'}", "-cp", cp]
    jmx_port = free_port(exclude=[broker_port, controller_port]) if jmx else None
    jmx_flags = [] if jmx_port is None else [
        f"-Dcom.sun.management.jmxremote.port={jmx_port}",
        f"-Dcom.sun.management.jmxremote.rmi.port={jmx_port}",
        "-Dcom.sun.management.jmxremote.host=127.0.0.1", "-Djava.rmi.server.hostname=127.0.0.1",
        "-Dcom.sun.management.jmxremote.authenticate=false",
        "-Dcom.sun.management.jmxremote.ssl=false"]
    began = time.monotonic()
    if not formatted:
        (secure_dir(settings) / _FORMATTED_SECURE).unlink(missing_ok=True)
        _format_storage(jvm, properties, material)
    out = (directory / "kafka.out").open("ab")
    process = subprocess.Popen(
        [*death_signal_prefix(die_with_parent), jvm[0], *jmx_flags, *jvm[1:], _MAIN_CLASS,
         str(properties)],
        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    out.close()
    bootstrap = f"127.0.0.1:{broker_port}"
    probe = _probe_config(bootstrap, material)
    try:
        _wait_ready(probe, process, directory, settings.broker_start_timeout)
        if material is not None:  # idempotent: every start converges on the stored passwords
            create_principals(probe, material)
    except BaseException:
        terminate(process.pid, settings.broker_stop_timeout)
        raise
    state = BrokerState(
        pid=process.pid, bootstrap=bootstrap, broker_port=broker_port,
        controller_port=controller_port, directory=str(directory), version=libs.parent.name,
        started_at=time.time(), start_seconds=round(time.monotonic() - began, 2),
        jmx_port=jmx_port, secure=material is not None,
    )
    (directory / _STATE).write_text(json.dumps(asdict(state), indent=2))
    return state


def stop_broker(settings: Settings) -> BrokerState | None:
    """Stop the broker (SIGTERM, then SIGKILL after the timeout); None if none was running."""
    directory = settings.broker_dir.resolve()
    state = read_state(directory)
    if state is not None:
        terminate(state.pid, settings.broker_stop_timeout)
    with contextlib.suppress(FileNotFoundError):
        (directory / _STATE).unlink()
    return state


def broker_status(settings: Settings) -> tuple[BrokerState | None, bool]:
    """The broker's state and whether it answers a metadata request right now."""
    state = read_state(settings.broker_dir.resolve())
    if state is None:
        return None, False
    material = load_material(secure_dir(settings)) if state.secure else None
    return state, _answers(_probe_config(state.bootstrap, material), timeout=3.0)


def log_file(settings: Settings) -> Path:
    return settings.broker_dir.resolve() / "logs" / "server.log"


def _mode(secure: bool) -> str:
    return "with --secure" if secure else "without --secure"


def _format_storage(jvm: list[str], properties: Path, material: SecureMaterial | None) -> None:
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    # The admin's SCRAM credential goes into the bootstrap metadata: the broker authenticates
    # with it from its first moment; the other principals are created through the admin later.
    scram = [] if material is None else [
        f"--add-scram=SCRAM-SHA-512=[name={ADMIN},password={material.password(ADMIN)}]"]
    result = subprocess.run(
        # "--cluster-id=<id>": an id may start with "-", which a separate argument would turn
        # into an unknown option (about one start in 32)
        [*jvm, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c",
         str(properties), *scram],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
        raise BrokerStartError("formatting KRaft storage failed: " + " | ".join(tail))
    if material is not None:
        (material.directory / _FORMATTED_SECURE).write_text(cluster_id + "\n")


def _probe_config(bootstrap: str, material: SecureMaterial | None) -> ClientConfig:
    """How the broker's own checks connect: plainly, or as the admin on the secure listener."""
    security = material.client_security(ADMIN) if material is not None else {}
    return {"bootstrap.servers": bootstrap, **security}


def _wait_ready(
    config: ClientConfig, process: subprocess.Popen[bytes], directory: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BrokerStartError(
                f"broker exited with code {process.returncode} at start: {_log_tail(directory)}"
            )
        if _answers(config, timeout=1.0):
            return
        time.sleep(0.2)
    raise BrokerStartError(f"broker not ready after {timeout:.0f} s: {_log_tail(directory)}")


def _answers(config: ClientConfig, *, timeout: float) -> bool:
    # log_level 0: librdkafka would log every refused connection while the broker boots.
    admin = AdminClient({**config, "log_level": 0})
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException:
        return False
    return bool(metadata.brokers)


def _log_tail(directory: Path, lines: int = 5) -> str:
    for name in ("logs/server.log", "kafka.out"):
        path = directory / name
        if path.exists():
            text = path.read_text(errors="replace").strip().splitlines()
            interesting = [line for line in text if "ERROR" in line or "Exception" in line]
            tail = (interesting or text)[-lines:]
            if tail:
                return " | ".join(line.strip()[:300] for line in tail)
    return "no log written"


def _is_our_broker(pid: int, directory: Path) -> bool:
    """True when ``pid`` is a live Kafka java process started for ``directory``."""
    if not alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return _MAIN_CLASS.encode() in cmdline and any(
        str(directory).encode() in part for part in cmdline
    )


