"""One named case per close path (DESIGN.md section 1), from recorded streams."""
import math

import pandas as pd
import pytest

from agent.analysis.tally import Tally
from agent.analysis import lives, processes
from support.streams import D, epoch, raw, replay

CLIENT_OPEN = ("SYN_SENT", "ESTABLISHED")
SERVER_OPEN = ("SYN_RECV", "ESTABLISHED")

CASES = {
    # name: (record arguments, initiator, role, makes a TIME_WAIT)
    "client closes first": (dict(states=CLIENT_OPEN + ("FIN_WAIT1", "FIN_WAIT2"), last="FIN_WAIT2"),
                            "active", "client", True),
    "server closes after its peer": (dict(states=SERVER_OPEN + ("CLOSE_WAIT", "LAST_ACK"), last="LAST_ACK",
                                          owner="syscall"), "passive", "server", False),
    "half-close, then the peer's FIN": (dict(states=CLIENT_OPEN + ("FIN_WAIT1", "FIN_WAIT2"), last="FIN_WAIT2"),
                                        "active", "client", True),
    "FINs cross": (dict(states=CLIENT_OPEN + ("FIN_WAIT1", "CLOSING"), last="CLOSING"),
                   "simultaneous", "client", True),
    "peer resets": (dict(states=CLIENT_OPEN, last="ESTABLISHED", flags=D["FLAG_RST_RECEIVED"]),
                    "reset_remote", "client", False),
    "peer resets after our FIN": (dict(states=CLIENT_OPEN + ("FIN_WAIT1", "FIN_WAIT2"), last="FIN_WAIT2",
                                       flags=D["FLAG_RST_RECEIVED"]), "reset_remote", "client", False),
    "SO_LINGER 0 here": (dict(states=SERVER_OPEN, last="ESTABLISHED"), "reset_local", "server", False),
    "close with unread data after the peer's FIN": (dict(states=SERVER_OPEN + ("CLOSE_WAIT",), last="CLOSE_WAIT"),
                                                    "reset_local", "server", False),
    "connect refused": (dict(states=("SYN_SENT",), last="SYN_SENT", flags=D["FLAG_RST_RECEIVED"]),
                        "never_established", "client", False),
    "child never established": (dict(states=("SYN_RECV",), last="SYN_RECV", owner="listener"),
                                "never_established", "server", False),
    "CLOSE_WAIT still open": (dict(kind="open", states=SERVER_OPEN + ("CLOSE_WAIT",), last="CLOSE_WAIT",
                                   close_wait=3.0, ts=0), "open", "server", False),
    "opened before tracing, closed passively": (dict(states=("LAST_ACK",), last="LAST_ACK",
                                                     flags=D["FLAG_PARTIAL"]), "passive", "unknown", False),
    # the kernel skipped the program at ->CLOSE (BPF recursion): the next life on the address ended it
    "->CLOSE skipped, no FIN seen": (dict(states=CLIENT_OPEN, last="ESTABLISHED", flags=D["FLAG_MISSED_CLOSE"]),
                                     "close_unseen", "client", False),
    "->CLOSE skipped after our FIN": (dict(states=CLIENT_OPEN + ("FIN_WAIT1", "FIN_WAIT2"), last="FIN_WAIT2",
                                           flags=D["FLAG_MISSED_CLOSE"]), "active", "client", True),
}


@pytest.mark.parametrize("name", CASES)
def test_close_path(tmp_path, name):
    fields, initiator, role, makes_tw = CASES[name]
    events, run = replay(tmp_path, raw(**fields))
    conn = lives.connections(events, run.ended_at).iloc[0]
    assert conn.initiator == initiator
    assert conn.role == role
    if makes_tw:
        assert conn.tw_start == pytest.approx(conn.closed_at)
        assert conn.tw_end_reason == "open"
    else:
        assert math.isnan(conn.tw_start)
        assert conn.tw_end_reason == "none"


def test_times_and_duration(tmp_path):
    events, run = replay(tmp_path, raw(opened=1.0, estab=1.1, ts=3.5))
    conn = lives.connections(events, run.ended_at).iloc[0]
    assert conn.opened_at == pytest.approx(epoch(1.0))
    assert conn.closed_at == pytest.approx(epoch(3.5))
    assert conn.duration_s == pytest.approx(2.5)


def test_an_open_life_lasts_until_the_end_of_the_run(tmp_path):
    events, run = replay(tmp_path, raw("open", opened=4.0, ts=0, last="ESTABLISHED"), ended=10.0)
    conn = lives.connections(events, run.ended_at).iloc[0]
    assert math.isnan(conn.closed_at)
    assert conn.duration_s == pytest.approx(6.0)


