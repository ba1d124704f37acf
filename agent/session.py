"""A tracing run: load the probe, poll it in batches, decode, record, and account at the end."""
from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import pandas as pd

from . import records
from .filters import Filters

POLL_INTERVAL_S = 0.1


class Tracer:
    """The live side of a run.  drain() hands back what arrived; finish() ends the run."""

    def __init__(self, filters: Filters, record_path: Path | None = None):
        from .loader import Probe  # the bcc import happens here, not at module import

        self.filters = filters
        self._probe = Probe(filters)
        # bpf_ktime_get_ns() reads CLOCK_MONOTONIC; the outputs use epoch seconds
        self._offset_ns = time.time_ns() - time.monotonic_ns()
        self._recorder = records.Recorder(record_path) if record_path else None
        self._frames: list[pd.DataFrame] = []
        self.started_at = time.time()

    def drain(self) -> pd.DataFrame:
        frame = records.decode(self._probe.poll(), self._offset_ns)
        if len(frame):
            self._frames.append(frame)
            if self._recorder:
                self._recorder.write(frame)
        return frame

    def finish(self) -> tuple[pd.DataFrame, dict]:
        """Last drain, the lives still open, the counters; unloads the probe."""
        self.drain()
        ended_at = time.time()
        still_open = records.decode(self._probe.open_lives(), self._offset_ns)
        counters = self._probe.counters() | {"recursion_misses": self._probe.recursion_misses()}
        self._probe.close()
        open_count = len(still_open)
        keep = [self.filters.keeps_owner(p, c) for p, c in zip(still_open["pid"], still_open["comm"])]
        still_open = still_open[keep].assign(event_at=ended_at)
        if len(still_open):
            self._frames.append(still_open)
            if self._recorder:
                self._recorder.write(still_open)
        run = {"started_at": self.started_at, "ended_at": ended_at, "counters": counters, "open_lives": open_count}
        if self._recorder:
            self._recorder.finish(run)
        return records.concat(self._frames), run


@contextmanager
def stop_on_signals():
    """An Event set by Ctrl-C or SIGTERM, so that a run ends cleanly and still writes everything."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(tracer: Tracer, stop: threading.Event, duration: float | None = None,
        until: Callable[[], bool] | None = None) -> tuple[pd.DataFrame, dict]:
    """Poll until stopped, the duration is over, or until() says so."""
    deadline = None if duration is None else time.monotonic() + duration
    while not stop.is_set():
        if deadline is not None and time.monotonic() >= deadline:
            break
        if until is not None and until():
            break
        tracer.drain()
        stop.wait(POLL_INTERVAL_S)
    return tracer.finish()
