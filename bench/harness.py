"""One measurement: the churn in a namespace of its own, untraced or under a tracer (a mode),
and the figures of that run (bench/README.md says what each means)."""
from __future__ import annotations

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

from agent.analysis.accounting import evicted
from agent.record.runinfo import RunInfo
from agent.run.serving import COUNTERS_EVERY_S

from agent.demo.namespace import Namespace
from .sampling import (STATS_WINDOW_S, RssSampler, StatsWindow, cpu_s, status_mib, wait_peak_rss, bpf_cost,
                       machine_cpu)

PORT = 9000  # the server that waits for the client's close; PORT + 1 closes first
TRANSITIONS_PER_CONNECTION = 10  # 5 per socket life: SYN_SENT, ESTABLISHED, FIN_WAIT1/CLOSE_WAIT, ..., CLOSE
CHURN_COMMS = ("churn-client", "churn-server")
TCPSTATES = "/usr/sbin/tcpstates-bpfcc"
EMPTY_PROGRAM = "TRACEPOINT_PROBE(sock, inet_sock_set_state) { return 0; }"


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
AGENT = "tcpclose agent"  # the always-on mode: its figures come from its /metrics, scraped at the end
MODES = ["untraced", "empty program", *TCPCLOSE_MODES, AGENT, "tcpstates", "untraced again"]


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
    elif mode == AGENT:
        proc = subprocess.Popen([sys.executable, "-m", "agent", "agent", "--listen", f"127.0.0.1:{AGENT_PORT}"],
                                stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        line = proc.stderr.readline()
        if not line.startswith("Tracing"):
            raise SystemExit(f"tcpclose agent did not start: {line}{proc.stderr.read()}")
    else:  # tcpstates prints its header once attached; its output goes to a file it may fill
        with open(out / "tcpstates.txt", "w") as log:
            proc = subprocess.Popen([TCPSTATES], stdout=log, stderr=subprocess.STDOUT)
        while (out / "tcpstates.txt").stat().st_size == 0:
            if proc.poll() is not None:
                raise SystemExit("tcpstates-bpfcc did not start")
            time.sleep(0.05)
    return proc, time.monotonic() - start


AGENT_PORT = 19864  # on the host's loopback, for the bench's own scrape


def agent_figures(comms: tuple[str, ...]) -> dict:
    """The churn's lives and TIME_WAITs as the agent's /metrics count them (its workload label
    is the process name here: the churn runs in no container), and its drops."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    # what the agent published once the last closes were in its figures and its counters of
    # what it could not see were read again after them (it reads those every COUNTERS_EVERY_S)
    wanted, deadline = time.time() + COUNTERS_EVERY_S + 0.2, time.monotonic() + 30
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{AGENT_PORT}/metrics", timeout=10) as response:
            text = response.read().decode()
        published = next((s.value for f in text_string_to_metric_families(text) for s in f.samples
                          if s.name == "tcpclose_last_update_timestamp_seconds"), 0.0)
        if published >= wanted or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    kinds: dict[str, int] = {}  # the churn's closes by kind (active, passive, ...): not in the table
    found = {"lives_reported": 0, "tw_reported": 0, "tw_unlinked_lives": 0, "drops": 0, "tw_unknown": 0,
             "closes_by_kind": kinds}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "tcpclose_closes_total" and sample.labels["workload"] in comms:
                found["lives_reported"] += int(sample.value)
                kinds[sample.labels["kind"]] = kinds.get(sample.labels["kind"], 0) + int(sample.value)
            elif sample.name == "tcpclose_timewaits_total" and sample.labels["workload"] in comms:
                found["tw_reported"] += int(sample.value)
            elif sample.name == "tcpclose_timewaits_unlinked_total" and sample.labels["workload"] in comms:
                found["tw_unlinked_lives"] += int(sample.value)  # due a TIME_WAIT, its timer not seen
            elif sample.name == "tcpclose_unseen_total" and sample.labels["what"] == "ringbuf_drops":
                found["drops"] = int(sample.value)
            elif sample.name == "tcpclose_unseen_total" and sample.labels["what"] == "recursion_misses":
                found["skipped"] = int(sample.value)
            elif sample.name == "tcpclose_unseen_total" and sample.labels["what"] == "tw_unlinked":
                found["tw_unknown"] = int(sample.value)  # timers armed that no close claimed
            elif sample.name == "tcpclose_unseen_total" and sample.labels["what"] == "tw_stale_end":
                found["tw_stale_end"] = int(sample.value)
            elif sample.name == "tcpclose_unseen_total" and sample.labels["what"] == "missed_close":
                found["missed_close"] = int(sample.value)  # lives whose ->CLOSE it saw a new life replace
            elif sample.name == "tcpclose_lives_followed":
                found["lives_followed"] = int(sample.value)  # host-wide: open, or their close not seen yet
            elif sample.name == "tcpclose_bpf_run_seconds_total":  # (counted while the stats window was on)
                found["bpf_run_s"] = sample.value
    return found


def run_order(modes: list[str], repeat: int) -> list[str]:
    """The modes in the order repeat number `repeat` runs them: as given, then reversed, in turn."""
    return modes if repeat % 2 == 0 else modes[::-1]


def server_closes_first(client: int, closer: str) -> bool:
    """Does client number `client` talk to the server that closes first?"""
    return closer == "server" or (closer == "both" and client % 2 == 1)


def start_servers(ns: Namespace) -> list[subprocess.Popen]:
    """The churn's two servers in `ns`, ready: PORT waits for the client's close, PORT + 1
    closes first.  Each leads a session of its own, so that stop_servers() ends its workers too."""
    servers = [ns.popen("-m", "bench.churn", "server", "--port", str(PORT + first), "--workers", "2",
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
                  stdout=subprocess.PIPE, mark: float | None = None) -> list[subprocess.Popen]:
    """One churn client per 127.0.0.x destination, for `seconds` (each prints its connection
    count at the end, and at `mark` seconds first if given), as fast as it can or at `rate_each`/s."""
    return [ns.popen("-m", "bench.churn", "client", "--port", str(PORT + server_closes_first(i, closer)),
                     "--seconds", str(seconds), "--dest", f"127.0.0.{i + 1}",
                     *(["--rate", str(rate_each)] if rate_each else []),
                     *(["--mark", str(mark)] if mark is not None else []),
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
    ns = Namespace("tcpclose-bench")
    out = Path(tempfile.mkdtemp(prefix="tcpclose-bench-"))
    servers, workers, tracer, empty = [], [], None, None
    user0 = cpu0 = 0.0  # the tracer's CPU seconds at the start (none untraced)
    try:
        servers = start_servers(ns)
        row: dict = {"mode": mode}
        if mode == "empty program":  # loaded here, by the bench itself
            from agent.kernel.probe import Program
            empty = Program(EMPTY_PROGRAM)
        elif mode not in UNTRACED:
            tracer, row["start_s"] = start_tracer(mode, out)
            user0, cpu0 = cpu_s(tracer.pid)
            rss = RssSampler(tracer.pid)
        # A traced run goes on for a tail after its measured `seconds`, in which the kernel times
        # the programs (StatsWindow): the timing costs two clock reads a program run, which the
        # rates, the CPU figures and the tracer's cores, all taken at the mark, leave out.
        tail = min(STATS_WINDOW_S, seconds) if mode not in UNTRACED else 0.0
        busy0, stolen0, machine_user0 = machine_cpu()
        began = time.monotonic()
        workers = start_clients(ns, clients, seconds + tail, closer, rate / clients, mark=seconds)
        marked = sum(int(w.stdout.readline()) for w in workers)
        busy1, stolen1, machine_user1 = machine_cpu()
        elapsed_cores = (time.monotonic() - began) * os.cpu_count()
        tracer_user, tracer_cpu = cpu_s(tracer.pid) if tracer else (user0, cpu0)
        window = StatsWindow(tail) if tail else None
        connections = sum(int(w.communicate()[0]) for w in workers)  # the tail's too
        row["cpu_us_per_conn"] = (busy1 - busy0) * 1e6 / marked if marked else float("nan")
        row["steal"] = (stolen1 - stolen0) / elapsed_cores
        # the workload's own code: the machine's user time but the tracer's (BPF runs in kernel mode)
        row["workload_user"] = (machine_user1 - machine_user0 - (tracer_user - user0)) / elapsed_cores
        if window:
            window.join()
        if empty is not None:  # (a BPF object with no maps is falsy: len() 0)
            row.update(bpf_cost(empty.program_stats(), window))
        row["rate"] = marked / seconds
        row["lives_expected"] = 2 * connections
        if tracer:
            row["cpu_cores"] = (tracer_cpu - cpu0) / seconds
            row["rss_mib"] = status_mib(tracer.pid, "VmHWM")
            row["rss_1min_mib"], row["rss_end_mib"] = rss.growth()
            row["rss_2nd_min_median_mib"], row["rss_last_min_median_mib"] = rss.levels()
            row["rss_samples_mib"] = [round(mib, 1) for mib in rss.samples]  # (every RSS_EVERY_S)
            time.sleep(0.5)  # the last closes
            if mode == AGENT:  # what Prometheus would see now, and the kernel's count beside it
                row.update(agent_figures(CHURN_COMMS))
                if window and window.seconds:  # its programs' time, timed by the kernel in the window
                    row["bpf_cores"] = row.pop("bpf_run_s", 0.0) / window.seconds
                row.pop("bpf_run_s", None)
                row["kernel_tw"] = ns.tcp_ext().get("TW", 0)
            tracer.send_signal(signal.SIGINT)
            stopped = time.monotonic()
            if mode in (*TCPCLOSE_MODES, AGENT):  # it writes its files on the way out: wait for them
                row["rss_report_mib"], said = wait_peak_rss(tracer)
                row["report_s"] = time.monotonic() - stopped  # what the user waits for after Ctrl-C
                row["exit_code"] = tracer.returncode
                if tracer.returncode:  # its files are its last interval's: say why, not only "lost"
                    print(f"  {mode} exited with {tracer.returncode}; it said:\n{said}", flush=True)
            else:
                # tcpstates may never see the SIGINT: a KeyboardInterrupt raised inside its
                # per-event ctypes callback is printed and dropped.  Its output is on disk already.
                try:
                    tracer.communicate(timeout=10)
                except subprocess.TimeoutExpired:
                    tracer.kill()
                    tracer.communicate()
        if mode in TCPCLOSE_MODES:
            run = RunInfo.from_dict(json.loads((out / "run.json").read_text()))
            procs = pd.read_csv(out / "processes.csv")
            churn = procs[procs["comm"].isin(CHURN_COMMS)]
            row["lives_reported"] = int(churn["connections"].sum())
            row["tw_reported"] = int(churn["timewait_count"].sum())
            counters = run.counters
            row["drops"] = counters["ringbuf_drops"]
            row["evicted"] = evicted(run)
            row["skipped"] = counters.get("recursion_misses", 0)
            # what the programs cost inside the traced workload, timed by the kernel in the window
            row.update(bpf_cost(run.programs, window))
            # the kernel's own count of timewait sockets made in the namespace: one per connection here
            row["kernel_tw"] = ns.tcp_ext().get("TW", 0)
            # TIME_WAITs whose end the timers lost, and timers no close claimed (0 with --timewait none)
            unknown = 0
            if (out / "connections.csv").exists():
                reasons = pd.read_csv(out / "connections.csv", usecols=["tw_end_reason"])["tw_end_reason"]
                unknown = int((reasons == "unknown").sum())
            row["tw_unknown"] = unknown + counters.get("tw_unlinked", 0)
            row["tw_end_unknown"], row["tw_unlinked"] = unknown, counters.get("tw_unlinked", 0)  # (apart)
            row["tw_stale_end"] = counters.get("tw_stale_end", 0)  # (ends read mid-change, dropped: not unknown)
            row["rows_settled_early"] = run.rows_settled_early
            if run.transitions:
                written = pd.read_csv(out / "transitions.csv", usecols=["lport", "rport"])
                ours = written["lport"].isin([PORT, PORT + 1]) | written["rport"].isin([PORT, PORT + 1])
                row["transitions_expected"] = TRANSITIONS_PER_CONNECTION * connections
                row["transitions_written"] = int(ours.sum())
                row["transitions_lost"] = run.transitions["lost"]
        if mode == "tcpstates":
            with open(out / "tcpstates.txt", errors="replace") as text:  # hundreds of MiB: a line at a time
                row["drops"] = sum(int(w) for line in text if "Possibly lost" in line
                                   for w in line.split() if w.isdigit())
        return row
    finally:
        if empty is not None:  # (a BPF object with no maps is falsy: len() 0)
            empty.close()
        if tracer and tracer.poll() is None:
            tracer.kill()
        stop_clients(workers)
        stop_servers(servers)
        ns.delete()
        shutil.rmtree(out, ignore_errors=True)