def test_a_reset_sent_after_close_joins_only_the_life_that_just_ended(tmp_path):
    """Socket addresses are recycled: the RST joins the latest life of that address before it."""
    sk = 0xFFFF888112345600
    first = raw(skaddr=sk, states=CLIENT_OPEN, last="ESTABLISHED", opened=1.0, ts=2.0, comm="first")
    second = raw(skaddr=sk, states=CLIENT_OPEN, last="ESTABLISHED", opened=3.0, ts=4.0, comm="second")
    reset = raw("reset_sent", skaddr=sk, ts=4.0001)
    events, run = replay(tmp_path, first, second, reset)
    conns = lives.connections(events, run.ended_at).set_index("comm")
    assert len(conns) == 2
    assert not conns.loc["first", "rst_sent"]
    assert conns.loc["second", "rst_sent"]
    assert set(conns["initiator"]) == {"reset_local"}


def test_an_owner_never_seen_is_left_blank_not_guessed(tmp_path):
    events, run = replay(tmp_path, raw(owner="none", pid=0, comm="", states=("LAST_ACK",), last="LAST_ACK"))
    conn = lives.connections(events, run.ended_at).iloc[0]
    assert pd.isna(conn.pid)
    assert conn.comm == ""


@pytest.mark.parametrize("workers, ambiguous", [((101, 102), True), ((100, 100), False)],
                         ids=["children closed by other processes", "all closed by the listener's owner"])
def test_a_listeners_child_credited_by_the_listener_alone_is_ambiguous_once_others_had_its_siblings(
        tmp_path, workers, ambiguous):
    """A pre-forking server: the master (100) listened, its workers accepted and closed; a child
    reset before any worker touched it has only the listener's owner to go by, and that is
    a guess once the listener's other children are seen in other processes' hands."""
    served = dict(laddr="127.0.0.1", lport=8080, raddr="127.0.0.1")
    stream = [raw(skaddr=1, pid=100, comm="master", owner="listener", states=SERVER_OPEN, last="ESTABLISHED",
                  flags=D["FLAG_RST_RECEIVED"], rport=40001, **served)]
    stream += [raw(skaddr=2 + i, pid=pid, comm=f"w{pid}", states=SERVER_OPEN + ("CLOSE_WAIT", "LAST_ACK"),
                   last="LAST_ACK", rport=40002 + i, **served) for i, pid in enumerate(workers)]
    stream.append(raw(skaddr=9, pid=101, comm="w101", owner="listener", states=SERVER_OPEN, last="ESTABLISHED",
                      flags=D["FLAG_RST_RECEIVED"], lport=9090, rport=40009, laddr="127.0.0.1"))  # another listener
    events, run = replay(tmp_path, *stream)
    conns = lives.connections(events, run.ended_at).set_index("rport")
    assert conns.loc[40001, "owner_src"] == ("ambiguous" if ambiguous else "listener")
    assert pd.isna(conns.loc[40001, "pid"]) if ambiguous else conns.loc[40001, "pid"] == 100
    assert conns.loc[40009, "owner_src"] == "listener" and conns.loc[40009, "pid"] == 101


def test_per_process_counts(tmp_path):
    client = dict(pid=10, comm="client")
    server = dict(pid=20, comm="server")
    stream = [
        *(raw(skaddr=i, states=CLIENT_OPEN + ("FIN_WAIT1", "FIN_WAIT2"), last="FIN_WAIT2", **client) for i in range(3)),
        raw(skaddr=9, states=CLIENT_OPEN, last="ESTABLISHED", flags=D["FLAG_RST_RECEIVED"], **client),
        *(raw(skaddr=100 + i, states=SERVER_OPEN + ("CLOSE_WAIT", "LAST_ACK"), last="LAST_ACK", **server)
          for i in range(3)),
        raw(skaddr=200, states=SERVER_OPEN + ("CLOSE_WAIT",), last="ESTABLISHED", **server),
        raw("open", skaddr=201, states=SERVER_OPEN + ("CLOSE_WAIT",), last="CLOSE_WAIT", close_wait=4.0, ts=0, **server),
        raw("open", skaddr=202, states=SERVER_OPEN + ("CLOSE_WAIT",), last="CLOSE_WAIT", close_wait=7.0, ts=0, **server),
    ]
    events, run = replay(tmp_path, *stream, ended=10.0)
    conns = lives.connections(events, run.ended_at)
    procs = processes.processes(Tally.of(conns, run.started_at), run.ended_at).set_index("comm")
    assert list(procs.index) == ["server", "client"]  # sorted by connections
    assert procs.loc["client", ["connections", "active_closes", "resets_remote", "timewait_count"]].tolist() == [4, 3, 1, 3]
    assert procs.loc["server", ["connections", "passive_closes", "resets_local", "close_wait_open"]].tolist() == [6, 3, 1, 2]
    assert procs.loc["server", "close_wait_max_age_s"] == pytest.approx(6.0)
    assert procs.loc["server", "timewait_count"] == 0
    assert list(processes.open_close_waits(conns, run.ended_at)["close_wait_age_s"]) == pytest.approx([6.0, 3.0])


