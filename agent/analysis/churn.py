"""Short-connection churn: how fast each process and each peer opens connections, how
long they live, who closes them first, and how many TIME_WAITs are alive over time.

Only lives opened while tracing count towards rates and durations: a life begun
before tracing has no known start (its duration is a lower bound).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .rules import TIMEWAIT_CLOSES
from .timewait import TIME_WAIT_LEN_S

SHORT_S = 1.0  # a connection closed within this of its open is "short": churn a pool would remove
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


def bin_seconds(traced_s: float) -> int:
    """The bin of the peak rates: 1 s, or longer to keep a long trace within MAX_BINS."""
    return max(1, math.ceil(traced_s / MAX_BINS))


def timeline_step(traced_s: float) -> float:
    """The timeline's bin: the shortest round step that keeps it within MAX_BINS."""
    return next((s for s in TIMELINE_STEPS_S if traced_s / s <= MAX_BINS), traced_s / MAX_BINS)


def quantiles(values, named: dict[str, float]) -> pd.DataFrame:
    """Per group of a SeriesGroupBy, one column per named quantile (NaN where a group has no
    value): pandas' own grouped quantile, not a Python function called per group, which took
    50 s for 54,000 groups (a peer per client socket)."""
    out = values.quantile(list(named.values())).unstack()
    out.columns = list(named)
    return out


def _opened_here(conns: pd.DataFrame, started_at: float) -> np.ndarray:
    return (~conns["partial"].astype(bool) & (conns["opened_at"] >= started_at)).to_numpy()


def churn(conns: pd.DataFrame, keys: list[str], started_at: float, ended_at: float) -> pd.DataFrame:
    """Per group of `keys`: connections opened, their rate (mean and busiest bin), the
    duration percentiles of those that closed, the share of short ones, and the share
    of closes this side made first.  Indexed by keys; groups that opened none have NaN rates."""
    traced_s = max(ended_at - started_at, 1e-9)
    width = bin_seconds(traced_s)
    here = _opened_here(conns, started_at)
    closed = here & conns["closed_at"].notna().to_numpy()
    initiator = conns["initiator"]
    frame = conns[keys].assign(
        opened=here,
        bin=np.where(here, ((conns["opened_at"] - started_at) // width), -1),
        duration=conns["duration_s"].where(closed),
        short=np.where(closed, conns["duration_s"] < SHORT_S, np.nan),
        first=initiator.isin(TIMEWAIT_CLOSES).astype(float).where(
            initiator.isin(["active", "passive", "simultaneous"])),
    )
    grouped = frame.groupby(keys, dropna=False, sort=False)
    out = grouped.agg(opened=("opened", "sum"), short_share=("short", "mean"), active_share=("first", "mean"))
    out = out.join(quantiles(grouped["duration"], {"duration_p50_s": 0.50, "duration_p95_s": 0.95,
                                                   "duration_p99_s": 0.99}))
    per_bin = frame[frame["opened"]].groupby([*keys, "bin"], dropna=False).size()
    # the last bin ends with tracing and may be shorter than the others
    bin_width = np.minimum(width, ended_at - (started_at + per_bin.index.get_level_values("bin") * width))
    peak = (per_bin / np.maximum(bin_width, 1e-9)).groupby(level=list(range(len(keys))), dropna=False).max()
    out["peak_opened_per_s"] = peak.reindex(out.index).fillna(0.0).to_numpy()
    out["opened_per_s"] = out["opened"] / traced_s
    return out[CHURN_COLUMNS]


def processes(conns: pd.DataFrame, procs: pd.DataFrame, started_at: float, ended_at: float,
              keys: list[str] = ("pid", "comm")) -> pd.DataFrame:
    """The churn columns of processes.processes(conns, keys=keys), in the row order of `procs`."""
    keys = list(keys)
    if not len(procs):
        return procs.reindex(columns=[*procs.columns, *CHURN_COLUMNS])
    profile = churn(conns, keys, started_at, ended_at)
    key = pd.MultiIndex.from_frame(procs[keys]) if len(keys) > 1 else pd.Index(procs[keys[0]])
    return pd.concat([procs, profile.reindex(key).reset_index(drop=True)], axis=1)


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
    }, index=conns.index)


def peers(conns: pd.DataFrame, started_at: float, ended_at: float) -> pd.DataFrame:
    """peers.csv: one row per peer (see peer_keys), busiest first."""
    if not len(conns):
        return pd.DataFrame(columns=PEER_COLUMNS)
    keys = ["direction", "raddr", "rport", "lport"]
    frame = pd.concat([conns.drop(columns=["raddr", "rport", "lport"]), peer_keys(conns)], axis=1)
    profile = churn(frame, keys, started_at, ended_at)
    initiator = frame["initiator"]
    counts = frame.assign(
        active_closes=initiator == "active", passive_closes=initiator == "passive",
        simultaneous_closes=initiator == "simultaneous", resets=initiator.isin(["reset_local", "reset_remote"]),
        who=frame["comm"].where(frame["comm"] != "", "?"),
    ).groupby(keys, dropna=False, sort=False).agg(
        connections=("initiator", "size"),
        processes=("who", lambda s: " ".join(sorted(set(s)))),
        **{c: (c, "sum") for c in ("active_closes", "passive_closes", "simultaneous_closes", "resets")},
        timewait_count=("tw_made", "sum"), close_wait_open=("close_wait_open", "sum"),
    )
    out = counts.join(profile).reset_index()
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
    here = _opened_here(conns, started_at)
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
