"""Socket lives -> connections: one row per life, with its role, who closed first
(analysis.rules), its CLOSE_WAIT and the TIME_WAIT it left (analysis.timewait).

A life begun before tracing is completed from the snapshot taken at its start;
a CLOSE_WAIT still open at the end gets its owner's file descriptor from the
snapshot taken then.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..record import layout
from ..kernel.cgroups import workload
from . import listeners, rules
from .rules import FOUR_TUPLE

# the owner's cgroup v2 path and what it names (kernel.cgroups): container (runtime:id), pod uid, systemd unit
PLACE_COLUMNS = ["cgroup", "container", "pod", "unit"]
from .timewait import TIMEWAIT_COLUMNS, timewaits

CONNECTION_COLUMNS = [
    "pid", "comm", "family", "laddr", "lport", "raddr", "rport", "role", "initiator",
    "opened_at", "closed_at", "duration_s", "tw_start", "tw_end", "tw_s", "tw_end_reason",
]
# written after the contract's columns in connections.csv: the owner's network namespace, how
# the owner was learnt (rules.OWNERS_KNOWN, "ambiguous", "none"), and the name of its thread
# that acted where that is not the process's (comm is the process's: a threaded server is one row)
CSV_EXTRA_COLUMNS = ["netns", "owner_src", "thread_comm", *PLACE_COLUMNS, "pod_name"]
# kept beside the contract's columns for the summary and the per-process figures; the
# rules every figure reads (tw_made, tw_ended, close_wait_open) are computed here, once
EXTRA_COLUMNS = ["close_wait_at", "last_state", "owner_src", "rst_sent", "partial", "skaddr",
                 "tw_fin_wait2_s", "tw_overflow", "tw_timeout_s", "netns", "fd",
                 "tw_made", "tw_ended", "close_wait_open", "thread_comm", *PLACE_COLUMNS, "pod_name", "workload"]
_STATE_CODES = {name: code for code, name in layout.TCP_STATE_NAMES.items()}


def rst_sent_after_close(lives: pd.DataFrame, resets: pd.DataFrame) -> np.ndarray:
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
    """rules.initiators of decoded lives (kind "life" ended, "open" not yet)."""
    codes, names = pd.factorize(lives["last_state"])  # (each distinct state looked up once; -1: none)
    last = np.array([*(_STATE_CODES.get(name, 0) for name in names), 0], dtype=np.int64)[codes]
    return rules.initiators((lives["kind"] == "open").to_numpy(bool), lives["states_raw"].to_numpy(np.int64),
                            last, lives["flags_raw"].to_numpy(np.int64))


def _with_existing(lives: pd.DataFrame, existing: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Lives begun before tracing, completed from the snapshot taken at its start; and the
    snapshot's rows no life claimed (the connections that never changed state, so far).

    A socket the snapshot found and that then changed state is a partial life
    on the BPF side: the snapshot names its owner if the BPF side never could,
    and the start of its CLOSE_WAIT.  One that never changed state is only in
    the snapshot: at the end of the run it is a life still open in the state it was
    found in (connections() adds those where `final`).
    """
    if not len(existing):
        return lives, existing
    existing = existing.drop_duplicates(FOUR_TUPLE)
    existing_key = pd.MultiIndex.from_frame(existing[FOUR_TUPLE].astype(str))
    # the snapshot runs after the probe is attached and takes seconds with many sockets: a
    # connection opened meanwhile is in it too, but tracing saw it begin (not partial,
    # opened before the snapshot was taken): it is that life, not one from before tracing
    whole = lives[((lives["flags_raw"].to_numpy(np.int64) & layout.DEFINES["FLAG_PARTIAL"]) == 0)
                  & (lives["opened_at"].astype(float) <= existing["event_at"].astype(float).max())]
    opened_here = existing_key.isin(pd.MultiIndex.from_frame(whole[FOUR_TUPLE].astype(str)))
    existing, existing_key = existing[~opened_here], existing_key[~opened_here]
    if not len(existing):
        return lives, existing
    rows = np.flatnonzero((lives["flags_raw"].to_numpy(np.int64) & layout.DEFINES["FLAG_PARTIAL"]) != 0)
    key = pd.MultiIndex.from_frame(lives.iloc[rows][FOUR_TUPLE].astype(str))  # only lives begun before
    found = existing.set_index(existing_key).reindex(key)
    hit = found["kind"].notna().to_numpy()
    lives = lives.copy()
    unowned = hit & ~rules.owner_known(lives["owner_src"].iloc[rows])
    for column in ("pid", "tid", "comm", "cgroup_id", "owner_src", "netns"):
        lives.loc[rows[unowned], column] = found[column].to_numpy()[unowned]
    no_cw_start = hit & lives["close_wait_at"].isna().to_numpy()[rows]
    lives.loc[rows[no_cw_start], "close_wait_at"] = found["close_wait_at"].to_numpy()[no_cw_start]
    return lives, existing[~existing_key.isin(key[hit])]


