"""The path of one ``balance charge``: the project's calls from the command to the SQL.

Runs ``balance charge`` on a fresh SQLite database and prints

- the project's frames on the stack when the ledger row's INSERT is executed, outermost
  first: how deep a newcomer has to read to find where a charge happens;
- every project function the command called between its start and its exit, in order of
  first call, with the modules they live in.

No timing: the figures are counts, the same on every run of the same build.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from balance_ledger import BalanceService
from balance_ledger.cli import app

PACKAGE = Path(sys.modules["balance_ledger"].__file__ or "").parent


def _ours(filename: str) -> str | None:
    path = Path(filename)
    if PACKAGE not in path.parents:
        return None
    return str(path.relative_to(PACKAGE))


def main(argv: list[str]) -> None:
    argparse.ArgumentParser(prog="python -m bench callpath", description=__doc__).parse_args(argv)
    url = f"sqlite:///{tempfile.mkdtemp(prefix='balance-callpath-')}/ledger.db"
    with BalanceService.from_url(url) as svc:
        svc.create_schema()
        svc.open_account(1)
        svc.recharge(1, 1_000)

    at_insert: list[str] = []

    @event.listens_for(Engine, "before_cursor_execute")
    def _seen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO USER_BALANCE_TRANSACTIONS"):
            at_insert[:] = [
                f"{module}:{frame.name}"
                for frame in traceback.extract_stack()
                if (module := _ours(frame.filename))
            ]

    called: dict[str, None] = {}

    def _profile(frame: FrameType, kind: str, _arg: object) -> None:
        if kind == "call" and (module := _ours(frame.f_code.co_filename)):
            called.setdefault(f"{module}:{frame.f_code.co_qualname}", None)

    sys.setprofile(_profile)
    try:
        result = CliRunner().invoke(app, ["--database-url", url, "charge", "1", "250", "vps"])
    finally:
        sys.setprofile(None)
        event.remove(Engine, "before_cursor_execute", _seen)
    if result.exit_code != 0:
        sys.exit(f"balance charge failed: {result.output}")
    modules = {name.split(":")[0] for name in at_insert}
    print(f"stack at the ledger INSERT: {len(at_insert)} frames in {len(modules)} modules")
    for name in at_insert:
        print(f"  {name}")
    touched = {name.split(":")[0] for name in called}
    print(f"project functions called by `balance charge`: {len(called)} in {len(touched)} modules")
    for module in sorted(touched):
        names = [name.split(":")[1] for name in called if name.startswith(module + ":")]
        print(f"  {module}: {', '.join(names)}")
