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
