"""``python -m bench batch|callpath|charges|cluster|cost|http|report|verify [options]``"""

from __future__ import annotations

import sys

from . import batch, callpath, charges, cluster, cost, http_load, report, verify

COMMANDS = {
    "batch": batch.main,
    "callpath": callpath.main,
    "charges": charges.main,
    "cluster": cluster.main,
    "cost": cost.main,
    "http": http_load.main,
    "report": report.main,
    "verify": verify.main,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python -m bench {{{','.join(COMMANDS)}}} [--help]")
    COMMANDS[sys.argv[1]](sys.argv[2:])
