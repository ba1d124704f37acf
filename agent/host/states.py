"""`tcpclose states`: what `netstat -n | awk '{++S[$NF]}'` tries to say, done right.

Counts of TCP sockets per state, per owning process and per peer, right now,
from sock_diag (as `ss -tan` reads them; any user may dump them) and
/proc/*/fd (which process holds which socket; other users' processes need
root).  Two kinds of socket have no file and so no holder: timewait sockets
and orphans (closed by their process, still finishing the close: FIN_WAIT1,
FIN_WAIT2, LAST_ACK, CLOSING).  Those on a port something listens on are
credited to the listener ("via listener"): a server's TIME_WAITs and orphans.
A timewait socket in FIN_WAIT2 substate (our FIN acked, the peer's not yet
come) is listed by the kernel as FIN-WAIT-2; its timer tells it apart from a
full socket in FIN_WAIT2, and it shows here as FIN_WAIT2 (timewait).
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..analysis.tally import peer_keys
from ..filters import Filters
from ..kernel import diag
from ..labels import owner
from ..record import layout

ALL_STATES = tuple(name for name in layout.TCP_STATE_NAMES.values() if name not in ("CLOSE", "NEW_SYN_RECV"))
TW_FIN_WAIT2 = "FIN_WAIT2 (timewait)"
# the order columns are shown in: a connection's life from open to close
STATE_ORDER = ["LISTEN", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", TW_FIN_WAIT2,
               "TIME_WAIT", "CLOSE_WAIT", "LAST_ACK", "CLOSING"]


def sockets_now(filters: Filters, netns: Path | None = None) -> pd.DataFrame:
    """Every TCP socket the filters keep, with its state (timewait substate told
    apart) and the process that holds it or the listener it belongs to."""
    rows = diag.diag_sockets(ALL_STATES, netns)
    frame = pd.DataFrame(rows, columns=["family", "laddr", "lport", "raddr", "rport", "state", "inode", "timer"])
    timewait = frame["timer"] == diag.TIMEWAIT_TIMER
    frame.loc[timewait & (frame["state"] == "FIN_WAIT2"), "state"] = TW_FIN_WAIT2
    # the same holders as a trace's fd tables: a socket several processes hold (inherited
    # across fork, a pre-forking server's listener) names them all, none of them alone
    holders = diag.socket_holders()
    held = [diag.holders_label((pid, comm) for pid, comm, _ in holders[inode]) if holders.get(inode) else None
            for inode in frame["inode"]]
    frame["pid"] = pd.array([h[0] if h else None for h in held], dtype="Int64")
    frame["comm"] = [h[1] if h else "" for h in held]
    frame["owner"] = ["fd" if h else "" for h in held]
    # a port several processes listen on (SO_REUSEPORT) names them all, as one does.  Any user
    # sees the listening sockets, not always their holders (another user's process, without
    # root): a socket on a listening port is still the server's side, named by its port
    listening = frame[frame["state"] == "LISTEN"]
    by_port = pd.DataFrame(
        [(port, *(diag.holders_label(zip(group["pid"].fillna(-1), group["comm"])) if (group["owner"] == "fd").any()
                  else (-1, f"(server on port {port})")))
         for port, group in listening.groupby("lport")], columns=["lport", "pid", "comm"]).set_index("lport")
    by_port["pid"] = by_port["pid"].where(by_port["pid"] >= 0).astype("Int64")
    listeners = listening
    orphan = (frame["owner"] == "") & (frame["state"] != "LISTEN") & frame["lport"].isin(by_port.index)
    frame.loc[orphan, "pid"] = by_port["pid"].reindex(frame.loc[orphan, "lport"]).to_numpy()
    frame.loc[orphan, "comm"] = by_port["comm"].reindex(frame.loc[orphan, "lport"]).to_numpy()
    frame.loc[orphan, "owner"] = "listener"
    # role for peer_keys: a socket on a listening port came in; any other connection went out
    frame["role"] = ["server" if listening else "client" for listening in frame["lport"].isin(listeners["lport"])]
    keep = [filters.keeps_socket(f, lp, rp) and filters.keeps_owner(None if pd.isna(pid) else pid, comm)
            for f, lp, rp, pid, comm in zip(frame["family"], frame["lport"], frame["rport"], frame["pid"],
                                             frame["comm"])]
    return frame[keep].reset_index(drop=True)


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    return table.reindex(columns=[s for s in STATE_ORDER if s in table.columns])


def _fold_single_socket_peers(by_peer: pd.DataFrame) -> pd.DataFrame:
    """Peers with one socket each, as a churn's clients are, in one row at the end."""
    single = by_peer.sum(axis=1) == 1
    if single.sum() < 2:
        return by_peer
    folded = by_peer[single].sum().to_frame(f"{int(single.sum()):,} peers, one socket each").T
    return pd.concat([by_peer[~single], folded])


