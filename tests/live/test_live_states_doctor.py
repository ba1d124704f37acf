"""`tcpclose states` against sockets the test opens, and `tcpclose doctor` against sysctls the
test sets, both inside a network namespace the test makes (root; no BPF needed)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agent.demo.workload import start_client, start_server
from support.folklore import BLOG_BLOCK
from support.namespaces import netns

pytestmark = pytest.mark.live


def tcpclose(*args, user=None, ns=None) -> dict:
    command = [sys.executable, "-m", "agent", *args, "--json"]
    if user:  # another user, inside the namespace: what an unprivileged run sees
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    if ns and user:
        command = ["ip", "netns", "exec", ns, *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[0] if "states" in args else result.stdout)


@pytest.fixture(scope="module")
def arranged():
    """In a namespace of its own:
    st-leaky: listens, and leaves 3 connections in CLOSE_WAIT (st-caller closed first: 3
              FIN_WAIT2 timewait sockets on st-caller's side, which has no process any more);
    st-web:   listens, and closes 4 connections first: 4 TIME_WAITs on its listening port."""
    with netns() as ns:
        procs = []
        try:
            leaky, leaky_port = start_server("leak", 3, "st-leaky", extra=("--keep-listening",), netns=ns)
            caller = start_client("close_first", leaky_port, 3, "st-caller", netns=ns)
            web, web_port = start_server("close_first", 4, "st-web", extra=("--keep-listening",), netns=ns)
            poller = start_client("wait_close", web_port, 4, "st-poller", netns=ns)
            procs = [leaky, caller, web, poller]
            for proc in procs:
                proc.done()
            yield ns, {"leaky": (leaky.pid, leaky_port), "web": (web.pid, web_port)}
        finally:
            for proc in procs:
                proc.release()


def by_comm(counts: dict) -> dict:
    return {(row["comm"], row["via"]): row for row in counts["processes"]}


def test_states_counts_per_state_process_and_peer(arranged):
    ns, servers = arranged
    counts = tcpclose("states", "--netns", ns)
    assert counts["states"] == {"LISTEN": 2, "FIN_WAIT2 (timewait)": 3, "TIME_WAIT": 4, "CLOSE_WAIT": 3}
    rows = by_comm(counts)
    leaky_pid, leaky_port = servers["leaky"]
    assert rows[("st-leaky", "fd")]["pid"] == leaky_pid
    assert rows[("st-leaky", "fd")]["states"] == {"LISTEN": 1, "CLOSE_WAIT": 3}
    # a server's TIME_WAITs have no file: they are credited to the listener on their port
    assert rows[("st-web", "listener")]["states"] == {"TIME_WAIT": 4}
    assert rows[("(no process found)", None)]["states"] == {"FIN_WAIT2 (timewait)": 3}
    peers = {row["peer"]: row["states"] for row in counts["peers"]}
    assert peers[f"127.0.0.1 -> :{leaky_port}"] == {"CLOSE_WAIT": 3}
    assert peers[f"127.0.0.1:{leaky_port}"] == {"FIN_WAIT2 (timewait)": 3}


def test_states_filters_like_trace(arranged):
    ns, servers = arranged
    _, web_port = servers["web"]
    counts = tcpclose("states", "--netns", ns, "-L", str(web_port))
    assert counts["states"] == {"LISTEN": 1, "TIME_WAIT": 4}
    assert tcpclose("states", "--netns", ns, "-c", "st-leaky")["states"] == {"LISTEN": 1, "CLOSE_WAIT": 3}


def test_states_without_root_names_no_holder_but_puts_each_socket_on_its_side(arranged):
    """Another user's processes are not named, but the listening sockets are visible to all:
    the sockets on a listening port are that server's side, named by its port."""
    ns, servers = arranged
    counts = tcpclose("states", user=65534, ns=ns)
    assert counts["root"] is False
    assert counts["states"] == {"LISTEN": 2, "FIN_WAIT2 (timewait)": 3, "TIME_WAIT": 4, "CLOSE_WAIT": 3}
    rows = by_comm(counts)
    assert rows[(f"(server on port {servers['web'][1]})", "listener")]["states"] == {"TIME_WAIT": 4}
    assert rows[(f"(server on port {servers['leaky'][1]})", "listener")]["states"] == {"CLOSE_WAIT": 3}
    assert rows[("(no process found)", None)]["states"] == {"LISTEN": 2, "FIN_WAIT2 (timewait)": 3}
    assert counts["unowned"] == 5 and all(row["pid"] is None for row in counts["processes"])


def findings_by_topic(report: dict, section: str = "host") -> dict:
    return {f["topic"]: f for f in report[section]}


def test_doctor_reads_the_namespace_it_is_given_and_explains_it():
    with netns(tcp_tw_reuse=0, tcp_fin_timeout=17, tcp_max_tw_buckets=2) as ns:
        # 5 connections closed first by the client: 2 TIME_WAITs fit, 3 overflow
        server, port = start_server("wait_close", 5, "dr-server", netns=ns)
        client = start_client("close_first", port, 5, "dr-client", netns=ns)
        try:
            client.done()
            server.done()
            report = tcpclose("doctor", "--netns", ns)
        finally:
            client.release()
            server.release()
    assert report["sysctls"]["tcp_tw_reuse"] == "0" and report["sysctls"]["tcp_tw_recycle"] is None
    host = findings_by_topic(report)
    assert "removed in Linux 4.12" in host["tcp_tw_recycle"]["text"]
    assert host["tcp_fin_timeout"]["text"].startswith("tcp_fin_timeout (17 s) does not shorten TIME_WAIT")
    assert host["tcp_tw_reuse"]["severity"] == "warning" and "never takes over" in host["tcp_tw_reuse"]["text"]
    assert "only the connecting side" in host["tcp_tw_reuse"]["text"]
    buckets = host["tcp_max_tw_buckets"]
    assert buckets["severity"] == "problem" and buckets["text"].startswith("3 TIME_WAITs were never created")
    assert report["tcpext"]["TCPTimeWaitOverflow"] == 3
    assert report["states"] == {"TIME_WAIT": 2}
    now = findings_by_topic(report, "sockets_now")
    assert now["timewait"]["text"].startswith("2 TIME_WAITs are on connections this host opened")


def test_doctor_names_a_close_wait_leak_and_a_closing_server(arranged):
    ns, servers = arranged
    report = tcpclose("doctor", "--netns", ns)
    texts = [f["text"] for f in report["sockets_now"]]
    leaky_pid, _ = servers["leaky"]
    assert any(t.startswith(f"st-leaky (pid {leaky_pid}) holds 3 sockets in CLOSE_WAIT") for t in texts)
    assert any(t.startswith("st-web") and "server and closes first: 4 TIME_WAITs" in t for t in texts)


def test_doctor_reviews_the_blog_block_against_the_sysctls_of_a_namespace():
    """The namespace's own settings (set here, never the host's) are what each line is held
    against; a server there that closes first puts its TIME_WAITs on its listening port."""
    with netns(tcp_fin_timeout=45, tcp_max_tw_buckets=7000) as ns:
        server, port = start_server("close_first", 7, "tc-web", extra=("--keep-listening",), netns=ns)
        client = start_client("wait_close", port, 7, "tc-poller", netns=ns)
        try:
            client.done(), server.done()
            review = subprocess.run([sys.executable, "-m", "agent", "doctor", "--netns", ns, "--sysctl", "-", "--json"],
                                    input=BLOG_BLOCK, capture_output=True, text=True, timeout=60)
        finally:
            server.release(), client.release()
    assert review.returncode == 9, review.stderr  # harmful and unknown lines
    verdicts = {v["key"].rsplit(".", 1)[1]: v for v in json.loads(review.stdout)}
    assert {k: v["verdict"] for k, v in verdicts.items()} == {
        "tcp_syncookies": "no effect", "tcp_tw_reuse": "no effect", "tcp_tw_recycle": "unknown key",
        "tcp_fin_timeout": "no effect", "tcp_keepalive_time": "no effect",
        "ip_local_port_range": "harmful",  # the test's server listens on an ephemeral port inside 1024-65000
        "tcp_max_syn_backlog": "no effect", "tcp_max_tw_buckets": "harmful"}
    assert verdicts["tcp_fin_timeout"]["current"] == "45" and verdicts["tcp_max_tw_buckets"]["current"] == "7000"
    assert "7 on its listening ports" in verdicts["tcp_tw_reuse"]["evidence"]  # the server closed first
