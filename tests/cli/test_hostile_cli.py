"""Hostile command lines: one clear line on stderr, the right exit code, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

SQL = "'; DROP TABLE user_balances; --"

# (arguments, exit code, a phrase of the one-line error)
CASES = [
    (("charge", "1", "-5", "vps"), 2, "no such option: -5"),
    (("charge", "1", "--", "-5", "vps"), 2, "must be positive"),
    (("charge", "1", "nan", "vps"), 2, "Invalid value for 'amount'"),
    (("charge", "1", "inf", "vps"), 2, "Invalid value for 'amount'"),
    (("charge", "1", "1e3", "vps"), 2, "Invalid value for 'amount'"),
    (("charge", "1", "10", "vps", "--description", "x" * 1_000_000), 2, "description"),
    (("charge", "1", "10", "vps", "--description", "a\x01b"), 2, "control character"),
    (("charge", "1", "10", "vps", "--idempotency-key", "k" * 10_000), 2, "idempotency"),
    (("charge", SQL, "10", "vps"), 2, "Invalid value for 'USER_ID'"),
    (("charge", "424242", "10", "vps"), 1, "does not exist"),
    (("charge", "1", "999999", "vps"), 1, "InsufficientBalance"),
    (("recharge", "1", "9223372036854775808"), 2, "must not exceed"),
    (("account", "open", "2", "--currency", SQL), 2, "currency"),
    (("account", "open", "2", "--credit-limit", "-1"), 2, "credit limit"),
    (("refund", "999999"), 1, "does not exist"),
    (("adjust", "1", "--delta", "0", "--reason", "r", "--actor", "a"), 2, "non-zero"),
    (("hold", "1", "10", "vps", "--ttl", "-1"), 2, "ttl"),
    (("capture", "999999"), 1, "does not exist"),
    (("history", "1", "--limit", "1000000"), 2, "limit"),
    (("statement", "1", "--from", SQL), 2, "not an ISO 8601 date"),
    (("verify-chain", "--user-id", "-1"), 2, "user id"),
]


@pytest.fixture
def funded(balance) -> None:
    assert balance("account", "open", "1")[0] == 0
    assert balance("recharge", "1", "1000")[0] == 0


@pytest.mark.parametrize(
    ("args", "code", "phrase"), CASES, ids=[" ".join(c[0])[:40] for c in CASES]
)
def test_hostile_command_line_exits_with_one_line_and_writes_nothing(
    balance, funded, dump, args, code, phrase
):
    before = dump()
    exit_code, out, err = balance(*args)
    assert (exit_code, out) == (code, "")
    assert phrase.lower() in err.lower()
    assert err.strip().count("\n") == 0
    assert len(err) < 400  # the input is not echoed back
    assert dump() == before


@pytest.mark.parametrize(
    "content",
    [
        '{"user_id": 1, "amount": 5, "service_type": "vps"\n',  # truncated JSON
        "[1, 2, 3]\n",  # not an object
        '{"user_id": 1, "amount": 5.5, "service_type": "vps"}\n',
        '{"user_id": 1, "amount": NaN, "service_type": "vps"}\n',
        '{"user_id": 1, "amount": 5, "service_type": "vps", "drop": 1}\n',
    ],
)
def test_malformed_batch_lines_are_refused_and_write_nothing(
    balance, funded, dump, tmp_path: Path, content
):
    batch = tmp_path / "batch.jsonl"
    batch.write_text(content)
    before = dump()
    code, _, err = balance("charge-batch", str(batch), "--mode", "all_or_nothing")
    assert code in (1, 2)
    assert err.strip().count("\n") == 0
    assert "Traceback" not in err
    assert dump() == before
