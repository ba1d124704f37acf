"""The TCP sockets that exist right now (sock_diag, as `ss -tan` reads them) and who holds them (/proc/*/fd).

Tracing sees only what happens after it starts.  A snapshot at start shows the
sockets opened before, above all the CLOSE_WAITs a leaking process already
holds; one at the end names the file descriptor of every CLOSE_WAIT still
open.  Both see one network namespace: tcpclose's own, or the one --netns names.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd

from ..filters import Filters
from ..record import layout
from . import sockdiag
from .netns import in_netns, namespaces

SNAPSHOT_COLUMNS = ["family", "laddr", "lport", "raddr", "rport", "state", "inode", "since_ack_s",
                    "pid", "comm", "fd", "cgroup_id", "rqueue", "wqueue"]
# sockets that are connections with a file: a timewait socket, a request socket
# (SYN_RECV) or a listener is none of these
CONNECTION_STATES = ("ESTABLISHED", "SYN_SENT", "FIN_WAIT1", "FIN_WAIT2", "CLOSE_WAIT", "LAST_ACK", "CLOSING")
# idiag_timer of a timewait socket (inet_twsk_diag_fill).  Its idiag_state is the
# substate: TIME_WAIT, or FIN_WAIT2 while it still waits for the peer's FIN.
TIMEWAIT_TIMER = 3


def diag_sockets(states: tuple[str, ...] = CONNECTION_STATES, netns: Path | None = None) -> pd.DataFrame:
    """One row per TCP socket in these states, both families (kernel.sockdiag's columns),
    in the namespace tcpclose runs in or the one `netns` opens."""
    mask = sum(1 << layout.DEFINES["TCP_" + state] for state in states)
    return in_netns(netns, lambda: sockdiag.dump(mask, want_info=True, state_names=layout.TCP_STATE_NAMES))


def socket_holders(proc: Path = Path("/proc")) -> Holders:
    """Socket inode -> (pid, comm, fd) of every process holding it, from /proc/PID/fd links
    (/proc lists processes, not threads: a pid here is a tgid)."""
    holders: dict[int, list[tuple[int, str, int]]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
            comm = (entry / "comm").read_text().strip()
        except OSError:  # gone, or not ours to read
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                holders.setdefault(int(target[8:-1]), []).append((int(entry.name), comm, int(fd.name)))
    return holders


def holders_label(pids_comms) -> tuple[int | None, str]:
    """(pid, comm) for people: the one process that holds a socket (or listens on a port),
    else no pid and what the holders are: "nginx (3 processes)", "2 processes"."""
    held = {(int(pid), comm) for pid, comm in pids_comms}
    if len(held) <= 1:
        return next(iter(held), (None, ""))
    comms = {comm for _, comm in held}
    return None, (f"{comms.pop()} ({len(held)} processes)" if len(comms) == 1 else f"{len(held)} processes")


def sole_holder(held: list[tuple[int, str, int]] | None) -> tuple[int | None, str, int | None]:
    """(pid, comm, fd) of the one process that holds a socket; (None, "", None) when none
    does, or when several do (a socket inherited across fork, or passed over a Unix socket:
    the fd tables do not say which one uses it)."""
    if not held or len({pid for pid, _, _ in held}) > 1:
        return None, "", None
    return held[0]


Holders = dict[int, list[tuple[int, str, int]]]  # socket_holders(): inode -> (pid, comm, fd) of each holder


def snapshot(filters: Filters, states: tuple[str, ...] = CONNECTION_STATES,
             netns: Path | None = None, holders: Holders | None = None) -> pd.DataFrame:
    """The sockets in these states that the filters keep, each with its owner where one holds it
    (holders: the fd tables as read a moment ago, else read now: 1 s for 100,000 sockets)."""
    return snapshot_rows(diag_sockets(states, netns), filters, holders)


def snapshot_everywhere(filters: Filters, states: tuple[str, ...] = CONNECTION_STATES,
                        holders: Holders | None = None) -> pd.DataFrame:
    """snapshot() of every network namespace on the host, with each socket's netns: the
    tracepoints see every namespace, so the fd tables must be read in every one too."""
    frames = []
    for ns, (path, _) in namespaces().items():
        try:
            frames.append(pd.DataFrame(diag_sockets(states, path)).assign(netns=ns))
        except OSError:  # gone meanwhile
            continue
    return snapshot_rows(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(), filters, holders)


def snapshot_rows(rows: pd.DataFrame | list[dict], filters: Filters, holders: Holders | None = None) -> pd.DataFrame:
    """The sockets (diag_sockets' rows) with the one process that holds each (sole_holder),
    as the filters keep them."""
    frame = pd.DataFrame(rows)
    columns = SNAPSHOT_COLUMNS + (["netns"] if "netns" in frame else [])
    if not len(frame):
        return pd.DataFrame(columns=columns)
    holders = socket_holders() if holders is None else holders
    held = [sole_holder(holders.get(inode) if inode else None) for inode in frame["inode"].tolist()]
    frame["pid"] = [pid for pid, _, _ in held]
    frame["comm"] = [comm for _, comm, _ in held]
    frame["fd"] = [fd for _, _, fd in held]
    frame = frame.reindex(columns=columns)
    keep = [filters.keeps_socket(f, lp, rp) and filters.keeps_owner(pid, comm)
            for f, lp, rp, pid, comm in zip(frame["family"], frame["lport"], frame["rport"], frame["pid"],
                                             frame["comm"])]
    return frame[keep].reset_index(drop=True)


class TimewaitWatch:
    """TIME_WAIT ends without the timer tracepoints: poll sock_diag and see timewait sockets go.

    A timewait socket seen with its timer due within the poll interval and
    gone at the next poll expired at last sight + timer; one gone earlier was
    killed or reused somewhere between the two polls.  Sees only the network
    namespace tcpclose runs in, and a timewait that lives less than one
    interval not at all.  Dumping tens of thousands of sockets takes a while,
    so the interval stretches to three times the last dump's duration.
    """

    def __init__(self, netns: Path | None = None, interval_s: float = 1.0):
        self.netns = netns
        self.interval_s = interval_s
        self._next = 0.0
        self._seen: dict[tuple, dict] = {}  # 4-tuple -> first_seen, last_seen, expires_s

    def poll(self, now: float, force: bool = False) -> list[dict]:
        """The timewait sockets that ended since the last poll, as tw_end rows (epoch seconds)."""
        if not force and now < self._next:
            return []
        began = time.monotonic()
        rows = pd.DataFrame(diag_sockets(("TIME_WAIT",), self.netns)).to_dict("records")
        took = time.monotonic() - began
        # A socket in the dump existed by the time the dump was done, not by `now`:
        # entering the namespace and the dump itself take milliseconds, and a
        # connection that closes in that time is in it.  Sightings are dated at the dump's end, so that none comes
        # before the close that made it (analysis.timewait.diag_ends links them forward).
        seen_at = now + took
        current = {}
        for row in rows:
            key = (row["family"], row["laddr"], row["lport"], row["raddr"], row["rport"])
            known = self._seen.get(key)
            current[key] = {"first_seen": known["first_seen"] if known else seen_at, "last_seen": seen_at,
                            "expires_s": row["expires_s"]}
        self._next = now + max(self.interval_s, 3 * took)
        ended = []
        for key, seen in self._seen.items():
            if key in current:
                continue
            due = seen["last_seen"] + seen["expires_s"]
            expired = due <= seen_at + 0.5  # its timer was due by this poll
            ended.append(dict(zip(("family", "laddr", "lport", "raddr", "rport"), key),
                              first_seen=seen["first_seen"], end=due if expired else seen_at,
                              how="expired" if expired else "cancelled"))
        self._seen = current
        return ended

    def still_open(self) -> list[dict]:
        return [dict(zip(("family", "laddr", "lport", "raddr", "rport"), key), first_seen=seen["first_seen"])
                for key, seen in self._seen.items()]


# Listening sockets and their queues (analysis/queues.py says what they mean): sock_diag
# reports a listener's accept queue now as its rqueue and its backlog as its wqueue.
LISTENER_COLUMNS = ["family", "laddr", "lport", "pid", "comm", "accept_queue", "backlog", "syn_recv"]


def listeners(netns: Path | None = None) -> pd.DataFrame:
    """One row per listening socket of this namespace (or the one netns opens)."""
    return _listeners_of(snapshot_rows(diag_sockets(("LISTEN", "SYN_RECV"), netns), Filters()))


def listeners_everywhere(holders: Holders | None = None) -> pd.DataFrame:
    """listeners() of every network namespace, with a netns column."""
    return _listeners_of(snapshot_everywhere(Filters(), ("LISTEN", "SYN_RECV"), holders))


def _listeners_of(frame: pd.DataFrame) -> pd.DataFrame:
    """Listening and SYN_RECV sockets (kernel.diag rows) -> one row per listener: its holder,
    accept queue now, backlog, and the SYN_RECV sockets on its port (a request socket names no
    listener, so they are counted by namespace and port)."""
    columns = LISTENER_COLUMNS + (["netns"] if "netns" in frame else [])
    if not len(frame):
        return pd.DataFrame(columns=columns)
    keys = ["netns", "lport"] if "netns" in frame else ["lport"]
    syn_recv = frame[frame["state"] == "SYN_RECV"].groupby(keys).size()
    out = frame[frame["state"] == "LISTEN"].rename(columns={"rqueue": "accept_queue", "wqueue": "backlog"})
    index = pd.MultiIndex.from_frame(out[keys]) if len(keys) > 1 else pd.Index(out["lport"])
    out = out.assign(syn_recv=syn_recv.reindex(index).fillna(0).astype(int).to_numpy())
    return out[columns].reset_index(drop=True)


def listener_seeds(listening: pd.DataFrame) -> list[tuple]:
    """The listeners' map entries for the listening sockets there before tracing, one per
    (family, local address, port): the first holder's owner, how many sockets share the key,
    and whether more than one process does, or a socket several processes hold (a
    pre-forking server's listener) names none: as the BPF side marks them at listen()."""
    seeds = []
    for (family, laddr, lport), group in listening.groupby(["family", "laddr", "lport"], sort=False):
        owners = set(group["pid"].fillna(-1).astype(int))
        first = group.iloc[0]
        shared = len(owners) > 1 or -1 in owners
        pid = 0 if shared else int(first["pid"])
        seeds.append((family, laddr, int(lport), pid, first["comm"] if pid else "", int(first["cgroup_id"]),
                      len(group), shared))
    return seeds
