"""``balance apikey create|list|revoke``: the HTTP service's API keys."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from ..models import ApiKey, Scope, scope_names
from . import format as fmt
from .app import Json, _service, app, console

apikey_app = typer.Typer(help="API keys of the HTTP service.", no_args_is_help=True)
app.add_typer(apikey_app, name="apikey")

_SCOPES = "|".join(scope.value for scope in Scope)


def _scope_names(options: list[str]) -> list[str]:
    """--scope read --scope charge, or --scope read,charge (or both)."""
    return [name.strip() for option in options for name in option.split(",")]


def _record(key: ApiKey) -> dict[str, Any]:
    """A key's record for --json (scopes as a list, in the order Scope lists them)."""
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "scopes": scope_names(key.scopes),
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
    }


@apikey_app.command("create")
def apikey_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="Who or what uses the key, e.g. biller.")],
    scope: Annotated[
        list[str] | None,
        typer.Option(help=f"{_SCOPES}; repeat it or give a comma list (admin implies all)."),
    ] = None,
    as_json: Json = False,
) -> None:
    """Create a key and print it once; only its hash is stored."""
    key, secret = _service(ctx).create_api_key(name, _scope_names(scope or []))
    if as_json:
        record = {"id": key.id, "name": key.name, "scopes": scope_names(key.scopes)}
        console.print_json(fmt.to_json({**record, "key": secret}))
        return
    console.print(
        f"API key {key.id} ({escape(key.name)}), scopes: {', '.join(scope_names(key.scopes))}"
    )
    console.print(secret, markup=False, highlight=False)
    console.print("[bold yellow]Store this key now: it cannot be shown again.[/]")


@apikey_app.command("list")
def apikey_list(ctx: typer.Context, as_json: Json = False) -> None:
    """List every key, newest first (never the keys themselves)."""
    keys = _service(ctx).list_api_keys()
    if as_json:
        console.print_json(fmt.to_json([_record(key) for key in keys]))
    elif keys:
        console.print(fmt.api_keys_table(keys))
    else:
        console.print("no API keys yet: balance apikey create --name NAME --scope SCOPE")


@apikey_app.command("revoke")
def apikey_revoke(
    ctx: typer.Context,
    key_id: Annotated[int, typer.Argument(help="The key's id (balance apikey list).")],
) -> None:
    """Revoke a key at once (revoking it again changes nothing)."""
    key = _service(ctx).revoke_api_key(key_id)
    assert key.revoked_at is not None
    console.print(
        f"API key {key.id} ({escape(key.name)}) revoked at "
        f"{key.revoked_at.isoformat(timespec='seconds')}"
    )
