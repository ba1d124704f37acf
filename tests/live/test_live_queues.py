"""Listen-queue pressure, live: a listener with a backlog of 1 that never accepts, and a burst
of clients in a namespace of the test's own.  The kernel's counters move; the trace's
finding, doctor and states name the listener's process."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from agent.analysis.pipeline import analyse
from agent.cli import main
from agent.demo.workload import Process
from agent.filters import Filters
from agent.run.tracer import Tracer
from support.namespaces import netns

pytestmark = pytest.mark.live
BURST = """
import socket, sys, time
socks = []
for _ in range(int(sys.argv[2])):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", int(sys.argv[1])))
    socks.append(s)
time.sleep(2.5)  # long enough for the SYN-ACK retries the full queue drops
"""


def test_an_overflowing_accept_queue_is_found_with_the_listeners_process_and_the_counters():
    with netns(tcp_syncookies=1) as ns:
        server = Process("server", "wait_close", "--count", "0", "--comm", "tc-slowacc", "--backlog", "1",
                         "--keep-listening", netns=ns)
        port = server.ready()["port"]
        server.done()  # it accepts nothing, and keeps listening
        try:
            tracer = Tracer(Filters())
            subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", BURST, str(port), "8"], check=True,
                           timeout=30)
            time.sleep(0.2)
            kept, run = tracer.finish()
            doctor = CliRunner().invoke(main, ["doctor", "--netns", ns])
            states = CliRunner().invoke(main, ["states", "--netns", ns])
        finally:
            server.release()
    found = [f for f in analyse(kept.tally, run).findings if f["topic"] == "listen_queue"]
    assert len(found) == 1 and found[0]["severity"] == "problem", found
    assert "ListenOverflows +" in found[0]["evidence"] or "ListenDrops +" in found[0]["evidence"]
    assert f"tc-slowacc (pid {server.pid})" in found[0]["text"] and "accept queue 2 of 1" in found[0]["text"], (found, run.listen_queues)
    assert doctor.exit_code == 0 and f"tc-slowacc (pid {server.pid})" in doctor.output
    assert "ListenOverflows" in doctor.output.split("Listen queues")[1]
    assert f":{port} (tc-slowacc (pid {server.pid})): accept queue 2 of 1" in states.output
