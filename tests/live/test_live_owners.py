"""The right owner on the shapes real servers take: an SO_REUSEPORT group, a pre-forking
server, the same address and port in two network namespaces.  Each server process says
which peer ports it accepted; every CLOSE_WAIT it leaks must be credited to it, and none
to a process that never held the socket (the master, the other member, the other
namespace's server)."""
from __future__ import annotations

import socket
import time

import pytest

from agent.analysis.tally import Tally
from agent.analysis import processes
from agent.filters import Filters
from agent.kernel.netns import named_netns, netns_id_of
from agent.demo.workload import Process, start_client, start_server
from agent.output import text
from agent.run.tracer import Tracer
from support.namespaces import netns, two_hosts

pytestmark = pytest.mark.live
N = 23
IDLE = "2"  # a server stops accepting once this many seconds pass with no connection


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def leaking_server(comm: str, *extra: str, ns: str | None = None) -> Process:
    server = Process("server", "leak", "--count", "0", "--comm", comm, "--idle", IDLE, *extra, netns=ns)
    server.ready()
    return server


def assert_credited(conns, port: int, done: dict) -> None:
    """The server-side lives of the peers this process accepted: all its, all open in CLOSE_WAIT."""
    mine = conns[(conns["lport"] == port) & (conns["role"] == "server") & conns["rport"].isin(done["peer_ports"])]
    assert len(mine) == done["connections"] > 0, (done, mine[["pid", "comm", "rport", "owner_src"]])
    assert set(mine["pid"]) == {done["pid"]}, mine[["pid", "comm", "owner_src"]]
    assert mine["close_wait_open"].all() and set(mine["owner_src"]) == {"fd_table"}


def finished(tracer: Tracer, server: Process, client: Process) -> tuple:
    """Client and server done, their last ACKs in, tracing ended, both released whatever
    happens: (connection rows, run, the server's "done" line)."""
    try:
        client.done()
        done = server.done()
        time.sleep(0.3)
        kept, run = tracer.finish()
        return kept.frame(), run, done
    finally:
        server.release(), client.release()


def reuseport_group(server_mode: str, client_mode: str, comm: str, host: str = "127.0.0.1"):
    """Two processes listening on one port with SO_REUSEPORT (their listen() while tracing:
    the key is marked shared), one client making N connections to it; (connections, run,
    port, each server's "done" line)."""
    port = free_port()
    tracer = Tracer(Filters())
    servers = [Process("server", server_mode, "--count", "0", "--comm", f"{comm}{i}", "--idle", IDLE, "--port",
                       str(port), "--reuseport", "--host", host) for i in (0, 1)]
    for server in servers:
        server.ready()
    client = start_client(client_mode, port, N, f"{comm}-client", host=host)
    try:
        client.done()
        dones = [s.done() for s in servers]
        time.sleep(0.3)
        kept, run = tracer.finish()
        conns = kept.frame()
    finally:
        for proc in (*servers, client):
            proc.release()
    return conns, run, port, dones


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
def test_every_member_of_an_so_reuseport_group_gets_its_own_close_waits(host):
    """Two processes listen on one port (listen() while tracing: the key is marked shared, so
    the children start ambiguous); the fd tables at the end name each leak's holder."""
    conns, run, port, dones = reuseport_group("leak", "close_first", "tc-reuse", host)
    assert sum(d["connections"] for d in dones) == N
    for done in dones:
        assert_credited(conns, port, done)


def test_a_pre_forking_servers_workers_not_its_master_hold_the_close_waits():
    """The master listens (while tracing: its children start with the master as owner) and
    two forked workers accept and leak: the leaks are the workers', the master holds none."""
    tracer = Tracer(Filters())
    master = Process("server", "leak", "--count", "0", "--comm", "tc-prefork", "--workers", "2", "--idle", IDLE)
    port = master.ready()["port"]
    client = start_client("close_first", port, N, "tc-pfclient")
    try:
        client.done()
        dones = [master.done(), master.done()]  # one line from each worker
        time.sleep(0.3)
        kept, run = tracer.finish()
        conns = kept.frame()
    finally:
        master.release(), client.release()
    assert {d["pid"] for d in dones}.isdisjoint({master.pid}) and sum(d["connections"] for d in dones) == N
    for done in dones:
        if done["connections"]:
            assert_credited(conns, port, done)
    assert master.pid not in set(conns["pid"].dropna())


