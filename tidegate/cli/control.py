"""``tidegate control ...``: degrade, restore, pause, resume, shed and threshold, with a reason;
``ls`` the commands in force, ``keygen`` a key to sign them with.

Example::

    tidegate control threshold 0.35 --reason "fewer missed frauds this week"
"""

from __future__ import annotations

import getpass
import secrets

import click

from tidegate.codec import Codec
from tidegate.control import SYSTEM, command
from tidegate.kafka.clients import client_config
from tidegate.kafka.scan import read_topic
from tidegate.models.lifecycle import issue_command
from tidegate.settings import load_settings
from tidegate.signing import ControlKeys
from tidegate.topics import DATA_STAGES, by_key

__all__ = ["control"]

_STAGES = click.Choice([*DATA_STAGES, SYSTEM])
_REASON = click.option("--reason", required=True, help="Why: it is kept with the command.")


@click.group()
def control() -> None:
    """Issue control commands to the stages (applied idempotently, kept on the control topic)."""


def _issue(target: str, action: str, reason: str, **parameters: str) -> None:
    record = command(target, action, parameters=parameters, reason=reason,
                     issuer=getpass.getuser())
    issue_command(load_settings(), record)
    details = " ".join(f"{k}={v}" for k, v in parameters.items())
    click.echo(f"{action} {target} {details}".rstrip() + f" (id {record['id']})")


@control.command()
@click.argument("stage", type=click.Choice(["inference", "feature"]))
@click.option("--to", "to", help="inference: fallback (default) or static; feature: imputed.")
@_REASON
def degrade(stage: str, to: str | None, reason: str) -> None:
    """Move STAGE to a degraded mode: inference to the fallback model or the static answer."""
    _issue(stage, "degrade", reason, **({"to": to} if to else {}))


@control.command()
@click.argument("stage", type=click.Choice(["inference", "feature"]))
@_REASON
def restore(stage: str, reason: str) -> None:
    """Undo a degrade: STAGE back to its normal path."""
    _issue(stage, "restore", reason)


@control.command()
@click.argument("stage", type=_STAGES)
@_REASON
def pause(stage: str, reason: str) -> None:
    """Stop STAGE consuming; its input waits safely in Kafka."""
    _issue(stage, "pause", reason)


@control.command()
@click.argument("stage", type=_STAGES)
@_REASON
def resume(stage: str, reason: str) -> None:
    """Let a paused STAGE consume again."""
    _issue(stage, "resume", reason)


@control.command()
@click.option("--share", type=click.FloatRange(0, 1), required=True,
              help="Share of events answered at ingest with a prediction marked shed (0 stops).")
@_REASON
def shed(share: float, reason: str) -> None:
    """Shed load at ingest: a sampled share of events gets a shed prediction, not a model."""
    _issue("ingest", "shed", reason, share=f"{share:g}")


@control.command()
@click.argument("value", type=click.FloatRange(0, 1))
@_REASON
def threshold(value: float, reason: str) -> None:
    """Flag predictions of the primary model at score >= VALUE instead of the model's own
    threshold (the fallback keeps its own: its scores are calibrated differently)."""
    _issue("inference", "threshold", reason, value=f"{value:g}")


@control.command(name="ls")
def ls() -> None:
    """The commands in force: the newest per stage and aspect."""
    settings = load_settings()
    codec = Codec(registry_url=settings.schema_registry_url)
    latest: dict[bytes, dict[str, object]] = {}
    for message in read_topic(client_config(settings), by_key("control").name(
            settings.topic_prefix)):
        latest[message.key() or b""] = codec.decode(message.value() or b"")
    if not latest:
        click.echo("no commands: every stage runs normally")
    for key, record in sorted(latest.items()):
        signed = f"signed {record['key_id']}" if record.get("signature") else "unsigned"
        click.echo(f"{key.decode():22} {record['action']:8} {record['parameters'] or ''} "
                   f"by {record['issuer']} ({signed}): {record['reason']}")


@control.command()
@click.option("--id", "key_id", default="k1", show_default=True,
              help="The key id, named in every command it signs (a new one for a rotation).")
def keygen(key_id: str) -> None:
    """Print a new random control key, as TIDEGATE_CONTROL_KEY takes it (ID:SECRET).

    For a rotation, put the new key in front of the old one (NEW,OLD) in every process, then
    drop the old one once no command signed with it is needed any more.
    """
    key = f"{key_id}:{secrets.token_urlsafe(32)}"
    ControlKeys.parse(key)  # the id's characters, as the setting checks them
    click.echo(key)
