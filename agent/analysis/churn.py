"""Short-connection churn: how fast each process and each peer opens connections, how
long they live, who closes them first, and how many TIME_WAITs are alive over time.

Only lives opened while tracing count towards rates and durations: a life begun
before tracing has no known start (its duration is a lower bound).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .tally import PEER_KEYS, opened_here
from .timewait import TIME_WAIT_LEN_S

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


def timewait_intervals(conns: pd.DataFrame, followed: bool) -> tuple[np.ndarray, np.ndarray]:
    """(start, stop) of every TIME_WAIT tracing saw begin.  stop is its end where seen,
    infinity for one still open at the end of a run that followed ends (`followed`),
    and start + 60 s where the end was not followed (--timewait none, or an end not
    seen): the natural length, an estimate."""
    made = conns["tw_made"].to_numpy(bool)
    start = conns["tw_start"].to_numpy(float)[made]
    end = conns["tw_end"].to_numpy(float)[made]
    still_open = followed & (conns["tw_end_reason"].to_numpy(object)[made] == "open")
    stop = np.where(~np.isnan(end), end, np.where(still_open, np.inf, start + TIME_WAIT_LEN_S))
    return start, stop


def alive_at(times: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """How many [start, stop) intervals hold each time in `times`."""
    return (np.searchsorted(np.sort(start), times, side="right")
            - np.searchsorted(np.sort(stop), times, side="right"))


def timeline(conns: pd.DataFrame, started_at: float, ended_at: float, timewait_followed: bool) -> pd.DataFrame:
    """timeline.csv: per bin, connections opened and closed, and TIME_WAIT and CLOSE_WAIT
    sockets alive at its end (those tracing saw begin).  With timewait_followed False
    a TIME_WAIT is taken to last 60 s."""
    width = timeline_step(ended_at - started_at)
    ended_at = max(ended_at, started_at + 1e-6)  # a recording of one instant still has one bin
    edges = np.append(np.arange(started_at, ended_at, width, dtype=float), ended_at)  # the last bin may be short
    ends = edges[1:]
    here = opened_here(conns, started_at)
    opened = np.histogram(conns["opened_at"].to_numpy(float)[here], bins=edges)[0]
    closed_at = conns["closed_at"].to_numpy(float)
    closed = np.histogram(closed_at[~np.isnan(closed_at)], bins=edges)[0]
    tw_start, tw_stop = timewait_intervals(conns, timewait_followed)
    cw = conns["close_wait_at"].notna().to_numpy()
    cw_start = conns["close_wait_at"].to_numpy(float)[cw]
    cw_stop = np.nan_to_num(closed_at[cw], nan=np.inf)  # still open: alive to the end
    return pd.DataFrame({
        "t": ends, "since_start_s": ends - started_at, "opened": opened, "closed": closed,
        "timewait": alive_at(ends, tw_start, tw_stop), "close_wait": alive_at(ends, cw_start, cw_stop),
    })
