"""The incident report of a real churning client: `tcpclose trace -o DIR` while a client in a
namespace of the test's own runs towards the end of a port range the test made small."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.demo.pairs import settle
from agent.kernel.netns import named_netns
from support.namespaces import in_ns, netns

pytestmark = pytest.mark.live
PORT, RATE, SECONDS = 9100, 60, 4  # 240 connections: 80 % of a 300-port range


def test_a_client_near_the_end_of_its_ports_is_warned_about_in_every_output(tmp_path):
    out = tmp_path / "out"
    keep = os.environ.get("TCPCLOSE_KEEP_REPORT")  # a directory to keep the report in, to look at
    out = Path(keep) if keep else out
    with netns(ip_local_port_range="40000 40299", tcp_tw_reuse=0) as ns:
        server = in_ns(ns, "bench.churn", "server", "--port", str(PORT), stdout=subprocess.PIPE,
                       start_new_session=True)  # it forks no workers, but its group is ours to end
        try:
            assert server.stdout.readline().strip() == "ready"
            trace = subprocess.Popen([sys.executable, "-m", "agent", "trace", "-o", str(out), "--netns", ns],
                                     stderr=subprocess.PIPE, text=True)
            assert trace.stderr.readline().startswith("Tracing")
            client = in_ns(ns, "bench.churn", "client", "--port", str(PORT), "--seconds", str(SECONDS),
                           "--rate", str(RATE), stdout=subprocess.PIPE)
            made = int(client.communicate(timeout=60)[0])
            # the server closes after the client's last close: until it has, that life waits in
            # FIN_WAIT2, with no TIME_WAIT yet (CI once ended the trace first: 239 of 240)
            settle(named_netns(ns), threading.Event())
            trace.send_signal(signal.SIGTERM)
            _, err = trace.communicate(timeout=60)
            assert trace.returncode == 0, err
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=10)
    assert 200 <= made <= 250

    with open(out / "ports.csv") as f:
        rows = {(r["raddr"], r["rport"]): r for r in csv.DictReader(f)}
    row = rows[("127.0.0.1", str(PORT))]
    assert row["port_range"] == "300" and row["processes"] == "churn-client"
    assert int(row["timewait_peak"]) == int(row["timewait_now"]) == made  # none is 60 s old yet
    assert row["warning"] == "True" and row["tw_reuse"] == "False"
    assert 0 < float(row["seconds_left"]) < 10

    facts = json.loads((out / "summary.json").read_text())
    ports = [f for f in facts["findings"] if f["topic"] == "ports"]
    assert ports and ports[0]["severity"] == "problem" and "EADDRNOTAVAIL" in ports[0]["text"]
    procs = {p["comm"]: p for p in facts["processes"]}
    assert procs["churn-client"]["opened"] == made and procs["churn-client"]["active_closes"] == made
    assert procs["churn-client"]["short_share"] == 1.0
    page = (out / "report.html").read_text()
    assert "churn-client" in page and "the ports run out in about" in page
    assert page.count("data:image/png;base64,") == 5  # every plot but the CLOSE_WAIT ages: there are none
    assert "no socket was left in CLOSE_WAIT" in page


def test_a_second_sigterm_while_the_files_are_written_is_warned_about_and_loses_nothing(tmp_path):
    """Full churn for a few seconds: tens of thousands of lives, whose files take seconds to write."""
    out = tmp_path / "out"
    with netns() as ns:
        server = in_ns(ns, "bench.churn", "server", "--port", str(PORT), "--workers", "2",
                       stdout=subprocess.PIPE, start_new_session=True)
        try:
            assert server.stdout.readline().strip() == "ready"
            trace = subprocess.Popen([sys.executable, "-m", "agent", "trace", "-o", str(out), "--netns", ns],
                                     stderr=subprocess.PIPE, text=True)
            assert trace.stderr.readline().startswith("Tracing")
            client = in_ns(ns, "bench.churn", "client", "--port", str(PORT), "--seconds", "3",
                           stdout=subprocess.PIPE)
            made = int(client.communicate(timeout=60)[0])
            # the server closes after the client's last close: until it has, that life waits in
            # FIN_WAIT2, with no TIME_WAIT yet (CI once ended the trace first: 239 of 240)
            settle(named_netns(ns), threading.Event())
            trace.send_signal(signal.SIGTERM)  # ends tracing
            deadline = time.monotonic() + 120
            while not (out / "summary.txt").exists() and time.monotonic() < deadline:  # (the end writes it first)
                time.sleep(0.01)
            trace.send_signal(signal.SIGTERM)  # while the files are written: a warning only
            _, err = trace.communicate(timeout=300)
            assert trace.returncode == 0, err
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=10)
    assert made > 5000
    assert "still analysing the run and writing its files" in err
    procs = json.loads((out / "summary.json").read_text())["processes"]
    opened = {p["comm"]: p["opened"] for p in procs}
    assert opened["churn-client"] == made  # every life of the churn, in the files
    assert (out / "report.html").exists()