def _from_fd_tables(out: pd.DataFrame, seen_at_end: pd.DataFrame) -> None:
    """What the kernel's fd tables said of the sockets still open when tracing ended (the
    snapshot at the end, every network namespace): each CLOSE_WAIT's file descriptor, and
    the owner of each open life, where the one process that holds the socket is not the
    one credited: the BPF side only had it from its listener (a child of a pre-forking
    server starts with the master), could not name it (a listener shared by several
    processes), or named the process that made it, which has since passed it on (fd
    passing, or a parent that exited after fork).  owner_src "fd_table".  A 4-tuple seen
    in two namespaces, or a socket no process or several processes hold, names no one
    and changes nothing."""
    if not len(seen_at_end) or not len(out):
        return
    seen = seen_at_end[~seen_at_end.duplicated(FOUR_TUPLE, keep=False)]
    held = seen.set_index(pd.MultiIndex.from_frame(seen[FOUR_TUPLE].astype(str)))
    rows = np.flatnonzero((out["initiator"] == "open").to_numpy())
    if not len(rows):
        return
    found = held.reindex(pd.MultiIndex.from_frame(out.iloc[rows][FOUR_TUPLE].astype(str)))
    close_wait = out["close_wait_open"].to_numpy(bool)[rows]
    out.loc[rows[close_wait], "fd"] = found["fd"].to_numpy(float)[close_wait]
    held_by = found["pid"].fillna(0).to_numpy(np.int64)
    credited = out["pid"].fillna(0).to_numpy(np.int64)[rows]
    guessed = (held_by > 0) & (np.isin(out["owner_src"].to_numpy(object)[rows], rules.OWNERS_GUESSED)
                               | (credited != held_by))
    if guessed.any():
        fixed = rows[guessed]
        out.loc[fixed, "pid"] = held_by[guessed]
        out.loc[fixed, "comm"] = found["comm"].to_numpy(object)[guessed]
        out.loc[fixed, "netns"] = found["netns"].to_numpy(object)[guessed]
        out.loc[fixed, "owner_src"] = "fd_table"
        out.loc[fixed, "thread_comm"] = None  # the fd tables name processes, not threads
        if "cgroup" in found:
            out.loc[fixed, "cgroup"] = found["cgroup"].to_numpy(object)[guessed]


def _place(out: pd.DataFrame, pods: dict[str, str]) -> None:
    """PLACE_COLUMNS, `pod_name` (the container's pod, "namespace/name", from `pods`) and
    `workload` (the container, else the unit, else the process name), from each credited
    owner's cgroup path, each distinct path parsed once."""
    known = rules.owner_known(out["owner_src"])
    codes, paths = pd.factorize(out["cgroup"].to_numpy(object))  # (-1: none, NaN or None)
    placed = [*(workload(path) if isinstance(path, str) else None for path in paths), None]
    codes = np.where(known & (codes >= 0), codes, len(placed) - 1)  # (an owner not credited: none)

    def column(values) -> pd.Series:  # (a value per distinct place, one per row)
        return pd.Series(np.array(list(values), dtype=object)[codes], index=out.index, dtype=object)

    for name in PLACE_COLUMNS:  # (cgroup too)
        out[name] = column(getattr(p, name) if p is not None else None for p in placed)
    containers = [p.container if p is not None and not pd.isna(p.container) else None for p in placed]
    out["pod_name"] = column(None if c is None or pd.isna(pods.get(c, np.nan)) else pods[c] for c in containers)
    named = column(c if c is not None else p.unit if p is not None and not pd.isna(p.unit) else None
                   for c, p in zip(containers, placed)).to_numpy(copy=True)
    unnamed = pd.isna(named)
    named[unnamed] = out["comm"].to_numpy(object)[unnamed]
    out["workload"] = pd.Series(named, index=out.index, dtype=object)


