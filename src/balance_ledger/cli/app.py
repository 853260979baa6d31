"""The ``balance`` command: parse, call one BalanceService method, format the result."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from .. import clock
from ..models import AccountPolicy, Balance, Hold, Transaction
from ..money.requests import Charge
from ..service import BalanceService
from . import format as fmt

DEFAULT_DATABASE_URL = "sqlite:///balance.db"

app = typer.Typer(
    help="Prepaid-balance ledger: charge, recharge and inspect accounts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
account_app = typer.Typer(help="Open and inspect accounts.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(account_app, name="account")

# Piped output (logs, files, tests) gets room for the wide tables instead of Rich's 80.
console = Console(width=None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "120")))

UserId = Annotated[int, typer.Argument(help="The account's user id.", show_default=False)]
Amount = Annotated[int, typer.Argument(help="Amount in minor units (cents; VND has none).")]
Description = Annotated[str | None, typer.Option(help="Free text shown in the history.")]
ReferenceModel = Annotated[
    str | None, typer.Option(help="What the movement pays for, e.g. VpsUsage.")
]
ReferenceId = Annotated[str | None, typer.Option(help="The id of that thing.")]
IdempotencyKey = Annotated[
    str | None, typer.Option(help="Retrying with the same key returns the first result.")
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


@app.callback()
def main_options(
    ctx: typer.Context,
    database_url: Annotated[
        str,
        typer.Option(
            envvar="BALANCE_DATABASE_URL",
            help="sqlite:///FILE, postgresql+psycopg://… or mysql+pymysql://…",
        ),
    ] = DEFAULT_DATABASE_URL,
    replica_url: Annotated[
        str | None,
        typer.Option(
            envvar="BALANCE_REPLICA_URL",
            help="A PostgreSQL streaming replica of the database: verify-chain, "
            "discrepancies, history and statements read it while it is caught up enough.",
        ),
    ] = None,
    max_replica_lag: Annotated[
        float,
        typer.Option(
            envvar="BALANCE_MAX_REPLICA_LAG",
            help="Seconds the replica may be behind; further behind, the primary answers.",
            min=0,
        ),
    ] = 10.0,
    other_node: Annotated[
        list[str] | None,
        typer.Option(
            envvar="BALANCE_OTHER_NODES",
            help="Another node of the database's MariaDB Galera cluster (repeat it; the "
            "variable: URLs separated by spaces): each account is written on one node.",
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log what the ledger does to stderr.")
    ] = False,
) -> None:
    # Without --verbose the command's own output says everything; keep logs quiet.
    logging.basicConfig(
        level=logging.INFO if verbose else logging.CRITICAL,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    ctx.obj = Target(database_url, replica_url, max_replica_lag, tuple(other_node or ()))


@dataclasses.dataclass(frozen=True)
class Target:
    """The databases the command works on (the global options)."""

    url: str
    replica_url: str | None
    max_replica_lag: float
    other_nodes: tuple[str, ...] = ()


def _service(ctx: typer.Context) -> BalanceService:
    target: Target = ctx.find_root().obj
    svc = BalanceService.from_url(
        target.url,
        replica_url=target.replica_url,
        max_replica_lag=target.max_replica_lag,
        other_nodes=target.other_nodes,
    )
    ctx.call_on_close(svc.close)
    return svc


def heavy_reader(ctx: typer.Context) -> BalanceService:
    """The service, for a command whose reads may go to the replica: where they went is
    said on stderr once the command is done (the answer on stdout stays as it is)."""
    svc = _service(ctx)

    def where_it_read() -> None:
        if (status := svc.last_heavy_read()) is not None:
            typer.echo(status.describe(), err=True)

    ctx.call_on_close(where_it_read)  # before the service closes: callbacks run last first
    return svc


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Create or migrate the tables to the newest schema."""
    _service(ctx).create_schema()
    console.print("schema is up to date")


