"""The ``tidegate`` command. Every expected failure is one line on stderr and a non-zero exit."""

from __future__ import annotations

import sys

import click

from tidegate.cli.bench import bench
from tidegate.cli.broker import broker
from tidegate.cli.control import control
from tidegate.cli.data import produce, tail
from tidegate.cli.dlq import dlq
from tidegate.cli.model import model
from tidegate.cli.soak import soak
from tidegate.cli.stage import stage
from tidegate.cli.topics import topics
from tidegate.cli.up import init, status, up
from tidegate.errors import ConfigError, TidegateError

__all__ = ["cli", "main"]

EXIT_ERROR = 1
EXIT_USAGE = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tidegate")
def cli() -> None:
    """tidegate: a fault-isolated ML scoring pipeline on Apache Kafka."""


cli.add_command(broker)
cli.add_command(topics)
cli.add_command(stage)
for _command in (init, up, status, produce, tail, dlq, model, bench, soak, control):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; turn usage and tidegate errors into one line and an exit code."""
    try:
        result = cli.main(args=argv, prog_name="tidegate", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        return EXIT_USAGE
    except click.UsageError as exc:
        where = f"{exc.ctx.command_path}: " if exc.ctx else "tidegate: "
        click.echo(f"{where}error: {exc.format_message()} (see --help)", err=True)
        return EXIT_USAGE
    except click.Abort:
        click.echo("tidegate: aborted", err=True)
        return 130
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except ConfigError as exc:
        click.echo(f"tidegate: error: {exc}", err=True)
        return EXIT_USAGE
    except TidegateError as exc:
        click.echo(f"tidegate: error: {exc}", err=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
