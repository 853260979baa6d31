"""Tamper evidence: every ledger row seals its fields and its predecessor's hash.

The attacker here has dropped the append-only triggers (``append_only_lifted``) and
edits history directly; ``verify_chain`` must name the first row that changed.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from alembic import command
from sqlalchemy import create_engine, event, insert, select, text, update

from balance_ledger import BalanceService, JobBusy
from balance_ledger.chain.rules import GENESIS, Link, canonical, seal
from balance_ledger.db import backfill, hash_chain
from balance_ledger.db.backfill import seal_unsealed_rows
from balance_ledger.db.migrate import alembic_config
from balance_ledger.db.tables import balance_chain_anchors as anchors
from balance_ledger.db.tables import user_balance_transactions as ledger
from tests.conftest import append_only_lifted, empty_database


def _rows(svc: BalanceService, user_id: int) -> list[dict]:
    with svc.engine.connect() as conn:
        stmt = select(ledger).where(ledger.c.user_id == user_id).order_by(ledger.c.id)
        return [dict(row) for row in conn.execute(stmt).mappings()]


def _tamper(svc: BalanceService, row_id: int, **values: object) -> None:
    with append_only_lifted(svc.engine) as conn:
        conn.execute(update(ledger).where(ledger.c.id == row_id).values(**values))


def _delete(svc: BalanceService, row_id: int) -> None:
    with append_only_lifted(svc.engine) as conn:
        conn.execute(ledger.delete().where(ledger.c.id == row_id))


def _reseal(svc: BalanceService, user_id: int) -> None:
    """What a careful attacker does after an edit: recompute the account's whole chain."""
    previous = None
    for row in _rows(svc, user_id):
        previous = Link(row["id"], seal(previous, row))
        _tamper(svc, row["id"], row_hash=previous.hash)


@pytest.fixture
def history(svc: BalanceService, account_factory) -> list[dict]:
    """Account 1: a recharge, three charges, a refund and an adjustment (six rows)."""
    user_id = account_factory(balance=10_000).user_id
    charges = [svc.charge_service(user_id, 100 * n, "vps", reference_id=f"r{n}") for n in (1, 2, 3)]
    svc.refund(charges[0].id, 50)
    svc.adjust(user_id, -7, reason="rounding", actor="ops")
    return _rows(svc, user_id)


def _first_break(svc: BalanceService, user_id: int = 1) -> tuple[int | None, str]:
    report = svc.verify_chain()
    assert not report.intact
    found = next(b for b in report.breaks if b.user_id == user_id)
    return found.transaction_id, found.message


def test_every_row_is_sealed_onto_the_previous_row_of_its_account(svc, history):
    previous = None
    for row in history:
        assert row["row_hash"] == seal(previous, row)
        previous = Link(row["id"], row["row_hash"])


def test_an_untouched_ledger_verifies(svc, history, account_factory):
    account_factory(balance=5)  # a second chain, interleaved ids
    report = svc.verify_chain()
    assert report.intact
    assert (report.accounts, report.rows, report.breaks) == (2, 7, [])


def test_batch_items_and_captures_are_sealed_in_order(svc, account_factory):
    a, b = account_factory(balance=1_000).user_id, account_factory(balance=1_000).user_id
    svc.charge_many([{"user_id": u, "amount": 5, "service_type": "api"} for u in (a, b, a, a, b)])
    hold = svc.authorize(a, 100, "vps")
    svc.capture(hold.id, 60)
    assert svc.verify_chain().intact


def test_racing_charges_keep_one_straight_chain(svc, account_factory):
    user_id = account_factory(balance=1_000_000).user_id

    def charge_twenty() -> None:
        with BalanceService.from_url(svc.engine.url) as own:
            for _ in range(20):
                own.charge_service(user_id, 1, "api")

    threads = [threading.Thread(target=charge_twenty) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    report = svc.verify_chain(user_id)
    assert report.intact
    assert report.rows == 121


# Each edit keeps the row's CHECK constraints satisfied, as a careful attacker would.
EDITS = {
    "amount": lambda r: {"amount": 1, "balance_after": r["balance_before"] - 1},
    "balances": lambda r: {"balance_before": 0, "balance_after": -r["amount"]},
    "type": lambda r: {
        "transaction_type": "recharge",
        "balance_after": r["balance_before"] + r["amount"],
    },
    "reference": lambda r: {"reference_id": "forged"},
    "description": lambda r: {"description": "edited"},
}


@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS.keys())
def test_an_altered_field_breaks_the_chain_at_that_row(svc, history, edit):
    target = history[2]  # a charge
    _tamper(svc, target["id"], **edit(target))
    row_id, message = _first_break(svc)
    assert row_id == target["id"]
    assert f"broken at row {target['id']}" in message