LowBalanceThreshold = Annotated[
    int | None,
    typer.Option(help="Send balance.low once when available falls below this (minor units)."),
]
GraceAmount = Annotated[
    int | None,
    typer.Option(help="How far below -credit limit the balance may go before suspension."),
]
GracePeriod = Annotated[
    int | None,
    typer.Option(help="Seconds the balance may stay below that line before suspension."),
]
ReactivationThreshold = Annotated[
    int | None,
    typer.Option(help="Balance at or above which a suspended account is active again."),
]


def _policy(
    base: AccountPolicy,
    low_balance_threshold: int | None,
    grace_amount: int | None,
    grace_period: int | None,
    reactivation_threshold: int | None,
) -> AccountPolicy:
    """``base`` with the options given replacing its fields."""
    given: dict[str, Any] = {
        "low_balance_threshold": low_balance_threshold,
        "grace_amount": grace_amount,
        "grace_period": None if grace_period is None else timedelta(seconds=grace_period),
        "reactivation_threshold": reactivation_threshold,
    }
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


@account_app.command("open")
def account_open(
    ctx: typer.Context,
    user_id: UserId,
    currency: Annotated[str, typer.Option(help="ISO 4217 code.")] = "VND",
    credit_limit: Annotated[int, typer.Option(help="How far below zero charges may go.")] = 0,
    low_balance_threshold: LowBalanceThreshold = None,
    grace_amount: GraceAmount = None,
    grace_period: GracePeriod = None,
    reactivation_threshold: ReactivationThreshold = None,
    as_json: Json = False,
) -> None:
    """Open an account (again with the same settings is a no-op)."""
    options = (low_balance_threshold, grace_amount, grace_period, reactivation_threshold)
    policy = None if options == (None,) * 4 else _policy(AccountPolicy(), *options)
    balance = _service(ctx).open_account(
        user_id, currency=currency, credit_limit=credit_limit, policy=policy
    )
    _print_balance(balance, as_json)


@account_app.command("policy")
def account_policy(
    ctx: typer.Context,
    user_id: UserId,
    low_balance_threshold: LowBalanceThreshold = None,
    grace_amount: GraceAmount = None,
    grace_period: GracePeriod = None,
    reactivation_threshold: ReactivationThreshold = None,
    reset: Annotated[
        bool, typer.Option(help="Start from the default policy instead of the account's.")
    ] = False,
    as_json: Json = False,
) -> None:
    """Change an account's alert threshold and suspension rule; applies at once."""
    svc = _service(ctx)
    base = AccountPolicy() if reset else svc.get_balance(user_id).policy
    options = (low_balance_threshold, grace_amount, grace_period, reactivation_threshold)
    balance = svc.set_account_policy(user_id, _policy(base, *options))
    _print_balance(balance, as_json)


@app.command()
def recharge(
    ctx: typer.Context,
    user_id: UserId,
    amount: Amount,
    description: Description = None,
    reference_model: ReferenceModel = None,
    reference_id: ReferenceId = None,
    idempotency_key: IdempotencyKey = None,
    as_json: Json = False,
) -> None:
    """Credit an account."""
    svc = _service(ctx)
    tx = svc.recharge(
        user_id,
        amount,
        description=description,
        reference_model=reference_model,
        reference_id=reference_id,
        idempotency_key=idempotency_key,
    )
    _print_transaction(svc, tx, as_json)


@app.command()
def charge(
    ctx: typer.Context,
    user_id: UserId,
    amount: Amount,
    service_type: Annotated[str, typer.Argument(help="What is charged: vps, bandwidth, api…")],
    description: Description = None,
    reference_model: ReferenceModel = None,
    reference_id: ReferenceId = None,
    idempotency_key: IdempotencyKey = None,
    allow_overdraft: Annotated[
        bool, typer.Option(help="Record usage already delivered even past the credit limit.")
    ] = False,
    as_json: Json = False,
) -> None:
    """Debit an account for a service; refused if the balance cannot cover it."""
    svc = _service(ctx)
    request = Charge(
        user_id,
        amount,
        service_type,
        description=description,
        reference_model=reference_model,
        reference_id=reference_id,
        idempotency_key=idempotency_key,
        allow_overdraft=allow_overdraft,
    )
    tx = svc.charge(request)
    _print_transaction(svc, tx, as_json)


