"""Socket lives -> connections: who closed first, the role, the TIME_WAIT each left.

The BPF side follows each socket through its states and hands over one record
per life with the set of states it entered (states_raw), the state it left
for CLOSE (last_state) and the resets seen (flags_raw).  How the life ended
follows from those (DESIGN.md section 1):

  ESTABLISHED->FIN_WAIT1->FIN_WAIT2->CLOSE      active: we sent the first FIN
  ESTABLISHED->CLOSE_WAIT->LAST_ACK->CLOSE      passive: the peer's FIN came first
  ESTABLISHED->FIN_WAIT1->CLOSING->CLOSE        simultaneous: the FINs crossed
  ...->CLOSE from ESTABLISHED, CLOSE_WAIT, ...  reset: remote if an RST was received,
                                                else local (RST sent, or the kernel gave up)
  CLOSE->SYN_SENT->CLOSE, SYN_RECV->CLOSE       never established
  no ->CLOSE yet                                open (CLOSE_WAIT open: the owner has not closed)

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
  unknown    the end was not seen (its timer memory was reused, or the record lost)
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import layout

CONNECTION_COLUMNS = [
    "pid", "comm", "family", "laddr", "lport", "raddr", "rport", "role", "initiator",
    "opened_at", "closed_at", "duration_s", "tw_start", "tw_end", "tw_s", "tw_end_reason",
]
# kept beside the contract's columns for the summary and the per-process figures
EXTRA_COLUMNS = ["close_wait_at", "last_state", "owner_src", "rst_sent", "partial", "skaddr",
                 "tw_fin_wait2_s", "tw_overflow", "tw_timeout_s", "netns", "fd"]
FOUR_TUPLE = ["family", "laddr", "lport", "raddr", "rport"]
REUSE_WINDOW_S = 1.0  # a connect() that reused a TIME_WAIT's 4-tuple opened within this of its end
DIAG_LINK_S = 5.0  # sock_diag polls: a timewait first seen this long after its close is still that close's
TIME_WAIT_LEN_S = 60.0  # TCP_TIMEWAIT_LEN, a compile-time constant of the kernel

# what the timewait records are joined on and give (_timewait_ends, _diag_ends)
_TIMEWAIT_COLUMNS = ["kind", "event_at", "tw_timer", "tw_start_at", "tw_rearm_at", "tw_end", *FOUR_TUPLE]
_ESTABLISHED_STATES = ("ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE_WAIT", "LAST_ACK", "CLOSING")


def _choose(conditions: list[np.ndarray], labels: list[str], default: str) -> np.ndarray:
    """np.select for text labels, as an object array in which the rows share one str per
    label: np.select itself makes a fixed-width text array, which pandas turns into a str
    object for every row (about 60 bytes each, on millions of rows)."""
    names = np.array([*labels, default], dtype=object)
    return names[np.select(conditions, np.arange(len(labels)), len(labels))]


def _entered(states_raw: pd.Series, state: str) -> np.ndarray:
    return (states_raw.to_numpy(np.int64) & (1 << layout.DEFINES["TCP_" + state])) != 0


def _rst_sent_after_close(lives: pd.DataFrame, resets: pd.DataFrame) -> np.ndarray:
    """Join each EV_RESET_SENT record to the life that ended last on its socket address.

    An abort moves the socket to CLOSE before the RST goes out, so the reset
    record follows its life; socket addresses are recycled, hence the join on
    the latest life that ended at or before the reset.
    """
    hit = np.zeros(len(lives), dtype=bool)
    if not len(resets) or not len(lives):
        return hit
    left = pd.DataFrame({"at": resets["event_at"].astype(float), "skaddr": resets["skaddr"].astype(np.uint64)})
    right = pd.DataFrame({
        "at": lives["event_at"].astype(float), "skaddr": lives["skaddr"].astype(np.uint64),
        "row": np.arange(len(lives)),
    }).dropna(subset=["at"])
    joined = pd.merge_asof(left.sort_values("at"), right.sort_values("at"), on="at", by="skaddr",
                           direction="backward")
    rows = joined["row"].dropna().astype(int).to_numpy()
    hit[rows] = True
    return hit


def initiators(lives: pd.DataFrame) -> np.ndarray:
    states, last = lives["states_raw"], lives["last_state"].to_numpy(object)
    flags = lives["flags_raw"].to_numpy(np.int64)
    established = np.isin(last, _ESTABLISHED_STATES)
    for state in _ESTABLISHED_STATES:
        established |= _entered(states, state)
    rst_received = (flags & layout.DEFINES["FLAG_RST_RECEIVED"]) != 0
    return _choose(
        [
            lives["kind"].to_numpy(object) == "open",
            ~established,
            rst_received,
            last == "CLOSING",
            last == "FIN_WAIT2",
            last == "LAST_ACK",
        ],
        ["open", "never_established", "reset_remote", "simultaneous", "active", "passive"],
        "reset_local",
    )


def _timewait_key(timer, start) -> pd.MultiIndex:
    """A timewait socket's name: its timer's address and the microsecond it was armed."""
    micros = np.round(np.nan_to_num(np.asarray(start, dtype=float), nan=-1.0) * 1e6)
    return pd.MultiIndex.from_arrays([np.asarray(timer, dtype=np.uint64), micros.astype(np.int64)])


def _timewait_ends(lives: pd.DataFrame, timewaits: pd.DataFrame) -> pd.DataFrame:
    """For each life, the end record of the timewait socket it made (NaN/None where none)."""
    ends = timewaits.assign(key=_timewait_key(timewaits["tw_timer"], timewaits["tw_start_at"]))
    ends = ends.drop_duplicates("key", keep="last").set_index("key")
    found = ends.reindex(_timewait_key(lives["tw_timer"], lives["tw_start_at"]))
    return found[["kind", "event_at", "tw_end", "tw_rearm_at"]].reset_index(drop=True)


def _reused(lives: pd.DataFrame, rows: np.ndarray, end_at: np.ndarray, window: float) -> np.ndarray:
    """Which cancelled timewaits (lives[rows], ended at end_at) a new connect() took over.

    The connecting side picks the 4-tuple after it enters SYN_SENT and kills the
    TIME_WAIT holding it (tcp_twsk_unique), so the new client life opened just
    before the end, from the same local address and port to the same peer.
    """
    reused = np.zeros(len(rows), dtype=bool)
    if not len(rows):
        return reused
    tuple_cols = ["family", "laddr", "lport", "raddr", "rport"]
    client_rows = np.flatnonzero(_entered(lives["states_raw"], "SYN_SENT"))
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


def _diag_ends(lives: pd.DataFrame, timewaits: pd.DataFrame, made_tw: np.ndarray,
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


def _timewaits(lives: pd.DataFrame, timewaits: pd.DataFrame, made_tw: np.ndarray, closed_at: np.ndarray,
               ended_at: float, method: str | None) -> dict[str, np.ndarray]:
    """tw_start, tw_end, tw_s, tw_end_reason, tw_fin_wait2_s and tw_overflow for every life.

    method "timers": each life names its timewait socket (tw_timer, tw_start_at);
    "diag": sock_diag sightings joined by 4-tuple, the start being the close;
    anything else (an older recording, or nothing followed): the start only."""
    n = len(lives)
    if method == "timers":
        linked = lives["tw_timer"].astype(np.uint64).to_numpy() != 0
        start = np.where(linked, lives["tw_start_at"].astype(float), np.nan)
        end_rec = _timewait_ends(lives, timewaits)
    elif method == "diag":
        linked = made_tw.copy()
        start = np.where(linked, closed_at, np.nan)
        end_rec = _diag_ends(lives, timewaits, made_tw, closed_at)
    else:
        return {"tw_start": np.where(made_tw, closed_at, np.nan), "tw_end": np.full(n, np.nan),
                "tw_s": np.full(n, np.nan), "tw_end_reason": _choose([made_tw], ["open"], "none"),
                "tw_fin_wait2_s": np.full(n, np.nan), "tw_overflow": np.zeros(n, dtype=bool)}
    how = end_rec["tw_end"].to_numpy(object)
    end_at = end_rec["event_at"].astype(float).to_numpy()
    is_open = linked & (end_rec["kind"].to_numpy(object) == "tw_open")
    cancelled = linked & (how == "cancelled")
    reused = np.zeros(n, dtype=bool)
    # sock_diag sees a cancel only at the next poll (1 s): widen the window by that much
    window = REUSE_WINDOW_S + (1.0 if method == "diag" else 0.0)
    reused[cancelled] = _reused(lives, np.flatnonzero(cancelled), end_at[cancelled], window)
    reason = _choose(
        [linked & (how == "expired"), reused, cancelled, is_open, linked],
        ["expired", "reused", "killed", "open", "unknown"],
        "none",
    )
    ended = np.isin(reason, ["expired", "reused", "killed"])
    tw_end = np.where(ended, end_at, np.nan)
    tw_s = np.where(ended, tw_end - start, np.where(is_open, ended_at - start, np.nan))
    # FIN_WAIT2 substate: a timewait armed for tcp_fin_timeout rather than 60 s
    # waits for the peer's FIN, which re-arms it for TIME_WAIT; with the default
    # tcp_fin_timeout of 60 s only a re-arm into another wheel bucket shows it.
    rearm_at = end_rec["tw_rearm_at"].astype(float).to_numpy()
    timeout = lives["tw_timeout_s"].astype(float).to_numpy()
    fin_timeout_armed = linked & (np.abs(timeout - TIME_WAIT_LEN_S) > 0.5)
    until = np.where(~np.isnan(rearm_at), rearm_at, np.where(fin_timeout_armed, start + tw_s, np.nan))
    fin_wait2_s = np.where(linked & (fin_timeout_armed | ~np.isnan(rearm_at)), until - start, np.nan)
    return {"tw_start": start, "tw_end": tw_end, "tw_s": tw_s, "tw_end_reason": reason,
            "tw_fin_wait2_s": fin_wait2_s, "tw_overflow": made_tw & ~linked}


def _with_existing(lives: pd.DataFrame, existing: pd.DataFrame) -> pd.DataFrame:
    """Lives begun before tracing, completed from the snapshot taken at its start.

    A socket the snapshot found and that then changed state is a partial life
    on the BPF side: the snapshot names its owner if the BPF side never could,
    and the start of its CLOSE_WAIT.  One that never changed state is only in
    the snapshot: it is a life still open in the state it was found in.
    """
    if not len(existing):
        return lives
    existing = existing.drop_duplicates(FOUR_TUPLE)
    existing_key = pd.MultiIndex.from_frame(existing[FOUR_TUPLE].astype(str))
    rows = np.flatnonzero((lives["flags_raw"].to_numpy(np.int64) & layout.DEFINES["FLAG_PARTIAL"]) != 0)
    key = pd.MultiIndex.from_frame(lives.iloc[rows][FOUR_TUPLE].astype(str))  # only lives begun before
    found = existing.set_index(existing_key).reindex(key)
    hit = found["kind"].notna().to_numpy()
    lives = lives.copy()
    unowned = hit & (lives["owner_src"].to_numpy(object)[rows] == "none")
    for column in ("pid", "tid", "comm", "cgroup_id", "owner_src", "netns"):
        lives.loc[rows[unowned], column] = found[column].to_numpy()[unowned]
    no_cw_start = hit & lives["close_wait_at"].isna().to_numpy()[rows]
    lives.loc[rows[no_cw_start], "close_wait_at"] = found["close_wait_at"].to_numpy()[no_cw_start]
    untouched = existing[~existing_key.isin(key[hit])]
    return pd.concat([lives, untouched.assign(kind="open")], ignore_index=True)


def _fds(conns: pd.DataFrame, seen_at_end: pd.DataFrame) -> np.ndarray:
    """The owner's file descriptor of each CLOSE_WAIT still open, from the snapshot at the end."""
    fds = np.full(len(conns), np.nan)
    if not len(seen_at_end) or not len(conns):
        return fds
    seen = seen_at_end.drop_duplicates(FOUR_TUPLE)
    by_tuple = seen.set_index(pd.MultiIndex.from_frame(seen[FOUR_TUPLE].astype(str)))["fd"]
    rows = np.flatnonzero(((conns["initiator"] == "open") & (conns["last_state"] == "CLOSE_WAIT")).to_numpy())
    if len(rows):
        key = pd.MultiIndex.from_frame(conns.iloc[rows][FOUR_TUPLE].astype(str))
        fds[rows] = by_tuple.reindex(key).to_numpy(float)
    return fds


