"""Run the charges matrix and write docs/performance.md and docs/performance-charges.png.

The generated part of the document sits between two markers and is replaced on every
run; text outside them (analysis, profiles) is kept. The plot needs matplotlib
(``pip install -e '.[bench]'``); ``--no-plot`` runs without it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from . import reference
from .charges import HEADER, Measurement, add_matrix_arguments, matrix, measure, row
from .databases import server_settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BEGIN = "<!-- BEGIN bench report: written by `python -m bench report`; edit outside -->"
END = "<!-- END bench report -->"
SETUP_SECONDS = 3  # per configuration: database, migrations, accounts (measured here)
COLOURS = {"sqlite": "tab:green", "postgresql": "tab:blue", "mariadb": "tab:orange"}
MARKERS = {"single": "o", "batch": "s", "coalesced": "D"}
WORKLOADS = {
    "hot": "hot: every charge to one account",
    "spread": "spread: random accounts",
}


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return ""
    return done.stdout.strip()


def conditions(backends: list[str], args: argparse.Namespace) -> list[tuple[str, str]]:
    """What the figures depend on, read at the start of the run."""
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    # The library may be mid-edit while the benchmark runs: say how far from the commit.
    if changed := _git("diff", "--shortstat", "HEAD", "--", "src"):
        commit += f" + uncommitted changes in src/ ({changed})"
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    drivers = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("SQLAlchemy", "psycopg", "PyMySQL")
    )
    rows = [
        ("when", f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit}"),
        (
            "machine",
            f"{os.cpu_count()} CPUs, {memory:.0f} GiB; the client and every server share it; "
            f"load average before the run {os.getloadavg()[0]:.2f}",
        ),
        ("client", f"Python {platform.python_version()}, {drivers}"),
        (
            "run",
            f"{args.seconds:g} s per side and configuration; spread over {args.accounts:,} "
            f"accounts; batch = {args.batch_size} charges per transaction; a fresh database per "
            "configuration, ours first, then the reference on the same database",
        ),
    ]
    for backend in backends:
        settings = server_settings(backend)
        version = settings.pop("version")
        detail = ", ".join(f"{k}={v}" for k, v in settings.items())
        rows.append((backend, f"{version}; {detail}"))
    return rows


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _table(results: list[Measurement]) -> list[str]:
    lines = [
        "| backend | mode | clients | ours charges/s | reference charges/s | ours/ref "
        "| ours p50 / p99 ms | ours avg ms | ref avg ms | client CPU % ours / ref |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for m in results:
        o, r = m.ours, m.reference
        ref_rate = "–" if r is None else f"{r.charges_per_s:,.0f}"
        ratio = "–" if m.ratio is None else f"{m.ratio:.2f}"
        cpu = f"{o.client_cpu:.0f} / " + ("–" if r is None else f"{r.client_cpu:.0f}")
        lines.append(
            f"| {m.backend} | {m.work.mode} | {m.work.clients} | {o.charges_per_s:,.0f} "
            f"| {ref_rate} | {ratio} | {_ms(o.p50_ms)} / {_ms(o.p99_ms)} | {_ms(o.avg_ms)} "
            f"| {_ms(None if r is None else r.avg_ms)} | {cpu} |"
        )
    return lines


def _references(backends: list[str], args: argparse.Namespace) -> list[str]:
    lines = [
        "### The references",
        "",
        "The same rows written with raw SQL, in one transaction per charge (per batch in "
        "batch mode), under the same CHECK constraints and append-only triggers. They leave "
        "`row_hash` NULL: the ledger's path also reads the account's chain head and computes "
        "the SHA-256 link, validates in Python and goes through SQLAlchemy. Spread batches "
        f"draw one account from each 1/{args.batch_size} of the ids, ascending, so that "
        "concurrent reference batches lock in one order (charge_many sorts its accounts).",
        "",
    ]
    for backend in backends:
        shown = reference.script(backend, args.accounts, args.batch_size)
        lines += [f"**{backend}**: {reference.describe(backend)}.", "", "```sql", shown, "```", ""]
    return lines


def document(
    results: list[Measurement],
    facts: list[tuple[str, str]],
    args: argparse.Namespace,
    plot: Path | None,
    minutes: float,
    command: str,
) -> str:
    lines = [
        BEGIN,
        "## Charges per second: the ledger and the database's own reference",
        "",
        f"`{command}`, {minutes:.1f} min in all. Latencies are per transaction "
        "(per `charge_many` call, or per reference batch, in batch mode). CPU % is the "
        "client's (the Python process, or pgbench), of one CPU; the servers use the rest.",
        "",
        "| condition | |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in facts),
        "",
    ]
    if plot is not None:
        relative = os.path.relpath(plot, args.out.resolve().parent)
        lines += [f"![charges/s against clients; dashed: the reference]({relative})", ""]
    for workload in dict.fromkeys(m.work.workload for m in results):
        lines += [f"### {WORKLOADS.get(workload, workload)}", ""]
        lines += _table([m for m in results if m.work.workload == workload])
        lines.append("")
    if any(m.reference is not None for m in results):
        lines += _references(list(dict.fromkeys(m.backend for m in results)), args)
    return "\n".join([*lines, END]) + "\n"


def write_document(path: Path, block: str) -> None:
    """Replace the generated block of ``path``, keeping what was written around it."""
    if not path.exists():
        path.write_text(f"# Performance\n\n{block}")
        return
    text = path.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].removeprefix("\n")
        path.write_text(head + block + tail)
    else:
        path.write_text(text.rstrip("\n") + "\n\n" + block)


def plot_charges(results: list[Measurement], path: Path) -> None:
    """charges/s against clients, a panel per workload, a line per backend and mode."""
    import matplotlib  # only here: bench runs without it unless a plot is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    workloads = list(dict.fromkeys(m.work.workload for m in results))
    lines = list(dict.fromkeys((m.backend, m.work.mode) for m in results))
    figure, axes = plt.subplots(
        1, len(workloads), figsize=(6 * len(workloads), 4.8), sharey=True, squeeze=False
    )
    for axis, workload in zip(axes[0], workloads, strict=True):
        for backend, mode in lines:
            points = sorted(
                (m.work.clients, m)
                for m in results
                if (m.backend, m.work.mode, m.work.workload) == (backend, mode, workload)
            )
            clients = [n for n, _ in points]
            style = {"color": COLOURS.get(backend), "marker": MARKERS.get(mode, "^")}
            axis.plot(clients, [m.ours.charges_per_s for _, m in points], "-", **style)
            refs = [(n, m.reference.charges_per_s) for n, m in points if m.reference is not None]
            if refs:
                axis.plot(*zip(*refs, strict=True), "--", markerfacecolor="none", **style)
        every = sorted({m.work.clients for m in results})
        axis.set_xscale("log", base=2)
        axis.set_xticks(every, [str(n) for n in every])
        axis.set_yscale("log")
        axis.set_title(WORKLOADS.get(workload, workload))
        axis.set_xlabel("clients")
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("charges/s (log)")
    handles = [
        Line2D([], [], color=COLOURS.get(b), marker=MARKERS.get(m, "^"), label=f"{b} {m}")
        for b, m in lines
    ]
    handles.append(Line2D([], [], color="grey", linestyle="--", label="reference (raw SQL)"))
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4))
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench report", description=__doc__)
    add_matrix_arguments(parser, seconds=5)
    parser.add_argument("--out", type=Path, default=DOCS / "performance.md")
    parser.add_argument("--plot", type=Path, default=DOCS / "performance-charges.png")
    parser.add_argument("--no-plot", action="store_true", help="write no PNG (no matplotlib)")
    args = parser.parse_args(argv)
    command = " ".join(["python -m bench report", *(sys.argv[2:] if argv is None else argv)])
    plot = None if args.no_plot else args.plot.resolve()
    if plot is not None and importlib.util.find_spec("matplotlib") is None:
        raise SystemExit("the plot needs matplotlib: pip install -e '.[bench]', or --no-plot")
    runs = matrix(args)
    backends = list(dict.fromkeys(backend for backend, _ in runs))
    sides = 2 if args.reference else 1
    estimate = len(runs) * (sides * args.seconds + SETUP_SECONDS) / 60
    print(f"{len(runs)} configurations, about {estimate:.0f} min", flush=True)
    facts = conditions(backends, args)
    started = time.perf_counter()
    print(HEADER)
    results = []
    for backend, work in runs:
        results.append(measure(backend, work, with_reference=args.reference))
        print(row(results[-1]), flush=True)
    minutes = (time.perf_counter() - started) / 60
    if plot is not None:
        plot_charges(results, plot)
    write_document(args.out, document(results, facts, args, plot, minutes, command))
    print(f"wrote {args.out}" + (f" and {plot}" if plot else "") + f" in {minutes:.1f} min")
