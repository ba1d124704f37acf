"""`make bench`: the workload's connection rate untraced, under tcpclose and under bcc's tcpstates.

  sudo .venv/bin/python -m agent.bench [--seconds S] [--repeats R] [--clients C] [--rates 0,6000]
                                       [--closer both|client|server] [--modes untraced,...]
                                       [--rows FILE]
  .venv/bin/python -m agent.bench --from FILE [FILE ...]   (the table again, from saved rows)

Each measurement runs the churn generator (agent.churn) in a network namespace
of its own, with one client process per 127.0.0.x destination and a rate of 0
meaning as fast as it can. With --closer both (the default) the even-numbered
clients close first and the odd-numbered ones talk to a server that closes
first, so both kinds of close, and TIME_WAITs on both sides, are in the load.
For each rate it prints one table: the median of each mode over the repeats and
its ratio to the untraced runs of the same invocation, socket lives expected (2
per connection) vs reported (the churn processes' rows of processes.csv),
ring-buffer drops, the tracer's CPU (cores) and peak RSS while the workload ran,
its peak RSS over its whole life ("with report": the end-of-run analysis
included), the seconds from its Ctrl-C to its files written, and its time from
start to 'Tracing'; runs over a minute long also show its RSS after the first
minute and at the end, and the growth between (a soak: --seconds 600). "skipped"
counts the transitions the kernel did not run the program for (BPF recursion on
a CPU); "TW reported" (TIME_WAITs tcpclose saw made) is to hold against "kernel
TW", the namespace's TcpExt TW counter; "TW end unknown" counts the TIME_WAITs
whose timer events were missed (end unknown, or never claimed). "BPF
ns/transition" is the kernel's own timing of the state-change program per run,
and "BPF cores" the time all of tcpclose's programs ran, per second: the cost
paid inside the traced workload, which its noisy rate hides; "CPU taken" adds
the tracer's own CPU to it, as a share of the machine's cores. "CPU us/conn" is
the whole machine's busy CPU time while the workload ran (/proc/stat: the time
the hypervisor gave to other guests, "steal", left out) per connection, tracer
and BPF included; "ratio by CPU/conn" is the untraced figure over it, paired
like the ratio: what the rate's ratio would be if CPU per connection alone set
the rate. At maximum churn the machine is saturated and it nearly does: on the
development VM (its AMD host) the two ratios agreed to within 0.01, so the rate's
noise is in the CPU a connection costs, not in steal (0.1-1 %). At a fixed rate it
is the only ratio that says anything. "workload's user CPU" is the share of the
machine's CPU that the workload's own code got (the machine's user time, less the
tracer's); "ratio by workload's user CPU" pairs it like the rate. A tracer's BPF
programs run in kernel mode, so at a saturated machine they take their time from
this share, while a slower host slows the workload's user and kernel time alike
and leaves the share nearly as it was: on one churn watched in 30 s windows, the
rate moved by 5.7 % (standard deviation) and this share by 3.2 %. It misses what a
tracer makes the workload's own code pay (caches, a process sharing its CPUs:
tcpstates came out at 0.93x by it and 0.63x by the rate), so it is to hold beside
the rate's ratio, not to replace it. The kernel times programs only while BPF stats
are on, and the timing costs two clock reads a run (a paravirtual clock on a
VM), so the bench turns them on for a window in the middle of each traced run
only (STATS_WINDOW_S), not for the runs' rates. "empty program" is the floor: a
program that returns at once, on the same tracepoint; its ns/transition is the
timing's own overhead. For --transitions: transitions expected (10 per
connection), written to the file, and lost as the BPF side counted them.

The ratio is paired: each repeat runs every mode once, and a run's rate is
divided by the untraced rate of its own repeat: the mean of its two untraced
runs where "untraced again" ran too (untraced_reference).  Every other repeat runs the
modes in reverse order (run_order), so that a drift of the machine's speed
over the bench, and whatever a run leaves behind for the next (the default
mode's analysis at its end takes gigabytes), weigh on every mode alike.
"untraced again" runs the untraced workload a second time in each repeat, at
the other end of its order: its ratio is a difference no tracer made (an A/A
comparison), the bench's own noise to hold the other ratios against.  On
the 2-core development VM's AMD host the untraced rate swung between 12 000 and
21 000 conn/s from one half second to the next and differed by about 6 % (standard
deviation) between 15 s runs; on its Intel host, at about 48 000 conn/s, the A/A
ratio's middle half spanned 1.01-1.04 over 8 repeats of 60 s (0.97-1.10 in
another): as much as the cost being measured, so one run against one run says
little.  The table gives the median of the paired ratios and, from 4 repeats up,
the middle half of them (first to third quartile): many short repeats (--seconds
15 --repeats 16) pin a ratio down better than a few long ones.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from . import loader
from .summary import evicted

PORT = 9000  # the server that waits for the client's close; PORT + 1 closes first
TRANSITIONS_PER_CONNECTION = 10  # 5 per socket life: SYN_SENT, ESTABLISHED, FIN_WAIT1/CLOSE_WAIT, ..., CLOSE
CHURN_COMMS = ("churn-client", "churn-server")
RSS_EVERY_S = 5.0
TCPSTATES = "/usr/sbin/tcpstates-bpfcc"
CLK_TCK = os.sysconf("SC_CLK_TCK")


SYS_BPF = 321  # x86_64
BPF_ENABLE_STATS, BPF_STATS_RUN_TIME = 32, 0
STATE_PROGRAM = "tracepoint__sock__inet_sock_set_state"


def enable_bpf_stats() -> int | None:
    """Make the kernel time every BPF program run while the returned fd is open (Linux 5.8+):
    bpf(BPF_ENABLE_STATS), which needs no sysctl change and ends with this process.
    None where the kernel refuses; the BPF columns then stay empty."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.c_uint32(BPF_STATS_RUN_TIME)
    fd = libc.syscall(SYS_BPF, BPF_ENABLE_STATS, ctypes.byref(attr), ctypes.sizeof(attr))
    return fd if fd >= 0 else None


