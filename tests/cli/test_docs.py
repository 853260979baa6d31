"""Docs are part of the product: every CLI command and option appears in the README."""

from __future__ import annotations

from pathlib import Path

import typer.main

from balance_ledger.cli import app

README = (Path(__file__).parents[2] / "README.md").read_text()


def _commands(group, prefix: str = "balance"):
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        if hasattr(command, "commands"):
            yield from _commands(command, path)
        else:
            yield path, command


def test_every_cli_command_and_option_is_in_the_readme():
    for path, command in _commands(typer.main.get_command(app)):
        row = next((line for line in README.splitlines() if f"`{path}" in line), None)
        assert row is not None, f"{path} is not documented in README.md"
        for param in command.params:
            for option in param.opts:
                if option.startswith("--") and option != "--help":
                    assert option in row, f"{path} {option} is not documented in README.md"
