"""The rows' files written on a thread of their own while the next rows are made.

Arrow's IPC and CSV writers do their work in C++ with the GIL released, so a thread writing
one part's rows (connections.arrow, and connections.csv or .parquet) runs beside the main
thread making the next part's.  Used at the end of a trace (run.kept.Kept.finish), when the
workload that was traced has stopped and a core is free: writing is some 12 % of the end
there (docs/overhead.md, "The end's writing on a thread of its own").  Not while tracing: the
steps keep to their share of a core by timing themselves, which a thread's work would escape.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable


class WriterThread:
    """Calls write(item) for each item given, in order, on one thread: at most one is being
    written while the caller goes on, so what waits is one part's rows.  An error of a write
    is raised to the caller at its next call, or at close()."""

    def __init__(self, write: Callable[[object], None]):
        self._write = write
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tcpclose-rows")
        self._last: Future | None = None

    def __call__(self, item: object) -> None:
        self.wait()
        self._last = self._pool.submit(self._write, item)

    def wait(self) -> None:
        """Until what was given is written (its error raised here)."""
        last, self._last = self._last, None
        if last is not None:
            last.result()

    def close(self) -> None:
        """Wait for the last write, then end the thread (the last write's error raised here)."""
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)