STATS_WINDOW_S = 10.0  # BPF stats on for this long in the middle of each traced run
EMPTY_PROGRAM = "TRACEPOINT_PROBE(sock, inet_sock_set_state) { return 0; }"


class StatsWindow(threading.Thread):
    """BPF stats on for a window in the middle of the workload (enable_bpf_stats), off
    before and after: the timing's own overhead (two clock reads a program run) weighs on
    the rate during the window only, and the programs' run_time_ns cover the window."""

    def __init__(self, seconds: float):
        super().__init__(daemon=True)
        self.length = min(STATS_WINDOW_S, seconds / 2)
        self.delay = (seconds - self.length) / 2
        self.seconds = None  # how long the stats were on; None: the kernel refused them
        self.start()

    def run(self):
        time.sleep(self.delay)
        fd = enable_bpf_stats()
        if fd is None:
            return
        began = time.monotonic()
        time.sleep(self.length)
        os.close(fd)
        self.seconds = time.monotonic() - began


def bpf_cost(programs: dict[str, dict[str, int]], window: StatsWindow) -> dict:
    """BPF ns/transition (the state-change program) and BPF cores (all programs) over the window."""
    state = programs.get(STATE_PROGRAM, {})
    if window.seconds is None or not state.get("run_cnt"):
        return {}
    return {"bpf_ns_per_transition": state["run_time_ns"] / state["run_cnt"],
            "bpf_cores": sum(p.get("run_time_ns", 0) for p in programs.values()) / 1e9 / window.seconds}


def _cpu_s(pid: int) -> tuple[float, float]:
    """(user, user + system) CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return utime / CLK_TCK, (utime + stime) / CLK_TCK


def machine_cpu() -> tuple[float, float, float]:
    """(busy, stolen, user) CPU seconds of the whole machine since boot, from /proc/stat.
    Busy is user, nice, system, irq and softirq (a guest's time is inside user; BPF
    programs run in whatever they interrupt, in kernel mode: never in user); stolen is
    the time the hypervisor gave to other guests; user is user and nice."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK, (user + nice) / CLK_TCK


