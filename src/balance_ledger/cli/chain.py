"""``balance verify-chain`` and ``balance anchor-chains``: the ledger's tamper evidence."""

from __future__ import annotations

from typing import Annotated

import typer

from . import format as fmt
from .app import Json, _service, app, console, heavy_reader

EXIT_BROKEN = 1


@app.command("verify-chain")
def verify_chain(
    ctx: typer.Context,
    user_id: Annotated[int | None, typer.Option(help="Verify this account's chain only.")] = None,
    as_json: Json = False,
) -> None:
    """Recompute the ledger's hash chains and anchors; exit 1 naming every broken one."""
    report = heavy_reader(ctx).verify_chain(user_id)
    if as_json:
        console.print_json(report.to_json())
    else:
        console.print(
            f"Checked: {report.rows:,} rows of {report.accounts:,} accounts, "
            f"{report.anchors:,} anchors, {report.digests:,} digests"
        )
        if report.breaks:
            console.print(fmt.errors_table(report.breaks, "Broken chains (history was changed)"))
        else:
            console.print("every chain verifies")
    if not report.intact:
        raise typer.Exit(EXIT_BROKEN)


@app.command("anchor-chains")
def anchor_chains(ctx: typer.Context, as_json: Json = False) -> None:
    """Anchor every account head that moved since the last digest; print the digest."""
    digest = _service(ctx).anchor_chains()
    if as_json:
        console.print_json(digest.to_json() if digest else "null")
    elif digest is None:
        console.print("nothing to anchor: no account moved since the last digest")
    else:
        console.print(
            f"digest {digest.id}: {digest.accounts:,} accounts anchored\n"
            f"{digest.digest}  (publish this hash outside the database)"
        )
