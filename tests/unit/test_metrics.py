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
                 lport=40000 + i, **CLIENT) for i in range(3)]
    lives.append(raw(skaddr=9, pid=20, comm="server", opened=1.0, ts=1.5, lport=8080, **SERVER))
    figures.add(batch(*lives), by_name, now=0.0)
    assert figures.closes == {("client", "active"): 3, ("server", "passive"): 1}
    assert figures.timewaits == {"client": 3} and len(figures.pending) == 3
    # the ends come later: one expires after 60.2 s, one is cancelled after 0.3 s; one stays open
    figures.add(batch(timewait("expired", timer=0x100, start=1.5, end=61.7),
                      timewait("cancelled", timer=0x101, start=1.5, end=1.8)), by_name, now=70.0)
    assert figures.timewait_ends == {("client", "expired"): 1, ("client", "cancelled"): 1}
    assert len(figures.pending) == 1  # what is held is what is alive
    text = exposed(figures)
    assert 'tcpclose_closes_total{kind="active",workload="client"} 3.0' in text
    assert 'tcpclose_timewait_lifetime_seconds_bucket{le="0.5",workload="client"} 1.0' in text
    assert 'tcpclose_timewait_lifetime_seconds_bucket{le="60.5",workload="client"} 2.0' in text
    assert 'tcpclose_timewait_lifetime_seconds_bucket{le="60",workload="client"} 1.0' in text  # 60.2 s: not <= 60
    assert 'tcpclose_timewait_lifetime_seconds_count{workload="client"} 2.0' in text
    assert 'tcpclose_connection_duration_seconds_count{workload="server"} 1.0' in text
    # an end never seen: after PENDING_FOR_S its TIME_WAIT counts as ended for an unknown reason
    figures.add(batch(), by_name, now=1000.0)
    assert figures.timewait_ends[("client", "unknown")] == 1 and not figures.pending


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
