"""Short-connection churn: how fast each process and each peer opens connections, how
long they live, who closes them first, and how many TIME_WAITs are alive over time.

Only lives opened while tracing count towards rates and durations: a life begun
before tracing has no known start (its duration is a lower bound).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .tally import PEER_KEYS

MAX_BINS = 600  # the timeline has at most this many bins: 1 s each for a 10 minute trace
CHURN_COLUMNS = [
    "opened", "opened_per_s", "peak_opened_per_s", "duration_p50_s", "duration_p95_s", "duration_p99_s",
    "short_share", "active_share",
]
PEER_COLUMNS = [
    "direction", "raddr", "rport", "lport", "processes", "connections", *CHURN_COLUMNS,
    "active_closes", "passive_closes", "simultaneous_closes", "resets", "timewait_count", "close_wait_open",
]


TIMELINE_STEPS_S = (0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 300, 600, 3600)
DURATION_QUANTILES = {"duration_p50_s": ("duration", 0.50), "duration_p95_s": ("duration", 0.95),
                      "duration_p99_s": ("duration", 0.99)}


def timeline_step(traced_s: float) -> float:
    """The timeline's bin: the shortest round step that keeps it within MAX_BINS."""
    return next((s for s in TIMELINE_STEPS_S if traced_s / s <= MAX_BINS), traced_s / MAX_BINS)


def with_churn(out: pd.DataFrame, traced_s: float) -> pd.DataFrame:
    """A summary of groups (analysis.grouped) with its churn columns: connections opened while
    tracing, their mean rate, the share of short ones among those that closed, and the share
    of closes this side made first (NaN where there were none to share)."""
    traced_s = max(traced_s, 1e-9)
    out["opened_per_s"] = out["opened"] / traced_s
    out["short_share"] = out["short"] / out["closed_here"].where(out["closed_here"] > 0)
    out["active_share"] = out["first"] / out["decided"].where(out["decided"] > 0)
    return out


def peers(tally, ended_at: float) -> pd.DataFrame:
    """peers.csv: one row per peer (see peer_keys), busiest first."""
    if not len(tally.peers):
        return pd.DataFrame(columns=PEER_COLUMNS)
    out = tally.peers.summary(PEER_KEYS, DURATION_QUANTILES, ended_at)
    out = with_churn(out, ended_at - tally.started_at).rename(columns={"names": "processes"})
    out = out.sort_values(["connections", "raddr"], ascending=[False, True], kind="stable")
    return out[PEER_COLUMNS].reset_index(drop=True)


def timeline(tally, ended_at: float) -> pd.DataFrame:
    """timeline.csv: per bin, connections opened and closed, and TIME_WAIT and CLOSE_WAIT
    sockets alive at its end (those tracing saw begin).  Where the run did not follow
    TIME_WAIT ends, a TIME_WAIT is taken to last 60 s (analysis.occupancy)."""
    started_at, host = tally.started_at, tally.occupancy.host
    width = timeline_step(ended_at - started_at)
    ended_at = max(ended_at, started_at + 1e-6)  # a recording of one instant still has one bin
    ends = np.append(np.arange(started_at, ended_at, width, dtype=float), ended_at)[1:]  # the last bin may be short
    per_bin = max(int(round(width / host.quantum)), 1)  # (a whole number of quanta: analysis.quanta)
    last = host.index_of(ended_at)
    at_ends = np.minimum(np.arange(1, len(ends) + 1) * per_bin, last)
    at_ends[-1] = last

    def binned(name):
        return host.counts(name, len(ends) * per_bin).reshape(len(ends), per_bin).sum(axis=1)

    def alive(begun, ended):
        length = last + 1
        return host.cumulative(begun, length)[at_ends] - host.cumulative(ended, length)[at_ends]
    return pd.DataFrame({
        "t": ends, "since_start_s": ends - started_at, "opened": binned("opened"), "closed": binned("closed"),
        "timewait": alive("tw_start", "tw_stop"), "close_wait": alive("cw_start", "cw_stop"),
    })