def test_an_altered_timestamp_breaks_the_chain_at_that_row(svc, history):
    target = history[3]
    _tamper(svc, target["id"], created_at=target["created_at"] - timedelta(days=1))
    assert _first_break(svc)[0] == target["id"]


def test_a_deleted_row_breaks_the_chain_at_the_row_after_it(svc, history):
    _delete(svc, history[2]["id"])
    row_id, message = _first_break(svc)
    assert row_id == history[3]["id"]
    assert "deleted or inserted" in message


def test_a_row_inserted_into_the_middle_of_history_is_named(svc, account_factory):
    a, b = account_factory(balance=1_000).user_id, account_factory(balance=1_000).user_id
    for _ in range(2):
        svc.charge_service(a, 10, "vps")
        svc.charge_service(b, 10, "vps")
    rows_a, rows_b = _rows(svc, a), _rows(svc, b)
    free_id = rows_b[1]["id"]  # between a's second and third rows, once b's row is gone
    assert rows_a[1]["id"] < free_id < rows_a[2]["id"]
    _delete(svc, free_id)
    forged = {**rows_a[1], "id": free_id, "reference_id": "forged"}
    with append_only_lifted(svc.engine) as conn:
        conn.execute(insert(ledger).values(forged))
    assert _first_break(svc, a)[0] == free_id


def test_rows_renumbered_across_accounts_break_the_chain(svc, account_factory):
    """Swapping two rows' ids keeps each account's order, but re-points references."""
    a, b = account_factory(balance=1_000).user_id, account_factory(balance=1_000).user_id
    charge_a = svc.charge_service(a, 500, "vps")
    charge_b = svc.charge_service(b, 5, "vps")
    svc.refund(charge_b.id, 5)
    svc.charge_service(a, 1, "vps")
    svc.charge_service(b, 1, "vps")
    with append_only_lifted(svc.engine) as conn:
        for old, new in ((charge_a.id, -1), (charge_b.id, charge_a.id), (-1, charge_b.id)):
            conn.execute(update(ledger).where(ledger.c.id == old).values(id=new))
    assert {b.user_id for b in svc.verify_chain().breaks} == {a, b}


def test_a_row_moved_to_another_account_breaks_both_chains(svc, history, account_factory):
    other = account_factory(balance=1).user_id
    _tamper(svc, history[4]["id"], user_id=other)
    report = svc.verify_chain()
    assert {b.user_id for b in report.breaks} == {1, other}


def test_a_row_without_a_hash_is_named(svc, history):
    _tamper(svc, history[1]["id"], row_hash=None)
    row_id, message = _first_break(svc)
    assert row_id == history[1]["id"]
    assert "no row_hash" in message


def test_verify_chain_of_one_account_reads_only_that_account(svc, history, account_factory):
    other = account_factory(balance=1).user_id
    _tamper(svc, history[1]["id"], description="edited")
    assert svc.verify_chain(other).intact
    assert not svc.verify_chain(1).intact


def test_a_recomputed_chain_passes_the_walk_but_not_its_anchor(svc, history):
    assert svc.anchor_chains() is not None
    _tamper(svc, history[1]["id"], description="rewritten")
    _reseal(svc, 1)
    report = svc.verify_chain()
    assert [(b.user_id, b.transaction_id) for b in report.breaks] == [(1, history[-1]["id"])]
    assert "hashes differently now" in report.breaks[0].message


def test_a_truncated_tail_is_caught_by_the_anchor(svc, history):
    svc.anchor_chains()
    _delete(svc, history[-1]["id"])  # the walk alone cannot see a missing last row
    report = svc.verify_chain()
    assert [b.transaction_id for b in report.breaks] == [history[-1]["id"]]
    assert "is gone" in report.breaks[0].message


