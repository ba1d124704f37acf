"""Recorded streams of small incidents (churn, port pressure, a CLOSE_WAIT leak) and the
report command run on them: shared by the report's unit tests and its browser test."""
from click.testing import CliRunner

from agent.cli import main
from support.streams import raw, replay, timewait

ACTIVE_CLIENT = dict(states=("SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2"), last="FIN_WAIT2")
PASSIVE_SERVER = dict(states=("SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK"), last="LAST_ACK",
                      owner="listener")
SMALL_RANGE = {"ip_local_port_range": "40000 40099", "tcp_tw_reuse": "2", "tcp_timestamps": "1"}


def churn_stream():
    """'churner' opens 30 connections to 10.0.0.2:80 in 3 s, 10 in its busiest second,
    each closed 10 ms later by itself; 'slow' opens 4 that live 5 s each, closed by the peer."""
    out = []
    for i in range(30):
        opened = 1.0 + i * 0.1
        out.append(raw(skaddr=100 + i, pid=10, comm="churner", opened=opened, ts=opened + 0.01,
                       raddr="10.0.0.2", rport=80, lport=41000 + i, laddr="10.0.0.1", **ACTIVE_CLIENT))
    for i in range(4):
        out.append(raw(skaddr=200 + i, pid=20, comm="slow", opened=1.0 + i, ts=6.0 + i, raddr="10.0.0.3",
                       rport=8080, lport=9000, laddr="10.0.0.1", **PASSIVE_SERVER))
    return out


def pressed_stream(raddr="10.0.0.2"):
    """60 connections to raddr:80 in the last 10 s of a 20 s trace, each closed first by
    'pusher' and still in TIME_WAIT when tracing ended."""
    out = []
    for i in range(60):
        opened = 10.51 + i / 6
        timer = 0xFFFF888100000000 + i * 0x100
        out += [raw(skaddr=300 + i, pid=30, comm="pusher", opened=opened, ts=opened + 0.001, raddr=raddr, rport=80,
                    lport=40000 + i, laddr="10.0.0.1", tw_timer=timer, tw_start=opened + 0.001, **ACTIVE_CLIENT),
                timewait(None, timer=timer, start=opened + 0.001)]
    return out


def cli_report(tmp_path, *chunks, **replay_args):
    replay(tmp_path, *chunks, **replay_args)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["report", str(tmp_path / "stream.jsonl"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


def incident_stream():
    leak = raw("open", skaddr=500, pid=50, comm="leaky", states=("SYN_RECV", "ESTABLISHED", "CLOSE_WAIT"),
               last="CLOSE_WAIT", close_wait=3.0, ts=0, owner="listener", lport=7000, rport=45000)
    return churn_stream() + pressed_stream() + [leak]
