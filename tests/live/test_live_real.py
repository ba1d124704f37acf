"""Real software, the truth from packets: Debian's nginx (a pre-forking server, master and
workers, keep-alive off so that it closes first) and redis (one process, its clients close
first) on one test host, curl and redis-cli on another, joined by a veth pair, with
tcpdump capturing between them.  For each connection the capture says who closed first
(the first FIN or RST; a second FIN that does not acknowledge the first is a simultaneous
close); connections.csv must say the same on both ends, and credit nginx's workers, never
its master."""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from agent.filters import Filters
from agent.run.tracer import Tracer
from agent.safefiles import OutputDir
from agent.cli import results
from support.namespaces import two_hosts

pytestmark = pytest.mark.live
SERVER, CLIENT = "10.231.9.1", "10.231.9.2"
NGINX_PORT, REDIS_PORT = 8080, 6379
N = 23
NGINX_CONF = """daemon off; master_process on; worker_processes 2;
pid {dir}/nginx.pid; error_log {dir}/error.log;
events {{ worker_connections 64; }}
http {{ access_log off; keepalive_timeout 0;
  client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir}; uwsgi_temp_path {dir}; scgi_temp_path {dir};
  server {{ listen {addr}:{port}; location / {{ return 200 "ok"; }} }} }}
"""
# tcpdump -nn -tt -S: "TIME IP SRC.PORT > DST.PORT: Flags [FP.], seq S[:E], ack A, ..."
PACKET = re.compile(r"IP (\S+)\.(\d+) > (\S+)\.(\d+): Flags \[([^\]]*)\](?:, seq (\d+)(?::(\d+))?)?(?:, ack (\d+))?")


def needed(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:  # make test installs them (scripts/provision.sh --test)
        pytest.fail(f"not installed: {', '.join(missing)}; run 'sudo make test' (scripts/provision.sh --test)")


def closers_from_capture(text: str, server_port: int) -> dict[int, str]:
    """Client port -> who closed first on that connection, from the capture: "server",
    "client", "simultaneous", "reset_by_server" or "reset_by_client".  The first FIN or
    RST decides; a FIN from the other side whose ack does not cover the first FIN (its
    sequence number + 1) crossed it: a simultaneous close."""
    out: dict[int, str] = {}
    first_fin: dict[int, tuple[str, int]] = {}  # client port -> (side, the first FIN's sequence number)
    for line in text.splitlines():
        m = PACKET.search(line)
        if not m or server_port not in (int(m[2]), int(m[4])):
            continue
        side, client_port = ("server", int(m[4])) if int(m[2]) == server_port else ("client", int(m[2]))
        flags = m[5]
        if client_port not in out:
            if "R" in flags:
                out[client_port] = f"reset_by_{side}"
            elif "F" in flags:
                out[client_port] = side
                first_fin[client_port] = (side, int(m[7] or m[6]))  # a FIN sent with data sits at its end
        elif "F" in flags and client_port in first_fin and first_fin[client_port][0] != side:
            if m[8] is not None and int(m[8]) <= first_fin[client_port][1]:
                out[client_port] = "simultaneous"
            del first_fin[client_port]
    return out


EXPECTED = {  # what each end's life says for each truth from the capture
    "server": ("active", "passive"), "client": ("passive", "active"), "simultaneous": ("simultaneous", "simultaneous"),
    "reset_by_server": ("reset_local", "reset_remote"), "reset_by_client": ("reset_remote", "reset_local"),
}


def children(pid: int) -> set[int]:
    return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def test_nginx_and_redis_closes_agree_with_the_packet_capture_on_every_connection(tmp_path):
    needed("nginx", "redis-server", "redis-cli", "curl", "tcpdump")
    (tmp_path / "nginx.conf").write_text(NGINX_CONF.format(dir=tmp_path, addr=SERVER, port=NGINX_PORT))
    with two_hosts("10.231.9") as (server_ns, client_ns):
        device = subprocess.run(["ip", "-n", server_ns, "-o", "link", "show", "type", "veth"], capture_output=True,
                                text=True, check=True).stdout.split(":")[1].strip().split("@")[0]
        capture = subprocess.Popen(["ip", "netns", "exec", server_ns, "tcpdump", "-i", device, "-nn", "-U", "-w",
                                    str(tmp_path / "cap.pcap"), "tcp"], stderr=subprocess.PIPE, text=True)
        assert "listening on" in capture.stderr.readline()
        tracer = Tracer(Filters())  # before the servers start: their listen() is traced
        nginx = subprocess.Popen(["ip", "netns", "exec", server_ns, "nginx", "-c", str(tmp_path / "nginx.conf"),
                                  "-p", str(tmp_path), "-e", str(tmp_path / "error.log")])
        redis = subprocess.Popen(["ip", "netns", "exec", server_ns, "redis-server", "--bind", SERVER, "--port",
                                  str(REDIS_PORT), "--save", "", "--appendonly", "no", "--protected-mode", "no"],
                                 stdout=subprocess.DEVNULL)
        try:
            for _ in range(100):  # both listening
                ss = subprocess.run(["ip", "netns", "exec", server_ns, "ss", "-Htln"], capture_output=True, text=True).stdout
                if f"{SERVER}:{NGINX_PORT}" in ss and f"{SERVER}:{REDIS_PORT}" in ss and len(children(nginx.pid)) == 2:
                    break
                time.sleep(0.1)
            workers = children(nginx.pid)
            in_client = ["ip", "netns", "exec", client_ns]
            for _ in range(N):
                assert subprocess.run([*in_client, "curl", "-s", f"http://{SERVER}:{NGINX_PORT}/"],
                                      capture_output=True, text=True, timeout=10).stdout == "ok"
                assert subprocess.run([*in_client, "redis-cli", "-h", SERVER, "-p", str(REDIS_PORT), "PING"],
                                      capture_output=True, text=True, timeout=10).stdout.strip() == "PONG"
            time.sleep(0.5)  # the last FINs and ACKs
            kept, run = tracer.finish()
            conns = kept.frame()
        finally:
            for proc in (nginx, redis):
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=10)
            capture.send_signal(signal.SIGINT)
            capture.wait(timeout=10)
    out = OutputDir(tmp_path / "out")
    results.show(kept, run, out)
    conns = pd.read_csv(tmp_path / "out" / "connections.csv")
    packets = subprocess.run(["tcpdump", "-r", str(tmp_path / "cap.pcap"), "-nn", "-tt", "-S"], capture_output=True,
                             text=True, check=True).stdout
    for port, servers, client_comm in ((NGINX_PORT, workers, "curl"), (REDIS_PORT, {redis.pid}, "redis-cli")):
        truth = closers_from_capture(packets, port)
        assert len(truth) == N, (port, truth)
        served = conns[(conns["laddr"] == SERVER) & (conns["lport"] == port)].set_index("rport")
        made = conns[(conns["laddr"] == CLIENT) & (conns["rport"] == port)].set_index("lport")
        for client_port, closer in truth.items():
            server_end, client_end = EXPECTED[closer]
            assert served.loc[client_port, "initiator"] == server_end, (port, client_port, closer)
            assert made.loc[client_port, "initiator"] == client_end, (port, client_port, closer)
        assert set(served.loc[list(truth), "pid"]) <= servers  # nginx: its workers; never the master
        assert nginx.pid not in set(conns["pid"].dropna())
        assert set(made.loc[list(truth), "comm"]) == {client_comm}