def test_anchoring_records_only_accounts_that_moved_and_chains_digests(svc, history):
    first = svc.anchor_chains()
    assert first is not None
    assert (first.accounts, first.previous_digest) == (1, GENESIS)
    assert svc.anchor_chains() is None  # nothing moved
    svc.charge_service(1, 1, "vps")
    second = svc.anchor_chains()
    assert second is not None
    assert (second.accounts, second.previous_digest) == (1, first.digest)
    report = svc.verify_chain()
    assert report.intact
    assert (report.anchors, report.digests) == (2, 2)


def test_one_accounts_check_also_checks_the_digests(svc, history):
    svc.anchor_chains()
    _tamper(svc, history[1]["id"], description="rewritten")
    _reseal(svc, 1)
    head = _rows(svc, 1)[-1]
    with append_only_lifted(svc.engine) as conn:  # the attacker re-anchors the new head too
        conn.execute(update(anchors).values(row_hash=head["row_hash"]))
    assert "does not verify" in " ".join(b.message for b in svc.verify_chain(1).breaks)


def test_a_non_hex_stored_hash_is_reported_not_a_crash(svc, history):
    svc.anchor_chains()
    with append_only_lifted(svc.engine) as conn:
        conn.execute(update(anchors).values(row_hash="é" * 64))
    _tamper(svc, history[-1]["id"], row_hash="ü" * 64)
    svc.charge_service(1, 1, "vps")  # sealing onto a garbage head still works
    messages = " ".join(b.message for b in svc.verify_chain().breaks)
    assert f"broken at row {history[-1]['id']}" in messages
    assert "does not verify" in messages


def test_rows_written_without_a_hash_are_chained_as_the_backfill_will_seal_them(svc, history):
    """A writer older than migration 0006 leaves a row unsealed; later rows still verify
    once the backfill has sealed it."""
    _tamper(svc, history[-1]["id"], row_hash=None)
    svc.charge_service(1, 1, "vps")
    svc.charge_many([{"user_id": 1, "amount": 1, "service_type": "vps"}] * 2)
    assert [b.transaction_id for b in svc.verify_chain().breaks] == [history[-1]["id"]]
    with append_only_lifted(svc.engine) as conn:
        assert seal_unsealed_rows(conn) == 1
    assert svc.verify_chain().intact


def test_the_backfill_commits_page_by_page_only_where_a_migration_is_not_one_transaction(
    svc, history, backend, monkeypatch
):
    """MariaDB's DDL commits, so a migration there was never one transaction: its
    backfill commits each page (on a Galera cluster, a whole table in one write set is
    what every node would take at once). Elsewhere it stays in the migration's."""
    for row in history[-3:]:
        _tamper(svc, row["id"], row_hash=None)
    monkeypatch.setattr(backfill, "PAGE", 2)
    commits: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        if statement == "COMMIT":
            commits.append(statement)

    event.listen(svc.engine, "before_cursor_execute", record)
    try:
        with append_only_lifted(svc.engine) as conn:
            assert seal_unsealed_rows(conn) == 3
    finally:
        event.remove(svc.engine, "before_cursor_execute", record)
    assert len(commits) == (3 if backend == "mariadb" else 0)  # 6 rows, pages of 2
    assert svc.verify_chain().intact


def test_anchoring_while_another_runner_anchors_is_refused(svc, history):
    with svc._db.backend.job_lock(svc.engine, "anchor-chains", timedelta(minutes=1)) as held:
        assert held
        with pytest.raises(JobBusy, match="anchor-chains"):
            svc.anchor_chains()
    assert svc.anchor_chains() is not None


def test_an_edited_anchor_breaks_its_digest(svc, history):
    digest = svc.anchor_chains()
    assert digest is not None
    with append_only_lifted(svc.engine) as conn:
        conn.execute(update(anchors).values(row_hash="f" * 64))
    messages = [b.message for b in svc.verify_chain().breaks]
    assert f"chain digest {digest.id} does not verify" in " ".join(messages)


def test_the_database_refuses_to_change_anchors(svc, history):
    svc.anchor_chains()
    with pytest.raises(Exception, match="append-only"), svc.engine.begin() as conn:
        conn.execute(text("DELETE FROM balance_chain_anchors"))


