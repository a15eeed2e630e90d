"""Run several vidfeat commands in one Python process, one after the other.

Usage: python demo/batch.py COMMAND ARGS... [:: COMMAND ARGS...]...
(e.g. ``fuse eval --run A ... :: fuse eval --run B ...``: the words of ``vidfeat`` commands,
separated by ``::``). The demo trains and evaluates its fusion heads so: a head trains in
seconds and evaluates in a fraction of one once torch is imported, and importing it again would
cost ~4 s a command on 2 cores.
Stops at the first command that fails, with that command's exit code and message.
"""

from __future__ import annotations

import sys

import click

from vidfeat.cli import main


def split_commands(words: list[str]) -> list[list[str]]:
    """The commands of ``words``, cut at each ``::`` (empty commands dropped)."""
    commands: list[list[str]] = [[]]
    for w in words:
        if w == "::":
            commands.append([])
        else:
            commands[-1].append(w)
    return [c for c in commands if c]


def run(commands: list[list[str]]) -> int:
    """Each command as ``vidfeat`` runs it; the exit code of the first failure, else 0."""
    for args in commands:
        try:
            main.main(args=args, prog_name="vidfeat", standalone_mode=False)
        except click.ClickException as exc:
            exc.show()
            return exc.exit_code
        except click.exceptions.Exit as exc:
            if exc.exit_code:
                return exc.exit_code
        except click.Abort:
            click.echo("Aborted!", err=True)
            return 1
    return 0


if __name__ == "__main__":
    cmds = split_commands(sys.argv[1:])
    if not cmds:
        sys.exit("usage: python demo/batch.py COMMAND ARGS... [:: COMMAND ARGS...]...")
    sys.exit(run(cmds))