def connections(events: pd.DataFrame, ended_at: float, timewait_method: str | None = None) -> pd.DataFrame:
    """One row per socket life, contract columns first (DESIGN.md section 3).

    ended_at: when tracing stopped, the age reference for lives still open.
    timewait_method: how the run followed TIME_WAIT ends: "timers", "diag" or None (see _timewaits).
    """
    lives = events[events["kind"].isin(["life", "open"])].reset_index(drop=True)
    lives = _with_existing(lives, events[events["kind"] == "existing"])
    # the columns the joins read only: on a long run each copy of every column is gigabytes
    resets = events.loc[events["kind"] == "reset_sent", ["event_at", "skaddr"]]
    timewaits = events.loc[events["kind"].isin(["tw_end", "tw_open"]), _TIMEWAIT_COLUMNS]
    if not len(lives):
        return pd.DataFrame(columns=CONNECTION_COLUMNS + EXTRA_COLUMNS)
    initiator = initiators(lives)
    states = lives["states_raw"]
    role = _choose([_entered(states, "SYN_SENT"), _entered(states, "SYN_RECV")], ["client", "server"], "unknown")
    closed = lives["kind"].to_numpy(object) == "life"
    closed_at = np.where(closed, lives["event_at"].astype(float), np.nan)
    # the full socket handed over to a timewait socket at this ->CLOSE
    made_tw = closed & np.isin(initiator, ["active", "simultaneous"])
    owner_known = lives["owner_src"].to_numpy(object) != "none"
    flags = lives["flags_raw"].to_numpy(np.int64)
    end = np.where(closed, closed_at, ended_at)
    tw = _timewaits(lives, timewaits, made_tw, closed_at, ended_at, timewait_method)
    out = pd.DataFrame({
        "pid": pd.array(np.where(owner_known, lives["pid"], None), dtype="Int64"),
        "comm": np.where(owner_known, lives["comm"], ""),
        "family": lives["family"],
        "laddr": lives["laddr"],
        "lport": lives["lport"].astype(int),
        "raddr": lives["raddr"],
        "rport": lives["rport"].astype(int),
        "role": role,
        "initiator": initiator,
        "opened_at": lives["opened_at"].astype(float),
        "closed_at": closed_at,
        "duration_s": end - lives["opened_at"].astype(float),
        "tw_start": tw["tw_start"],
        "tw_end": tw["tw_end"],
        "tw_s": tw["tw_s"],
        "tw_end_reason": tw["tw_end_reason"],
        "close_wait_at": lives["close_wait_at"].astype(float),
        "last_state": lives["last_state"],
        "owner_src": lives["owner_src"],
        "rst_sent": ((flags & layout.DEFINES["FLAG_RST_SENT"]) != 0) | _rst_sent_after_close(lives, resets),
        "partial": (flags & layout.DEFINES["FLAG_PARTIAL"]) != 0,
        "skaddr": lives["skaddr"],
        "tw_fin_wait2_s": tw["tw_fin_wait2_s"],
        "tw_overflow": tw["tw_overflow"],
        "tw_timeout_s": lives["tw_timeout_s"].astype(float),
        "netns": lives["netns"] if "netns" in lives else None,
    })
    out["tw_overflow"] &= ~out["rst_sent"]  # an orphan given up with a reset never gets a TIME_WAIT
    out["fd"] = pd.array(_fds(out, events[events["kind"] == "seen_at_end"]), dtype="Int64")
    return out
