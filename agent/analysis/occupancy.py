"""What is alive over a run, kept as its rows arrive (analysis.quanta): the connections opened
and closed, the TIME_WAIT and CLOSE_WAIT sockets alive, for the whole host (timeline.csv),
and per destination this host connected to (ports.csv: the TIME_WAITs holding its ephemeral
ports, and how fast it opens connections to it)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .quanta import CEIL, FLOOR, Quanta, quantum_for
from .timewait import TIME_WAIT_LEN_S

HOST = {"opened": FLOOR, "closed": FLOOR, "tw_start": CEIL, "tw_stop": CEIL, "cw_start": CEIL, "cw_stop": CEIL}
DESTINATION_SERIES = {"opened": FLOOR, "tw_start": CEIL, "tw_stop": CEIL}
DESTINATION = ["laddr", "raddr", "rport"]


def timewait_intervals(rows: pd.DataFrame, followed: bool) -> tuple[np.ndarray, np.ndarray]:
    """(start, stop) of every TIME_WAIT tracing saw begin.  stop is its end where seen,
    infinity for one still open at the end of a run that followed ends (`followed`),
    and start + 60 s where the end was not followed (--timewait none, or an end not
    seen): the natural length, an estimate."""
    made = rows["tw_made"].to_numpy(bool)
    start = rows["tw_start"].to_numpy(float)[made]
    end = rows["tw_end"].to_numpy(float)[made]
    still_open = followed & (rows["tw_end_reason"].to_numpy(object)[made] == "open")
    stop = np.where(~np.isnan(end), end, np.where(still_open, np.inf, start + TIME_WAIT_LEN_S))
    return start, stop


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

    def add(self, rows: pd.DataFrame, opened_here: np.ndarray) -> None:
        closed_at = rows["closed_at"].to_numpy(float)
        seen = np.r_[closed_at, rows["opened_at"].to_numpy(float), rows["tw_end"].to_numpy(float)]
        seen = seen[np.isfinite(seen)]
        if len(seen):
            self._reach(float(seen.max()))
        host = self.host
        opened_at = rows["opened_at"].to_numpy(float)
        host.add("opened", opened_at[opened_here])
        host.add("closed", closed_at)
        start, stop = timewait_intervals(rows, self.followed)
        host.add("tw_start", start)
        host.add("tw_stop", stop)
        cw = ~np.isnan(rows["close_wait_at"].to_numpy(float))
        host.add("cw_start", rows["close_wait_at"].to_numpy(float)[cw])
        host.add("cw_stop", closed_at[cw])  # (NaN: still open, alive to the end)
        clients = rows[(rows["role"] == "client").to_numpy()]
        if len(clients):
            self._add_clients(clients, opened_here[(rows["role"] == "client").to_numpy()])

    def _add_clients(self, clients: pd.DataFrame, opened_here: np.ndarray) -> None:
        clients = clients.assign(_here=opened_here)
        for key, group in clients.groupby(DESTINATION, sort=False):
            dest = self.destinations.get(key)
            if dest is None:
                dest = self.destinations[key] = Destination(self.started_at, self.quantum)
            dest.connections += len(group)
            dest.names.update("?" if name == "" else name for name in group["comm"].unique())
            dest.quanta.add("opened", group["opened_at"].to_numpy(float)[group["_here"].to_numpy(bool)])
            start, stop = timewait_intervals(group, self.followed)
            dest.quanta.add("tw_start", start)
            dest.quanta.add("tw_stop", stop)

    def _reach(self, moment: float) -> None:
        """The run has lasted until `moment` at least: a coarser quantum where it is due."""
        self.latest = max(self.latest, moment)
        quantum = quantum_for(self.latest - self.started_at)
        if quantum > self.quantum:
            self.host.coarsen(quantum)
            for dest in self.destinations.values():
                dest.quanta.coarsen(quantum)
