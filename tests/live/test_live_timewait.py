"""Live TIME_WAIT tests: real timewait sockets, how long each lived and how it ended.

Every workload runs in a network namespace the test creates, so that sysctls
can be set there without touching the host's and the namespace's TcpExt
counters count only what the test did.  The tracer runs in the host namespace
(the tracepoints see every namespace) and reads those counters itself.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from agent.analysis.tally import Tally
from support.quantiles import near_quantile
from agent.analysis import accounting, processes, reconcile
from agent.kernel import probe
from agent.output import text
from agent.record import decode
from agent.filters import Filters
from agent.run.drainer import joined
from agent.run.tracer import Tracer
from agent.demo.workload import start_client, start_server
from support.namespaces import in_ns, netns

pytestmark = pytest.mark.live
TIME_WAIT_S = (60.0, 62.5)  # TCP_TIMEWAIT_LEN and the timer wheel's rounding (DESIGN.md section 1)


class Traced:
    """A tracer over workload pairs in one namespace; result() ends it and gives the connections."""

    def __init__(self, ns: str):
        self.ns = ns
        self.tracer = Tracer(Filters(), timewait="timers")
        self.procs = []

    def pair(self, server_mode, client_mode, count, server_comm, client_comm, server_extra=(), client_extra=()):
        server, port = start_server(server_mode, count, server_comm, extra=server_extra, netns=self.ns)
        client = start_client(client_mode, port, count, client_comm, extra=client_extra, netns=self.ns)
        self.procs += [server, client]
        try:
            client.done()
            server.done()
        except BaseException:  # a failed workload: end the tracer and every process this test started
            self.result()
            raise
        return server, client

    def wait_for(self, seconds: float, until=lambda events: False) -> None:
        """Drain while waiting, so that the ring buffer never fills; stop early once until() holds."""
        frames = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            frames.append(decode.decode(joined(self.tracer.drain()), 0))
            if until(pd.concat(frames)):
                return
            time.sleep(0.5)

    def result(self):
        try:
            kept, run = self.tracer.finish()
            conns = kept.frame()
        finally:
            for proc in self.procs:
                proc.release()
        return conns, run

    def counts(self, conns, run) -> dict:
        """This namespace's row of the summary's reconciliation: {"kernel": ..., "tcpclose": ...}."""
        ns_id = next(ns for ns, info in run.tcpext["start"].items() if info["name"] == self.ns)
        tally = Tally.of(conns, run.started_at, run.timewait_followed)
        return next(row for row in reconcile.reconcile(tally, run) if row["netns"] == ns_id)


def of(conns, comm):
    return conns[conns["comm"] == comm].sort_values("opened_at")


@pytest.fixture(scope="module")
def natural_expiry(tmp_path_factory):
    """Three client-side and three server-side TIME_WAITs, traced until they expire (about 62 s).

    Traced twice at once: by the timers (in this process) and, as the fallback,
    by `tcpclose trace --timewait diag --netns NS` (sock_diag sees one namespace)."""
    out = tmp_path_factory.mktemp("diag")
    with netns() as ns:
        fallback = subprocess.Popen(
            [sys.executable, "-m", "agent", "trace", "--timewait", "diag", "--netns", ns, "-o", str(out)],
            stderr=subprocess.PIPE, text=True)
        try:
            assert fallback.stderr.readline().startswith("Tracing"), fallback.stderr.read()
            traced = Traced(ns)
            traced.pair("wait_close", "close_first", 3, "tc-echo", "tc-closer")
            traced.pair("close_first", "wait_close", 3, "tc-web", "tc-poller")
            traced.wait_for(TIME_WAIT_S[1] + 3,
                            until=lambda ev: (ev["tw_end"] == "expired").sum() >= 6)
            time.sleep(1.5)  # the fallback's next poll
            conns, run = traced.result()
        finally:
            fallback.send_signal(signal.SIGINT)
            fallback.communicate(timeout=60)
        yield traced, conns, run, out


@pytest.mark.parametrize("closer, peer", [("tc-closer", "tc-echo"), ("tc-web", "tc-poller")])
def test_a_time_wait_lives_60_s_and_expires(natural_expiry, closer, peer):
    traced, conns, run, _ = natural_expiry
    mine = of(conns, closer)
    assert len(mine) == 3 and set(mine["initiator"]) == {"active"}
    assert list(mine["tw_end_reason"]) == ["expired"] * 3
    for row in mine.itertuples():
        assert TIME_WAIT_S[0] <= row.tw_s <= TIME_WAIT_S[1]
        assert row.tw_end - row.tw_start == pytest.approx(row.tw_s)
        assert 0 <= row.closed_at - row.tw_start < 0.01  # armed just before the close that handed over
    assert set(of(conns, peer)["tw_end_reason"]) == {"none"}  # the passive side holds none


def test_per_process_time_wait_figures(natural_expiry):
    traced, conns, run, _ = natural_expiry
    procs = processes.processes(Tally.of(conns, run.started_at), run.ended_at).set_index("comm")
    for comm in ("tc-closer", "tc-web"):
        row = procs.loc[comm]
        assert (row.timewait_count, row.timewait_expired) == (3, 3)
        assert TIME_WAIT_S[0] <= row.timewait_max_s <= TIME_WAIT_S[1]
        lifetimes = of(conns, comm)["tw_s"].dropna()  # (the percentiles: from a sketch, analysis.sketches)
        assert near_quantile(row.timewait_p50_s, lifetimes, 0.5) and near_quantile(row.timewait_p95_s, lifetimes, 0.95)
    assert procs.loc["tc-poller", "timewait_count"] == 0


def test_kernel_counters_agree_in_the_namespace(natural_expiry):
    traced, conns, run, _ = natural_expiry
    row = traced.counts(conns, run)
    assert row["kernel"]["TW"] == row["tcpclose"]["TW"] == 6


def test_the_sock_diag_fallback_measures_the_same_expiries(natural_expiry):
    _, _, _, out = natural_expiry
    assert json.loads((out / "run.json").read_text())["timewait_method"] == "diag"
    conns = pd.read_csv(out / "connections.csv")
    for closer in ("tc-closer", "tc-web"):
        mine = conns[conns["comm"] == closer]
        assert list(mine["tw_end_reason"]) == ["expired"] * 3
        assert mine["tw_s"].between(TIME_WAIT_S[0] - 0.1, TIME_WAIT_S[1] + 0.1).all()
    assert "measured by polling sock_diag" in (out / "summary.txt").read_text()


def test_a_connect_bound_to_the_same_port_reuses_the_time_wait():
    with netns() as ns:
        traced = Traced(ns)
        traced.pair("wait_close", "close_first", 2, "tc-echo", "tc-rebind", client_extra=("--rebind",))
        conns, run = traced.result()
        first, second = of(conns, "tc-rebind").itertuples()
        assert first.lport == second.lport
        assert first.tw_end_reason == "reused"
        assert 0 < first.tw_s < 1 and first.tw_end <= second.opened_at + 0.01
        assert second.tw_end_reason == "open"
        row = traced.counts(conns, run)
        assert row["kernel"]["TWRecycled"] == row["tcpclose"]["TWRecycled"] == 1


def test_a_syn_into_a_server_side_time_wait_kills_it():
    with netns() as ns:
        traced = Traced(ns)
        traced.pair("close_first", "wait_close", 2, "tc-web", "tc-rebind", client_extra=("--rebind",))
        conns, run = traced.result()
        first, second = of(conns, "tc-web").itertuples()
        assert first.rport == second.rport  # the same 4-tuple again
        assert first.tw_end_reason == "killed"
        assert 0 < first.tw_s < 1
        assert second.tw_end_reason == "open"
        row = traced.counts(conns, run)
        assert row["kernel"]["TW"] == row["tcpclose"]["TW"] == 2
        assert row["kernel"]["TWRecycled"] == row["tcpclose"]["TWRecycled"] == 0


@pytest.mark.parametrize("slot_bits", [None, 4], ids=["in-slots", "mostly-in-the-map"])
def test_under_full_churn_every_time_wait_killed_has_its_end(monkeypatch, slot_bits):
    """The bench's churn for 4 s: clients of a server that closes second and of one that
    closes first.  connect() takes over thousands of client-side TIME_WAITs (tcp_tw_reuse
    is on for loopback) and SYNs kill the server-side ones.  A killed timewait's memory
    is sometimes the timer of the next one made on that CPU at once: a cancel then a start
    of the same timer that is not a re-arm (claim_timewait in the BPF program).  Run with
    the default slots, where nearly every timewait is followed, and with 16, where nearly
    every one is followed in the tws map."""
    if slot_bits is not None:
        monkeypatch.setattr(probe, "TW_SLOT_BITS", slot_bits)
    with netns() as ns:
        servers = [in_ns(ns, "bench.churn", "server", "--port", str(9200 + first), "--workers", "2",
                         *(["--server-closes-first"] if first else []), stdout=subprocess.PIPE, start_new_session=True)
                   for first in (0, 1)]
        try:
            for server in servers:
                assert server.stdout.readline().strip() == "ready"
            traced = Traced(ns)
            clients = [in_ns(ns, "bench.churn", "client", "--port", str(9200 + i % 2), "--seconds", "4",
                             "--dest", f"127.0.0.{i + 1}", *(["--server-closes-first"] if i % 2 else []),
                             stdout=subprocess.PIPE)
                       for i in range(4)]
            traced.wait_for(6, until=lambda events: all(c.poll() is not None for c in clients))
            made = sum(int(c.communicate(timeout=60)[0]) for c in clients)
            # the churn is over: its timewaits still alive stay so until tracing ends (60 s)
            alive = subprocess.run(["ip", "netns", "exec", ns, "ss", "-tanH", "state", "time-wait"],
                                   capture_output=True, text=True, check=True).stdout.count("\n")
            conns, run = traced.result()
        finally:
            for server in servers:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=10)
    mine = conns[conns["comm"].isin(["churn-client", "churn-server"])]
    reasons = mine["tw_end_reason"].value_counts()
    counters = run.counters
    # every life recorded, or its record one of the ring-buffer drops, which are counted
    # (in a failure, the other rows by owner: is a life missing, or there under no churn name?)
    others = conns.drop(mine.index)[["comm", "owner_src", "initiator", "role"]].value_counts(dropna=False)
    assert 2 * made - counters["ringbuf_drops"] <= len(mine) <= 2 * made, (len(mine), 2 * made, counters,
                                                                          others.head(10))
    assert reasons.get("reused", 0) > 1000 and reasons.get("killed", 0) > 1000
    # only a lost end record, or a timer event or ->CLOSE whose program the kernel skipped
    # (BPF recursion on a CPU: a few dozen a run here, most on timer_start), both counted
    assert reasons.get("unknown", 0) <= counters["ringbuf_drops"] + counters["recursion_misses"], (reasons, counters,
                                                                                                   run.programs)
    # the timewaits still followed at the end are those alive, but for the ones never linked;
    # each one ended is no longer followed (its slot freed, or its map entry deleted)
    unlinked = counters["missed_close"] + counters["ringbuf_drops"] + run.programs[
        "tracepoint__timer__timer_start"]["recursion_misses"]
    assert alive > 1000
    assert alive - unlinked <= reasons.get("open", 0) <= alive, (alive, reasons, unlinked)
    # (those of any process: the host's may end or be made meanwhile) every one read at the
    # end is a life's, but for a life whose own record was lost
    open_anywhere = (conns["tw_end_reason"] == "open").sum()
    assert 0 <= run.open_timewaits - open_anywhere <= counters["ringbuf_drops"], (run, open_anywhere)
    # every TIME_WAIT the kernel made is one tcpclose saw made, but for those whose ->CLOSE
    # or timer_start it missed (a classic tracepoint's program skipped: recursion_misses)
    row = traced.counts(conns, run)
    missed = (counters["missed_close"] + counters["ringbuf_drops"] + counters["lives_started"]
              - counters["lives_ended"] + run.programs["tracepoint__timer__timer_start"]["recursion_misses"])
    assert 0 <= row["kernel"]["TW"] - row["tcpclose"]["TW"] <= missed


def test_time_waits_whose_timer_events_went_unseen_are_swept_and_counted(monkeypatch):
    """A followed timewait whose later timer events the programs missed stays followed;
    once its timer must have fired (probe.TW_STALE_AFTER_NS) the tracer drops it, from
    its slot or from the tws map, and counts it as not followed to its end.  Made here by
    ageing two real ones: with two slots, three timewaits fill both places."""
    import numpy as np

    from agent.run import tracer

    monkeypatch.setattr(tracer, "TW_SWEEP_EVERY_S", 0.0)  # a sweep at every drain
    monkeypatch.setattr(probe, "TW_SLOT_BITS", 1)
    with netns() as ns:
        traced = Traced(ns)
        traced.pair("wait_close", "close_first", 3, "tc-echo", "tc-swept")
        loaded = traced.tracer.probe
        states, places = loaded._timewaits()
        ours = np.flatnonzero(states["start_ns"] > time.monotonic_ns() - 30 * 10**9)
        assert len(ours) >= 3  # (the host's own timewaits may be there too)
        in_slot = next(i for i in ours if places[i] >= 0)
        in_map = next(i for i in ours if places[i] < 0)
        for i, (table, key) in [(in_slot, (b"tw_slots", int(places[in_slot]))),
                                (in_map, (b"tws", int(states["timer"][in_map])))]:
            aged = states[i].copy()
            aged["start_ns"] -= probe.TW_STALE_AFTER_NS + 10**9
            table = loaded._bpf[table]
            table[table.Key(key)] = table.Leaf.from_buffer_copy(aged.tobytes())
        traced.tracer.drain()
        assert len(loaded._timewaits()[0]) == len(states) - 2
        conns, run = traced.result()
    assert run.timewaits_swept == 2
    assert sorted(of(conns, "tc-swept")["tw_end_reason"]) == ["open", "unknown", "unknown"]
    assert accounting.unseen(run)["timewait sockets not followed to their end (map full or swept)"] == 2


# A client-side TIME_WAIT, then, once told on stdin, a connect() from its port again: the
# kernel kills it for the new connection (tcp_tw_reuse, on for loopback), maybe a second
# later, once its timestamp allows.  That one ends with a reset: no timewait in the memory
# of the one killed.
REUSED_LATER = """
import socket, struct, sys, time
listener = socket.create_server(("127.0.0.1", 0))
def connection(port=0):
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    client.bind(("127.0.0.1", port))
    client.connect(listener.getsockname())
    server, _ = listener.accept()
    if port:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    port = client.getsockname()[1]
    client.close()
    server.recv(1)
    server.close()
    return port