def _status_mib(pid: int, field: str) -> float:
    """VmHWM (peak RSS) or VmRSS of a process, in MiB; NaN once it has exited."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")  # a zombie: its memory is gone


REPORT_TIMEOUT_S = 900  # a tracer still writing its files after this is killed
PEAK_EVERY_S = 0.1  # adds up to this much to "Ctrl-C to files"


def _wait_peak_rss(proc: subprocess.Popen) -> float:
    """Wait for a tracer to write its files and exit (killed after REPORT_TIMEOUT_S); its
    peak RSS in MiB over its whole life, the end-of-run analysis included.

    Read from its own VmHWM (a high-water mark, so no peak falls between two reads) until
    it exits.  Not the ru_maxrss of wait4(): a child started by fork or vfork and exec
    starts with its parent's high-water mark there, and the bench's own reached hundreds
    of MiB reading tcpstates' output, which made --aggregates look 600 MiB big."""
    stderr = threading.Thread(target=proc.stderr.read, daemon=True)  # it may print a lot
    stderr.start()
    deadline = time.monotonic() + REPORT_TIMEOUT_S
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _status_mib(proc.pid, "VmHWM"))  # NaN once it has exited: max() keeps peak
        if time.monotonic() > deadline:
            proc.kill()
        time.sleep(PEAK_EVERY_S)
    stderr.join()
    return peak or float("nan")


class RssSampler(threading.Thread):
    """The tracer's RSS every RSS_EVERY_S while the workload runs: is it flat?"""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop = pid, [], threading.Event()
        self.start()

    def run(self):
        while not self.stop.wait(RSS_EVERY_S):
            self.samples.append(_status_mib(self.pid, "VmRSS"))

    def growth(self) -> tuple[float, float]:
        """(RSS after the first minute, RSS at the end) in MiB: the growth once warmed up
        (TIME_WAITs live 60 s, so the first minute fills the per-socket maps)."""
        self.stop.set()
        self.join()
        first = int(60 / RSS_EVERY_S) - 1
        if len(self.samples) <= first + 1:
            return float("nan"), float("nan")
        return self.samples[first], self.samples[-1]


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
    "tcpclose --transitions": ["--transitions", "{out}/transitions.csv"],
}
# "untraced again" is the untraced run once more, at the other end of the repeat: its ratio
# (an A/A comparison) is the bench's own noise, the difference that no tracer made.
UNTRACED = ("untraced", "untraced again")
MODES = ["untraced", "empty program", *TCPCLOSE_MODES, "tcpstates", "untraced again"]


