"""wrk as the HTTP load generator: C, event-driven, so the generator is not the bottleneck.

Each request posts one charge with its own ``Idempotency-Key`` (as a billing app's
retries need), to account 1 (hot) or a random one among ``accounts`` (spread). wrk is
Debian's ``wrk`` package (``apt-get install wrk``).
"""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from .measure import Figures

_SCRIPT = """
local threads, counter, prefix = {}, 0, ""
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end
function init(args)
  prefix = "%(run)s-" .. id .. "-"
  math.randomseed(id * 7919 + 1)
end
request = function()
  counter = counter + 1
  local user = %(user)s
  local headers = {
    ["Authorization"] = "Bearer %(key)s",
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = prefix .. counter,
  }
  return wrk.format("POST", "/v1/accounts/" .. user .. "/charges", headers, '%(body)s')
end
"""

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def installed() -> bool:
    return shutil.which("wrk") is not None


def run(
    base: str,
    key: str,
    *,
    workload: str,
    accounts: int,
    service_type: str,
    connections: int,
    threads: int,
    seconds: float,
) -> Figures:
    """``connections`` keep-alive connections from ``threads`` wrk threads for ``seconds``.

    Raises SystemExit when any answer was not a 2xx (a refused or failed charge would
    measure the wrong path)."""
    user = "1" if workload == "hot" else f"math.random(1, {accounts})"
    body = f'{{"amount": 1, "service_type": "{service_type}"}}'
    script = _SCRIPT % {"run": uuid.uuid4().hex[:8], "user": user, "key": key, "body": body}
    with tempfile.TemporaryDirectory(prefix="balance-wrk-") as directory:
        path = Path(directory) / "charges.lua"
        path.write_text(script)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        command = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(path),
            base,
        ]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        raise SystemExit(f"wrk: {match.group(1)} answers were not 2xx:\n{output}")
    requests = int(_find(r"(\d+) requests in", output))
    per_second = float(_find(r"Requests/sec:\s+([\d.]+)", output))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Figures(
        charges=requests,
        charges_per_s=per_second,
        avg_ms=_ms(_find(r"Latency\s+(\S+)", output)),
        client_cpu=100 * cpu / max(1, round(seconds)),
        p50_ms=_ms(_find(r"\s50%\s+(\S+)", output)),
        p99_ms=_ms(_find(r"\s99%\s+(\S+)", output)),
    )


def _find(pattern: str, output: str) -> str:
    match = re.search(pattern, output)
    if match is None:
        raise SystemExit(f"wrk printed no {pattern!r}:\n{output}")
    return match.group(1)


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]
