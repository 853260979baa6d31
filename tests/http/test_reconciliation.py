"""Reconciliation over HTTP: discrepancies, a verify (and fix) run, the runs' audit."""

from __future__ import annotations

from tests.http.calls import charge, open_account


def test_discrepancies_list_the_accounts_out_of_sync(client, corrupt):
    open_account(client, 1, balance=1_000)
    open_account(client, 2, balance=1_000)
    corrupt(2, balance=5)

    answer = client.get("/v1/discrepancies")

    assert answer.status_code == 200
    (found,) = answer.json()["discrepancies"]
    assert (found["user_id"], found["stored_balance"], found["actual_balance"]) == (2, 5, 1_000)


def test_a_reconciliation_without_fix_reports_and_changes_nothing(client, corrupt, svc):
    open_account(client, balance=1_000)
    corrupt(1, balance=5)

    answer = client.post("/v1/reconciliations", json={})

    assert answer.status_code == 201
    report = answer.json()
    assert (report["checked"], report["fixed"], report["in_sync"]) == (1, 0, False)
    assert report["details"][0]["status"] == "out_of_sync"
    assert svc.get_balance(1).balance == 5


def test_a_reconciliation_with_fix_repairs_and_its_fixes_are_listed(client, corrupt):
    open_account(client, balance=1_000)
    charge(client, 100)
    corrupt(1, balance=5)

    report = client.post("/v1/reconciliations", json={"fix": True, "user_id": 1}).json()

    assert (report["fixed"], report["in_sync"]) == (1, True)
    assert client.get("/v1/accounts/1").json()["balance"] == 900
    (run,) = client.get("/v1/sync-runs").json()["runs"]
    assert (run["id"], run["fix"], run["fixed"], run["user_id"]) == (report["run_id"], True, 1, 1)
    fixes = client.get(f"/v1/sync-runs/{run['id']}/fixes").json()["fixes"]
    assert fixes == [{"user_id": 1, "column": "balance", "old_value": "5", "new_value": "900"}]


def test_a_reconciliation_of_an_unknown_account_is_404(client):
    answer = client.post("/v1/reconciliations", json={"user_id": 9})

    assert (answer.status_code, answer.json()["code"]) == (404, "account-not-found")
    assert client.get("/v1/sync-runs").json()["runs"] == []
