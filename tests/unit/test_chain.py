"""The hash chain's rules (chain/rules.py) without a database: sealing, the walk that
finds an account's first break, and the digests' hash."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from balance_ledger.chain.rules import GENESIS, ChainWalk, Link, digest_of, head_of, seal

START = datetime(2026, 12, 4, tzinfo=UTC)


def history(user_id: int, amounts: list[int], first_id: int = 1) -> list[dict]:
    """An account's rows, each sealed onto the one before, as the ledger writes them."""
    rows, previous, balance = [], None, 0
    for i, amount in enumerate(amounts):
        row = {
            "id": first_id + i,
            "user_id": user_id,
            "transaction_type": "recharge" if amount > 0 else "charge",
            "amount": abs(amount),
            "balance_before": balance,
            "balance_after": balance + amount,
            "service_type": None if amount > 0 else "vps",
            "description": None,
            "reference_model": None,
            "reference_id": None,
            "idempotency_key": None,
            "created_at": START + timedelta(seconds=i),
            "related_transaction_id": None,
            "actor": None,
        }
        row["row_hash"] = seal(previous, row)
        rows.append(row)
        previous, balance = Link(row["id"], row["row_hash"]), row["balance_after"]
    return rows


def walk(*rows: dict) -> ChainWalk:
    checked = ChainWalk()
    for row in rows:
        checked.feed(row)
    return checked


def test_an_untouched_history_verifies():
    checked = walk(*history(1, [100, -30, -20]), *history(2, [50], first_id=4))
    assert (checked.rows, checked.accounts, checked.breaks) == (4, 2, {})


def test_an_altered_amount_breaks_the_chain_at_that_row_only():
    rows = history(1, [100, -30, -20])
    rows[1] = {**rows[1], "amount": 3}
    (found,) = walk(*rows).breaks.values()
    assert (found.user_id, found.transaction_id) == (1, 2)
    assert "fields" in found.message


def test_a_deleted_row_breaks_the_chain_at_the_row_after_it():
    first, _, third = history(1, [100, -30, -20])
    (found,) = walk(first, third).breaks.values()
    assert found.transaction_id == 3
    assert "does not follow" in found.message


def test_a_row_without_a_hash_is_named():
    rows = history(1, [100, -30])
    rows[1] = {**rows[1], "row_hash": None}
    assert "no row_hash" in walk(*rows).breaks[1].message


def test_the_seal_covers_the_previous_rows_id_and_every_sealed_field():
    (row,) = history(1, [100])
    assert seal(None, row) == seal(Link(0, GENESIS), row)  # the first row seals the genesis
    assert seal(Link(7, row["row_hash"]), row) != seal(Link(8, row["row_hash"]), row)
    later = {**row, "created_at": row["created_at"] + timedelta(microseconds=1)}
    assert seal(None, later) != seal(None, row)
    other_zone = {**row, "created_at": row["created_at"].astimezone(tz=None)}
    assert seal(None, other_zone) == seal(None, row)  # the instant is sealed, not its zone


def test_the_head_of_rows_written_without_a_hash_is_what_the_backfill_seals():
    rows = history(1, [100, -30])
    unsealed = [{**row, "row_hash": None} for row in rows]
    assert head_of(unsealed) == head_of(rows) == Link(2, rows[1]["row_hash"])


def test_a_digest_depends_on_its_predecessor_and_anchors_not_their_order():
    anchors = [(2, 9, "b" * 64), (1, 4, "a" * 64)]
    assert digest_of(GENESIS, anchors) == digest_of(GENESIS, list(reversed(anchors)))
    assert digest_of(GENESIS, anchors) != digest_of("1" * 64, anchors)
    assert digest_of(GENESIS, anchors) != digest_of(GENESIS, anchors[:1])
