"""What is alive over a run, kept as its rows arrive (analysis.quanta): the connections opened
and closed, the TIME_WAIT and CLOSE_WAIT sockets alive, for the whole host (timeline.csv),
and per destination this host connected to (ports.csv: the TIME_WAITs holding its ephemeral
ports, and how fast it opens connections to it)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .columns import Columns
from .quanta import CEIL, FLOOR, Quanta, quantum_for
from .timewait import TIME_WAIT_LEN_S

HOST = {"opened": FLOOR, "closed": FLOOR, "tw_start": CEIL, "tw_stop": CEIL, "cw_start": CEIL, "cw_stop": CEIL}
DESTINATION_SERIES = {"opened": FLOOR, "tw_start": CEIL, "tw_stop": CEIL}
DESTINATION = ["laddr", "raddr", "rport"]


def timewait_intervals(rows: Columns, followed: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: did tracing see a TIME_WAIT begin, and its (start, stop).  stop is its end
    where seen, infinity for one still open at the end of a run that followed ends
    (`followed`), and start + 60 s where the end was not followed (--timewait none, or an
    end not seen): the natural length, an estimate."""
    made = rows["tw_made"].astype(bool, copy=False)
    start = np.asarray(rows["tw_start"], dtype=float)
    end = np.asarray(rows["tw_end"], dtype=float)
    still_open = followed & (rows["tw_end_reason"] == "open")
    return made, start, np.where(~np.isnan(end), end, np.where(still_open, np.inf, start + TIME_WAIT_LEN_S))


class Destination:
    """One (local address, remote address, remote port) this host connected to."""

    def __init__(self, started_at: float, quantum: float):
        self.quanta = Quanta(DESTINATION_SERIES, started_at, quantum)
        self.connections = 0
        self.names: set[str] = set()


class Occupancy:
    def __init__(self, started_at: float, followed: bool):
        """followed: the run followed TIME_WAIT ends (RunInfo.timewait_followed); else each
        is taken to last 60 s."""
        self.started_at, self.followed = started_at, followed
        self.latest = started_at  # the latest moment a row showed: the run lasted at least this long
        self.host = Quanta(HOST, started_at, quantum_for(0.0))
        self.destinations: dict[tuple, Destination] = {}

    @property
    def quantum(self) -> float:
        return self.host.quantum

    def add(self, rows: Columns, opened_here: np.ndarray) -> None:
        closed_at = np.asarray(rows["closed_at"], dtype=float)
        opened_at = np.asarray(rows["opened_at"], dtype=float)
        made, start, stop = timewait_intervals(rows, self.followed)
        seen = np.r_[closed_at, opened_at, np.asarray(rows["tw_end"], dtype=float)]
        seen = seen[np.isfinite(seen)]
        if len(seen):
            self._reach(float(seen.max()))
        host = self.host
        host.add("opened", opened_at[opened_here])
        host.add("closed", closed_at)
        host.add("tw_start", start[made])
        host.add("tw_stop", stop[made])
        close_wait_at = np.asarray(rows["close_wait_at"], dtype=float)
        cw = ~np.isnan(close_wait_at)
        host.add("cw_start", close_wait_at[cw])
        host.add("cw_stop", closed_at[cw])  # (NaN: still open, alive to the end)
        clients = np.flatnonzero(rows["role"] == "client")
        if not len(clients):
            return
        # per destination, in the order first met; one with a part missing is none
        codes, labels = rows.where(clients).groups(DESTINATION)
        order = np.argsort(codes, kind="stable")
        bounds = np.cumsum(np.bincount(codes, minlength=len(labels)))
        comm = rows["comm"]
        for key, members in zip(labels, np.split(clients[order], bounds[:-1])):
            if None in key:
                continue
            dest = self.destinations.get(key)
            if dest is None:
                dest = self.destinations[key] = Destination(self.started_at, self.quantum)
            dest.connections += len(members)
            dest.names.update("?" if name == "" else name for name in pd.unique(comm[members]))
            dest.quanta.add("opened", opened_at[members[opened_here[members]]])
            ended = members[made[members]]
            dest.quanta.add("tw_start", start[ended])
            dest.quanta.add("tw_stop", stop[ended])

    def _reach(self, moment: float) -> None:
        """The run has lasted until `moment` at least: a coarser quantum where it is due."""
        self.latest = max(self.latest, moment)
        quantum = quantum_for(self.latest - self.started_at)
        if quantum > self.quantum:
            self.host.coarsen(quantum)
            for dest in self.destinations.values():
                dest.quanta.coarsen(quantum)
