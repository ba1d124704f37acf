"""tcpclose agent scraped by a real Prometheus (Debian's, installed by the project's set-up):
a known workload in a namespace of the test's own, then Prometheus' own answers checked
against what the processes did."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pandas as pd
import pytest

from agent.demo.workload import start_client, start_server
from agent.kernel.procfs import port_range_size, sysctls
from support.cgroups import move, runtime_cgroups
from support.namespaces import netns

pytestmark = pytest.mark.live
N = 23
LEAKED = 5
AGAIN = 6  # connections made again from one local port
CONTAINER_ID = "c1057e" + "0" * 58
CONTAINER = "docker:c1057e000000"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def query(port: int, expr: str) -> float | None:
    """The value of an instant query in Prometheus (None: no series)."""
    answer = json.loads(get(f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def shipped_queries() -> list[str]:
    """Every query of deploy/: the dashboard's panels, and the alert rules' expressions with
    their thresholds taken off (a test's workload does not reach them)."""
    import re
    from pathlib import Path

    import yaml

    deploy = Path(__file__).resolve().parents[2] / "deploy"
    dashboard = json.loads((deploy / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    for group in yaml.safe_load((deploy / "prometheus-rules.yml").read_text())["groups"]:
        for rule in group["rules"]:
            for part in re.split(r"\band\b", rule["expr"]):
                exprs.append(re.sub(r"\s*(>|<|==)\s*[\d.]+\s*$", "", part.strip()))
    return exprs


def wait_ready(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    """Until Prometheus answers on its readiness endpoint (it replays its log and opens its
    storage first: seconds on a busy machine)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if get(f"http://127.0.0.1:{port}/-/ready").strip():
                return
        except OSError:  # (URLError: not listening yet; 503 while it starts)
            assert process.poll() is None, "prometheus exited"
            assert time.monotonic() < deadline, f"prometheus not ready after {timeout:g} s"
            time.sleep(0.2)


def has_data(port: int, expr: str) -> bool:
    answer = json.loads(get(f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
    return answer["status"] == "success" and bool(answer["data"]["result"])


def test_prometheus_scrapes_the_closes_timewaits_and_close_waits_the_workload_made(tmp_path):
    agent_port, prom_port = free_port(), free_port()
    agent = subprocess.Popen([sys.executable, "-m", "agent", "agent", "--listen", f"127.0.0.1:{agent_port}",
                              "--refresh", "1"], stderr=subprocess.PIPE, text=True)
    prometheus = None
    procs = []
    try:
        line = agent.stderr.readline()
        assert line.startswith("Tracing") and f":{agent_port}/metrics" in line, line
        config = tmp_path / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
                          f"  - job_name: tcpclose\n    static_configs:\n      - targets: ['127.0.0.1:{agent_port}']\n")
        prometheus = subprocess.Popen(["prometheus", f"--config.file={config}",
                                       f"--storage.tsdb.path={tmp_path / 'data'}",
                                       f"--web.listen-address=127.0.0.1:{prom_port}"],
                                      stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))
        wait_ready(prom_port, prometheus)
        # the caller's FIN_WAIT2 timewaits (it closes once its FIN is acknowledged) expire after
        # 2 s in the namespace; the leaking server runs in a cgroup named as docker names a container's
        with netns(tcp_fin_timeout=2) as ns, runtime_cgroups(f"docker-{CONTAINER_ID}.scope") as boxes:
            try:
                echo, port = start_server("wait_close", N, "tc-agecho", netns=ns)
                procs.append(echo)
                procs.append(start_client("close_first", port, N, "tc-agclient", netns=ns))
                leaky, leak_port = start_server("leak", LEAKED, "tc-agleaky", netns=ns)
                procs.append(leaky)
                move(boxes[f"docker-{CONTAINER_ID}.scope"], leaky.pid)
                procs.append(start_client("fin_wait2", leak_port, LEAKED, "tc-agcaller", netns=ns))
                # a server that closes first, its client reconnecting from one port: each SYN
                # kills the server's TIME_WAIT; a client that closes first and reconnects from
                # one port: each connect() reuses its own TIME_WAIT (the last one of each stays)
                web, web_port = start_server("close_first", AGAIN, "tc-agweb", netns=ns)
                procs.append(web)
                procs.append(start_client("wait_close", web_port, AGAIN, "tc-agpoller", extra=("--rebind",),
                                          netns=ns))
                cache, cache_port = start_server("wait_close", AGAIN, "tc-agcache", netns=ns)
                procs.append(cache)
                procs.append(start_client("close_first", cache_port, AGAIN, "tc-agrebind", extra=("--rebind",),
                                          netns=ns))
                for proc in procs:
                    proc.done()
                wanted = {
                    'tcpclose_closes_total{workload="tc-agclient",kind="active"}': N,
                    'tcpclose_closes_total{workload="tc-agecho",kind="passive"}': N,
                    'tcpclose_timewaits_total{workload="tc-agclient"}': N,
                    # each of the client's lives lasted from connect() to its close: well under a second
                    'tcpclose_connection_duration_seconds_count{workload="tc-agclient"}': N,
                    'tcpclose_connection_duration_seconds_bucket{workload="tc-agclient",le="1"}': N,
                    f'tcpclose_close_wait_sockets{{workload="{CONTAINER}"}}': LEAKED,
                    f'tcpclose_closes_total{{workload="{CONTAINER}"}}': None,  # its lives are not closed
                    'tcpclose_timewait_lifetime_seconds_count{workload="tc-agcaller"}': LEAKED,
                    'tcpclose_timewait_lifetime_seconds_bucket{workload="tc-agcaller",le="2"}': 0,  # 2 s and a bit
                    'tcpclose_timewait_lifetime_seconds_bucket{workload="tc-agcaller",le="5"}': LEAKED,
                    'tcpclose_timewait_ends_total{workload="tc-agcaller",reason="expired"}': LEAKED,
                    # the client's TIME_WAITs (60 s) hold ports towards the echo server; the
                    # caller's expired in 2 s and gave theirs back
                    f'tcpclose_client_timewaits{{source="127.0.0.1",destination="127.0.0.1:{port}"}}': N,
                    f'tcpclose_client_timewaits{{destination="127.0.0.1:{leak_port}"}}': None,
                    'tcpclose_timewaits_unlinked_total{workload="tc-agclient"}': 0,
                    'tcpclose_timewait_ends_total{workload="tc-agweb",reason="killed"}': AGAIN - 1,
                    'tcpclose_timewait_ends_total{workload="tc-agweb",reason="reused"}': None,
                    'tcpclose_timewait_ends_total{workload="tc-agrebind",reason="reused"}': AGAIN - 1,
                    'tcpclose_timewait_ends_total{workload="tc-agrebind",reason="killed"}': None,
                }
                deadline, seen = time.monotonic() + 40, {}
                while time.monotonic() < deadline:
                    seen = {expr: query(prom_port, expr) for expr in wanted}
                    if seen == wanted:
                        break
                    time.sleep(1)
                assert seen == wanted, (seen, (tmp_path / "prometheus.log").read_text()[-2000:])
                assert query(prom_port, 'up{job="tcpclose"}') == 1
                size = port_range_size(sysctls()["ip_local_port_range"])  # the agent's namespace's
                headroom = query(prom_port, f'tcpclose_port_headroom_ratio{{destination="127.0.0.1:{port}"}}')
                assert headroom == pytest.approx(1 - N / size)
                assert 0 < query(prom_port, f'tcpclose_close_wait_oldest_seconds{{workload="{CONTAINER}"}}') < 60
                assert query(prom_port, 'tcpclose_unseen_total{what="ringbuf_drops"}') == 0
                pending, deadline = shipped_queries(), time.monotonic() + 20  # rate() wants two scrapes
                while pending and time.monotonic() < deadline:  # of the dashboard's and the rules' queries
                    pending = [expr for expr in pending if not has_data(prom_port, expr)]
                    time.sleep(0.5)
                assert not pending, pending  # every one returned data
                # the client's TIME_WAITs end after TCP_TIMEWAIT_LEN, 60 s, and up to the timer
                # wheel's 2 s granularity at that range (HZ 250) later
                lived = {le: f'tcpclose_timewait_lifetime_seconds_bucket{{workload="tc-agclient",le="{le}"}}'
                         for le in ("59.5", "65", "+Inf")}
                deadline = time.monotonic() + 90
                while query(prom_port, lived["+Inf"]) != N and time.monotonic() < deadline:
                    time.sleep(1)
                assert [query(prom_port, expr) for expr in lived.values()] == [0, N, N], (
                    query(prom_port, 'up{job="tcpclose"}'),  # (once: none of them, CI; what the agent itself said)
                    [line for line in get(f"http://127.0.0.1:{agent_port}/metrics").splitlines()
                     if "tc-agclient" in line and ("lifetime" in line or "timewait_ends" in line)])
                median = query(prom_port, 'histogram_quantile(0.5, sum by (le) '
                                          '(tcpclose_timewait_lifetime_seconds_bucket{workload="tc-agclient"}))')
                assert 59.5 < median <= 65
                assert query(prom_port, 'tcpclose_timewait_ends_total{workload="tc-agclient",reason="expired"}') == N
                # the fleet's report, read back from Prometheus: the same counts per workload
                fleet = tmp_path / "fleet"
                done = subprocess.run([sys.executable, "-m", "agent", "report", "--prometheus",
                                       f"http://127.0.0.1:{prom_port}", "--since", "10m",
                                       "--instance", f"127.0.0.1:{agent_port}", "-o", str(fleet)],
                                      capture_output=True, text=True, timeout=120)
                assert done.returncode == 0, done.stderr
                rows = pd.read_csv(fleet / "workloads.csv").set_index("comm")
                assert rows.loc["tc-agclient", ["active_closes", "timewait_count", "timewait_expired"]].tolist() == [N] * 3
                assert rows.loc["tc-agecho", "passive_closes"] == N
                assert rows.loc[CONTAINER, "close_wait_open"] == LEAKED
                assert rows.loc["tc-agrebind", "timewait_reused"] == rows.loc["tc-agweb", "timewait_killed"] == AGAIN - 1
                assert 59.5 < rows.loc["tc-agclient", "timewait_p50_s"] <= 65
                summary = (fleet / "summary.txt").read_text()
                assert f"tc-agclient closed first on {N} of {N} closes: {N} TIME_WAITs on its side" in summary
                assert f"{CONTAINER}: {LEAKED} sockets in CLOSE_WAIT" in summary
                page = (fleet / "report.html").read_text()  # the incident report of the range
                assert f"tc-agclient closes first: {N} of its {N} closes were active" in page
                assert f"{CONTAINER} leaks CLOSE_WAIT: {LEAKED} sockets" in page
                for plot in ("closes", "close-wait", "ports", "timewait-lifetimes"):  # from range queries
                    assert f'id="{plot}-plot"' in page, plot
            finally:  # before the cgroup is removed: it must be empty
                for proc in procs:
                    proc.release()
        exposition = get(f"http://127.0.0.1:{agent_port}/metrics")
        checked = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr  # Prometheus' naming conventions
        assert get(f"http://127.0.0.1:{agent_port}/healthz") == "ok\n"
    finally:
        if prometheus:
            prometheus.terminate()
            prometheus.wait(timeout=30)
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=60)
        print(err)  # (shown with a failure: what the agent said on its way)
    assert agent.returncode == 0 and "Traceback" not in err, err


@contextlib.contextmanager
def closes_in_a_namespace(server: str, client: str):
    """N connections in a namespace of the test's own: `client` closes first, `server` waits
    for it; inside the block both are done, after it the namespace is gone."""
    procs = []
    with netns() as ns:
        try:
            echo, port = start_server("wait_close", N, server, netns=ns)
            procs += [echo, start_client("close_first", port, N, client, netns=ns)]
            for proc in procs:
                proc.done()
            yield
        finally:
            for proc in procs:
                proc.release()


def test_agent_out_writes_a_directory_a_period_and_keeps_the_newest(tmp_path):
    """agent -o: each period's directory holds the rows made final in it (a passive close's
    within seconds; an active closer's once its TIME_WAIT ends, else in the last period, open),
    finished with report.html when it ends; past --keep the oldest is removed."""
    out = tmp_path / "periods"
    agent = subprocess.Popen([sys.executable, "-m", "agent", "agent", "--listen", f"127.0.0.1:{free_port()}",
                              "-o", str(out), "--rotate", "10", "--keep", "2"], stderr=subprocess.PIPE, text=True)

    def periods(count: int, timeout: float = 40) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(list(out.glob("*Z"))) < count:
            time.sleep(0.2)
        return sorted(out.glob("*Z"))

    try:
        assert agent.stderr.readline().startswith("Tracing")
        with closes_in_a_namespace("tc-poecho", "tc-poclient"):
            first, deadline = periods(2)[0], time.monotonic() + 30
            while not (first / "report.html").exists() and time.monotonic() < deadline:
                time.sleep(0.2)  # (written once the next period began)
            ended = pd.read_csv(first / "processes.csv").groupby("comm")["connections"].sum()
            assert ended.get("tc-poecho") == N  # passive: final 2 s after its close
            assert "tc-poclient" not in ended  # its TIME_WAITs (60 s) outlive the period
            run = json.loads((first / "run.json").read_text())
            assert run["lives_carried"] >= N and not run.get("cut_short")
            done = subprocess.run([sys.executable, "-m", "agent", "report", str(first), "-o",
                                   str(tmp_path / "again")], capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            again = pd.read_csv(tmp_path / "again" / "processes.csv").groupby("comm")["connections"].sum()
            assert again.get("tc-poecho") == N
            deadline = time.monotonic() + 30
            while first.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not first.exists() and len(periods(2)) == 2  # --keep 2: the oldest went for the third
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=120)
    assert agent.returncode == 0 and "Traceback" not in err, err
    second, last = sorted(out.glob("*Z"))
    runs = [json.loads((d / "run.json").read_text()) for d in (second, last)]
    assert runs[0]["ended_at"] == runs[1]["started_at"]  # one period after the other, nothing between
    rows = pd.concat(pd.read_csv(d / "connections.csv") for d in (second, last))
    client = rows[rows["comm"] == "tc-poclient"]
    # their TIME_WAITs, killed as the namespace went (its cleanup runs on the kernel's own time:
    # before or after the agent read the ones still followed), none whose end was missed
    assert len(client) == N and set(client["tw_end_reason"]) <= {"killed", "open"}
    assert (rows["comm"] == "tc-poecho").sum() == 0  # all in the first period
    assert (last / "report.html").exists() and not (last / "connections.pending.arrow").exists()


def test_a_period_an_agent_killed_left_is_finished_when_the_agent_starts_again(tmp_path):
    """kill -9 mid-period leaves its rows and interval tables; the next agent on the same
    -o finishes that period (report.html, the server's passive closes) before it traces."""
    out = tmp_path / "periods"
    command = [sys.executable, "-m", "agent", "agent", "--listen", f"127.0.0.1:{free_port()}", "-o", str(out)]
    agent = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        assert agent.stderr.readline().startswith("Tracing")
        with closes_in_a_namespace("tc-kpecho", "tc-kpclient"):
            period, deadline = next(out.glob("*Z")), time.monotonic() + 40
            while time.monotonic() < deadline:  # the interval tables hold the server's rows
                tables = period / "processes.csv"
                if tables.exists() and "tc-kpecho" in tables.read_text():
                    break
                time.sleep(0.5)
            else:
                pytest.fail("the period's tables never held the server's rows")
    finally:
        agent.kill()
        agent.wait()
    assert not (period / "report.html").exists()
    again = subprocess.Popen([*command, "-d", "1"], stderr=subprocess.PIPE, text=True)
    _, err = again.communicate(timeout=180)
    assert again.returncode == 0 and "Traceback" not in err, err
    assert f"finishing {period}" in err
    assert err.index(f"finishing {period}") < err.index("Tracing")  # before it traces
    assert (period / "report.html").exists() and not (period / "connections.pending.arrow").exists()
    ended = pd.read_csv(period / "processes.csv").groupby("comm")["connections"].sum()
    assert ended.get("tc-kpecho") == N
    assert len(list(out.glob("*Z"))) == 2  # and the new agent's own period beside it


def test_workloads_past_max_series_are_counted_as_other_with_every_close():
    """--max-series 100 holds 2 workloads: 24 processes, each a process name of its own, each
    closing one connection first, are 2 workloads by name and 22 counted under "other", and
    no close is lost on the way (the figures are made in BPF per owner, named in user space)."""
    clients = 24
    echo, port = start_server("wait_close", clients, "tc-agmanyecho")
    agent_port = free_port()
    agent = subprocess.Popen([sys.executable, "-m", "agent", "agent", "--listen", f"127.0.0.1:{agent_port}",
                              "--max-series", "100", "-D", str(port)], stderr=subprocess.PIPE, text=True)
    procs = [echo]
    try:
        assert agent.stderr.readline().startswith("Tracing")
        procs += [start_client("close_first", port, 1, f"tc-agmany{i}") for i in range(clients)]
        for proc in procs:
            proc.done()
        active, deadline = {}, time.monotonic() + 20
        while sum(active.values()) < clients and time.monotonic() < deadline:
            time.sleep(0.5)
            text = get(f"http://127.0.0.1:{agent_port}/metrics")
            active = {line.split('workload="')[1].split('"')[0]: float(line.split()[-1]) for line in text.splitlines()
                      if line.startswith("tcpclose_closes_total{") and 'kind="active"' in line}
        named = set(active) - {"other"}
        assert len(named) == 2 and named <= {f"tc-agmany{i}" for i in range(clients)}, active
        assert active["other"] == clients - 2 and sum(active.values()) == clients
        assert f"tcpclose_workloads_folded_total {clients - 2}.0" in text
    finally:
        for proc in procs:
            proc.release()
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=60)
    assert agent.returncode == 0 and "Traceback" not in err, err


def test_the_figures_of_owners_gone_leave_the_bpf_map_and_keep_their_counts(monkeypatch):
    """The bound on the agent's map of owners, on the map itself: once their processes are
    gone (here at once: FORGET_AFTER_S is 180 s in the agent), the entries of 3 clients that
    closed first are deleted by their keys (Probe.forget_figures) and their closes stay
    counted under their names; the entry of a process still alive (this test's) stays."""
    from agent.filters import Filters
    from agent.metrics import owners
    from agent.metrics.figures import Figures
    from agent.run.tracer import Tracer

    monkeypatch.setattr(owners, "FORGET_AFTER_S", 0.0)
    clients = [f"tc-fg{i}" for i in range(3)]
    echo, port = start_server("wait_close", len(clients) + 1, "tc-fgecho")
    tracer = Tracer(Filters(remote_ports=frozenset({port})), figures=True)
    procs = [echo]
    try:
        procs += [start_client("close_first", port, 1, name) for name in clients]
        with socket.create_connection(("127.0.0.1", port)):
            pass  # this process closes first too, and lives on
        for proc in procs:
            proc.done()
        figures = Figures(namer=tracer.owners.workloads_of)

        def forget_and_read():
            tracer.probe.forget_figures(figures.add_owner_figures(*tracer.probe.read_figures()))
            return tracer.probe.read_figures()[1]

        deadline = time.monotonic() + 10  # named while they live: the lives end at the server's close
        while sum(figures.closes[name, "active"] for name in clients) < len(clients):
            assert time.monotonic() < deadline, figures.closes
            forget_and_read()
            time.sleep(0.1)
        assert len(forget_and_read()) == len(clients) + 1  # none gone yet
        for proc in procs:
            proc.release()
        forget_and_read()  # gone, and unchanged since the last read: deleted
        left = forget_and_read()
        assert left["pid"].max(axis=1).tolist() == [os.getpid()], left["comm"]
        assert all(figures.closes[name, "active"] == 1 for name in clients), figures.closes
        assert sum(n for (name, kind), n in figures.closes.items() if kind == "active") == len(clients) + 1
    finally:
        for proc in procs:
            proc.release()
        tracer.finish()
