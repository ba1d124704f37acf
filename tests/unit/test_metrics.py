"""tcpclose agent's figures, from reads of the BPF side's maps and the records it still hands
over, made the way the kernel side makes them: counts per workload and kind, histograms,
ports held per destination, bounded state."""
import ipaddress

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

from agent.metrics.exposition import Exposition
from agent.metrics.figures import DURATION_BUCKETS, TIMEWAIT_BUCKETS, Figures
from agent.metrics.owners import FORGET_AFTER_S
from agent.record import layout
from support.streams import raw

CLIENT = dict(states=("SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2"), last="FIN_WAIT2")
SERVER = dict(states=("SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK"), last="LAST_ACK")


def batch(*records: bytes) -> np.ndarray:
    """Raw records, as Tracer.drain()'s parts joined."""
    return np.frombuffer(b"".join(records), dtype=layout.EVENT_DTYPE)


def exposed(figures: Figures) -> str:
    exposition = Exposition()
    exposition.publish(figures.snapshot())
    registry = CollectorRegistry()
    registry.register(exposition)
    return generate_latest(registry).decode()


def owners(*entries: dict, cpus: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A read of the BPF side's figures map (Probe.read_figures): one entry per owner, each
    dict giving its pid, comm, cgroup_id and counts by field (n as {A_x name: count},
    histograms as {bucket index: count}), the counts split over the CPUs as the kernel
    keeps them, the owner on the first CPU only (the one that made the entry)."""
    values = np.zeros((len(entries), cpus), layout.FIGURES_DTYPE)
    for row, entry in zip(values, entries):
        row[0]["pid"], row[0]["cgroup_id"] = entry.get("pid", 0), entry.get("cgroup_id", 0)
        row[0]["comm"] = entry.get("comm", "").encode()
        for field, counts in entry.items():
            if field in ("pid", "comm", "cgroup_id"):
                continue
            for at, n in (counts.items() if isinstance(counts, dict) else [(None, counts)]):
                index = layout.DEFINES["A_" + at.upper()] if field == "n" else at
                for cpu in range(cpus):  # n // cpus on each, the rest on the last
                    share = n // cpus + (n % cpus if cpu == cpus - 1 else 0)
                    if index is None:
                        row[cpu][field] += share
                    else:
                        row[cpu][field][index] += share
    keys = np.arange(1, len(entries) + 1, dtype=np.uint64) * 0x9E3779B97F4A7C15
    return keys, values


def test_closes_timewaits_their_ends_and_lifetimes_from_the_bpf_figures_summed_over_cpus():
    figures = Figures()
    tw = {"expired": layout.DEFINES["TW_EXPIRED"], "killed": layout.DEFINES["TW_CANCELLED"],
          "reused": layout.DEFINES["TW_REUSED"], "replaced": layout.DEFINES["TW_REPLACED"]}
    life = {b: i for i, b in enumerate(TIMEWAIT_BUCKETS)}  # the bucket of a value just at each bound
    assert figures.add_owner_figures(*owners()) == [] and not figures.closes  # nothing closed yet
    figures.add_owner_figures(*owners(
        dict(pid=10, comm="client", n={"lives": 5, "active": 5, "timewait": 5}, tw_followed=4,
             tw_end={tw["expired"]: 1, tw["killed"]: 1, tw["reused"]: 1, tw["replaced"]: 1, 0: 1},
             tw_life={life[60.5]: 1, life[0.5]: 2}, tw_life_us=61_300_000, duration={3: 5}, duration_us=50_000),
        dict(pid=20, comm="server", n={"lives": 3, "passive": 2, "reset_remote": 1}, duration={0: 3})))
    assert figures.closes == {("client", "active"): 5, ("server", "passive"): 2, ("server", "reset_remote"): 1}
    assert figures.timewaits == {"client": 4}
    # a replaced timewait's end, and one read before its start ([0]), were not seen: unknown
    assert figures.timewait_ends == {("client", "expired"): 1, ("client", "killed"): 1, ("client", "reused"): 1,
                                     ("client", "unknown"): 2}
    text = exposed(figures)
    assert 'tcpclose_closes_total{kind="active",workload="client"} 5.0' in text
    assert 'tcpclose_timewait_lifetime_seconds_bucket{le="0.5",workload="client"} 2.0' in text
    assert 'tcpclose_timewait_lifetime_seconds_bucket{le="60",workload="client"} 2.0' in text
    assert 'tcpclose_timewait_lifetime_seconds_bucket{le="60.5",workload="client"} 3.0' in text
    assert 'tcpclose_timewait_lifetime_seconds_count{workload="client"} 3.0' in text
    assert 'tcpclose_timewait_lifetime_seconds_sum{workload="client"} 61.3' in text
    assert 'tcpclose_connection_duration_seconds_bucket{le="0.01",workload="client"} 5.0' in text
    assert 'tcpclose_connection_duration_seconds_bucket{le="0.005",workload="client"} 0.0' in text
    assert 'tcpclose_connection_duration_seconds_count{workload="server"} 3.0' in text
    # the map's counts only grow: the next read replaces this one, it is not added to it
    figures.add_owner_figures(*owners(dict(pid=10, comm="client", n={"lives": 6, "active": 6}),
                                      dict(pid=20, comm="server", n={"lives": 3, "passive": 2, "reset_remote": 1})))
    assert figures.closes[("client", "active")] == 6


def test_the_histogram_bounds_are_the_bpf_sides():
    """The buckets exported are the ones the BPF program counts in (bpf/tcpclose.h), in seconds."""
    assert len(TIMEWAIT_BUCKETS) == layout.DEFINES["NR_TW_BOUNDS"] and 60.0 in TIMEWAIT_BUCKETS
    assert len(DURATION_BUCKETS) == layout.DEFINES["NR_DURATION_BOUNDS"] and DURATION_BUCKETS[0] == 0.0005


def test_a_workload_is_the_container_else_the_unit_else_the_name_and_they_are_bounded():
    from agent.kernel.cgroups import workload

    paths = {10: "/system.slice/docker-" + "ab" * 32 + ".scope", 11: "/system.slice/nginx.service", 12: "/"}
    asked = []

    def namer(pids, cgroup_ids):  # (Owners.workloads_of, from /proc)
        asked.extend(pids.tolist())
        return [workload(paths[pid]).name for pid in pids.tolist()]

    figures = Figures(max_workloads=2, namer=namer)
    entries = [dict(pid=10, comm="app", n={"active": 1}), dict(pid=11, comm="nginx", n={"passive": 1}),
               dict(pid=12, comm="third", n={"passive": 1}), dict(comm="", n={"passive": 2})]
    figures.add_owner_figures(*owners(*entries))
    assert figures.closes == {("docker:" + "ab" * 6, "active"): 1, ("nginx.service", "passive"): 1,
                              ("other", "passive"): 3}  # the third, and the owners never learnt
    assert "tcpclose_workloads_folded_total 2.0" in exposed(figures)  # "third" and "unknown"
    figures.add_owner_figures(*owners(*entries))
    assert sorted(asked) == [10, 11, 12]  # each owner learnt is named once


def test_the_entries_of_processes_gone_are_deleted_once_still_and_their_counts_kept():
    alive = {10}
    figures = Figures()
    figures.owners._alive = lambda pid: pid in alive
    gone_and_still = dict(pid=11, comm="cron", n={"lives": 4, "active": 4}, tw_end={1: 4}, tw_life={9: 4})
    read = lambda t, *more: figures.add_owner_figures(  # noqa: E731
        *owners(dict(pid=10, comm="web", n={"lives": 2, "passive": 2}), gone_and_still, *more), now=t)
    assert read(0.0) == []
    assert read(FORGET_AFTER_S - 1) == []  # not long enough
    keys = owners(*[{}] * 3)[0]
    gone_and_moving = dict(pid=12, comm="job", n={"lives": 1, "active": 1})
    assert read(FORGET_AFTER_S, gone_and_moving) == [int(keys[1])]  # the live one and the one just met stay
    # what the map no longer holds is still counted: a counter never goes down
    figures.add_owner_figures(*owners(dict(pid=10, comm="web", n={"lives": 2, "passive": 2})), now=FORGET_AFTER_S + 1)
    assert figures.closes == {("web", "passive"): 2, ("cron", "active"): 4}
    assert figures.timewait_ends == {("cron", "expired"): 4}
    assert figures.timewait_lifetime["cron"].counts.sum() == 4


def test_timewaits_swept_ended_unseen_and_gave_their_port_back():
    figures = Figures(port_range=100)
    keys, values = owners(dict(pid=10, comm="client", n={"lives": 3, "active": 3}, tw_followed=3))
    held_keys, held = destinations(("10.0.0.9", "10.0.0.1", 5432, 3))
    swept = np.zeros(2, [("owner", "<u8"), ("held", "<u8")])
    swept["owner"], swept["held"] = keys[0], held_keys[0]
    figures.note_swept(swept)
    figures.add_owner_figures(keys, values)
    figures.set_held(held_keys, held, followed=1)
    assert figures.timewait_ends == {("client", "unknown"): 2}
    assert figures.held == {("10.0.0.9", "10.0.0.1:5432"): 1}
    assert "tcpclose_timewaits_followed 1.0" in exposed(figures)


def test_close_waits_open_now_by_workload_with_the_oldest():
    figures = Figures()
    figures.set_close_waits(batch(*(raw("open", skaddr=i, pid=20, comm="leaky", close_wait=90.0 + i, ts=0,
                                        states=("SYN_RECV", "ESTABLISHED", "CLOSE_WAIT"), last="CLOSE_WAIT")
                                    for i in range(1, 4)),
                                  raw("open", skaddr=9, pid=21, comm="busy", ts=0, last="ESTABLISHED",
                                      states=("SYN_RECV", "ESTABLISHED"))),
                            now_ns=100 * 10**9)
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
                      raw(skaddr=4, pid=10, comm="client", tw_timer=0x400, tw_start=2.0, **CLIENT)), now=0.0)
    figures.add(batch(raw("reset_sent", skaddr=2, pid=10, comm="client", states=(), last="CLOSE")), now=0.5)
    assert not figures.unlinked  # not yet: a reset may still come
    figures.add(batch(), now=1.5)
    assert figures.unlinked == {"client": 1}
    text = exposed(figures)
    assert 'tcpclose_timewaits_unlinked_total{workload="client"} 1.0' in text
    # where the BPF side follows no timer, a missing one says nothing
    blind = Figures(follows_timewaits=False)
    blind.add(batch(raw(skaddr=1, pid=10, comm="client", **CLIENT)), now=0.0)
    blind.add(batch(), now=5.0)
    assert not blind.unlinked


def test_the_kernels_overflows_are_summed_over_namespaces_from_the_first_reading():
    figures = Figures()
    reading = lambda **n: {ns: {"counters": {"TCPTimeWaitOverflow": v}} for ns, v in n.items()}  # noqa: E731
    figures.note_kernel_counters(reading(host=7, web=3))  # before the agent: not counted
    figures.note_kernel_counters(reading(host=9, web=3, new=4))  # a namespace made since counts from 0
    figures.note_kernel_counters(reading(host=10))  # one removed takes nothing back
    assert figures.kernel_overflows == 2 + 4 + 1
    assert "tcpclose_timewait_overflows_total 7.0" in exposed(figures)


def destinations(*held: tuple, cpus: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A read of the BPF side's held map (Probe.read_held): (source, address, port, client
    TIME_WAITs alive) each, made on the first CPU; the last CPU counts the ends, which may
    leave a CPU's count below 0."""
    values = np.zeros((len(held), cpus), layout.HELD_DTYPE)
    for row, (laddr, raddr, port, n) in zip(values, held):
        local, remote = ipaddress.ip_address(laddr), ipaddress.ip_address(raddr)
        row[0]["saddr"][:len(local.packed)] = list(local.packed)
        row[0]["daddr"][:len(remote.packed)] = list(remote.packed)
        row[0]["dport"], row[0]["family"] = port, 10 if remote.version == 6 else 2
        row[0]["n"], row[cpus - 1]["n"] = n + 7, row[cpus - 1]["n"] - 7  # (7 made on one CPU, ended on another)
    return np.arange(1, len(held) + 1, dtype=np.uint64) * 0x1000193, values


def test_client_time_waits_held_per_destination_with_the_headroom_they_leave():
    figures = Figures(port_range=100, top_destinations=2)
    figures.set_held(*destinations(("10.0.0.9", "10.0.0.1", 5432, 5), ("10.0.0.9", "10.0.0.2", 80, 3),
                                   ("fd00::9", "fd00::3", 443, 1), ("10.0.0.9", "10.0.0.4", 80, 0)), followed=9)
    assert figures.held == {("10.0.0.9", "10.0.0.1:5432"): 5, ("10.0.0.9", "10.0.0.2:80"): 3, ("other", "other"): 1}
    text = exposed(figures)
    assert 'tcpclose_client_timewaits{destination="10.0.0.1:5432",source="10.0.0.9"} 5.0' in text
    assert 'tcpclose_port_headroom_ratio{destination="10.0.0.1:5432",source="10.0.0.9"} 0.95' in text
    assert 'tcpclose_client_timewaits{destination="other",source="other"} 1.0' in text
    assert 'tcpclose_port_headroom_ratio{destination="other"' not in text
    assert 'destination="10.0.0.4:80"' not in text  # none alive
    wide = Figures(top_destinations=5)
    wide.set_held(*destinations(("fd00::9", "fd00::3", 443, 2)), followed=2)
    assert wide.held == {("fd00::9", "[fd00::3]:443"): 2}


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
    figures.add_owner_figures(*owners(dict(pid=10, comm="client", n={"lives": 1, "active": 1})))
    exposition = Exposition()
    exposition.publish(figures.snapshot())
    figures.add_owner_figures(*owners(dict(pid=10, comm="client", n={"lives": 2, "active": 2})))  # not published yet
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


def test_an_owner_is_placed_by_its_pid_while_it_lives_else_by_its_cgroup_id(monkeypatch):
    """The agent names owners when it first reads them, up to a second after their lives
    ended: a process gone by then is placed by the cgroup id the BPF side recorded."""
    from agent.kernel import cgroups, pods, procfs
    from agent.kernel import netns as namespaces
    from agent.run.owners import Owners

    alive = {10: ("/system.slice/nginx.service", "nginx")}
    monkeypatch.setattr(cgroups, "cgroup_of", lambda pid, proc=None: alive.get(pid, (None,))[0])
    monkeypatch.setattr(procfs, "process_comm", lambda pid: alive.get(pid, (None, None))[1])
    monkeypatch.setattr(namespaces, "netns_id", lambda pid=None: None)
    monkeypatch.setattr(pods, "pod_of", lambda runtime, container_id: None)
    monkeypatch.setattr(cgroups, "paths_by_id", lambda root=None: {4242: "/system.slice/docker-" + "ab" * 32 + ".scope",
                                                                    77: "/user.slice"})
    names = Owners().workloads_of(np.array([10, 11, 12, 13], np.uint32), np.array([1, 4242, 77, 0], np.uint64))
    assert names == ["nginx.service", "docker:" + "ab" * 6, None, None]  # (None: its thread name stands)
