"""The soak's bookkeeping: RSS growth, its verdict, conservation, the report and the arguments."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from tidegate.cli.endurance import (
    baseline_seconds,
    conservation,
    conserved,
    growth,
    render,
    verdict,
)
from tidegate.cli.main import cli, main

pytestmark = pytest.mark.unit


def samples() -> list[dict[str, Any]]:
    return [{"t": t, "rss_mb": {"ingest": 100.0 + t / 60, "inference": 200.0 + t / 10}}
            for t in range(10, 1810, 10)]


def test_growth_runs_from_the_first_sample_at_the_baseline_to_the_last() -> None:
    figures = growth(samples(), since=300.0)
    assert figures["ingest"]["from_t"] == 300 and figures["ingest"]["to_t"] == 1800
    assert figures["ingest"]["start_mb"] == pytest.approx(105.0)
    assert figures["ingest"]["growth_mb"] == pytest.approx(25.0)
    assert figures["ingest"]["growth"] == pytest.approx(25.0 / 105.0)
    assert figures["inference"]["growth"] == pytest.approx(150.0 / 230.0)


def test_growth_without_a_sample_after_the_baseline_is_empty() -> None:
    assert growth(samples()[:5], since=300.0) == {}


def test_growth_over_a_single_sample_is_not_measured() -> None:
    only = [s for s in samples() if s["t"] <= 300.0]
    assert only[-1]["t"] >= 300.0
    assert growth(only, since=300.0) == {}


def test_short_runs_measure_from_after_one_minute() -> None:
    assert baseline_seconds(30) == 300.0
    assert baseline_seconds(6) == 300.0
    assert baseline_seconds(5.9) == 60.0


def test_the_verdict_wants_every_stage_under_ten_percent() -> None:
    flat = {"ingest": {"growth": 0.02}, "feature": {"growth": 0.099}}
    assert verdict(flat)
    assert not verdict({**flat, "inference": {"growth": 0.10}})
    assert not verdict({})


def test_conservation_counts_lost_duplicated_and_unknown() -> None:
    produced = np.array([1, 2, 3, 4], dtype=np.uint64)
    assert conservation(produced, np.array([4, 3, 2, 1], dtype=np.uint64)) == {
        "produced": 4, "once": 4, "lost": 0, "duplicated": 0, "unknown_outcomes": 0}
    assert conservation(produced, np.array([1, 2, 2, 9], dtype=np.uint64)) == {
        "produced": 4, "once": 1, "lost": 2, "duplicated": 1, "unknown_outcomes": 1}
    assert conservation(produced, np.array([], dtype=np.uint64))["lost"] == 4


def report(short: bool = False, lost: int = 0) -> dict[str, Any]:
    figures = growth(samples(), since=60.0 if short else 300.0)
    return {"minutes": 2 if short else 30, "rate": 5000.0, "sent": 9_000_000,
            "sent_per_s": 4998.0, "out_per_s": 4990.0,
            "outcomes": {"predictions": 9_000_000 - lost, "dlq.ingest": 0},
            "short": short, "growth": figures, "growth_ok": verdict(figures),
            "conservation": {"produced": 9_000_000, "once": 9_000_000 - lost, "lost": lost,
                             "duplicated": 0, "unknown_outcomes": 0}}


def test_the_report_names_each_stage_its_growth_and_the_verdicts() -> None:
    text = render(report())
    assert "from minute 5" in text
    assert "ingest: 105 -> 130 MB (+25.0 MB, +23.8%, 300-1800 s): over" in text
    assert "growth: NOT met" in text
    assert "conservation: 9,000,000 of 9,000,000 exactly once" in text and "passed" in text
    assert conserved(report())


def test_the_report_of_a_short_run_says_where_growth_starts() -> None:
    text = render(report(short=True, lost=3))
    assert "after one minute" in text and "not from minute 5" in text
    assert "lost 3" in text and "FAILED" in text
    assert not conserved(report(short=True, lost=3))


@pytest.mark.parametrize("args", [["--minutes", "0"], ["--minutes", "-1"], ["--rate", "0"],
                                  ["--rate", "-5"], ["--minutes", "abc"]])
def test_bad_arguments_are_one_line_and_a_non_zero_exit(
        args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["soak", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    result = CliRunner().invoke(cli, ["soak", *args])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_help_gives_the_default_rate() -> None:
    result = CliRunner().invoke(cli, ["soak", "--help"])
    assert result.exit_code == 0 and "7500" in result.output and "--json" in result.output
