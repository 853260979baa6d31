"""verify-chain and anchor-chains: output and exit codes (0 intact, 1 broken, 2 error)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import update

from balance_ledger.cli import main
from balance_ledger.db.tables import user_balance_transactions as ledger
from tests.conftest import append_only_lifted


@pytest.fixture
def ledger_rows(svc, account_factory) -> list[int]:
    user_id = account_factory(balance=1_000).user_id
    return [svc.charge_service(user_id, 10 * n, "vps").id for n in (1, 2, 3)]


def test_verify_chain_of_an_intact_ledger_exits_0(balance, ledger_rows):
    code, out, _ = balance("verify-chain")
    assert code == 0
    assert "4 rows of 1 accounts" in out
    assert "every chain verifies" in out


def test_verify_chain_names_the_user_and_row_and_exits_1(balance, svc, ledger_rows):
    with append_only_lifted(svc.engine) as conn:
        conn.execute(update(ledger).where(ledger.c.id == ledger_rows[1]).values(description="x"))
    code, out, _ = balance("verify-chain", "--json")
    assert code == 1
    breaks = json.loads(out)["breaks"]
    assert [(b["user_id"], b["transaction_id"]) for b in breaks] == [(1, ledger_rows[1])]
    code, out, _ = balance("verify-chain", "--user-id", "1")
    assert code == 1
    assert f"broken at row {ledger_rows[1]}" in " ".join(out.split())


def test_verify_chain_of_an_unknown_database_exits_2(capsys, tmp_path):
    with pytest.raises(SystemExit) as exited:
        main(["--database-url", f"sqlite:///{tmp_path / 'none.db'}", "verify-chain"])
    assert exited.value.code == 2
    assert "balance db upgrade" in capsys.readouterr().err


def test_anchor_chains_prints_the_digest_then_nothing_to_anchor(balance, ledger_rows):
    code, out, _ = balance("anchor-chains", "--json")
    assert code == 0
    digest = json.loads(out)
    assert (digest["accounts"], len(digest["digest"])) == (1, 64)
    code, out, _ = balance("anchor-chains")
    assert (code, "nothing to anchor" in out) == (0, True)
    code, out, _ = balance("verify-chain", "--json")
    assert (code, json.loads(out)["anchors"]) == (0, 1)
