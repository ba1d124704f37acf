"""tcpclose agent's figures, from record batches made the way the kernel side makes them:
counts per workload and kind, TIME_WAIT lifetimes joined across batches, bounded state."""
import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

from agent.metrics.exposition import Exposition
from agent.metrics.figures import Figures
from agent.record import layout
from support.streams import raw, timewait

CLIENT = dict(states=("SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2"), last="FIN_WAIT2")
SERVER = dict(states=("SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK"), last="LAST_ACK")


def batch(*records: bytes) -> np.ndarray:
    """Raw records, as Tracer.drain() returns them."""
    return np.frombuffer(b"".join(records), dtype=layout.EVENT_DTYPE)


def by_name(pid: int) -> None:
    """An owner the tracer could not place: its thread name from the record stands."""
    return None


def exposed(figures: Figures) -> str:
    exposition = Exposition()
    exposition.publish(figures.snapshot())
    registry = CollectorRegistry()
    registry.register(exposition)
    return generate_latest(registry).decode()


def test_closes_timewaits_and_their_lifetimes_across_batches():
    figures = Figures()
    lives = [raw(skaddr=i + 1, pid=10, comm="client", opened=1.0, ts=1.5, tw_timer=0x100 + i, tw_start=1.5,
                 lport=40000 + i, **CLIENT) for i in range(4)]
    lives.append(raw(skaddr=9, pid=20, comm="server", opened=1.0, ts=1.5, lport=8080, **SERVER))
    figures.add(batch(*lives), by_name, now=0.0)
    assert figures.closes == {("client", "active"): 4, ("server", "passive"): 1}
    assert figures.timewaits == {"client": 4} and len(figures.pending) == 4
    # the ends come later: one expires after 60.2 s, one is killed after 0.3 s, one reused by
    # a connect() after 0.4 s (the BPF side marks those); one stays open
    figures.add(batch(timewait("expired", timer=0x100, start=1.5, end=61.7),
                      timewait("cancelled", timer=0x101, start=1.5, end=1.8),
                      timewait("reused", timer=0x103, start=1.5, end=1.9)), by_name, now=70.0)
    assert figures.timewait_ends == {("client", "expired"): 1, ("client", "killed"): 1, ("client", "reused"): 1}
    assert len(figures.pending) == 1  # what is held is what is alive
    text = exposed(figures)
    assert 'tcpclose_closes_total{kind="active",workload="client"} 4.0' in text
    assert 'tcpclose_timewait_lifetime_seconds_bucket{le="0.5",workload="client"} 2.0' in text
    assert 'tcpclose_timewait_lifetime_seconds_bucket{le="60.5",workload="client"} 3.0' in text
    assert 'tcpclose_timewait_lifetime_seconds_bucket{le="60",workload="client"} 2.0' in text  # 60.2 s: not <= 60
    assert 'tcpclose_timewait_lifetime_seconds_count{workload="client"} 3.0' in text
    assert 'tcpclose_connection_duration_seconds_count{workload="server"} 1.0' in text
    # an end never seen: after PENDING_FOR_S its TIME_WAIT counts as ended for an unknown reason
    figures.add(batch(), by_name, now=1000.0)
    assert figures.timewait_ends[("client", "unknown")] == 1 and not len(figures.pending)


def test_a_workload_is_the_container_else_the_unit_else_the_name_and_they_are_bounded():
    from agent.kernel.cgroups import workload

    figures = Figures(max_workloads=2)
    paths = {10: "/system.slice/docker-" + "ab" * 32 + ".scope", 11: "/system.slice/nginx.service", 12: "/"}
    placed = lambda pid: workload(paths[pid]).name  # noqa: E731  (Tracer.workload_of, from /proc)
    figures.add(batch(raw(skaddr=1, pid=10, comm="app", **CLIENT)), placed)
    figures.add(batch(raw(skaddr=2, pid=11, comm="nginx", **SERVER)), placed)
    figures.add(batch(raw(skaddr=3, pid=12, comm="third", **SERVER)), placed)
    assert set(figures.closes) == {("docker:" + "ab" * 6, "active"), ("nginx.service", "passive"),
                                   ("other", "passive")}
    assert "tcpclose_workloads_folded_total 1.0" in exposed(figures)


