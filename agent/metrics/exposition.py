"""/metrics in the Prometheus exposition format (prometheus-client), and /healthz.

The agent's loop publishes a Snapshot of its figures now and then (Figures.snapshot) and the
exposition text is rendered from it then, once; a scrape sends that text as it is (and the
agent's own process metrics).  So a scrape never walks sockets, BPF maps or figures: it
answers in the same time however busy the host is and however many workloads it has.
Names follow Prometheus' conventions: a tcpclose_ prefix, base units (seconds), _total on
counters; every one is described in docs/metrics.md.
"""
from __future__ import annotations

import gzip
import threading
import time
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.process_collector import ProcessCollector

from .figures import OTHER, Snapshot

HEALTHY_FOR_S = 10.0  # /healthz fails when the loop has not come round for this long


class Exposition:
    """A prometheus-client collector of the last published Snapshot, and its rendered text."""

    def __init__(self):
        self.current = Snapshot()
        self.alive_at = 0.0  # time.time() of the loop's last round (/healthz)
        self.render_s = 0.0  # what the last publish() took to render
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)
        self._text = self._gzipped = b""
        self._lock = threading.Lock()

    def publish(self, snapshot: Snapshot) -> None:
        """Make `snapshot` what scrapes see, rendered now (not in the scrape)."""
        started = time.perf_counter()
        self.current = snapshot
        text = generate_latest(self._registry)
        with self._lock:  # a scrape sends one text whole
            self._text, self._gzipped = text, b""
        self.alive_at = time.time()
        self.render_s = time.perf_counter() - started

    def alive(self) -> None:
        """The loop came round (it may not publish every round)."""
        self.alive_at = time.time()

    def text(self, gzipped: bool = False) -> bytes:
        """The last published exposition, gzip-compressed once per publish if asked."""
        with self._lock:
            if gzipped and not self._gzipped:
                self._gzipped = gzip.compress(self._text, compresslevel=1)
            return self._gzipped if gzipped else self._text

    def collect(self):
        s = self.current
        yield _counters("tcpclose_closes", "Socket lives ended, by workload and how they ended (active: this "
                        "side closed first; passive; simultaneous; reset_local; reset_remote; never_established; "
                        "close_unseen).", ["workload", "kind"], s.closes)
        yield _counters("tcpclose_timewaits", "TIME_WAITs made by the workload's active closes.", ["workload"],
                        s.timewaits)
        yield _counters("tcpclose_timewait_ends", "TIME_WAITs ended, by reason (expired; reused by a connect(); "
                        "killed by a SYN, an RST or netns teardown; unknown).", ["workload", "reason"], s.timewait_ends)
        for metric, values, text in (
                ("tcpclose_timewait_lifetime_seconds", s.timewait_lifetime,
                 "How long each TIME_WAIT lived, from its timewait socket's creation to its end."),
                ("tcpclose_connection_duration_seconds", s.duration,
                 "How long each connection lived, from its first state change to its close.")):
            family = HistogramMetricFamily(metric, text, labels=["workload"])
            for name, (buckets, total) in sorted(values.items()):
                family.add_metric([name], buckets, total)
            yield family
        open_cw = GaugeMetricFamily("tcpclose_close_wait_sockets", "Sockets in CLOSE_WAIT now: the peer "
                                    "closed, the workload has not.", labels=["workload"])
        oldest = GaugeMetricFamily("tcpclose_close_wait_oldest_seconds", "Age of the workload's oldest "
                                   "CLOSE_WAIT.", labels=["workload"])
        for name, (n, age) in sorted(s.close_waits.items()):
            open_cw.add_metric([name], n)
            oldest.add_metric([name], age)
        yield open_cw
        yield oldest
        yield _counters("tcpclose_timewaits_unlinked", "Closes that were due to leave a TIME_WAIT whose timewait "
                        "timer tcpclose did not see: tcp_max_tw_buckets was reached (see "
                        "tcpclose_timewait_overflows_total), or a timer event was missed.", ["workload"], s.unlinked)
        yield CounterMetricFamily("tcpclose_timewait_overflows", "TIME_WAITs the kernel did not make because "
                                  "tcp_max_tw_buckets was reached (TcpExt TCPTimeWaitOverflow, summed over the "
                                  "network namespaces, since the agent started).", value=s.kernel_overflows)
        held = GaugeMetricFamily("tcpclose_client_timewaits", "TIME_WAITs alive that hold a local port towards a "
                                 "destination (the busiest by name, the rest as destination=\"other\").",
                                 labels=["source", "destination"])
        headroom = GaugeMetricFamily("tcpclose_port_headroom_ratio", "Share of the ephemeral port range still free "
                                     "of TIME_WAITs towards the destination (1: none held; 0: connect() fails "
                                     "with EADDRNOTAVAIL unless tcp_tw_reuse applies).", labels=["source", "destination"])
        for (source, destination), n in sorted(s.held.items()):
            held.add_metric([source, destination], n)
            if s.port_range and destination != OTHER:
                headroom.add_metric([source, destination], max(0.0, 1.0 - n / s.port_range))
        yield held
        yield headroom
        seconds, runs = s.bpf
        yield CounterMetricFamily("tcpclose_bpf_run_seconds", "Time the kernel spent in tcpclose's BPF programs "
                                  "(counted only while kernel.bpf_stats_enabled is 1).", value=seconds)
        yield CounterMetricFamily("tcpclose_bpf_runs", "Runs of tcpclose's BPF programs (counted only while "
                                  "kernel.bpf_stats_enabled is 1).", value=runs)
        lost = CounterMetricFamily("tcpclose_unseen", "What the agent could not see: ring-buffer drops, lives "
                                   "evicted from a full map, transitions the kernel skipped.", labels=["what"])
        for what, n in sorted(s.lost.items()):
            lost.add_metric([what], n)
        yield lost
        yield GaugeMetricFamily("tcpclose_timewaits_followed", "TIME_WAITs made and not yet ended, whose "
                                "workload the agent holds.", value=s.pending)
        yield GaugeMetricFamily("tcpclose_lives_followed", "Socket lives the agent follows now: the sockets "
                                "opened since it started and still open, and lives whose close it has not "
                                "seen (a new life on the same socket ends one, counted in "
                                "tcpclose_unseen_total{what=\"missed_close\"}).", value=s.lives_followed)
        yield CounterMetricFamily("tcpclose_workloads_folded", "Workloads counted under workload=\"other\" "
                                  "because --max-series was reached.", value=s.workloads_folded)
        yield GaugeMetricFamily("tcpclose_last_update_timestamp_seconds", "When the figures this scrape shows "
                                "were published: every second, less often where publishing takes longer "
                                "(docs/metrics.md).",
                                value=s.updated_at)


