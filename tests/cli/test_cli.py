"""The ``balance`` command, invoked through its real entry point, on every backend."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from balance_ledger import BalanceService
from balance_ledger.cli import main
from balance_ledger.db.tables import balance_refusals


def test_account_open_recharge_charge_show(balance, svc: BalanceService):
    assert balance("account", "open", "5", "--currency", "USD")[0] == 0
    code, out, _ = balance("recharge", "5", "123456", "--idempotency-key", "pay-1")
    assert code == 0
    assert "1,234.56 USD" in out
    code, out, _ = balance("charge", "5", "456", "vps", "--reference-id", "77")
    assert code == 0
    assert "charge #" in out
    assert svc.get_balance(5).balance == 123_000

    code, out, _ = balance("show", "5")
    assert code == 0
    assert "1,230.00 USD" in out
    assert "active" in out


def test_charge_json_output_is_the_ledger_row(balance):
    balance("account", "open", "1")
    balance("recharge", "1", "1000")
    code, out, _ = balance("charge", "1", "250", "vps", "--json")
    row = json.loads(out)
    assert code == 0
    assert (row["transaction_type"], row["amount"], row["balance_after"]) == ("charge", 250, 750)


def test_history_lists_rows_newest_first(balance):
    balance("account", "open", "1")
    for amount in ("100", "200", "300"):
        balance("recharge", "1", amount)
    code, out, _ = balance("history", "1", "--json", "--limit", "2")
    assert code == 0
    assert [row["amount"] for row in json.loads(out)] == [300, 200]
    code, out, _ = balance("history", "1", "--limit", "2")
    assert "next page: --before-id" in out


def test_refused_charge_prints_one_line_and_exits_1(balance, svc: BalanceService):
    balance("account", "open", "1")
    code, _, err = balance("charge", "1", "10", "vps")
    assert code == 1
    assert err.strip().count("\n") == 0
    assert err.startswith("error: InsufficientBalance: account 1 cannot be charged 10")
    assert svc.get_transactions(1) == []


def test_a_keyed_refusal_is_replayed_and_says_so(balance, svc: BalanceService):
    balance("account", "open", "1")
    code, _, first = balance("charge", "1", "10", "vps", "--idempotency-key", "k")
    assert (code, "replayed" in first) == (1, False)
    balance("recharge", "1", "100")
    code, _, again = balance("charge", "1", "10", "vps", "--idempotency-key", "k")
    assert code == 1
    assert again.startswith(first.strip())
    assert "(replayed: the first attempt with this idempotency key was refused so)" in again
    assert balance("purge-refusals", "--older-than-hours", "24")[:2] == (0, "forgot 0 refusals\n")
    with svc.engine.begin() as conn:  # as if refused two hours ago
        aged = datetime.now(UTC) - timedelta(hours=2)
        conn.execute(update(balance_refusals).values(created_at=aged))
    assert balance("purge-refusals", "--older-than-hours", "1")[:2] == (0, "forgot 1 refusals\n")
    assert balance("purge-refusals", "--older-than-hours", "0.5")[0] == 2  # under an hour
    assert balance("charge", "1", "10", "vps", "--idempotency-key", "k")[0] == 0, "key free"
    assert [tx.transaction_type.value for tx in svc.get_transactions(1)] == ["charge", "recharge"]


def test_unknown_account_exits_1(balance):
    code, _, err = balance("show", "999")
    assert code == 1
    assert "account 999 does not exist" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("charge", "1", "abc", "vps"), "Invalid value for 'amount'"),
        (("charge", "1", "1.5", "vps"), "Invalid value for 'amount'"),
        (("charge", "1"), "Missing argument"),
        (("charge", "1", "0", "vps"), "must be positive"),
        (("recharge", "1", "99999999999999999999"), "must not exceed"),
        (("account", "open", "1", "--currency", "ZZZ"), "unknown currency"),
        (("nonsense",), "No such command"),
    ],
)
def test_bad_input_prints_one_clear_line_and_exits_2(balance, args, message):
    balance("account", "open", "1")
    code, _, err = balance(*args)
    assert code == 2
    assert message in err
    assert err.strip().count("\n") == 0
    assert "Traceback" not in err


def test_missing_schema_says_to_upgrade(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--database-url", f"sqlite:///{tmp_path / 'empty.db'}", "show", "1"])
    assert exited.value.code == 2
    assert "balance db upgrade" in capsys.readouterr().err


@pytest.mark.parametrize("once", [(), ("--once",)])
def test_dispatch_without_a_schema_exits_at_once_instead_of_retrying(tmp_path, capsys, once):
    with pytest.raises(SystemExit) as exited:
        main(["--database-url", f"sqlite:///{tmp_path / 'empty.db'}", "dispatch", *once])
    assert exited.value.code == 2
    assert "balance db upgrade" in capsys.readouterr().err


def test_db_upgrade_creates_the_schema(tmp_path: Path, capsys):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    with pytest.raises(SystemExit) as exited:
        main(["--database-url", url, "db", "upgrade"])
    assert exited.value.code == 0
    with BalanceService.from_url(url) as svc:
        assert svc.open_account(1).balance == 0


def test_database_url_comes_from_the_environment(tmp_path: Path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("BALANCE_DATABASE_URL", url)
    with pytest.raises(SystemExit):
        main(["db", "upgrade"])
    with pytest.raises(SystemExit) as exited:
        main(["account", "open", "3"])
    assert exited.value.code == 0
    with BalanceService.from_url(url) as svc:
        assert svc.get_balance(3).user_id == 3


def test_demo_races_corrupts_fixes_and_reports_every_check_held(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--path", str(tmp_path / "demo.db"), "--threads", "8", "--charges", "20"])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    assert out.count("✔") == 8
    assert "✘" not in out
    with BalanceService.from_url(f"sqlite:///{tmp_path / 'demo.db'}") as svc:
        assert svc.get_balance(1).balance == 0


def test_stored_text_is_shown_verbatim_never_as_markup(balance):
    balance("account", "open", "1")
    balance("recharge", "1", "100")
    text = "[/bold] [red]x[/red] [link=http://evil]click[/link]"
    assert balance("charge", "1", "1", "api[/]", "--description", text)[0] == 0
    code, out, err = balance("history", "1")
    assert code == 0
    assert "[red]x[/red]" in out
    assert "api[/]" in out
    assert err == ""


@pytest.mark.parametrize(
    "url",
    ["nonsense", "oracle://x@y/z", "postgresql+psycopg://nobody@127.0.0.1:1/none"],
)
def test_unusable_database_exits_2_with_one_line(url, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--database-url", url, "db", "upgrade"])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err.startswith("error: ")
    assert err.strip().count("\n") == 0


def test_demo_in_a_missing_directory_exits_2_with_one_line(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--path", str(tmp_path / "missing" / "demo.db")])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err.strip().count("\n") == 0


def test_statement_prints_opening_rows_closing_and_totals(balance):
    balance("account", "open", "1")
    balance("recharge", "1", "1000")
    balance("charge", "1", "300", "vps")
    code, out, _ = balance("statement", "1", "--from", "2000-01-01")
    assert code == 0
    assert "Opening balance: 0 VND" in out
    assert "Closing balance: 700 VND" in out
    assert "charge 300 VND" in out
    code, out, _ = balance("statement", "1", "--from", "2000-01-01", "--json")
    assert (json.loads(out)["closing_balance"], len(json.loads(out)["transactions"])) == (700, 2)
    code, out, _ = balance("statement", "1", "--from", "2000-01-01", "--csv")
    assert out.splitlines()[0].startswith("id,user_id,transaction_type,amount")
    assert len(out.splitlines()) == 3


@pytest.mark.parametrize("when", ["yesterday", "2026-13-01"])
def test_statement_with_a_malformed_date_exits_2(balance, when):
    balance("account", "open", "1")
    code, _, err = balance("statement", "1", "--from", when)
    assert code == 2
    assert "ISO 8601" in err


def test_refund_and_adjust_from_the_command_line(balance, svc: BalanceService):
    balance("account", "open", "1")
    balance("recharge", "1", "1000")
    code, out, _ = balance("charge", "1", "300", "vps", "--json")
    charge_id = json.loads(out)["id"]
    code, out, _ = balance("refund", str(charge_id), "100", "--reason", "outage", "--json")
    assert (code, json.loads(out)["related_transaction_id"]) == (0, charge_id)
    code, _, err = balance("refund", str(charge_id), "500")
    assert code == 1
    assert "RefundExceedsCharge" in err
    code, out, _ = balance("adjust", "1", "--delta", "-50", "--reason", "fee", "--actor", "ops")
    assert code == 0
    assert svc.get_balance(1).balance == 750
    code, _, err = balance("adjust", "1", "--delta", "-50", "--reason", "fee")
    assert code == 2
    assert "--actor" in err


def test_hold_capture_void_and_expire_from_the_command_line(balance, svc: BalanceService):
    balance("account", "open", "1")
    balance("recharge", "1", "1000")
    code, out, _ = balance("hold", "1", "600", "vps", "--ttl", "3600", "--json")
    first = json.loads(out)
    assert (code, first["status"], svc.get_balance(1).held) == (0, "active", 600)
    code, out, _ = balance("capture", str(first["id"]), "250")
    assert code == 0
    assert svc.get_balance(1).balance == 750
    code, out, _ = balance("hold", "1", "100", "vps")
    assert code == 0
    second = svc.get_balance(1).held
    assert second == 100
    code, _, _ = balance("void", out.split("#")[1].split(":")[0])
    assert (code, svc.get_balance(1).held) == (0, 0)
    code, _, err = balance("capture", str(first["id"]))
    assert code == 1
    assert "HoldNotActive" in err
    code, out, _ = balance("expire-holds")
    assert (code, out.strip()) == (0, "released 0 expired holds")
    code, out, _ = balance("show", "1")
    assert "Held" in out


def test_charge_batch_from_csv_reports_each_outcome(balance, svc: BalanceService, tmp_path):
    balance("account", "open", "1")
    balance("recharge", "1", "1000")
    batch = tmp_path / "hour.csv"
    batch.write_text(
        "user_id,amount,service_type,reference_id,allow_overdraft\n"
        "1,100,vps,vm-1,\n"
        "1,abc,vps,vm-2,\n"
        "2,5,vps,vm-3,\n"
        "1,2000,vps,vm-4,false\n"
        "1,50,bandwidth,vm-5,true\n"
    )
    code, out, _ = balance("charge-batch", str(batch), "--json")
    outcomes = [r.get("error", "charged") for r in json.loads(out)]
    assert code == 1
    assert outcomes == [
        "charged",
        "InvalidAmount",
        "AccountNotFound",
        "InsufficientBalance",
        "charged",
    ]
    assert svc.get_balance(1).balance == 850
    code, out, _ = balance("charge-batch", str(batch))
    assert "refused: InvalidAmount" in out


def test_charge_batch_all_or_nothing_from_jsonl_writes_nothing_on_error(
    balance, svc: BalanceService, tmp_path
):
    balance("account", "open", "1")
    balance("recharge", "1", "1000")
    batch = tmp_path / "hour.jsonl"
    batch.write_text(
        '{"user_id": 1, "amount": 100, "service_type": "vps"}\n'
        '{"user_id": 1, "amount": 5000, "service_type": "vps"}\n'
    )
    code, _, err = balance("charge-batch", str(batch), "--mode", "all_or_nothing")
    assert code == 1
    assert "item 2 refused, nothing was charged: " in err
    assert "InsufficientBalance" in err
    assert svc.get_balance(1).balance == 1_000
    batch.write_text('{"user_id": 1, "amount": 100, "service_type": "vps"}\n{oops\n')
    code, out, _ = balance("charge-batch", str(batch), "--json")
    assert [r.get("error") for r in json.loads(out)] == [None, "InvalidRequest"]


def test_charge_batch_rejects_other_file_types(balance, tmp_path):
    batch = tmp_path / "hour.xlsx"
    batch.write_text("")
    code, _, err = balance("charge-batch", str(batch))
    assert code == 2
    assert ".csv or .jsonl" in err


@pytest.mark.parametrize("amount", ["²", "--5", "١٠", "1e3"])
def test_charge_batch_refuses_amounts_that_are_not_ascii_integers(balance, tmp_path, amount):
    balance("account", "open", "1")
    balance("recharge", "1", "1000")
    batch = tmp_path / "odd.csv"
    batch.write_text(f"user_id,amount,service_type\n1,{amount},vps\n", encoding="utf-8")
    code, out, _ = balance("charge-batch", str(batch), "--json")
    assert code == 1
    assert json.loads(out)[0]["error"] == "InvalidAmount"


def test_charge_batch_reads_spreadsheet_csv_with_a_byte_order_mark(balance, svc, tmp_path):
    balance("account", "open", "1")
    balance("recharge", "1", "1000")
    batch = tmp_path / "excel.csv"
    batch.write_text("user_id,amount,service_type\n1,5,vps\n", encoding="utf-8-sig")
    assert balance("charge-batch", str(batch))[0] == 0
    assert svc.get_balance(1).balance == 995


def test_charge_batch_with_bad_encoding_or_mode_exits_2(balance, tmp_path):
    batch = tmp_path / "latin1.csv"
    batch.write_bytes("user_id,amount,service_type\n1,5,caf\xe9\n".encode("latin-1"))
    code, _, err = balance("charge-batch", str(batch))
    assert (code, "not UTF-8" in err) == (2, True)
    batch.write_text("")
    code, _, err = balance("charge-batch", str(batch), "--mode", "bogus")
    assert code == 2


def test_charge_batch_json_says_which_refusals_are_replayed(balance, tmp_path):
    balance("account", "open", "1")
    batch = tmp_path / "keyed.jsonl"
    item = {"user_id": 1, "amount": 10, "service_type": "vps", "idempotency_key": "k"}
    batch.write_text(json.dumps(item) + "\n")
    first = json.loads(balance("charge-batch", str(batch), "--json")[1])
    balance("recharge", "1", "100")
    code, out, _ = balance("charge-batch", str(batch), "--json")
    again = json.loads(out)
    assert code == 1
    assert [(r["error"], r["replayed"]) for r in first + again] == [
        ("InsufficientBalance", False),
        ("InsufficientBalance", True),
    ]
    assert again[0]["message"] == first[0]["message"]