def test_close_waits_open_now_by_workload_with_the_oldest():
    figures = Figures()
    figures.set_close_waits(batch(*(raw("open", skaddr=i, pid=20, comm="leaky", close_wait=90.0 + i, ts=0,
                                        states=("SYN_RECV", "ESTABLISHED", "CLOSE_WAIT"), last="CLOSE_WAIT")
                                    for i in range(1, 4)),
                                  raw("open", skaddr=9, pid=21, comm="busy", ts=0, last="ESTABLISHED",
                                      states=("SYN_RECV", "ESTABLISHED"))),
                            by_name, now_ns=100 * 10**9)
    assert figures.close_waits == {"leaky": (3, 9.0)}  # the open life not in CLOSE_WAIT is not counted
    text = exposed(figures)
    assert 'tcpclose_close_wait_sockets{workload="leaky"} 3.0' in text
    assert 'tcpclose_close_wait_oldest_seconds{workload="leaky"} 9.0' in text
    stamp = [line for line in text.splitlines() if line.startswith("tcpclose_last_update_timestamp_seconds ")]
    assert np.isclose(float(stamp[0].split()[1]), figures.snapshot().updated_at, atol=5)


def test_a_close_due_a_time_wait_whose_timer_was_not_seen_is_unlinked_unless_a_reset_followed():
    figures = Figures()
    partial = layout.DEFINES["FLAG_PARTIAL"]
    figures.add(batch(raw(skaddr=1, pid=10, comm="client", **CLIENT),  # no timer seen: unlinked?
                      raw(skaddr=2, pid=10, comm="client", **CLIENT),  # no timer, then a reset
                      raw(skaddr=3, pid=10, comm="client", flags=partial, **CLIENT),  # seen mid-life
                      raw(skaddr=4, pid=10, comm="client", tw_timer=0x400, tw_start=2.0, **CLIENT)), by_name, now=0.0)
    figures.add(batch(raw("reset_sent", skaddr=2, pid=10, comm="client", states=(), last="CLOSE")), by_name, now=0.5)
    assert not figures.unlinked  # not yet: a reset may still come
    figures.add(batch(), by_name, now=1.5)
    assert figures.unlinked == {"client": 1}
    text = exposed(figures)
    assert 'tcpclose_timewaits_unlinked_total{workload="client"} 1.0' in text
    # where the BPF side follows no timer, a missing one says nothing
    blind = Figures(follows_timewaits=False)
    blind.add(batch(raw(skaddr=1, pid=10, comm="client", **CLIENT)), by_name, now=0.0)
    blind.add(batch(), by_name, now=5.0)
    assert not blind.unlinked


def test_the_kernels_overflows_are_summed_over_namespaces_from_the_first_reading():
    figures = Figures()
    reading = lambda **n: {ns: {"counters": {"TCPTimeWaitOverflow": v}} for ns, v in n.items()}  # noqa: E731
    figures.note_kernel_counters(reading(host=7, web=3))  # before the agent: not counted
    figures.note_kernel_counters(reading(host=9, web=3, new=4))  # a namespace made since counts from 0
    figures.note_kernel_counters(reading(host=10))  # one removed takes nothing back
    assert figures.kernel_overflows == 2 + 4 + 1
    assert "tcpclose_timewait_overflows_total 7.0" in exposed(figures)