port = connection()
print(port, flush=True)
sys.stdin.readline()
for _ in range(40):
    try:
        connection(port)
        break
    except OSError:
        time.sleep(0.1)
print("reused", flush=True)
"""


def test_an_end_older_than_the_timewait_its_entry_holds_is_dropped_and_counted():
    """end_timewait in the BPF program: an end read before the start the entry holds is not
    that timewait's (a cancel read on one CPU while another put a new timewait in the entry).
    Made here by moving a real timewait's start past its coming kill: the kill is counted
    in tw_stale_end, not handed over, and the entry stays followed."""
    import numpy as np

    with netns() as ns:
        traced = Traced(ns)
        workload = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", REUSED_LATER],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            port, timer = int(workload.stdout.readline()), 0
            deadline = time.monotonic() + 5
            while not timer and time.monotonic() < deadline:  # its life's record names its timer
                events = decode.decode(joined(traced.tracer.drain()), 0)
                timers = events["tw_timer"][events["lport"] == port].to_numpy(np.uint64)
                timer = int(timers.max()) if len(timers) else 0  # (the host's own lives may come first)
                time.sleep(0.1)
            assert timer, f"no timewait linked to the life on port {port}"
            loaded = traced.tracer.probe
            states, places = loaded._timewaits()
            i = int(np.flatnonzero(states["timer"] == timer)[0])
            later = states[i].copy()
            later["start_ns"] = time.monotonic_ns() + 30 * 10**9
            table, key = ((b"tw_slots", int(places[i])) if places[i] >= 0 else (b"tws", int(states["timer"][i])))
            table = loaded._bpf[table]
            table[table.Key(key)] = table.Leaf.from_buffer_copy(later.tobytes())
            assert traced.tracer.counters()["tw_stale_end"] == 0
            workload.stdin.write("go\n")
            workload.stdin.flush()
            assert workload.stdout.readline().strip() == "reused"
            traced.wait_for(1)  # the kill is decided at the CPU's next timer event
            assert timer in loaded._timewaits()[0]["timer"].tolist()
            run = traced.result()[1]
        finally:
            workload.kill()
            workload.wait()
    # (and again each time its memory is a new timewait's: the entry still holds the cancel)
    assert run.counters["tw_stale_end"] >= 1


def test_fin_wait2_substate_with_a_short_tcp_fin_timeout():
    """tcp_fin_timeout 2 s: the closer's timewait waits 2 s for the peer's FIN, then dies;
    a FIN within that time turns it into a 60 s TIME_WAIT.  The clients close() only once
    their FIN is acknowledged (workload fin_wait2), so the kernel makes the timewait every
    time (a close() right after the FIN sometimes leaves a full FIN_WAIT2 socket instead)."""
    with netns(tcp_fin_timeout=2) as ns:
        traced = Traced(ns)
        traced.pair("hold", "fin_wait2", 1, "tc-quick", "tc-fw2-flip", server_extra=("--hold", "0.5"))
        # the mute server's FIN comes 4 s after it accepted: 2 s after the timewait's end
        # even if the client's close came a second or more late on a loaded machine
        traced.pair("hold", "fin_wait2", 1, "tc-mute", "tc-fw2-dies", server_extra=("--hold", "4"))
        traced.wait_for(1)
        conns, run = traced.result()
        row = traced.counts(conns, run)  # armed for 2 s: the kernel counts them as TWKilled
        assert row["kernel"]["TWKilled"] == row["tcpclose"]["TWKilled"] == 2
        assert row["kernel"]["TW"] == row["tcpclose"]["TW"] == 0
    flip, dies = of(conns, "tc-fw2-flip").iloc[0], of(conns, "tc-fw2-dies").iloc[0]
    assert flip.tw_end_reason == "open"
    assert 0.4 <= flip.tw_fin_wait2_s <= 1.2  # the peer's FIN after 0.5 s
    assert dies.tw_end_reason == "expired"
    assert 2.0 <= dies.tw_s <= 2.2 and dies.tw_fin_wait2_s == pytest.approx(dies.tw_s)


def test_no_time_wait_when_tcp_max_tw_buckets_is_full():
    with netns(tcp_max_tw_buckets=0) as ns:
        traced = Traced(ns)
        traced.pair("wait_close", "close_first", 5, "tc-echo", "tc-closer")
        conns, run = traced.result()
        mine = of(conns, "tc-closer")
        assert set(mine["initiator"]) == {"active"}
        assert set(mine["tw_end_reason"]) == {"none"} and mine["tw_overflow"].all()
        row = traced.counts(conns, run)
        assert row["kernel"]["TCPTimeWaitOverflow"] == row["tcpclose"]["TCPTimeWaitOverflow"] == 5
        summary = text.render(Tally.of(conns, run.started_at), processes.processes(Tally.of(conns, run.started_at), run.ended_at), run)
        assert "5 never made (tcp_max_tw_buckets full" in summary


def test_close_waits_begun_before_tracing_show_with_owner_age_and_fd():
    """A leak older than the trace, and a connection that existed before it and
    that the peer closed during it (ESTABLISHED->CLOSE_WAIT runs in the peer's
    close(), so only the snapshot can name the owner)."""
    procs = []
    try:
        old_leak, port = start_server("leak", 3, "tc-oldleak")
        procs += [old_leak, start_client("close_first", port, 3, "tc-caller")]
        procs[-1].done()
        late_leak, late_port = start_server("leak", 1, "tc-lateleak")
        late_closer = start_client("close_first", late_port, 1, "tc-late", extra=("--hold", "2"))
        procs += [late_leak, late_closer]
        time.sleep(1.0)
        tracer = Tracer(Filters())
        late_closer.done()  # its close() came after tracing began
        time.sleep(0.3)
        kept, run = tracer.finish()
        conns = kept.frame()
    finally:
        for proc in procs:
            proc.release()
    cw = processes.open_close_waits(conns, run.ended_at)

    old = cw[cw["comm"] == "tc-oldleak"]
    assert len(old) == 3 and set(old["pid"]) == {old_leak.pid}
    assert old["partial"].all() and (old["close_wait_age_s"] >= 1.0).all()  # at least the time before tracing
    assert old["fd"].notna().all() and old["fd"].is_unique

    late = cw[cw["comm"] == "tc-lateleak"].iloc[0]
    assert late.pid == late_leak.pid and late.owner_src == "snapshot"
    assert 0 < late.close_wait_age_s < 1.0  # the close came during tracing: its age is exact
    procs_table = processes.processes(Tally.of(conns, run.started_at), run.ended_at).set_index("comm")
    assert procs_table.loc["tc-oldleak", "close_wait_open"] == 3
    assert procs_table.loc["tc-oldleak", "close_wait_max_age_s"] >= 1.0
    summary = text.render(Tally.of(conns, run.started_at), processes.processes(Tally.of(conns, run.started_at), run.ended_at), run)
    assert f"tc-oldleak (pid {old_leak.pid}): 3 sockets in CLOSE_WAIT, oldest at least" in summary