def start_tracer(mode: str, out: Path) -> tuple[subprocess.Popen, float]:
    """Start a tracer and wait until it is attached; return it and its start-up time."""
    start = time.monotonic()
    if mode in TCPCLOSE_MODES:
        args = [arg.format(out=out) for arg in TCPCLOSE_MODES[mode]]
        proc = subprocess.Popen([sys.executable, "-m", "agent", "trace", "-o", str(out), *args],
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


def run_order(modes: list[str], repeat: int) -> list[str]:
    """The modes in the order repeat number `repeat` runs them: as given, then reversed, in turn."""
    return modes if repeat % 2 == 0 else modes[::-1]


def server_closes_first(client: int, closer: str) -> bool:
    """Does client number `client` talk to the server that closes first?"""
    return closer == "server" or (closer == "both" and client % 2 == 1)


def start_servers(ns: Namespace) -> list[subprocess.Popen]:
    """The churn's two servers in `ns`, ready: PORT waits for the client's close, PORT + 1
    closes first.  Each leads a session of its own, so that stop_servers() ends its workers too."""
    servers = [ns.popen("-m", "agent.churn", "server", "--port", str(PORT + first), "--workers", "2",
                        *(["--server-closes-first"] if first else []),
                        stdout=subprocess.PIPE, text=True, start_new_session=True)
               for first in (0, 1)]
    try:
        for server in servers:
            server.stdout.readline()  # "ready"
    except BaseException:  # a Ctrl-C while they start
        stop_servers(servers)
        raise
    return servers


def start_clients(ns: Namespace, clients: int, seconds: float, closer: str, rate_each: float = 0,
                  stdout=subprocess.PIPE) -> list[subprocess.Popen]:
    """One churn client per 127.0.0.x destination, for `seconds` (each prints its connection
    count at the end), as fast as it can or at `rate_each`/s."""
    return [ns.popen("-m", "agent.churn", "client", "--port", str(PORT + server_closes_first(i, closer)),
                     "--seconds", str(seconds), "--dest", f"127.0.0.{i + 1}",
                     *(["--rate", str(rate_each)] if rate_each else []),
                     *(["--server-closes-first"] if server_closes_first(i, closer) else []),
                     stdout=stdout, text=True)
            for i in range(clients)]


def stop_clients(clients: list[subprocess.Popen]) -> None:
    """End the clients still running (a run cut short); those that finished are only reaped."""
    for client in clients:
        if client.poll() is None:
            client.kill()
        client.wait()


def stop_on_sigterm() -> None:
    """SIGTERM takes the way Ctrl-C takes (KeyboardInterrupt), through every clean-up: without
    it the churn would go on in a namespace nobody deletes."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def stop_servers(servers: list[subprocess.Popen]) -> None:
    for server in servers:  # and its workers, in its session
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def measure(mode: str, seconds: float, clients: int, rate: float, closer: str) -> dict:
    ns = Namespace()
    out = Path(tempfile.mkdtemp(prefix="tcpclose-bench-"))
    servers, workers, tracer, empty = [], [], None, None
    try:
        servers = start_servers(ns)
        row: dict = {"mode": mode}
        if mode == "empty program":  # loaded here, by the bench itself
            from bcc import BPF
            empty = BPF(text=EMPTY_PROGRAM)
        elif mode not in UNTRACED:
            tracer, row["start_s"] = start_tracer(mode, out)
            user0, cpu0 = _cpu_s(tracer.pid)
            rss = RssSampler(tracer.pid)
        busy0, stolen0, machine_user0 = machine_cpu()
        began = time.monotonic()
        workers = start_clients(ns, clients, seconds, closer, rate / clients)
        window = StatsWindow(seconds) if mode not in UNTRACED else None
        connections = sum(int(w.communicate()[0]) for w in workers)
        busy1, stolen1, machine_user1 = machine_cpu()
        elapsed_cores = (time.monotonic() - began) * os.cpu_count()
        tracer_user = _cpu_s(tracer.pid)[0] - user0 if tracer else 0.0
        row["cpu_us_per_conn"] = (busy1 - busy0) * 1e6 / connections if connections else float("nan")
        row["steal"] = (stolen1 - stolen0) / elapsed_cores
        # the workload's own code: the machine's user time but the tracer's (BPF runs in kernel mode)
        row["workload_user"] = (machine_user1 - machine_user0 - tracer_user) / elapsed_cores
        if window:
            window.join()
        if empty is not None:  # (a BPF object with no maps is falsy: len() 0)
            row.update(bpf_cost(loader.program_stats(empty), window))
        row["rate"] = connections / seconds
        row["lives_expected"] = 2 * connections
        if tracer:
            row["cpu_cores"] = (_cpu_s(tracer.pid)[1] - cpu0) / seconds
            row["rss_mib"] = _status_mib(tracer.pid, "VmHWM")
            row["rss_1min_mib"], row["rss_end_mib"] = rss.growth()
            time.sleep(0.5)  # the last closes
            tracer.send_signal(signal.SIGINT)
            stopped = time.monotonic()
            if mode in TCPCLOSE_MODES:  # it writes its files on the way out: wait for them
                row["rss_report_mib"] = _wait_peak_rss(tracer)
                row["report_s"] = time.monotonic() - stopped  # what the user waits for after Ctrl-C
            else:
                # tcpstates may never see the SIGINT: a KeyboardInterrupt raised inside its
                # per-event ctypes callback is printed and dropped.  Its output is on disk already.
                try:
                    tracer.communicate(timeout=10)
                except subprocess.TimeoutExpired:
                    tracer.kill()
                    tracer.communicate()
        if mode in TCPCLOSE_MODES:
            run = json.loads((out / "run.json").read_text())
            procs = pd.read_csv(out / "processes.csv")
            churn = procs[procs["comm"].isin(CHURN_COMMS)]
            row["lives_reported"] = int(churn["connections"].sum())
            row["tw_reported"] = int(churn["timewait_count"].sum())
            counters = run["counters"]
            row["drops"] = counters["ringbuf_drops"]
            row["evicted"] = evicted(run)
            row["skipped"] = counters.get("recursion_misses", 0)
            # what the programs cost inside the traced workload, timed by the kernel in the window
            row.update(bpf_cost(run.get("programs", {}), window))
            # the kernel's own count of timewait sockets made in the namespace: one per connection here
            row["kernel_tw"] = ns.tcp_ext().get("TW", 0)
            # TIME_WAITs whose end the timers lost, and timers no close claimed (0 with --timewait none)
            unknown = 0
            if (out / "connections.csv").exists():
                reasons = pd.read_csv(out / "connections.csv", usecols=["tw_end_reason"])["tw_end_reason"]
                unknown = int((reasons == "unknown").sum())
            row["tw_unknown"] = unknown + counters.get("tw_unlinked", 0)
            if "transitions" in run:
                written = pd.read_csv(out / "transitions.csv", usecols=["lport", "rport"])
                ours = written["lport"].isin([PORT, PORT + 1]) | written["rport"].isin([PORT, PORT + 1])
                row["transitions_expected"] = TRANSITIONS_PER_CONNECTION * connections
                row["transitions_written"] = int(ours.sum())
                row["transitions_lost"] = run["transitions"]["lost"]
        if mode == "tcpstates":
            with open(out / "tcpstates.txt", errors="replace") as text:  # hundreds of MiB: a line at a time
                row["drops"] = sum(int(w) for line in text if "Possibly lost" in line
                                   for w in line.split() if w.isdigit())
        return row
    finally:
        if empty is not None:  # (a BPF object with no maps is falsy: len() 0)
            empty.cleanup()
        if tracer and tracer.poll() is None:
            tracer.kill()
        stop_clients(workers)
        stop_servers(servers)
        ns.delete()
        shutil.rmtree(out, ignore_errors=True)


COLUMNS = {  # title: (row key, format); the lost lives and the RSS growth are computed
    "conn/s": ("rate", ",.0f"), "CPU us/conn": ("cpu_us_per_conn", ",.1f"),
    "workload's user CPU": ("workload_user", ".2%"), "steal": ("steal", ".1%"),
    "lives expected": ("lives_expected", ",.0f"),
    "lives reported": ("lives_reported", ",.0f"), "lost": ("lives_lost", ",.0f"), "drops": ("drops", ",.0f"),
    "evicted": ("evicted", ",.0f"), "skipped": ("skipped", ",.0f"), "TW reported": ("tw_reported", ",.0f"),
    "kernel TW": ("kernel_tw", ",.0f"), "TW end unknown": ("tw_unknown", ",.0f"),
    "transitions expected": ("transitions_expected", ",.0f"), "transitions written": ("transitions_written", ",.0f"),
    "transitions lost (counted)": ("transitions_lost", ",.0f"),
    "BPF ns/transition": ("bpf_ns_per_transition", ",.0f"), "BPF cores": ("bpf_cores", ".3f"),
    "CPU cores": ("cpu_cores", ".2f"), "CPU taken": ("cpu_taken", ".1%"), "peak RSS MiB": ("rss_mib", ".0f"),
    "peak RSS with report MiB": ("rss_report_mib", ".0f"), "Ctrl-C to files s": ("report_s", ".1f"),
    "RSS at 1 min": ("rss_1min_mib", ".0f"), "RSS at end": ("rss_end_mib", ".0f"), "RSS growth": ("rss_growth", "+.0%"),
    "start s": ("start_s", ".2f"),
}

RATIOS = {  # paired ratio: (the row it follows, its title)
    "ratio": ("rate", "ratio"), "cpu_ratio": ("cpu_us_per_conn", "ratio by CPU/conn"),
    "user_ratio": ("workload_user", "ratio by workload's user CPU"),
}


def untraced_reference(frame: pd.DataFrame, column: str) -> pd.Series:
    """What each run's figure is held against, from its own repeat: for a traced run the mean
    of the repeat's untraced runs, "untraced" and "untraced again", which sit at the two ends
    of its order, so that a drift of the machine's speed within the repeat cancels and the
    reference has half the noise of one run; for the untraced runs the first one ("untraced
    again" against it is the A/A ratio).  NaN where the repeat has no untraced run (a soak)."""
    untraced = frame[frame["mode"].isin(UNTRACED)]
    first = frame["repeat"].map(untraced[untraced["mode"] == "untraced"].set_index("repeat")[column])
    both = frame["repeat"].map(untraced.groupby("repeat")[column].mean())
    return first.where(frame["mode"].isin(UNTRACED), both)


def table(rows: list[dict], rate: float) -> Table:
    frame = pd.DataFrame(rows)
    if "lives_reported" in frame:
        frame["lives_lost"] = frame["lives_expected"] - frame["lives_reported"]
    if "rss_end_mib" in frame:
        frame["rss_growth"] = frame["rss_end_mib"] / frame["rss_1min_mib"] - 1
    if "bpf_cores" in frame:  # BPF and user-space time together, per core: what the workload cannot have
        tracer = frame["cpu_cores"].fillna(0) if "cpu_cores" in frame else 0  # the empty program has no process
        frame["cpu_taken"] = (frame["bpf_cores"] + tracer) / os.cpu_count()
    frame["ratio"] = frame["rate"] / untraced_reference(frame, "rate")
    if "cpu_us_per_conn" in frame:  # the same ratio, were the rate set by CPU per connection alone
        frame["cpu_ratio"] = untraced_reference(frame, "cpu_us_per_conn") / frame["cpu_us_per_conn"]
    if "workload_user" in frame:  # the share of the machine the workload's own code got, paired
        frame["user_ratio"] = frame["workload_user"] / untraced_reference(frame, "workload_user")
    medians = frame.groupby("mode", sort=False).median(numeric_only=True)
    quartiles = {column: frame.groupby("mode", sort=False)[column].quantile([0.25, 0.75]).unstack()
                 for column in RATIOS if column in frame}
    title = f"target rate: {'maximum' if not rate else f'{rate:g}/s'}, {frame.groupby('mode').size().iloc[0]} repeat(s), medians"
    out = Table(title=title)  # one column per mode, one row per figure: 20 figures fit no terminal's width
    out.add_column("", justify="left")
    for mode in medians.index:
        out.add_column(mode, justify="right")
    fmt = lambda v, spec: "-" if v is None or pd.isna(v) else format(v, spec)  # noqa: E731
    for title, (key, spec) in COLUMNS.items():
        cells = [fmt(m.get(key), spec) if key != "lives_expected" or mode in TCPCLOSE_MODES else "-"
                 for mode, m in medians.iterrows()]
        if any(cell != "-" for cell in cells):
            out.add_row(title, *cells)
        for ratio, (after, label) in RATIOS.items():
            if key != after or ratio not in medians:
                continue
            out.add_row(label, *(fmt(m[ratio], ".2f") for _, m in medians.iterrows()))
            if len(frame) >= 4 * len(medians):
                out.add_row(f"{label}, middle half", *(
                    "-" if pd.isna(q[0.25]) else f"{q[0.25]:.2f}-{q[0.75]:.2f}" for _, q in quartiles[ratio].iterrows()))
    return out


def save_row(path: Path, row: dict) -> None:
    """Append one run's row to a --rows file as a JSON line, as soon as the run ends: an
    interrupted bench keeps the runs that ended, and several benches can be pooled later."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")  # NaN is written as NaN, which json.loads reads back


def load_rows(paths: list[Path]) -> dict[float, list[dict]]:
    """The rows of one or more --rows files, by target rate.  Each row's repeat is made
    that of its own bench ("bench" names the invocation), so that every ratio stays paired
    within the repeat it was measured in, whatever files are pooled."""
    by_rate: dict[float, list[dict]] = {}
    for path in paths:
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise SystemExit(f"bench: cannot read {path}: {exc.strerror}") from None
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
                row["repeat"] = f"{row['bench']}/{row['repeat']}"
                by_rate.setdefault(float(row.pop("target_rate")), []).append(row)
            except (ValueError, KeyError) as exc:
                raise SystemExit(f"bench: {path}:{number} is not a row a bench saved with --rows ({exc})") from None
    return by_rate


def bench_id() -> str:
    """What names one invocation in its saved rows: when it began and the commit it ran."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip() or "?"
    except OSError:  # no git: a copy of the tree, not a checkout
        commit = "?"
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {commit}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m agent.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="length of each run (the targets: 60)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="each runs every mode once; ratios are paired within a repeat, and 4 or more "
                             "show their spread: e.g. --seconds 15 --repeats 16")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--closer", choices=["both", "client", "server"], default="both",
                        help="which side closes first: both = half the clients each way")
    parser.add_argument("--rates", default="0", help="total connections/s, comma-separated; 0 = maximum")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated, of: {', '.join(MODES)}; e.g. a 10 minute RSS soak: "
                             "--seconds 600 --modes 'tcpclose --aggregates'")
    parser.add_argument("--rows", type=Path, metavar="FILE",
                        help="append each run's figures to FILE as a JSON line as it ends, e.g. "
                             "--rows bench.jsonl")
    parser.add_argument("--from", dest="from_files", type=Path, nargs="+", metavar="FILE",
                        help="run nothing: print the tables of the runs saved in these --rows files, "
                             "their repeats pooled (every ratio still paired within its own repeat)")
    args = parser.parse_args()
    console = Console(width=160)
    if args.from_files:
        for rate, rows in load_rows(args.from_files).items():
            benches = sorted({row["bench"] for row in rows})
            machines = sorted({row.get("machine", "?") for row in rows})
            console.print(f"{len(benches)} bench run(s): {', '.join(benches)}; machine: {'; '.join(machines)}")
            console.print(table(rows, rate))
        return
    stop_on_sigterm()
    sys.stdout.reconfigure(line_buffering=True)  # each run's line as it ends, also into a file
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root (network namespaces and BPF): sudo make bench")
    modes = [m.strip() for m in args.modes.split(",")]
    if not set(modes) <= set(MODES):
        raise SystemExit(f"bench: --modes takes any of {', '.join(MODES)} (without untraced: no ratios)")
    if "tcpstates" in modes and not Path(TCPSTATES).exists():
        modes.remove("tcpstates")
    probe = enable_bpf_stats()  # can the kernel time BPF programs? (on in each run's window only)
    if probe is None:
        console.print("BPF stats: the kernel refused BPF_ENABLE_STATS, so the BPF columns stay empty")
    else:
        os.close(probe)
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    machine = f"{os.cpu_count()} cores ({cpu}), Linux {os.uname().release}"
    console.print(f"machine: {machine}; "
                  f"{args.clients} churn clients (closing first: {args.closer}), {args.seconds:g} s per run")
    if args.rows:  # a path that cannot be written fails now, not after the first run
        try:
            args.rows.open("a").close()
        except OSError as exc:
            raise SystemExit(f"bench: cannot write --rows {args.rows}: {exc.strerror}") from None
    invocation = bench_id()
    for rate in (float(r) for r in args.rates.split(",")):
        rows = []
        try:
            for repeat in range(args.repeats):
                for mode in run_order(modes, repeat):
                    row = measure(mode, args.seconds, args.clients, rate, args.closer) | {"repeat": repeat}
                    console.print(f"  [{repeat + 1}/{args.repeats}] {mode}: {row['rate']:,.0f} conn/s, "
                                  f"workload's user CPU {row['workload_user']:.2%}", highlight=False)
                    rows.append(row)
                    if args.rows:
                        save_row(args.rows, row | {"bench": invocation, "machine": machine, "target_rate": rate})
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the runs that ended are not lost
            if rows:
                console.print(table(rows, rate))
            raise SystemExit(f"bench: interrupted; the table above has the {len(rows)} run(s) that ended"
                             if rows else "bench: interrupted before any run ended") from None
        console.print(table(rows, rate))


if __name__ == "__main__":
    main()