def test_the_same_address_and_port_in_two_namespaces_is_told_apart():
    """Two containers' servers on 127.0.0.1:PORT each, both leaking (listening before tracing:
    the key is seeded shared); each namespace's leaks are its server's, with its netns."""
    port = free_port()
    with netns(ip_local_port_range="20000 29999") as one, netns(ip_local_port_range="40000 49999") as two:
        servers = {ns: leaking_server(f"tc-ns{i}", "--port", str(port), ns=ns) for i, ns in enumerate((one, two))}
        tracer = Tracer(Filters())
        clients = [start_client("close_first", port, N, "tc-nsclient", netns=ns) for ns in (one, two)]
        try:
            for client in clients:
                client.done()
            dones = {ns: server.done() for ns, server in servers.items()}
            time.sleep(0.3)
            kept, run = tracer.finish()
            conns = kept.frame()
        finally:
            for proc in (*servers.values(), *clients):
                proc.release()
        for ns, done in dones.items():
            assert done["connections"] == N
            assert_credited(conns, port, done)
            mine = conns[conns["rport"].isin(done["peer_ports"]) & (conns["lport"] == port)]
            assert set(mine["netns"]) == {netns_id_of(named_netns(ns))}


def test_a_child_of_a_shared_listener_that_no_owner_touches_is_ambiguous_never_guessed():
    """The client aborts each connection (RST): the server-side lives end in softirq, with no
    syscall of their owner and nothing left for the fd tables.  Which member of the group
    held each one, the kernel does not say: they are "ambiguous", credited to no one."""
    conns, run, port, dones = reuseport_group("wait_close", "linger0", "tc-abort")
    served = conns[(conns["lport"] == port) & (conns["role"] == "server")]
    assert len(served) == N == sum(d["connections"] for d in dones)
    assert set(served["initiator"]) == {"reset_remote"}
    assert set(served["owner_src"]) == {"ambiguous"} and served["pid"].isna().all()
    tally = Tally.of(conns, run.started_at)
    summary = text.render(tally, processes.processes(tally, run.ended_at), run)
    assert f"{N} ambiguous" in summary  # counted where the user reads the run


@pytest.mark.parametrize("server_mode, client_mode, server_closes, client_closes", [
    ("wait_close", "close_first", "passive", "active"),
    ("close_first", "wait_close", "active", "passive"),
    ("leak", "close_first", "open", "active"),
], ids=["client-closes-first", "server-closes-first", "server-leaks"])
def test_two_hosts_joined_by_veth(server_mode, client_mode, server_closes, client_closes):
    """Client and server on two hosts: each side's packets arrive through a device, in softirq,
    never in the other side's syscall as on loopback.  Each life is its own process's, each
    TIME_WAIT on the side that closed first, each in its own namespace."""
    with two_hosts() as (server_ns, client_ns):
        tracer = Tracer(Filters())
        server = Process("server", server_mode, "--count", str(N), "--comm", "tc-vserver", "--host", "10.231.0.1",
                         netns=server_ns)
        port = server.ready()["port"]
        client = start_client(client_mode, port, N, "tc-vclient", host="10.231.0.1", netns=client_ns)
        conns, run, _ = finished(tracer, server, client)
        served = conns[(conns["laddr"] == "10.231.0.1") & (conns["lport"] == port)]
        made = conns[(conns["raddr"] == "10.231.0.1") & (conns["rport"] == port)]
        for side, proc, closes, ns in ((served, server, server_closes, server_ns), (made, client, client_closes, client_ns)):
            assert len(side) == N and set(side["pid"]) == {proc.pid}, side[["pid", "comm", "owner_src"]]
            ended = side
            if closes == "active" and server_mode == "leak":
                # the peer never closes: where its ACK of our FIN found the socket still owned by
                # close(), the kernel leaves the orphan in FIN_WAIT2 for tcp_fin_timeout (its
                # keepalive timer, tcp_rcv_state_process) rather than handing it to a timewait
                # at once, so it can still be open, in FIN_WAIT2, when the trace ends
                ended = side[side["initiator"] != "open"]
                assert set(side["last_state"][side["initiator"] == "open"]) <= {"FIN_WAIT2"} and len(ended)
            assert set(ended["initiator"]) == {closes}
            assert int(ended["tw_made"].sum()) == (len(ended) if closes == "active" else 0)
            assert set(side["netns"]) == {netns_id_of(named_netns(ns))}


