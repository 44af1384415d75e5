"""The shipped operations files under deploy/ validate with real tools, against the real metrics.

- Prometheus rules: ``promtool check rules``, and ``promtool test rules`` on
  alerts.test.yml, where Prometheus's own rule engine makes every alert fire on a few series.
- Grafana: every panel's query parses as PromQL (promtool, as recording rules) and, like every
  alert rule, names only metrics and labels the monitoring stage serves, found by scraping the
  real ``metrics_registry`` over a populated status board.
- Kubernetes: in test_deploy_kubernetes.py (schemas, KEDA, cross-checks with the code).

promtool comes from Debian's prometheus package, installed by ``./dev test``; missing, the tests
fail and say so.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_status import T0, health
from tidegate.monitoring.exposition import metrics_registry
from tidegate.monitoring.status import StatusBoard
from tidegate.runtime.metrics import StageMetrics
from tidegate.topics import STAGE_ORDER

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "tidegate.json"
# labels a scrape adds to every series; `up` and friends are not used, so no built-in metric
TARGET_LABELS = frozenset({"job", "instance"})
# findings of promtool's linter on the scraped exposition that are accepted: none
KNOWN_LINT: frozenset[str] = frozenset()
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$stage": ".*"}


def promtool_path() -> str:
    """promtool on PATH; missing, the test fails and says how to get it."""
    executable = shutil.which("promtool")
    if executable is None:
        pytest.fail("promtool is not on PATH; it validates deploy/prometheus. Install Debian's "
                    "prometheus package (./dev test does): apt-get install prometheus",
                    pytrace=False)
    return executable


def promtool(*args: str, cwd: Path = ROOT) -> str:
    """Run promtool; a failed check fails the test with its output."""
    done = subprocess.run([promtool_path(), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def served() -> dict[str, frozenset[str]]:
    """Every sample name /metrics serves, with its label names, from a board where every
    family has samples: all stages reporting, dead letters, breakers, a model, a crisis."""
    board = StatusBoard(stale_after=10.0)
    for stage in STAGE_ORDER:
        metrics = StageMetrics(stage=stage, instance=f"{stage}-1")
        metrics.record_timing(100, handle_s=0.01, deliver_s=0.01)
        board.on_health({**metrics.snapshot(lag=3), **health(
            stage, records_in=10, dead_lettered=1, dead_letters_by_code={"BAD_MAGIC": 1},
            breakers={"dead-letters": "closed", "model:primary": "open"},
            model_version="v1", latency_p99_ms=5.0)}, now=T0)
    board.on_predictions([{"path": "primary", "label": True}])
    crisis = {"system": "WARNING", "stages": {"inference": "WARNING"}}
    text = generate_latest(metrics_registry(
        lambda: {**board.snapshot(now=T0 + 1), "crisis": crisis},
        board.batch_durations)).decode()
    # Prometheus's own linter reads the exposition the rules and panels are checked against
    linted = subprocess.run([promtool_path(), "check", "metrics"], input=text, text=True,
                            capture_output=True, timeout=60, check=False)
    problems = set((linted.stdout + linted.stderr).splitlines()) - KNOWN_LINT - {""}
    assert linted.returncode in (0, 3) and not problems, f"promtool check metrics: {problems}"
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    assert "tidegate_batch_duration_seconds_bucket" in labels, "the histogram served no bucket"
    return {name: frozenset(names) for name, names in labels.items()}


def check_served(expr: str, served: dict[str, frozenset[str]]) -> None:
    """``expr`` names only served metrics, and only labels those metrics (or a scrape) carry."""
    names = set(re.findall(r"\btidegate_[A-Za-z0-9_:]*", expr))
    assert names, f"no tidegate metric in {expr!r}"
    unknown = names - served.keys()
    assert not unknown, f"{sorted(unknown)} not served by /metrics, in {expr!r}"
    allowed = TARGET_LABELS.union(*(served[name] for name in names))
    used = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"", expr))
    for clause in re.findall(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)", expr):
        used.update(label.strip() for label in clause.split(",") if label.strip())
    assert used <= allowed, f"labels {sorted(used - allowed)} not on {sorted(names)}: {expr!r}"


def rules() -> Iterator[dict[str, Any]]:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        yield from group["rules"]


def dashboard_targets() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            yield panel, target


def test_promtool_accepts_the_rules_and_the_scrape_example() -> None:
    assert "SUCCESS" in promtool("check", "rules", str(RULES))
    # the scrape example loads the rules file beside it, so this checks both together
    assert "SUCCESS" in promtool("check", "config", str(DEPLOY / "prometheus" / "scrape.yml"))


def test_every_alert_fires_in_prometheus_own_rule_evaluation() -> None:
    promtool("test", "rules", "alerts.test.yml", cwd=DEPLOY / "prometheus")
    cases = yaml.safe_load((DEPLOY / "prometheus" / "alerts.test.yml").read_text())["tests"]
    firing = {check["alertname"] for case in cases for check in case["alert_rule_test"]
              if check.get("exp_alerts")}
    assert firing == {rule["alert"] for rule in rules()}, "an alert no test makes fire"


def test_alert_rules_query_only_served_metrics(served: dict[str, frozenset[str]]) -> None:
    for rule in rules():
        if rule["expr"].startswith("absent("):
            assert rule["expr"] == "absent(tidegate_stage_up)"
        check_served(rule["expr"], served)


def test_every_alert_has_a_severity_kind_and_runbook_that_exist() -> None:
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
               for line in runbooks.splitlines() if line.startswith("#")}
    kinds = set(re.findall(r"^\| `([a-z_]+)` \| `", runbooks, flags=re.MULTILINE))
    assert {"liveness", "breaker", "lag_trend"} <= kinds, "the runbook's kind table moved"
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical", "emergency"), rule["alert"]
        assert rule["labels"].get("kind", "liveness") in kinds, rule["alert"]
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert path == "docs/runbooks.md" and anchor in anchors, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_dashboard_queries_only_served_metrics_through_the_datasource_variable(
        served: dict[str, frozenset[str]]) -> None:
    board = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    exprs = []
    for panel, target in dashboard_targets():
        for holder in (panel, target):
            assert holder["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        check_served(target["expr"], served)
        exprs.append(target["expr"])
    shown = set(re.findall(r"\btidegate_[A-Za-z0-9_]*", " ".join(exprs)))
    assert {"tidegate_events_total", "tidegate_batch_duration_seconds_bucket",
            "tidegate_event_latency_seconds", "tidegate_dead_letters_total",
            "tidegate_consumer_lag_records", "tidegate_breaker_state", "tidegate_crisis_level",
            "tidegate_model_info"} <= shown


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """Prometheus's own parser reads every panel query, as a recording rule, once Grafana's
    variables are replaced by what Grafana would put there."""
    records = []
    for number, (_, target) in enumerate(dashboard_targets()):
        expr = target["expr"]
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"a Grafana variable the test does not know: {expr!r}"
        records.append({"record": f"dashboard:query_{number}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    assert f"SUCCESS: {len(records)} rules found" in promtool("check", "rules", str(path))


def test_dashboard_has_a_panel_for_each_concern() -> None:
    titles = " | ".join(panel["title"].lower() for panel in json.loads(DASHBOARD.read_text())
                        ["panels"])
    for concern in ("events per second", "batch duration", "event latency", "dead letters",
                    "lag", "breaker", "crisis", "model version"):
        assert concern in titles, f"no panel for {concern}"
