"""Assemble Apache Kafka from Maven Central jars into a per-user cache, once.

The first call runs Maven; every later call finds the completed cache and touches no network,
so the embedded broker works offline from then on.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from pathlib import Path

from tidegate.errors import BrokerError, ToolMissingError

__all__ = ["classpath", "kafka_home", "require_tool", "resolve_jars", "run_tool"]

# The kafka_2.13 POM declares slf4j-api 1.7 but leaves the logging backend out; the Apache
# distribution ships log4j2 with its SLF4J 1.x binding (log4j-slf4j-impl), and so do we.
_LOG4J_VERSION = "2.25.4"
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
_COMPLETE = ".complete"

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.tidegate.embedded</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>{kafka}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""


def require_tool(name: str) -> str:
    """The path of a program on PATH, or a ToolMissingError naming it."""
    path = shutil.which(name)
    if path is None:
        hint = {"java": "install a JDK 17 or newer", "mvn": "install Apache Maven"}.get(name, "")
        raise ToolMissingError(f"'{name}' not found on PATH: {hint}".rstrip(": "))
    return path


def run_tool(cache_dir: Path, version: str, tool: str, args: list[str], *,
             jvm: tuple[str, ...] = ("-Xmx512m",), timeout: float = 600.0) -> str:
    """Run one of Kafka's command-line tools (``org.apache.kafka.tools.<tool>``) from the
    cached jars and return its output; a BrokerError names the tool when it fails."""
    command = [require_tool("java"), *jvm, "-cp", classpath(cache_dir, version),
               f"org.apache.kafka.tools.{tool}", *args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False,
                                timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BrokerError(f"{tool} did not finish in {timeout:.0f} s") from exc
    if result.returncode != 0:
        raise BrokerError(f"{tool} failed: {result.stderr.strip()[-500:]}")
    return result.stdout


def kafka_home(cache_dir: Path, version: str) -> Path:
    return cache_dir / "kafka" / version


def classpath(cache_dir: Path, version: str) -> str:
    return str(kafka_home(cache_dir, version) / "libs" / "*")


def resolve_jars(cache_dir: Path, version: str) -> Path:
    """The folder of Kafka's runtime jars, resolving them with Maven on first use."""
    home = kafka_home(cache_dir, version)
    libs = home / "libs"
    if (home / _COMPLETE).exists():
        return libs
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel first run waits rather than racing Maven
        if (home / _COMPLETE).exists():
            return libs
        mvn = require_tool("mvn")
        (home / "pom.xml").write_text(_POM.format(kafka=version, log4j=_LOG4J_VERSION))
        shutil.rmtree(libs, ignore_errors=True)
        command = [
            mvn, "-B", "-q", "-f", str(home / "pom.xml"),
            f"{_DEPENDENCY_PLUGIN}:copy-dependencies",
            f"-DoutputDirectory={libs}", "-DincludeScope=runtime",
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = _last_error_line(result.stdout + result.stderr)
            raise BrokerError(f"Maven could not resolve Apache Kafka {version}: {tail}")
        if not any(libs.glob(f"kafka_2.13-{version}.jar")):
            raise BrokerError(f"Maven finished but kafka_2.13-{version}.jar is missing in {libs}")
        (home / _COMPLETE).write_text(version + "\n")
    return libs


def _last_error_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR" in line]
    return (errors or lines or ["no output"])[0][:300]
