"""`make bench`: the workload's connection rate untraced, under tcpclose and under bcc's tcpstates.

  sudo .venv/bin/python -m agent.bench [--seconds S] [--repeats R] [--clients C] [--rates 0,6000]

Each measurement runs the churn generator (agent.churn) in a network
namespace of its own, with one client process per 127.0.0.x destination and
a rate of 0 meaning as fast as it can.  For each rate it prints one table:
the median rate of each mode over the repeats, its ratio to the untraced
median of the same invocation, socket lives expected (2 per connection) vs
reported, ring-buffer drops, the tracer's CPU (cores) and peak RSS while the
workload ran, and its time from start to 'Tracing'.  "skipped" counts the
transitions the kernel did not run the program for (BPF recursion on a CPU);
"kernel TW" is the namespace's TcpExt TW counter, to hold against the client
lives reported (each makes one TIME_WAIT); "TW end unknown" counts the
TIME_WAITs whose timer events were missed (end unknown, or never claimed).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from .summary import evicted

PORT = 9000
TCPSTATES = "/usr/sbin/tcpstates-bpfcc"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Namespace:
    def __init__(self):
        self.name = f"tcpclose-bench-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"], check=True)

    def popen(self, *args, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.name, sys.executable, *args], **kwargs)

    def tcp_ext(self) -> dict[str, int]:
        """The namespace's TcpExt counters (/proc/net/netstat is per network namespace)."""
        text = subprocess.run(["ip", "netns", "exec", self.name, "cat", "/proc/net/netstat"],
                              capture_output=True, text=True, check=True).stdout.splitlines()
        names, values = (line.split()[1:] for line in text if line.startswith("TcpExt:"))
        return dict(zip(names, map(int, values)))

    def delete(self):
        subprocess.run(["ip", "netns", "del", self.name], check=False)


# tcpclose's modes: the arguments each adds to `tcpclose trace`
TCPCLOSE_MODES = {
    "tcpclose": [],
    "tcpclose --timewait none": ["--timewait", "none"],
    "tcpclose --aggregates": ["--aggregates"],
}
MODES = ["untraced", *TCPCLOSE_MODES, "tcpstates"]