def test_full_verify_reports_a_hash_break_and_never_fixes_from_it(svc, history):
    # A text edit keeps every sum and snapshot right: only the hash sees it.
    _tamper(svc, history[2]["id"], description="edited")
    report = svc.verify_and_fix_balance(full=True, fix=True)
    assert [(e.user_id, e.transaction_id) for e in report.errors] == [(1, history[2]["id"])]
    assert report.details[0].status == "ledger_error"
    assert svc.rebuild_all_balances(dry_run=True).errors[0].transaction_id == history[2]["id"]


def test_the_migration_seals_rows_written_before_the_chain(backend_url, backend):
    """Downgrade to 0005, write rows with no hash, upgrade: every row is sealed."""
    empty_database(backend_url)
    engine = create_engine(backend_url)
    config = alembic_config(engine)
    try:
        command.downgrade(config, "0005")
        with BalanceService.from_url(backend_url) as svc, svc.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO user_balances (user_id, currency, balance, total_recharged,"
                    " total_spent, credit_limit, status, created_at, updated_at) VALUES"
                    " (7, 'VND', 70, 100, 30, 0, 'active', :now, :now)"
                ),
                {"now": "2026-11-01 00:00:00"},
            )
            for before, kind, amount, after in ((0, "recharge", 100, 100), (100, "charge", 30, 70)):
                conn.execute(
                    text(
                        "INSERT INTO user_balance_transactions (user_id, transaction_type,"
                        " amount, balance_before, balance_after, created_at)"
                        " VALUES (7, :kind, :amount, :before, :after, :now)"
                    ),
                    {
                        "kind": kind,
                        "amount": amount,
                        "before": before,
                        "after": after,
                        "now": "2026-11-01 00:00:00",
                    },
                )
        command.upgrade(config, "head")
        with BalanceService.from_url(backend_url) as svc:
            report = svc.verify_chain()
            assert (report.rows, report.intact) == (2, True)
            assert svc.charge_service(7, 1, "vps").row_hash is not None
            assert svc.verify_chain().intact
    finally:
        command.upgrade(config, "head")
        engine.dispose()
        empty_database(backend_url)


CANONICAL_SQL = {
    "postgresql": (
        "json_build_array('v1', user_id, transaction_type, amount, balance_before,"
        " balance_after, service_type, description, reference_model, reference_id,"
        " idempotency_key,"
        """ to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),"""
        " related_transaction_id, actor)::text"
    ),
    "mariadb": (
        "JSON_ARRAY('v1', user_id, transaction_type, amount, balance_before,"
        " balance_after, service_type, description, reference_model, reference_id,"
        " idempotency_key, DATE_FORMAT(created_at, '%Y-%m-%dT%H:%i:%s.%fZ'),"
        " related_transaction_id, actor)"
    ),
}


def test_the_server_prints_the_canonical_encoding_byte_for_byte(svc, backend, account_factory):
    """What lets the database itself check the chain, set-based (no SQLite equivalent)."""
    if backend == "sqlite":
        pytest.skip("SQLite has no JSON array printer of the same format")
    user_id = account_factory(balance=1_000).user_id
    svc.charge_service(
        user_id, 5, "vps", description='tab\tnew\nline "quoted" \\ é 😀 ‮', reference_id="  x "
    )
    svc.adjust(user_id, -1, reason="r", actor="ops")
    with svc.engine.connect() as conn:
        printed = conn.execute(
            text(f"SELECT {CANONICAL_SQL[backend]} FROM user_balance_transactions ORDER BY id")
        ).scalars()
        assert [p.encode() for p in printed] == [canonical(r) for r in _rows(svc, user_id)]


def test_the_server_checks_hashes_set_based_and_suspects_only_broken_accounts(
    svc, backend, history, account_factory
):
    other = account_factory(balance=1).user_id
    svc.charge_service(other, 1, "vps", description='tab\t"q" \\ é 😀', reference_id=" x ")
    with svc.engine.connect() as conn:
        intact = hash_chain.hash_suspects(conn, svc._db.backend, 1, other)
    _tamper(svc, history[2]["id"], description="edited")
    with svc.engine.connect() as conn:
        tampered = hash_chain.hash_suspects(conn, svc._db.backend, 1, other)
    if backend == "sqlite":
        assert intact is tampered is None  # the Python walk checks every row instead
    else:
        assert (intact, tampered) == ([], [1])
    assert [e.transaction_id for e in svc.verify_and_fix_balance(full=True).errors] == [
        history[2]["id"]
    ]