@pytest.mark.parametrize("flags", [D["FLAG_MISSED_CLOSE"], D["FLAG_PARTIAL"]], ids=["close-skipped", "begun-before"])
def test_an_unlinked_timewait_is_an_overflow_only_for_a_close_seen_whole(tmp_path, flags):
    """Timers followed, an active close with no timer linked: for a life seen whole that is a
    tcp_max_tw_buckets overflow; for one whose ->CLOSE was skipped or that began before
    tracing it is not known, and never shown as an overflow."""
    seen = raw(skaddr=1, states=CLIENT_OPEN + ("FIN_WAIT1", "FIN_WAIT2"), last="FIN_WAIT2")
    unsure = raw(skaddr=2, lport=40001, states=CLIENT_OPEN + ("FIN_WAIT1", "FIN_WAIT2"), last="FIN_WAIT2", flags=flags)
    events, run = replay(tmp_path, seen, unsure, timewait="timers")
    conns = lives.connections(events, run.ended_at, run.timewait_method).set_index("lport")
    assert conns.loc[40000, "tw_overflow"] and conns.loc[40000, "tw_end_reason"] == "none"
    assert not conns.loc[40001, "tw_overflow"] and conns.loc[40001, "tw_end_reason"] == "unknown"


def test_no_overflow_is_claimed_where_the_kernel_counted_none(tmp_path):
    """The kernel's TCPTimeWaitOverflow did not move: an unlinked timer is tcpclose's blind spot."""
    from agent.analysis.pipeline import analyse
    from support.streaming import whole_run

    stream = raw(skaddr=1, states=CLIENT_OPEN + ("FIN_WAIT1", "FIN_WAIT2"), last="FIN_WAIT2")
    counters = {"net:[1]": {"name": "", "counters": {"TCPTimeWaitOverflow": 7}}}
    events, run = replay(tmp_path, stream, timewait="timers", tcpext={"start": counters, "end": counters})
    (found,) = [f for f in analyse(Tally.of(whole_run(events, run), run.started_at), run).findings if f["topic"] == "overflow"]
    assert found["severity"] == "info" and "no tcp_max_tw_buckets overflow" in found["text"]
    moved = {"net:[1]": {"name": "", "counters": {"TCPTimeWaitOverflow": 8}}}
    events, run = replay(tmp_path, stream, timewait="timers", tcpext={"start": counters, "end": moved})
    (found,) = [f for f in analyse(Tally.of(whole_run(events, run), run.started_at), run).findings if f["topic"] == "overflow"]
    assert found["severity"] == "problem"


def test_a_connection_opened_while_the_start_snapshot_ran_is_its_traced_life_only(tmp_path):
    """The snapshot at start runs after the probe is attached (seconds with 100,000 sockets): a
    connection opened meanwhile is in both, and is the life tracing saw begin; one that was
    there before tracing stays, found only by the snapshot."""
    from agent.record import decode

    events, run = replay(tmp_path, raw("open", skaddr=1, pid=10, comm="new", states=CLIENT_OPEN, last="ESTABLISHED",
                                       lport=40001, opened=1.0, ts=0))
    snap = pd.DataFrame({"family": "ipv4", "laddr": "127.0.0.1", "lport": [40001, 40002], "raddr": "127.0.0.1",
                         "rport": 8080, "state": "ESTABLISHED", "inode": [7, 8], "since_ack_s": 0.1,
                         "pid": [10, 11], "comm": ["new", "old"], "fd": [3, 3], "cgroup_id": 1})
    existing = decode.from_snapshot(snap, "existing", epoch(1.5), None)
    conns = lives.connections(pd.concat([existing, events], ignore_index=True), run.ended_at)
    assert sorted(conns["lport"]) == [40001, 40002]
    by_port = conns.set_index("lport")
    assert by_port.loc[40001, "owner_src"] == "syscall" and not by_port.loc[40001, "partial"]
    assert by_port.loc[40002, "owner_src"] == "snapshot" and by_port.loc[40002, "partial"]