def start_tracer(mode: str, out: Path) -> tuple[subprocess.Popen, float]:
    """Start a tracer and wait until it is attached; return it and its start-up time."""
    start = time.monotonic()
    if mode in TCPCLOSE_MODES:
        proc = subprocess.Popen([sys.executable, "-m", "agent", "trace", "-o", str(out), *TCPCLOSE_MODES[mode]],
                                stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        line = proc.stderr.readline()
        if not line.startswith("Tracing"):
            raise SystemExit(f"tcpclose did not start: {line}{proc.stderr.read()}")
    else:  # tcpstates prints its header once attached; its output goes to a file it may fill
        with open(out / "tcpstates.txt", "w") as log:
            proc = subprocess.Popen([TCPSTATES], stdout=log, stderr=subprocess.STDOUT)
        while (out / "tcpstates.txt").stat().st_size == 0:
            if proc.poll() is not None:
                raise SystemExit("tcpstates-bpfcc did not start")
            time.sleep(0.05)
    return proc, time.monotonic() - start


def measure(mode: str, seconds: float, clients: int, rate: float) -> dict:
    ns = Namespace()
    out = Path(tempfile.mkdtemp(prefix="tcpclose-bench-"))
    server = ns.popen("-m", "agent.churn", "server", "--port", str(PORT), "--workers", "2",
                      stdout=subprocess.PIPE, text=True, start_new_session=True)
    tracer = None
    try:
        for _ in range(2):
            server.stdout.readline()
        row: dict = {"mode": mode}
        if mode != "untraced":
            tracer, row["start_s"] = start_tracer(mode, out)
            cpu0 = _cpu_s(tracer.pid)
        per_client = ["--rate", str(rate / clients)] if rate else []
        workers = [ns.popen("-m", "agent.churn", "client", "--port", str(PORT), "--seconds", str(seconds),
                            "--dest", f"127.0.0.{i + 1}", *per_client, stdout=subprocess.PIPE, text=True)
                   for i in range(clients)]
        connections = sum(int(w.communicate()[0]) for w in workers)
        row["rate"] = connections / seconds
        row["lives_expected"] = 2 * connections
        if tracer:
            row["cpu_cores"] = (_cpu_s(tracer.pid) - cpu0) / seconds
            row["rss_mib"] = _peak_rss_mib(tracer.pid)
            time.sleep(0.5)  # the servers' last closes
            tracer.send_signal(signal.SIGINT)
            tracer.communicate(timeout=600)
        if mode in TCPCLOSE_MODES:
            run = json.loads((out / "run.json").read_text())
            if "aggregates" in run:  # per-process counts only: the churn processes' lives
                per_comm = pd.read_csv(out / "processes.csv").groupby("comm")["connections"].sum()
                row["lives_reported"] = int(per_comm.get("churn-client", 0) + per_comm.get("churn-server", 0))
                row["client_lives"] = int(per_comm.get("churn-client", 0))
                conns = pd.DataFrame({"tw_end_reason": []})
            else:
                conns = pd.read_csv(out / "connections.csv", usecols=["lport", "rport", "tw_end_reason"])
                row["lives_reported"] = int(((conns["lport"] == PORT) | (conns["rport"] == PORT)).sum())
                row["client_lives"] = int((conns["rport"] == PORT).sum())
            counters = run["counters"]
            row["drops"] = counters["ringbuf_drops"]
            row["evicted"] = evicted(run)
            row["skipped"] = counters.get("recursion_misses", 0)
            # the kernel's own count of timewait sockets made (per namespace): one per client life here
            row["kernel_tw"] = ns.tcp_ext().get("TW", 0)
            # TIME_WAITs whose end the timers lost, and timers no close claimed (0 with --timewait none)
            row["tw_unknown"] = int((conns["tw_end_reason"] == "unknown").sum()) + counters.get("tw_unlinked", 0)
        if mode == "tcpstates":
            text = (out / "tcpstates.txt").read_text(errors="replace")
            row["drops"] = sum(int(w) for line in text.splitlines() if "Possibly lost" in line
                               for w in line.split() if w.isdigit())
        return row
    finally:
        if tracer and tracer.poll() is None:
            tracer.kill()
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        ns.delete()
        shutil.rmtree(out, ignore_errors=True)


def table(rows: list[dict], rate: float) -> Table:
    frame = pd.DataFrame(rows)
    medians = frame.groupby("mode", sort=False).median(numeric_only=True)
    base = medians.loc["untraced", "rate"]
    title = f"target rate: {'maximum' if not rate else f'{rate:g}/s'}, {frame.groupby('mode').size().iloc[0]} repeat(s), medians"
    out = Table(title=title)
    for column in ["mode", "conn/s", "ratio", "lives expected", "lives reported", "lost", "drops", "evicted", "skipped", "client lives", "kernel TW", "TW end unknown", "CPU cores", "peak RSS MiB", "start s"]:
        out.add_column(column, justify="left" if column == "mode" else "right")
    fmt = lambda v, spec: "-" if pd.isna(v) else format(v, spec)  # noqa: E731
    for mode, m in medians.iterrows():
        lost = m.get("lives_expected") - m.get("lives_reported") if "lives_reported" in m else float("nan")
        out.add_row(mode, fmt(m["rate"], ",.0f"), fmt(m["rate"] / base, ".2f"),
                    fmt(m.get("lives_expected"), ",.0f") if mode in TCPCLOSE_MODES else "-",
                    fmt(m.get("lives_reported"), ",.0f"), fmt(lost, ",.0f"), fmt(m.get("drops"), ",.0f"),
                    fmt(m.get("evicted"), ",.0f"), fmt(m.get("skipped"), ",.0f"),
                    fmt(m.get("client_lives"), ",.0f"), fmt(m.get("kernel_tw"), ",.0f"), fmt(m.get("tw_unknown"), ",.0f"),
                    fmt(m.get("cpu_cores"), ".2f"), fmt(m.get("rss_mib"), ".0f"), fmt(m.get("start_s"), ".2f"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m agent.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rates", default="0", help="total connections/s, comma-separated; 0 = maximum")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of: {', '.join(MODES)}")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root (network namespaces and BPF): sudo make bench")
    modes = [m.strip() for m in args.modes.split(",")]
    if "untraced" not in modes or not set(modes) <= set(MODES):
        raise SystemExit(f"bench: --modes takes untraced and any of {', '.join(MODES[1:])}")
    if "tcpstates" in modes and not Path(TCPSTATES).exists():
        modes.remove("tcpstates")
    console = Console(width=150)
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    console.print(f"machine: {os.cpu_count()} cores ({cpu}), Linux {os.uname().release}; "
                  f"{args.clients} churn clients, {args.seconds:g} s per run")
    for rate in (float(r) for r in args.rates.split(",")):
        rows = []
        for repeat in range(args.repeats):
            for mode in modes:
                row = measure(mode, args.seconds, args.clients, rate)
                console.print(f"  [{repeat + 1}/{args.repeats}] {mode}: {row['rate']:,.0f} conn/s", highlight=False)
                rows.append(row)
        console.print(table(rows, rate))


if __name__ == "__main__":
    main()
