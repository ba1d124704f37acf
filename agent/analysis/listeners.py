"""Whose are a listener's children, where the kernel credits them to the listener only.

A server-side life whose owner never acted on it (a reset, a handshake never completed)
is credited to its listener's owner.  Where the listener is shared, that guess names the
wrong process (a pre-forking server's master for its workers' sockets): such lives are
made ambiguous, credited to no one, from the fd tables at the end of the run and from the
listener's other lives.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .columns import Columns


def shared_at_end(out: pd.DataFrame, seen_at_end: pd.DataFrame) -> None:
    """A life credited to its listener's owner only (it ended with no syscall of its owner:
    a reset, a handshake never completed) is ambiguous where that listener is held by several
    processes at the end (a pre-forking server's master and workers): which one had the
    socket, the kernel does not say, and the master that listened is the likeliest wrong."""
    listening = seen_at_end[seen_at_end["last_state"] == "LISTEN"]
    rows = np.flatnonzero((out["owner_src"] == "listener").to_numpy())
    if not len(listening) or not len(rows):
        return
    shared = set()
    for family, laddr, lport, pid in zip(listening["family"], listening["laddr"], listening["lport"],
                                         listening["pid"].fillna(0)):
        if int(pid) == 0:  # no one process holds it
            shared.add((family, laddr, int(lport)))
    if not shared:
        return
    wildcard = {"ipv4": "0.0.0.0", "ipv6": "::"}
    hit = [i for i in rows if (out.at[i, "family"], out.at[i, "laddr"], int(out.at[i, "lport"])) in shared
           or (out.at[i, "family"], wildcard.get(out.at[i, "family"]), int(out.at[i, "lport"])) in shared]
    out.loc[hit, ["pid", "comm", "thread_comm"]] = [None, "", None]
    out.loc[hit, "owner_src"] = "ambiguous"


def listener_owners(out: pd.DataFrame) -> dict[tuple, set[int]]:
    """Per listener (network namespace, "" where none was learnt; local address; port), the
    processes whose own syscall closed one of its children (server lives, owner_src syscall)."""
    server = np.flatnonzero((out["role"] == "server").to_numpy() & (out["owner_src"] == "syscall").to_numpy())
    owners: dict[tuple, set[int]] = {}
    if not len(server):
        return owners
    # (each distinct (netns, laddr, lport, pid) once: a listener's children are many)
    for netns, laddr, lport, pid in Columns(frame=out).where(server).groups(["netns", "laddr", "lport", "pid"])[1]:
        owners.setdefault(("" if netns is None else str(netns), laddr, int(lport)), set()).add(int(pid))
    return owners


def seen_shared(out: pd.DataFrame, earlier: dict[tuple, set[int]] | None = None) -> None:
    """A life credited to its listener's owner only is ambiguous where other lives of the same
    listener (network namespace, local address and port) were closed by another process's
    syscall: the listener's children went to several processes (a pre-forking server's
    workers, a dispatcher passing them on), so the one that listened is not the one that had
    this socket.  This holds after that listener is gone too, where shared_at_end, which
    reads the snapshot at the end, cannot tell."""
    guessed = np.flatnonzero((out["role"] == "server").to_numpy() & (out["owner_src"] == "listener").to_numpy())
    if not len(guessed):
        return
    owners = listener_owners(out)
    for key, pids in (earlier or {}).items():
        owners[key] = owners.get(key, set()) | pids
    listened = out.iloc[guessed]
    hit = [i for i, key, pid in zip(guessed, zip(listened["netns"].fillna("").astype(str), listened["laddr"],
                                                 listened["lport"].astype(int)), listened["pid"])
           if owners.get(key, set()) - {int(pid)}]
    out.loc[hit, ["pid", "comm", "thread_comm"]] = [None, "", None]
    out.loc[hit, "owner_src"] = "ambiguous"
