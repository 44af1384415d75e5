"""The status page rendered by headless Chromium: against a stub, then on a running pipeline.

Chromium's own ``--dump-dom`` gives the document after the page's script ran (virtual time lets
its polling run without waiting in real time), and ``--screenshot`` keeps a picture of the page
as a test artifact (``build/test-artifacts``, or ``TIDEGATE_ARTIFACTS_DIR``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.pipeline import STAGE_NAMES, produce, running_pipeline, wait_until_healthy
from tidegate.example.stream import example_messages
from tidegate.monitoring.page import status_page
from tidegate.settings import Settings

pytestmark = pytest.mark.integration

LEVELS = {"NORMAL", "WARNING", "CRITICAL", "EMERGENCY"}
HOSTILE = '<img src=x onerror="document.title=1">'
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


class Dom(HTMLParser):
    """The rendered document: text under each id, stage rows, chart polylines with points."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.stage_rows: list[str] = []
        self.lines: dict[str, list[str]] = {}
        self.tags: set[str] = set()
        self.visible = ""
        self._open: list[tuple[str, str | None]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.add(tag)
        if tag == "tr" and found.get("data-stage"):
            self.stage_rows.append(str(found["data-stage"]))
        chart = next((i for t, i in reversed(self._open) if i and i.startswith("chart-")), None)
        if tag == "polyline" and chart and found.get("points"):
            self.lines.setdefault(chart, []).append(str(found["points"]))
        if tag not in VOID:
            self._open.append((tag, found.get("id")))
            if found.get("id"):
                self.text.setdefault(str(found["id"]), "")

    def handle_endtag(self, tag: str) -> None:
        if any(open_tag == tag for open_tag, _ in self._open):
            while self._open.pop()[0] != tag:
                pass

    def handle_data(self, data: str) -> None:
        if not self._open or self._open[-1][0] not in ("script", "style"):
            self.visible += data
        for _, element in self._open:
            if element:
                self.text[element] += data


def _chromium(url: str, tmp: Path, *flags: str) -> str:
    """Chromium's standard output; a script error the page logged fails the test."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "headless Chromium is needed: ./dev test installs Debian's chromium"
    command = [binary, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
               f"--user-data-dir={tmp / 'chromium-profile'}", "--virtual-time-budget=5000",
               "--enable-logging=stderr", "--v=0",
               *flags, url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line], "\n".join(console)
    return done.stdout


def render(url: str, tmp: Path) -> Dom:
    """The page's DOM after its script polled a couple of times; no section failed to draw."""
    dom = Dom(_chromium(url, tmp, "--dump-dom"))
    assert "cannot show this" not in dom.visible, dom.visible
    return dom


def screenshot(url: str, tmp: Path, name: str) -> Path:
    root = Path(__file__).resolve().parents[2]
    folder = Path(os.environ.get("TIDEGATE_ARTIFACTS_DIR") or root / "build" / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.unlink(missing_ok=True)
    _chromium(url, tmp, f"--screenshot={path}", "--window-size=1400,1800")
    return path


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())


@contextmanager
def stub_monitoring(status: dict[str, Any], history: dict[str, Any]) -> Iterator[str]:
    """The page, ``/status`` and ``/history`` from fixed data, on a loopback port."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            body, kind = {"/": (status_page(), "text/html"),
                          "/status": (json.dumps(status), "application/json"),
                          "/history": (json.dumps(history), "application/json")
                          }.get(path, ("", "text/plain"))
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", kind)
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _full_status() -> dict[str, Any]:
    stage = {"state": "up", "instances": ["i-1"], "records_in": 10, "records_out": 9,
             "dead_lettered": 1, "errors": 0, "dead_letters_by_code": {HOSTILE: 1}, "lag": 3,
             "latency_p50_ms": 1.5, "latency_p99_ms": 9.0, "mode": HOSTILE, "paused": True,
             "pause_reason": HOSTILE, "breakers": {"model": "open"}, "model_version": "v1"}
    return {
        "time": time.time(), "stages": {name: dict(stage) for name in STAGE_NAMES},
        "predictions": {"total": 9, "flagged": 1, "by_path": {"primary": 8, HOSTILE: 1}},
        "crisis": {"system": "CRITICAL", "stages": {"inference": "CRITICAL"}},
        "alerts": [{"key": "a", "severity": "CRITICAL", "stage": "inference", "kind": "errors",
                    "message": HOSTILE, "status": "active", "since": time.time(),
                    "details": {}}],
        "drift": {"version": "v1", "events": 500, "features": {"amount": {"psi": 0.4, "ks": 0.2}},
                  "score": {"psi": 0.1, "ks": 0.05}, "drifted": ["amount"]},
        "accuracy": {"v1": {"labelled": 80, "accuracy": 0.9, "precision": 0.5, "recall": 0.4,
                            "brier": 0.07, "ece": 0.02}},
        "actions": [{"time": time.time(), "target": "inference", "action": "degrade",
                     "reason": HOSTILE}],
    }


def test_the_page_renders_every_section_and_shows_data_only_as_text(tmp_path: Path) -> None:
    now = time.time()
    history = {"size": 720, "points": [
        {"time": now - 4 + i, "predictions_per_s": None if i == 0 else 100.0 * i,
         "dead_letters_per_s": None if i == 0 else 1.0, "latency_p99_ms": {"ingest": 5.0 + i},
         "lag": {"ingest": i}, "level": "CRITICAL"} for i in range(4)]}
    with stub_monitoring(_full_status(), history) as url:
        dom = render(url, tmp_path)
    assert dom.text["crisis-level"].strip() == "CRITICAL"
    assert dom.stage_rows == list(STAGE_NAMES)
    assert "img" not in dom.tags, "data was parsed as markup"
    for section in ("stages", "predictions", "alerts", "actions", "dead-letters"):
        assert HOSTILE in dom.text[section], section
    assert "amount" in dom.text["drift"] and "0.4" in dom.text["drift"]
    assert "0.9" in dom.text["accuracy"] and "80" in dom.text["accuracy"]
    assert {"chart-throughput", "chart-latency", "chart-lag"} <= set(dom.lines)

    bare = {"time": now, "stages": {"ingest": {"state": "up"}}, "predictions": {}}
    with stub_monitoring(bare, {"points": []}) as url:
        dom = render(url, tmp_path)
    assert dom.text["crisis-level"].strip() == "UNKNOWN"
    assert dom.stage_rows == ["ingest"]
    for section in ("alerts", "drift", "actions"):
        assert "not reported yet" in dom.text[section], section
    assert "no data yet" in dom.text["chart-throughput"]


def _scrape(url: str) -> dict[str, dict[tuple[str, ...], float]]:
    """Samples of the text format and of OpenMetrics, parsed by prometheus-client's own parsers;
    the two must hold the same families. By family: label values (histograms: stage, le) to
    value."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        assert reply.headers.get_content_type() == "text/plain"
        text = reply.read().decode()
    request = urllib.request.Request(url, headers={"Accept": "application/openmetrics-text"})
    with urllib.request.urlopen(request, timeout=5) as reply:
        assert reply.headers.get_content_type() == "application/openmetrics-text"
        openmetrics = reply.read().decode()
    assert openmetrics.endswith("# EOF\n")
    families: dict[str, dict[tuple[str, ...], float]] = {}
    for family in text_string_to_metric_families(text):
        samples = families.setdefault(family.name, {})
        for sample in family.samples:
            if family.type == "histogram" and not sample.name.endswith("_bucket"):
                continue
            samples[tuple(v for k, v in sorted(sample.labels.items(), key=_label_order))] = (
                sample.value)
    # OpenMetrics has an info type; the text format serves it as a gauge named ..._info
    assert {f.name + ("_info" if f.type == "info" else "")
            for f in parse_openmetrics(openmetrics)} == set(families)
    return families


def _label_order(item: tuple[str, str]) -> tuple[int, str]:
    return (1 if item[0] == "le" else 0, "" if item[0] == "stage" else item[0])


def test_the_page_of_a_running_pipeline_in_headless_chromium(pipeline_settings: Settings,
                                                             tmp_path: Path) -> None:
    base = f"http://{pipeline_settings.status_host}:{pipeline_settings.status_port}/"
    messages = list(example_messages(3000, seed=21, bad_rate=0.05, events_per_second=20_000))
    with running_pipeline(pipeline_settings):
        wait_until_healthy(pipeline_settings)
        for chunk in range(0, len(messages), 500):  # spread over a few seconds for the charts
            produce(pipeline_settings, messages[chunk:chunk + 500])
            time.sleep(0.5)
        deadline = time.monotonic() + 90
        while True:
            status, history = _get(base + "status"), _get(base + "history")
            rates = [p["predictions_per_s"] for p in history["points"]]
            if status["predictions"]["total"] > 0 and any(rates) and len(rates) >= 3:
                break
            assert time.monotonic() < deadline, f"no predictions in the history: {rates}"
            time.sleep(0.5)
        middle = history["points"][len(rates) // 2]["time"]
        newer = _get(base + f"history?since={middle}")["points"]
        assert newer and all(point["time"] > middle for point in newer)
        scraped = _scrape(base + "metrics")
        with urllib.request.urlopen(base + "status.html", timeout=5) as reply:
            assert reply.headers.get_content_type() == "text/html"
            assert b'<table id="stages">' in reply.read()
        began = time.monotonic()
        dom = render(base, tmp_path)
        rendered = time.monotonic() - began
        began = time.monotonic()
        picture = screenshot(base, tmp_path, "status-page.png")
        pictured = time.monotonic() - began

    assert dom.stage_rows[:5] == list(STAGE_NAMES)
    assert scraped["tidegate_events"][("inference", "out")] > 0
    assert scraped["tidegate_events"][("ingest", "in")] >= scraped["tidegate_events"][
        ("ingest", "out")] > 0
    assert scraped["tidegate_batch_duration_seconds"][("inference", "+Inf")] > 0
    assert set(scraped["tidegate_stage_up"]) >= {(stage,) for stage in STAGE_NAMES}
    level = dom.text["crisis-level"].strip()
    assert level in (LEVELS if "crisis" in status else {"UNKNOWN"}), level
    assert any(points.count(",") >= 2 for lines in dom.lines.values() for points in lines), (
        f"no chart has a line: {dom.lines}")
    assert "total" in dom.text["predictions"] and "path primary" in dom.text["predictions"]
    assert picture.stat().st_size > 20_000, f"{picture} is only {picture.stat().st_size} bytes"
    print(f"\nstatus page: DOM in {rendered:.1f} s, screenshot in {pictured:.1f} s -> {picture}")