@app.command()
def refund(
    ctx: typer.Context,
    transaction_id: Annotated[int, typer.Argument(help="The charge's ledger row id.")],
    amount: Annotated[
        int | None, typer.Argument(help="Minor units; default: all not refunded yet.")
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Why; shown in the history.")] = None,
    idempotency_key: IdempotencyKey = None,
    as_json: Json = False,
) -> None:
    """Give back (part of) a charge as a refund row; refunds never exceed the charge."""
    svc = _service(ctx)
    tx = svc.refund(transaction_id, amount, reason=reason, idempotency_key=idempotency_key)
    _print_transaction(svc, tx, as_json)


@app.command()
def adjust(
    ctx: typer.Context,
    user_id: UserId,
    delta: Annotated[int, typer.Option(help="Signed minor units, e.g. --delta -500.")],
    reason: Annotated[str, typer.Option(help="Why (required).")],
    actor: Annotated[str, typer.Option(help="Who (required).")],
    idempotency_key: IdempotencyKey = None,
    as_json: Json = False,
) -> None:
    """An administrator's signed correction of the balance, with who and why."""
    svc = _service(ctx)
    tx = svc.adjust(user_id, delta, reason=reason, actor=actor, idempotency_key=idempotency_key)
    _print_transaction(svc, tx, as_json)


@app.command()
def hold(
    ctx: typer.Context,
    user_id: UserId,
    amount: Amount,
    service_type: Annotated[str, typer.Argument(help="What the reserved money is for.")],
    ttl: Annotated[
        int | None, typer.Option(help="Seconds until the hold expires (default: never).")
    ] = None,
    description: Description = None,
    idempotency_key: IdempotencyKey = None,
    as_json: Json = False,
) -> None:
    """Reserve funds for usage being metered (authorize); capture or void it later."""
    reserved = _service(ctx).authorize(
        user_id,
        amount,
        service_type,
        ttl=ttl,
        description=description,
        idempotency_key=idempotency_key,
    )
    _print_hold(reserved, as_json)


@app.command()
def capture(
    ctx: typer.Context,
    hold_id: Annotated[int, typer.Argument(help="The hold's id.")],
    amount: Annotated[
        int | None, typer.Argument(help="Minor units to charge; default: all of the hold.")
    ] = None,
    idempotency_key: IdempotencyKey = None,
    as_json: Json = False,
) -> None:
    """Charge up to a hold's amount and release the rest."""
    svc = _service(ctx)
    tx = svc.capture(hold_id, amount, idempotency_key=idempotency_key)
    _print_transaction(svc, tx, as_json)


@app.command()
def void(
    ctx: typer.Context,
    hold_id: Annotated[int, typer.Argument(help="The hold's id.")],
    as_json: Json = False,
) -> None:
    """Release a hold without charging."""
    _print_hold(_service(ctx).void(hold_id), as_json)


@app.command("suspend-overdue")
def suspend_overdue(ctx: typer.Context) -> None:
    """Suspend the accounts whose grace period ended (the scheduler does it every minute)."""
    console.print(f"suspended {_service(ctx).suspend_overdue():,} accounts")


@app.command("purge-refusals")
def purge_refusals(
    ctx: typer.Context,
    older_than_hours: Annotated[
        float,
        typer.Option(help="Forget refusals remembered longer ago than this.", min=1),
    ] = 24.0,
) -> None:
    """Forget refused requests' answers kept under their idempotency keys (the scheduler
    does it hourly); a retry with such a key is then decided afresh."""
    forgotten = _service(ctx).purge_refusals(older_than=timedelta(hours=older_than_hours))
    console.print(f"forgot {forgotten:,} refusals")


@app.command("expire-holds")
def expire_holds(ctx: typer.Context) -> None:
    """Release every hold past its expiry (the scheduler does this every minute)."""
    console.print(f"released {_service(ctx).expire_holds():,} expired holds")


def _print_hold(reserved: Hold, as_json: bool) -> None:
    if as_json:
        console.print_json(fmt.to_json(reserved))
        return
    expiry = reserved.expires_at.isoformat(timespec="seconds") if reserved.expires_at else "never"
    console.print(
        f"hold #{reserved.id}: {reserved.amount:,} for {escape(reserved.service_type)} on "
        f"account {reserved.user_id}, {reserved.status}, expires {expiry}"
    )


def _print_balance(balance: Balance, as_json: bool) -> None:
    if as_json:
        console.print_json(fmt.to_json(balance))
    else:
        console.print(fmt.balance_card(balance))


def _print_transaction(svc: BalanceService, tx: Transaction, as_json: bool) -> None:
    if as_json:
        console.print_json(fmt.to_json(tx))
        return
    balance = svc.get_balance(tx.user_id)
    console.print(fmt.transaction_line(tx, balance.currency))
    console.print(fmt.balance_card(balance))


@app.command()
def show(ctx: typer.Context, user_id: UserId, as_json: Json = False) -> None:
    """Show an account's balance card."""
    _print_balance(_service(ctx).get_balance(user_id), as_json)


@app.command()
def history(
    ctx: typer.Context,
    user_id: UserId,
    limit: Annotated[int, typer.Option(help="Rows per page (1-1000).")] = 50,
    before_id: Annotated[
        int | None, typer.Option(help="Continue after this row id (the last one shown).")
    ] = None,
    as_json: Json = False,
) -> None:
    """List an account's ledger rows, newest first."""
    svc = heavy_reader(ctx)
    transactions = svc.get_transactions(user_id, limit=limit, before_id=before_id)
    if as_json:
        console.print_json(fmt.to_json(transactions))
        return
    currency = svc.get_balance(user_id).currency
    console.print(fmt.history_table(transactions, currency))
    if len(transactions) == limit:
        console.print(f"[dim]next page: --before-id {transactions[-1].id}[/]")


def _instant(text: str) -> datetime:
    """ISO 8601 date or date-time; without a zone it is UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an ISO 8601 date or date-time") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@app.command()
def statement(
    ctx: typer.Context,
    user_id: UserId,
    start: Annotated[
        str, typer.Option("--from", help="Start (inclusive), ISO 8601; UTC unless a zone is given.")
    ],
    end: Annotated[
        str | None, typer.Option("--to", help="End (exclusive), ISO 8601; default: now.")
    ] = None,
    as_json: Json = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print the rows as CSV.")] = False,
) -> None:
    """Opening balance, the movements of a period and the closing balance, from the ledger."""
    period_end = _instant(end) if end else clock.now()
    result = heavy_reader(ctx).statement(user_id, _instant(start), period_end)
    if as_json:
        console.print_json(fmt.to_json(result))
    elif as_csv:
        fmt.write_csv(sys.stdout, [dataclasses.asdict(tx) for tx in result.transactions])
    else:
        console.print(fmt.statement_header(result))
        console.print(fmt.history_table(result.transactions[::-1], result.currency))


@app.command()
def demo(
    path: Annotated[str, typer.Option(help="SQLite file to (re)create for the demo.")] = (
        "balance-demo.db"
    ),
    threads: Annotated[int, typer.Option(min=2, max=256, help="Racing threads.")] = 32,
    charges: Annotated[int, typer.Option(min=1, max=10_000, help="Charges per thread.")] = 50,
) -> None:
    """Run a charge storm on a fresh SQLite file and check that nothing was overdrawn."""
    from .demo import run_demo

    if not run_demo(console, path=path, threads=threads, charges_per_thread=charges):
        raise typer.Exit(1)
