"""A short-connection churn generator: client processes that connect and close as fast as they can.

  python -m bench.churn server --port P --workers W [--server-closes-first]
  python -m bench.churn client --port P --seconds S --dest 127.0.0.D [--rate R] [--mark M] [--server-closes-first]

By default the client closes first (connect, close) and the server reads to
EOF and closes.  With --server-closes-first on both, the server closes each
connection as soon as it accepts it, and the client closes once it reads
that EOF.
Either way each connection makes one TIME_WAIT, on the side that closed
first, and 2 socket lives in all.
Run it inside a network namespace of its own (the bench does) so that its
TIME_WAITs stay out of the host's table.  The server prints "ready" once it
listens; each client prints the number of connections it completed (with --mark, the
number completed at M seconds first).
"""
from __future__ import annotations

import argparse
import os
import socket
import time

from agent.demo.workload import set_comm


def server(port: int, workers: int, closes_first: bool) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(4096)
    first = True
    for _ in range(workers - 1):
        if os.fork() == 0:
            first = False
            break
    if first:  # one line for all workers (theirs could interleave); the listener queues from now on
        print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        if not closes_first:
            conn.recv(1)  # b"": the client's FIN is in
        conn.close()


def client(port: int, seconds: float, dest: str, rate: float | None, server_closes_first: bool,
           mark: float | None = None) -> None:
    """Churn for `seconds`, then print the count; with `mark`, print the count so far at `mark`
    seconds too (the bench's measured period, before the tail it times the programs in)."""
    done, start = 0, time.monotonic()
    end = start + seconds
    marked_at = start + mark if mark is not None else None
    while True:
        now = time.monotonic()
        if marked_at is not None and now >= marked_at:
            print(done, flush=True)
            marked_at = None
        if now >= end:
            break
        if rate and done >= (now - start) * rate:
            time.sleep(min(0.001, end - now))
            continue
        try:
            sock = socket.create_connection((dest, port))
        except OSError:  # out of ephemeral ports for now: count nothing, try again
            continue
        if server_closes_first:
            sock.recv(1)  # b"": the server's FIN is in
        sock.close()
        done += 1
    print(done, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.churn")
    parser.add_argument("side", choices=["server", "client"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--dest", default="127.0.0.1")
    parser.add_argument("--rate", type=float, help="connections/s for this client (default: as fast as it can)")
    parser.add_argument("--mark", type=float, help="client: also print the count so far at this many seconds")
    parser.add_argument("--server-closes-first", action="store_true",
                        help="server: close each connection at once; client: wait for the server's close, then close")
    args = parser.parse_args()
    set_comm(f"churn-{args.side}")
    if args.side == "server":
        server(args.port, args.workers, args.server_closes_first)
    else:
        client(args.port, args.seconds, args.dest, args.rate, args.server_closes_first, args.mark)


if __name__ == "__main__":
    main()
