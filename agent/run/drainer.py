"""The ring buffer emptied on a thread of its own, whatever the tracer's main thread is doing.

The main thread makes the connection rows a step at a time (run.kept); at full churn a
step takes most of a second of CPU, and a ring buffer read only between steps fills up and
drops records however the steps are timed.  The drainer reads the ring every DRAIN_EVERY_S
(the read is a few numpy operations on its memory map: kernel.ringbuf) and keeps what it
read until the main thread takes it (then run.backlog holds what waits for a step, on disk past
16 MiB); the main thread takes it between the parts of its steps and notes too (run.kept), so
that what waits here is a part's time of records, not a whole note's.
(Lowering the main thread's priority instead does not work: a thread the kernel puts off
while it holds Python's GIL holds up the drainer too, and the ring fills: tried, 1.4 M
records dropped in a minute of full churn.)

For the same reason the main thread takes what was read in the parts it was read in, and
never joins them (Tracer._take, joined() for the callers that want one array): after a long
note or step, seconds of full churn wait, and numpy holds the GIL through each operation on
them.  With the workload keeping both CPUs busy, the kernel can put the main thread off for
several times an operation's CPU while it holds the GIL: one pass over 3.5 s of records at
50,000 conn/s stopped the drainer for 0.85 s, their join for 0.6 s, and each time the ring
filled (docs/overhead.md, "Drops at 50,000 conn/s").
"""
from __future__ import annotations

import threading
from typing import Callable

import numpy as np

from ..record import layout

DRAIN_EVERY_S = 0.05


def joined(parts: list[np.ndarray]) -> np.ndarray:
    """The parts of a take() as one array of records (none: an empty one)."""
    return np.concatenate(parts) if len(parts) > 1 else parts[0] if parts else np.empty(0, layout.EVENT_DTYPE)


class Drainer:
    def __init__(self, poll: Callable[[], np.ndarray], every: float = DRAIN_EVERY_S):
        """poll: reads the ring buffer (Probe.poll); called under this drainer's lock only."""
        self._poll, self._every = poll, every
        self._parts: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.backlog = 0  # records read and not taken yet
        self._thread = threading.Thread(target=self._run, name="tcpclose-drainer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._every):
            self._read()

    def _read(self) -> None:
        with self._lock:
            raw = self._poll()
            if len(raw):
                self._parts.append(raw)
                self.backlog += len(raw)

    def take(self) -> list[np.ndarray]:
        """Everything read so far, up to now, in order."""
        self._read()
        with self._lock:
            parts, self._parts, self.backlog = self._parts, [], 0
        return parts

    def stop(self) -> None:
        """No read after this returns (the probe can be closed)."""
        self._stopped.set()
        self._thread.join()
