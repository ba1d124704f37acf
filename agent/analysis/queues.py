"""SYN-queue and accept-queue pressure: per listener, its accept queue now against its
backlog and its SYN_RECV sockets (kernel.diag.listeners), and the TcpExt counters that say
a queue overflowed or SYN cookies were sent.

How the kernel bounds them: listen(fd, backlog) is capped at net.core.somaxconn, and that
bounds the accept queue (connections the handshake completed that the application has
not accept()ed yet; sock_diag reports it as a listener's rqueue, the bound as its
wqueue).  A full accept queue drops the completing handshake's ACK (ListenOverflows,
ListenDrops).  Half-open connections (SYN_RECV, request sockets) are bounded by the same
backlog and by net.ipv4.tcp_max_syn_backlog; past that the SYN is dropped
(TCPReqQFullDrop) or, with tcp_syncookies, answered with a cookie (TCPReqQFullDoCookies,
SyncookiesSent), and the cookie's ACK validated (SyncookiesRecv) or not (SyncookiesFailed).
"""
from __future__ import annotations

import pandas as pd

from ..kernel.procfs import QUEUE_COUNTERS
from ..labels import owner

FULL_SHARE = 0.8  # a listener whose accept queue holds this share of its backlog is near full


def moved(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The queue counters that went up between two TcpExt readings, and by how much."""
    return {c: after[c] - before[c] for c in QUEUE_COUNTERS if c in before and c in after and after[c] > before[c]}


def pressed(frame: pd.DataFrame) -> pd.DataFrame:
    """The listeners whose accept queue is near its backlog, or that have half-open connections."""
    if not len(frame):
        return frame
    full = frame["accept_queue"] >= FULL_SHARE * frame["backlog"].clip(lower=1)
    return frame[full | (frame["syn_recv"] > 0)]


def describe(row) -> str:
    """One listener's queues in plain words (a row of kernel.diag.listeners)."""
    return (f"{row.laddr}:{row.lport} ({owner(row.pid, row.comm)}): accept queue {row.accept_queue} of "
            f"{row.backlog}, {row.syn_recv} half-open (SYN_RECV)")


def overflow_finding(moved_counters: dict[str, int], pressed_rows: list, where: str) -> tuple[str, str]:
    """(text, evidence) of a finding that listen queues overflowed: what the counters say, the
    listeners near full (their processes), what to do."""
    parts = []
    if moved_counters.get("ListenOverflows") or moved_counters.get("ListenDrops"):
        parts.append("accept queues overflowed: a process does not accept() as fast as connections complete, so "
                     "the kernel dropped their handshake's last ACK (clients retry, seconds later)")
    if moved_counters.get("TCPReqQFullDrop") or moved_counters.get("TCPReqQFullDoCookies"):
        parts.append("SYN queues filled: half-open connections hit tcp_max_syn_backlog or the listen() backlog"
                     + (" and SYN cookies answered" if moved_counters.get("TCPReqQFullDoCookies") else
                        " and SYNs were dropped"))
    if not parts and moved_counters.get("SyncookiesSent"):
        parts.append("SYN cookies were sent")
    who = "; ".join(describe(r) for r in pressed_rows[:3])
    text = (f"{'; '.join(parts)} {where}." + (f" Near full: {who}." if who else "")
            + " Raise the application's listen() backlog with net.core.somaxconn, or make it accept() faster; "
            "none of this is TIME_WAIT.")
    evidence = ", ".join(f"TcpExt {c} +{n}" for c, n in moved_counters.items())
    return text[0].upper() + text[1:], evidence