HEIR = """
import ctypes, os, socket, sys
name = lambda n: ctypes.CDLL(None).prctl(15, n, 0, 0, 0)
name(b"tc-parent")
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
sock.sendall(b"x")
if os.fork() == 0:
    name(b"tc-heir")
    print(os.getpid(), flush=True)
    sys.stdin.read()  # hold the socket until released
else:
    os._exit(0)  # the process that connect()ed is gone; its child holds the socket
"""


def test_a_socket_whose_maker_is_gone_is_credited_to_the_process_that_holds_it():
    """connect() credits the parent (its own syscall); it forks and exits, and the child keeps
    the socket, left in CLOSE_WAIT by the server's close: the fd tables name the child."""
    import subprocess
    import sys

    server, port = start_server("close_first", 1, "tc-closer")
    tracer = Tracer(Filters())
    heir = subprocess.Popen([sys.executable, "-c", HEIR, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        heir_pid = int(heir.stdout.readline())
        server.done()
        time.sleep(0.3)
        kept, run = tracer.finish()
        conns = kept.frame()
    finally:
        heir.stdin.close()
        server.release()
    mine = conns[(conns["rport"] == port) & (conns["role"] == "client")]
    assert len(mine) == 1 and mine["close_wait_open"].all()
    assert (mine["pid"].iloc[0], mine["comm"].iloc[0], mine["owner_src"].iloc[0]) == (heir_pid, "tc-heir", "fd_table")


PASSER = """
import ctypes, json, os, socket, sys
name = lambda n: ctypes.CDLL(None).prctl(15, n, 0, 0, 0)
count = int(sys.argv[1])
# one write a line: two processes share the pipe, and print() under PYTHONUNBUFFERED writes a
# line's text and its newline apart, so the other's line could come between them
say = lambda fact: os.write(1, (json.dumps(fact) + "\\n").encode())
listener = socket.create_server(("127.0.0.1", 0))
say({"port": listener.getsockname()[1]})
here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
if os.fork() == 0:  # the handler: gets each connection's fd, never accepts one
    name(b"tc-handler")
    listener.close(), here.close()
    got = []
    for _ in range(count):
        _, fds, _, _ = socket.recv_fds(there, 1, 1)
        got.append(socket.socket(fileno=fds[0]))
    closed, kept = got[: count // 2], got[count // 2:]
    for conn in closed:  # the peer closes first: these end in the handler's close()
        while conn.recv(64):
            pass
        conn.close()
    say({"pid": os.getpid()})
    sys.stdin.read()  # hold the rest, in CLOSE_WAIT, until released
    os._exit(0)
name(b"tc-dispatcher")
there.close()
ports = []
for _ in range(count):  # accept, pass the fd on, close the dispatcher's copy
    conn, peer = listener.accept()
    ports.append(peer[1])
    socket.send_fds(here, [b"x"], [conn.fileno()])
    conn.close()
say({"pid": os.getpid(), "peer_ports": ports})
sys.stdin.read()
"""


def test_a_socket_passed_to_another_process_is_the_receivers_never_the_acceptors():
    """A dispatcher accepts (no transition) and passes each connection's fd over a Unix socket
    to a handler, closing its own copy: the handler closes half after the peer's FIN (its
    syscall) and leaks the rest in CLOSE_WAIT (the fd tables at the end).  Every life is the
    handler's; the dispatcher, whose listener made them, holds none of them."""
    import json
    import subprocess
    import sys

    tracer = Tracer(Filters())
    passer = subprocess.Popen([sys.executable, "-c", PASSER, str(N)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    client = None
    try:
        port = json.loads(passer.stdout.readline())["port"]
        client = start_client("close_first", port, N, "tc-passclient")
        client.done()
        lines = [json.loads(passer.stdout.readline()) for _ in range(2)]
        time.sleep(0.3)
        kept, run = tracer.finish()
        conns = kept.frame()
    finally:
        passer.stdin.close()
        passer.wait(timeout=10)
        if client:
            client.release()
    dispatcher = next(line for line in lines if "peer_ports" in line)
    handler = next(line for line in lines if "peer_ports" not in line)
    served = conns[(conns["lport"] == port) & (conns["role"] == "server")]
    assert sorted(served["rport"]) == sorted(dispatcher["peer_ports"]) and len(served) == N
    assert set(served["pid"]) == {handler["pid"]} and set(served["comm"]) == {"tc-handler"}, \
        served[["pid", "comm", "owner_src", "initiator"]]
    assert dispatcher["pid"] not in set(conns["pid"].dropna())
    passive = served[served["initiator"] == "passive"]
    leaked = served[served["close_wait_open"]]
    assert len(passive) == N // 2 and set(passive["owner_src"]) == {"syscall"}
    assert len(leaked) == N - N // 2 and set(leaked["owner_src"]) == {"fd_table"}


def test_a_threaded_server_is_one_process_with_its_threads_names_kept_apart():
    """Three threads of one process accept and close: every life is the process's (its tgid
    and its name), the name of the thread that closed it kept beside (thread_comm)."""
    tracer = Tracer(Filters())
    server = Process("server", "wait_close", "--count", "0", "--comm", "tc-threaded", "--threads", "3",
                     "--idle", IDLE)
    port = server.ready()["port"]
    client = start_client("close_first", port, N, "tc-thclient")
    conns, run, done = finished(tracer, server, client)
    served = conns[(conns["lport"] == port) & (conns["role"] == "server")]
    assert len(served) == N == done["connections"]
    assert set(served["pid"]) == {server.pid} and set(served["comm"]) == {"tc-threaded"}
    assert set(served["thread_comm"]) <= {f"tc-threaded-t{i}" for i in range(3)} and served["thread_comm"].notna().all()
    procs = processes.processes(Tally.of(conns, run.started_at), run.ended_at)
    assert (procs["pid"] == server.pid).sum() == 1  # one row for the process, not one per thread


def test_a_pre_forking_servers_aborted_connections_are_ambiguous_not_the_masters():
    """Workers accept, the client aborts (RST): the lives end in softirq with no syscall of
    their owner.  The listener is held by the master and both workers, so "the listener's
    owner" names no one of them: ambiguous, and the master is never credited."""
    tracer = Tracer(Filters())
    master = Process("server", "wait_close", "--count", "0", "--comm", "tc-pfabort", "--workers", "2", "--idle", IDLE,
                     "--keep-listening")  # the workers hold the listener as long as they run, as nginx's do
    port = master.ready()["port"]
    client = start_client("linger0", port, N, "tc-pfaborter")
    try:
        client.done()
        dones = [master.done(), master.done()]
        time.sleep(0.3)
        kept, run = tracer.finish()
        conns = kept.frame()
    finally:
        master.release(), client.release()
    served = conns[(conns["lport"] == port) & (conns["role"] == "server")]
    assert len(served) == N == sum(d["connections"] for d in dones)
    assert set(served["initiator"]) == {"reset_remote"}
    assert set(served["owner_src"]) == {"ambiguous"} and master.pid not in set(conns["pid"].dropna())


def test_a_pre_forking_servers_aborted_connections_stay_ambiguous_after_it_stopped_listening():
    """As above, but the server is gone before tracing ends (no listener for the snapshot at the
    end to find shared): the workers' own closes of the listener's other children show that
    they, not the master, took its connections, so the aborted ones are still no one's."""
    tracer = Tracer(Filters())
    master = Process("server", "wait_close", "--count", "0", "--comm", "tc-pfgone", "--workers", "2", "--idle", IDLE)
    port = master.ready()["port"]
    closing = start_client("close_first", port, N, "tc-pfpolite")
    client = None
    try:
        closing.done()
        client = start_client("linger0", port, N, "tc-pfaborter")
        client.done()
        dones = [master.done(), master.done()]
        assert master.release() == 0  # the master and its workers exited: no listener left
        time.sleep(0.3)
        kept, run = tracer.finish()
        conns = kept.frame()
    finally:
        master.release(), closing.release()
        if client:
            client.release()
    served = conns[(conns["lport"] == port) & (conns["role"] == "server")]
    assert len(served) == 2 * N == sum(d["connections"] for d in dones)
    polite = served[served["initiator"] == "passive"]
    aborted = served[served["initiator"] == "reset_remote"]
    assert len(polite) == N and set(polite["pid"]) <= {d["pid"] for d in dones} and set(polite["owner_src"]) == {"syscall"}
    assert len(aborted) == N and set(aborted["owner_src"]) == {"ambiguous"}, aborted[["pid", "owner_src"]]
    assert master.pid not in set(conns["pid"].dropna())


def test_a_threaded_server_counted_in_bpf_is_one_process_too():
    """--aggregates counts per (pid, thread name) in BPF; the run names each pid for its process."""
    tracer = Tracer(Filters(), aggregates=True)
    server = Process("server", "wait_close", "--count", "0", "--comm", "tc-threaded", "--threads", "3",
                     "--idle", IDLE)
    port = server.ready()["port"]
    client = start_client("close_first", port, N, "tc-thclient")
    conns, run, _ = finished(tracer, server, client)
    procs = processes.from_counts(run.aggregates, conns, run.ended_at)
    mine = procs[procs["pid"] == server.pid]
    assert list(mine["comm"]) == ["tc-threaded"] and int(mine["passive_closes"].iloc[0]) == N


def test_containers_and_units_are_told_apart_by_their_cgroups(tmp_path, monkeypatch):
    """A server in a cgroup named as docker names a container's, a client in one named as
    systemd names a service's (both made by the test, under its own slice, removed after):
    each life carries its owner's cgroup, container or unit, and --by workload groups by them.
    The container's pod is read from the runtime's state, here a docker one the test wrote
    under a host root of its own (TCPCLOSE_HOST_ROOT)."""
    import json

    from agent.analysis import workloads
    from agent.kernel import pods
    from support.cgroups import move, path_of, runtime_cgroups

    container_id = "3f2a9c" + "0" * 58
    kept = tmp_path / pods.STATE_FILES["docker"][0].format(id=container_id)
    kept.parent.mkdir(parents=True)
    kept.write_text(json.dumps({"Config": {"Labels": {"io.kubernetes.pod.namespace": "shop",
                                                      "io.kubernetes.pod.name": "web-7d9f"}}}))
    monkeypatch.setenv("TCPCLOSE_HOST_ROOT", str(tmp_path))
    pods.pod_of.cache_clear()
    scope_name, unit_name = f"docker-{container_id}.scope", "tc-poller.service"
    server = client = None
    with runtime_cgroups(scope_name, unit_name) as made_dirs:
        try:
            tracer = Tracer(Filters())
            server, port = start_server("wait_close", N, "tc-boxed")
            move(made_dirs[scope_name], server.pid)
            client = start_client("close_first", port, N, "tc-poller", extra=("--hold", "0.3"))
            move(made_dirs[unit_name], client.pid)
            conns, run, _ = finished(tracer, server, client)
        finally:
            for proc in (server, client):
                if proc:
                    proc.release()
        scope_path = path_of(made_dirs[scope_name])
    assert run.pods == {"docker:3f2a9c000000": "shop/web-7d9f"}
    served = conns[(conns["lport"] == port) & (conns["role"] == "server")]
    made = conns[(conns["rport"] == port) & (conns["role"] == "client")]
    assert len(served) == len(made) == N
    assert set(served["container"]) == {"docker:3f2a9c000000"} and set(served["unit"]) == {None}
    assert set(served["pod_name"]) == {"shop/web-7d9f"} and set(made["pod_name"]) == {None}
    assert set(served["cgroup"]) == {scope_path}
    assert set(made["unit"]) == {"tc-poller.service"} and set(made["container"]) == {None}
    tally = Tally.of(conns, run.started_at)
    groups = workloads.grouped(tally, processes.processes(tally, run.ended_at), run.ended_at, "workload")
    labels = dict(zip(groups["comm"], groups["connections"]))
    assert labels["docker:3f2a9c000000"] == N and labels["tc-poller.service"] == N
