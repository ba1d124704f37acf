"""How each TIME_WAIT ended and how long it lived.

FIN_WAIT2->CLOSE and CLOSING->CLOSE are the moments the kernel replaces the
socket with a timewait socket; TIME_WAIT itself never shows on the tracepoint.
When the BPF side follows timewait timers (run "timewait_method" = "timers"),
such a life names its timewait socket (tw_timer, tw_start_at) and a later
tw_end / tw_open record tells how that socket ended:

  expired    its timer ran out: 60 s TIME_WAIT, or tcp_fin_timeout in FIN_WAIT2 substate
  reused     cancelled as a new connect() from the same local end took the 4-tuple
  killed     cancelled otherwise: a SYN into a server-side TIME_WAIT, an RST, netns teardown
  open       still alive when tracing ended (tw_s is the age so far)
  none       no timewait socket: not an active or simultaneous close, or, when one
             was due and none was armed, tcp_max_tw_buckets overflow
  unknown    the end was not seen (its timer memory was reused, or the record lost), or
             the end read for it came before its start (a misread: never a lifetime
             below zero)
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .rules import FOUR_TUPLE, choose, entered

REUSE_WINDOW_S = 1.0  # a connect() that reused a TIME_WAIT's 4-tuple opened within this of its end
DIAG_LINK_S = 5.0  # sock_diag polls: a timewait first seen this long after its close is still that close's
TIME_WAIT_LEN_S = 60.0  # TCP_TIMEWAIT_LEN, a compile-time constant of the kernel
# what the timewait records are joined on and give (_timewait_ends, diag_ends)
TIMEWAIT_COLUMNS = ["kind", "event_at", "tw_timer", "tw_start_at", "tw_rearm_at", "tw_end", *FOUR_TUPLE]


def armed_micros(start) -> np.ndarray:
    """The microsecond a timewait socket was armed (-1e6 where not known): with its timer's
    address, its name (timer memory is recycled)."""
    return np.round(np.nan_to_num(np.asarray(start, dtype=float), nan=-1.0) * 1e6).astype(np.int64)


def timewait_name(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """A timewait socket's name (its timer's address and the microsecond it was armed: timer
    memory is recycled) and `key`, one integer mixing both, on which lives and ends are
    matched (end_of)."""
    timer = frame["tw_timer"].astype(np.uint64).to_numpy() if len(frame) else np.zeros(0, np.uint64)
    micros = armed_micros(frame["tw_start_at"].astype(float).to_numpy())
    with np.errstate(over="ignore"):
        key = timer ^ (micros.view(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    return {"timer": timer, "micros": micros, "key": key}


TIMEWAIT_NAME = ("timer", "micros", "key")  # the columns of timewait_name()


def indexed(ends: dict[str, np.ndarray]) -> dict:
    """timewait_name's arrays of some ends, with what end_of finds them by, made once: the
    position of the last end of each key, and those keys' index (its hash table is built at
    its first lookup and kept).  The stream looks its ends up several times a step."""
    last = ~pd.Index(ends["key"]).duplicated(keep="last")
    return {**ends, "last": np.flatnonzero(last), "index": pd.Index(ends["key"][last])}


def end_of(lives: dict[str, np.ndarray], ends: dict[str, np.ndarray]) -> np.ndarray:
    """For each life (timewait_name's arrays), the position in `ends` (the same, or indexed()
    once for many lookups) of its timewait socket's end (the last one of that name), -1 where
    none: matched on the mixed key, then both parts checked, so that two names that mix to one
    key never match."""
    if not len(lives["key"]) or not len(ends["key"]):
        return np.full(len(lives["key"]), -1)
    if "index" not in ends:
        ends = indexed(ends)
    positions = ends["last"]
    found = ends["index"].get_indexer(lives["key"])
    at = np.where(found >= 0, positions[np.maximum(found, 0)], 0)
    same = (ends["timer"][at] == lives["timer"]) & (ends["micros"][at] == lives["micros"])
    return np.where((found >= 0) & same, at, -1)


def _timewait_ends(lives: pd.DataFrame, timewaits: pd.DataFrame) -> dict[str, np.ndarray]:
    """For each life, the end record of the timewait socket it made (None/NaN where none): the
    last that arrived, an end before one read open (the end of a run reads the timewaits still
    followed, then the ring once more: one that ended meanwhile is in both).  Its kind,
    event_at, tw_end and tw_rearm_at, as arrays."""
    order = np.argsort((timewaits["kind"].to_numpy(object) != "tw_open"), kind="stable")  # (opens first)
    names = {name: values[order] for name, values in timewait_name(timewaits).items()}
    at = end_of(timewait_name(lives), names)
    found, pick = at >= 0, order[np.maximum(at, 0)] if len(order) else at
    out = {}
    for column in ("kind", "event_at", "tw_end", "tw_rearm_at"):
        values = timewaits[column].to_numpy(object if column in ("kind", "tw_end") else float)
        none = None if values.dtype == object else np.nan
        out[column] = np.where(found, values[pick], none) if len(values) else np.full(len(lives), none, dtype=values.dtype)
    return out


def server_side(states_raw) -> np.ndarray:
    """Which lives were a server's (accepted from a listener): a connect() never takes over
    their TIME_WAITs.  connect() takes a TIME_WAIT only on the 4-tuple it chose itself
    (tcp_twsk_unique, from __inet_check_established): from its own local port, which for a
    server-side TIME_WAIT is the listener's port, that no client binds while it listens.  A
    cancel of one is a SYN from the peer reopening the 4-tuple (tcp_timewait_state_process),
    an RST, or the namespace going: killed, known at the cancel."""
    return entered(states_raw, "SYN_RECV") & ~entered(states_raw, "SYN_SENT")


def taken_by_connect(lives: pd.DataFrame, rows: np.ndarray, end_at: np.ndarray, window: float) -> np.ndarray:
    """Which cancelled timewaits (lives[rows], ended at end_at) a new connect() took over.

    The connecting side picks the 4-tuple after it enters SYN_SENT and kills the
    TIME_WAIT holding it (tcp_twsk_unique), so the new client life opened just
    before the end, from the same local address and port to the same peer.
    """
    reused = np.zeros(len(rows), dtype=bool)
    if not len(rows):
        return reused
    tuple_cols = FOUR_TUPLE
    client_rows = np.flatnonzero(entered(lives["states_raw"], "SYN_SENT"))
    # A 4-tuple recurs many times in a churn (ports are recycled), so a plain merge of
    # the ended timewaits with the clients on the 4-tuple grows as the square of its
    # uses: 5 GiB more for a minute at 46 000 connections/s.  Instead, one integer
    # per 4-tuple, and for each timewait only the client opened nearest to its end,
    # which must be another life than the one that made the timewait: a short client
    # opens within the window of its own timewait's end when that is killed early.
    tuples = lives[tuple_cols].iloc[np.concatenate([rows, client_rows])]
    key = tuples.groupby(tuple_cols, sort=False, dropna=False).ngroup().to_numpy()
    ended = pd.DataFrame({"at": end_at, "key": key[:len(rows)], "i": np.arange(len(rows)), "own": rows})
    opened = pd.DataFrame({"at": lives["opened_at"].astype(float).to_numpy()[client_rows], "key": key[len(rows):],
                           "client": client_rows})
    ended, opened = ended.dropna(subset=["at"]), opened.dropna(subset=["at"])
    if not len(ended) or not len(opened):
        return reused
    pairs = pd.merge_asof(ended.sort_values("at"), opened.sort_values("at"), on="at", by="key",
                          direction="nearest", tolerance=window)
    other = pairs["client"].notna() & (pairs["client"] != pairs["own"])
    reused[pairs.loc[other, "i"].to_numpy(int)] = True
    return reused


def diag_ends(lives: pd.DataFrame, timewaits: pd.DataFrame, made_tw: np.ndarray,
               closed_at: np.ndarray) -> pd.DataFrame:
    """For each life that made a TIME_WAIT, the sock_diag sighting of it: the first
    timewait socket on the same 4-tuple seen within DIAG_LINK_S after the close."""
    cols = ["kind", "event_at", "tw_end", "tw_rearm_at"]
    found = pd.DataFrame({c: pd.Series([None] * len(lives), dtype=object) for c in cols})
    rows = np.flatnonzero(made_tw)
    if not len(rows) or not len(timewaits):
        return found
    key = lambda f: f[FOUR_TUPLE].astype(str).agg("|".join, axis=1)  # noqa: E731
    left = pd.DataFrame({"at": closed_at[rows], "key": key(lives.iloc[rows]).to_numpy(), "row": rows})
    right = timewaits.assign(at=timewaits["tw_start_at"].astype(float), key=key(timewaits))[["at", "key", *cols]]
    joined = pd.merge_asof(left.sort_values("at"), right.sort_values("at"), on="at", by="key",
                           direction="forward", tolerance=DIAG_LINK_S)
    for c in cols:
        found.loc[joined["row"].to_numpy(), c] = joined[c].to_numpy()
    return found


def timewaits(lives: pd.DataFrame, ends: pd.DataFrame, made_tw: np.ndarray, closed_at: np.ndarray,
               ended_at: float, method: str | None) -> dict[str, np.ndarray]:
    """tw_start, tw_end, tw_s, tw_end_reason, tw_fin_wait2_s and tw_overflow for every life.

    method "timers": each life names its timewait socket (tw_timer, tw_start_at);
    "diag": sock_diag sightings joined by 4-tuple, the start being the close;
    anything else (an older recording, or nothing followed): the start only."""
    n = len(lives)
    if method == "timers":
        linked = lives["tw_timer"].to_numpy(np.uint64) != 0
        start = np.where(linked, lives["tw_start_at"].to_numpy(float), np.nan)
        end_rec = _timewait_ends(lives, ends)
    elif method == "diag":
        linked = made_tw.copy()
        start = np.where(linked, closed_at, np.nan)
        end_rec = diag_ends(lives, ends, made_tw, closed_at)
    else:
        return {"tw_start": np.where(made_tw, closed_at, np.nan), "tw_end": np.full(n, np.nan),
                "tw_s": np.full(n, np.nan), "tw_end_reason": choose([made_tw], ["open"], "none"),
                "tw_fin_wait2_s": np.full(n, np.nan), "tw_overflow": np.zeros(n, dtype=bool)}
    how = np.asarray(end_rec["tw_end"], dtype=object)
    end_at = np.asarray(end_rec["event_at"], dtype=float)
    is_open = linked & (np.asarray(end_rec["kind"], dtype=object) == "tw_open")
    # the BPF side marks a cancel in a connect() to the timewait's remote end as a reuse
    # (bpf/tcpclose.bpf.c, "Reused or killed"); the others are cancels it could not
    # explain (older recordings, sock_diag, a connect() that moved CPU midway): joined here
    cancelled = linked & np.isin(how, ["cancelled", "reused"])
    reused = linked & (how == "reused")
    unexplained = linked & (how == "cancelled") & ~server_side(lives["states_raw"])
    # sock_diag sees a cancel only at the next poll (1 s): widen the window by that much
    window = REUSE_WINDOW_S + (1.0 if method == "diag" else 0.0)
    reused[unexplained] = taken_by_connect(lives, np.flatnonzero(unexplained), end_at[unexplained], window)
    # An end before its start is not this timewait's end, whatever read it so: seen once in
    # ten minutes of full churn, where it made a lifetime below zero.  The BPF side now drops
    # such an end (C_TW_STALE_END); a recording made before that may still hold one, and it
    # is left unknown rather than taken
    before_start = linked & (end_at < start)
    reason = choose(
        [before_start, linked & (how == "expired"), reused, cancelled, is_open, linked],
        ["unknown", "expired", "reused", "killed", "open", "unknown"],
        "none",
    )
    ended = np.isin(reason, ["expired", "reused", "killed"])
    tw_end = np.where(ended, end_at, np.nan)
    tw_s = np.where(ended, tw_end - start, np.where(is_open, ended_at - start, np.nan))
    # FIN_WAIT2 substate: a timewait armed for tcp_fin_timeout rather than 60 s
    # waits for the peer's FIN, which re-arms it for TIME_WAIT; with the default
    # tcp_fin_timeout of 60 s only a re-arm into another wheel bucket shows it.
    rearm_at = np.asarray(end_rec["tw_rearm_at"], dtype=float)
    timeout = lives["tw_timeout_s"].astype(float).to_numpy()
    fin_timeout_armed = linked & (np.abs(timeout - TIME_WAIT_LEN_S) > 0.5)
    until = np.where(~np.isnan(rearm_at), rearm_at, np.where(fin_timeout_armed, start + tw_s, np.nan))
    fin_wait2_s = np.where(linked & (fin_timeout_armed | ~np.isnan(rearm_at)), until - start, np.nan)
    return {"tw_start": start, "tw_end": tw_end, "tw_s": tw_s, "tw_end_reason": reason,
            "tw_fin_wait2_s": fin_wait2_s, "tw_overflow": made_tw & ~linked}
