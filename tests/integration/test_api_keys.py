"""API keys: created once, stored only as a hash, authenticated, listed and revoked."""

from __future__ import annotations

import hashlib
import re
import time

import pytest
from sqlalchemy import select

from balance_ledger import ApiKey, ApiKeyNotFound, BalanceService, InvalidRequest, Scope
from balance_ledger.db.tables import balance_api_keys

KEY_FORMAT = re.compile(r"bl_[A-Za-z0-9_-]{40}")


@pytest.fixture
def biller(svc: BalanceService) -> tuple[ApiKey, str]:
    return svc.create_api_key("biller", ["charge", "read"])


def test_a_created_key_authenticates_with_its_scopes(svc, biller):
    key, secret = biller

    assert KEY_FORMAT.fullmatch(secret)
    assert (key.name, key.scopes, key.revoked_at) == ("biller", {Scope.CHARGE, Scope.READ}, None)
    assert key.prefix == secret[3:11]
    assert key.created_at.tzinfo is not None
    found = svc.authenticate_api_key(secret)
    assert found == key
    assert found.allows(Scope.CHARGE)
    assert found.allows(Scope.READ)
    assert not found.allows(Scope.RECHARGE)
    assert not found.allows(Scope.ADMIN)


def test_every_key_is_new(svc):
    secrets = {svc.create_api_key(f"key {n}", ["read"])[1] for n in range(20)}
    assert len(secrets) == 20
    assert all(KEY_FORMAT.fullmatch(secret) for secret in secrets)


def test_only_the_hash_of_the_key_is_stored(svc, biller, dump):
    _, secret = biller
    random_part = secret[len("bl_") :]

    with svc.engine.connect() as conn:
        (row,) = conn.execute(select(balance_api_keys)).mappings()
    assert row["key_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    # Nowhere in the database: not the key, nor its secret part past the shown prefix.
    everything = repr(dump())
    assert secret not in everything
    assert random_part[8:] not in everything
    assert random_part[:8] == row["prefix"]


def test_the_scope_names_may_be_members_or_strings_and_repeat(svc):
    key, _ = svc.create_api_key("mixed", [Scope.RECHARGE, "recharge", "read"])
    assert key.scopes == frozenset({Scope.RECHARGE, Scope.READ})
    assert svc.list_api_keys()[0].scopes == key.scopes


def test_admin_allows_every_scope(svc):
    key, secret = svc.create_api_key("ops", ["admin"])
    found = svc.authenticate_api_key(secret)
    assert found is not None
    assert all(found.allows(scope) for scope in Scope)
    assert all(key.allows(scope) for scope in Scope)


def _tampered(secret: str) -> list[str]:
    flipped = secret[:-1] + ("B" if secret[-1] == "A" else "A")
    return [
        flipped,  # one character off
        secret[:-1],  # one short
        secret + "A",  # one long
        secret.upper(),  # keys are case-sensitive
        " " + secret,
        secret + "\n",
        "Bearer " + secret,
        "bl-" + secret[3:],  # the marker is part of the key
        secret[3:],  # the random part alone
    ]


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "bl_",
        "bl_" + "A" * 40,  # well-formed, unknown
        "bl_" + "é" * 40,
        "bl_" + "A" * 39 + "\x00",
        "x" * 1_000_000,
        "bl_" + "A" * 10_000_000,
        None,
        42,
        b"bl_" + b"A" * 40,
    ],
    ids=lambda value: repr(value)[:20],
)
def test_unknown_or_malformed_keys_authenticate_nobody(svc, biller, presented):
    assert svc.authenticate_api_key(presented) is None


def test_a_key_differing_by_anything_authenticates_nobody(svc, biller):
    _, secret = biller
    for presented in _tampered(secret):
        assert svc.authenticate_api_key(presented) is None, presented
    assert svc.authenticate_api_key(secret) is not None


def test_a_revoked_key_authenticates_nobody_and_the_others_still_work(svc, biller):
    key, secret = biller
    _, other = svc.create_api_key("reader", ["read"])

    revoked = svc.revoke_api_key(key.id)

    assert revoked.revoked_at is not None
    assert revoked.revoked_at >= key.created_at
    assert (revoked.id, revoked.name, revoked.scopes) == (key.id, key.name, key.scopes)
    assert svc.authenticate_api_key(secret) is None
    assert svc.authenticate_api_key(other) is not None


def test_revoking_twice_keeps_the_first_time(svc, biller):
    key, _ = biller
    first = svc.revoke_api_key(key.id)
    time.sleep(0.01)

    again = svc.revoke_api_key(key.id)

    assert again == first
    assert svc.list_api_keys()[0].revoked_at == first.revoked_at


def test_revoking_an_unknown_key_raises_api_key_not_found(svc, biller, dump):
    key, _ = biller
    before = dump()
    with pytest.raises(ApiKeyNotFound, match=f"API key {key.id + 1} does not exist") as raised:
        svc.revoke_api_key(key.id + 1)
    assert raised.value.key_id == key.id + 1
    assert dump() == before


@pytest.mark.parametrize("key_id", [0, -1, 2**63, "1", True, None, 1.0])
def test_a_malformed_key_id_is_invalid(svc, key_id):
    with pytest.raises(InvalidRequest, match="API key id"):
        svc.revoke_api_key(key_id)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "   ",
        "x" * 129,
        "two\nlines",
        "a\ttab",
        "carriage\rreturn",
        "nul\x00",
        "escape\x1b[31m",
        "next line\x85",  # C1 control characters too
        "surrogate \udc80",
        None,
        42,
        b"biller",
    ],
    ids=repr,
)
def test_a_bad_name_is_invalid_and_writes_nothing(svc, dump, name):
    before = dump()
    with pytest.raises(InvalidRequest, match="name"):
        svc.create_api_key(name, ["read"])
    assert dump() == before


@pytest.mark.parametrize(
    "scopes",
    [
        [],
        (),
        "read",  # a str is not a list of scopes
        ["READ"],
        ["bogus"],
        ["read", "nope"],
        ["read,charge"],
        [None],
        [1],
        None,
        42,
    ],
    ids=repr,
)
def test_bad_scopes_are_invalid_and_write_nothing(svc, dump, scopes):
    before = dump()
    with pytest.raises(InvalidRequest, match="scope"):
        svc.create_api_key("biller", scopes)
    assert dump() == before


def test_names_up_to_the_column_width_and_any_script_are_kept(svc):
    for name in ("x" * 128, "kế toán 🚀", "Name With Spaces", "'; DROP TABLE x; --"):
        _key, secret = svc.create_api_key(name, ["read"])
        assert svc.authenticate_api_key(secret).name == name
        assert svc.list_api_keys()[0].name == name


def test_list_is_newest_first_with_revoked_keys_and_no_secrets(svc):
    created = [svc.create_api_key(f"key {n}", ["read"]) for n in range(3)]
    svc.revoke_api_key(created[1][0].id)

    keys = svc.list_api_keys()

    assert [key.name for key in keys] == ["key 2", "key 1", "key 0"]
    assert [key.revoked_at is None for key in keys] == [True, False, True]
    assert [key.active for key in keys] == [True, False, True]
    shown = repr(keys)
    for _, secret in created:
        assert secret not in shown
        assert hashlib.sha256(secret.encode()).hexdigest() not in shown
    assert not hasattr(keys[0], "key_hash")


def test_no_keys_lists_nothing(svc):
    assert svc.list_api_keys() == []
