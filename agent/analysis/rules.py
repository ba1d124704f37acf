"""How a socket life ended, and what that leaves behind: each rule in one place.

The BPF side hands over, per life, the set of states it entered (states_raw),
the state it left for CLOSE (last_state) and the resets seen (flags_raw).  How
the life ended follows from those (DESIGN.md section 1):

  ESTABLISHED->FIN_WAIT1->FIN_WAIT2->CLOSE      active: we sent the first FIN
  ESTABLISHED->CLOSE_WAIT->LAST_ACK->CLOSE      passive: the peer's FIN came first
  ESTABLISHED->FIN_WAIT1->CLOSING->CLOSE        simultaneous: the FINs crossed
  ...->CLOSE from ESTABLISHED, CLOSE_WAIT, ...  reset: remote if an RST was received,
                                                else local (RST sent, or the kernel gave up)
  ... and its ->CLOSE never seen                close_unseen: the kernel skipped the program
                                                (FLAG_MISSED_CLOSE); how it ended is not known
  CLOSE->SYN_SENT->CLOSE, SYN_RECV->CLOSE       never established
  no ->CLOSE yet                                open (CLOSE_WAIT open: the owner has not closed)

The same rules run on decoded lives (analysis.lives), on raw records while
tracing (the progress line) and, in C, in the BPF program's close_kind
(--aggregates).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..record import layout

FOUR_TUPLE = ["family", "laddr", "lport", "raddr", "rport"]  # the columns that name a connection
INITIATORS = ("active", "passive", "simultaneous", "reset_local", "reset_remote", "never_established", "close_unseen",
              "open")
# the closes that hand the connection over to a timewait socket at their ->CLOSE
# (FIN_WAIT2->CLOSE, CLOSING->CLOSE), unless tcp_max_tw_buckets is full
TIMEWAIT_CLOSES = ("active", "simultaneous")
ENDED_TIMEWAIT = ("expired", "reused", "killed")  # tw_end_reason of a TIME_WAIT whose end was seen
_ESTABLISHED_STATES = ("ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE_WAIT", "LAST_ACK", "CLOSING")
_STATE = {name: layout.DEFINES["TCP_" + name] for name in ("CLOSING", "FIN_WAIT2", "LAST_ACK", "CLOSE_WAIT",
                                                          *_ESTABLISHED_STATES)}


def choose(conditions: list[np.ndarray], labels: list[str], default: str) -> np.ndarray:
    """np.select for text labels, as an object array in which the rows share one str per
    label: np.select itself makes a fixed-width text array, which pandas turns into a str
    object for every row (about 60 bytes each, on millions of rows)."""
    names = np.array([*labels, default], dtype=object)
    return names[np.select(conditions, np.arange(len(labels)), len(labels))]


def entered(states_raw, state: str) -> np.ndarray:
    """Did each life enter `state` (a TCP state name)?"""
    return (np.asarray(states_raw, dtype=np.int64) & (1 << layout.DEFINES["TCP_" + state])) != 0


# initiator_codes' numbers: the first that holds of these, in this order, else reset_local
_CLOSE_LABELS = ["open", "never_established", "reset_remote", "simultaneous", "active", "passive", "close_unseen"]
_LABELS = np.array([*_CLOSE_LABELS, "reset_local"], dtype=object)  # (one str per label, shared by the rows)
_DUE = np.isin(_LABELS, TIMEWAIT_CLOSES)


def initiator_codes(is_open, states_raw, last_state, flags_raw) -> np.ndarray:
    """Who closed first, per life, as a number into _LABELS (initiators()).  last_state: the
    TCP state codes (tcpclose.h)."""
    last = np.asarray(last_state, dtype=np.int64)
    established = np.isin(last, [_STATE[s] for s in _ESTABLISHED_STATES])
    for state in _ESTABLISHED_STATES:
        established |= entered(states_raw, state)
    flags = np.asarray(flags_raw, dtype=np.int64)
    rst_received = (flags & layout.DEFINES["FLAG_RST_RECEIVED"]) != 0
    close_unseen = (flags & layout.DEFINES["FLAG_MISSED_CLOSE"]) != 0
    return np.select([np.asarray(is_open, dtype=bool), ~established, rst_received, last == _STATE["CLOSING"],
                      last == _STATE["FIN_WAIT2"], last == _STATE["LAST_ACK"], close_unseen],
                     np.arange(len(_CLOSE_LABELS)), len(_CLOSE_LABELS))


def initiators(is_open, states_raw, last_state, flags_raw) -> np.ndarray:
    """Who closed first, per life (INITIATORS), as text."""
    return _LABELS[initiator_codes(is_open, states_raw, last_state, flags_raw)]


def raw_timewaits_due(raw: np.ndarray) -> np.ndarray:
    """timewait_due() of raw struct tcpclose_event records (layout.EVENT_DTYPE) of ended lives
    (EV_LIFE; every other record kind counts as open), from the initiators' numbers: no text
    made for records that are only counted (the progress line, the agent)."""
    codes = initiator_codes(raw["kind"] != layout.DEFINES["EV_LIFE"], raw["states"], raw["last_state"], raw["flags"])
    return _DUE[codes]


def timewait_due(initiator) -> np.ndarray:
    """Did each life hand its connection over to a timewait socket at its ->CLOSE?"""
    return np.isin(np.asarray(initiator, dtype=object), TIMEWAIT_CLOSES)


# how a life's owner was learnt (bpf/tcpclose.h OWNER_x, and the fd tables): the ones that name a process
OWNERS_KNOWN = ("syscall", "listener", "snapshot", "fd_table")
# of those, the ones a BPF record carries (owner_src codes): the records that name a process
OWNER_CODES_KNOWN = [layout.DEFINES["OWNER_SYSCALL"], layout.DEFINES["OWNER_LISTENER"]]
# the ones the fd tables at the end may correct: the listener's owner is a guess for a child
# of a pre-forking server (its master), and an ambiguous or missing owner names no one
OWNERS_GUESSED = ("listener", "ambiguous", "none")


def owner_known(owner_src: pd.Series) -> np.ndarray:
    """Does each life's owner_src name a process?"""
    return owner_src.isin(OWNERS_KNOWN).to_numpy(bool)


def close_wait_open(initiator: np.ndarray, last_state_name: pd.Series) -> np.ndarray:
    """Is each life still open in CLOSE_WAIT: the peer closed, the owner has not?"""
    return (np.asarray(initiator, dtype=object) == "open") & (last_state_name == "CLOSE_WAIT").to_numpy(bool)
