from __future__ import annotations

import pytest

from balance_ledger.cli import main


@pytest.fixture
def balance(database_url: str, capsys: pytest.CaptureFixture[str]):
    """Run ``balance --database-url … ARGS`` in-process; return (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exited:
            main(["--database-url", database_url, *args])
        out, err = capsys.readouterr()
        return exited.value.code, out, err

    return run
