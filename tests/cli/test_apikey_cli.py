"""balance apikey create | list | revoke: the key is printed once and only at creation."""

from __future__ import annotations

import hashlib
import json
import re

KEY = re.compile(r"bl_[A-Za-z0-9_-]{40}")


def test_create_prints_the_key_once_and_it_authenticates(balance, svc):
    code, out, err = balance("apikey", "create", "--name", "biller", "--scope", "charge")

    assert (code, err) == (0, "")
    (secret,) = KEY.findall(out)
    assert out.count(secret) == 1
    assert "cannot be shown again" in out
    assert "biller" in out
    assert "charge" in out
    key = svc.authenticate_api_key(secret)
    assert key is not None
    assert key.scopes == {"charge"}


def test_create_json_prints_id_name_scopes_and_key(balance, svc):
    scopes = ("--scope", "read,charge", "--scope", "recharge")
    code, out, _ = balance("apikey", "create", "--name", "ops", *scopes, "--json")

    assert code == 0
    printed = json.loads(out)
    assert set(printed) == {"id", "name", "scopes", "key"}
    assert (printed["name"], printed["scopes"]) == ("ops", ["read", "charge", "recharge"])
    key = svc.authenticate_api_key(printed["key"])
    assert key is not None
    assert key.id == printed["id"]


def test_list_never_prints_a_key_or_its_hash(balance, svc):
    secrets = [svc.create_api_key(name, ["read"])[1] for name in ("alpha", "beta")]
    svc.create_api_key("[bold]markup[/]", ["admin"])

    for args in (("apikey", "list"), ("apikey", "list", "--json")):
        code, out, err = balance(*args)
        assert (code, err) == (0, "")
        for secret in secrets:
            assert secret not in out
            assert secret[11:] not in out  # nothing past the prefix
            assert hashlib.sha256(secret.encode()).hexdigest() not in out
            assert secret[3:11] in out  # the prefix tells them apart
        assert KEY.search(out) is None
    code, out, _ = balance("apikey", "list")
    assert out.index("beta") < out.index("alpha")  # newest first
    assert "[bold]markup[/]" in out  # a name is text, never Rich markup
    listed = json.loads(balance("apikey", "list", "--json")[1])
    assert [k["name"] for k in listed] == ["[bold]markup[/]", "beta", "alpha"]
    assert {"key", "key_hash"}.isdisjoint(listed[0])


def test_list_of_no_keys(balance):
    code, out, _ = balance("apikey", "list")
    assert (code, out.startswith("no API keys yet")) == (0, True)
    assert json.loads(balance("apikey", "list", "--json")[1]) == []


def test_revoke_stops_the_key_and_again_changes_nothing(balance, svc):
    key, secret = svc.create_api_key("biller", ["charge"])

    code, out, _ = balance("apikey", "revoke", str(key.id))

    assert code == 0
    assert f"API key {key.id} (biller) revoked at" in out
    assert svc.authenticate_api_key(secret) is None
    assert balance("apikey", "revoke", str(key.id)) == (0, out, "")
    (listed,) = json.loads(balance("apikey", "list", "--json")[1])
    assert listed["revoked_at"] is not None


def test_revoke_of_an_unknown_key_exits_1(balance):
    code, out, err = balance("apikey", "revoke", "99")
    assert (code, out) == (1, "")
    assert err == "error: ApiKeyNotFound: API key 99 does not exist\n"


def test_a_bad_scope_exits_2_with_one_line_and_writes_nothing(balance, svc):
    code, out, err = balance("apikey", "create", "--name", "biller", "--scope", "read,bogus")

    assert (code, out) == (2, "")
    assert err == "error: unknown scope 'bogus': use read, charge, recharge, admin\n"
    assert svc.list_api_keys() == []


def test_no_scope_or_no_name_or_a_bad_name_exits_2(balance, svc):
    for args in (
        ("--name", "biller"),
        ("--scope", "read"),
        ("--name", "two\nlines", "--scope", "read"),
        ("--name", "", "--scope", "read"),
    ):
        code, out, err = balance("apikey", "create", *args)
        assert (code, out) == (2, ""), args
        assert (err.startswith("error: "), err.count("\n")) == (True, 1), err
    assert svc.list_api_keys() == []
