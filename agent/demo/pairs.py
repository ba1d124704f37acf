"""The demo's three pairs of processes, each closing its connections its own way."""
from __future__ import annotations

from dataclasses import dataclass

from .workload import Process, start_client, start_server

CONNECTIONS = 23


@dataclass
class Pair:
    story: str
    server_mode: str
    server_comm: str
    client_mode: str
    client_comm: str
    count: int = CONNECTIONS


PAIRS = [
    Pair("a client that closes first (its side keeps the TIME_WAITs)",
         "wait_close", "demo-echo", "close_first", "demo-client"),
    Pair("a server that closes first (TIME_WAITs pile up on the server)",
         "close_first", "demo-web", "wait_close", "demo-poller"),
    Pair("a server that never closes: its sockets stay in CLOSE_WAIT",
         "leak", "demo-leaky", "close_first", "demo-caller", 5),
]


def start() -> list[Process]:
    """Run every pair to the end of its connections; the leaking servers are left holding theirs."""
    procs = []
    for pair in PAIRS:
        server, port = start_server(pair.server_mode, pair.count, pair.server_comm)
        client = start_client(pair.client_mode, port, pair.count, pair.client_comm)
        procs += [server, client]
    for proc in procs:
        proc.done()
    return procs


def release(procs: list[Process]) -> None:
    for proc in procs:
        proc.release()
