"""Control commands and stage modes, without Kafka."""

from __future__ import annotations

import pytest

from tidegate.codec import encode
from tidegate.control import StageMode, command, command_key
from tidegate.errors import ConfigError

pytestmark = pytest.mark.unit


def test_a_command_fits_the_schema_and_is_keyed_by_target_and_aspect() -> None:
    record = command("inference", "degrade", parameters={"to": "static"}, reason="errors",
                     issuer="alice")
    assert encode("tidegate.ControlCommand", record)
    assert command_key(record) == b"inference/mode"
    assert command_key(command("inference", "pause", reason="r", issuer="a")) == b"inference/flow"


@pytest.mark.parametrize(("target", "action", "params", "reason"), [
    ("inference", "explode", {}, "r"),
    ("nowhere", "pause", {}, "r"),
    ("ingest", "degrade", {}, "r"),
    ("inference", "degrade", {"to": "imputed"}, "r"),
    ("inference", "shed", {"share": "0.5"}, "r"),
    ("ingest", "shed", {"share": "1.5"}, "r"),
    ("ingest", "shed", {"share": "lots"}, "r"),
    ("ingest", "pause", {}, "  "),
])
def test_commands_no_stage_could_apply_are_refused(target: str, action: str,
                                                   params: dict[str, str], reason: str) -> None:
    with pytest.raises(ConfigError):
        command(target, action, parameters=params, reason=reason, issuer="a")


def test_modes_follow_commands_once_each_and_only_their_own() -> None:
    mode = StageMode(stage="inference")
    degrade = command("inference", "degrade", reason="errors", issuer="a")
    assert mode.apply(degrade) and mode.label() == "fallback"
    assert not mode.apply(degrade), "a command id applies once"
    assert not mode.apply(command("feature", "degrade", reason="r", issuer="a"))
    assert mode.apply(command("system", "pause", reason="emergency", issuer="monitoring"))
    assert mode.paused and mode.label() == "fallback,paused"
    assert mode.pause_reason == "monitoring: emergency"
    assert mode.apply(command("inference", "restore", reason="fixed", issuer="a"))
    assert mode.apply(command("inference", "resume", reason="fixed", issuer="a"))
    assert mode.label() == "normal" and not mode.paused


def test_ingest_sheds_a_share() -> None:
    mode = StageMode(stage="ingest")
    mode.apply(command("ingest", "shed", parameters={"share": "0.25"}, reason="overload",
                       issuer="a"))
    assert mode.shed_share == 0.25 and mode.label() == "shed=0.25"


def test_model_commands_pin_the_version_and_threshold_of_inference_only() -> None:
    mode = StageMode(stage="inference")
    promote = command("inference", "promote", parameters={"version": "v3"}, reason="shadow ok",
                      issuer="a")
    assert command_key(promote) == b"inference/model"
    assert mode.apply(promote) and mode.model_version == "v3"
    assert mode.apply(command("inference", "rollback", parameters={"version": "v2"},
                              reason="accuracy", issuer="monitoring"))
    assert mode.model_version == "v2"
    assert mode.apply(command("inference", "threshold", parameters={"value": "0.35"},
                              reason="fewer misses", issuer="a"))
    assert mode.threshold == 0.35
    for params, action, target in (({}, "promote", "inference"), ({"version": "v1"}, "rollback",
                                   "feature"), ({"value": "2"}, "threshold", "inference")):
        with pytest.raises(ConfigError):
            command(target, action, parameters=params, reason="r", issuer="a")
