"""What a Prometheus scrape of tcpclose agent costs with many workloads, and how many series
--max-series lets through.

  .venv/bin/python -m bench.scrape [--workloads 1000] [--processes 1000] [--scrapes 50]

No BPF: the agent's own figures (agent.metrics.figures) are fed records made the way the
kernel side makes them, `--processes` processes spread over `--workloads` workloads (each
closing first, with TIME_WAITs that end, a histogram of each kind filled), then served by
the agent's own HTTP server on loopback and scraped `--scrapes` times the way Prometheus
does (gzip).  It prints the series exposed, the bytes of one scrape and the scrape's time
in ms (median, 95th percentile, max), and the time the agent's loop spends publishing what
the scrapes send (a snapshot of the figures and its text).  Nothing here needs root.
"""
from __future__ import annotations

import argparse
import gzip
import statistics
import time
import urllib.request

import numpy as np

from agent.cli.serving import SERIES_PER_WORKLOAD
from agent.metrics.exposition import Exposition, serve
from agent.metrics.figures import Figures
from agent.record import layout

D = layout.DEFINES
CLIENT_STATES = sum(1 << D["TCP_" + s] for s in ("SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2"))


def records(processes: int, per_process: int, start_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """Lives that closed first (one per process and connection, each with its timewait
    socket) and the ends of those timewait sockets."""
    n = processes * per_process
    lives = np.zeros(n, dtype=layout.EVENT_DTYPE)
    lives["kind"] = D["EV_LIFE"]
    lives["pid"] = 1000 + np.repeat(np.arange(processes), per_process)
    lives["comm"] = np.char.encode(np.char.add("proc", (lives["pid"] % 1000).astype(str)))
    lives["owner_src"] = D["OWNER_SYSCALL"]
    lives["states"], lives["last_state"] = CLIENT_STATES, D["TCP_FIN_WAIT2"]
    lives["family"] = 2
    lives["saddr"][:, 0], lives["daddr"][:, 0] = 127, 10
    lives["daddr"][:, 3] = np.arange(n) % 50  # 50 destinations
    lives["dport"] = 8080
    lives["opened_ns"] = start_ns
    lives["ts_ns"] = start_ns + 1_000_000 * (1 + np.arange(n) % 500)  # 1 to 500 ms
    lives["skaddr"] = lives["tw_timer"] = start_ns + np.arange(n) * 256
    lives["tw_start_ns"] = lives["ts_ns"]
    ends = lives.copy()
    ends["kind"] = D["EV_TW_END"]
    ends["tw_end"] = D["TW_EXPIRED"]
    ends["ts_ns"] = lives["tw_start_ns"] + 60_000_000_000 + (np.arange(n) % 1000) * 1_000_000
    return lives, ends


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scrape", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", type=int, default=1000, help="distinct workload labels")
    parser.add_argument("--processes", type=int, default=1000, help="processes spread over the workloads")
    parser.add_argument("--max-series", type=int, default=50_000, help="as tcpclose agent's option")
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args()

    figures = Figures(args.max_series // SERIES_PER_WORKLOAD, port_range=28232)
    lives, ends = records(args.processes, 4, time.monotonic_ns())
    workload_of = lambda pid: f"workload-{(pid - 1000) % args.workloads}"  # noqa: E731  (Tracer.workload_of)
    figures.add(lives, workload_of, now=0.0)
    figures.add(ends, workload_of, now=1.0)
    figures.add(lives.copy(), workload_of, now=2.0)  # TIME_WAITs alive as well as ended
    exposition = Exposition()
    started = time.perf_counter()
    snapshot = figures.snapshot()
    exposition.publish(snapshot)  # as the agent's loop does it: the snapshot, then its text
    publish_ms = (time.perf_counter() - started) * 1e3
    server = serve(exposition, "127.0.0.1", 0)
    # as Prometheus asks: gzip-compressed
    request = urllib.request.Request(f"http://127.0.0.1:{server.server_port}/metrics",
                                     headers={"Accept-Encoding": "gzip"})
    try:
        times, size, text = [], 0, ""
        for _ in range(args.scrapes):
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=30) as response:
                body = response.read()
            times.append((time.perf_counter() - started) * 1e3)
            size, text = len(body), gzip.decompress(body).decode()
    finally:
        server.shutdown()
    series = sum(1 for line in text.splitlines() if line.startswith("tcpclose_"))
    folded = len(figures._folded)
    times.sort()
    print(f"{args.processes:,} processes in {args.workloads:,} workloads, --max-series {args.max_series:,}: "
          f"{len(snapshot.closes):,} workload series of closes ({folded:,} workloads folded into 'other'), "
          f"{series:,} tcpclose series in all, {len(text) / 1024:,.0f} KiB a scrape ({size / 1024:,.0f} KiB gzipped)")
    print(f"scrape: median {statistics.median(times):.1f} ms, p95 {times[int(0.95 * (len(times) - 1))]:.1f} ms, "
          f"max {times[-1]:.1f} ms over {len(times)} scrapes; publishing (snapshot and text, in the agent's loop, "
          f"not in a scrape): {publish_ms:.0f} ms")


if __name__ == "__main__":
    main()
