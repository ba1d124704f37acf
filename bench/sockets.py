"""tcpclose on a host with many sockets: `states` beside `ss -tanp` and `ss -tan`, and how soon
`trace` says Tracing, with N connections held open in a network namespace of its own.

    sudo .venv/bin/python -m bench.sockets [--connections 54000]

Each holder process makes HOLD connections to its own listener on loopback and keeps both
ends (2 x HOLD descriptors, under the default 20,000 open-file limit), so N connections are
2 N sockets.  Prints one row per command: seconds, peak memory, and the ratio to `ss -tanp`
(which also maps every socket to its process)."""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
import os

from agent.demo.namespace import Namespace

HOLD = 9000  # connections per holder process
HOLDER = """
import socket, sys
count, port, source = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
listener = socket.create_server(("127.0.0.1", port), backlog=4096)
listener.setblocking(False)
held = []
def take():
    while True:
        try:
            held.append(listener.accept()[0])
        except BlockingIOError:
            return
for _ in range(count):
    held.append(socket.create_connection(("127.0.0.1", port), source_address=(source, 0)))
    take()
while len(held) < 2 * count:
    take()
print("held", flush=True)
sys.stdin.read()
"""


def timed(command: list[str]) -> tuple[float, int, str]:
    """(seconds, peak RSS in MiB, stdout) of a command, by /usr/bin/time's measure."""
    began = time.monotonic()
    done = subprocess.run(["/usr/bin/time", "-f", "%M", *command], capture_output=True, text=True)
    took = time.monotonic() - began
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr[-500:]}")
    return took, int(done.stderr.strip().splitlines()[-1]) // 1024, done.stdout


def until_tracing(ns: str) -> float:
    """Seconds from starting `tcpclose trace --netns NS` to its Tracing line."""
    began = time.monotonic()
    trace = subprocess.Popen([sys.executable, "-m", "agent", "trace", "--netns", ns, "-d", "1", "-q"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = trace.stderr.readline()
    took = time.monotonic() - began
    trace.communicate(timeout=600)
    if not line.startswith("Tracing"):
        raise SystemExit(f"trace did not start: {line}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sockets", description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=54_000, help="connections held (2 sockets each)")
    args = parser.parse_args()
    holders = []
    with Namespace("tcpclose-bench") as ns:
        try:
            for i in range(-(-args.connections // HOLD)):
                count = min(HOLD, args.connections - i * HOLD)
                holders.append(ns.popen("-c", HOLDER, str(count), str(9001 + i), f"127.0.{1 + i}.1",
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            for holder in holders:
                if holder.stdout.readline().strip() != "held":
                    raise SystemExit("a holder failed to open its connections")
            sockets = len(ns.run("ss", "-tanH").splitlines())
            rows = []
            for name, command in (("ss -tanp", ["ss", "-tanp"]), ("ss -tan", ["ss", "-tan"]),
                                  ("tcpclose states", [sys.executable, "-m", "agent", "states"])):
                seconds, mib, out = timed(["ip", "netns", "exec", ns.name, *command]
                                          if name.startswith("ss") else [*command, "--netns", ns.name])
                rows.append((name, seconds, mib))
            tracing = until_tracing(ns.name)
        finally:
            for holder in holders:
                holder.stdin.close()
                holder.wait()
    base = rows[0][1]
    print(f"{sockets:,} TCP sockets ({args.connections:,} connections held), {os.cpu_count()} cores")
    print(f"{'command':<18}{'seconds':>9}{'peak MiB':>10}{'vs ss -tanp':>13}")
    for name, seconds, mib in rows:
        print(f"{name:<18}{seconds:>9.2f}{mib:>10}{seconds / base:>12.2f}x")
    print(f"tcpclose trace: Tracing after {tracing:.2f} s")


if __name__ == "__main__":
    main()
