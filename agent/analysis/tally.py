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

import numpy as np
import pandas as pd

from .grouped import HIGHEST, LOWEST, SKETCH, SUM, Grouped
from .rules import TIMEWAIT_CLOSES

SHORT_S = 1.0  # a connection closed within this of its open is "short": churn a pool would remove
KERNEL_KILLED_S = 4.0  # the kernel counts a timewait armed for this long or less as TWKilled, else TW
PEER_KEYS = ["direction", "raddr", "rport", "lport"]  # see peer_keys
OWNER = ["pid", "comm", "netns", "container", "unit", "workload"]
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


def opened_here(rows: pd.DataFrame, started_at: float) -> np.ndarray:
    """The lives opened while tracing: only they count towards rates and durations (a life
    begun before has no known start: its duration is a lower bound)."""
    return (~rows["partial"].to_numpy(bool) & (rows["opened_at"].to_numpy(float) >= started_at))


def peer_keys(conns: pd.DataFrame) -> pd.DataFrame:
    """Who is on the other end of each life.

    Outbound (this host connected): the remote address and port.  Inbound (a peer
    connected to us): the remote address and our local port, the service it came
    to, since each of its connections comes from a new ephemeral port."""
    inbound = (conns["role"] == "server").to_numpy()
    return pd.DataFrame({
        "direction": np.where(inbound, "inbound", np.where(conns["role"] == "client", "outbound", "unknown")),
        "raddr": conns["raddr"].to_numpy(),
        "rport": pd.array(np.where(inbound, None, conns["rport"]), dtype="Int64"),
        "lport": pd.array(np.where(inbound, conns["lport"], None), dtype="Int64"),
    })


def measures(rows: pd.DataFrame, started_at: float) -> pd.DataFrame:
    """The figures' measures of each row (OWNER_MEASURES), beside the rows' key columns."""
    initiator = rows["initiator"].to_numpy(object)
    reason = rows["tw_end_reason"].to_numpy(object)
    role = rows["role"].to_numpy(object)
    made = rows["tw_made"].to_numpy(bool)
    ended = rows["tw_ended"].to_numpy(bool)
    tw_s = rows["tw_s"].to_numpy(float)
    here = opened_here(rows, started_at)
    closed = here & ~np.isnan(rows["closed_at"].to_numpy(float))
    duration = rows["duration_s"].to_numpy(float)
    decided = np.isin(initiator, ["active", "passive", "simultaneous"])
    cw_open = rows["close_wait_open"].to_numpy(bool)
    short_timeout = made & (rows["tw_timeout_s"].to_numpy(float) <= KERNEL_KILLED_S)
    out = {
        "connections": np.ones(len(rows), dtype=np.int64),
        **{c: initiator == kind for c, kind in CLOSE_COUNTS.items()},
        "timewait_count": made, **{c: reason == value for c, value in TIMEWAIT_REASONS.items()},
        "timewait_overflow": rows["tw_overflow"].to_numpy(bool), "close_wait_open": cw_open,
        "servers": role == "server", "tw_as_server": made & (role == "server"),
        "kernel_tw": made & ~short_timeout, "kernel_tw_killed": short_timeout,
        "opened": here, "closed_here": closed, "short": closed & (duration < SHORT_S), "decided": decided,
        "first": decided & np.isin(initiator, TIMEWAIT_CLOSES),
        "duration": np.where(closed, duration, np.nan),
        # the percentiles and maxima are over the TIME_WAITs whose end was seen, not the ages of open ones
        "timewait": np.where(ended, tw_s, np.nan), "timewait_max_s": np.where(ended, tw_s, np.nan),
        "close_wait_since": np.where(cw_open, rows["close_wait_at"].to_numpy(float), np.nan),
        "opened_at": rows["opened_at"].to_numpy(float),
    }
    out["resets"] = out["resets_local"] | out["resets_remote"]
    keys = {k: (rows[k] if k in rows else pd.Series(None, index=rows.index, dtype=object)).reset_index(drop=True)
            for k in OWNER}
    comm = keys["comm"]
    return pd.concat([pd.DataFrame({**keys, **out, "who": comm.where(comm != "", "?")}), peer_keys(rows)], axis=1)


class Tally:
    """The figures of a run so far.  add() each batch of final rows; processes.processes and
    the others read them."""

    def __init__(self, started_at: float):
        self.started_at = started_at
        self.owners = Grouped(OWNER, OWNER_MEASURES, started_at=started_at)
        self.peers = Grouped(PEER_KEYS, PEER_MEASURES, started_at=started_at, names_of="who")

    @classmethod
    def of(cls, rows: pd.DataFrame, started_at: float) -> "Tally":
        """The figures of rows at hand (a run's, whole)."""
        tally = cls(started_at)
        tally.add(rows)
        return tally

    def add(self, rows: pd.DataFrame) -> None:
        if len(rows):
            measured = measures(rows, self.started_at)
            self.owners.add(measured)
            self.peers.add(measured)
