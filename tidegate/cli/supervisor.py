"""Supervise one process per stage: restart a crashed one with exponential backoff.

Too many crashes within a short window raise an alert line and stop the retries for that
stage. ``stop`` sends SIGTERM (stages drain their in-flight batch and commit), then SIGKILL
after a timeout.

Example::

    supervisor = Supervisor({"ingest": [python, "-m", "tidegate.cli.main", "stage", "run",
                                        "ingest"]}, log_dir=Path("logs"),
                            child_env={"ingest": {"KAFKA_SASL_USERNAME": "ingest"}})
    supervisor.start()
    while running: supervisor.poll()
    supervisor.stop()
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tidegate.kafka.host import death_signal_prefix

__all__ = ["Child", "Supervisor"]

log = logging.getLogger(__name__)


@dataclass
class Child:
    """One supervised stage process and its crash history."""

    name: str
    command: Sequence[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    crashes: list[float] = field(default_factory=list)
    next_start: float = 0.0
    gave_up: bool = False
    kill_at: float | None = None  # asked to stop for a restart: SIGKILL if still there then


class Supervisor:
    """Keeps one process per stage running until ``stop``."""

    def __init__(self, commands: Mapping[str, Sequence[str]], *, log_dir: Path,
                 env: Mapping[str, str] | None = None,
                 child_env: Mapping[str, Mapping[str, str]] | None = None, backoff: float = 1.0,
                 max_backoff: float = 30.0, max_crashes: int = 5,
                 crash_window: float = 60.0) -> None:
        self.children = {name: Child(name, list(command)) for name, command in commands.items()}
        self.log_dir = log_dir
        self.env = dict(os.environ if env is None else env)
        # per stage on top of env: each stage's own Kafka principal on a secured cluster
        self.child_env = {name: dict(extra) for name, extra in (child_env or {}).items()}
        self.backoff, self.max_backoff = backoff, max_backoff
        self.max_crashes, self.crash_window = max_crashes, crash_window

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for child in self.children.values():
            self._spawn(child)

    def _spawn(self, child: Child) -> None:
        with (self.log_dir / f"{child.name}.log").open("ab") as out:
            child.process = subprocess.Popen(
                [*death_signal_prefix(True), *child.command], stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**self.env, **self.child_env.get(child.name, {})},
            )
        child.kill_at = None
        log.info("started %s (pid %d)", child.name, child.process.pid)

    def poll(self, now: float | None = None) -> None:
        """Notice exits and restart what is due; call it every fraction of a second."""
        now = time.monotonic() if now is None else now
        for child in self.children.values():
            process = child.process
            if process is not None and child.kill_at is not None and now >= child.kill_at \
                    and process.poll() is None:
                log.warning("%s did not stop within its grace; killing it", child.name)
                process.kill()
                process.wait(5)
            if process is not None and process.poll() is not None:
                child.process = None
                child.crashes = [t for t in child.crashes if now - t < self.crash_window]
                child.crashes.append(now)
                if len(child.crashes) > self.max_crashes:
                    child.gave_up = True
                    log.error("ALERT %s crashed %d times within %.0f s; not restarting it",
                              child.name, len(child.crashes), self.crash_window)
                    continue
                delay = min(self.max_backoff, self.backoff * 2 ** (len(child.crashes) - 1))
                child.next_start = now + delay
                log.warning("%s exited with code %s; restarting in %.1f s", child.name,
                            process.returncode, delay)
            if child.process is None and not child.gave_up and now >= child.next_start:
                child.restarts += 1
                self._spawn(child)

    def restart(self, name: str, reason: str, *, grace: float | None = None) -> None:
        """Kill a stage (it is restarted by ``poll``), e.g. when it is stalled.

        With ``grace``, SIGTERM first: the stage commits what it delivered and leaves its
        consumer group, so its partitions move to the new process at once rather than after
        the session timeout; ``poll`` sends SIGKILL if it is still there ``grace`` s later.
        """
        child = self.children[name]
        if child.process is None or child.kill_at is not None:
            return  # not running, or already on its way out
        log.warning("restarting %s: %s", name, reason)
        if grace is None:
            child.process.kill()
        else:
            child.process.send_signal(signal.SIGTERM)
            child.kill_at = time.monotonic() + grace

    def pids(self) -> dict[str, int | None]:
        return {name: c.process.pid if c.process else None for name, c in self.children.items()}

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every stage, then SIGKILL whatever is left after ``timeout``."""
        running = [c.process for c in self.children.values() if c.process is not None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        for child in self.children.values():
            child.process = None
