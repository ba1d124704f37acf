"""The demo's pairs of processes, each ending its connections its own way, in a network
namespace of the demo's own where every kind of ending shows within seconds:

  tcp_fin_timeout 2 s        a closer whose peer never closes waits 2 s in the FIN_WAIT2
                             substate, then its timewait socket expires (the lifetime plot
                             has ended TIME_WAITs without waiting 60 s)
  a 100-port range           60 TIME_WAITs toward one destination are 60 % of the ports
  reconnects from one port   a SYN into the server's TIME_WAIT kills it; a connect() bound
                             to the port of the client's own TIME_WAIT reuses it
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..kernel.diag import diag_sockets
from .workload import Process, start_client, start_server

SYSCTLS = {"tcp_fin_timeout": 2, "ip_local_port_range": "40000 40099"}
SETTLE_MAX_S = 10.0  # the FIN_WAIT2-substate timewaits expire after tcp_fin_timeout (2 s)
# between a first FIN and the end: a timewait socket reports its substate, so one that still
# waits in FIN_WAIT2 shows as FIN_WAIT2 (and is dumped for the TIME_WAIT bit of the request)
CLOSING_STATES = ("FIN_WAIT1", "FIN_WAIT2", "CLOSING", "LAST_ACK", "TIME_WAIT")


@dataclass
class Pair:
    story: str
    server_mode: str
    server_comm: str
    client_mode: str
    client_comm: str
    count: int
    client_extra: tuple = ()


PAIRS = [
    Pair("a client that closes first: its side keeps the TIME_WAITs, 60 % of this namespace's ports",
         "wait_close", "demo-echo", "close_first", "demo-client", 60),
    Pair("a server that closes first; its client reconnects from one port, and each SYN kills the "
         "server's TIME_WAIT", "close_first", "demo-web", "wait_close", "demo-poller", 10, ("--rebind",)),
    Pair("a client that closes first and reconnects from one port: connect() reuses its TIME_WAIT",
         "wait_close", "demo-cache", "close_first", "demo-rebinder", 10, ("--rebind",)),
    Pair("a server that never closes: CLOSE_WAIT on its side; the caller waits 2 s in FIN_WAIT2, then gives up",
         "leak", "demo-leaky", "fin_wait2", "demo-caller", 5),
]


IDLE_S = 5.0  # a server whose client failed stops waiting after this long with no connection


def start(netns: str, procs: list[Process]) -> list[str]:
    """Run each pair to the end of its connections inside the namespace, one pair after the
    other (with 100 ports, a client's connect() could otherwise take the port another client
    binds again), each process added to `procs` as it starts; the leaking server is left
    holding its sockets.  Returns what failed (a client that exited early: its server gives
    up after IDLE_S), for the demo to say; the trace shows what they did do."""
    failed = []
    for pair in PAIRS:
        # (listening until released: a later pair's server cannot take its port, one destination each)
        server, port = start_server(pair.server_mode, pair.count, pair.server_comm, netns=netns,
                                    extra=("--idle", str(IDLE_S), "--keep-listening"))
        procs.append(server)
        client = start_client(pair.client_mode, port, pair.count, pair.client_comm, extra=pair.client_extra,
                              netns=netns)
        procs.append(client)
        try:
            client.done()
        except RuntimeError as exc:
            failed.append(f"{pair.client_comm}: {exc}")
        server.done()
    return failed


def settle(netns: Path, stop) -> None:
    """Wait until no connection in the namespace is between its first FIN and its end, save
    the TIME_WAITs proper (60 s) and the leak's CLOSE_WAITs: the last ACKs have landed and
    the FIN_WAIT2-substate timewaits have expired.  At most SETTLE_MAX_S, or until `stop`."""
    deadline = time.monotonic() + SETTLE_MAX_S
    while not stop.is_set() and time.monotonic() < deadline:
        if (diag_sockets(CLOSING_STATES, netns)["state"] == "TIME_WAIT").all():
            return
        stop.wait(0.05)


def release(procs: list[Process]) -> None:
    for proc in procs:
        proc.release()
