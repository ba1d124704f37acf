"""tcpclose states' counting and text, from socket rows made by hand (no root)."""
import pandas as pd

from agent.host import states

COLUMNS = ["family", "laddr", "lport", "raddr", "rport", "state", "inode", "timer", "pid", "comm", "owner", "role"]


def test_no_socket_says_so():
    assert states.render(states.counts(pd.DataFrame(columns=COLUMNS))) == "no TCP socket matches\n"


def test_only_listeners_have_no_peers():
    frame = pd.DataFrame([["ipv4", "0.0.0.0", 80, "0.0.0.0", 0, "LISTEN", 7, 0, 42, "web", "fd", "client"]],
                         columns=COLUMNS).astype({"pid": "Int64"})
    c = states.counts(frame)
    assert c["states"] == {"LISTEN": 1} and c["peers"] == []
    text = states.render(c)
    assert "web (pid 42)" in text and "none (listening sockets only)" in text


def test_without_root_a_listeners_timewaits_are_its_ports_and_single_socket_peers_fold(monkeypatch):
    """An ordinary user sees the listening socket but not its holder: the TIME_WAITs on its port
    are still the server's side, never taken for connections this host opened."""
    from agent.filters import Filters
    from agent.kernel import diag

    rows = [("ipv4", "0.0.0.0", 8080, "0.0.0.0", 0, "LISTEN", 10, 0)]
    rows += [("ipv4", "10.0.0.1", 8080, f"10.0.1.{i}", 40000 + i, "TIME_WAIT", 0, diag.TIMEWAIT_TIMER)
             for i in range(5)]  # five clients, one socket each, to our port
    rows += [("ipv4", "10.0.0.1", 50000 + i, "10.0.9.9", 5432, "TIME_WAIT", 0, diag.TIMEWAIT_TIMER)
             for i in range(2)]  # two we opened
    monkeypatch.setattr(diag, "diag_sockets", lambda states_, netns=None: rows)
    monkeypatch.setattr(diag, "socket_holders", lambda: {})  # no fd table readable
    c = states.counts(states.sockets_now(Filters()))
    via = {(p["comm"], p["via"]): p["states"] for p in c["processes"]}
    assert via[("(server on port 8080)", "listener")] == {"TIME_WAIT": 5}
    assert via[("(no process found)", None)] == {"LISTEN": 1, "TIME_WAIT": 2}
    peers = {p["peer"]: p["states"] for p in c["peers"]}
    assert peers == {"10.0.9.9:5432": {"TIME_WAIT": 2}, "5 peers, one socket each": {"TIME_WAIT": 5}}
    c["root"] = False
    assert "Not root: the processes that hold other users' sockets" in states.render(c)
    from agent.host import doctor

    said = [f["text"] for f in doctor.sockets_now(c)]
    assert any(t.startswith("(server on port 8080) is a server and closes first: 5 TIME_WAITs") for t in said)
    assert any(t.startswith("2 TIME_WAITs are on connections this host opened") for t in said)
