"""The embedded broker's neighbours on this machine: loopback ports and child processes.

Example::

    broker_port, controller_port = choose_ports((0, 0), directory)   # free, or last time's
    terminate(pid, timeout=20.0)                                      # TERM, then KILL
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path

from tidegate.errors import BrokerError, BrokerStartError

__all__ = ["alive", "choose_ports", "death_signal_prefix", "free_port", "terminate"]

_PORTS = "ports.json"


def choose_ports(configured_ports: tuple[int, int], directory: Path) -> tuple[int, int]:
    """Configured ports, else the ones this broker had last time (so clients reconnect after a
    restart), else free ones."""
    previous = _previous_ports(directory)
    chosen = []
    for index, configured in enumerate(configured_ports):
        if configured:
            if not _port_free(configured):
                raise BrokerStartError(f"port {configured} on 127.0.0.1 is taken")
            chosen.append(configured)
        elif previous and previous[index] not in chosen and _port_free(previous[index]):
            chosen.append(previous[index])
        else:
            chosen.append(free_port(exclude=chosen))
    (directory / _PORTS).write_text(json.dumps(chosen))
    return chosen[0], chosen[1]


def _previous_ports(directory: Path) -> list[int] | None:
    try:
        ports = json.loads((directory / _PORTS).read_text())
    except (OSError, ValueError):
        return None
    return ports if isinstance(ports, list) and len(ports) == 2 else None


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        # as Kafka binds: a port whose old connections linger in TIME_WAIT is free to listen on
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(exclude: list[int]) -> int:
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in exclude:
            return port


def terminate(pid: int, timeout: float) -> None:
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if _wait_gone(pid, wait):
            return
    raise BrokerError(f"broker process {pid} survived SIGKILL")


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it when it is our child
        if not alive(pid):
            return True
        time.sleep(0.1)
    return not alive(pid)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def death_signal_prefix(wanted: bool) -> list[str]:
    """``setpriv --pdeathsig``: the kernel sends SIGTERM to the broker when its parent dies.

    util-linux's setpriv sets it and then execs java; a preexec_fn would do the same but is
    unsafe in a process that already runs librdkafka threads.
    """
    setpriv = shutil.which("setpriv") if wanted else None
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []
