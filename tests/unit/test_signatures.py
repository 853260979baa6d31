"""Webhook signatures: HMAC-SHA256 over timestamp + body, inside a replay window."""

from __future__ import annotations

import pytest

from balance_ledger.outbox import signatures

SECRET = "whsec_0123456789abcdef"
BODY = b'{"id":1,"type":"balance.charged","amount":300}'
NOW = 1_800_000_000


def test_a_signature_verifies_with_its_secret_and_body():
    header = signatures.sign(SECRET, BODY, NOW)

    assert header.startswith(f"t={NOW},v1=")
    assert signatures.verify(SECRET, header, BODY, now=NOW + 10)


@pytest.mark.parametrize(
    ("secret", "body", "now"),
    [
        (SECRET, BODY.replace(b"300", b"3000"), NOW),
        ("whsec_another_secret_000", BODY, NOW),
        (SECRET, BODY, NOW + 301),
        (SECRET, BODY, NOW - 301),
    ],
    ids=["tampered-body", "other-secret", "replayed-late", "from-the-future"],
)
def test_a_tampered_late_or_foreign_delivery_is_refused(secret, body, now):
    header = signatures.sign(SECRET, BODY, NOW)

    assert not signatures.verify(secret, header, body, now=now)


@pytest.mark.parametrize("header", ["", "t=abc,v1=00", "v1=00", f"t={NOW}", "garbage"])
def test_a_malformed_header_is_refused(header):
    assert not signatures.verify(SECRET, header, BODY, now=NOW)
