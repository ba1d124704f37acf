"""Loopback TCP workloads in separate processes, each with its own comm.

Used by `tcpclose demo` and the live tests.  Each process prints JSON lines
on stdout: {"event": "ready", ...} once listening, and {"event": "done",
"pid", "comm", "connections", "local_ports"} when its work is over, then stays
until its stdin closes (Process.release), so that a test
can compare what tcpclose reports with what the workload really did.

  python -m agent.demo.workload server MODE --count N --comm NAME [--host H] [--port P]
                                [--reuseport] [--workers W] [--threads T] [--idle S] [--backlog B]
  python -m agent.demo.workload client MODE --port P --count N --comm NAME [--host H] [--rebind]

Server modes: wait_close (read to EOF, then close), close_first (read the
request, close), linger0 (read the request, close with SO_LINGER 0), leak
(read to EOF and never close, until stdin closes), send_wait (send data, read
to EOF, close), reply_close (read to EOF, answer, close), hold (read to EOF,
wait --hold seconds, close).  --keep-listening keeps the listener open until
released (it closes when the work is done otherwise).  The shapes of real servers:
--port P with --reuseport (several processes listening on one port, SO_REUSEPORT),
--workers W (pre-forking: the process listens, then W forked workers accept; each
worker says "done" with its own pid, the master accepts nothing), --threads T (T threads
of this one process accept, each named COMM-tN, the process keeps COMM) and --idle S
(with --count 0: accept until S seconds pass with no new connection, however many that
makes; with a count: that many, or fewer once S seconds pass with none).
Every "done" names the peer ports it accepted (peer_ports).
Client modes: close_first (send, close), wait_close (send, read to EOF, close),
linger0 (close with SO_LINGER 0), unread (close with the server's data unread),
half_close (send, shutdown(SHUT_WR), read to EOF, close), fin_wait2 (send,
shutdown(SHUT_WR), wait for FIN_WAIT2, close), refused (connect to a port nobody
listens on).  --rebind makes every connection after the
first bind() the first one's local port (SO_REUSEADDR), so that it takes the
same 4-tuple again; a client's --hold waits that long after connect().
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time

PR_SET_NAME = 15


def set_comm(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def _say(**fields) -> None:
    """One JSON line on stdout, in one write(): a pre-forking server's workers share the pipe,
    and two lines written in pieces can interleave (one write under PIPE_BUF cannot)."""
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), (json.dumps(fields) + "\n").encode())


def _read_to_eof(sock: socket.socket) -> None:
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass


def _linger0(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


TCP_FIN_WAIT2 = 5  # tcpi_state (tcp_info's first byte), tcp_states.h's number: no record.layout import here


def _until_fin_wait2(sock: socket.socket, timeout_s: float = 5.0) -> None:
    """Wait until the ACK of our FIN has come (FIN_WAIT2): a close() then makes the
    FIN_WAIT2-substate timewait at once (__tcp_close).  Right after the FIN, that ACK may be
    read from the backlog of the socket close() still owns: tcp_rcv_state_process then keeps
    a full FIN_WAIT2 socket, which tcp_keepalive_timer resets at tcp_fin_timeout (no timewait)."""
    deadline = time.monotonic() + timeout_s
    while sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != TCP_FIN_WAIT2:
        if time.monotonic() > deadline:
            raise SystemExit("the peer never acknowledged our FIN")
        time.sleep(0.001)


def serve_one(conn: socket.socket, mode: str, held: list, hold_s: float = 0.0) -> None:
    if mode == "hold":
        _read_to_eof(conn)
        time.sleep(hold_s)
    elif mode == "wait_close":
        _read_to_eof(conn)
    elif mode == "close_first":
        conn.recv(1)
    elif mode == "linger0":
        conn.recv(1)
        _linger0(conn)
    elif mode == "leak":
        _read_to_eof(conn)
        held.append(conn)
        return
    elif mode == "send_wait":
        conn.sendall(b"y" * 100)
        _read_to_eof(conn)
    elif mode == "reply_close":
        _read_to_eof(conn)
        conn.sendall(b"y")
    conn.close()


def server(mode: str, count: int, host: str, hold_s: float = 0.0, keep_listening: bool = False, port: int = 0,
           reuseport: bool = False, workers: int = 0, idle_s: float | None = None, threads: int = 0,
           backlog: int = 128) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    if reuseport:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind((host, port))
    listener.listen(backlog)
    port = listener.getsockname()[1]
    _say(event="ready", pid=os.getpid(), port=port)
    forked = []
    for _ in range(workers):  # pre-forking: the workers inherit the listener and accept
        child = os.fork()
        if child == 0:
            forked = None
            break
        forked.append(child)
    if forked:  # the master: accepts nothing, holds the listener until released
        sys.stdin.read()
        for child in forked:
            os.waitpid(child, 0)
        return
    held: list[socket.socket] = []
    peers: list[int] = []
    listener.settimeout(idle_s)

    def accept_loop(thread_name: str | None = None) -> None:
        if thread_name:
            set_comm(thread_name)  # this thread's name only
        # count connections, or fewer if idle_s passes with none; count 0: until idle_s (none without)
        while len(peers) < count or (count == 0 and idle_s is not None):
            try:
                conn, peer = listener.accept()
            except socket.timeout:
                break
            conn.settimeout(None)
            peers.append(peer[1])
            serve_one(conn, mode, held, hold_s)

    if threads:
        comm = open("/proc/self/comm").read().strip()
        pool = [threading.Thread(target=accept_loop, args=(f"{comm}-t{i}"[:15],)) for i in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    else:
        accept_loop()
    if not keep_listening:
        listener.close()
    _say(event="done", pid=os.getpid(), connections=len(peers), local_ports=[port], peer_ports=peers)
    sys.stdin.read()  # stay until released; a leaking server keeps its CLOSE_WAIT sockets till then


def client_one(mode: str, host: str, port: int, local_port: int | None = None, hold_s: float = 0.0) -> int:
    """One connection; local_port: bind() it first with SO_REUSEADDR (0: any port).

    A TIME_WAIT lets bind() take its port only if its socket had SO_REUSEADDR too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if local_port is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, local_port))
    if mode == "refused":
        try:
            sock.connect((host, port))
        except ConnectionRefusedError:
            pass
        else:
            raise SystemExit(f"connect to {host}:{port} was not refused")
        local = sock.getsockname()[1]
        sock.close()
        return local
    sock.connect((host, port))
    local = sock.getsockname()[1]
    time.sleep(hold_s)
    if mode == "close_first":
        sock.sendall(b"x")
    elif mode == "wait_close":
        sock.sendall(b"x")
        _read_to_eof(sock)
    elif mode == "linger0":
        _linger0(sock)
    elif mode == "unread":
        sock.sendall(b"x")
        select.select([sock], [], [], 5)  # the server's data has arrived, and stays unread
    elif mode == "half_close":
        sock.sendall(b"x")
        sock.shutdown(socket.SHUT_WR)
        _read_to_eof(sock)
    elif mode == "fin_wait2":
        sock.sendall(b"x")
        sock.shutdown(socket.SHUT_WR)
        _until_fin_wait2(sock)
    sock.close()
    return local


