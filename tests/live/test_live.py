"""Live tests: real sockets in separate client and server processes, under the real BPF program.

Each test checks what tcpclose credits (pid, comm, initiator, role, counts)
against what the workload processes say they did.  23 connections where
counts matter: a prime, so that no doubling or halving passes by accident.
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import pandas as pd
import pytest

from agent.analysis.tally import Tally
from agent.analysis import processes
from agent.filters import Filters
from agent.run.tracer import Tracer
from agent.demo.workload import start_client, start_server

pytestmark = pytest.mark.live
N = 23


@dataclass
class Side:
    pid: int
    comm: str
    said: dict          # the workload's own "done" line
    lives: pd.DataFrame  # what tcpclose reported for this side


def run_pair(server_mode, client_mode, count=N, host="127.0.0.1", port=None, filters=Filters(), max_socks=None):
    """Trace one server and one client process; return (server side, client side, processes)."""
    tracer = Tracer(filters, max_socks=max_socks)
    server = None
    try:
        if port is None:
            server, port = start_server(server_mode, count, "tc-server", host)
        client = start_client(client_mode, port, count, "tc-client", host)
        client_said = client.done()
        server_said = server.done() if server else None
        time.sleep(0.3)  # the last ACKs
        kept, run = tracer.finish()
        conns = kept.frame()
    finally:
        if server:
            server.release()
    client.release()
    server_lives = conns[conns["lport"] == port]
    client_lives = conns[(conns["rport"] == port) & (conns["raddr"] == host)]
    mine = pd.concat([server_lives, client_lives])
    procs = processes.processes(Tally.of(mine, run.started_at), run.ended_at).set_index("comm")
    return (
        Side(server.pid, "tc-server", server_said, server_lives) if server else None,
        Side(client.pid, "tc-client", client_said, client_lives),
        procs,
    )


def assert_credited(side: Side, initiator: str, role: str, count: int = N):
    lives = side.lives
    assert len(lives) == count, lives[["pid", "comm", "initiator"]]
    assert set(lives["pid"]) == {side.pid}, "credited to another process"
    assert set(lives["comm"]) == {side.comm}
    assert set(lives["initiator"]) == {initiator}
    assert set(lives["role"]) == {role}
    if role == "client" and initiator != "never_established":
        assert sorted(lives["lport"]) == sorted(side.said["local_ports"])


def test_client_closes_first():
    server, client, procs = run_pair("wait_close", "close_first")
    assert_credited(client, "active", "client")
    assert_credited(server, "passive", "server")
    assert client.lives["tw_start"].notna().all()
    assert server.lives["tw_start"].isna().all()
    assert procs.loc["tc-client", ["connections", "active_closes", "timewait_count"]].tolist() == [N, N, N]
    assert procs.loc["tc-server", ["connections", "passive_closes", "timewait_count"]].tolist() == [N, N, 0]


def test_server_closes_first():
    server, client, procs = run_pair("close_first", "wait_close")
    assert_credited(server, "active", "server")
    assert_credited(client, "passive", "client")
    assert procs.loc["tc-server", ["active_closes", "timewait_count"]].tolist() == [N, N]
    assert procs.loc["tc-client", ["passive_closes", "timewait_count"]].tolist() == [N, 0]


def test_ipv6_client_closes_first():
    server, client, procs = run_pair("wait_close", "close_first", host="::1")
    assert_credited(client, "active", "client")
    assert_credited(server, "passive", "server")
    assert set(client.lives["family"]) == {"ipv6"}
    assert set(client.lives["laddr"]) == {"::1"}


def test_client_half_closes_then_reads_to_the_end():
    server, client, _ = run_pair("reply_close", "half_close", count=7)
    assert_credited(client, "active", "client", 7)
    assert_credited(server, "passive", "server", 7)


RESETS = {
    # name: (server mode, client mode, the side that aborts)
    "client SO_LINGER 0": ("wait_close", "linger0", "client"),
    "server SO_LINGER 0": ("linger0", "wait_close", "server"),
    "client closes with unread data": ("send_wait", "unread", "client"),
}


@pytest.mark.parametrize("name", RESETS)
def test_reset(name):
    server_mode, client_mode, aborter = RESETS[name]
    server, client, procs = run_pair(server_mode, client_mode, count=7)
    local, remote = (client, server) if aborter == "client" else (server, client)
    assert_credited(local, "reset_local", aborter, 7)
    assert_credited(remote, "reset_remote", "server" if aborter == "client" else "client", 7)
    assert local.lives["rst_sent"].all()
    assert procs.loc[local.comm, "resets_local"] == 7 and procs.loc[remote.comm, "resets_remote"] == 7
    assert (procs["timewait_count"] == 0).all()


def test_server_leaks_close_wait():
    server, client, procs = run_pair("leak", "close_first", count=5)
    assert_credited(client, "active", "client", 5)
    assert_credited(server, "open", "server", 5)
    assert set(server.lives["last_state"]) == {"CLOSE_WAIT"}
    assert procs.loc["tc-server", "close_wait_open"] == 5
    assert 0 < procs.loc["tc-server", "close_wait_max_age_s"] < 30


def test_lives_followed_in_slots_and_in_the_map_are_all_credited_and_reported_open():
    """With 96 sockets followed at once the program has 32 slots and a map of 64 (see
    probe.socket_room).  The 46 sockets alive at the end (23 CLOSE_WAITs, 23 FIN_WAIT2s)
    outnumber the slots, so at least 14 of their lives are followed in the map: every
    transition must find its life in either place, and the lives still open at the end
    are read from both."""
    server, client, procs = run_pair("leak", "close_first", max_socks=96)
    assert_credited(client, "active", "client")
    assert_credited(server, "open", "server")
    assert set(server.lives["last_state"]) == {"CLOSE_WAIT"}
    assert set(client.lives["last_state"]) == {"FIN_WAIT2"}
    assert procs.loc["tc-server", "close_wait_open"] == N


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refused_connect():
    _, client, procs = run_pair(None, "refused", count=5, port=free_port())
    assert_credited(client, "never_established", "client", 5)
    assert procs.loc["tc-client", "connections"] == 5


def filtered_pair(filters_of, client_comm: str = "tc-client"):
    """A server and a client traced with the filters filters_of(server) gives: (connections,
    run, server, client, the server's port)."""
    server, port = start_server("wait_close", N, "tc-server")
    try:
        tracer = Tracer(filters_of(server))
        client = start_client("close_first", port, N, client_comm)
        client.done(), server.done()
        time.sleep(0.3)
        kept, run = tracer.finish()
        conns = kept.frame()
    finally:
        server.release()
    client.release()
    return conns, run, server, client, port


def test_pid_filter_keeps_only_that_process():
    """-p applies in BPF at ->CLOSE, to the owner: the client's lives are not handed over."""
    conns, run, server, _, port = filtered_pair(lambda server: Filters(pid=server.pid))
    assert set(conns["pid"]) == {server.pid}
    assert (conns["lport"] == port).sum() == N
    assert run.counters["lives_filtered"] >= N


def test_the_figures_made_as_the_rows_came_are_those_of_the_rows_kept(tmp_path):
    """The end of a trace makes its tables from the figures kept while it ran (analysis.tally),
    without reading the rows back: they are those the rows kept give, and what the processes did."""
    from agent.analysis import pipeline
    from agent.cli import results
    from agent.safefiles import OutputDir

    tracer = Tracer(Filters())
    server, port = start_server("wait_close", N, "tc-server")
    try:
        client = start_client("close_first", port, N, "tc-client")
        client.done()
        server.done()
        time.sleep(0.3)  # the last ACKs
        kept, run = tracer.finish()
    finally:
        server.release()
    client.release()
    live = pipeline.analyse(kept.tally, run)
    again = pipeline.analyse(Tally.of(kept.frame(), run.started_at, run.timewait_followed), run)
    pd.testing.assert_frame_equal(live.procs, again.procs)
    pd.testing.assert_frame_equal(live.peers, again.peers)
    pd.testing.assert_frame_equal(live.timeline, again.timeline)
    procs = live.procs.set_index("comm")
    assert procs.loc["tc-client", ["pid", "connections", "active_closes", "timewait_count"]].tolist() == [
        client.pid, N, N, N]
    assert procs.loc["tc-server", ["pid", "connections", "passive_closes"]].tolist() == [server.pid, N, N]
    out = tmp_path / "out"
    results.show(kept, run, OutputDir(out))
    written = pd.read_csv(out / "connections.csv")
    assert len(written[written["comm"] == "tc-client"]) == N
    assert pd.read_csv(out / "processes.csv").set_index("comm").loc["tc-client", "active_closes"] == N


def test_a_comm_filter_is_data_any_15_bytes_quotes_and_backslashes_included():
    """-c goes to BPF in a map, never into the C source: the longest name the kernel keeps,
    with the characters that broke C string literals, compiles, loads and filters."""
    name = 'q"uo\\te-15bytes'
    assert len(name.encode()) == 15
    conns, run, _, client, _ = filtered_pair(lambda server: Filters(comm=name), client_comm=name)
    assert set(conns["comm"]) == {name} and (conns["pid"] == client.pid).sum() == N
    assert run.counters["lives_filtered"] >= N  # the server's, left out in BPF


def test_records_the_steps_have_not_taken_are_counted_on_the_progress_line_and_made_at_the_end(monkeypatch):
    """With the steps held back, as at a churn that outruns their share of a core, every
    life's record waits: the tracer counts them for the progress line, and the end still
    makes each one's row."""
    from agent.run import progress
    from agent.run.kept import Kept

    monkeypatch.setattr(Kept, "step_due", lambda self: False)
    monkeypatch.setattr(progress, "BEHIND_SHOWN", 2 * N)
    server, port = start_server("wait_close", N, "tc-server")
    client = None
    try:
        tracer = Tracer(Filters())
        client = start_client("close_first", port, N, "tc-client")
        client.done(), server.done()
        deadline = time.monotonic() + 10
        while tracer.tally["lives"] < 2 * N:  # both ends of each connection, closed
            assert time.monotonic() < deadline, tracer.tally
            tracer.drain()
            time.sleep(0.1)
        lives, timewaits, drops, waiting = tracer.progress()
        assert waiting >= 2 * N
        assert f"; {waiting:,} records behind" in progress.line(1.0, lives, timewaits, drops, waiting)
        kept, _ = tracer.finish()
    finally:
        server.release()
        if client:
            client.release()
    conns = kept.frame()
    ours = conns[(conns["lport"] == port) | (conns["rport"] == port)]
    assert len(ours) == 2 * N and (ours["initiator"] == "active").sum() == N