def test_a_servers_time_waits_are_named_no_destination_once_a_batch_whatever_their_peers(monkeypatch):
    """A server's TIME_WAITs hold no local port: each batch names its destinations once per
    distinct one, and all of a server's peers (each a port of its own) are one, None."""
    from agent.metrics.pending import Pending

    named = []
    real = Pending._destination
    monkeypatch.setattr(Pending, "_destination", lambda self, key: named.append(key) or real(self, key))
    figures = Figures()
    records = [raw(skaddr=i + 1, pid=20, comm="server", lport=8080, rport=30000 + i, tw_timer=0x9000 + 0x100 * i,
                   tw_start=2.0, states=("SYN_RECV", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2"), last="FIN_WAIT2")
               for i in range(300)]
    records += [raw(skaddr=1000 + i, pid=10, comm="client", lport=40000 + i, rport=5432, tw_timer=0x90000 + 0x100 * i,
                    tw_start=2.0, **CLIENT) for i in range(300)]
    figures.add(batch(*records), by_name, now=0.0)
    assert len(named) <= 2  # the client's one destination, and the server's None
    assert figures.pending.held == {("127.0.0.1", "127.0.0.1:5432"): 300}


def test_client_time_waits_held_per_destination_with_the_headroom_they_leave():
    figures = Figures(port_range=100, top_destinations=2)
    to = [("10.0.0.1", 5432, 5), ("10.0.0.2", 80, 3), ("fd00::3", 443, 1)]
    records, timer = [], 0x1000
    for raddr, rport, n in to:
        family = 6 if ":" in raddr else 4
        laddr = "fd00::9" if family == 6 else "10.0.0.9"
        for _ in range(n):
            timer += 0x100
            records.append(raw(skaddr=timer, pid=10, comm="client", family=family, laddr=laddr, raddr=raddr,
                               rport=rport, tw_timer=timer, tw_start=2.0, **CLIENT))
    # a server's TIME_WAIT holds its listening port's 4-tuple, not an ephemeral port
    records.append(raw(skaddr=1, pid=20, comm="server", tw_timer=0x9000, tw_start=2.0,
                       states=("SYN_RECV", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2"), last="FIN_WAIT2"))
    figures.add(batch(*records), by_name, now=0.0)
    assert figures.pending.busiest(2) == {("10.0.0.9", "10.0.0.1:5432"): 5, ("10.0.0.9", "10.0.0.2:80"): 3,
                                 ("other", "other"): 1}
    text = exposed(figures)
    assert 'tcpclose_client_timewaits{destination="10.0.0.1:5432",source="10.0.0.9"} 5.0' in text
    assert 'tcpclose_port_headroom_ratio{destination="10.0.0.1:5432",source="10.0.0.9"} 0.95' in text
    assert 'tcpclose_client_timewaits{destination="other",source="other"} 1.0' in text
    assert 'tcpclose_port_headroom_ratio{destination="other"' not in text
    # a TIME_WAIT's end gives its port back: 10.0.0.1:5432 goes from 5 to 1
    ends = [timewait("expired", timer=0x1000 + 0x100 * i, start=2.0, end=62.0) for i in range(1, 5)]
    figures.add(batch(*ends), by_name, now=60.0)
    assert figures.pending.held == {("10.0.0.9", "10.0.0.2:80"): 3, ("10.0.0.9", "10.0.0.1:5432"): 1,
                            ("fd00::9", "[fd00::3]:443"): 1}
    # ends never seen: after PENDING_FOR_S every one is given back
    figures.add(batch(), by_name, now=1000.0)
    assert figures.pending.busiest(2) == {} and not figures.pending.held


def test_the_programs_run_time_is_exported():
    figures = Figures()
    figures.bpf = (1.25, 4000)
    text = exposed(figures)
    assert "tcpclose_bpf_run_seconds_total 1.25" in text and "tcpclose_bpf_runs_total 4000.0" in text


def test_a_scrape_sends_what_was_published_last_plain_or_gzipped_without_rendering_it():
    import gzip
    import urllib.request

    from agent.metrics.exposition import serve

    figures = Figures()
    figures.add(batch(raw(skaddr=1, pid=10, comm="client", tw_timer=0x100, tw_start=1.5, **CLIENT)), by_name, now=0)
    exposition = Exposition()
    exposition.publish(figures.snapshot())
    figures.add(batch(raw(skaddr=2, pid=10, comm="client", **CLIENT)), by_name, now=1)  # not published yet
    server = serve(exposition, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            plain = response.read().decode()
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept-Encoding": "gzip"}),
                                    timeout=10) as response:
            assert response.headers["Content-Encoding"] == "gzip"
            zipped = gzip.decompress(response.read()).decode()
    finally:
        server.shutdown()
    for text in (plain, zipped):
        assert 'tcpclose_closes_total{kind="active",workload="client"} 1.0' in text
        assert "process_resident_memory_bytes" in text  # the agent's own, read per scrape
    exposition.publish(figures.snapshot())
    assert 'tcpclose_closes_total{kind="active",workload="client"} 2.0' in exposition.text().decode()


def test_a_time_wait_whose_end_never_comes_is_given_up_130_to_260_s_after_it_was_made():
    figures = Figures()
    made = lambda skaddr, at: figures.add(batch(raw(skaddr=skaddr, pid=10, comm="client", tw_timer=0x100 * skaddr,  # noqa: E731
                                                    tw_start=1.0 + at, **CLIENT)), by_name, now=at)
    made(1, 0.0)
    made(2, 125.0)
    made(3, 129.0)
    assert len(figures.pending) == 3
    made(4, 131.0)  # a new generation: none is given up before 130 s
    assert len(figures.pending) == 4 and not figures.timewait_ends
    made(5, 262.0)  # the first three are given up; the one made at 131 s is kept
    assert figures.timewait_ends == {("client", "unknown"): 3}
    assert set(figures.pending.entries()) == {(0x400, int((1.0 + 131.0) * 1e9)), (0x500, int((1.0 + 262.0) * 1e9))}
