"""Signed control commands without a broker: signing, the gate's refusals, the settings."""

from __future__ import annotations

from typing import Any

import pytest

from tidegate.cli.up import control_line
from tidegate.control import command
from tidegate.errors import ConfigError
from tidegate.runtime.backpressure import LagValve
from tidegate.runtime.guard import DeadLetterGuard
from tidegate.runtime.steering import Received, Steering, refusal_audit
from tidegate.settings import load_settings
from tidegate.signing import CommandGate, ControlKeys, sign

pytestmark = pytest.mark.unit

NEW = "k2:new-secret-0123456789"
OLD = "k1:old-secret-0123456789"
KEYS = ControlKeys.parse(f"{NEW},{OLD}")


def _signed(keys: ControlKeys = KEYS, **changes: Any) -> dict[str, Any]:
    record = command("inference", "degrade", parameters={"to": "fallback"}, reason="errors",
                     issuer="alice")
    return sign({**record, **changes}, keys)


def _check(gate: CommandGate, record: dict[str, Any], *, offset: int = 5,
           logged_ms: int | None = None) -> str | None:
    logged = record["time"] if logged_ms is None else logged_ms
    rejection = gate.check(record, offset=offset, logged_ms=logged)
    return None if rejection is None else rejection.reason


def test_a_signed_command_passes_and_names_the_first_key() -> None:
    record = _signed()
    assert record["key_id"] == "k2" and len(record["signature"]) == 64
    assert _check(CommandGate(KEYS), record) is None


@pytest.mark.parametrize("field,value", [
    ("reason", "other"), ("issuer", "mallory"), ("action", "restore"), ("target", "ingest"),
    ("parameters", {"to": "static"}), ("time", 1), ("id", "x"), ("key_id", "k1"),
])
def test_a_changed_field_is_forged(field: str, value: Any) -> None:
    record = {**_signed(), field: value}
    assert _check(CommandGate(KEYS), record, logged_ms=_signed()["time"]) == "forged"


def test_unsigned_and_unknown_keys_are_refused_and_counted() -> None:
    gate = CommandGate(KEYS)
    unsigned = sign(command("ingest", "pause", reason="r", issuer="a"), ControlKeys())
    assert unsigned["signature"] is None
    assert _check(gate, unsigned) == "unsigned"
    stranger = _signed(ControlKeys.parse("k9:someone-elses-secret"))
    assert _check(gate, stranger) == "unknown-key"
    assert gate.rejected == {"unsigned": 1, "unknown-key": 1}


def test_a_rotated_out_key_still_verifies_while_it_is_listed() -> None:
    by_old = _signed(ControlKeys.parse(OLD))
    assert by_old["key_id"] == "k1"
    assert _check(CommandGate(KEYS), by_old) is None
    assert _check(CommandGate(ControlKeys.parse(NEW)), by_old) == "unknown-key"


def test_age_is_judged_against_the_brokers_stamp_both_ways() -> None:
    gate = CommandGate(KEYS, max_age=60.0)
    record = _signed()
    assert _check(gate, record, logged_ms=record["time"] + 59_000) is None
    late = _signed()
    assert _check(gate, late, logged_ms=late["time"] + 61_000) == "expired"
    early = _signed()
    assert _check(gate, early, logged_ms=early["time"] - 61_000) == "expired"


def test_an_id_again_at_another_offset_is_a_replay_at_the_same_a_redelivery() -> None:
    gate = CommandGate(KEYS)
    record = _signed()
    assert _check(gate, record, offset=3) is None
    assert _check(gate, record, offset=3) is None  # read again after a restart or rebalance
    assert _check(gate, record, offset=9) == "replayed"


def test_without_keys_every_command_passes_as_before() -> None:
    gate = CommandGate(ControlKeys())
    assert _check(gate, {**_signed(), "signature": "00"}) is None
    assert _check(gate, sign(command("ingest", "pause", reason="r", issuer="a"),
                             ControlKeys())) is None


@pytest.mark.parametrize("text,message", [
    ("short", "shorter than 16"), ("bad id:0123456789abcdefgh", "key id"),
    ("a:0123456789abcdefgh,a:0123456789abcdefgh", "twice"), (":0123456789abcdefgh", "key id"),
])
def test_a_malformed_key_is_a_one_line_config_error(
        text: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDEGATE_CONTROL_KEY", text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings()
    assert str(caught.value).startswith("invalid setting TIDEGATE_CONTROL_KEY: ")
    assert "\n" not in str(caught.value) and "Value error" not in str(caught.value)


def test_a_bare_secret_is_the_default_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDEGATE_CONTROL_KEY", "0123456789abcdefgh")
    settings = load_settings()
    assert settings.control_keys.ids == ("default",)
    assert "0123456789abcdefgh" not in repr(settings)  # a secret, not shown in a dump


def _steering(keys: ControlKeys) -> Steering:
    guard = DeadLetterGuard(threshold=0.5, window=10.0, minimum=10, wait=5.0)
    return Steering("inference", guard=guard, valve=LagValve(high=10, low=2),
                    gate=CommandGate(keys))


def test_steering_keeps_its_mode_against_refused_commands() -> None:
    steering = _steering(KEYS)
    degrade = _signed()
    refused = steering.receive([Received(degrade, offset=1, logged_ms=degrade["time"])])
    assert refused == [] and steering.mode.degraded_to == "fallback"
    restore = {**sign(command("inference", "restore", reason="r", issuer="m"), KEYS),
               "reason": "tampered"}
    other = sign(command("ingest", "pause", reason="r", issuer="m"), ControlKeys())
    refused = steering.receive([Received(restore, offset=2, logged_ms=restore["time"]),
                                Received(other, offset=3, logged_ms=other["time"])])
    assert [r.reason for _, r in refused] == ["forged"]  # ingest's command is not ours to judge
    assert steering.mode.degraded_to == "fallback"
    audit = refusal_audit("inference", *refused[0])
    assert audit["kind"] == "control-refused" and audit["reason"] == "forged"
    assert audit["command"]["id"] == restore["id"] and audit["offset"] == 2
    assert "signature" not in audit["command"]


def test_status_says_whether_commands_are_authenticated() -> None:
    assert "unauthenticated" in control_line({"authenticated": False, "key_ids": [],
                                              "refused": {}})
    line = control_line({"authenticated": True, "key_ids": ["k2", "k1"],
                         "refused": {"forged": 2, "expired": 1}})
    assert line == ("control commands: signed, HMAC-SHA256 with key k2, k1; "
                    "refused: expired 1, forged 2")



def test_keygen_prints_a_key_the_setting_accepts() -> None:
    from click.testing import CliRunner

    from tidegate.cli.control import control

    result = CliRunner().invoke(control, ["keygen", "--id", "k7"])
    assert result.exit_code == 0
    assert ControlKeys.parse(result.output.strip()).ids == ("k7",)
    refused = CliRunner().invoke(control, ["keygen", "--id", "bad id"])
    assert refused.exit_code != 0 and "key id" in str(refused.exception)
