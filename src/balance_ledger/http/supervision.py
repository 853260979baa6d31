"""The workers of ``balance serve --workers N`` end with their supervisor.

uvicorn's multiprocess supervisor spawns the workers and, on SIGTERM, stops them; but if
the supervisor itself dies without that (SIGKILL, the OOM killer, a crash), nothing tells
its workers: they keep serving the old code and settings and keep the port, so a new
``balance serve`` on it fails with "Address already in use".

So ``balance serve`` names itself in ``BALANCE_SERVE_SUPERVISOR_PID`` and each worker
(the app factory runs once in each) watches its parent from a daemon thread: once the
parent is no longer that process, the worker sends itself SIGTERM, which uvicorn handles
as any shutdown: stop accepting, finish the requests in flight (up to
``--shutdown-timeout``), exit. Polling ``os.getppid()`` needs nothing from uvicorn; a
dead parent's children are re-parented at once (to init or a subreaper), so the parent
pid never reads as the supervisor again. (Not ``PR_SET_PDEATHSIG``: it fires when the
*thread* that spawned the child ends, and uvicorn respawns workers from whichever thread
noticed a death.) With one worker uvicorn serves in the ``balance serve`` process itself:
then there is nothing to watch.

And ``balance serve`` exits 0 on SIGTERM, within a bound (``exit_zero_on_sigterm``).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType

SUPERVISOR_PID_ENV = "BALANCE_SERVE_SUPERVISOR_PID"
POLL_SECONDS = 0.5
EXIT_GRACE_SECONDS = 2.0

# uvicorn's own server log: where its shutdown messages go (the CLI mutes the others).
log = logging.getLogger("uvicorn.error")


def watch_supervisor(poll_seconds: float = POLL_SECONDS) -> threading.Thread | None:
    """In a worker of ``balance serve``: SIGTERM this process once its supervisor is gone.

    Returns the watching daemon thread, or None when there is no supervisor to watch
    (``BALANCE_SERVE_SUPERVISOR_PID`` unset, or naming this very process: one worker).
    """
    named = os.environ.get(SUPERVISOR_PID_ENV, "").strip()
    if not named.isdigit():
        if named:
            log.warning("ignoring %s=%r: not a process id", SUPERVISOR_PID_ENV, named)
        return None
    supervisor = int(named)
    if supervisor == os.getpid():
        return None
    thread = threading.Thread(
        target=_terminate_when_orphaned,
        args=(supervisor, poll_seconds),
        name="balance-supervisor-watch",
        daemon=True,  # never holds up the worker's own exit
    )
    thread.start()
    return thread


def _terminate_when_orphaned(supervisor: int, poll_seconds: float) -> None:
    # Also right when the supervisor died before this worker got here: then the parent
    # differs from the first look on.
    while os.getppid() == supervisor:
        time.sleep(poll_seconds)
    log.warning("supervisor [%d] is gone: worker [%d] shuts down", supervisor, os.getpid())
    os.kill(os.getpid(), signal.SIGTERM)


def exit_zero_on_sigterm(grace: float = EXIT_GRACE_SECONDS) -> None:
    """In the ``balance serve`` process: SIGTERM ends it with status 0, at most ``grace``
    seconds after uvicorn's own graceful shutdown.

    uvicorn serving in-process (one worker) takes SIGTERM over while it serves, drains,
    then restores this handler and raises the signal again, which by default would end
    the process with -SIGTERM; a stop that was asked for is a success. (The multiprocess
    supervisor installs its own handlers and returns normally.) A SIGTERM before uvicorn
    listens for it ends the start the same way.

    A request that outlived ``--shutdown-timeout`` was cancelled, but its thread may still
    wait in the database (on a lock held elsewhere), and the interpreter would wait for
    it at exit; so a daemon timer ends the process ``grace`` seconds on regardless. What
    that thread had not committed rolls back when its connection closes with the process.
    """

    def exit_zero(_signum: int, _frame: FrameType | None) -> None:
        timer = threading.Timer(grace, _exit_now)
        timer.daemon = True
        timer.start()
        raise SystemExit(0)  # unwinds: every ``finally`` and context manager runs

    signal.signal(signal.SIGTERM, exit_zero)


def _exit_now() -> None:
    main = threading.main_thread()
    stuck = [t.name for t in threading.enumerate() if not t.daemon and t is not main]
    if stuck:
        log.error("exiting without waiting for threads still running: %s", ", ".join(stuck))
    logging.shutdown()  # flushes the handlers
    os._exit(0)
