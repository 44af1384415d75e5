"""docker-compose.yml is valid and describes the pipeline the design calls for.

The file is checked by ``docker-compose config`` (Debian's docker-compose 1.29, which validates and
normalizes a compose file without a Docker daemon). The test reads the normalized output rather
than the file, so anchors, merge keys and variable defaults are resolved as Docker resolves them.
PyYAML is not a dependency of the project, so the normalized output, which is plain block-style
YAML, is read with a few line-oriented helpers instead of a YAML parser.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"

STAGES = ("ingest", "validation", "feature", "inference", "monitoring")
SERVICES = frozenset({"kafka", "topics", *STAGES})
KAFKA_IMAGE = "apache/kafka:4.3.1"

_INSTALL_HINT = (
    "docker-compose is not on PATH; it is needed to validate docker-compose.yml without a Docker "
    "daemon. Install Debian's docker-compose: apt-get install docker-compose"
)


@dataclass(frozen=True)
class ComposeRun:
    """One ``docker-compose config`` invocation: exit status and both streams."""

    returncode: int
    stdout: str
    stderr: str


def _compose(*args: str) -> ComposeRun:
    executable = shutil.which("docker-compose")
    if executable is None:
        pytest.fail(_INSTALL_HINT, pytrace=False)
    done = subprocess.run(
        [executable, "-f", str(COMPOSE_FILE), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return ComposeRun(done.returncode, done.stdout, done.stderr)


def _ok(run: ComposeRun) -> str:
    assert run.returncode == 0, f"docker-compose config failed:\n{run.stderr}"
    return run.stdout


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _children(lines: list[str], key: str) -> list[str]:
    """The lines nested under the first ``key:`` line of this block (at the block's own level).

    Block sequences may sit at the key's own indentation (PyYAML's style) or deeper.
    """
    significant = [line for line in lines if line.strip()]
    if not significant:
        return []
    level = min(_indent(line) for line in significant)
    for at, line in enumerate(lines):
        if _indent(line) == level and line.strip() == f"{key}:":
            nested: list[str] = []
            for child in lines[at + 1 :]:
                if not child.strip():
                    continue
                depth = _indent(child)
                if depth > level or (depth == level and child.lstrip().startswith("- ")):
                    nested.append(child)
                else:
                    break
            return nested
    return []


def _scalar(lines: list[str], key: str) -> str | None:
    """The value of a ``key: value`` line at this block's own level."""
    significant = [line for line in lines if line.strip()]
    if not significant:
        return None
    level = min(_indent(line) for line in significant)
    prefix = f"{key}: "
    for line in significant:
        if _indent(line) == level and line.lstrip().startswith(prefix):
            return _unquote(line.lstrip()[len(prefix) :])
    return None


def _items(lines: list[str]) -> list[str]:
    """The scalar items of a block sequence."""
    return [_unquote(line.lstrip()[2:]) for line in lines if line.lstrip().startswith("- ")]


def _mapping(lines: list[str]) -> dict[str, str]:
    """A flat ``key: value`` mapping (environment and the like)."""
    level = min((_indent(line) for line in lines if line.strip()), default=0)
    pairs: dict[str, str] = {}
    for line in lines:
        if _indent(line) == level and ": " in line:
            name, _, value = line.strip().partition(": ")
            pairs[name] = _unquote(value)
    return pairs


@pytest.fixture(scope="module")
def normalized() -> str:
    return _ok(_compose("config"))


@pytest.fixture(scope="module")
def services(normalized: str) -> dict[str, list[str]]:
    """Each service's block of the normalized configuration, by service name."""
    blocks: dict[str, list[str]] = {}
    current: list[str] = []
    for line in _children(normalized.splitlines(), "services"):
        if _indent(line) == 2 and line.rstrip().endswith(":"):
            current = []
            blocks[line.strip()[:-1]] = current
        else:
            current.append(line)
    return blocks


def test_config_validates() -> None:
    run = _compose("config", "--quiet")
    assert run.returncode == 0, f"docker-compose config rejected the file:\n{run.stderr}"


def test_services_are_the_broker_the_topics_job_and_one_per_stage() -> None:
    listed = set(_ok(_compose("config", "--services")).split())
    assert listed == SERVICES


def test_named_volumes_hold_broker_data_and_models() -> None:
    volumes = set(_ok(_compose("config", "--volumes")).split())
    assert "models" in volumes
    assert len(volumes) >= 2, f"expected a named volume for the broker data too, got {volumes}"


def test_kafka_is_the_official_image_at_the_pinned_version(
    services: dict[str, list[str]],
) -> None:
    image = _scalar(services["kafka"], "image")
    assert image == KAFKA_IMAGE
    assert KAFKA_IMAGE in COMPOSE_FILE.read_text(encoding="utf-8")


def test_kafka_is_a_single_kraft_node_without_topic_auto_creation(
    services: dict[str, list[str]],
) -> None:
    kafka = services["kafka"]
    env = _mapping(_children(kafka, "environment"))
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert "localhost:9094" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    probe = " ".join(_items(_children(_children(kafka, "healthcheck"), "test")))
    assert "kafka-broker-api-versions.sh" in probe


def test_topics_job_runs_once_after_a_healthy_broker(services: dict[str, list[str]]) -> None:
    topics = services["topics"]
    assert _items(_children(topics, "command")) == ["tidegate", "init"]
    assert _scalar(topics, "restart") == "no"
    kafka = _children(_children(topics, "depends_on"), "kafka")
    assert _scalar(kafka, "condition") == "service_healthy"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_service_runs_its_stage(services: dict[str, list[str]], stage: str) -> None:
    service = services[stage]
    assert _items(_children(service, "command")) == ["tidegate", "stage", "run", stage]
    assert _scalar(service, "restart") == "unless-stopped"
    topics = _children(_children(service, "depends_on"), "topics")
    assert _scalar(topics, "condition") == "service_completed_successfully"
    env = _mapping(_children(service, "environment"))
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["TIDEGATE_LOG_FORMAT"] == "json"
    assert env["TIDEGATE_DATA_DIR"] == "/data"
    assert "TIDEGATE_TOPIC_PREFIX" in env


@pytest.mark.parametrize("stage", ["inference", "monitoring"])
def test_model_registry_volume_is_shared(services: dict[str, list[str]], stage: str) -> None:
    mounts = _items(_children(services[stage], "volumes"))
    assert any(mount.startswith("models:/data") for mount in mounts), mounts


def test_monitoring_publishes_its_status_port(services: dict[str, list[str]]) -> None:
    monitoring = services["monitoring"]
    env = _mapping(_children(monitoring, "environment"))
    assert env["TIDEGATE_STATUS_PORT"] == "8080"
    ports = _items(_children(monitoring, "ports"))
    assert any(":8080:8080" in port or port.startswith("8080:8080") for port in ports), ports
