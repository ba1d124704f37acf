"""What a run's figures are made from, kept as its connection rows are made: each batch of
rows (analysis.stream) is measured once per row and added to the groups it belongs to
(analysis.grouped), so that the figures of a run of any length come from memory bounded by
its processes and peers, and the rows themselves need not be read back.

Per owner (a pid, its name, network namespace, container, unit and workload: the finest
grouping any table shows; per process, per name and per workload are merged from it):
the closes of each kind, the TIME_WAITs and how they ended, the CLOSE_WAITs open, the
connections opened while tracing with their durations, and what the kernel's TcpExt
counters are set beside.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from . import sketches
from .lives import CONNECTION_COLUMNS, EXTRA_COLUMNS
from .columns import Columns, among
from .grouped import HIGHEST, LOWEST, SKETCH, SUM, Grouped
from .occupancy import Occupancy
from .rules import TIMEWAIT_CLOSES
from .timewait import TIME_WAIT_LEN_S

SHORT_S = 1.0  # a connection closed within this of its open is "short": churn a pool would remove
LIFETIME_BIN_S, LIFETIME_MAX_S = 0.1, 180.0  # report.html's histogram of TIME_WAIT lifetimes (longer: in the last bin)
KERNEL_KILLED_S = 4.0  # the kernel counts a timewait armed for this long or less as TWKilled, else TW
PEER_KEYS = ["direction", "raddr", "rport", "lport"]  # see peer_keys
OWNER = ["pid", "comm", "netns", "container", "unit", "workload"]
# the key columns' types in the tables (Grouped.cells); the others' are Python objects
KEY_TYPES = {"pid": "Int64", "direction": "str", "raddr": "str", "rport": "Int64", "lport": "Int64"}
CLOSE_COUNTS = {  # processes.csv's column -> the initiator it counts
    "active_closes": "active", "passive_closes": "passive", "simultaneous_closes": "simultaneous",
    "resets_local": "reset_local", "resets_remote": "reset_remote", "closes_unseen": "close_unseen",
}
TIMEWAIT_REASONS = {  # processes.csv's column -> the tw_end_reason it counts
    "timewait_expired": "expired", "timewait_reused": "reused", "timewait_killed": "killed",
    "timewait_open": "open", "timewait_unknown": "unknown",
}
CHURN_MEASURES = {"opened": SUM, "closed_here": SUM, "short": SUM, "decided": SUM, "first": SUM,
                  "duration": SKETCH}
OWNER_MEASURES = {
    "connections": SUM, **{c: SUM for c in CLOSE_COUNTS}, "timewait_count": SUM, **{c: SUM for c in TIMEWAIT_REASONS},
    "timewait_overflow": SUM, "close_wait_open": SUM, "servers": SUM, "tw_as_server": SUM,
    "kernel_tw": SUM, "kernel_tw_killed": SUM, **CHURN_MEASURES,
    "timewait_max_s": HIGHEST, "close_wait_since": LOWEST, "timewait": SKETCH,
}
PEER_MEASURES = {c: SUM for c in ("connections", "active_closes", "passive_closes", "simultaneous_closes", "resets",
                                  "timewait_count", "close_wait_open")} | CHURN_MEASURES


def opened_here(rows: Columns, started_at: float) -> np.ndarray:
    """The lives opened while tracing: only they count towards rates and durations (a life
    begun before has no known start: its duration is a lower bound)."""
    return ~rows["partial"].astype(bool, copy=False) & (rows["opened_at"] >= started_at)


def _peer_columns(role: np.ndarray, raddr: np.ndarray, rport: np.ndarray, lport: np.ndarray) -> dict:
    """peer_keys' columns from the rows' (text as Python objects, or as Columns gives pandas')."""
    inbound = role == "server"
    return {
        "direction": np.where(inbound, "inbound", np.where(role == "client", "outbound", "unknown")),
        "raddr": raddr,
        "rport": pd.arrays.IntegerArray(np.where(inbound, 0, rport).astype(np.int64), inbound.copy()),
        "lport": pd.arrays.IntegerArray(np.where(inbound, lport, 0).astype(np.int64), ~inbound),
    }


def peer_keys(conns: pd.DataFrame) -> pd.DataFrame:
    """Who is on the other end of each life.

    Outbound (this host connected): the remote address and port.  Inbound (a peer
    connected to us): the remote address and our local port, the service it came
    to, since each of its connections comes from a new ephemeral port."""
    return pd.DataFrame(_peer_columns(conns["role"].to_numpy(object), conns["raddr"].to_numpy(),
                                      conns["rport"].to_numpy(), conns["lport"].to_numpy()), index=conns.index)


def measures(rows: Columns, started_at: float) -> Columns:
    """The figures' measures of each row (OWNER_MEASURES), beside the rows' key columns."""
    initiator = rows["initiator"]
    reason = rows["tw_end_reason"]
    role = rows["role"]
    made = rows["tw_made"].astype(bool, copy=False)
    ended = rows["tw_ended"].astype(bool, copy=False)
    tw_s = rows["tw_s"]
    here = opened_here(rows, started_at)
    closed = here & ~np.isnan(rows["closed_at"])
    duration = rows["duration_s"]
    decided = among(initiator, ["active", "passive", "simultaneous"])
    cw_open = rows["close_wait_open"].astype(bool, copy=False)
    short_timeout = made & (rows["tw_timeout_s"] <= KERNEL_KILLED_S)
    out = {
        "connections": np.ones(len(rows), dtype=np.int64),
        **{c: initiator == kind for c, kind in CLOSE_COUNTS.items()},
        "timewait_count": made, **{c: reason == value for c, value in TIMEWAIT_REASONS.items()},
        "timewait_overflow": rows["tw_overflow"].astype(bool, copy=False), "close_wait_open": cw_open,
        "servers": role == "server", "tw_as_server": made & (role == "server"),
        "kernel_tw": made & ~short_timeout, "kernel_tw_killed": short_timeout,
        "opened": here, "closed_here": closed, "short": closed & (duration < SHORT_S), "decided": decided,
        "first": decided & among(initiator, TIMEWAIT_CLOSES),
        "duration": np.where(closed, duration, np.nan),
        # the percentiles and maxima are over the TIME_WAITs whose end was seen, not the ages of open ones
        "timewait": np.where(ended, tw_s, np.nan), "timewait_max_s": np.where(ended, tw_s, np.nan),
        "close_wait_since": np.where(cw_open, rows["close_wait_at"], np.nan),
        "opened_at": rows["opened_at"],
    }
    out["resets"] = out["resets_local"] | out["resets_remote"]
    keys = {k: rows[k] if k in rows else np.full(len(rows), None, dtype=object) for k in OWNER}
    comm = keys["comm"]
    who = pd.Series(comm, copy=False).mask(comm == "", "?").array
    return Columns({**keys, **out, "who": who,
                    **_peer_columns(role, rows["raddr"], rows["rport"], rows["lport"])}, length=len(rows))


class Tally:
    """The figures of a run so far.  add() each batch of final rows; processes.processes,
    churn.peers, churn.timeline, ports.pressure and the outputs read them."""

    def __init__(self, started_at: float, timewait_followed: bool = True):
        """timewait_followed: the run followed TIME_WAIT ends (RunInfo.timewait_followed)."""
        self.started_at = started_at
        self.owners = Grouped(OWNER, OWNER_MEASURES, started_at=started_at, dtypes=KEY_TYPES)
        self.peers = Grouped(PEER_KEYS, PEER_MEASURES, started_at=started_at, names_of="who", dtypes=KEY_TYPES)
        # the TIME_WAITs made per owner and peer: whom an owner's TIME_WAITs are towards
        self.makers = Grouped([*OWNER, "raddr", "rport"], {"timewait_count": SUM}, dtypes=KEY_TYPES)
        self.occupancy = Occupancy(started_at, timewait_followed)
        self.owner_src: Counter = Counter()  # how the owners were learnt
        self.end_reasons: Counter = Counter()  # of the TIME_WAITs made
        self._host = {"fin_wait2": sketches.Sketches(), "in_time_wait": sketches.Sketches()}
        self.fin_wait2_max = float("nan")
        # the lifetimes of the TIME_WAITs whose end was seen, in LIFETIME_BIN_S bins (report.html's histogram)
        self.lifetimes = np.zeros(int(LIFETIME_MAX_S / LIFETIME_BIN_S) + 1, dtype=np.int64)
        self._close_waits: list[pd.DataFrame] = []  # the rows of the CLOSE_WAITs open at the end

    @classmethod
    def of(cls, rows: pd.DataFrame, started_at: float, timewait_followed: bool = True) -> "Tally":
        """The figures of rows at hand (a run's, whole)."""
        tally = cls(started_at, timewait_followed)
        tally.add(rows)
        return tally

    def add(self, frame: pd.DataFrame) -> None:
        if not len(frame):
            return
        rows = Columns(frame=frame)
        measured = measures(rows, self.started_at)
        self.owners.add(measured)
        self.peers.add(measured)
        made = measured["timewait_count"]
        if made.any():
            self.makers.add(measured.where(made))
        self.occupancy.add(rows, measured["opened"])
        if "owner_src" in rows:
            self.owner_src.update(rows.counts("owner_src"))
        self.end_reasons.update(rows.counts("tw_end_reason", made))
        self._add_lifetimes(rows, measured["timewait"])
        cw = measured["close_wait_open"]
        if cw.any():
            self._close_waits.append(frame[cw])

    def _add_lifetimes(self, rows: Columns, ended_s: np.ndarray) -> None:
        fin_wait2 = rows["tw_fin_wait2_s"]
        self._host["fin_wait2"].add(np.zeros(len(rows), dtype=np.int64), fin_wait2)
        if (~np.isnan(fin_wait2)).any():
            self.fin_wait2_max = np.fmax(self.fin_wait2_max, np.nanmax(fin_wait2))
        # how long a TIME_WAIT holds its port: those that expired in TIME_WAIT, after the peer's
        # FIN (one that expired in the FIN_WAIT2 substate, tcp_fin_timeout, says nothing of that)
        expired = rows["tw_end_reason"] == "expired"
        in_time_wait = rows["tw_s"] - np.nan_to_num(fin_wait2)
        self._host["in_time_wait"].add(np.zeros(len(rows), dtype=np.int64),
                                       np.where(expired & (in_time_wait > 1.0), in_time_wait, np.nan))
        seen = ended_s[~np.isnan(ended_s)]  # (never below zero: analysis.timewait leaves such an end unknown)
        bins = np.minimum((seen // LIFETIME_BIN_S).astype(np.int64), len(self.lifetimes) - 1)
        self.lifetimes += np.bincount(bins, minlength=len(self.lifetimes))

    @property
    def lives(self) -> int:
        """The socket lives (connection rows) added."""
        return int(self.owners.cells()["connections"].sum()) if len(self.owners) else 0

    def timewait_length(self) -> float:
        """The TIME_WAIT length this run saw: the median of those that expired in TIME_WAIT,
        else the kernel's 60 s."""
        value = sketches.quantile(self._host["in_time_wait"].get(0), 0.5)
        return TIME_WAIT_LEN_S if np.isnan(value) else value

    def fin_wait2(self) -> tuple[int, float, float]:
        """The lives that waited in the FIN_WAIT2 substate: how many, p50 and max of the wait."""
        sketch = self._host["fin_wait2"].get(0)
        count = int(sketch.count) if sketch is not None else 0
        return count, sketches.quantile(sketch, 0.5), self.fin_wait2_max

    def close_waits(self) -> pd.DataFrame:
        """The rows of the sockets in CLOSE_WAIT at the end (few: each is a socket open)."""
        if self._close_waits:
            return pd.concat(self._close_waits, ignore_index=True)
        return pd.DataFrame(columns=CONNECTION_COLUMNS + EXTRA_COLUMNS).astype({"close_wait_open": bool})