def _as_text(values: pd.Series):
    """A text column as a frame made of arrays takes it: pandas' text (Arrow's) kept as it is,
    and Python objects as an array, which the frame makes text where they all are (or none)."""
    return values if isinstance(values.dtype, pd.StringDtype) else values.to_numpy(object)


@dataclass
class Carried:
    """What a run analysed a batch of lives at a time (analysis.stream) carries from one batch
    to the next: the snapshot's connections no life has claimed yet, and the processes seen
    per listener (listeners.listener_owners)."""
    existing: pd.DataFrame
    owners: dict[tuple, set[int]] = field(default_factory=dict)


def connections(events: pd.DataFrame, ended_at: float, timewait_method: str | None = None,
                pods: dict[str, str] | None = None, carried: Carried | None = None, final: bool = True) -> pd.DataFrame:
    """One row per socket life, contract columns first (DESIGN.md section 3): connection_rows()
    of the events of a run (decode's kinds), or of one batch of its lives with what they need.

    ended_at: when tracing stopped, the age reference for lives still open.
    timewait_method: how the run followed TIME_WAIT ends: "timers", "diag" or None (see timewait.timewaits).
    pods: container -> its Kubernetes pod, as the tracer read them (RunInfo.pods).
    carried: for one batch of a run's lives (analysis.stream): the snapshot at the start and the
    listeners' owners of the batches before, updated here; None: `events` are the whole run.
    final: the last batch: the snapshot's connections no life has claimed are added as open lives.
    """
    kind = events["kind"].to_numpy(object)
    of = lambda *kinds: events.iloc[np.flatnonzero(np.isin(kind, kinds))]  # noqa: E731
    # (of the ends and resets, the columns the joins read only: on a long run each column is gigabytes)
    return connection_rows(of("life", "open").reset_index(drop=True), of("tw_end", "tw_open")[TIMEWAIT_COLUMNS],
                           ended_at, timewait_method, pods, carried, final,
                           resets=of("reset_sent")[["event_at", "skaddr"]], seen_at_end=of("seen_at_end"),
                           existing=of("existing"))