def counts(frame: pd.DataFrame) -> dict:
    """{"states": {state: n}, "processes": [...], "peers": [...], "unowned": n}: the per-state
    counts host-wide, per holder (busiest first) and per peer (connections only)."""
    states = frame["state"].value_counts()
    by_process = frame.assign(comm=frame["comm"].replace("", "(no process found)")).pivot_table(
        index=["pid", "comm", "owner"], columns="state", values="lport", aggfunc="size", fill_value=0, dropna=False)
    by_process = _ordered(by_process)
    by_process = by_process.loc[by_process.sum(axis=1).sort_values(ascending=False, kind="stable").index]
    conns = frame[frame["state"] != "LISTEN"]
    peers = pd.concat([conns[["state"]], peer_keys(conns)], axis=1)
    peers["peer"] = [f"{a}:{p}" if d == "outbound" else f"{a} -> :{lp}"
                     for d, a, p, lp in zip(peers["direction"], peers["raddr"], peers["rport"], peers["lport"])]
    by_peer = _ordered(peers.pivot_table(index="peer", columns="state", values="direction", aggfunc="size",
                                         fill_value=0))
    by_peer = _fold_single_socket_peers(by_peer.loc[by_peer.sum(axis=1).sort_values(ascending=False,
                                                                                  kind="stable").index])
    return {
        "states": {s: int(states.get(s, 0)) for s in STATE_ORDER if states.get(s, 0)},
        "processes": [{"pid": None if pd.isna(pid) else int(pid), "comm": comm, "via": owner or None,
                       "states": {s: int(n) for s, n in row.items() if n}}
                      for (pid, comm, owner), row in by_process.iterrows() if row.sum()],
        "peers": [{"peer": peer, "states": {s: int(n) for s, n in row.items() if n}}
                  for peer, row in by_peer.iterrows()],
        "unowned": int((frame["owner"] == "").sum()),
        "root": os.geteuid() == 0,
    }


def render(c: dict, top: int = 15, width: int = 120) -> str:
    """The counts as three tables: per state, per process, per peer (the `top` busiest)."""
    import io

    from rich.console import Console
    from rich.table import Table

    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None, highlight=False, emoji=False)
    total = sum(c["states"].values())
    if not total:
        return "no TCP socket matches\n"
    console.print(f"{total} TCP sockets: " + ", ".join(f"{n} {s}" for s, n in c["states"].items()))
    columns = list(c["states"])
    for title, rows, key in (("per process", c["processes"], "process"), ("per peer", c["peers"], "peer")):
        table = Table(box=None, pad_edge=False, show_edge=False, title=None)
        table.add_column(key.upper(), no_wrap=True)
        for state in columns:
            table.add_column(state, justify="right", no_wrap=True)
        for row in rows[:top]:
            if key == "process":
                name = owner(row["pid"], row["comm"])
                name += " via listener" if row["via"] == "listener" else ""
            else:
                name = row["peer"]
            table.add_row(name, *(str(row["states"].get(s, "")) for s in columns))
        console.print(f"\n{title.capitalize()}" + (f" (the {top} busiest of {len(rows)})" if len(rows) > top else ""))
        console.print(table if rows else "  none (listening sockets only)")
    if c.get("listen_queues"):
        console.print("\nListen queues near full, or with half-open connections:")
        for line in c["listen_queues"]:
            console.print(f"  {line}")
    if c["unowned"]:
        console.print(f"\n{c['unowned']} sockets have no process: timewait sockets and orphans (closed, still "
                      "finishing) not on a listening port" + ("" if c["root"] else ", and the sockets of other "
                      "users' processes"))
    if not c["root"]:
        console.print("Not root: the processes that hold other users' sockets and listeners are not named (a "
                      "listener's sockets are still its port's); run as root to see them.")
    return out.getvalue()