def client(mode: str, count: int, host: str, port: int, rebind: bool = False, hold_s: float = 0.0) -> None:
    ports = [client_one(mode, host, port, 0 if rebind else None, hold_s)]
    for _ in range(count - 1):
        time.sleep(0.05 if rebind else 0)  # the previous connection's last ACK
        ports.append(client_one(mode, host, port, ports[0] if rebind else None, hold_s))
    _say(event="done", pid=os.getpid(), connections=count, local_ports=ports)
    sys.stdin.read()  # stay until released, so that a tracer can still read /proc/PID


class Process:
    """One workload process, started with `python -m agent.demo.workload`."""

    def __init__(self, *args: str, netns: str | None = None):
        prefix = ["ip", "netns", "exec", netns] if netns else []  # exec: the pid stays the workload's
        self.popen = subprocess.Popen(
            [*prefix, sys.executable, "-m", "agent.demo.workload", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.pid = self.popen.pid

    def _line(self, want: str) -> dict:
        line = self.popen.stdout.readline()
        if not line:
            self.popen.wait()
            raise RuntimeError(f"workload {self.popen.args} exited {self.popen.returncode} before '{want}'")
        fields = json.loads(line)
        assert fields["event"] == want, fields
        return fields

    def ready(self) -> dict:
        return self._line("ready")

    def done(self) -> dict:
        return self._line("done")

    def release(self, timeout: float = 10) -> int:
        """Close stdin (a client, or a leaking server, then exits) and wait for the exit.

        A server still waiting for connections that never came (a failed run)
        is ended, so that no workload outlives its test."""
        self.popen.stdin.close()
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()


def start_server(mode: str, count: int, comm: str, host: str = "127.0.0.1", extra: tuple = (),
                 netns: str | None = None) -> tuple[Process, int]:
    proc = Process("server", mode, "--count", str(count), "--comm", comm, "--host", host, *extra, netns=netns)
    return proc, proc.ready()["port"]


def start_client(mode: str, port: int, count: int, comm: str, host: str = "127.0.0.1", extra: tuple = (),
                 netns: str | None = None) -> Process:
    return Process("client", mode, "--port", str(port), "--count", str(count), "--comm", comm, "--host", host,
                   *extra, netns=netns)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agent.demo.workload")
    parser.add_argument("side", choices=["server", "client"])
    parser.add_argument("mode")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--comm", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rebind", action="store_true")
    parser.add_argument("--hold", type=float, default=0.0)
    parser.add_argument("--keep-listening", action="store_true")
    parser.add_argument("--reuseport", action="store_true")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--idle", type=float)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=128)
    args = parser.parse_args(argv)
    set_comm(args.comm)
    if args.side == "server":
        server(args.mode, args.count, args.host, args.hold, args.keep_listening, args.port, args.reuseport,
               args.workers, args.idle, args.threads, args.backlog)
    else:
        client(args.mode, args.count, args.host, args.port, args.rebind, args.hold)


if __name__ == "__main__":
    main()