def _counters(name: str, text: str, labels: list[str], values: dict) -> CounterMetricFamily:
    """A counter family from {label value, or a tuple of them: count}, in label order."""
    family = CounterMetricFamily(name, text, labels=labels)
    for key, n in sorted(values.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], n)
    return family


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # one line a scrape on stderr is noise
        pass


def serve(exposition: Exposition, host: str, port: int) -> WSGIServer:
    """Serve /metrics and /healthz from a thread; returns the server (shutdown() ends it)."""
    own = CollectorRegistry()
    ProcessCollector(registry=own)  # the agent's own CPU seconds and memory: a few lines, read per scrape

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            gzipped = "gzip" in environ.get("HTTP_ACCEPT_ENCODING", "")
            process = generate_latest(own)
            body = exposition.text(gzipped) + (gzip.compress(process, compresslevel=1) if gzipped else process)
            headers = [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))]
            # two gzip members one after the other are one valid gzip stream
            start_response("200 OK", headers + ([("Content-Encoding", "gzip")] if gzipped else []))
            return [body]
        if path == "/healthz":
            fresh = time.time() - exposition.alive_at < HEALTHY_FOR_S
            start_response("200 OK" if fresh else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"ok\n" if fresh else b"stale: the agent has not updated its figures\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"/metrics or /healthz\n"]

    server = make_server(host, port, app, server_class=_Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
