"""--transitions: the raw stream of every TCP state transition, written as CSV as it arrives.

What bcc's tcpstates prints, with two differences: `pid`/`comm` name the
socket's owner as tcpclose knows it (the task running at a transition is often
the peer, ksoftirqd or the idle task: that one is `task_pid`), and what the
stream lost is counted, in run.json ("transitions") and the summary.

The records come through a ring buffer of their own (bpf/tcpclose.bpf.c), ten
times the rate of the life records, and the tracer writes at most PER_DRAIN of
them each time it polls: a writer that falls behind loses transitions
(counted: `lost`), never a life.  Writing CSV costs about 4 us a
row in Python, so at full loopback churn (~250 000 transitions/s) the stream
alone takes a core: use it for raw detail, not to leave running.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..safefiles import open_stream
from . import layout
from .decode import FAMILY_NAMES, addresses

# Transitions written per poll of the tracer, about 0.1 s of CSV: a writer behind
# the stream leaves the rest in its ring (which then drops, counted) rather than
# keep the tracer from draining the life records' ring meanwhile.
PER_DRAIN = 25_000
COLUMNS = ["time", "pid", "comm", "owner_src", "task_pid", "family", "laddr", "lport", "raddr", "rport",
           "oldstate", "newstate", "skaddr"]


def decode(rec: np.ndarray, monotonic_to_epoch_ns: int) -> pd.DataFrame:
    """struct tcpclose_transition records -> one row each, times in epoch seconds."""
    states = layout.TCP_STATE_NAMES
    return pd.DataFrame({
        "time": (rec["ts_ns"].astype(np.int64) + monotonic_to_epoch_ns) / 1e9,
        "pid": rec["pid"].astype(np.int64),
        "comm": np.char.decode(rec["comm"], "utf-8", "replace").astype(object),
        "owner_src": pd.Series(rec["owner_src"]).map(layout.OWNER_SRC_NAMES).to_numpy(object),
        "task_pid": rec["task_pid"].astype(np.int64),
        "family": pd.Series(rec["family"]).map(FAMILY_NAMES).to_numpy(object),
        "laddr": addresses(rec["saddr"], rec["family"]),
        "lport": rec["sport"].astype(np.int64),
        "raddr": addresses(rec["daddr"], rec["family"]),
        "rport": rec["dport"].astype(np.int64),
        "oldstate": pd.Series(rec["oldstate"]).map(states).to_numpy(object),
        "newstate": pd.Series(rec["newstate"]).map(states).to_numpy(object),
        "skaddr": rec["skaddr"].astype(np.uint64),
    }, columns=COLUMNS)


class Writer:
    """Appends decoded transitions to a CSV file, or to stdout for "-", header first."""

    def __init__(self, path: Path | str, monotonic_to_epoch_ns: int, force: bool = False):
        self.path = str(path)
        self._file = sys.stdout if self.path == "-" else open_stream(path, "transitions", force)
        self._offset_ns = monotonic_to_epoch_ns
        self._file.write(",".join(COLUMNS) + "\n")
        self.written = 0

    def write(self, rec: np.ndarray) -> None:
        if len(rec):
            decode(rec, self._offset_ns).to_csv(self._file, header=False, index=False, float_format="%.6f")
            self._file.flush()
            self.written += len(rec)

    def close(self) -> None:
        if self._file is not sys.stdout:
            self._file.close()


def accounting(written: int, counters: dict[str, int], path: str) -> dict:
    """run.json's "transitions": what the BPF side offered, what the ring lost, what was written."""
    offered, lost = counters.get("transitions", 0), counters.get("transition_drops", 0)
    # offered - lost - written: offered after the last read of the ring, as tracing ended
    return {"file": path, "offered": offered, "lost": lost, "written": written,
            "in_flight_at_end": offered - lost - written}
