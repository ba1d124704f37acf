"""A client's TIME_WAIT cancelled where the BPF side saw no connect() take it over (a connect()
that moved CPU midway, older recordings, sock_diag's sightings): whether a client did, all the
same (timewait.taken_by_connect).  The stream (analysis.stream) parks such a life until it
knows, or until the end of the run; these look among the lives it holds.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .held import Held
from .rules import FOUR_TUPLE
from .timewait import REUSE_WINDOW_S, diag_ends, end_of, taken_by_connect, timewait_name

# what is read of the lives looked at (their names and 4-tuples, when they opened and closed, their states)
READ = [*FOUR_TUPLE, "event_at", "opened_at", "states_raw", "tw_timer", "tw_start_at"]


def may_be_reused(lives: Held, ends: pd.DataFrame, end_names: dict, method: str | None, unexplained: np.ndarray,
                  now: float) -> np.ndarray:
    """Which of the held lives at `unexplained` to look at now (reused_now).  The client that
    took one over closes after the cancel: it is among the lives that just arrived, on the same
    two ports and, with the timers, opened within REUSE_WINDOW_S of the cancel; or, where its
    record came first (another CPU's), held already when the cancel arrives (`ends`' arrived
    is `now`).  A cancel parked for minutes is not looked at again each time its ports come
    back (some 20 s apart at full churn): each step looked at all of them."""
    ports = lives.ports()
    fresh = np.flatnonzero(lives.fresh)
    check = unexplained[pd.Series(ports[unexplained]).isin(ports[fresh]).to_numpy(bool)]  # (hashed: fresh are many)
    if method != "timers" or not len(unexplained):
        return check
    found = end_of(lives.names(unexplained), end_names)
    ends_at, arrived = (np.append(ends[c].astype(float).to_numpy(), np.nan)[found] for c in ("event_at", "arrived"))
    if len(check):
        near = fresh[np.isin(ports[fresh], ports[check])]
        cancels = pd.DataFrame({"at": ends_at, "key": ports[unexplained], "row": unexplained})[np.isin(unexplained, check)]
        opened = pd.DataFrame({"at": lives.values("opened_at", near).astype(float), "key": ports[near], "client": True})
        pairs = pd.merge_asof(cancels.dropna(subset=["at"]).sort_values("at"), opened.dropna(subset=["at"]).sort_values("at"),
                              on="at", by="key", direction="nearest", tolerance=REUSE_WINDOW_S)
        check = np.union1d(pairs.loc[pairs["client"].notna(), "row"].to_numpy(np.int64),
                           cancels.loc[cancels["at"].isna(), "row"].to_numpy(np.int64))  # (no time: looked at)
    return np.union1d(check, unexplained[arrived == now])


def reused_now(lives: Held, ends: pd.DataFrame, end_names: dict, method: str | None, rows: np.ndarray) -> np.ndarray:
    """Which of the held lives at `rows` a client among the lives held took over; their end
    records in `ends` say so from now on ("reused"), as the BPF side says it where it saw the
    connect()."""
    ports = lives.ports()
    near = np.flatnonzero(np.isin(ports, ports[rows]) & lives.alive)  # the candidates: the same two ports
    frame = lives.frame(near, READ).reset_index(drop=True)
    local = np.searchsorted(near, rows)
    closed_at = frame["event_at"].astype(float).to_numpy()
    if method == "timers":
        found = end_of(timewait_name(frame.iloc[local]), end_names)
        at = np.append(ends["event_at"].astype(float).to_numpy(), np.nan)[found]
    else:
        due = np.zeros(len(frame), dtype=bool)
        due[local] = True
        at = diag_ends(frame, ends, due, closed_at)["event_at"].astype(float).to_numpy()[local]
    window = REUSE_WINDOW_S + (1.0 if method == "diag" else 0.0)
    taken = taken_by_connect(frame, local, at, window)
    if taken.any():
        picked = frame.iloc[local[taken]]
        if method == "timers":
            hit = np.isin(np.arange(len(ends)), end_of(timewait_name(picked), end_names))
        else:
            hit = tuples(ends).isin(tuples(picked))
        ends.loc[hit & (ends["tw_end"] == "cancelled").to_numpy(), "tw_end"] = "reused"
    return taken


def tuples(frame: pd.DataFrame) -> pd.MultiIndex:
    """Each row's 4-tuple, as text: how sock_diag's sightings name a timewait socket."""
    return pd.MultiIndex.from_frame(frame[FOUR_TUPLE].astype(str))