def connection_rows(lives: pd.DataFrame, ends: pd.DataFrame, ended_at: float, timewait_method: str | None = None,
                    pods: dict[str, str] | None = None, carried: Carried | None = None, final: bool = True,
                    resets: pd.DataFrame | None = None, seen_at_end: pd.DataFrame | None = None,
                    existing: pd.DataFrame | None = None) -> pd.DataFrame:
    """connections() of lives (kinds "life" and "open") and the timewait ends they may have
    (kinds "tw_end" and "tw_open"), apart: a stream's batch comes so, and joining them only
    to split them again copies every column twice.  resets (EV_RESET_SENT records), the
    sockets seen at the end and the snapshot at the start (None: none; with `carried`, its
    own snapshot is taken)."""
    existing = carried.existing if carried is not None else existing if existing is not None else lives.iloc[:0]
    lives, untouched = _with_existing(lives, existing)
    if final and len(untouched):
        lives = pd.concat([lives, untouched.assign(kind="open")], ignore_index=True)
    if carried is not None:
        carried.existing = untouched.iloc[:0] if final else untouched
    if not len(lives):  # (the rule columns boolean even when empty: they index rows)
        return pd.DataFrame(columns=CONNECTION_COLUMNS + EXTRA_COLUMNS).astype(
            {"tw_made": bool, "tw_ended": bool, "close_wait_open": bool})
    initiator = initiators(lives)
    states = lives["states_raw"]
    role = rules.choose([rules.entered(states, "SYN_SENT"), rules.entered(states, "SYN_RECV")],
                        ["client", "server"], "unknown")
    closed = (lives["kind"] == "life").to_numpy(bool)
    closed_at = np.where(closed, lives["event_at"].to_numpy(float), np.nan)
    # the full socket handed over to a timewait socket at this ->CLOSE
    made_tw = closed & rules.timewait_due(initiator)
    owner_known = rules.owner_known(lives["owner_src"])
    flags = lives["flags_raw"].to_numpy(np.int64)
    end = np.where(closed, closed_at, ended_at)
    tw = timewaits(lives, ends, made_tw, closed_at, ended_at, timewait_method)
    opened_at = lives["opened_at"].to_numpy(float)
    pid = pd.array(lives["pid"].to_numpy(), dtype="Int64")
    rst_sent = ((flags & layout.DEFINES["FLAG_RST_SENT"]) != 0)
    if resets is not None and len(resets):
        rst_sent |= rst_sent_after_close(lives, resets)
    partial = (flags & layout.DEFINES["FLAG_PARTIAL"]) != 0
    # an orphan given up with a reset never gets a TIME_WAIT.  A TIME_WAIT due whose timer
    # nothing linked is an overflow only where the close was seen whole; a life first seen
    # mid-way or whose ->CLOSE the kernel skipped says nothing of it: its TIME_WAIT's fate is
    # unknown, not a tcp_max_tw_buckets overflow
    overflow = tw["tw_overflow"] & ~rst_sent
    unsure = overflow & (partial | ((flags & layout.DEFINES["FLAG_MISSED_CLOSE"]) != 0))
    reason = np.where(unsure, "unknown", tw["tw_end_reason"]).astype(object)
    last_state = lives["last_state"]
    text = lambda values: pd.Series(values, dtype=object, copy=False)  # noqa: E731  (objects: not taken for text)
    out = pd.DataFrame({
        "pid": pd.arrays.IntegerArray(pid.to_numpy(np.int64, na_value=0), pid.isna() | ~owner_known),
        "comm": _as_text(lives["comm"].where(owner_known, "")),
        "family": lives["family"],
        "laddr": lives["laddr"],
        "lport": lives["lport"].to_numpy(np.int64),
        "raddr": lives["raddr"],
        "rport": lives["rport"].to_numpy(np.int64),
        "role": role,
        "initiator": initiator,
        "opened_at": opened_at,
        "closed_at": closed_at,
        "duration_s": end - opened_at,
        "tw_start": tw["tw_start"],
        "tw_end": tw["tw_end"],
        "tw_s": tw["tw_s"],
        "tw_end_reason": reason,
        "close_wait_at": lives["close_wait_at"].to_numpy(float),
        "last_state": last_state,
        "owner_src": lives["owner_src"],
        "rst_sent": rst_sent,
        "partial": partial,
        "skaddr": lives["skaddr"],
        "tw_fin_wait2_s": tw["tw_fin_wait2_s"],
        "tw_overflow": overflow & ~unsure,
        "tw_timeout_s": lives["tw_timeout_s"].to_numpy(float),
        "netns": text(lives["netns"].to_numpy(object) if "netns" in lives else np.full(len(lives), None, object)),
        "thread_comm": np.where(owner_known, lives["thread_comm"].to_numpy(object), None)
                       if "thread_comm" in lives else np.full(len(lives), None, object),
        "tw_made": ~np.isnan(tw["tw_start"]),  # a timewait socket was made (its start is known)
        "tw_ended": np.isin(reason, rules.ENDED_TIMEWAIT),  # and its end was seen
        "close_wait_open": rules.close_wait_open(initiator, last_state),
        "cgroup": text(lives["cgroup"].to_numpy(object) if "cgroup" in lives else np.full(len(lives), None, object)),
        "fd": pd.arrays.IntegerArray(np.zeros(len(lives), np.int64), np.ones(len(lives), bool)),
    })
    if seen_at_end is not None and len(seen_at_end):
        _from_fd_tables(out, seen_at_end)
        listeners.shared_at_end(out, seen_at_end)
    listeners.seen_shared(out, carried.owners if carried is not None else None)
    if carried is not None:
        for key, pids in listeners.listener_owners(out).items():
            carried.owners.setdefault(key, set()).update(pids)
    _place(out, pods or {})
    return out
