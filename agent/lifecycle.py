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
EXTRA_COLUMNS = ["close_wait_at", "last_state", "owner_src", "rst_sent", "partial", "skaddr"]

_ESTABLISHED_STATES = ("ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE_WAIT", "LAST_ACK", "CLOSING")


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
    return np.select(
        [
            lives["kind"].to_numpy(object) == "open",
            ~established,
            rst_received,
            last == "CLOSING",
            last == "FIN_WAIT2",
            last == "LAST_ACK",
        ],
        ["open", "never_established", "reset_remote", "simultaneous", "active", "passive"],
        default="reset_local",
    )


def connections(events: pd.DataFrame, ended_at: float) -> pd.DataFrame:
    """One row per socket life, contract columns first (DESIGN.md section 3).

    ended_at: when tracing stopped, the age reference for lives still open.
    """
    lives = events[events["kind"].isin(["life", "open"])].reset_index(drop=True)
    resets = events[events["kind"] == "reset_sent"]
    if not len(lives):
        return pd.DataFrame(columns=CONNECTION_COLUMNS + EXTRA_COLUMNS)
    initiator = initiators(lives)
    states = lives["states_raw"]
    role = np.select([_entered(states, "SYN_SENT"), _entered(states, "SYN_RECV")], ["client", "server"], "unknown")
    closed = lives["kind"].to_numpy(object) == "life"
    closed_at = np.where(closed, lives["event_at"].astype(float), np.nan)
    # the full socket handed over to a timewait socket at this ->CLOSE
    made_tw = closed & np.isin(initiator, ["active", "simultaneous"])
    owner_known = lives["owner_src"].to_numpy(object) != "none"
    flags = lives["flags_raw"].to_numpy(np.int64)
    end = np.where(closed, closed_at, ended_at)
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
        "tw_start": np.where(made_tw, closed_at, np.nan),
        # when and how each TIME_WAIT ended is not followed yet: it stays open
        "tw_end": np.nan,
        "tw_s": np.nan,
        "tw_end_reason": np.where(made_tw, "open", "none"),
        "close_wait_at": lives["close_wait_at"].astype(float),
        "last_state": lives["last_state"],
        "owner_src": lives["owner_src"],
        "rst_sent": ((flags & layout.DEFINES["FLAG_RST_SENT"]) != 0) | _rst_sent_after_close(lives, resets),
        "partial": (flags & layout.DEFINES["FLAG_PARTIAL"]) != 0,
        "skaddr": lives["skaddr"],
    })
    return out
