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
    """Appends decoded transitions to a CSV file, or to stdout for "-", header first.

    A disk that fills up (or a reader of stdout that went away) stops the stream, not the
    run: `stopped` says where and why, and what was offered after it is counted as not
    written (accounting)."""

    def __init__(self, path: Path | str, monotonic_to_epoch_ns: int, force: bool = False):
        self.path = str(path)
        self._file = sys.stdout if self.path == "-" else open_stream(path, "transitions", force)
        self._offset_ns = monotonic_to_epoch_ns
        self.written = 0
        self.stopped: str | None = None
        self._put(",".join(COLUMNS) + "\n")

    def _put(self, text: str) -> bool:
        if self.stopped:
            return False
        try:
            self._file.write(text)
            self._file.flush()
            return True
        except OSError as exc:
            self.stopped = f"{self.path}: {exc.strerror}"
            self.close()
            return False

    def write(self, rec: np.ndarray) -> None:
        if len(rec) and self._put(decode(rec, self._offset_ns).to_csv(header=False, index=False,
                                                                       float_format="%.6f")):
            self.written += len(rec)

    def close(self) -> None:
        if self._file is not sys.stdout:
            try:
                self._file.close()
            except OSError:  # the last buffered bytes did not fit either
                pass


def accounting(written: int, counters: dict[str, int], path: str, stopped: str | None = None) -> dict:
    """run.json's "transitions": what the BPF side offered, what the ring lost, what was
    written, and where and why the file stopped early (None: it did not)."""
    offered, lost = counters.get("transitions", 0), counters.get("transition_drops", 0)
    # offered - lost - written: offered after the last read of the ring as tracing ended, or
    # after the file stopped
    return {"file": path, "offered": offered, "lost": lost, "written": written, "stopped": stopped,
            "in_flight_at_end": offered - lost - written}
