"""What a Prometheus scrape of tcpclose agent costs with many workloads, and how many series
--max-series lets through.

  .venv/bin/python -m bench.scrape [--workloads 1000] [--processes 1000] [--scrapes 50]

No BPF: the agent's own figures (agent.metrics.figures) are fed reads of the BPF side's maps
made the way the kernel side makes them, `--processes` processes spread over `--workloads`
workloads (each closing first, with TIME_WAITs that end, a histogram of each kind filled,
client TIME_WAITs alive towards 50 destinations), then served by
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
CPUS = 2


def owner_figures(processes: int, per_process: int) -> tuple[np.ndarray, np.ndarray]:
    """A read of the figures map (Probe.read_figures): each process's lives closed first, each
    with its TIME_WAIT ended, lifetimes and durations spread over the buckets."""
    values = np.zeros((processes, CPUS), layout.FIGURES_DTYPE)
    first = values[:, 0]  # (the owner is written on the CPU that made the entry)
    first["pid"] = 1000 + np.arange(processes)
    first["comm"] = np.char.encode(np.char.add("proc", (first["pid"] % 1000).astype(str)))
    for kind in ("LIVES", "ACTIVE", "TIMEWAIT"):
        values["n"][:, :, D["A_" + kind]] = per_process
    values["tw_followed"] = per_process
    values["tw_end"][:, :, D["TW_EXPIRED"]] = per_process
    values["tw_life"][:, :, 9:12] = 1  # (60 s, give or take)
    values["duration"][:, :, :5] = 1
    return np.arange(1, processes + 1, dtype=np.uint64), values


def held(destinations: int, per_destination: int) -> tuple[np.ndarray, np.ndarray]:
    """A read of the held map (Probe.read_held): client TIME_WAITs alive towards each destination."""
    values = np.zeros((destinations, CPUS), layout.HELD_DTYPE)
    first = values[:, 0]
    first["n"], first["family"], first["dport"] = per_destination, 2, 8080
    first["saddr"][:, 0], first["daddr"][:, 0], first["daddr"][:, 3] = 127, 10, np.arange(destinations)
    return np.arange(1, destinations + 1, dtype=np.uint64), values


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scrape", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", type=int, default=1000, help="distinct workload labels")
    parser.add_argument("--processes", type=int, default=1000, help="processes spread over the workloads")
    parser.add_argument("--max-series", type=int, default=50_000, help="as tcpclose agent's option")
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args()

    namer = lambda pids, cgroup_ids: [f"workload-{(pid - 1000) % args.workloads}" for pid in pids.tolist()]  # noqa: E731
    figures = Figures(args.max_series // SERIES_PER_WORKLOAD, port_range=28232, namer=namer)
    figures.add_owner_figures(*owner_figures(args.processes, 4))
    figures.set_held(*held(50, 4), followed=200)
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
