"""``balance events tail|retry``, ``balance webhook add|list|remove``, ``balance dispatch``."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import timedelta
from typing import Annotated

import typer
from rich.markup import escape

from ..models import Event
from ..service import BalanceService
from .app import Json, _service, app, console

events_app = typer.Typer(help="The event outbox.", no_args_is_help=True)
app.add_typer(events_app, name="events")
webhook_app = typer.Typer(help="Webhooks that receive events.", no_args_is_help=True)
app.add_typer(webhook_app, name="webhook")


@events_app.command("tail")
def events_tail(
    ctx: typer.Context,
    after_id: Annotated[int, typer.Option(help="Start after this event id.", min=0)] = 0,
    user_id: Annotated[int | None, typer.Option(help="Only this account's events.")] = None,
    limit: Annotated[int, typer.Option(help="Events per page.", min=1, max=1000)] = 100,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events until interrupted.")
    ] = False,
    interval: Annotated[
        float, typer.Option(help="Seconds between polls with --follow.", min=0.05)
    ] = 1.0,
    as_json: Json = False,
) -> None:
    """Print events (one JSON object per line with --json)."""
    svc = _service(ctx)
    last = after_id
    while True:
        last = _print_pages(svc, last, user_id, limit, as_json)
        if not follow:
            return
        time.sleep(interval)


def _print_pages(
    svc: BalanceService, after_id: int, user_id: int | None, limit: int, as_json: bool
) -> int:
    """Print every event after ``after_id``; return the last id printed (or after_id)."""
    while page := svc.events(after_id=after_id, limit=limit, user_id=user_id):
        for event in page:
            _print(event, as_json)
        after_id = page[-1].id
    return after_id


def _print(event: Event, as_json: bool) -> None:
    if as_json:
        line = {"id": event.id, "created_at": event.created_at.isoformat(), **event.payload}
        print(json.dumps(line, ensure_ascii=False), flush=True)  # NDJSON, unwrapped
        return
    payload = {k: v for k, v in event.payload.items() if k not in ("type", "occurred_at")}
    details = " ".join(f"{k}={v}" for k, v in payload.items() if v is not None)
    console.print(
        f"{event.id:>8}  {event.created_at:%Y-%m-%d %H:%M:%S}  "
        f"[bold]{event.event_type}[/]  {escape(details)}",
        highlight=False,
        soft_wrap=True,
    )


@events_app.command("retry")
def events_retry(
    ctx: typer.Context, event_id: Annotated[int, typer.Argument(help="The event's id.")]
) -> None:
    """Give an event's dead deliveries a fresh set of attempts."""
    revived = _service(ctx).retry_event(event_id)
    console.print(f"{revived} dead deliveries of event {event_id} will be tried again")


@webhook_app.command("add")
def webhook_add(
    ctx: typer.Context,
    url: Annotated[
        str,
        typer.Argument(help="An http(s) URL (POSTs) or redis://host:port/db?stream=NAME (XADDs)."),
    ],
    events: Annotated[
        str | None, typer.Option(help="Comma list of event types (default: every event).")
    ] = None,
    secret: Annotated[
        str | None, typer.Option(help="HMAC secret, 16+ characters (default: a random one).")
    ] = None,
) -> None:
    """Subscribe a URL; prints its signing secret."""
    kinds = None if events is None else [name.strip() for name in events.split(",")]
    webhook, key = _service(ctx).add_webhook(url, event_types=kinds, secret=secret)
    console.print(f"webhook {webhook.id}: {escape(webhook.url)}")
    console.print(key, markup=False, highlight=False)


@webhook_app.command("list")
def webhook_list(ctx: typer.Context) -> None:
    """Every webhook (never its secret)."""
    for hook in _service(ctx).list_webhooks():
        kinds = "*" if hook.event_types is None else ",".join(sorted(hook.event_types))
        removed = f"  removed {hook.removed_at:%Y-%m-%d %H:%M}" if hook.removed_at else ""
        console.print(f"{hook.id:>4}  {escape(hook.url)}  {kinds}{removed}", highlight=False)


@webhook_app.command("remove")
def webhook_remove(
    ctx: typer.Context, webhook_id: Annotated[int, typer.Argument(help="The webhook's id.")]
) -> None:
    """Stop delivering to a webhook."""
    _service(ctx).remove_webhook(webhook_id)
    console.print(f"webhook {webhook_id} removed")


@app.command()
def dispatch(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="One pass, then exit.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between idle polls.", min=0.05)] = 1.0,
    lease: Annotated[
        float, typer.Option(help="Seconds a claimed delivery is ours before others retry it.")
    ] = 60.0,
    max_attempts: Annotated[int, typer.Option(help="Attempts before a delivery is dead.")] = 10,
) -> None:
    """Deliver pending events to the webhooks until interrupted (any number may run)."""
    dispatcher = _service(ctx).dispatcher(lease=timedelta(seconds=lease), max_attempts=max_attempts)
    ctx.call_on_close(dispatcher.close)
    # The first pass is outside the loop: a wrong database (unreachable, no schema) is
    # said at once, with its exit code, instead of being retried for ever.
    report = dispatcher.run_once()
    if once:
        console.print(
            f"fanned out {report.fanned_out}, delivered {report.delivered}, "
            f"failed {report.failed}, dead {report.dead}"
        )
        return
    # The loop logs a failed pass (an outage) and goes on: show those lines, -v or not.
    loop_log = logging.getLogger(type(dispatcher).__module__)
    if loop_log.getEffectiveLevel() > logging.ERROR:
        loop_log.setLevel(logging.ERROR)
    dispatcher.run(threading.Event(), interval)
