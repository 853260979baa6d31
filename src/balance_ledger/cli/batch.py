"""``balance charge-batch FILE``: bill a CSV or JSON Lines file of charges with charge_many."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..errors import BalanceError, StorageError
from ..models import Transaction
from . import format as fmt
from .app import Json, _service, app, console
from .sync import EXIT_OUT_OF_SYNC, _progress

CHUNK = 1_000  # items per charge_many call in independent mode (the progress bar's step)
_INTEGERS = ("user_id", "amount")
# Not str.isdigit, which also accepts superscripts and other scripts' digits.
_ASCII_INTEGER = re.compile(r"-?[0-9]+")
_TRUTH = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _csv_items(path: Path) -> Iterator[object]:
    # utf-8-sig: spreadsheets start their CSV files with a byte-order mark.
    with path.open(newline="", encoding="utf-8-sig") as stream:
        for row in csv.DictReader(stream):
            yield _typed({k: v for k, v in row.items() if v not in ("", None)})


def _jsonl_items(path: Path) -> Iterator[object]:
    with path.open(encoding="utf-8-sig") as stream:
        for line in stream:
            if line.strip():
                try:
                    yield json.loads(line)
                except (ValueError, RecursionError) as error:
                    yield f"malformed JSON line: {error}"  # refused as that item's error


def _typed(row: dict[str, Any]) -> dict[str, Any]:
    """CSV gives text: numbers and flags become int/bool; anything else stays for the
    core to refuse with a typed error."""
    for name in _INTEGERS:
        if name in row and _ASCII_INTEGER.fullmatch(row[name]):
            row[name] = int(row[name])
    if "allow_overdraft" in row:
        row["allow_overdraft"] = _TRUTH.get(row["allow_overdraft"].lower(), row["allow_overdraft"])
    return row


def _items(path: Path) -> list[object]:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise typer.BadParameter("the file must end in .csv or .jsonl", param_hint="FILE")
    try:
        return list(_csv_items(path) if suffix == ".csv" else _jsonl_items(path))
    except UnicodeDecodeError as error:
        raise typer.BadParameter(
            f"the file is not UTF-8 text: {error}", param_hint="FILE"
        ) from None


@app.command("charge-batch")
def charge_batch(
    ctx: typer.Context,
    file: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, help="CSV with a header, or JSON Lines: one charge each."
        ),
    ],
    mode: Annotated[
        str, typer.Option(help="independent (each item on its own) or all_or_nothing.")
    ] = "independent",
    as_json: Json = False,
) -> None:
    """Charge every item of FILE (columns/keys: charge's arguments); exit 1 if any refused.

    Items are committed 1,000 at a time: if the database fails part-way, the summary of
    what was done is printed before the error. Give items idempotency keys so that
    running the file again is safe.
    """
    if mode not in ("independent", "all_or_nothing"):
        raise typer.BadParameter("use independent or all_or_nothing", param_hint="--mode")
    svc = _service(ctx)
    items = _items(file)
    results: list[Transaction | BalanceError] = []
    with _progress(not as_json, "charging") as progress:
        step = CHUNK if mode == "independent" else max(len(items), 1)
        try:
            for start in range(0, len(items), step):
                chunk = items[start : start + step]
                results += svc.charge_many(chunk, mode=mode)  # type: ignore[arg-type]
                if progress is not None:
                    progress(len(results), len(items))
        except StorageError:
            console.print(_summary(results))
            console.print(f"stopped after {len(results):,} of {len(items):,} items")
            raise
    if as_json:
        console.print_json(json.dumps([_result(n, r) for n, r in enumerate(results, 1)]))
    else:
        console.print(_summary(results))
    if any(isinstance(r, BalanceError) for r in results):
        raise typer.Exit(EXIT_OUT_OF_SYNC)


def _result(item: int, result: Transaction | BalanceError) -> dict[str, Any]:
    if isinstance(result, BalanceError):
        error = type(result).__name__
        return {"item": item, "error": error, "message": str(result), "replayed": result.replayed}
    return {"item": item, "transaction": json.loads(fmt.to_json(result))}


def _summary(results: list[Transaction | BalanceError]) -> Table:
    charged = [r for r in results if isinstance(r, Transaction)]
    refused = Counter(type(r).__name__ for r in results if isinstance(r, BalanceError))
    table = Table(title=f"Batch of {len(results):,} items")
    table.add_column("Outcome")
    table.add_column("Items", justify="right")
    table.add_column("Amount (minor units)", justify="right")
    table.add_row("charged", f"{len(charged):,}", f"{sum(t.amount for t in charged):,}")
    for name, count in refused.most_common():
        table.add_row(f"refused: {name}", f"{count:,}", "")
    return table
