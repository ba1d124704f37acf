"""doctor --sysctl: the block people paste from blog posts, judged line by line."""
import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.host import sysctl_review as review
from agent.host.sysctl_review import HARMFUL, HELPS, NO_EFFECT, UNKNOWN
from support.folklore import BLOG_BLOCK

NOW = {"net.ipv4.tcp_syncookies": "1", "net.ipv4.tcp_tw_reuse": "2", "net.ipv4.tcp_fin_timeout": "60",
       "net.ipv4.tcp_keepalive_time": "7200", "net.ipv4.ip_local_port_range": "32768 60999",
       "net.ipv4.tcp_max_syn_backlog": "2048", "net.ipv4.tcp_max_tw_buckets": "262144",
       "net.core.somaxconn": "4096", "net.ipv4.tcp_timestamps": "1", "net.ipv4.ip_local_reserved_ports": ""}


def evidence(**changes) -> review.Evidence:
    fields = dict(sysctls=NOW, tcpext={}, states={"TIME_WAIT": 900}, timewait_on_listeners=0,
                  listening_ports=[22, 8080])
    return review.Evidence(**(fields | changes))


def verdicts(text=BLOG_BLOCK, **changes) -> dict:
    return {v.key: v.verdict for v in review.review(text, evidence(**changes), NOW.get)}


def test_the_blog_block_on_a_client_host_that_opens_the_connections():
    assert verdicts() == {
        "net.ipv4.tcp_syncookies": NO_EFFECT, "net.ipv4.tcp_tw_reuse": HELPS, "net.ipv4.tcp_tw_recycle": UNKNOWN,
        "net.ipv4.tcp_fin_timeout": NO_EFFECT, "net.ipv4.tcp_keepalive_time": NO_EFFECT,
        "net.ipv4.ip_local_port_range": HARMFUL,  # 8080 listens inside 1024-65000, nothing reserved
        "net.ipv4.tcp_max_syn_backlog": NO_EFFECT, "net.ipv4.tcp_max_tw_buckets": HARMFUL}


def test_the_same_block_on_a_server_that_closes_first():
    """Its TIME_WAITs sit on its listening port: tcp_tw_reuse cannot help it."""
    assert verdicts(timewait_on_listeners=900)["net.ipv4.tcp_tw_reuse"] == NO_EFFECT


@pytest.mark.parametrize("line, changes, verdict", [
    ("net.ipv4.ip_local_port_range = 1024 65000", dict(listening_ports=[22]), NO_EFFECT),
    ("net.ipv4.ip_local_port_range = 1024 65000", dict(listening_ports=[22], client_rate_per_s=400.0), HELPS),
    ("net.ipv4.ip_local_port_range = 1024 65000", dict(sysctls=NOW | {"net.ipv4.ip_local_reserved_ports": "8080"}),
     NO_EFFECT),
    ("net.ipv4.tcp_max_syn_backlog = 8192", dict(tcpext={"TCPReqQFullDrop": 12}), HELPS),
    ("net.core.somaxconn = 65535", dict(tcpext={"ListenOverflows": 40}, listeners_pressed=["x"]), HELPS),
    ("net.ipv4.tcp_syncookies = 0", {}, HARMFUL),
    ("net.ipv4.tcp_tw_reuse = 0", {}, HARMFUL),
    ("net.ipv4.tcp_tw_reuse = 1", dict(sysctls=NOW | {"net.ipv4.tcp_timestamps": "0"}), NO_EFFECT),
    ("net.ipv4.tcp_max_tw_buckets = 1000000", dict(tcpext={"TCPTimeWaitOverflow": 3}), HELPS),
    ("net.ipv4.tcp_rmem = 4096 87380 6291456", {}, "not judged"),
])
def test_one_line_against_the_evidence(line, changes, verdict):
    known = NOW | {"net.core.somaxconn": "4096", "net.ipv4.tcp_rmem": "4096 131072 6291456"}
    (v,) = review.review(line, evidence(**changes), known.get)
    assert v.verdict == verdict, v.why


def test_every_form_people_paste_is_read():
    text = """# tuning
net.ipv4.tcp_fin_timeout=30
  net/ipv4/tcp_keepalive_time = 1200   # inline comment
; an old-style comment
-net.ipv4.tcp_syncookies = 1

this is not a setting
"""
    assert review.parse(text) == [(2, "net.ipv4.tcp_fin_timeout", "30"), (3, "net.ipv4.tcp_keepalive_time", "1200"),
                                  (5, "net.ipv4.tcp_syncookies", "1"), (7, None, "this is not a setting")]


def test_the_command_reads_stdin_and_its_exit_code_gates_a_change():
    result = CliRunner().invoke(main, ["doctor", "--sysctl", "-"], input=BLOG_BLOCK)
    assert result.exit_code == 9, result.output
    for number in range(1, 9):
        assert f"line {number}: " in result.output
    assert "tcp_tw_recycle = 1  [unknown key]" in result.output
    harmless = CliRunner().invoke(main, ["doctor", "--sysctl", "-"], input="net.ipv4.tcp_fin_timeout = 30\n")
    assert harmless.exit_code == 0 and "[no effect]" in harmless.output
