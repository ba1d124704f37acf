"""Run control: Ctrl-C, SIGTERM, SIGHUP and SIGQUIT end a run cleanly, and the loop that polls the tracer until then."""
from __future__ import annotations

import signal
import sys
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable

from ..errors import Abandoned
from .progress import Progress

if TYPE_CHECKING:  # (the tracer imports bcc's loader lazily; this module stays light)
    import pandas as pd

    from ..record.runinfo import RunInfo
    from .tracer import Tracer

POLL_INTERVAL_S = 0.1
# Each ends a run as Ctrl-C does, the files still written: SIGHUP is an ssh session that
# dropped, SIGQUIT a Ctrl-\ (their default actions end the process with nothing written).
ENDING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
# From this many records, the end of a run is announced: it makes their rows and files at
# some 7 us a record on the development VM's AMD host (docs/overhead.md, "The end's writing
# on a thread of its own"), a second and a half here.
LONG_END_RECORDS = 200_000


def announce_long_end(records: int, announce: Callable[[str], None] | None) -> None:
    """Tell the user, from LONG_END_RECORDS records on, that the files will take a while."""
    if announce and records >= LONG_END_RECORDS:
        announce(f"analysing {records:,} records and writing the files; this takes a while "
                 "(Ctrl-C twice abandons it)")


class Stop:
    """Set by a signal handler, read by the polling loop.

    Not a threading.Event: Event.set() takes a non-reentrant lock, and a signal
    handler runs in the main thread, which may hold that very lock inside
    Event.wait(): a deadlock, seen once at Ctrl-C.  A plain attribute and short
    sleeps cannot block.

    After tracing (finishing()), the files are still to be written, which takes a
    minute for a minute of full churn: a signal then is answered with a warning,
    and only the one after it abandons the files (errors.Abandoned)."""

    def __init__(self, warn: Callable[[str], None] | None = None):
        self._set = False
        self._finishing = False
        self._warned = False
        self._warn = warn or (lambda text: print(text, file=sys.stderr, flush=True))

    def finishing(self) -> None:
        """Tracing is over; what follows writes the files."""
        self._finishing = True

    def signalled(self) -> None:
        """Ctrl-C or SIGTERM: end tracing; once it has ended, warn, then abandon."""
        if not self._set and not self._finishing:
            self._set = True
        elif not self._warned:
            self._warned = True
            self._warn("tcpclose: still analysing the run and writing its files; "
                       "Ctrl-C again abandons them")
        else:
            raise Abandoned

    def is_set(self) -> bool:
        return self._set

    def wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._set and time.monotonic() < deadline:
            time.sleep(min(0.02, max(deadline - time.monotonic(), 0)))


@contextmanager
def stop_on_signals():
    """A Stop set by Ctrl-C, SIGTERM, SIGHUP or SIGQUIT, so that a run ends cleanly and still writes
    everything: keep the files' writing inside it too (see Stop)."""
    stop = Stop()
    previous = {sig: signal.signal(sig, lambda *_: stop.signalled()) for sig in ENDING_SIGNALS}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(tracer: Tracer, stop: Stop, duration: float | None = None, until: Callable[[], bool] | None = None,
        progress: Progress | None = None, announce: Callable[[str], None] | None = None) -> tuple[pd.DataFrame, RunInfo]:
    """Poll until stopped, the duration is over, or until() says so.  announce: told
    when the end of a big run will take a while."""
    deadline = None if duration is None else time.monotonic() + duration
    try:
        while not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            if until is not None and until():
                break
            tracer.drain()
            if progress:
                progress.update(tracer.progress)
            stop.wait(POLL_INTERVAL_S)
        stop.finishing()
        if progress:  # the totals, before the probe is unloaded
            tracer.drain()
            progress.update(tracer.progress, force=True)
            progress.close()
        announce_long_end(tracer.records_kept, announce)
        return tracer.finish(progress.made if progress else None)
    finally:
        if progress:
            progress.close()
